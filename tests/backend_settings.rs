//! What the agent sends to backends and how it reads their answers, per setting: mTLS
//! client certificates, skipped verification, extra metadata and user agent, and the
//! reply policies for NOT_SERVING and UNIMPLEMENTED.

mod support;

use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::daemon::TempDir;
use support::*;

#[tokio::test]
async fn mtls_presents_the_client_certificate() {
    let pki = TestPki::new(&["backend.test"]);
    let dir = TempDir::new("mtls");
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let cert = dir.write("client.pem", &pki.client_cert_pem);
    let key = dir.write("client.key", &pki.client_key_pem);
    let backend = HealthBackend::start_mtls(&pki.cert_pem, &pki.key_pem, &pki.ca_pem).await;
    let line = format!("127.0.0.1 {} ssl backend.test", backend.port());

    let anonymous = start_agent(&["--tls-ca-file", ca.to_str().unwrap()]).await;
    let refused = ask(anonymous.addr, &line).await;
    assert_eq!(
        refused,
        "down #tls: the backend wants a client certificate (alert CertificateRequired); set tls_cert_file and tls_key_file\n"
    );
    // A certificate from a CA the backend does not trust.
    let stranger = TestPki::new(&["backend.test"]);
    let stranger_cert = dir.write("stranger.pem", &stranger.client_cert_pem);
    let stranger_key = dir.write("stranger.key", &stranger.client_key_pem);
    let untrusted = start_agent(&[
        "--tls-ca-file",
        ca.to_str().unwrap(),
        "--tls-cert-file",
        stranger_cert.to_str().unwrap(),
        "--tls-key-file",
        stranger_key.to_str().unwrap(),
    ])
    .await;
    let refused = ask(untrusted.addr, &line).await;
    assert!(
        refused.starts_with("down #tls: the backend refused our client certificate"),
        "{refused:?}"
    );
    assert_eq!(
        backend.total_checks(),
        0,
        "no Check without a client certificate"
    );

    let agent = start_agent(&[
        "--tls-ca-file",
        ca.to_str().unwrap(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ])
    .await;
    let reply = ask(agent.addr, &line).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
}

#[tokio::test]
async fn an_unreadable_client_key_stops_the_start() {
    let pki = TestPki::new(&["backend.test"]);
    let dir = TempDir::new("mtls-bad");
    let cert = dir.write("client.pem", &pki.client_cert_pem);
    let key = dir.write("client.key", "not a key");
    let settings = haproxy_grpc_agent::config::Settings::from_args([
        "haproxy-grpc-agent",
        "--server-port",
        "0",
        "--metrics-port",
        "0",
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ])
    .unwrap();
    let shutdown = haproxy_grpc_agent::shutdown::Shutdown::new();
    let error = haproxy_grpc_agent::App::bind(settings, shutdown, prometheus::Registry::new())
        .await
        .err()
        .expect("a bad key is refused at start");
    let message = error.to_string();
    assert!(message.contains("client.key"), "{message}");
    assert!(
        !message.contains("not a key"),
        "key contents stay out: {message}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate_and_name() {
    // A certificate from a CA the agent does not know, for a name the line does not use.
    let pki = TestPki::new(&["backend.test"]);
    let backend = HealthBackend::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let line = format!("127.0.0.1 {} ssl other.test", backend.port());

    let verifying = start_agent(&[]).await;
    let refused = ask(verifying.addr, &line).await;
    assert!(refused.starts_with("down #tls: "), "{refused:?}");

    let trusting = start_agent(&["--tls-insecure-skip-verify"]).await;
    let reply = ask(trusting.addr, &line).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
}

#[tokio::test]
async fn metadata_and_user_agent_reach_the_backend() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--grpc-metadata",
        "x-api-key=s3cret",
        "--grpc-metadata",
        "x-farm=eu-1",
        "--user-agent",
        "farm-checker/7",
    ])
    .await;
    let reply = ask(agent.addr, &line_for(backend.port(), "")).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
    assert_eq!(backend.last_header("x-api-key").as_deref(), Some("s3cret"));
    assert_eq!(backend.last_header("x-farm").as_deref(), Some("eu-1"));
    let user_agent = backend.last_header("user-agent").unwrap_or_default();
    assert!(user_agent.starts_with("farm-checker/7"), "{user_agent:?}");

    let default = start_agent(&[]).await;
    let other = HealthBackend::start().await;
    ask(default.addr, &line_for(other.port(), "")).await;
    let user_agent = other.last_header("user-agent").unwrap_or_default();
    assert!(
        user_agent.starts_with(&format!("haproxy-grpc-agent/{}", env!("CARGO_PKG_VERSION"))),
        "{user_agent:?}"
    );
    assert_eq!(other.last_header("x-api-key"), None);
}

#[tokio::test]
async fn unimplemented_can_answer_up() {
    let (port, _server) = unimplemented_backend().await;
    let strict = start_agent(&[]).await;
    let reply = ask(strict.addr, &line_for(port, "")).await;
    assert!(reply.starts_with("down #grpc UNIMPLEMENTED"), "{reply:?}");

    let lenient = start_agent(&["--unimplemented-reply", "up"]).await;
    let reply = ask(lenient.addr, &line_for(port, "")).await;
    assert!(reply.starts_with("up #grpc UNIMPLEMENTED"), "{reply:?}");
}

#[tokio::test]
async fn not_serving_answers_the_policy_and_serving_again_says_ready() {
    for policy in ["drain", "maint"] {
        let backend = HealthBackend::start().await;
        let agent = start_agent(&[
            "--health-mode",
            "poll",
            "--check-interval",
            "50ms",
            "--rise",
            "1",
            "--fall",
            "1",
            "--not-serving-reply",
            policy,
        ])
        .await;
        let line = line_for(backend.port(), "");
        let up = ask(agent.addr, &line).await;
        assert!(up.starts_with("up ready #SERVING"), "{up:?}");
        backend.set("", Wire::NotServing);
        let within = Duration::from_secs(5);
        let held = reply_becomes(agent.addr, &line, policy, within).await;
        assert_eq!(held, format!("{policy} #NOT_SERVING\n"));
        // Other failures are still plain down.
        backend.forget("");
        reply_becomes(agent.addr, &line, "down #grpc NOT_FOUND", within).await;
        backend.set("", Wire::Serving);
        reply_becomes(agent.addr, &line, "up ready #SERVING", within).await;
    }
}

#[tokio::test]
async fn without_the_channel_cache_every_check_has_its_own_connection() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[
        "--health-mode",
        "poll",
        "--check-interval",
        "50ms",
        "--grpc-channel-cache",
        "false",
    ])
    .await;
    let line = line_for(backend.port(), "");
    assert!(ask(agent.addr, &line).await.starts_with("up #SERVING"));
    eventually(Duration::from_secs(5), "four checks", || async {
        backend.checks("") >= 4
    })
    .await;
    let (checks, accepted) = (backend.checks(""), backend.accepted_connections());
    assert!(
        accepted + 1 >= checks as usize,
        "{accepted} connections for {checks} checks"
    );

    let cached = HealthBackend::start().await;
    let agent = start_agent(&["--health-mode", "poll", "--check-interval", "50ms"]).await;
    assert!(
        ask(agent.addr, &line_for(cached.port(), ""))
            .await
            .starts_with("up #SERVING")
    );
    eventually(Duration::from_secs(5), "four checks", || async {
        cached.checks("") >= 4
    })
    .await;
    assert_eq!(
        cached.accepted_connections(),
        1,
        "one connection for every check"
    );
}
