//! Reload (what SIGHUP does): live settings apply at once and targets keep their state,
//! restart-only settings are reported and kept, invalid files change nothing, and
//! requests during reloads all get correct answers.

mod support;

use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::*;

#[tokio::test]
async fn live_settings_apply_and_targets_keep_their_state() {
    let backend = HealthBackend::start().await;
    backend.set("", Wire::NotServing);
    let mut agent = FileAgent::start(
        "health_mode = \"poll\"\nnot_serving_reply = \"down\"\ncheck_interval = \"60s\"\n",
    )
    .await;
    let line = line_for(backend.port(), "");
    assert_eq!(ask(agent.agent.addr, &line).await, "down #NOT_SERVING\n");
    let report = agent
        .reload("health_mode = \"poll\"\nnot_serving_reply = \"drain\"\ncheck_interval = \"60s\"\nmax_connections = 10\n")
        .unwrap();
    assert_eq!(report.applied, ["not_serving_reply"]);
    assert_eq!(report.needs_restart, ["max_connections"]);
    // No new probe runs for 60 s: the cached state answers under the new policy.
    assert_eq!(ask(agent.agent.addr, &line).await, "drain #NOT_SERVING\n");
    assert_eq!(backend.checks(""), 1);
    assert_eq!(agent.agent.oracle.len(), 1);
}

#[tokio::test]
async fn a_waiting_poller_picks_up_a_new_interval() {
    let backend = HealthBackend::start().await;
    let mut agent = FileAgent::start("health_mode = \"poll\"\ncheck_interval = \"60s\"\n").await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.agent.addr, &line).await.starts_with("up"));
    assert_eq!(backend.checks(""), 1);
    // The poller is waiting out 60 s; the reload re-plans that wait with 50 ms.
    agent
        .reload("health_mode = \"poll\"\ncheck_interval = \"50ms\"\n")
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the target is probed every 50 ms",
        || async { backend.checks("") >= 5 },
    )
    .await;
    assert_eq!(
        agent.agent.oracle.len(),
        1,
        "the same target, not a new one"
    );
}

#[tokio::test]
async fn an_invalid_file_changes_nothing() {
    let backend = HealthBackend::start().await;
    backend.set("", Wire::NotServing);
    let mut agent = FileAgent::start("not_serving_reply = \"maint\"\n").await;
    let line = line_for(backend.port(), "");
    assert_eq!(ask(agent.agent.addr, &line).await, "maint #NOT_SERVING\n");
    let errors = agent
        .reload("not_serving_reply = \"down\"\nrise = 0\n")
        .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("rise = \"0\""), "{errors:?}");
    assert_eq!(ask(agent.agent.addr, &line).await, "maint #NOT_SERVING\n");
    assert_eq!(agent.loaded.resolved["not_serving_reply"].text, "maint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_reloads_all_get_correct_answers() {
    let backends = [HealthBackend::start().await, HealthBackend::start().await];
    let mut agent = FileAgent::start("check_interval = \"100ms\"\n").await;
    let lines: Vec<String> = backends.iter().map(|b| line_for(b.port(), "")).collect();
    for line in &lines {
        assert!(ask(agent.agent.addr, line).await.starts_with("up #SERVING"));
    }
    let addr = agent.agent.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let line = lines[client % 2].clone();
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut answered = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let reply = ask(addr, &line).await;
                    assert!(
                        reply.starts_with("up #SERVING"),
                        "during a reload: {reply:?}"
                    );
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    for round in 0..40 {
        let interval = if round % 2 == 0 { "50ms" } else { "150ms" };
        let body = format!(
            "check_interval = \"{interval}\"\nread_deadline = \"{}s\"\nfall = {}\n",
            2 + round % 3,
            1 + round % 3
        );
        agent.reload(&body).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        total += client.await.expect("no client saw a wrong answer");
    }
    assert!(
        total >= 40,
        "clients kept asking through the reloads ({total} answers)"
    );
}

#[tokio::test]
async fn a_reloaded_allowlist_stops_probes_of_targets_it_now_denies() {
    let denied = HealthBackend::start().await;
    let kept = HealthBackend::start().await;
    let mut agent = FileAgent::start("health_mode = \"poll\"\ncheck_interval = \"50ms\"\n").await;
    let (denied_line, kept_line) = (line_for(denied.port(), ""), line_for(kept.port(), ""));
    assert!(ask(agent.agent.addr, &denied_line).await.starts_with("up"));
    assert!(ask(agent.agent.addr, &kept_line).await.starts_with("up"));
    let report = agent
        .reload(&format!(
            "health_mode = \"poll\"\ncheck_interval = \"50ms\"\nallow_backends = [\"127.0.0.1:{}\"]\n",
            kept.port()
        ))
        .unwrap();
    assert_eq!(report.applied, ["allow_backends"]);
    assert_eq!(
        ask(agent.agent.addr, &denied_line).await,
        "down #denied by allowlist\n"
    );
    // A probe already under way may still land; after that, none.
    let settled = denied.checks("") + 1;
    let kept_start = kept.checks("");
    eventually(
        Duration::from_secs(10),
        "the kept target is probed on",
        || async { kept.checks("") >= kept_start + 10 },
    )
    .await;
    assert!(
        denied.checks("") <= settled,
        "{} probes of a denied target after the reload",
        denied.checks("") - settled + 1
    );
    assert!(ask(agent.agent.addr, &kept_line).await.starts_with("up"));
}
