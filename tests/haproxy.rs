//! End to end with the real HAProxy (Debian's `haproxy` package): servers with
//! `agent-check` pointed at the agent go UP and DOWN as their gRPC backends flip, and
//! `last_agt` carries the agent's reason.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running haproxy; killed when dropped.
struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn haproxy_binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let candidate = Path::new(dir).join("haproxy");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "haproxy is not installed; this suite needs the real one: apt-get install -y haproxy (.ci/run does this)"
    );
}

impl Haproxy {
    /// Starts haproxy in the foreground with `servers` (name, backend port, agent line).
    fn start(agent_port: u16, servers: &[(&str, u16, String)]) -> Haproxy {
        let dir =
            std::env::temp_dir().join(format!("hga-haproxy-{}-{agent_port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global\n    stats socket {}/admin.sock mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n    timeout check 2s\n\n\
             backend grpc\n",
            dir.display()
        );
        for (name, port, line) in servers {
            config.push_str(&format!(
                "    server {name} 127.0.0.1:{port} check inter 500ms agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter 100ms agent-send \"{line}\\n\"\n"
            ));
        }
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let binary = haproxy_binary();
        let check = Command::new(&binary)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c rejects the config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        Haproxy { child, dir }
    }

    /// `show stat` for the `grpc` backend's servers: name → (status, last_agt).
    async fn servers(&self) -> HashMap<String, (String, String)> {
        let Ok(mut socket) = tokio::net::UnixStream::connect(self.dir.join("admin.sock")).await
        else {
            return HashMap::new();
        };
        socket.write_all(b"show stat\n").await.unwrap();
        let mut csv = String::new();
        socket.read_to_string(&mut csv).await.unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(status), Some(last_agt)) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("last_agt"),
        ) else {
            return HashMap::new();
        };
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|row| row.len() > last_agt && row[px] == "grpc" && row[sv] != "BACKEND")
            .map(|row| {
                (
                    row[sv].to_string(),
                    (row[status].to_string(), row[last_agt].to_string()),
                )
            })
            .collect()
    }

    /// Waits until server `name` has a status starting with `status` and a `last_agt`
    /// containing `reason`.
    async fn wait_for(&self, name: &str, status: &str, reason: &str) {
        let mut seen = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let servers = self.servers().await;
            if let Some((now, last_agt)) = servers.get(name) {
                if now.starts_with(status) && last_agt.contains(reason) {
                    return;
                }
                seen = Some((now.clone(), last_agt.clone()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "server {name} did not become {status} with last_agt containing {reason:?}; last seen {seen:?}"
        );
    }
}

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
    haproxy.wait_for("d", "DOWN", "NOT_FOUND").await;

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
