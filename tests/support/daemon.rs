//! The agent binary run as an operator runs it: a child process whose JSON log lines are
//! collected as they come, signals sent with kill(1), exit status awaited with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_haproxy-grpc-agent");

/// A running agent process; killed when dropped.
pub struct Daemon {
    child: Child,
    /// Every stdout line so far (the JSON log).
    log: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub addr: Option<SocketAddr>,
}

impl Daemon {
    /// Starts the binary with `args` (plus a loopback agent port picked by the system)
    /// and `env`; the agent environment of the test process is not passed on.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut all = vec![
            "--server-bind",
            "127.0.0.1",
            "--server-port",
            "0",
            "--metrics-bind",
            "127.0.0.1",
            "--metrics-port",
            "0",
        ];
        all.extend_from_slice(args);
        Daemon::spawn_exact(&all, env)
    }

    /// Starts the binary with exactly `args`: the caller picks every address.
    pub fn spawn_exact(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_via(&[], args, env)
    }

    /// Starts the binary inside `netns`, listening on the namespace's side of its link,
    /// with `flags`.
    pub fn start_in(netns: &super::netns::Netns, flags: &[&str]) -> Daemon {
        let args = netns.agent_args(flags);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start_via(&netns.exec(), &args, &[])
    }

    /// Starts the binary under `wrapper` (e.g. `ip netns exec NS`, which execs it) with
    /// exactly `args`, and waits for its `agent listening` line.
    pub fn start_via(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::spawn_via(wrapper, args, env);
        daemon.await_listening();
        daemon
    }

    fn spawn_via(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars() {
            if name.starts_with("HAPROXY_AGENT_") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start the agent binary");
        let log = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Daemon {
            child,
            log,
            stderr,
            addr: None,
        }
    }

    /// Starts the binary and waits for its `agent listening` line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::spawn(args, env);
        daemon.await_listening();
        daemon
    }

    fn await_listening(&mut self) {
        let line = self.wait_for_log("\"agent listening\"", Duration::from_secs(20));
        let addr = line
            .split("\"agent_addr\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the log line carries agent_addr");
        self.addr = Some(addr.parse().unwrap());
    }

    /// The admin listener's address, from the `agent listening` line.
    pub fn admin_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("\"agent listening\"", Duration::from_secs(20));
        line.split("\"admin_addr\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|addr| addr.parse().ok())
            .expect("the log line carries admin_addr")
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("the daemon was started with Daemon::start")
    }

    /// Waits for a log line containing `needle` (counting lines already seen) and
    /// returns it; panics with the log so far after `within`.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        self.wait_for_nth_log(needle, 1, within)
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    pub fn wait_for_nth_log(&mut self, needle: &str, count: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let matching: Vec<String> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains(needle))
                .cloned()
                .collect();
            if matching.len() >= count {
                return matching.last().unwrap().clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}) before logging {needle:?}; log: {:#?}; stderr: {:#?}",
                    self.log(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line {needle:?} within {within:?}; log: {:#?}",
                    self.log()
                );
            }
            // A sync helper polling a child process with a deadline, not async code.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The process's open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{name}");
    }

    /// Waits for the process to exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("the agent did not exit within {within:?}");
            }
            // A sync helper polling a child process with a deadline, not async code.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a pipe's lines on a thread.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// A directory for one test's files, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "hga-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `body` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
