//! Who may ask and what may be probed: `allow_backends` (no connection to a denied
//! target, names checked again after resolution), `allow_sources` on the agent port, and
//! the start-up warning for an open agent port without an allowlist.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::backend::HealthBackend;
use support::daemon::Daemon;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A listener that counts the connections made to it (and holds them open).
async fn counting_listener() -> (u16, Arc<AtomicUsize>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            open.push(stream);
        }
    });
    (port, count, AbortOnDrop(task))
}

/// Waits until `backend` has answered `checks` more Checks: the agent's pollers have
/// run that many rounds, so a denied target would have been tried by then.
async fn rounds(backend: &HealthBackend, checks: u64) {
    let start = backend.total_checks();
    eventually(
        Duration::from_secs(10),
        "the allowed backend is probed",
        || async { backend.total_checks() >= start + checks },
    )
    .await;
}

#[tokio::test]
async fn a_denied_target_is_answered_down_and_never_connected_to() {
    let allowed = HealthBackend::start().await;
    let (denied_port, connections, _guard) = counting_listener().await;
    let rule = format!("127.0.0.1/32:{}", allowed.port());
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--allow-backend",
        &rule,
        "--check-interval",
        "50ms",
    ])
    .await;

    let reply = ask(agent.addr, &line_for(allowed.port(), "")).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
    for line in [
        line_for(denied_port, ""),
        format!("127.0.0.1 {denied_port} ssl localhost"),
        format!("127.0.0.2 {} no-ssl localhost", allowed.port()),
    ] {
        assert_eq!(
            ask(agent.addr, &line).await,
            "down #denied by allowlist\n",
            "{line}"
        );
    }
    rounds(&allowed, 5).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a denied port was connected to"
    );
    // Denied targets are not registered: only the allowed one is.
    assert_eq!(agent.oracle.snapshots().len(), 1);
}

#[tokio::test]
async fn a_name_cannot_smuggle_in_an_address_the_list_does_not_allow() {
    let (port, connections, _guard) = counting_listener().await;
    // The name is allowed, but it resolves to 127.0.0.1, outside the address rule.
    let agent = start_agent(&[
        "--allow-backend",
        "localhost",
        "--allow-backend",
        "10.0.0.0/8",
    ])
    .await;
    let reply = ask(agent.addr, &format!("localhost {port} no-ssl localhost")).await;
    assert!(
        reply.starts_with("down #denied by allowlist: localhost resolves to "),
        "{reply:?}"
    );
    assert!(reply.contains("127.0.0.1"), "{reply:?}");
    // A name outside the name rules is refused before any lookup.
    assert_eq!(
        ask(agent.addr, &format!("db.example {port} no-ssl db.example")).await,
        "down #denied by allowlist\n"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 0);

    // With the name alone allowed (no address rules), the same target is probed.
    let backend = HealthBackend::start().await;
    let by_name = start_agent(&["--allow-backend", &format!("local*:{}", backend.port())]).await;
    let reply = ask(
        by_name.addr,
        &format!("localhost {} no-ssl localhost", backend.port()),
    )
    .await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
}

#[tokio::test]
async fn sources_outside_allow_sources_are_closed_without_a_reply() {
    let backend = HealthBackend::start().await;
    let closed = start_agent(&["--allow-source", "10.0.0.0/8"]).await;
    let mut stream = tokio::net::TcpStream::connect(closed.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let _ = stream
        .write_all(format!("{}\n", line_for(backend.port(), "")).as_bytes())
        .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "expected a close without a reply, got {read:?} {rest:?}"
    );
    assert_eq!(
        backend.total_checks(),
        0,
        "a refused source registered a target"
    );
    let metrics = support::http::get(closed.admin, "/metrics").await.body;
    assert!(
        metrics
            .contains("haproxy_grpc_agent_haproxy_connections_refused_total{reason=\"source\"} 1"),
        "{metrics}"
    );

    let open = start_agent(&["--allow-source", "127.0.0.0/8", "--allow-source", "::1"]).await;
    let reply = ask(open.addr, &line_for(backend.port(), "")).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
}

#[tokio::test]
async fn an_open_agent_port_without_an_allowlist_is_warned_about_at_start() {
    let warning = "allow_backends is empty";
    let common = [
        "--server-port",
        "0",
        "--metrics-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
    ];
    let mut open = Daemon::spawn_exact(&[&["--server-bind", "0.0.0.0"][..], &common].concat(), &[]);
    open.wait_for_log("\"agent listening\"", Duration::from_secs(20));
    assert!(
        open.log()
            .iter()
            .any(|line| line.contains(warning) && line.contains("WARN")),
        "{:?}",
        open.log()
    );
    let mut listed = Daemon::spawn_exact(
        &[
            &["--server-bind", "0.0.0.0", "--allow-backend", "10.0.0.0/8"][..],
            &common,
        ]
        .concat(),
        &[],
    );
    listed.wait_for_log("\"agent listening\"", Duration::from_secs(20));
    let mut local = Daemon::start(&[], &[]);
    local.wait_for_log("\"agent listening\"", Duration::from_secs(20));
    for daemon in [&listed, &local] {
        assert!(
            !daemon.log().iter().any(|line| line.contains(warning)),
            "{:?}",
            daemon.log()
        );
    }
}
