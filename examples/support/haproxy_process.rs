//! The real HAProxy as a child process for benchmarks: one `mode tcp` frontend on
//! 127.0.0.1, one `roundrobin` backend whose servers are checked by the agent alone, and
//! `show stat` read over an admin socket in a temporary directory.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One server of the backend: its name, its port on 127.0.0.1 and the line HAProxy sends
/// the agent (without the newline).
pub struct Server {
    pub name: String,
    pub port: u16,
    pub agent_line: String,
}

/// A running haproxy; killed, and its directory removed, when dropped.
pub struct HaproxyProcess {
    child: Child,
    dir: PathBuf,
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server's row of `show stat`: its effective weight, `last_agt` and `stot`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerStat {
    pub weight: Option<u32>,
    pub last_agt: String,
    pub sessions: u64,
}

impl HaproxyProcess {
    /// Writes the config, has `binary -c` check it, and starts `binary -db`. Servers get
    /// `weight 100`, so the agent's `NN%` lands on a weight of NN.
    pub fn start(
        binary: &Path,
        frontend_port: u16,
        agent_port: u16,
        agent_inter: &str,
        servers: &[Server],
    ) -> HaproxyProcess {
        let dir = std::env::temp_dir().join(format!("hga-bench-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "global\n    stats socket {}/admin.sock mode 600 level admin\n\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n    timeout check 2s\n\n\
             frontend traffic\n    bind 127.0.0.1:{frontend_port}\n    default_backend grpc\n\n\
             backend grpc\n    balance roundrobin\n",
            dir.display()
        );
        for Server {
            name,
            port,
            agent_line,
        } in servers
        {
            config.push_str(&format!(
                "    server {name} 127.0.0.1:{port} weight 100 agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter {agent_inter} agent-send \"{agent_line}\\n\"\n"
            ));
        }
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config).unwrap();
        let check = Command::new(binary)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
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
        HaproxyProcess { child, dir }
    }

    /// `show stat` for the `grpc` backend's servers, by name; empty while the admin socket
    /// is not up yet.
    pub async fn servers(&self) -> HashMap<String, ServerStat> {
        let Ok(mut socket) = tokio::net::UnixStream::connect(self.dir.join("admin.sock")).await
        else {
            return HashMap::new();
        };
        if socket.write_all(b"show stat\n").await.is_err() {
            return HashMap::new();
        }
        let mut csv = String::new();
        if socket.read_to_string(&mut csv).await.is_err() {
            return HashMap::new();
        }
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let [Some(px), Some(sv), Some(last_agt), Some(weight), Some(stot)] =
            ["pxname", "svname", "last_agt", "weight", "stot"].map(column)
        else {
            return HashMap::new();
        };
        let widest = px.max(sv).max(last_agt).max(weight).max(stot);
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|row| row.len() > widest && row[px] == "grpc" && row[sv] != "BACKEND")
            .map(|row| {
                let stat = ServerStat {
                    weight: row[weight].parse().ok(),
                    last_agt: row[last_agt].to_string(),
                    sessions: row[stot].parse().unwrap_or(0),
                };
                (row[sv].to_string(), stat)
            })
            .collect()
    }

    /// The `haproxy -v` first line of `binary`.
    pub fn version(binary: &Path) -> String {
        Command::new(binary)
            .arg("-v")
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    }
}
