//! The agent against real tonic health backends, over real sockets: replies, flips,
//! services, TLS, shared first probes, eviction.

mod support;

use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::*;

const FAST: &[&str] = &[
    "--check-interval",
    "50ms",
    "--rise",
    "1",
    "--fall",
    "1",
    "--check-jitter",
    "0",
];

#[tokio::test]
async fn serving_backend_is_up_with_latency() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[]).await;
    let reply = ask(agent.addr, &line_for(backend.port(), "")).await;
    assert!(reply.starts_with("up #SERVING "), "{reply:?}");
    assert!(reply.ends_with("ms\n"), "{reply:?}");
}

#[tokio::test]
async fn every_status_but_serving_is_down_with_its_name() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[]).await;
    let table = [
        (Wire::NotServing, "down #NOT_SERVING\n"),
        (Wire::Unknown, "down #UNKNOWN\n"),
        (Wire::ServiceUnknown, "down #SERVICE_UNKNOWN\n"),
    ];
    for (status, expected) in table {
        let service = format!("svc.{}", status.as_str_name());
        backend.set(&service, status);
        assert_eq!(
            ask(agent.addr, &line_for(backend.port(), &service)).await,
            expected
        );
    }
}

#[tokio::test]
async fn flip_and_flip_back_are_seen_within_a_few_intervals() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(FAST).await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    backend.set("", Wire::NotServing);
    reply_becomes(
        agent.addr,
        &line,
        "down #NOT_SERVING",
        Duration::from_secs(5),
    )
    .await;
    backend.set("", Wire::Serving);
    reply_becomes(agent.addr, &line, "up #SERVING", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn counted_explicit_answers_hold_up_until_fall_failures() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--check-interval",
        "300ms",
        "--rise",
        "2",
        "--fall",
        "3",
        "--explicit-answers",
        "counted",
    ])
    .await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    backend.set("", Wire::NotServing);
    // Between the first failure and the third (600 ms at this interval) the agent still
    // says up, and says why.
    let held = reply_becomes(
        agent.addr,
        &line,
        "up #NOT_SERVING (",
        Duration::from_secs(5),
    )
    .await;
    assert!(held.ends_with("/3 to down)\n"), "{held:?}");
    reply_becomes(
        agent.addr,
        &line,
        "down #NOT_SERVING",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn unreachable_port_is_down_with_connection_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let agent = start_agent(&[]).await;
    assert_eq!(
        ask(agent.addr, &line_for(port, "")).await,
        "down #connection refused\n"
    );
}

#[tokio::test]
async fn services_known_and_unknown() {
    let backend = HealthBackend::start().await;
    backend.set("shop.Cart", Wire::Serving);
    backend.set("shop.Payments", Wire::NotServing);
    let agent = start_agent(&["--health-mode", "poll"]).await;
    let port = backend.port();
    assert!(
        ask(agent.addr, &line_for(port, "shop.Cart"))
            .await
            .starts_with("up #SERVING")
    );
    assert_eq!(
        ask(agent.addr, &line_for(port, "shop.Payments")).await,
        "down #NOT_SERVING\n"
    );
    assert_eq!(
        ask(agent.addr, &line_for(port, "shop.Nope")).await,
        "down #grpc NOT_FOUND: unknown service shop.Nope\n"
    );
    // Three services on one endpoint share one connection.
    assert_eq!(backend.open_connections(), 1);
}

#[tokio::test]
async fn backend_without_health_service_is_down_unimplemented() {
    let (port, _server) = unimplemented_backend().await;
    let agent = start_agent(&[]).await;
    let reply = ask(agent.addr, &line_for(port, "")).await;
    assert!(reply.starts_with("down #grpc UNIMPLEMENTED"), "{reply:?}");
}

#[tokio::test]
async fn tls_backend_verified_against_the_authority() {
    let pki = TestPki::new(&["backend.test"]);
    let dir = std::env::temp_dir().join(format!("hga-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let backend = HealthBackend::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let agent = start_agent(&["--tls-ca-file", ca_file.to_str().unwrap()]).await;
    let port = backend.port();

    let good = ask(agent.addr, &format!("127.0.0.1 {port} ssl backend.test")).await;
    assert!(good.starts_with("up #SERVING"), "{good:?}");
    let wrong_name = ask(agent.addr, &format!("127.0.0.1 {port} ssl other.test")).await;
    assert!(wrong_name.starts_with("down #tls: "), "{wrong_name:?}");
    assert!(wrong_name.contains("certificate"), "{wrong_name:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tls_backend_with_an_untrusted_ca_is_down() {
    let pki = TestPki::new(&["backend.test"]);
    let backend = HealthBackend::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let agent = start_agent(&[]).await;
    let reply = ask(
        agent.addr,
        &format!("127.0.0.1 {} ssl backend.test", backend.port()),
    )
    .await;
    assert!(reply.starts_with("down #tls: "), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_probe() {
    let backend = HealthBackend::start().await;
    // A long interval: any second Check in this test would be a duplicate first probe.
    // A generous miss timeout: this test is about sharing, not about timing.
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--check-interval",
        "60s",
        "--miss-timeout",
        "10s",
        "--grpc-rpc-timeout",
        "10s",
        "--max-connections",
        "1000",
    ])
    .await;
    let line = line_for(backend.port(), "");
    let asks: Vec<_> = (0..200)
        .map(|_| {
            let line = line.clone();
            let addr = agent.addr;
            tokio::spawn(async move { ask(addr, &line).await })
        })
        .collect();
    for ask in asks {
        let reply = ask.await.unwrap();
        assert!(reply.starts_with("up #SERVING"), "{reply:?}");
    }
    assert_eq!(backend.checks(""), 1);
}

#[tokio::test]
async fn idle_target_is_evicted_and_no_longer_probed() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--check-interval",
        "50ms",
        "--idle-ttl",
        "300ms",
    ])
    .await;
    assert!(
        ask(agent.addr, &line_for(backend.port(), ""))
            .await
            .starts_with("up")
    );
    eventually(
        Duration::from_secs(10),
        "the idle target is evicted",
        || async { agent.oracle.is_empty() },
    )
    .await;
    // Eviction stops the poller and releases its endpoint, which closes the connection.
    eventually(
        Duration::from_secs(10),
        "the backend connection closes",
        || async { backend.open_connections() == 0 },
    )
    .await;
    let after_eviction = backend.checks("");
    assert!(
        after_eviction >= 2,
        "the target was polled while registered"
    );
    // Watch for five intervals: nothing probes the backend any more.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(backend.checks(""), after_eviction);
}

#[tokio::test]
async fn asked_targets_stay_registered() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&["--check-interval", "50ms", "--idle-ttl", "1s"]).await;
    let line = line_for(backend.port(), "");
    // Asking every 100 ms for 2 s keeps a 1 s idle TTL from expiring.
    for _ in 0..20 {
        assert!(ask(agent.addr, &line).await.starts_with("up"));
        assert_eq!(agent.oracle.len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_full_cache_is_silence_or_with_the_strict_reply_down() {
    let backend = HealthBackend::start().await;
    backend.set("a", Wire::Serving);
    backend.set("b", Wire::Serving);
    let agent = start_agent(&["--max-targets", "1"]).await;
    assert!(
        ask(agent.addr, &line_for(backend.port(), "a"))
            .await
            .starts_with("up")
    );
    // A healthy newcomer is not the backend's fault: closed without a reply, so HAProxy
    // keeps its last verdict.
    for _ in 0..3 {
        assert_eq!(ask(agent.addr, &line_for(backend.port(), "b")).await, "");
    }
    let metrics = http::get(agent.admin, "/metrics").await.body;
    assert!(
        metrics.contains("haproxy_grpc_agent_agent_faults_total{cause=\"target_limit\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("haproxy_grpc_agent_check_requests_total{result=\"silent\"} 3"),
        "{metrics}"
    );
    let strict = start_agent(&["--max-targets", "1", "--agent-fault-reply", "down"]).await;
    assert!(
        ask(strict.addr, &line_for(backend.port(), "a"))
            .await
            .starts_with("up")
    );
    assert_eq!(
        ask(strict.addr, &line_for(backend.port(), "b")).await,
        "down #target limit reached (1)\n"
    );
}

#[tokio::test]
async fn silent_backend_gets_silence_while_its_first_probe_is_pending_then_its_reason() {
    // Takes TCP and never speaks HTTP/2: the connection is never made.
    let (port, _silent) = silent_backend().await;
    let agent = start_agent(&[
        "--miss-timeout",
        "200ms",
        "--grpc-connect-timeout",
        "300ms",
        "--fall",
        "1",
    ])
    .await;
    let line = line_for(port, "");
    let started = std::time::Instant::now();
    assert_eq!(ask(agent.addr, &line).await, "", "silence, not down");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "a miss waits only the miss timeout"
    );
    let reply = reply_becomes(agent.addr, &line, "down #connect", Duration::from_secs(5)).await;
    assert_eq!(
        reply,
        "down #connect: no http/2 settings from the backend within 300ms\n"
    );
}

#[tokio::test]
async fn a_restarted_backend_is_reconnected() {
    let backend = HealthBackend::start().await;
    let addr = backend.addr;
    let agent = start_agent(FAST).await;
    let line = line_for(addr.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    drop(backend);
    reply_becomes(
        agent.addr,
        &line,
        "down #connection refused",
        Duration::from_secs(5),
    )
    .await;
    // From the backend's return (its port is bound when `start_on` returns), the next
    // probe (at most one interval later) finds it: no dead connection is reused, so at
    // most the one probe already under way when it came back fails.
    let _backend = HealthBackend::start_on(addr, None).await;
    let failed_before = failed_probes(&agent).await;
    reply_becomes(agent.addr, &line, "up #SERVING", Duration::from_secs(5)).await;
    let failed_after_back = failed_probes(&agent).await - failed_before;
    assert!(
        failed_after_back <= 1,
        "{failed_after_back} probes failed after the backend was back"
    );
}

/// The agent's `probes_total` of every result but `serving`.
async fn failed_probes(agent: &Agent) -> u64 {
    let text = support::http::get(agent.admin, "/metrics").await.body;
    text.lines()
        .filter(|line| line.starts_with("haproxy_grpc_agent_probes_total{"))
        .filter(|line| !line.contains("result=\"serving\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn ipv6_backend_bare_and_bracketed() {
    let backend = HealthBackend::start_on("[::1]:0".parse().unwrap(), None).await;
    let agent = start_agent(&[]).await;
    let port = backend.port();
    for line in [
        format!("::1 {port} no-ssl localhost"),
        format!("[::1] {port} no-ssl [::1]:{port}"),
    ] {
        let reply = ask(agent.addr, &line).await;
        assert!(reply.starts_with("up #SERVING"), "{line}: {reply:?}");
    }
}
