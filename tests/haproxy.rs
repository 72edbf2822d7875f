//! End to end with the real HAProxy: servers with `agent-check` pointed at the agent go UP
//! and DOWN as their gRPC backends flip, and `last_agt` carries the agent's reason.
//!
//! The haproxy run is `HAPROXY_BIN` when set, else the first `haproxy` on `PATH`, else
//! Debian's package's (`/usr/sbin/haproxy`) or another usual place; its `haproxy -v` line is
//! printed with the test output, so a run says which HAProxy it tested.

mod support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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

/// The haproxy binary under test and the first line of its `haproxy -v`.
struct HaproxyBinary {
    path: PathBuf,
    version: String,
}

/// Where haproxy is installed when it is not on `PATH` (`/usr/sbin` is not on every user's).
const HAPROXY_PLACES: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

/// The haproxy this suite runs, found once per test binary and announced on stderr.
fn haproxy_binary() -> &'static HaproxyBinary {
    static FOUND: OnceLock<HaproxyBinary> = OnceLock::new();
    FOUND.get_or_init(|| {
        let (path, from) = find_haproxy(std::env::var_os("HAPROXY_BIN"), std::env::var_os("PATH"))
            .unwrap_or_else(|problem| panic!("{problem}"));
        let output = Command::new(&path)
            .arg("-v")
            .output()
            .unwrap_or_else(|error| panic!("cannot run {} -v: {error}", path.display()));
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            output.status.success() && version.starts_with("HAProxy version"),
            "{} -v does not say \"HAProxy version ...\" ({}); is it haproxy?",
            path.display(),
            output.status
        );
        // Straight to the stream: the harness captures `eprintln!`, and the version tested
        // belongs in every run's output, passed or failed.
        let _ = writeln!(
            std::io::stderr(),
            "haproxy under test: {} ({from}): {version}",
            path.display()
        );
        HaproxyBinary { path, version }
    })
}

/// `HAPROXY_BIN` if set and not empty (then it must be an executable file), else the first
/// executable `haproxy` in `path`, else one in [`HAPROXY_PLACES`]; with where it came from.
fn find_haproxy(
    haproxy_bin: Option<OsString>,
    path: Option<OsString>,
) -> Result<(PathBuf, &'static str), String> {
    if let Some(chosen) = haproxy_bin.filter(|value| !value.is_empty()) {
        let chosen = PathBuf::from(chosen);
        if !is_executable(&chosen) {
            return Err(format!(
                "HAPROXY_BIN={} is not an executable file; point it at the haproxy binary to \
                 test (e.g. HAPROXY_BIN=/usr/local/sbin/haproxy) or unset it to use PATH",
                chosen.display()
            ));
        }
        return Ok((chosen, "HAPROXY_BIN"));
    }
    let on_path = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| is_executable(candidate));
    if let Some(found) = on_path {
        return Ok((found, "PATH"));
    }
    HAPROXY_PLACES
        .iter()
        .map(|dir| Path::new(dir).join("haproxy"))
        .find(|candidate| is_executable(candidate))
        .map(|found| (found, "installed"))
        .ok_or_else(|| {
            "haproxy is not installed; this suite needs the real one: apt-get install -y \
             haproxy (.ci/test does this), or set HAPROXY_BIN to a haproxy binary"
                .to_string()
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
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
        let binary = &haproxy_binary().path;
        let check = Command::new(binary)
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
        let child = Command::new(binary)
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
            "server {name} did not become {status} with last_agt containing {reason:?}; last seen \
             {seen:?} ({})",
            haproxy_binary().version
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
