//! Interop: the agent against the standard health services of gRPC stacks it did not
//! write, each a small server in tests/interop/ (built by `.ci/interop-setup`): grpcio,
//! grpc-js, grpc-go and grpc++. Every case runs against every stack: serving flips for
//! the whole server and a named service (watched and polled), an unknown service, Watch
//! carrying the changes, liveness within the server's ping policy, a killed and restarted
//! server, a graceful stop, TLS with the authority as server name, and a server stream
//! limit below the number of services.
//!
//! `node_orca` runs against grpc-js alone, the one stack whose installed version serves
//! ORCA out-of-band load reports itself (`ServerMetricRecorder`): the weight a
//! `weight=orca` line gets follows the cpu and application utilization the server
//! reports, and a line without the option gets none.

mod support;

#[path = "interop/server.rs"]
mod server;

use std::time::Duration;

use server::{Config, Server, Stack, Status};
use support::daemon::TempDir;
use support::*;

const WITHIN: Duration = Duration::from_secs(10);
/// A change a Watch stream carries, against a check interval of a minute.
const QUICKLY: Duration = Duration::from_secs(3);
const SERVICE: &str = "interop.Alpha";

#[derive(Clone, Copy, Debug)]
enum Mode {
    Watch,
    Poll,
}

/// The agent with short intervals and no hysteresis, in `mode`, plus `extra` flags.
async fn fast_agent(mode: Mode, extra: &[&str]) -> Agent {
    let mode = match mode {
        Mode::Watch => "watch",
        Mode::Poll => "poll",
    };
    let mut flags = vec![
        "--health-mode",
        mode,
        "--check-interval",
        "200ms",
        "--rise",
        "1",
        "--fall",
        "1",
    ];
    flags.extend_from_slice(extra);
    start_agent(&flags).await
}

/// Flips the whole server and a named service down and back up; the other one keeps
/// its status meanwhile.
async fn serving_flips(stack: Stack, mode: Mode) {
    let mut server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let agent = fast_agent(mode, &[]).await;
    let whole = line_for(server.port, "");
    let named = line_for(server.port, SERVICE);
    for (line, service, other) in [(&whole, "", &named), (&named, SERVICE, &whole)] {
        reply_becomes(agent.addr, line, "up #SERVING", WITHIN).await;
        server.set(service, Status::NotServing).await;
        reply_becomes(agent.addr, line, "down #NOT_SERVING", WITHIN).await;
        let unchanged = ask(agent.addr, other).await;
        assert!(unchanged.starts_with("up #SERVING"), "{other}: {unchanged}");
        server.set(service, Status::Serving).await;
        reply_becomes(agent.addr, line, "up #SERVING", WITHIN).await;
    }
}

/// What the agent answers for a service the server does not know: Watch says
/// SERVICE_UNKNOWN (the same on every stack); Check fails with NOT_FOUND and each stack's
/// own message.
fn unknown_service_reply(stack: Stack, mode: Mode, service: &str) -> String {
    match (mode, stack) {
        (Mode::Watch, _) => "down #SERVICE_UNKNOWN".to_string(),
        (Mode::Poll, Stack::Python) => "down #grpc NOT_FOUND".to_string(),
        (Mode::Poll, Stack::Node) => {
            format!("down #grpc NOT_FOUND: Health status unknown for service {service}")
        }
        (Mode::Poll, Stack::Go) => "down #grpc NOT_FOUND: unknown service".to_string(),
        (Mode::Poll, Stack::Cpp) => "down #grpc NOT_FOUND: service name unknown".to_string(),
    }
}

/// An unknown service reads down with the stack's reason, and up once the server
/// registers it (a Watch stream on an unknown service stays open and says so).
async fn unknown_service(stack: Stack, mode: Mode) {
    let missing = "interop.Missing";
    let mut server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let agent = fast_agent(mode, &[]).await;
    let line = line_for(server.port, missing);
    let expected = unknown_service_reply(stack, mode, missing);
    let reply = reply_becomes(agent.addr, &line, &expected, WITHIN).await;
    assert_eq!(reply, format!("{expected}\n"), "{stack}, {mode:?}");
    server.set(missing, Status::Serving).await;
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    if let Mode::Watch = mode {
        assert_eq!(
            backend_view(&agent, &line).await["mode"],
            "watch",
            "{stack}"
        );
    }
}

/// In watch mode the target is watched, and a change the backend reports applies long
/// before the next check would.
async fn watch_streams_carry_the_changes(stack: Stack) {
    let mut server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let agent = start_agent(&[
        "--health-mode",
        "watch",
        "--rise",
        "1",
        "--check-interval",
        "60s",
        "--liveness-interval",
        "60s",
    ])
    .await;
    let line = line_for(server.port, SERVICE);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    assert_eq!(
        backend_view(&agent, &line).await["mode"],
        "watch",
        "{stack}"
    );
    server.set(SERVICE, Status::NotServing).await;
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", QUICKLY).await;
    server.set(SERVICE, Status::Serving).await;
    reply_becomes(agent.addr, &line, "up #SERVING", QUICKLY).await;
    assert_eq!(
        backend_view(&agent, &line).await["mode"],
        "watch",
        "{stack}"
    );
}

/// A watched connection's liveness PINGs (and a Check every third interval) stay within
/// the server's ping policy: grpc-go and gRPC's C core answer a third PING without data
/// in five minutes with GOAWAY `too_many_pings`, which would end the stream and leave the
/// target polled. At a 100 ms liveness interval, 3 s are about 30 liveness rounds.
async fn liveness_stays_within_the_ping_policy(stack: Stack) {
    let server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let agent = start_agent(&[
        "--health-mode",
        "watch",
        "--check-interval",
        "100ms",
        "--liveness-interval",
        "100ms",
    ])
    .await;
    let line = line_for(server.port, SERVICE);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        let view = backend_view(&agent, &line).await;
        assert_eq!(view["mode"], "watch", "{stack}: the stream ended: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = ask(agent.addr, &line).await;
    assert!(reply.starts_with("up #SERVING"), "{stack}: {reply}");
}

/// A killed server reads down; started again on its port, it reads up and is watched
/// again.
async fn a_restarted_server_reads_up_again(stack: Stack) {
    let server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let port = server.port;
    let agent = fast_agent(Mode::Watch, &[]).await;
    let line = line_for(port, SERVICE);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    drop(server);
    reply_becomes(agent.addr, &line, "down #connection refused", WITHIN).await;
    let config = Config {
        port,
        ..Config::services(&[SERVICE])
    };
    let mut again = Server::start(stack, &config).await;
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    eventually(WITHIN, "the restarted server is watched", || async {
        backend_view(&agent, &line).await["mode"] == "watch"
    })
    .await;
    again.set(SERVICE, Status::NotServing).await;
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", WITHIN).await;
}

/// A server whose connections reach `max_connection_age` (9 s, as many deployments set
/// it) ends every Watch stream on them with GOAWAY; asked in a tight loop with the agent's
/// defaults across two such ends, the target never reads anything but up: a stream's end
/// leaves it as fresh as its connection was (it used to read `down #stale` each time,
/// until the follow-up Check came back).
async fn a_stream_ended_by_max_connection_age_never_reads_down(stack: Stack) {
    let config = Config {
        max_connection_age_ms: Some(9_000),
        ..Config::services(&[SERVICE])
    };
    let server = Server::start(stack, &config).await;
    let agent = start_agent(&[]).await;
    let line = line_for(server.port, SERVICE);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let started = std::time::Instant::now();
    let mut asks = 0;
    let mut not_up = Vec::new();
    while started.elapsed() < Duration::from_secs(22) {
        let reply = ask(agent.addr, &line).await;
        asks += 1;
        if !reply.starts_with("up #SERVING") {
            not_up.push(reply);
        }
    }
    let metrics = support::http::get(agent.admin, "/metrics").await.body;
    let opened = metrics
        .lines()
        .find_map(|line| line.strip_prefix("haproxy_grpc_agent_probes_total{result=\"serving\"} "))
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    eprintln!(
        "{stack}: {asks} asks, {} not up; {opened} serving results",
        not_up.len()
    );
    // The first stream, two ends each followed by a poll and a new stream: at least five.
    assert!(
        opened >= 5,
        "{stack}: the streams did not end ({opened} results)"
    );
    assert!(not_up.is_empty(), "{stack}: {not_up:?}");
}

/// A graceful stop: the stack's health service says NOT_SERVING on the open Watch
/// stream before the server goes away (grpc-js's has no shutdown of its own: the server
/// program sets every service NOT_SERVING), so the target turns down for that reason,
/// then reads connection refused.
async fn a_graceful_stop_reads_down(stack: Stack) {
    let mut server = Server::start(stack, &Config::services(&[SERVICE])).await;
    let agent = fast_agent(Mode::Watch, &[]).await;
    let line = line_for(server.port, SERVICE);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let mut events = support::http::EventStream::open(agent.admin).await;
    server.stop().await;
    let event = events.next(WITHIN).await;
    let transition: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        (
            &transition["line"],
            &transition["from"],
            &transition["to"],
            &transition["reason"]
        ),
        (
            &serde_json::json!(line),
            &serde_json::json!("up"),
            &serde_json::json!("down"),
            &serde_json::json!("NOT_SERVING")
        ),
        "{stack}: {}",
        event.data
    );
    reply_becomes(agent.addr, &line, "down #connection refused", WITHIN).await;
}

/// TLS: the server's certificate names `interop.test`, the request line's authority,
/// signed by a CA the agent is given.
async fn tls_with_the_authority_as_server_name(stack: Stack) {
    let pki = TestPki::new(&["interop.test"]);
    let dir = TempDir::new("interop-tls");
    let cert = dir.write("server.pem", &pki.cert_pem);
    let key = dir.write("server.key", &pki.key_pem);
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let config = Config {
        tls: Some((cert, key)),
        ..Config::services(&[SERVICE])
    };
    let mut server = Server::start(stack, &config).await;
    let agent = fast_agent(Mode::Watch, &["--tls-ca-file", ca.to_str().unwrap()]).await;
    let whole = format!("127.0.0.1 {} ssl interop.test", server.port);
    let named = format!("{whole} {SERVICE}");
    reply_becomes(agent.addr, &whole, "up #SERVING", WITHIN).await;
    reply_becomes(agent.addr, &named, "up #SERVING", WITHIN).await;
    server.set(SERVICE, Status::NotServing).await;
    reply_becomes(agent.addr, &named, "down #NOT_SERVING", WITHIN).await;
}

/// Ten services on a server that allows `max_streams` concurrent streams: every target
/// reads its own status, before and after some change.
async fn ten_services_over_few_streams(stack: Stack, mode: Mode, max_streams: u32) {
    let services: Vec<String> = (0..10).map(|n| format!("interop.S{n}")).collect();
    let config = Config {
        services: services.clone(),
        max_streams: Some(max_streams),
        ..Config::default()
    };
    let mut server = Server::start(stack, &config).await;
    for down in [1, 4, 7] {
        server.set(&services[down], Status::NotServing).await;
    }
    let agent = fast_agent(mode, &[]).await;
    let port = server.port;
    let expect = |down: &[usize]| -> Vec<(String, &'static str)> {
        services
            .iter()
            .enumerate()
            .map(|(n, service)| {
                let status = if down.contains(&n) {
                    "down #NOT_SERVING"
                } else {
                    "up #SERVING"
                };
                (line_for(port, service), status)
            })
            .collect()
    };
    // The C core (grpcio, grpc++) holds a client to the limit only once the client has
    // acknowledged its SETTINGS: a burst of streams on a new connection can slip past
    // it. One target first, so that every other one meets the limit.
    reply_becomes(
        agent.addr,
        &line_for(port, &services[0]),
        "up #SERVING",
        WITHIN,
    )
    .await;
    replies_become(agent.addr, &expect(&[1, 4, 7]), WITHIN, &stack.to_string()).await;
    server.set(&services[1], Status::Serving).await;
    server.set(&services[2], Status::NotServing).await;
    replies_become(agent.addr, &expect(&[2, 4, 7]), WITHIN, &stack.to_string()).await;
}

/// Every case against one stack, each its own test in a module named after the stack.
macro_rules! interop_cases {
    ($($module:ident => $stack:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test]
            async fn serving_flips_in_watch_mode() {
                serving_flips($stack, Mode::Watch).await;
            }

            #[tokio::test]
            async fn serving_flips_in_poll_mode() {
                serving_flips($stack, Mode::Poll).await;
            }

            #[tokio::test]
            async fn unknown_service_in_watch_mode() {
                unknown_service($stack, Mode::Watch).await;
            }

            #[tokio::test]
            async fn unknown_service_in_poll_mode() {
                unknown_service($stack, Mode::Poll).await;
            }

            #[tokio::test]
            async fn watch_streams_carry_the_changes() {
                super::watch_streams_carry_the_changes($stack).await;
            }

            #[tokio::test]
            async fn liveness_stays_within_the_ping_policy() {
                super::liveness_stays_within_the_ping_policy($stack).await;
            }

            #[tokio::test]
            async fn a_restarted_server_reads_up_again() {
                super::a_restarted_server_reads_up_again($stack).await;
            }

            #[tokio::test]
            async fn a_stream_ended_by_max_connection_age_never_reads_down() {
                super::a_stream_ended_by_max_connection_age_never_reads_down($stack).await;
            }

            #[tokio::test]
            async fn a_graceful_stop_reads_down() {
                super::a_graceful_stop_reads_down($stack).await;
            }

            #[tokio::test]
            async fn tls_with_the_authority_as_server_name() {
                super::tls_with_the_authority_as_server_name($stack).await;
            }

            #[tokio::test]
            async fn ten_services_over_4_streams_in_watch_mode() {
                ten_services_over_few_streams($stack, Mode::Watch, 4).await;
            }

            #[tokio::test]
            async fn ten_services_over_4_streams_in_poll_mode() {
                ten_services_over_few_streams($stack, Mode::Poll, 4).await;
            }

            #[tokio::test]
            async fn ten_services_over_1_stream_in_watch_mode() {
                ten_services_over_few_streams($stack, Mode::Watch, 1).await;
            }

            #[tokio::test]
            async fn ten_services_over_1_stream_in_poll_mode() {
                ten_services_over_few_streams($stack, Mode::Poll, 1).await;
            }
        }
    )*};
}

interop_cases! {
    python => Stack::Python,
    node => Stack::Node,
    go => Stack::Go,
    cpp => Stack::Cpp,
}

/// grpc-js's own ORCA service (`ServerMetricRecorder`): its out-of-band load reports
/// become the reply's weight. The only stack here with one in the versions installed
/// (tests/interop/README.md), hence these cases run for it alone.
mod node_orca {
    use super::*;
    use server::Utilization;

    /// Weights that follow each report at once: reports every 100 ms (grpc-js has no
    /// minimum interval and sends the first one only after an interval), no smoothing,
    /// no blackout, no step bound.
    async fn direct_agent() -> Agent {
        start_agent(&[
            "--orca-report-interval",
            "100ms",
            "--orca-smoothing",
            "0s",
            "--orca-blackout",
            "0s",
            "--orca-max-step",
            "100",
        ])
        .await
    }

    /// cpu utilization gives the weight until the server sets application utilization,
    /// which then takes its place. A line for the same endpoint without `weight=orca`
    /// reads as it always has, though the endpoint's load-report stream is open.
    #[tokio::test]
    async fn grpc_js_load_reports_become_the_weight() {
        let mut server = Server::start(Stack::Node, &Config::services(&[SERVICE])).await;
        server.set_utilization(Utilization::Cpu, 0.5).await;
        let agent = direct_agent().await;
        let line = format!("{} weight=orca", line_for(server.port, SERVICE));
        let reply = reply_becomes(agent.addr, &line, "up 50% #SERVING", WITHIN).await;
        assert!(reply.trim_end().ends_with(" cpu 0.50"), "{reply}");
        server.set_utilization(Utilization::Application, 0.2).await;
        let reply = reply_becomes(agent.addr, &line, "up 80% #SERVING", WITHIN).await;
        assert!(reply.trim_end().ends_with(" app 0.20"), "{reply}");
        let plain = line_for(server.port, SERVICE);
        let reply = reply_becomes(agent.addr, &plain, "up #SERVING", WITHIN).await;
        assert!(!reply.contains('%') && !reply.contains(" app "), "{reply}");
    }
}
