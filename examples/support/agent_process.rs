//! The agent binary as a child process for benchmarks: started with given flags, its
//! addresses read from its start-up log, measured from /proc, stopped or killed.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The agent binary, running.
pub struct AgentProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// What /proc says about a process.
pub struct Stats {
    pub cpu_seconds: f64,
    /// The kernel's part of `cpu_seconds` (syscalls, and on loopback the peer's receive
    /// path run inside our sends).
    pub sys_seconds: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

impl AgentProcess {
    /// Starts `binary` with `flags` and waits for its `agent listening` log line.
    pub fn spawn(binary: &Path, flags: &[String]) -> AgentProcess {
        let mut child = Command::new(binary)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {}: {error}; build it first (cargo build --release)",
                    binary.display()
                )
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"agent listening\"") {
                    let field = |name: &str| {
                        line.split(&format!("\"{name}\":\""))
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                            .map(|addr| addr.parse::<SocketAddr>().unwrap())
                    };
                    let _ = tx.send((field("agent_addr"), field("admin_addr")));
                }
                // Everything else (transitions) is read and dropped.
            }
        });
        let (addr, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the agent logs its addresses");
        AgentProcess {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> Stats {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let sys_seconds = fields[12].parse::<f64>().unwrap() / ticks;
        let cpu_seconds = fields[11].parse::<f64>().unwrap() / ticks + sys_seconds;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| dir.count())
            .unwrap_or(0);
        Stats {
            cpu_seconds,
            sys_seconds,
            rss_kib,
            fds,
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let _ = self.child.wait();
    }

    /// SIGKILL, then waits for the exit: a crash, nothing drained.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status();
    }
}

/// A run that panics must not leave the agent behind.
impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
