//! Backends that misbehave: every case ends `down` with its own reason, within the
//! configured timeouts, and the poller keeps probing (no stuck poller) over at most one
//! connection at a time (no leaked connection). HTTP/2-level cases use a server scripted
//! frame by frame (`support::raw_h2`); TLS cases a real tonic backend.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::backend::HealthBackend;
use support::raw_h2::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECT: Duration = Duration::from_millis(300);
const RPC: Duration = Duration::from_millis(500);

async fn agent(extra: &[&str]) -> Agent {
    // The Check path: every case is a Check's answer (Watch answers share the parsing).
    let mut flags = vec![
        "--health-mode",
        "poll",
        "--check-interval",
        "100ms",
        "--grpc-connect-timeout",
        "300ms",
        "--grpc-rpc-timeout",
        "500ms",
        "--rise",
        "1",
        "--fall",
        "1",
        // Each case leaves its broken backend registered; so many unreachable at once
        // would look like the agent's own network. These cases are about reasons.
        "--panic-threshold",
        "0",
    ];
    flags.extend_from_slice(extra);
    start_agent(&flags).await
}

/// Asks for the target on `port`; the first answer must come within the timeouts and
/// start with `expected`.
async fn first_answer(agent: &Agent, line: &str, expected: &str, case: &str) {
    let started = Instant::now();
    let reply = ask(agent.addr, line).await;
    let took = started.elapsed();
    assert!(
        reply.starts_with(expected),
        "{case}: expected {expected:?}, got {reply:?}"
    );
    assert!(
        took <= CONNECT + RPC + Duration::from_millis(500),
        "{case}: the first answer took {took:?}"
    );
}

/// One scripted case: the reply it must get, then proof the poller goes on over at most
/// one open connection, answering the same.
async fn case(agent: &Agent, name: &str, expected: &str, script: Script) {
    let backend = RawBackend::start(script).await;
    let line = format!("127.0.0.1 {} no-ssl localhost", backend.port);
    first_answer(agent, &line, expected, name).await;
    let seen = backend.requests();
    eventually(
        Duration::from_secs(10),
        &format!("{name}: the poller keeps probing"),
        || async { backend.requests() >= seen + 3 },
    )
    .await;
    let reply = ask(agent.addr, &line).await;
    assert!(reply.starts_with(expected), "{name}: later {reply:?}");
    assert!(
        backend.open() <= 1,
        "{name}: {} connections open at once",
        backend.open()
    );
}

fn script(steps: impl Fn(u32, usize) -> Vec<Step> + Send + Sync + 'static) -> Script {
    Arc::new(steps)
}

fn send(frames: Vec<Vec<u8>>) -> Vec<Step> {
    vec![Step::Send(frames.concat())]
}

#[tokio::test]
async fn malformed_answers_are_down_with_their_own_reason() {
    let agent = agent(&[]).await;
    let ok_trailers: &[(&str, &str)] = &[("grpc-status", "0")];
    case(
        &agent,
        "http 500",
        "down #transport: http status 500\n",
        script(|s, _| send(vec![headers(s, &[(":status", "500")], true)])),
    )
    .await;
    case(
        &agent,
        "http 500 with grpc-status",
        "down #transport: http status 500, grpc UNAVAILABLE\n",
        script(|s, _| {
            send(vec![headers(
                s,
                &[
                    (":status", "500"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "14"),
                ],
                true,
            )])
        }),
    )
    .await;
    case(
        &agent,
        "missing content-type",
        "down #transport: answer without content-type\n",
        script(move |s, _| {
            send(vec![
                headers(s, &[(":status", "200")], false),
                data(s, &message(1), false),
                headers(s, ok_trailers, true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "non-grpc content-type",
        "down #transport: content-type \"text/html\" is not grpc\n",
        script(|s, _| {
            send(vec![headers(
                s,
                &[(":status", "200"), ("content-type", "text/html")],
                true,
            )])
        }),
    )
    .await;
    case(
        &agent,
        "end of stream on headers without grpc-status",
        "down #transport: headers ended the answer without grpc-status\n",
        script(|s, _| send(vec![headers(s, GRPC_HEADERS, true)])),
    )
    .await;
    case(
        &agent,
        "grpc-status non-zero in headers (trailers-only)",
        "down #grpc UNAVAILABLE: shutting down\n",
        script(|s, _| {
            send(vec![headers(
                s,
                &[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "14"),
                    ("grpc-message", "shutting%20down"),
                ],
                true,
            )])
        }),
    )
    .await;
    case(
        &agent,
        "SERVING followed by a non-zero grpc-status",
        "down #grpc INTERNAL\n",
        script(|s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &message(1), false),
                headers(s, &[("grpc-status", "13")], true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "headers-only OK, no message",
        "down #transport: no health message in the answer\n",
        script(move |s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                headers(s, ok_trailers, true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "compressed-flag message",
        "down #transport: compressed health message\n",
        script(move |s, _| {
            let mut compressed = message(1);
            compressed[0] = 1;
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &compressed, false),
                headers(s, ok_trailers, true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "invalid protobuf",
        "down #transport: invalid health message",
        script(move |s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &[0, 0, 0, 0, 3, 0x08, 0xff, 0xff], false),
                headers(s, ok_trailers, true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "two messages",
        "down #transport: more than one message in the answer\n",
        script(move |s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &[message(1), message(1)].concat(), false),
                headers(s, ok_trailers, true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "no trailers",
        "down #transport: no trailers after the message\n",
        script(|s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &message(1), true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "trailers without grpc-status",
        "down #transport: trailers without grpc-status\n",
        script(|s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &message(1), false),
                headers(s, &[("grpc-message", "hm")], true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "unparsable grpc-status",
        "down #transport: unparsable grpc-status\n",
        script(|s, _| {
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &message(1), false),
                headers(s, &[("grpc-status", "OK")], true),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "unknown serving status 999",
        "down #unknown serving status 999\n",
        script(|s, _| send(vec![answer(s, 999)])),
    )
    .await;
    case(
        &agent,
        "UNIMPLEMENTED",
        "down #grpc UNIMPLEMENTED\n",
        script(|s, _| {
            send(vec![headers(
                s,
                &[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "12"),
                ],
                true,
            )])
        }),
    )
    .await;
    case(
        &agent,
        "a message over 16 KiB",
        "down #transport: health answer too large\n",
        script(|s, _| {
            let big = vec![0u8; 10_000];
            send(vec![
                headers(s, GRPC_HEADERS, false),
                data(s, &big, false),
                data(s, &big, false),
            ])
        }),
    )
    .await;
    case(
        &agent,
        "a frame over the 16 KiB frame size",
        "down #transport: http/2: the backend sent a frame over 16384 bytes\n",
        script(|s, _| send(vec![frame(DATA, 0, s, &vec![0u8; 20_000])])),
    )
    .await;
}

#[tokio::test]
async fn resets_and_goaways_are_down_with_their_own_reason() {
    let agent = agent(&[]).await;
    case(
        &agent,
        "RST_STREAM",
        "down #transport: stream reset by backend (INTERNAL_ERROR)\n",
        script(|s, _| send(vec![rst_stream(s, 0x2)])),
    )
    .await;
    case(
        &agent,
        "RST_STREAM REFUSED_STREAM (made again once, on a new connection)",
        "down #transport: stream reset by backend (REFUSED_STREAM)\n",
        script(|s, _| send(vec![rst_stream(s, 0x7)])),
    )
    .await;
    case(
        &agent,
        "GOAWAY NO_ERROR before the stream, during a probe",
        "down #transport: backend sent GOAWAY (NO_ERROR)\n",
        script(|_, _| vec![Step::Send(goaway(0, 0, b"")), Step::Close]),
    )
    .await;
    case(
        &agent,
        "GOAWAY with an error, covering the stream, during a probe",
        "down #transport: backend sent GOAWAY (INTERNAL_ERROR)\n",
        script(|s, _| vec![Step::Send(goaway(s, 0x2, b"")), Step::Close]),
    )
    .await;
    case(
        &agent,
        "GOAWAY with debug data",
        "down #transport: backend sent GOAWAY (ENHANCE_YOUR_CALM: too_many_pings)\n",
        script(|_, _| vec![Step::Send(goaway(0, 0xb, b"too_many_pings")), Step::Close]),
    )
    .await;
    let reset = RawBackend::start(script(|_, _| vec![Step::Reset])).await;
    let reply = ask(
        agent.addr,
        &format!("127.0.0.1 {} no-ssl localhost", reset.port),
    )
    .await;
    // h2 may see the reset itself, or only that the connection ended.
    assert!(
        [
            "down #transport: connection reset by backend\n",
            "down #transport: connection closed by backend\n"
        ]
        .contains(&reply.as_str()),
        "TCP reset: {reply:?}"
    );
    case(
        &agent,
        "an HTTP/2 server that never answers",
        "down #rpc timeout 500ms\n",
        script(|_, _| Vec::new()),
    )
    .await;
}

/// GOAWAY after an answer is a server restarting or rotating connections: the next probe
/// connects again and the backend stays up.
#[tokio::test]
async fn goaway_between_probes_reconnects_and_stays_up() {
    let agent = agent(&[]).await;
    let backend = RawBackend::start(script(|s, _| {
        vec![
            Step::Send([answer(s, 1), goaway(s, 0, b"")].concat()),
            Step::Close,
        ]
    }))
    .await;
    let line = format!("127.0.0.1 {} no-ssl localhost", backend.port);
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    eventually(
        Duration::from_secs(10),
        "five connections, one per probe",
        || async { backend.accepted() >= 5 },
    )
    .await;
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    assert!(backend.open() <= 1, "{} open", backend.open());
}

#[tokio::test]
async fn unreachable_and_silent_backends() {
    let agent = agent(&[]).await;

    // Accepts TCP and never says a word.
    let (silent, _guard) = silent_backend().await;
    first_answer(
        &agent,
        &line_for(silent, ""),
        "down #connect: no http/2 settings from the backend within 300ms\n",
        "silent TCP",
    )
    .await;

    // A listener whose accept queue is full drops new SYNs: a blackholed address.
    let (blackholed, _held) = blackholed_port();
    first_answer(
        &agent,
        &line_for(blackholed, ""),
        "down #connect timeout 300ms\n",
        "blackholed",
    )
    .await;

    // Speaks HTTP/1.1.
    let http1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http1_port = http1.local_addr().unwrap().port();
    let _http1 = AbortOnDrop(tokio::spawn(async move {
        while let Ok((mut stream, _)) = http1.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    }));
    first_answer(
        &agent,
        &line_for(http1_port, ""),
        "down #transport: backend answered HTTP/1.x, not HTTP/2\n",
        "HTTP/1.1 server",
    )
    .await;
}

/// A listener with a full accept queue: further connection attempts get no SYN-ACK.
fn blackholed_port() -> (u16, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let listener = socket.listen(0).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::new();
    // Fill the queue until a connect no longer completes.
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(stream);
        assert!(held.len() < 64, "the accept queue never filled");
    }
    std::mem::forget(listener);
    (port, held)
}

#[tokio::test]
async fn tls_failures_name_the_problem() {
    let pki = TestPki::new(&["localhost"]);
    let dir = support::daemon::TempDir::new("misbehaving-tls");
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let tls = HealthBackend::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let plain = HealthBackend::start().await;
    let trusting = agent(&["--tls-ca-file", ca.to_str().unwrap()]).await;
    let untrusting = agent(&[]).await;

    // Control: the right name and CA work.
    let good = format!("127.0.0.1 {} ssl localhost", tls.port());
    assert!(ask(trusting.addr, &good).await.starts_with("up #SERVING"));

    first_answer(
        &trusting,
        &format!("127.0.0.1 {} ssl wrong.example", tls.port()),
        "down #tls: invalid peer certificate: certificate not valid for name",
        "wrong name",
    )
    .await;
    first_answer(
        &untrusting,
        &good,
        "down #tls: invalid peer certificate: UnknownIssuer",
        "untrusted CA",
    )
    .await;
    first_answer(
        &trusting,
        &format!("127.0.0.1 {} no-ssl localhost", tls.port()),
        "down #transport: backend answered TLS: ask with ssl on the request line\n",
        "plaintext to a TLS port",
    )
    .await;
    first_answer(
        &trusting,
        &format!("127.0.0.1 {} ssl localhost", plain.port()),
        "down #tls: ",
        "TLS to a plaintext port",
    )
    .await;
}
