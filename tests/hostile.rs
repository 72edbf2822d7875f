//! Hostile backends: one test per fault seen on the agent's own HTTP/2 client, each asserting
//! what the client must do instead. A connection that takes no new calls closes with its
//! last call; an abandoned call is reset; a refused call is retried on a new connection
//! within the same deadline; a silent connection is found by PING and replaced; HPACK and
//! CONTINUATION floods cost a connection, not the agent's time; SETTINGS are honoured
//! (header table size 0, initial window 0, a stream limit, lowered or not).
//!
//! The backends are scripted frame by frame (`support::raw_h2`). Tests that measure
//! (descriptors, memory, latency) run the agent binary and run alone; see [`alone`].

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::daemon::Daemon;
use support::raw_h2::*;
use support::*;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::time::Instant;

const CONNECT: Duration = Duration::from_millis(300);
const RPC: Duration = Duration::from_millis(500);
const INTERVAL: Duration = Duration::from_millis(100);

/// The usual fast settings (see tests/misbehaving.rs), in `mode` (poll or watch).
fn flags(mode: &'static str) -> Vec<&'static str> {
    vec![
        "--health-mode",
        mode,
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
    ]
}

async fn agent(mode: &'static str) -> Agent {
    start_agent(&flags(mode)).await
}

/// Measuring tests hold this for writing, the others for reading: a measurement never
/// shares the two cores with another test's backends and agents.
static SERIAL: RwLock<()> = RwLock::const_new(());

async fn alone() -> RwLockWriteGuard<'static, ()> {
    SERIAL.write().await
}

async fn together() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().await
}

/// Asks for every line at once, so that registering many targets costs one miss timeout.
async fn register(agent: std::net::SocketAddr, lines: &[String]) {
    let mut asks = tokio::task::JoinSet::new();
    for line in lines {
        let line = line.clone();
        asks.spawn(async move { ask(agent, &line).await });
    }
    while asks.join_next().await.is_some() {}
}

/// Fault 1. A backend sends GOAWAY while calls are in flight and then says nothing more,
/// keeping the socket open. The connection takes no new calls: it must close when its last
/// call ends (at most connect + rpc timeout later), so the open connections stay few and the
/// agent's descriptors and memory stay flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_with_calls_in_flight_leaks_no_connection() {
    let _alone = alone().await;
    // Each connection answers its first calls, then holds calls until two are in flight,
    // sends GOAWAY and goes silent. Odd connections' GOAWAY covers the held calls, even
    // ones' is below them (they were never processed).
    const ANSWERED_FIRST: usize = 30;
    let held: Arc<Mutex<HashMap<usize, Vec<u32>>>> = Arc::default();
    let responder: Responder = Arc::new(move |call: &Call| {
        if call.on_conn < ANSWERED_FIRST {
            return vec![Step::Serve];
        }
        let mut held = held.lock().unwrap();
        let streams = held.entry(call.conn).or_default();
        streams.push(call.stream);
        if streams.len() != 2 {
            return Vec::new();
        }
        let last = if call.conn % 2 == 1 {
            *streams.iter().max().unwrap()
        } else {
            streams.iter().min().unwrap() - 2
        };
        vec![Step::Send(goaway(last, NO_ERROR, b"")), Step::Silence]
    });
    let backend = RawBackend::start_with(Options::default(), responder).await;
    let services: Vec<String> = (0..6).map(|i| format!("svc{i}")).collect();
    for service in &services {
        backend.set_status(service, 1);
    }
    let daemon = Daemon::start(&flags("poll"), &[]);
    let lines: Vec<String> = services.iter().map(|s| line_for(backend.port, s)).collect();
    register(daemon.addr(), &lines).await;

    let started = Instant::now();
    let mut most_open = (0, Duration::ZERO);
    let mut at_5s = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(20) {
        ticks.tick().await;
        let open = backend.open();
        if open > most_open.0 {
            most_open = (open, started.elapsed());
        }
        if at_5s.is_none() && started.elapsed() >= Duration::from_secs(5) {
            at_5s = Some((daemon.open_fds(), daemon.rss_kib()));
        }
    }
    let (fds_5s, rss_5s) = at_5s.unwrap();
    let (fds_20s, rss_20s) = (daemon.open_fds(), daemon.rss_kib());
    let summary = format!(
        "connections accepted {}, open now {}, most open {} (at {:?}); agent fds {fds_5s} at \
         5 s, {fds_20s} at 20 s; RSS {rss_5s} KiB at 5 s, {rss_20s} KiB at 20 s",
        backend.accepted(),
        backend.open(),
        most_open.0,
        most_open.1,
    );
    println!("{summary}");
    assert!(
        backend.accepted() >= 10,
        "the backend did not rotate connections often enough to test anything: {summary}"
    );
    assert!(
        most_open.0 <= 4,
        "connections that took no new calls stayed open: {summary}"
    );
    assert!(
        fds_20s.abs_diff(fds_5s) <= 3,
        "the agent's descriptors grew: {summary}"
    );
    assert!(
        rss_20s.saturating_sub(rss_5s) < 2048,
        "the agent's memory grew: {summary}"
    );
}

/// Fault 2. Calls abandoned at their deadline must be reset (or the server keeps counting
/// them against its stream limit), the target must come back once answers are prompt again,
/// and a REFUSED_STREAM is retried on a new connection under the same deadline.
#[tokio::test]
async fn abandoned_calls_are_reset_and_a_refused_call_is_retried_in_its_deadline() {
    let _together = together().await;
    slow_answers_are_reset_and_do_not_wedge_the_target().await;
    a_refused_call_is_retried_on_a_new_connection_in_its_deadline().await;
}

async fn slow_answers_are_reset_and_do_not_wedge_the_target() {
    let slow = Arc::new(AtomicBool::new(false));
    let abandoned: Arc<Mutex<Vec<(usize, u32)>>> = Arc::default();
    let responder: Responder = {
        let (slow, abandoned) = (Arc::clone(&slow), Arc::clone(&abandoned));
        Arc::new(move |call: &Call| {
            if !slow.load(Ordering::SeqCst) {
                return vec![Step::Serve];
            }
            abandoned.lock().unwrap().push((call.conn, call.stream));
            vec![Step::Later {
                after: Duration::from_secs(10),
                stream: call.stream,
                bytes: answer(call.stream, 1),
            }]
        })
    };
    let options = Options {
        settings: vec![(MAX_CONCURRENT_STREAMS, 3)],
        enforce_stream_limit: true,
        ..Options::default()
    };
    let backend = RawBackend::start_with(options, responder).await;
    let agent = agent("poll").await;
    let services = ["a", "b", "c", "d"];
    let up: Vec<(String, &str)> = services
        .iter()
        .map(|service| {
            backend.set_status(service, 1);
            (line_for(backend.port, service), "up #SERVING")
        })
        .collect();
    replies_become(agent.addr, &up, Duration::from_secs(5), "before").await;

    slow.store(true, Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "eight calls answered slowly",
        || async { abandoned.lock().unwrap().len() >= 8 },
    )
    .await;
    slow.store(false, Ordering::SeqCst);
    replies_become(
        agent.addr,
        &up,
        Duration::from_secs(3),
        "once answers are prompt again",
    )
    .await;

    let abandoned = abandoned.lock().unwrap().clone();
    let unreset = || {
        abandoned
            .iter()
            .filter(|(conn, stream)| {
                !backend.connection(*conn).frames().iter().any(|frame| {
                    frame.kind == RST_STREAM
                        && frame.stream == *stream
                        && frame.code() == Some(CANCEL)
                })
            })
            .copied()
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + RPC + Duration::from_secs(1);
    while !unreset().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        unreset().is_empty(),
        "abandoned calls (connection, stream) never reset with CANCEL: {:?} of {:?}; \
         {} refused for the limit of 3",
        unreset(),
        abandoned,
        backend.refused()
    );
}

async fn a_refused_call_is_retried_on_a_new_connection_in_its_deadline() {
    // The second call on the first connection is refused late; the first call on any
    // later connection (the retry) is never answered; everything else is served.
    let responder: Responder = Arc::new(|call: &Call| match (call.conn, call.on_conn) {
        (0, 1) => vec![Step::Later {
            after: RPC - Duration::from_millis(50),
            stream: call.stream,
            bytes: rst_stream(call.stream, REFUSED_STREAM),
        }],
        (1.., 0) => Vec::new(),
        _ => vec![Step::Serve],
    });
    let backend = RawBackend::start_with(Options::default(), responder).await;
    let agent = agent("poll").await;
    let line = line_for(backend.port, "");
    reply_becomes(agent.addr, &line, "up #SERVING", Duration::from_secs(5)).await;

    // Every reply until the target is up again after the refused probe.
    let mut replies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = ask(agent.addr, &line).await;
        let seen_down = replies.iter().any(|r: &String| r.starts_with("down"));
        let again_up = seen_down && reply.starts_with("up");
        if replies.last() != Some(&reply) {
            replies.push(reply);
        }
        if again_up || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        replies
            .iter()
            .all(|reply| !reply.contains("probe deadline")),
        "one deadline must cover a call and its retry; replies: {replies:?}"
    );
    let calls = backend.calls();
    let refused = calls.iter().find(|c| c.conn == 0 && c.on_conn == 1);
    let retry = calls.iter().find(|c| c.conn == 1 && c.on_conn == 0);
    let (Some(refused), Some(retry)) = (refused, retry) else {
        let calls: Vec<String> = calls
            .iter()
            .map(|call| format!("connection {} stream {}", call.conn, call.stream))
            .collect();
        panic!(
            "the refused call was not made again on a new connection ({} accepted); \
             calls: {calls:?}; replies: {replies:?}",
            backend.accepted()
        );
    };
    let given_up = |conn: &Conn| {
        let reset = conn
            .frames()
            .into_iter()
            .find(|frame| frame.kind == RST_STREAM && frame.stream == retry.stream);
        reset.map(|frame| frame.at).or(conn.closed_by_peer())
    };
    let retried_on = backend.connection(1);
    let deadline = Instant::now() + Duration::from_secs(2);
    while given_up(&retried_on).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Some(ended) = given_up(&retried_on) else {
        panic!(
            "the retried call (stream {} on connection 1) was never reset nor its connection \
             closed; replies: {replies:?}",
            retry.stream
        );
    };
    let took = ended - refused.at;
    assert!(
        took <= RPC + CONNECT + Duration::from_millis(100),
        "the call and its retry took {took:?}, over rpc + connect timeouts; replies: {replies:?}"
    );
}

/// Fault 3. A connection that goes silent (no answers, no PING acks, socket open) must be
/// found and replaced, whether it carries a Watch stream (its liveness PING or Check goes
/// unanswered) or polled Checks (PING).
#[tokio::test]
async fn a_silent_connection_is_found_by_ping_and_replaced() {
    let _together = together().await;
    for mode in ["watch", "poll"] {
        let backend = RawBackend::start_with(Options::default(), serving()).await;
        backend.set_status("svc", 2);
        // A connection with a Watch stream is proven alive every `liveness_interval` (a
        // PING, every third time a Check; the stream is silent while its status holds);
        // one with streams that was silent that long is PINGed.
        let mut flags = flags(mode);
        flags.extend(["--liveness-interval", "500ms"]);
        let agent = start_agent(&flags).await;
        let line = line_for(backend.port, "svc");
        reply_becomes(
            agent.addr,
            &line,
            "down #NOT_SERVING",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            backend.accepted(),
            1,
            "{mode}: one connection before the silence"
        );

        // Only a new connection can tell the agent the service is serving now.
        backend.silence(0);
        backend.set_status("svc", 1);
        let within = CONNECT + 2 * RPC + 10 * INTERVAL;
        let started = Instant::now();
        let deadline = started + within;
        let mut last = String::new();
        while !last.starts_with("up") && Instant::now() < deadline {
            last = ask(agent.addr, &line).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let silent = backend.connection(0);
        let since = |at: Instant| at.saturating_duration_since(started);
        // What the agent asked the silent connection: a PING, or while watched maybe the
        // liveness Check (a new stream's HEADERS).
        let first_ask = silent
            .frames()
            .iter()
            .find(|frame| (frame.kind == PING || frame.kind == HEADERS) && frame.at >= started)
            .map(|frame| (frame.kind, since(frame.at)));
        let replaced = backend
            .connections()
            .get(1)
            .map(|conn| since(conn.accepted_at));
        let summary = format!(
            "{mode}: after {:?} the reply is {last:?}; since the silence, the silent connection \
             was first asked (frame type, when) {first_ask:?} and a new connection came after \
             {replaced:?}",
            started.elapsed(),
        );
        assert!(last.starts_with("up #SERVING"), "{summary}");
        assert!(first_ask.is_some(), "{summary}");
        assert!(replaced.is_some(), "{summary}");
    }
}

/// Fault 4. Backends whose header blocks refer to one dynamic-table entry thousands of
/// times (16 KiB frames of 1-byte references, 10 MB/s between three connections) must not
/// slow the cached answers for other targets: a flooding connection is closed rather than
/// decoded, and its target reads down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpack_flood_does_not_slow_other_answers() {
    let _alone = alone().await;
    let good = HealthBackend::start().await;
    let lines: Vec<String> = (0..8)
        .map(|i| {
            let service = format!("svc{i}");
            good.set(&service, Wire::Serving);
            line_for(good.port(), &service)
        })
        .collect();
    let pacer = Pacer::new(10_000_000);
    let responder: Responder = Arc::new(move |call: &Call| {
        let chunk = vec![amplified_headers(call.stream, &[]); 4].concat();
        vec![
            Step::Send(amplified_headers(call.stream, &opening_fields())),
            Step::Flood {
                chunk,
                pacer: Some(Arc::clone(&pacer)),
            },
        ]
    });
    let mut floods = Vec::new();
    for _ in 0..3 {
        floods.push(RawBackend::start_with(Options::default(), Arc::clone(&responder)).await);
    }
    let flooding = || floods.iter().flat_map(|flood| flood.connections());
    let daemon = Daemon::start(&flags("poll"), &[]);
    let agent = daemon.addr();
    register(agent, &lines).await;
    let up: Vec<(String, &str)> = lines.iter().map(|l| (l.clone(), "up #SERVING")).collect();
    replies_become(agent, &up, Duration::from_secs(5), "before the flood").await;

    let (baseline, baseline_cpu) = latencies(&daemon, &lines, 2000).await;
    let flood_lines: Vec<String> = floods.iter().map(|f| line_for(f.port, "")).collect();
    register(agent, &flood_lines).await;
    eventually(Duration::from_secs(5), "the flood has begun", || async {
        flooding().map(|conn| conn.written()).sum::<u64>() >= 1_000_000
    })
    .await;
    let (flooded, flooded_cpu) = latencies(&daemon, &lines, 2000).await;
    let mut flood_replies = Vec::new();
    for line in &flood_lines {
        flood_replies.push(ask(agent, line).await);
    }
    let written: u64 = flooding().map(|conn| conn.written()).sum();
    let accepted = flooding().count();
    let closed = flooding()
        .filter(|conn| conn.closed_by_peer().is_some())
        .count();
    let summary = format!(
        "cached asks without the flood: p50 {:?}, p99 {:?}, {} not up (agent CPU \
         {baseline_cpu:.0}%); with the flood: p50 {:?}, p99 {:?}, {} not up (agent CPU \
         {flooded_cpu:.0}%); flood targets {flood_replies:?}; flood connections {accepted} \
         accepted, {closed} closed by the agent, {} MB written",
        baseline.p50,
        baseline.p99,
        baseline.not_up,
        flooded.p50,
        flooded.p99,
        flooded.not_up,
        written / 1_000_000,
    );
    println!("{summary}");
    let bound = (baseline.p99 * 5).max(Duration::from_millis(20));
    assert!(flooded.p99 <= bound, "p99 over {bound:?}: {summary}");
    assert_eq!(baseline.not_up + flooded.not_up, 0, "{summary}");
    // Down with a reason, or silence while a first probe is still pending (the agent's
    // own lateness is no verdict); never up.
    assert!(
        flood_replies
            .iter()
            .all(|reply| reply.is_empty() || reply.starts_with("down #")),
        "{summary}"
    );
    assert!(
        closed >= 1,
        "the agent never closed a flooding connection: {summary}"
    );
}

/// A HEADERS frame of 16 KiB: `fields` first, then references to dynamic-table entry 62.
fn amplified_headers(stream: u32, fields: &[u8]) -> Vec<u8> {
    let mut block = fields.to_vec();
    block.resize(16_384, 0xbe);
    frame(HEADERS, END_HEADERS, stream, &block)
}

/// :status 200, a gRPC content-type, and `x-amplify: 0` inserted as dynamic entry 62.
fn opening_fields() -> Vec<u8> {
    let mut fields = vec![0x88];
    fields.extend(block(&[("content-type", "application/grpc")]));
    fields.extend(indexed_literal("x-amplify", "0"));
    fields
}

struct Latency {
    p50: Duration,
    p99: Duration,
    /// Answers other than `up #SERVING` (all of them should be).
    not_up: usize,
}

/// Asks `count` cached questions one after another; their latency, and the agent's CPU use
/// meanwhile (percent of one core).
async fn latencies(daemon: &Daemon, lines: &[String], count: usize) -> (Latency, f64) {
    let (cpu_before, started) = (cpu_ticks(daemon), Instant::now());
    let mut took = Vec::with_capacity(count);
    let mut not_up = 0;
    for line in lines.iter().cycle().take(count) {
        let asked = Instant::now();
        let reply = ask(daemon.addr(), line).await;
        took.push(asked.elapsed());
        not_up += usize::from(!reply.starts_with("up #SERVING"));
    }
    let cpu = (cpu_ticks(daemon) - cpu_before) as f64 / started.elapsed().as_secs_f64();
    took.sort();
    let latency = Latency {
        p50: took[count / 2],
        p99: took[count * 99 / 100],
        not_up,
    };
    (latency, cpu)
}

/// The process's user + system time so far, in clock ticks (1/100 s).
fn cpu_ticks(daemon: &Daemon) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (proc(5)).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Fault 5. A server that announces SETTINGS_HEADER_TABLE_SIZE 0 checks, as nghttp2 does,
/// that the client's next header block starts with a table size update to 0 and that no
/// block uses the dynamic table after; the target stays up on one connection.
#[tokio::test]
async fn a_zero_header_table_is_honoured_on_one_connection() {
    let _together = together().await;
    let options = Options {
        settings: vec![(HEADER_TABLE_SIZE, 0)],
        strict_table_size: true,
        ..Options::default()
    };
    let backend = RawBackend::start_with(options, serving()).await;
    let agent = agent("poll").await;
    let line = line_for(backend.port, "");
    ask(agent.addr, &line).await;
    eventually(
        Duration::from_secs(10),
        "twenty checks answered",
        || async { backend.requests() >= 20 || backend.accepted() >= 20 },
    )
    .await;
    let violations: Vec<String> = backend
        .connections()
        .iter()
        .filter_map(|conn| conn.violation())
        .collect();
    assert_eq!(
        backend.accepted(),
        1,
        "connections accepted for {} checks answered; GOAWAY COMPRESSION_ERROR {} times, \
         first for: {:?}",
        backend.requests(),
        violations.len(),
        violations.first()
    );
    let reply = ask(agent.addr, &line).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
}

/// Fault 6. A server with SETTINGS_INITIAL_WINDOW_SIZE 0 opens each stream's window once
/// it has the stream's HEADERS; the request body waits for it.
#[tokio::test]
async fn a_zero_initial_window_is_opened_per_stream() {
    let _together = together().await;
    let options = Options {
        settings: vec![(INITIAL_WINDOW_SIZE, 0)],
        open_stream_windows: Some(65_535),
        ..Options::default()
    };
    let backend = RawBackend::start_with(options, serving()).await;
    let agent = agent("poll").await;
    let line = line_for(backend.port, "");
    ask(agent.addr, &line).await;
    // Over many probes: the first may go out before the client has the SETTINGS.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.requests() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = ask(agent.addr, &line).await;
    assert!(
        backend.requests() >= 5 && reply.starts_with("up #SERVING"),
        "{} checks reached the backend in 5 s; the target reads {reply:?}",
        backend.requests()
    );
}

/// Fault 7. Servers that allow 1, 2 or 4 concurrent streams (and refuse any stream past
/// that) with ten services each: every target reads its own answer, watched or polled, and
/// again after the servers lower their limit on the live connections.
#[tokio::test]
async fn stream_limits_are_respected_watched_and_polled() {
    let _together = together().await;
    for mode in ["watch", "poll"] {
        let mut backends = Vec::new();
        for limit in [1, 2, 4] {
            let options = Options {
                settings: vec![(MAX_CONCURRENT_STREAMS, limit)],
                enforce_stream_limit: true,
                ..Options::default()
            };
            backends.push(RawBackend::start_with(options, serving()).await);
        }
        let agent = agent(mode).await;
        let lines: Vec<String> = backends
            .iter()
            .flat_map(|backend| (0..10).map(|i| line_for(backend.port, &format!("svc{i}"))))
            .collect();
        // Round 0: every third service is NOT_SERVING; then other thirds.
        let set_round = |round: usize| -> Vec<(String, &'static str)> {
            let mut expected = Vec::new();
            for backend in &backends {
                for i in 0..10 {
                    let serving = (i + round) % 3 != 2;
                    backend.set_status(&format!("svc{i}"), if serving { 1 } else { 2 });
                    let prefix = if serving {
                        "up #SERVING"
                    } else {
                        "down #NOT_SERVING"
                    };
                    expected.push((line_for(backend.port, &format!("svc{i}")), prefix));
                }
            }
            expected
        };
        let within = Duration::from_secs(15);
        let expected = set_round(0);
        register(agent.addr, &lines).await;
        replies_become(
            agent.addr,
            &expected,
            within,
            &format!("{mode}, first answers"),
        )
        .await;
        replies_become(
            agent.addr,
            &set_round(1),
            within,
            &format!("{mode}, statuses changed"),
        )
        .await;
        if mode == "watch" {
            // A limit of 1 leaves no room for a Watch next to a Check: its targets are
            // polled, and no Watch ever reaches that backend.
            let watches = backends[0]
                .calls()
                .iter()
                .filter(|call| call.path.ends_with("/Watch"))
                .count();
            assert_eq!(
                watches, 0,
                "Watch calls sent to a backend limited to 1 stream"
            );
            // With 2 and 4, Watches are open, one stream per connection kept for Checks.
            for backend in &backends[1..] {
                assert!(
                    backend
                        .calls()
                        .iter()
                        .any(|call| call.path.ends_with("/Watch")),
                    "no Watch on a backend limited to {:?}",
                    backend.connection(0).limit()
                );
            }
        }

        // The servers lower their limit to 1 on the live connections.
        for backend in &backends[1..] {
            backend.send_settings(&[(MAX_CONCURRENT_STREAMS, 1)]);
        }
        eventually(
            within,
            "the client acknowledges the lower limits",
            || async {
                backends[1..].iter().all(|backend| {
                    let connections = backend.connections();
                    let mut open = connections.iter().filter(|conn| conn.is_open());
                    open.all(|conn| conn.settings_acknowledged())
                })
            },
        )
        .await;
        replies_become(
            agent.addr,
            &set_round(2),
            within,
            &format!("{mode}, limits lowered to 1"),
        )
        .await;
        let refused: Vec<usize> = backends.iter().map(|b| b.refused()).collect();
        println!("{mode}: streams refused past the limit (1, 2, 4 then lowered): {refused:?}");
    }
}

/// Fault 8. A header block that never ends (HEADERS, then empty CONTINUATION frames without
/// end) must cost the backend its connection at once, not the agent's time.
#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let _together = together().await;
    let responder: Responder = Arc::new(|call: &Call| {
        let empty = frame(CONTINUATION, 0, call.stream, &[]);
        vec![
            Step::Send(frame(HEADERS, 0, call.stream, &[0x88])),
            Step::Flood {
                chunk: empty.repeat(4096),
                pacer: None,
            },
        ]
    });
    let backend = RawBackend::start_with(Options::default(), responder).await;
    let agent = agent("poll").await;
    let line = line_for(backend.port, "");
    ask(agent.addr, &line).await;
    eventually(Duration::from_secs(5), "the first check", || async {
        backend.requests() >= 1
    })
    .await;
    let flooded = backend.connection(0);
    let started = backend.calls()[0].at;
    let cut_off = || flooded.closed_by_peer().is_some() || flooded.saw(GOAWAY);
    let deadline = started + RPC + Duration::from_secs(1);
    while !cut_off() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cut_off(),
        "the flooding connection still open {:?} after the flood began, {} MB read by the \
         agent so far",
        started.elapsed(),
        flooded.written() / 1_000_000
    );
    reply_becomes(agent.addr, &line, "down #", Duration::from_secs(5)).await;
    assert!(
        flooded.written() < 10_000_000,
        "the agent read {} bytes of the flood",
        flooded.written()
    );
}
