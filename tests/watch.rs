//! Watch mode against real backends: a Health/Watch stream per target drives the answer
//! (without polling), the backend's own word applies at once (counted through rise/fall
//! with `--explicit-answers counted`), a backend without
//! Watch is polled, a broken stream is replaced while polling covers the gap, a wedged
//! backend is caught by the liveness Check, and a reload switches modes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::raw_h2::*;
use support::*;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_watched_target_follows_its_stream_without_polling() {
    let backend = HealthBackend::start().await;
    // Interval and liveness far away: anything that changes comes from the stream (rise
    // 1, so the way back up needs no interval either).
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
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    assert_eq!(backend.watches(), 1);
    assert_eq!(backend.total_checks(), 0, "a watched target is not polled");
    assert_eq!(backend_view(&agent, &line).await["mode"], "watch");

    backend.set("", Wire::NotServing);
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", WITHIN).await;
    backend.set("", Wire::Serving);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    backend.forget("");
    reply_becomes(agent.addr, &line, "down #SERVICE_UNKNOWN", WITHIN).await;
    assert_eq!(backend.total_checks(), 0);
    assert_eq!(backend.watches(), 1, "one stream all along");
    let metrics = support::http::get(agent.admin, "/metrics").await.body;
    assert!(
        metrics.contains("haproxy_grpc_agent_watch_streams_active 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn counted_explicit_answers_count_a_watched_change_through_fall_and_rise() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "watch",
        "--explicit-answers",
        "counted",
        "--check-interval",
        "100ms",
        "--liveness-interval",
        "60s",
        "--fall",
        "3",
        "--rise",
        "2",
    ])
    .await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    backend.set("", Wire::NotServing);
    // The change is seen at once, then held for fall intervals before the verdict turns.
    reply_becomes(agent.addr, &line, "up #NOT_SERVING (1/3 to down)", WITHIN).await;
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", WITHIN).await;
    backend.set("", Wire::Serving);
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    assert_eq!(backend.total_checks(), 0, "the counting needs no polling");
}

#[tokio::test]
async fn a_backend_without_watch_is_polled() {
    let backend = HealthBackend::start().await;
    backend.refuse_watch();
    let agent = start_agent(&["--health-mode", "watch", "--check-interval", "50ms"]).await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    eventually(WITHIN, "the target is polled", || async {
        backend.total_checks() >= 10
    })
    .await;
    assert_eq!(
        backend.watches(),
        0,
        "UNIMPLEMENTED is answered before counting"
    );
    assert_eq!(backend_view(&agent, &line).await["mode"], "poll");
    backend.set("", Wire::NotServing);
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", WITHIN).await;
}

#[tokio::test]
async fn a_broken_stream_is_replaced_and_polling_covers_the_gap() {
    let backend = HealthBackend::start().await;
    let addr = backend.addr;
    let agent = start_agent(&[
        "--health-mode",
        "watch",
        "--check-interval",
        "100ms",
        "--rise",
        "1",
        "--fall",
        "1",
    ])
    .await;
    let line = line_for(addr.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    drop(backend);
    // The stream ends with the backend; the polls in the gap see it gone.
    reply_becomes(agent.addr, &line, "down #connection refused", WITHIN).await;
    assert_eq!(backend_view(&agent, &line).await["mode"], "poll");
    let back = HealthBackend::start_on(addr, None).await;
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    // A new stream is opened after the backoff, and polling stops.
    eventually(WITHIN, "the target is watched again", || async {
        back.open_watches() == 1
    })
    .await;
    let checks = back.total_checks();
    eventually(WITHIN, "the agent says it is watched", || async {
        backend_view(&agent, &line).await["mode"] == "watch"
    })
    .await;
    back.set("", Wire::NotServing);
    reply_becomes(agent.addr, &line, "down #NOT_SERVING", WITHIN).await;
    assert!(
        back.total_checks() <= checks + 1,
        "polled while watched: {} checks",
        back.total_checks() - checks
    );
}

/// A backend whose Watch says SERVING and stays open while its handlers hang: the
/// liveness Check times out, and the target goes down by polling.
#[tokio::test]
async fn a_wedged_backend_is_caught_by_the_liveness_check() {
    // The first request on each connection is the Watch: answer it and keep it open.
    // Every other request (the Checks) hangs.
    let wedged = RawBackend::start(Arc::new(|stream, n| {
        if n == 0 {
            vec![Step::Send(
                [
                    headers(stream, GRPC_HEADERS, false),
                    data(stream, &message(1), false),
                ]
                .concat(),
            )]
        } else {
            Vec::new()
        }
    }))
    .await;
    let agent = start_agent(&[
        "--health-mode",
        "watch",
        "--check-interval",
        "100ms",
        "--liveness-interval",
        "300ms",
        "--grpc-rpc-timeout",
        "300ms",
        "--rise",
        "1",
        "--fall",
        "2",
    ])
    .await;
    let line = format!("127.0.0.1 {} no-ssl localhost", wedged.port);
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    reply_becomes(agent.addr, &line, "down #rpc timeout 300ms", WITHIN).await;
    assert_eq!(backend_view(&agent, &line).await["mode"], "poll");
    // The stream the agent stopped following was reset, not left open.
    eventually(WITHIN, "the abandoned Watch stream is reset", || async {
        wedged.resets.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
}

#[tokio::test]
async fn a_reload_switches_between_watch_and_poll() {
    let backend = HealthBackend::start().await;
    let mut agent = FileAgent::start("health_mode = \"poll\"\ncheck_interval = \"50ms\"\n").await;
    let line = line_for(backend.port(), "");
    assert!(
        ask(agent.agent.addr, &line)
            .await
            .starts_with("up #SERVING")
    );
    assert_eq!(backend.watches(), 0);
    agent
        .reload("health_mode = \"watch\"\ncheck_interval = \"50ms\"\n")
        .unwrap();
    eventually(WITHIN, "a stream is opened", || async {
        backend.open_watches() == 1
    })
    .await;
    agent
        .reload("health_mode = \"poll\"\ncheck_interval = \"50ms\"\n")
        .unwrap();
    eventually(WITHIN, "the agent polls", || async {
        let backends = support::http::get(agent.agent.admin, "/backends")
            .await
            .json();
        backends[0]["mode"] == "poll"
    })
    .await;
    let metrics = support::http::get(agent.agent.admin, "/metrics").await.body;
    assert!(
        metrics.contains("haproxy_grpc_agent_watch_streams_active 0"),
        "{metrics}"
    );
    let checks = backend.total_checks();
    eventually(WITHIN, "the target is polled again", || async {
        backend.total_checks() >= checks + 5
    })
    .await;
}

/// A watched target is as fresh as its connection, which its liveness PING or Check hears
/// every liveness interval: asked in a tight loop over several rounds, it never reads
/// stale. (A PING sent at its due time used to skip the next round, leaving gaps of two
/// intervals, longer than `--stale-after` plus one interval here: stale every third.)
#[tokio::test]
async fn a_watched_target_never_goes_stale_between_liveness_rounds() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--check-interval",
        "100ms",
        "--liveness-interval",
        "1s",
        "--grpc-connect-timeout",
        "200ms",
        "--grpc-rpc-timeout",
        "200ms",
    ])
    .await;
    let line = line_for(backend.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    eventually(WITHIN, "the target is watched", || async {
        backend_view(&agent, &line).await["mode"] == "watch"
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut asks = 0;
    let mut not_up = Vec::new();
    while started.elapsed() < Duration::from_secs(7) {
        let reply = ask(agent.addr, &line).await;
        asks += 1;
        if !reply.starts_with("up #SERVING") {
            not_up.push((started.elapsed(), reply));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        not_up.is_empty(),
        "{} of {asks} asks: {not_up:?}",
        not_up.len()
    );
}
