//! One interop health server as a child process: a stack's program (tests/interop/*/)
//! started with the shared command line, its `listening PORT` line awaited, commands
//! written to its stdin and their `ok` awaited; killed when dropped. The grpc-js one
//! also serves its stack's own ORCA load reports, set by the `utilization` command.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// How long a server has to print `listening PORT` (an interpreter importing gRPC on a
/// busy machine is the slow case).
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long a command has to be answered `ok`; a stop lets calls finish for 1 s first.
const COMMAND_WITHIN: Duration = Duration::from_secs(10);

/// A gRPC stack whose standard health service the agent is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// grpcio + grpcio-health-checking (gRPC's C core under Python).
    Python,
    /// @grpc/grpc-js + grpc-health-check (pure JavaScript).
    Node,
    /// grpc-go's `google.golang.org/grpc/health`.
    Go,
    /// grpc++'s default health check service (the C core under C++).
    Cpp,
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stack::Python => "python (grpcio)",
            Stack::Node => "node (grpc-js)",
            Stack::Go => "go (grpc-go)",
            Stack::Cpp => "c++ (grpc++)",
        })
    }
}

impl Stack {
    /// Whether the stack's server program serves ORCA's out-of-band load reports with
    /// the stack's own ORCA service, and so takes the `utilization` command. Only grpc-js
    /// (`ServerMetricRecorder`) has one in the versions installed; for the others ORCA
    /// would be a service we wrote, which tests nothing of theirs.
    pub fn serves_orca(self) -> bool {
        matches!(self, Stack::Node)
    }

    /// The command that runs this stack's server; panics, saying how to install it,
    /// when it is not there.
    fn command(self) -> Command {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let interop = root.join("tests/interop");
        let built = root.join("target/interop");
        let (program, script, installed): (PathBuf, Option<PathBuf>, PathBuf) = match self {
            Stack::Python => (
                built.join("python/bin/python"),
                Some(interop.join("python/server.py")),
                built.join("python/requirements.installed"),
            ),
            Stack::Node => (
                PathBuf::from("node"),
                Some(interop.join("node/server.js")),
                interop.join("node/node_modules/package-lock.installed"),
            ),
            Stack::Go => {
                let binary = built.join("go-health-server");
                (binary.clone(), None, binary)
            }
            Stack::Cpp => {
                let binary = built.join("cpp-health-server");
                (binary.clone(), None, binary)
            }
        };
        assert!(
            installed.exists(),
            "the {self} interop server is not installed ({} is missing): run .ci/interop-setup",
            installed.display()
        );
        let mut command = Command::new(program);
        command.args(script);
        command
    }
}

/// A serving status a test sets on the server.
#[derive(Clone, Copy, Debug)]
pub enum Status {
    Serving,
    NotServing,
}

/// A utilization a test sets in the server's ORCA load reports.
#[derive(Clone, Copy, Debug)]
pub enum Utilization {
    /// `cpu_utilization`.
    Cpu,
    /// `application_utilization`.
    Application,
}

/// What a server is started with.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// 0 picks a free port.
    pub port: u16,
    /// Registered SERVING at start, besides the empty service.
    pub services: Vec<String>,
    /// Certificate and key files: serve TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: Option<u32>,
    /// Each connection is closed (GOAWAY, then its calls cancelled 1 s later) this long
    /// after it opened, as many deployments set `max_connection_age`.
    pub max_connection_age_ms: Option<u32>,
}

impl Config {
    pub fn services(services: &[&str]) -> Config {
        Config {
            services: services.iter().map(|name| name.to_string()).collect(),
            ..Config::default()
        }
    }
}

/// A running server; killed (SIGKILL) when dropped.
pub struct Server {
    pub stack: Stack,
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `stack`'s server and waits for its `listening PORT` line.
    pub async fn start(stack: Stack, config: &Config) -> Server {
        let mut command = stack.command();
        command.args(["--port", &config.port.to_string()]);
        command.args(["--services", &config.services.join(",")]);
        if let Some((cert, key)) = &config.tls {
            command.arg("--tls").arg(cert).arg(key);
        }
        if let Some(max_streams) = config.max_streams {
            command.args(["--max-streams", &max_streams.to_string()]);
        }
        if let Some(age) = config.max_connection_age_ms {
            command.args(["--max-connection-age-ms", &age.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("start the {stack} server ({command:?}): {error}"));
        let stdin = child.stdin.take();
        let stdout = lines_as_they_come(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let mut server = Server {
            stack,
            port: 0,
            child,
            stdin,
            stdout,
            stderr,
        };
        let line = server.next_line(START_WITHIN, "listening PORT").await;
        server.port = line
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("the {stack} server said {line:?}, not `listening PORT`"));
        server
    }

    /// Sets `service` (`""` is the whole server) to `status` and waits until it applies.
    pub async fn set(&mut self, service: &str, status: Status) {
        let service = if service.is_empty() { "-" } else { service };
        let status = match status {
            Status::Serving => "SERVING",
            Status::NotServing => "NOT_SERVING",
        };
        self.command(&format!("set {service} {status}")).await;
    }

    /// Sets `utilization` to `value` in the load reports sent from now on (the streams
    /// already open carry it in their next report). Only for a stack that
    /// [serves ORCA](Stack::serves_orca): the other programs have no such command.
    pub async fn set_utilization(&mut self, utilization: Utilization, value: f64) {
        assert!(
            self.stack.serves_orca(),
            "the {} server has no ORCA service to set utilization on",
            self.stack
        );
        let utilization = match utilization {
            Utilization::Cpu => "cpu",
            Utilization::Application => "application",
        };
        self.command(&format!("utilization {utilization} {value}"))
            .await;
    }

    /// Stops the server gracefully (its health service says NOT_SERVING, calls in flight
    /// get a grace period, then the rest are cancelled) and waits for it to exit 0.
    pub async fn stop(&mut self) {
        self.command("stop").await;
        let status = self.wait_exit(COMMAND_WITHIN).await;
        assert!(
            status.success(),
            "the {} server exited with {status} after stop; stderr: {:#?}",
            self.stack,
            self.stderr()
        );
    }

    async fn command(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|error| {
                panic!("write {command:?} to the {} server: {error}", self.stack)
            });
        let answer = self.next_line(COMMAND_WITHIN, command).await;
        assert_eq!(
            answer, "ok",
            "the {} server's answer to {command:?}",
            self.stack
        );
    }

    async fn next_line(&mut self, within: Duration, waiting_for: &str) -> String {
        match tokio::time::timeout(within, self.stdout.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "the {} server exited ({:?}) while we waited for {waiting_for:?}; stderr: {:#?}",
                self.stack,
                self.child.try_wait(),
                self.stderr()
            ),
            Err(_) => panic!(
                "the {} server did not answer {waiting_for:?} within {within:?}; stderr: {:#?}",
                self.stack,
                self.stderr()
            ),
        }
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the {} server did not exit within {within:?}", self.stack);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hands a pipe's lines to async code as they arrive, on a thread of their own.
fn lines_as_they_come(
    pipe: impl std::io::Read + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Collects a pipe's lines on a thread (for the messages of a failing test).
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
