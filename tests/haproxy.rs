//! End to end with the real HAProxy: servers with `agent-check` pointed at the agent go UP
//! and DOWN as their gRPC backends flip, and `last_agt` carries the agent's reason; with
//! `weight=orca`, the backends' load reports become the servers' weights, and a roundrobin
//! frontend's traffic splits by them.
//!
//! The haproxy run is `HAPROXY_BIN` when set, else the first `haproxy` on `PATH`, else
//! Debian's package's (`/usr/sbin/haproxy`) or another usual place; its `haproxy -v` line is
//! printed with the test output, so a run says which HAProxy it tested.

mod support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::haproxy::*;
use support::orca::OrcaBackend;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_backend_health_through_the_agent() {
    let healthy = HealthBackend::start().await;
    let failing = HealthBackend::start().await;
    failing.set("", Wire::NotServing);
    let with_service = HealthBackend::start().await;
    with_service.set("shop.Cart", Wire::Serving);
    let agent = start_agent(&["--check-interval", "100ms", "--rise", "1", "--fall", "1"]).await;

    let haproxy = Haproxy::start(
        agent.addr.port(),
        &[
            ("a", healthy.port(), line_for(healthy.port(), "")),
            ("b", failing.port(), line_for(failing.port(), "")),
            (
                "c",
                with_service.port(),
                line_for(with_service.port(), "shop.Cart"),
            ),
            (
                "d",
                with_service.port(),
                line_for(with_service.port(), "shop.Gone"),
            ),
        ],
    );
    haproxy.wait_for("a", "UP", "SERVING").await;
    haproxy.wait_for("b", "DOWN", "NOT_SERVING").await;
    haproxy.wait_for("c", "UP", "SERVING").await;
    // Watched (the default): the stream's word for a service the backend does not know.
    haproxy.wait_for("d", "DOWN", "SERVICE_UNKNOWN").await;

    healthy.set("", Wire::NotServing);
    failing.set("", Wire::Serving);
    haproxy.wait_for("a", "DOWN", "NOT_SERVING").await;
    haproxy.wait_for("b", "UP", "SERVING").await;

    healthy.set("", Wire::Serving);
    haproxy.wait_for("a", "UP", "SERVING").await;
}

/// `--not-serving-reply drain|maint`: a NOT_SERVING backend goes DRAIN or MAINT in
/// HAProxy (not DOWN), and comes back UP when it serves again (the agent adds `ready`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_can_drain_or_maint_and_ready_brings_it_back() {
    for (policy, status) in [("drain", "DRAIN"), ("maint", "MAINT")] {
        let backend = HealthBackend::start().await;
        let agent = start_agent(&[
            "--check-interval",
            "100ms",
            "--rise",
            "1",
            "--fall",
            "1",
            "--not-serving-reply",
            policy,
        ])
        .await;
        let haproxy = Haproxy::start(
            agent.addr.port(),
            &[("a", backend.port(), line_for(backend.port(), ""))],
        );
        haproxy.wait_for("a", "UP", "SERVING").await;
        backend.set("", Wire::NotServing);
        // HAProxy shows `DRAIN (agent)` or a MAINT state, and keeps no last_agt text
        // for these replies.
        haproxy.wait_for("a", status, "").await;
        backend.set("", Wire::Serving);
        haproxy.wait_for("a", "UP", "SERVING").await;
    }
}

/// The agent flags of tests/weights.rs: a weight follows each load report at once (no
/// smoothing, no blackout, no bound on a step), reports asked for every 100 ms.
const DIRECT_WEIGHTS: &[&str] = &[
    "--orca-report-interval",
    "100ms",
    "--orca-smoothing",
    "0s",
    "--orca-blackout",
    "0s",
    "--orca-max-step",
    "100",
];

/// Connections per burst: 20 rounds of the first weights (80 + 50 + 20 = 150).
const BURST: usize = 3000;

/// How far a server's share of a burst may stray from its weight's share, in percentage
/// points. HAProxy's roundrobin with weights that hold still is deterministic: every round
/// of the weights' sum hands each server exactly its weight, so a burst can stray only in
/// the round it cuts short, by less than a server's weight (at most 90 of 3000 connections
/// here: under 3 points). Roundrobin interleaves the servers within a round, which keeps it
/// far smaller in practice (HAProxy 2.6.12: 0.00 and at most 0.04 points), and an agent
/// re-sending an unchanged weight does not restart the rounds.
const SPLIT_TOLERANCE_POINTS: f64 = 3.0;

/// Three servers whose backends report cpu 0.2, 0.5 and 0.8 show the weights 80, 50 and
/// 20 (of a configured 100) in `show stat`, with the utilization in `last_agt`; a
/// roundrobin frontend's connections split by those weights; when one backend's load
/// drops, its weight in HAProxy rises and the next burst follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orca_load_reports_become_haproxy_weights_and_split_traffic() {
    let mut backends = Vec::new();
    for cpu in [0.2, 0.5, 0.8] {
        let backend = OrcaBackend::start().await;
        backend.set_cpu_utilization(cpu);
        backends.push(backend);
    }
    let agent = start_agent(DIRECT_WEIGHTS).await;
    let frontend_port = closed_port();
    let servers: Vec<ServerLine> = ["a", "b", "c"]
        .into_iter()
        .zip(&backends)
        .map(|(name, backend)| {
            let line = format!("{} weight=orca", line_for(backend.port(), ""));
            (name, backend.port(), line)
        })
        .collect();
    let haproxy = Haproxy::start_farm(
        agent.addr.port(),
        &servers,
        &Farm::weighted_traffic(frontend_port),
    );
    let frontend = std::net::SocketAddr::from(([127, 0, 0, 1], frontend_port));

    let first = [
        ("a", 80, "cpu 0.20"),
        ("b", 50, "cpu 0.50"),
        ("c", 20, "cpu 0.80"),
    ];
    haproxy.wait_for_weights(&first).await;
    burst_follows_weights(&haproxy, frontend, &backends, &first, "cpu 0.2/0.5/0.8").await;

    let changed = tokio::time::Instant::now();
    backends[2].set_cpu_utilization(0.1);
    let second = [
        ("a", 80, "cpu 0.20"),
        ("b", 50, "cpu 0.50"),
        ("c", 90, "cpu 0.10"),
    ];
    haproxy.wait_for_weights(&second).await;
    eprintln!(
        "c's load 0.8 -> 0.1: show stat shows weight 90 after {:?} (report interval 100ms, \
         agent-inter 200ms, show stat polled every 50ms)",
        changed.elapsed()
    );
    burst_follows_weights(&haproxy, frontend, &backends, &second, "c now cpu 0.1").await;
}

/// Sends a burst of [`BURST`] connections through `frontend` and checks that each
/// server's share of it, counted by its backend, is its weight's share within
/// [`SPLIT_TOLERANCE_POINTS`]; prints the split.
async fn burst_follows_weights(
    haproxy: &Haproxy,
    frontend: std::net::SocketAddr,
    backends: &[OrcaBackend],
    weights: &[(&str, u32, &str)],
    case: &str,
) {
    let accepted = || -> Vec<u64> {
        let count = |backend: &OrcaBackend| backend.health.accepted_connections() as u64;
        backends.iter().map(count).collect()
    };
    let sessions = |stats: &HashMap<String, ServerStat>| -> Vec<u64> {
        weights
            .iter()
            .map(|(name, ..)| stats[*name].sessions)
            .collect()
    };
    let since = |after: Vec<u64>, before: &[u64]| -> Vec<u64> {
        after
            .iter()
            .zip(before)
            .map(|(after, before)| after - before)
            .collect()
    };
    let accepted_before = accepted();
    let sessions_before = sessions(&haproxy.servers().await);
    let started = tokio::time::Instant::now();
    send_connections(frontend, BURST).await;
    let took = started.elapsed();
    let stats = haproxy.servers().await;
    let received = since(accepted(), &accepted_before);
    let sent = since(sessions(&stats), &sessions_before);
    eprintln!("{case}: {BURST} connections through haproxy's roundrobin in {took:?}");
    // The agent's own connections to the backends are long-lived (one per endpoint), so a
    // burst's count is the burst's alone: every connection reached exactly one backend, the
    // one HAProxy says it sent it to.
    assert_eq!(
        received.iter().sum::<u64>(),
        BURST as u64,
        "{case}: the backends accepted {received:?} connections for a burst of {BURST}"
    );
    assert_eq!(
        received, sent,
        "{case}: the backends' counts differ from haproxy's sessions per server"
    );
    check_split(case, weights, &received, &stats);
}

/// Prints each server's share of a burst beside its weight's share, and fails if one
/// strays more than [`SPLIT_TOLERANCE_POINTS`] from it.
fn check_split(
    case: &str,
    weights: &[(&str, u32, &str)],
    received: &[u64],
    stats: &HashMap<String, ServerStat>,
) {
    let total_weight: u32 = weights.iter().map(|(_, weight, _)| weight).sum();
    let total_received: u64 = received.iter().sum();
    let mut strays = Vec::new();
    for ((name, weight, _), received) in weights.iter().zip(received) {
        let share = 100.0 * *received as f64 / total_received as f64;
        let expected = 100.0 * f64::from(*weight) / f64::from(total_weight);
        eprintln!(
            "  server {name}: weight {weight}, {received} connections ({share:.2} %, weight's \
             share {expected:.2} %, off by {:+.2} points), last_agt {:?}",
            share - expected,
            stats[*name].last_agt
        );
        if (share - expected).abs() > SPLIT_TOLERANCE_POINTS {
            strays.push(format!("{name}: {share:.2} % against {expected:.2} %"));
        }
    }
    assert!(
        strays.is_empty(),
        "{case}: the split strays more than {SPLIT_TOLERANCE_POINTS} points from the weights \
         {weights:?}: {strays:?} ({})",
        haproxy_binary().version
    );
}

/// Opens `count` connections to `frontend`, one after another. Each sends HTTP/2's
/// connection preface and waits for the backend's first bytes (its SETTINGS frame) before
/// it closes, so every connection has reached a backend: one closed at once might be
/// dropped by HAProxy before it connects to a server.
async fn send_connections(frontend: std::net::SocketAddr, count: usize) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for sent in 0..count {
        let through = async {
            let mut stream = tokio::net::TcpStream::connect(frontend).await?;
            stream.write_all(PREFACE).await?;
            let mut first = [0u8; 1];
            stream.read_exact(&mut first).await?;
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), through).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("connection {sent} through haproxy failed: {error}"),
            Err(_) => panic!("connection {sent} through haproxy had no answer within 5s"),
        }
    }
}

/// The binary chosen: `HAPROXY_BIN` first, then `PATH`; a `HAPROXY_BIN` that cannot run is
/// an error that says so, never a silent fall back to another haproxy.
#[test]
fn haproxy_bin_comes_first_and_must_be_executable() {
    let dir = std::env::temp_dir().join(format!("hga-find-haproxy-{}", std::process::id()));
    let on_path = dir.join("bin");
    std::fs::create_dir_all(&on_path).unwrap();
    let executable = |path: &Path| {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    executable(&on_path.join("haproxy"));
    executable(&dir.join("haproxy-3.3"));
    std::fs::write(dir.join("not-executable"), "").unwrap();
    let path = Some(on_path.clone().into_os_string());
    let bin = |name: &str| Some(dir.join(name).into_os_string());

    assert_eq!(
        find_haproxy(bin("haproxy-3.3"), path.clone()),
        Ok((dir.join("haproxy-3.3"), "HAPROXY_BIN"))
    );
    assert_eq!(
        find_haproxy(None, path.clone()),
        Ok((on_path.join("haproxy"), "PATH"))
    );
    assert_eq!(
        find_haproxy(Some(OsString::new()), path.clone()),
        Ok((on_path.join("haproxy"), "PATH"))
    );
    for name in ["not-executable", "missing", "bin"] {
        let problem = find_haproxy(bin(name), path.clone()).unwrap_err();
        assert!(
            problem.starts_with(&format!(
                "HAPROXY_BIN={} is not an executable file",
                dir.join(name).display()
            )),
            "{problem}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
