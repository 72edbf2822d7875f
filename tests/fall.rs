//! `fall N` and `rise N` mean N consecutive observations an interval apart, in both modes,
//! measured from outside: the time from a backend's change to the agent's flip is never
//! shorter than (N - 1) intervals, and the reason shows each count on the way. A lower
//! bound only: on a busy machine a flip can come later, never sooner.

mod support;

use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::*;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(1);
const WITHIN: Duration = Duration::from_secs(20);

/// Asks every 20 ms from `since` until the reply starts with `goal`; returns how long that
/// took and every distinct reply seen on the way.
async fn watch_replies(
    agent: &Agent,
    line: &str,
    goal: &str,
    since: Instant,
) -> (Duration, Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let reply = ask(agent.addr, line).await;
        let reply = reply.trim_end().to_string();
        if seen.last() != Some(&reply) {
            seen.push(reply.clone());
        }
        if reply.starts_with(goal) {
            return (since.elapsed(), seen);
        }
        assert!(
            since.elapsed() < WITHIN,
            "no {goal:?} within {WITHIN:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn saw(seen: &[String], part: &str) -> bool {
    seen.iter().any(|reply| reply.contains(part))
}

async fn agent(mode: &str, extra: &[&str]) -> Agent {
    let mut flags = vec![
        "--health-mode",
        mode,
        "--check-interval",
        "1s",
        "--check-jitter",
        "0",
        "--fall",
        "3",
        "--rise",
        "2",
    ];
    flags.extend_from_slice(extra);
    start_agent(&flags).await
}

/// `--fall 3`, the server killed: a failure to get an answer counts through fall. The
/// stream's end is the first failure; the polls that follow it an interval apart are the
/// second and third.
#[tokio::test]
async fn a_killed_watched_backend_reads_down_after_fall_intervals() {
    let backend = HealthBackend::start().await;
    let agent = agent("watch", &[]).await;
    let line = line_for(backend.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    assert_eq!(backend_view(&agent, &line).await["mode"], "watch");
    let killed = Instant::now();
    drop(backend);
    let (took, seen) = watch_replies(&agent, &line, "down", killed).await;
    eprintln!("watch, killed: down after {took:?} (fall 3 x 1s); replies {seen:?}");
    assert!(
        took >= INTERVAL * 2,
        "down after {took:?}: fall 3 counted too fast; {seen:?}"
    );
    assert!(
        saw(&seen, "(1/3 to down)") && saw(&seen, "(2/3 to down)"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_killed_polled_backend_reads_down_after_fall_intervals() {
    let backend = HealthBackend::start().await;
    let agent = agent("poll", &[]).await;
    let line = line_for(backend.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let killed = Instant::now();
    drop(backend);
    let (took, seen) = watch_replies(&agent, &line, "down", killed).await;
    eprintln!("poll, killed: down after {took:?} (fall 3 x 1s); replies {seen:?}");
    assert!(
        took >= INTERVAL * 2,
        "down after {took:?}: fall 3 counted too fast; {seen:?}"
    );
    assert!(
        saw(&seen, "(1/3 to down)") && saw(&seen, "(2/3 to down)"),
        "{seen:?}"
    );
}

/// With `--explicit-answers counted`, a status the stream reports counts once when it
/// arrives and once per interval while it holds, with no poll and no wake-up in between.
#[tokio::test]
async fn a_watched_status_counts_by_the_time_it_holds() {
    let backend = HealthBackend::start().await;
    let flags = [
        "--liveness-interval",
        "60s",
        "--explicit-answers",
        "counted",
    ];
    let agent = agent("watch", &flags).await;
    let line = line_for(backend.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    let changed = Instant::now();
    backend.set("", Wire::NotServing);
    let (took, seen) = watch_replies(&agent, &line, "down", changed).await;
    eprintln!("watch, NOT_SERVING: down after {took:?} (fall 3 x 1s); replies {seen:?}");
    assert!(
        took >= INTERVAL * 2,
        "down after {took:?}: fall 3 counted too fast; {seen:?}"
    );
    assert!(
        saw(&seen, "(1/3 to down)") && saw(&seen, "(2/3 to down)"),
        "{seen:?}"
    );

    let changed = Instant::now();
    backend.set("", Wire::Serving);
    let (took, seen) = watch_replies(&agent, &line, "up", changed).await;
    eprintln!("watch, SERVING again: up after {took:?} (rise 2 x 1s); replies {seen:?}");
    assert!(
        took >= INTERVAL,
        "up after {took:?}: rise 2 counted too fast; {seen:?}"
    );
    assert!(saw(&seen, "(1/2 to up)"), "{seen:?}");
    assert_eq!(backend.total_checks(), 0, "the counting needs no polling");
}

/// With the defaults, the backend's own NOT_SERVING turns the reply at once, in both modes:
/// no count toward fall is ever answered; and `rise` still counts the way back up.
#[tokio::test]
async fn the_backends_own_not_serving_turns_it_down_at_once_in_both_modes() {
    for mode in ["watch", "poll"] {
        let backend = HealthBackend::start().await;
        let agent = agent(mode, &["--liveness-interval", "60s"]).await;
        let line = line_for(backend.port(), "");
        reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
        let changed = Instant::now();
        backend.set("", Wire::NotServing);
        let (took, seen) = watch_replies(&agent, &line, "down", changed).await;
        eprintln!("{mode}, NOT_SERVING: down after {took:?}; replies {seen:?}");
        assert!(!saw(&seen, "to down)"), "counted through fall: {seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some("down #NOT_SERVING"));
        let changed = Instant::now();
        backend.set("", Wire::Serving);
        let (took, seen) = watch_replies(&agent, &line, "up", changed).await;
        eprintln!("{mode}, SERVING again: up after {took:?}; replies {seen:?}");
        assert!(took >= INTERVAL, "rise 2 counted too fast: {seen:?}");
        assert!(saw(&seen, "(1/2 to up)"), "{seen:?}");
    }
}
