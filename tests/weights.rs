//! Load-aware weights end to end, against a backend that serves the health service and
//! ORCA's out-of-band load reports on one port: the reply carries `NN%` from the reports,
//! one stream serves every service of an endpoint, a backend without ORCA gets no weight,
//! and without the option nothing changes.

mod support;

use std::time::Duration;

use support::orca::OrcaBackend;
use support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// Weights that follow each report at once: no smoothing, no blackout, no step bound.
async fn direct_agent(extra: &[&str]) -> Agent {
    let mut flags = vec![
        "--orca-report-interval",
        "100ms",
        "--orca-smoothing",
        "0s",
        "--orca-blackout",
        "0s",
        "--orca-max-step",
        "100",
    ];
    flags.extend_from_slice(extra);
    start_agent(&flags).await
}

fn weighted(port: u16, service: &str) -> String {
    format!("{} weight=orca", line_for(port, service))
}

#[tokio::test]
async fn the_reply_carries_the_weight_the_reports_give() {
    let backend = OrcaBackend::start().await;
    backend.set_cpu_utilization(0.5);
    let agent = direct_agent(&[]).await;
    let line = weighted(backend.port(), "");
    let reply = reply_becomes(agent.addr, &line, "up 50% #SERVING", WITHIN).await;
    assert!(reply.trim_end().ends_with(" cpu 0.50"), "{reply}");
    backend.set_application_utilization(0.2);
    let reply = reply_becomes(agent.addr, &line, "up 80% #SERVING", WITHIN).await;
    assert!(reply.trim_end().ends_with(" app 0.20"), "{reply}");
    // A hot server keeps the floor (10 % by default): 0 % stays drain's word.
    backend.set_application_utilization(0.99);
    reply_becomes(agent.addr, &line, "up 10% #SERVING", WITHIN).await;
    assert_eq!(backend.last_interval(), Some(Duration::from_millis(100)));

    // Operators see it: the report, its age and the weight in /backends; metrics per
    // endpoint, without per-target labels.
    let view = backend_view(&agent, &line).await;
    let load = &view["load"];
    assert_eq!(load["state"], "reporting", "{view}");
    assert_eq!(load["weight_percent"], 10, "{view}");
    assert_eq!(load["application_utilization"], 0.99, "{view}");
    assert!(
        load["report_age_ms"]
            .as_u64()
            .is_some_and(|age| age < 5_000),
        "{view}"
    );
    let metrics = support::http::get(agent.admin, "/metrics").await.body;
    for expected in [
        "haproxy_grpc_agent_orca_streams_active 1",
        "haproxy_grpc_agent_orca_weights_reduced 1",
    ] {
        assert!(metrics.contains(expected), "{expected}: {metrics}");
    }
    let reports = metrics
        .lines()
        .find_map(|line| line.strip_prefix("haproxy_grpc_agent_orca_reports_total "))
        .and_then(|count| count.parse::<u64>().ok());
    assert!(reports.is_some_and(|count| count >= 3), "{metrics}");
    let plain = line_for(backend.port(), "");
    reply_becomes(agent.addr, &plain, "up #SERVING", WITHIN).await;
    let unweighted = backend_view(&agent, &plain).await;
    assert!(unweighted["load"].is_null(), "{unweighted}");
}

#[tokio::test]
async fn one_stream_serves_every_service_of_an_endpoint() {
    let backend = OrcaBackend::start().await;
    backend
        .health
        .set("shop.Cart", support::backend::Wire::Serving);
    backend.set_cpu_utilization(0.25);
    let agent = direct_agent(&[]).await;
    for service in ["", "shop.Cart"] {
        let line = weighted(backend.port(), service);
        reply_becomes(agent.addr, &line, "up 75% #SERVING", WITHIN).await;
    }
    assert_eq!(backend.streams(), 1, "one load-report stream per endpoint");
}

#[tokio::test]
async fn without_the_option_or_the_setting_nothing_changes() {
    let backend = OrcaBackend::start().await;
    backend.set_cpu_utilization(0.5);
    let agent = direct_agent(&[]).await;
    for line in [
        line_for(backend.port(), ""),
        format!("{} weight=none", line_for(backend.port(), "")),
    ] {
        let reply = reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
        assert!(!reply.contains('%') && !reply.contains("cpu"), "{reply}");
    }
    assert_eq!(backend.streams(), 0, "no load-report stream was opened");
    // The setting turns it on for lines without the option.
    let everyone = direct_agent(&["--orca-weights", "true"]).await;
    reply_becomes(
        everyone.addr,
        &line_for(backend.port(), ""),
        "up 50% #SERVING",
        WITHIN,
    )
    .await;
}

#[tokio::test]
async fn a_backend_without_load_reports_gets_no_weight() {
    let backend = OrcaBackend::start().await;
    backend.refuse_orca();
    let agent = direct_agent(&[]).await;
    let line = weighted(backend.port(), "");
    reply_becomes(agent.addr, &line, "up #SERVING", WITHIN).await;
    eventually(WITHIN, "the agent asked for load reports", || async {
        backend.refused() >= 1
    })
    .await;
    let reply = ask(agent.addr, &line).await;
    assert!(
        reply.starts_with("up #SERVING") && !reply.contains('%'),
        "{reply}"
    );
    // UNIMPLEMENTED is final for the endpoint: the stream is not asked for again.
    let refused = backend.refused();
    let later = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < later {
        assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        backend.refused(),
        refused,
        "asked again after UNIMPLEMENTED"
    );
}

/// `/events` hears of a weight when it moves 10 points or more, or back to 100 %: not on
/// every report.
#[tokio::test]
async fn the_event_feed_hears_of_weights_that_move_far_enough() {
    let backend = OrcaBackend::start().await;
    backend.set_cpu_utilization(0.5);
    let agent = direct_agent(&[]).await;
    let mut events = support::http::EventStream::open(agent.admin).await;
    let line = weighted(backend.port(), "");
    reply_becomes(agent.addr, &line, "up 50% #SERVING", WITHIN).await;
    let weight = next_weight(&mut events).await;
    assert_eq!(
        (
            weight["from_percent"].as_u64(),
            weight["to_percent"].as_u64()
        ),
        (Some(100), Some(50)),
        "{weight}"
    );
    assert_eq!(weight["endpoint"], format!("127.0.0.1:{}", backend.port()));
    assert_eq!(weight["reason"], "cpu 0.50");
    // 5 points: not told; then 15 points from what was told: told.
    backend.set_cpu_utilization(0.45);
    reply_becomes(agent.addr, &line, "up 55% #SERVING", WITHIN).await;
    backend.set_cpu_utilization(0.35);
    reply_becomes(agent.addr, &line, "up 65% #SERVING", WITHIN).await;
    let weight = next_weight(&mut events).await;
    assert_eq!(
        (
            weight["from_percent"].as_u64(),
            weight["to_percent"].as_u64()
        ),
        (Some(50), Some(65)),
        "{weight}"
    );
}

/// The next `weight` event (transitions are skipped).
async fn next_weight(events: &mut support::http::EventStream) -> serde_json::Value {
    loop {
        let event = events.next(WITHIN).await;
        if event.event == "weight" {
            return serde_json::from_str(&event.data).unwrap();
        }
    }
}
