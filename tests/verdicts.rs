//! Whose word a verdict is: only the backend (or the request line) earns a `down`. The
//! agent's own troubles (no probe slot, a stream that ended, a first probe slower than the
//! miss timeout, its own network) never read `down`; the backend's own NOT_SERVING reads
//! down at once. Real backends, the real agent, and the real HAProxy where HAProxy's view
//! is the point.

mod support;

use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::haproxy::{Farm, Haproxy, ServerLine, haproxy_binary};
use support::proxy::Proxy;
use support::*;
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(20);

/// Asks `line` every `every` for `during`; returns each reply (trimmed; "" for silence).
async fn ask_for(agent: &Agent, line: &str, every: Duration, during: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut replies = Vec::new();
    while started.elapsed() < during {
        replies.push(ask(agent.addr, line).await.trim_end().to_string());
        tokio::time::sleep(every).await;
    }
    replies
}

fn count(replies: &[String], prefix: &str) -> usize {
    replies
        .iter()
        .filter(|reply| reply.starts_with(prefix))
        .count()
}

/// The issue's overload: poll mode, four probe slots, forty backends that take TCP and
/// never speak. Their probes hold slots for the whole connect timeout; a healthy target
/// asked every 250 ms must never read down for it (it used to read `down #stale` on 32 of
/// 80 asks).
#[tokio::test]
async fn mute_backends_holding_the_probe_slots_never_turn_a_healthy_target_down() {
    let healthy = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--max-probes-in-flight",
        "4",
        "--check-interval",
        "500ms",
    ])
    .await;
    let line = line_for(healthy.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let mut mute = Vec::new();
    for _ in 0..40 {
        let (port, handle) = silent_backend().await;
        let agent = agent.addr;
        let line = line_for(port, "");
        tokio::spawn(async move { ask(agent, &line).await });
        mute.push(handle);
    }
    let replies = ask_for(&agent, &line, Duration::from_millis(250), WITHIN / 2).await;
    let up = count(&replies, "up");
    let silent = replies.iter().filter(|reply| reply.is_empty()).count();
    eprintln!(
        "{} asks: {up} up, {silent} silent; {} checks reached the healthy backend",
        replies.len(),
        healthy.total_checks()
    );
    assert_eq!(count(&replies, "down"), 0, "{replies:?}");
    // Failing targets may hold only half the slots: the healthy one keeps being probed.
    assert!(up > replies.len() / 2, "{replies:?}");
}

/// A backend whose connections take 1.2 s to say their first word is up in steady state
/// with 2 s timeouts, but its first probe outlasts the 1 s miss timeout: the first ask
/// after a (re)start gets silence, never `down`; the strict setting answers down.
#[tokio::test]
async fn a_first_probe_slower_than_the_miss_timeout_is_silence_not_down() {
    let backend = HealthBackend::start().await;
    let slow = Proxy::start(backend.port(), Duration::from_millis(1200)).await;
    let line = line_for(slow.port, "");
    let flags = ["--grpc-connect-timeout", "2s", "--grpc-rpc-timeout", "2s"];
    let agent = start_agent(&flags).await;
    let started = Instant::now();
    assert_eq!(
        ask(agent.addr, &line).await,
        "",
        "silence while the first probe runs"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let metrics = support::http::get(agent.admin, "/metrics").await.body;
    assert!(
        metrics.contains("haproxy_grpc_agent_agent_faults_total{cause=\"first_probe_pending\"} 1"),
        "{metrics}"
    );

    let strict = start_agent(&[&flags[..], &["--agent-fault-reply", "down"]].concat()).await;
    assert_eq!(ask(strict.addr, &line).await, "down #first probe pending\n");
}

/// A watched target whose stream ends (here: its connection reset every 3 s, and 700 ms to
/// get a new one) stays as fresh as its connection was until the next observation: it
/// never reads stale, let alone down, in a tight loop.
#[tokio::test]
async fn a_watch_stream_ending_on_a_healthy_backend_never_reads_down() {
    let backend = HealthBackend::start().await;
    let proxy = Proxy::start(backend.port(), Duration::from_millis(700)).await;
    let line = line_for(proxy.port, "");
    let agent = start_agent(&["--check-interval", "200ms"]).await;
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    eventually(WITHIN, "the target is watched", || async {
        backend_view(&agent, &line).await["mode"] == "watch"
    })
    .await;
    let resetting = async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.reset_all();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let asking = ask_for(
        &agent,
        &line,
        Duration::from_millis(5),
        Duration::from_secs(13),
    );
    let ((), replies) = tokio::join!(resetting, asking);
    let not_up: Vec<&String> = replies.iter().filter(|r| !r.starts_with("up")).collect();
    eprintln!(
        "{} asks, {} not up; {} connections through the proxy",
        replies.len(),
        not_up.len(),
        proxy.connections()
    );
    assert!(proxy.connections() >= 4, "the streams were cut");
    assert!(not_up.is_empty(), "{not_up:?}");
}

/// HAProxy's own TCP check beside the agent's, at the issue's `agent-inter 500ms`.
const FARM: Farm = Farm {
    server_words: "check inter 2s",
    agent_inter: "500ms",
    frontend_port: None,
};

/// The issue's farm: 100 servers (ten backends, ten services each) behind the real
/// HAProxy with `agent-inter 500ms` and the agent's defaults. Flipped to NOT_SERVING, each
/// shows DOWN within agent-inter plus 0.2 s (it took 4.5 s when the backend's own word
/// went through fall). And one connection reset on a healthy server does not flip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_shows_a_farm_flipped_to_not_serving_down_within_agent_inter() {
    let mut backends = Vec::new();
    for _ in 0..10 {
        let backend = HealthBackend::start().await;
        for service in 0..10 {
            backend.set(&format!("s{service}"), Wire::Serving);
        }
        backends.push(backend);
    }
    let agent = start_agent(&[]).await;
    let mut servers = Vec::new();
    for (b, backend) in backends.iter().enumerate() {
        for service in 0..10 {
            let line = line_for(backend.port(), &format!("s{service}"));
            servers.push((format!("b{b}s{service}"), backend.port(), line));
        }
    }
    let lines: Vec<ServerLine> = servers
        .iter()
        .map(|(name, port, line)| (name.as_str(), *port, line.clone()))
        .collect();
    let haproxy = Haproxy::start_farm(agent.addr.port(), &lines, &FARM);
    let names: Vec<String> = servers.iter().map(|(name, _, _)| name.clone()).collect();
    // UP as the agent said it (HAProxy shows a new server UP before its first agent check).
    let up = ("UP", "SERVING");
    haproxy
        .until_all(&names, up, Instant::now(), WITHIN * 2)
        .await;
    // Followed by Watch streams, as in steady state (a target's first moments may be
    // polled while its stream opens).
    for (_, _, line) in &servers {
        eventually(WITHIN, "every target is watched", || async {
            backend_view(&agent, line).await["mode"] == "watch"
        })
        .await;
    }

    let flipped = Instant::now();
    for backend in &backends {
        for service in 0..10 {
            backend.set(&format!("s{service}"), Wire::NotServing);
        }
    }
    let down = ("DOWN", "NOT_SERVING");
    let mut took = haproxy.until_all(&names, down, flipped, WITHIN).await;
    took.sort();
    let (p50, max) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!(
        "NOT_SERVING to DOWN in show stat, 100 servers, agent-inter 500ms: p50 {p50:?}, max {max:?} ({})",
        haproxy_binary().version
    );
    assert!(
        max <= Duration::from_millis(700),
        "a server took {max:?}: more than agent-inter plus 0.2 s"
    );

    // A healthy server whose agent connection to its backend is reset stays UP.
    let backend = HealthBackend::start().await;
    let proxy = Proxy::start(backend.port(), Duration::ZERO).await;
    let single = Haproxy::start_farm(
        agent.addr.port(),
        &[("r", backend.port(), line_for(proxy.port, ""))],
        &FARM,
    );
    single.wait_for("r", "UP", "SERVING").await;
    let before = proxy.connections();
    proxy.reset_all();
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(5) {
        let status = single.servers().await.get("r").map(|s| s.status.clone());
        assert!(
            status.as_deref().is_some_and(|s| s.starts_with("UP")),
            "one reset flipped the server: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(proxy.connections() > before, "the agent connected again");
}

/// Every package upgrade restarts the agent. With a backend whose connections take 1.2 s
/// to say their first word (the miss timeout is 1 s), HAProxy never shows the server
/// DOWN across the restart: the first asks after it get silence, and HAProxy keeps UP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_never_shows_a_slow_backend_down_across_an_agent_restart() {
    let backend = HealthBackend::start().await;
    let slow = Proxy::start(backend.port(), Duration::from_millis(1200)).await;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port().to_string()
    };
    let args = [
        "--server-bind",
        "127.0.0.1",
        "--server-port",
        &port,
        "--metrics-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--grpc-connect-timeout",
        "2s",
        "--grpc-rpc-timeout",
        "2s",
    ];
    let start = |args: &[&str]| {
        let mut daemon = support::daemon::Daemon::spawn_exact(args, &[]);
        daemon.wait_for_log("\"agent listening\"", Duration::from_secs(20));
        daemon
    };
    let mut agent = start(&args);
    let haproxy = Haproxy::start_farm(
        port.parse().unwrap(),
        &[("slow", backend.port(), line_for(slow.port, ""))],
        &FARM,
    );
    haproxy.wait_for("slow", "UP", "SERVING").await;

    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(10));
    let mut restarted = start(&args);
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(6) {
        let status = haproxy
            .servers()
            .await
            .get("slow")
            .map(|s| s.status.clone());
        assert!(
            status.as_deref().is_some_and(|s| s.starts_with("UP")),
            "the restart showed the server {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The silence happened: the new agent met the slow first probe and said nothing.
    restarted.wait_for_log("\"first_probe_pending\"", Duration::from_secs(1));
    haproxy.wait_for("slow", "UP", "SERVING").await;
}

/// An agent fault is counted every time and logged once per episode; a deprecated
/// setting still starts the agent, with a warning that says what to do.
#[tokio::test]
async fn an_agent_fault_is_logged_once_per_episode() {
    let mut agent =
        support::daemon::Daemon::start(&["--max-targets", "1", "--trust-watch", "true"], &[]);
    agent.wait_for_log("\"deprecated setting ignored", Duration::from_secs(5));
    let first = line_for(closed_port(), "");
    assert!(
        ask(agent.addr(), &first)
            .await
            .starts_with("down #connection refused")
    );
    let second = line_for(closed_port(), "other");
    for _ in 0..5 {
        assert_eq!(
            ask(agent.addr(), &second).await,
            "",
            "silence for a full cache"
        );
    }
    let logged = agent
        .log()
        .into_iter()
        .filter(|line| line.contains("cannot answer from the backend's word"))
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 1, "{logged:#?}");
    assert!(
        logged[0].contains("\"cause\":\"target_limit\""),
        "{logged:?}"
    );
}
