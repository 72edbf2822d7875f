//! Test support: the agent started in-process on 127.0.0.1:0, a line client that speaks
//! to it like HAProxy does, a test CA, and polling with a deadline.

#![allow(dead_code)]

mod abort;
pub mod backend;
pub mod daemon;
pub mod haproxy;
pub mod http;
pub mod netns;
pub mod orca;
pub mod proxy;
pub mod raw_h2;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use abort::AbortOnDrop;
use haproxy_grpc_agent::App;
use haproxy_grpc_agent::config::Settings;
use haproxy_grpc_agent::oracle::Oracle;
use haproxy_grpc_agent::shutdown::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running agent; shut down when dropped.
pub struct Agent {
    pub addr: SocketAddr,
    /// The admin and metrics listener.
    pub admin: SocketAddr,
    pub oracle: Oracle,
    pub shutdown: Shutdown,
    pub serving: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts the agent on 127.0.0.1:0 with `flags` on top of the defaults.
pub async fn start_agent(flags: &[&str]) -> Agent {
    let mut args = vec![
        "haproxy-grpc-agent",
        "--server-bind",
        "127.0.0.1",
        "--server-port",
        "0",
        "--metrics-port",
        "0",
    ];
    if !flags.contains(&"--metrics-bind") {
        args.extend_from_slice(&["--metrics-bind", "127.0.0.1"]);
    }
    args.extend_from_slice(flags);
    let settings = Settings::from_args(args).expect("flags are valid");
    let shutdown = Shutdown::new();
    let app = App::bind(settings, shutdown.clone(), prometheus::Registry::new())
        .await
        .expect("agent starts");
    let addr = app.agent_addr();
    let admin = app.admin_addr();
    let oracle = app.oracle().clone();
    let serving = tokio::spawn(app.run());
    Agent {
        addr,
        admin,
        oracle,
        shutdown,
        serving,
    }
}

/// An agent configured from a TOML file, which the test can rewrite and reload.
pub struct FileAgent {
    pub agent: Agent,
    pub config_path: std::path::PathBuf,
    pub loaded: haproxy_grpc_agent::config::Loaded,
    pub reloader: haproxy_grpc_agent::Reloader,
    dir: std::path::PathBuf,
}

impl Drop for FileAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl FileAgent {
    /// Starts an agent on 127.0.0.1:0 from `body` (the environment is ignored).
    pub async fn start(body: &str) -> FileAgent {
        let dir = std::env::temp_dir().join(format!(
            "hga-file-agent-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, body).unwrap();
        let loaded =
            haproxy_grpc_agent::config::load(&Self::layers(&config_path)).expect("config is valid");
        let shutdown = Shutdown::new();
        let app = App::bind(
            loaded.settings.clone(),
            shutdown.clone(),
            prometheus::Registry::new(),
        )
        .await
        .expect("agent starts");
        let addr = app.agent_addr();
        let admin = app.admin_addr();
        let oracle = app.oracle().clone();
        let reloader = app.reloader();
        let serving = tokio::spawn(app.run());
        let agent = Agent {
            addr,
            admin,
            oracle,
            shutdown,
            serving,
        };
        FileAgent {
            agent,
            config_path,
            loaded,
            reloader,
            dir,
        }
    }

    fn layers(path: &std::path::Path) -> haproxy_grpc_agent::config::Layers<'static> {
        let args = [
            "haproxy-grpc-agent",
            "--server-bind",
            "127.0.0.1",
            "--server-port",
            "0",
            "--metrics-port",
            "0",
            "--config",
            path.to_str().unwrap(),
        ];
        let invocation = haproxy_grpc_agent::config::cli::parse(args).unwrap();
        haproxy_grpc_agent::config::Layers {
            flags: invocation.flags,
            config_file: invocation.config_file,
            env: &|_| None,
        }
    }

    /// Rewrites the file and reloads, as SIGHUP does.
    pub fn reload(
        &mut self,
        body: &str,
    ) -> Result<haproxy_grpc_agent::config::ReloadReport, Vec<String>> {
        std::fs::write(&self.config_path, body).unwrap();
        let layers = Self::layers(&self.config_path);
        self.reloader
            .reload(&layers, &mut self.loaded)
            .map_err(|errors| errors.0.iter().map(|e| e.to_string()).collect())
    }
}

/// One request the way HAProxy makes it: connect, send the line, read one reply line.
pub async fn ask(addr: SocketAddr, line: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to agent");
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    read_reply(&mut stream).await
}

/// Reads up to and including one newline; an empty string means the agent closed.
pub async fn read_reply(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).await.expect("read reply") == 1 {
        reply.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(reply).expect("replies are ASCII")
}

/// The request line for a plaintext target on 127.0.0.1.
pub fn line_for(port: u16, service: &str) -> String {
    format!("127.0.0.1 {port} no-ssl localhost {service}")
        .trim_end()
        .to_string()
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the agent until its reply for `line` starts with `prefix`; returns that reply.
pub async fn reply_becomes(addr: SocketAddr, line: &str, prefix: &str, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = ask(addr, line).await;
        if last.starts_with(prefix) {
            return last;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("reply to {line:?} did not become {prefix:?} within {within:?}; last {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP listener on 127.0.0.1 that accepts connections and never says a word; stops
/// (closing them all) when the returned guard is dropped.
pub async fn silent_backend() -> (u16, AbortOnDrop) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    (port, AbortOnDrop(held))
}

/// A gRPC server that serves nothing: every call ends at once with UNIMPLEMENTED, as a
/// server without the health service answers. Stops when the guard is dropped.
pub async fn unimplemented_backend() -> (u16, AbortOnDrop) {
    use tonic::codegen::http;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let nothing = tower::service_fn(|_request: http::Request<tonic::body::Body>| async {
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(tonic::body::Body::empty())
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let serving = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(nothing, incoming)
            .await;
    });
    (port, AbortOnDrop(serving))
}

/// A loopback port nothing listens on (bound once, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A CA made at test time and a server certificate it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// A client certificate for mTLS, signed by the same CA.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl TestPki {
    /// A CA and a leaf certificate valid for `names`.
    pub fn new(names: &[&str]) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
            KeyPair,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["agent.test".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}

/// Waits until every line's reply starts with its prefix, asking them all at once as
/// HAProxy does; panics with every wrong line's last reply after `within`.
pub async fn replies_become(
    addr: SocketAddr,
    expected: &[(String, &str)],
    within: Duration,
    case: &str,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut asking = tokio::task::JoinSet::new();
        for (index, (line, _)) in expected.iter().enumerate() {
            let line = line.clone();
            asking.spawn(async move { (index, ask(addr, &line).await) });
        }
        let mut replies = vec![String::new(); expected.len()];
        while let Some(answer) = asking.join_next().await {
            let (index, reply) = answer.unwrap();
            replies[index] = reply;
        }
        let wrong: Vec<String> = expected
            .iter()
            .zip(&replies)
            .filter(|((_, prefix), reply)| !reply.starts_with(prefix))
            .map(|((line, prefix), reply)| format!("{line:?}: wanted {prefix:?}, got {reply:?}"))
            .collect();
        if wrong.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{case}: {} of {} targets still wrong after {within:?}:\n{}",
                wrong.len(),
                expected.len(),
                wrong.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The agent's `/backends` entry for `line`; panics if it is not registered.
pub async fn backend_view(agent: &Agent, line: &str) -> serde_json::Value {
    let backends = http::get(agent.admin, "/backends").await.json();
    backends
        .as_array()
        .unwrap()
        .iter()
        .find(|backend| backend["line"] == line)
        .cloned()
        .unwrap_or_else(|| panic!("{line} is not registered: {backends}"))
}
