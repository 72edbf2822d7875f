//! The admin API and metrics over real HTTP against a running agent: health and
//! readiness, the backends view and its filters, eviction, refresh, the event stream,
//! the token rules, and Prometheus metrics that move with requests and probes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::http::{self, EventStream};
use support::*;

const TOKEN: &str = "0123456789abcdef-admin";

/// Prometheus text: every sample line is `name{labels} value` with a valid name and a
/// number. Returns samples by their full `name{labels}`.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "unexpected comment {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        let valid = name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
        assert!(valid && !name.is_empty(), "bad metric name in {line:?}");
        if series.contains('{') {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn metrics(agent: &Agent) -> HashMap<String, f64> {
    let response = http::get(agent.admin, "/metrics").await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("text/plain")),
        "{:?}",
        response.headers
    );
    parse_prometheus(&response.body)
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}"))
}

/// The `/backends` id of a line.
async fn backend_id(agent: &Agent, line: &str) -> String {
    backend_view(agent, line).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The `/backends` entry for a line.
async fn backend_view(agent: &Agent, line: &str) -> serde_json::Value {
    let list = http::get(agent.admin, "/backends").await.json();
    list.as_array()
        .unwrap()
        .iter()
        .find(|view| view["line"] == line)
        .unwrap_or_else(|| panic!("{line} not in {list}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_unknown_paths() {
    let agent = start_agent(&[]).await;
    let healthz = http::get(agent.admin, "/healthz").await;
    assert_eq!((healthz.status, healthz.body.as_str()), (200, "ok\n"));
    let readyz = http::get(agent.admin, "/readyz").await;
    assert_eq!((readyz.status, readyz.body.as_str()), (200, "ready\n"));
    let missing = http::get(agent.admin, "/nothing-here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    let wrong_method = http::request(agent.admin, "PUT", "/backends", &[]).await;
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);
    assert!(wrong_method.json()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_requests_and_probes() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&["--health-mode", "poll", "--check-interval", "60s"]).await;
    let before = metrics(&agent).await;
    for name in [
        "haproxy_grpc_agent_check_errors_total{error_type=\"stale\"}",
        "haproxy_grpc_agent_grpc_channels_active",
        "haproxy_grpc_agent_haproxy_connections_active",
        "haproxy_grpc_agent_targets_registered",
        "haproxy_grpc_agent_probes_in_flight",
        "haproxy_grpc_agent_evictions_total{cause=\"idle\"}",
        "haproxy_grpc_agent_state_transitions_total{to=\"up\"}",
        "haproxy_grpc_agent_poller_lag_seconds_count",
        "haproxy_grpc_agent_check_duration_seconds_count",
        "haproxy_grpc_agent_probe_duration_seconds_count",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(before.contains_key(name), "{name} missing");
    }
    assert_eq!(
        sample(&before, "haproxy_grpc_agent_targets_registered"),
        0.0
    );

    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    assert!(
        ask(agent.addr, "not a request")
            .await
            .starts_with("down #bad request")
    );
    let unreachable = line_for(closed_port(), "");
    assert!(
        ask(agent.addr, &unreachable)
            .await
            .starts_with("down #connection refused")
    );

    let after = metrics(&agent).await;
    let moved = |series: &str| sample(&after, series) - before.get(series).copied().unwrap_or(0.0);
    assert_eq!(
        moved("haproxy_grpc_agent_check_requests_total{result=\"up\"}"),
        2.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_check_requests_total{result=\"down\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_check_requests_total{result=\"error\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_check_errors_total{error_type=\"parse_error\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_check_errors_total{error_type=\"backend_unreachable\"}"),
        1.0
    );
    assert_eq!(moved("haproxy_grpc_agent_cache_misses_total"), 2.0);
    assert_eq!(moved("haproxy_grpc_agent_cache_hits_total"), 1.0);
    assert_eq!(sample(&after, "haproxy_grpc_agent_targets_registered"), 2.0);
    assert_eq!(
        moved("haproxy_grpc_agent_probes_total{result=\"serving\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_probes_total{result=\"backend_unreachable\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_probe_duration_seconds_count"),
        2.0
    );
    assert_eq!(moved("haproxy_grpc_agent_poller_lag_seconds_count"), 2.0);
    assert_eq!(
        moved("haproxy_grpc_agent_check_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_state_transitions_total{to=\"up\"}"),
        1.0
    );
    assert_eq!(
        moved("haproxy_grpc_agent_state_transitions_total{to=\"down\"}"),
        1.0
    );
    // Open connections: the reachable backend's one; the refused one has none.
    assert_eq!(
        sample(&after, "haproxy_grpc_agent_grpc_channels_active"),
        1.0
    );
    assert!(sample(&after, "process_resident_memory_bytes") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_list_filters_and_one() {
    let serving = HealthBackend::start().await;
    let failing = HealthBackend::start().await;
    failing.set("", Wire::NotServing);
    let agent = start_agent(&["--check-interval", "60s"]).await;
    let up_line = line_for(serving.port(), "");
    let down_line = line_for(failing.port(), "");
    assert!(ask(agent.addr, &up_line).await.starts_with("up"));
    assert!(ask(agent.addr, &down_line).await.starts_with("down"));

    let list = http::get(agent.admin, "/backends").await;
    assert_eq!(list.status, 200);
    assert_eq!(list.header("content-type"), Some("application/json"));
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let up = backend_view(&agent, &up_line).await;
    assert_eq!(up["host"], "127.0.0.1");
    assert_eq!(up["port"], serving.port());
    assert_eq!(up["tls"], false);
    assert_eq!(up["authority"], "localhost");
    assert_eq!(up["service"], "");
    assert_eq!(up["status"], "up");
    assert_eq!(up["serving_status"], "SERVING");
    assert!(
        up["reply"].as_str().unwrap().starts_with("up #SERVING"),
        "{up}"
    );
    assert_eq!(up["last_reason"], "SERVING");
    assert_eq!(up["consecutive_successes"], 1);
    assert_eq!(up["consecutive_failures"], 0);
    assert_eq!(up["times_asked"], 1);
    for field in [
        "last_probe_unix_ms",
        "registered_unix_ms",
        "last_asked_unix_ms",
    ] {
        assert!(
            up[field].as_u64().is_some_and(|ms| ms > 1_700_000_000_000),
            "{field}: {up}"
        );
    }
    // Watched, and its status holds: nothing is planned until the backend says more.
    assert_eq!(up["mode"], "watch", "{up}");
    assert!(up["next_probe_unix_ms"].is_null(), "{up}");
    assert!(up["last_probe_latency_ms"].as_f64().is_some());

    let down = http::get(agent.admin, "/backends?status=down").await.json();
    let down = down.as_array().unwrap();
    assert_eq!(down.len(), 1);
    assert_eq!(down[0]["line"], down_line.as_str());
    assert_eq!(down[0]["serving_status"], "NOT_SERVING");
    assert_eq!(down[0]["consecutive_failures"], 1);
    let by_host = http::get(agent.admin, "/backends?host=127.0.0.1")
        .await
        .json();
    assert_eq!(by_host.as_array().unwrap().len(), 2);
    let none = http::get(agent.admin, "/backends?host=elsewhere.test")
        .await
        .json();
    assert_eq!(none.as_array().unwrap().len(), 0);
    let bad = http::get(agent.admin, "/backends?status=sideways").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("up, down or pending")
    );

    let id = up["id"].as_str().unwrap();
    let one = http::get(agent.admin, &format!("/backends/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["line"], up_line.as_str());
    let garbage = http::get(agent.admin, "/backends/!!!").await;
    assert_eq!(garbage.status, 400);
    // A well-formed id of a target nobody registered.
    let stranger = http::get(agent.admin, "/backends/MTI3LjAuMC4xIDEgbm8tc3NsIHg").await;
    assert_eq!(stranger.status, 404, "{}", stranger.body);
    assert!(stranger.json()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_evicts_and_stops_polling() {
    let evicted = HealthBackend::start().await;
    let clock = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--check-interval",
        "50ms",
        "--check-jitter",
        "0",
    ])
    .await;
    let line = line_for(evicted.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up"));
    assert!(
        ask(agent.addr, &line_for(clock.port(), ""))
            .await
            .starts_with("up")
    );
    eventually(
        Duration::from_secs(5),
        "a few background probes",
        || async { evicted.checks("") >= 3 },
    )
    .await;
    let id = backend_id(&agent, &line).await;
    let deleted = http::request(agent.admin, "DELETE", &format!("/backends/{id}"), &[]).await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.json()["line"], line.as_str());
    let checks_at_eviction = evicted.checks("");
    // The other target keeps time: ten of its probes are ten intervals.
    let ticks = clock.checks("");
    eventually(Duration::from_secs(10), "ten intervals pass", || async {
        clock.checks("") >= ticks + 10
    })
    .await;
    assert_eq!(
        evicted.checks(""),
        checks_at_eviction,
        "the evicted target is not probed"
    );
    assert_eq!(agent.oracle.len(), 1);
    let gone = http::get(agent.admin, &format!("/backends/{id}")).await;
    assert_eq!(gone.status, 404);
    let again = http::request(agent.admin, "DELETE", &format!("/backends/{id}"), &[]).await;
    assert_eq!(again.status, 404);
    let samples = metrics(&agent).await;
    assert_eq!(
        sample(
            &samples,
            "haproxy_grpc_agent_evictions_total{cause=\"admin\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_probes_now_and_returns_the_new_state() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--check-interval",
        "60s",
        "--fall",
        "1",
    ])
    .await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up"));
    assert_eq!(backend.checks(""), 1);
    backend.set("", Wire::NotServing);
    let id = backend_id(&agent, &line).await;
    let refreshed =
        http::request(agent.admin, "POST", &format!("/backends/{id}/refresh"), &[]).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let view = refreshed.json();
    assert_eq!(view["last_reason"], "NOT_SERVING");
    assert_eq!(view["status"], "down");
    assert_eq!(view["consecutive_failures"], 1);
    assert_eq!(backend.checks(""), 2, "exactly one more probe");
    assert_eq!(ask(agent.addr, &line).await, "down #NOT_SERVING\n");
    let stranger = http::request(
        agent.admin,
        "POST",
        "/backends/MTI3LjAuMC4xIDEgbm8tc3NsIHg/refresh",
        &[],
    )
    .await;
    assert_eq!(stranger.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_each_transition() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&["--check-interval", "50ms", "--rise", "1", "--fall", "1"]).await;
    let mut events = EventStream::open(agent.admin).await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up"));
    let first = events.next(Duration::from_secs(5)).await;
    assert_eq!(first.event, "transition");
    let first: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(first["line"], line.as_str());
    assert_eq!(
        (first["from"].as_str(), first["to"].as_str()),
        (Some("new"), Some("up"))
    );
    assert_eq!(first["reason"], "SERVING");
    assert!(
        first["unix_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 1_700_000_000_000)
    );
    assert!(first["id"].is_string());

    backend.set("", Wire::NotServing);
    let flip = events.next(Duration::from_secs(5)).await;
    let flip: serde_json::Value = serde_json::from_str(&flip.data).unwrap();
    assert_eq!(
        (flip["from"].as_str(), flip["to"].as_str()),
        (Some("up"), Some("down"))
    );
    assert_eq!(flip["reason"], "NOT_SERVING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_does_not_slow_the_agent() {
    let mut backends = Vec::new();
    for _ in 0..20 {
        backends.push(HealthBackend::start().await);
    }
    let agent = start_agent(&[
        "--events-buffer",
        "2",
        "--check-interval",
        "60s",
        "--fall",
        "1",
    ])
    .await;
    // Subscribed, never read.
    let _stalled = EventStream::open(agent.admin).await;
    for backend in &backends {
        let reply = ask(agent.addr, &line_for(backend.port(), "")).await;
        assert!(reply.starts_with("up #SERVING"), "{reply:?}");
    }
    // A reader that does read gets the transitions from now on.
    let mut events = EventStream::open(agent.admin).await;
    let line = line_for(backends[0].port(), "");
    backends[0].set("", Wire::NotServing);
    let id = backend_id(&agent, &line).await;
    let refreshed =
        http::request(agent.admin, "POST", &format!("/backends/{id}/refresh"), &[]).await;
    assert_eq!(refreshed.status, 200);
    let flip = events.next(Duration::from_secs(5)).await;
    let flip: serde_json::Value = serde_json::from_str(&flip.data).unwrap();
    assert_eq!(flip["line"], line.as_str());
    assert_eq!(flip["to"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_need_the_token_when_one_is_set() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&["--admin-token", TOKEN]).await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up"));
    let id = backend_id(&agent, &line).await;
    let path = format!("/backends/{id}");
    let refresh = format!("/backends/{id}/refresh");
    for (headers, status) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer wrong-token-0000000")], 401),
        (vec![("Authorization", TOKEN)], 401),
    ] {
        let denied = http::request(agent.admin, "DELETE", &path, &headers).await;
        assert_eq!(denied.status, status, "{headers:?}");
        assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
        assert!(denied.json()["error"].as_str().unwrap().contains("Bearer"));
        let denied = http::request(agent.admin, "POST", &refresh, &headers).await;
        assert_eq!(denied.status, status, "{headers:?}");
    }
    // Reading needs no token.
    assert_eq!(http::get(agent.admin, &path).await.status, 200);
    let bearer = format!("Bearer {TOKEN}");
    let allowed = http::request(agent.admin, "POST", &refresh, &[("Authorization", &bearer)]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let allowed = http::request(agent.admin, "DELETE", &path, &[("Authorization", &bearer)]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(agent.oracle.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_mutations_are_refused_off_loopback() {
    let backend = HealthBackend::start().await;
    // Listening on every address (the test still connects over loopback).
    let agent = start_agent(&["--metrics-bind", "0.0.0.0"]).await;
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], agent.admin.port()));
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up"));
    let list = http::get(admin, "/backends").await.json();
    let id = list[0]["id"].as_str().unwrap().to_string();
    let refused = http::request(admin, "DELETE", &format!("/backends/{id}"), &[]).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("admin_token")
    );
    assert_eq!(agent.oracle.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_admin_listener_does_not_delay_the_agent() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&["--admin-max-connections", "2"]).await;
    // Two clients hold both admin slots and send nothing.
    let held = [
        tokio::net::TcpStream::connect(agent.admin).await.unwrap(),
        tokio::net::TcpStream::connect(agent.admin).await.unwrap(),
    ];
    // A third admin client waits in the listen queue...
    let waiting = tokio::spawn(async move { http::get(agent.admin, "/healthz").await.status });
    // ...while the agent answers as ever.
    let line = line_for(backend.port(), "");
    for _ in 0..20 {
        assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    }
    assert!(
        !waiting.is_finished(),
        "the admin bound holds the third client back"
    );
    // A held client leaving frees a slot.
    drop(held);
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_agent_drains() {
    let (silent, _silent) = silent_backend().await;
    // The strict fault reply, so the reply in flight is a line to wait for.
    let agent = start_agent(&[
        "--miss-timeout",
        "2s",
        "--grpc-rpc-timeout",
        "2s",
        "--agent-fault-reply",
        "down",
    ])
    .await;
    assert_eq!(http::get(agent.admin, "/readyz").await.status, 200);
    // A request whose first probe never answers: its reply is in flight for 2 s.
    let addr = agent.addr;
    let in_flight = tokio::spawn(async move { ask(addr, &line_for(silent, "")).await });
    eventually(
        Duration::from_secs(5),
        "the request is being answered",
        || async { agent.oracle.len() == 1 },
    )
    .await;
    agent.shutdown.trigger();
    let admin = agent.admin;
    eventually(Duration::from_secs(2), "/readyz says 503", || async move {
        http::get(admin, "/readyz").await.status == 503
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "503 came while the reply was in flight"
    );
    assert_eq!(in_flight.await.unwrap(), "down #first probe pending\n");
}
