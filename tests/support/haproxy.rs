//! The real HAProxy for end-to-end tests: found once (`HAPROXY_BIN`, else `PATH`, else
//! the usual places), started in the foreground with a generated haproxy.cfg, read through
//! `show stat` on its admin socket, killed when dropped.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running haproxy; killed when dropped.
pub struct Haproxy {
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
pub struct HaproxyBinary {
    pub path: PathBuf,
    pub version: String,
}

/// Where haproxy is installed when it is not on `PATH` (`/usr/sbin` is not on every user's).
pub const HAPROXY_PLACES: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"];

/// The haproxy this suite runs, found once per test binary and announced on stderr.
pub fn haproxy_binary() -> &'static HaproxyBinary {
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
pub fn find_haproxy(
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

pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// What a generated haproxy.cfg holds besides its servers' agent lines.
pub struct Farm {
    /// Words on every `server` line before `agent-check`.
    pub server_words: &'static str,
    pub agent_inter: &'static str,
    /// A `mode tcp` frontend listening on this 127.0.0.1 port, sending every connection
    /// to the `grpc` backend.
    pub frontend_port: Option<u16>,
}

impl Farm {
    /// HAProxy's own TCP check beside the agent's, no traffic: the status tests' farm.
    pub const HEALTH: Farm = Farm {
        server_words: "check inter 500ms",
        agent_inter: "100ms",
        frontend_port: None,
    };

    /// Traffic through a frontend to servers of `weight 100`, so that the agent's `NN%`
    /// lands on a weight of NN (from HAProxy's default weight of 1, every percentage under
    /// 100 rounds down to 0, which drains). The agent is their only check: HAProxy's own
    /// would connect to the backends too and blur the count of the traffic they accept.
    pub fn weighted_traffic(frontend_port: u16) -> Farm {
        Farm {
            server_words: "weight 100",
            agent_inter: "200ms",
            frontend_port: Some(frontend_port),
        }
    }
}

/// One `server` line's parts: its name, its backend's port, and the agent line it sends.
pub type ServerLine<'a> = (&'a str, u16, String);

/// One `server` line's parts with the backend's full address.
pub type RemoteServer<'a> = (&'a str, SocketAddr, String);

impl Haproxy {
    /// Starts haproxy in the foreground with `servers` (name, backend port, agent line).
    pub fn start(agent_port: u16, servers: &[ServerLine]) -> Haproxy {
        Haproxy::start_farm(agent_port, servers, &Farm::HEALTH)
    }

    /// Starts haproxy in the foreground with `servers` laid out as `farm` says.
    pub fn start_farm(agent_port: u16, servers: &[ServerLine], farm: &Farm) -> Haproxy {
        let agent = SocketAddr::from(([127, 0, 0, 1], agent_port));
        let servers: Vec<RemoteServer> = servers
            .iter()
            .map(|(name, port, line)| {
                (
                    *name,
                    SocketAddr::from(([127, 0, 0, 1], *port)),
                    line.clone(),
                )
            })
            .collect();
        Haproxy::start_remote(agent, &servers, farm)
    }

    /// Starts haproxy with servers and an agent at any address (the agent in a network
    /// namespace, say).
    pub fn start_remote(agent: SocketAddr, servers: &[RemoteServer], farm: &Farm) -> Haproxy {
        let agent_port = agent.port();
        // Two instances may ask one agent (a benchmark's shared agent): each its own dir.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let instance = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "hga-haproxy-{}-{agent_port}-{instance}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global\n    stats socket {}/admin.sock mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n    timeout check 2s\n\n",
            dir.display()
        );
        if let Some(port) = farm.frontend_port {
            config.push_str(&format!(
                "frontend traffic\n    bind 127.0.0.1:{port}\n    default_backend grpc\n\n"
            ));
        }
        config.push_str("backend grpc\n    balance roundrobin\n");
        let Farm {
            server_words,
            agent_inter,
            ..
        } = farm;
        let agent_ip = agent.ip();
        for (name, address, line) in servers {
            config.push_str(&format!(
                "    server {name} {address} {server_words} agent-check agent-addr {agent_ip} agent-port {agent_port} agent-inter {agent_inter} agent-send \"{line}\\n\"\n"
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

    /// `show stat` for the `grpc` backend's servers, by name; empty while the admin socket
    /// is not up yet.
    pub async fn servers(&self) -> HashMap<String, ServerStat> {
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
        let columns = ["pxname", "svname", "status", "last_agt", "weight", "stot"].map(column);
        let [
            Some(px),
            Some(sv),
            Some(status),
            Some(last_agt),
            Some(weight),
            Some(stot),
        ] = columns
        else {
            return HashMap::new();
        };
        let widest = px.max(sv).max(status).max(last_agt).max(weight).max(stot);
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|row| row.len() > widest && row[px] == "grpc" && row[sv] != "BACKEND")
            .map(|row| {
                let stat = ServerStat {
                    status: row[status].to_string(),
                    last_agt: row[last_agt].to_string(),
                    weight: row[weight].parse().ok(),
                    sessions: row[stot].parse().unwrap_or(0),
                };
                (row[sv].to_string(), stat)
            })
            .collect()
    }

    /// Waits until server `name` has a status starting with `status` and a `last_agt`
    /// containing `reason`.
    pub async fn wait_for(&self, name: &str, status: &str, reason: &str) {
        let mut seen = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let servers = self.servers().await;
            if let Some(stat) = servers.get(name) {
                if stat.status.starts_with(status) && stat.last_agt.contains(reason) {
                    return;
                }
                seen = Some(stat.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "server {name} did not become {status} with last_agt containing {reason:?}; last seen \
             {seen:?} ({})",
            haproxy_binary().version
        );
    }

    /// Polls `show stat` until every named server's status starts with `status` and its
    /// `last_agt` holds `reason`; returns when each was first seen so, from `since`.
    pub async fn until_all(
        &self,
        names: &[String],
        (status, reason): (&str, &str),
        since: tokio::time::Instant,
        within: Duration,
    ) -> Vec<Duration> {
        let mut seen: Vec<Option<Duration>> = vec![None; names.len()];
        while seen.iter().any(Option::is_none) {
            assert!(
                since.elapsed() < within,
                "not every server {status} with {reason:?} within {within:?}: {} of {}",
                seen.iter().flatten().count(),
                names.len()
            );
            let servers = self.servers().await;
            let at = since.elapsed();
            for (name, first) in names.iter().zip(seen.iter_mut()) {
                let shown = servers
                    .get(name)
                    .is_some_and(|s| s.status.starts_with(status) && s.last_agt.contains(reason));
                if first.is_none() && shown {
                    *first = Some(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.into_iter().flatten().collect()
    }

    /// Waits until every named server has the given effective weight and a `last_agt`
    /// containing the given reason; returns the `show stat` that showed it. The status is
    /// not read: a server checked by the agent alone shows "no check" whatever it answers.
    pub async fn wait_for_weights(
        &self,
        wanted: &[(&str, u32, &str)],
    ) -> HashMap<String, ServerStat> {
        let mut servers = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            servers = self.servers().await;
            let shown = |(name, weight, reason): &(&str, u32, &str)| {
                servers.get(*name).is_some_and(|stat| {
                    stat.weight == Some(*weight) && stat.last_agt.contains(reason)
                })
            };
            if wanted.iter().all(shown) {
                return servers;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "show stat did not come to the weights {wanted:?}; last seen {servers:?} ({})",
            haproxy_binary().version
        );
    }
}

/// One server's row of `show stat`, the columns these tests read.
#[derive(Clone, Debug)]
pub struct ServerStat {
    pub status: String,
    pub last_agt: String,
    /// The effective weight (`weight`); the agent's `NN%` makes it NN % of the configured
    /// weight.
    pub weight: Option<u32>,
    /// Sessions HAProxy sent to the server since it started (`stot`).
    pub sessions: u64,
}
