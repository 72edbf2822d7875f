//! Whose word a verdict is (issue 19), measured on agent binaries run as child processes:
//! the backend's own NOT_SERVING reaching HAProxy as DOWN, the agent's own faults
//! answered with silence rather than `down`, the agent's network cut at 1,000 targets, a
//! restart at 10,000, two agents on one farm, and a healthy farm where nothing happens.
//! `--agent` is repeatable; the first is the baseline of the ratios, and every binary
//! runs against the same farm in one run.
//!
//! ```text
//! cargo build --release --bin haproxy-grpc-agent --example verdicts
//! B="--agent /work/old19/target/release/haproxy-grpc-agent --agent target/release/haproxy-grpc-agent"
//! target/release/examples/verdicts $B flip
//! target/release/examples/verdicts $B faults --cases full,overload,slow
//! target/release/examples/verdicts $B faults --cases stream
//! target/release/examples/verdicts $B cut          # root: a network namespace
//! target/release/examples/verdicts $B restart
//! target/release/examples/verdicts --agent target/release/haproxy-grpc-agent pair
//! target/release/examples/verdicts $B steady --during 70s   # nothing wrong: all up?
//! ```
//!
//! Each case prints its figures as it goes and a table at its end. Everything but the
//! agents (HAProxy, the tonic backends, the HAProxy-like asker) runs in this process or
//! as its children, on loopback or on a namespace's veth link.

#[path = "../tests/support/abort.rs"]
mod abort;
#[path = "support/agent_process.rs"]
mod agent_process;
#[path = "support/asker.rs"]
mod asker;
#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "support/farm.rs"]
mod farm;
#[path = "../tests/support/haproxy.rs"]
#[allow(dead_code)]
mod haproxy;
#[path = "../tests/support/http.rs"]
mod http;
#[path = "../tests/support/load.rs"]
mod load;
#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;
#[path = "../tests/support/proxy.rs"]
mod proxy;
#[path = "support/verdicts_faults.rs"]
mod verdicts_faults;
#[path = "support/verdicts_outages.rs"]
mod verdicts_outages;
#[path = "support/verdicts_pair.rs"]
mod verdicts_pair;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use abort::AbortOnDrop;
use agent_process::AgentProcess;
use asker::{Outcome, Tally};
use clap::{Parser, Subcommand};
use haproxy_grpc_agent::config::parse_duration;
use tokio::time::Instant;

#[derive(Parser)]
pub struct Args {
    /// An agent binary; repeat it to compare binaries (the first is the baseline).
    #[arg(long, default_value = "target/release/haproxy-grpc-agent")]
    agent: Vec<PathBuf>,
    #[command(subcommand)]
    case: Case,
}

#[derive(Subcommand)]
pub enum Case {
    /// 100 servers behind the real HAProxy (agent-inter 500ms, check inter 2s) flipped
    /// to NOT_SERVING at once: time to DOWN in `show stat`, per mode.
    Flip {
        #[arg(long, value_delimiter = ',', default_value = "watch,poll")]
        modes: Vec<String>,
    },
    /// The agent's own faults: `down` replies (wrong) vs silence, per case: full
    /// (--max-targets), overload (mute backends holding the probe slots), stream (a Watch
    /// stream's connection reset), slow (a first probe slower than the miss timeout).
    Faults {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "full,overload,slow,stream"
        )]
        cases: Vec<String>,
        /// How long the stream case asks in a tight loop.
        #[arg(long, default_value = "40s", value_parser = parse_duration)]
        stream_for: Duration,
    },
    /// The agent in a network namespace, its backends' addresses cut off for a while:
    /// wrong `down`s during the cut, and time from the heal to live verdicts.
    Cut {
        #[arg(long, default_value_t = 100)]
        backends: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        cut_for: Duration,
    },
    /// SIGTERM and a new agent on the same port while every target is asked every 2 s.
    Restart {
        #[arg(long, default_value_t = 1000)]
        backends: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
    },
    /// A healthy farm asked every `--every` for `--during`, nothing happening: every
    /// answer should be a live `up`; prints any other answer by second and
    /// the agent's silences by cause.
    Steady {
        #[arg(long, default_value_t = 100)]
        backends: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        every: Duration,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        during: Duration,
        /// More flags for the agent (repeatable), e.g. --agent-flag=--liveness-interval=5s.
        #[arg(long = "agent-flag", allow_hyphen_values = true)]
        agent_flags: Vec<String>,
    },
    /// One agent, then two, on one farm: the backends' load and the agents' cost; then
    /// two HAProxy instances, each with its own agent or both with one, and an agent
    /// killed. Uses the last --agent.
    Pair {
        #[arg(long, default_value_t = 100)]
        backends: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
        /// Servers in each HAProxy instance (the farm's first targets).
        #[arg(long, default_value_t = 100)]
        servers: usize,
    },
}

fn main() {
    let args = Args::parse();
    haproxy_grpc_agent::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let agents = &args.agent;
    runtime.block_on(async {
        match &args.case {
            Case::Flip { modes } => verdicts_faults::flip(agents, modes).await,
            Case::Faults { cases, stream_for } => {
                verdicts_faults::faults(agents, cases, *stream_for).await
            }
            Case::Cut {
                backends,
                services,
                cut_for,
            } => verdicts_outages::cut(agents, *backends, *services, *cut_for).await,
            Case::Restart { backends, services } => {
                verdicts_outages::restart(agents, *backends, *services).await
            }
            Case::Steady {
                backends,
                services,
                every,
                during,
                agent_flags,
            } => {
                let farm = (*backends, *services);
                verdicts_outages::steady(agents, farm, *every, *during, agent_flags).await
            }
            Case::Pair {
                backends,
                services,
                servers,
            } => {
                let binary = agents.last().expect("an --agent");
                verdicts_pair::pair(binary, *backends, *services, *servers).await
            }
        }
    });
}

/// The flags every run gives the agent: its listener on `bind:port`, the admin API on
/// `bind` too, room for the asker's connections, and only the start-up and transition
/// logs.
fn base_flags(bind: &str, port: u16) -> Vec<String> {
    [
        "--server-bind",
        bind,
        "--server-port",
        &port.to_string(),
        "--metrics-bind",
        bind,
        "--metrics-port",
        "0",
        "--max-connections",
        "10000",
        "--log-level",
        "warn",
        "--log-modules",
        "haproxy_grpc_agent=info",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts `binary` on 127.0.0.1:`port` (0: any) with `extra` flags.
fn spawn(binary: &Path, port: u16, extra: &[&str]) -> AgentProcess {
    let mut flags = base_flags("127.0.0.1", port);
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    tokio::task::block_in_place(|| AgentProcess::spawn(binary, &flags))
}

/// SIGTERM, waiting for the exit off the runtime's workers.
fn stop(agent: &mut AgentProcess) {
    tokio::task::block_in_place(|| agent.stop());
}

/// A loopback port free now (bound once, then released), for an agent restarted on it.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Asks `line` every `every` for `during`, one ask after the other.
async fn ask_every(addr: SocketAddr, line: &str, every: Duration, during: Duration) -> Asked {
    let started = Instant::now();
    let mut asked = Asked::default();
    while started.elapsed() < during {
        let (outcome, reply) = asker::ask(addr, line).await;
        asked.add(outcome, &reply);
        tokio::time::sleep(every).await;
    }
    asked
}

/// Answers counted, and the first reply of each kind seen.
#[derive(Default)]
struct Asked {
    tally: Tally,
    seen: Vec<String>,
}

impl Asked {
    fn add(&mut self, outcome: Outcome, reply: &str) {
        self.tally.add(outcome);
        let kind = asker::reason_kind(reply);
        if !self.seen.contains(&kind) {
            self.seen.push(kind);
        }
    }

    fn merge(&mut self, other: Asked) {
        let Tally {
            asks,
            up,
            held,
            down,
            silent,
            refused,
            other: others,
        } = other.tally;
        let t = &mut self.tally;
        t.asks += asks;
        t.up += up;
        t.held += held;
        t.down += down;
        t.silent += silent;
        t.refused += refused;
        t.other += others;
        for kind in other.seen {
            if !self.seen.contains(&kind) {
                self.seen.push(kind);
            }
        }
    }
}

/// Targets the agent follows with a Watch stream, and all it has, from `/backends`.
async fn watched(admin: SocketAddr) -> (usize, usize) {
    let view = http::get(admin, "/backends").await.json();
    let all = view.as_array().cloned().unwrap_or_default();
    let watched = all.iter().filter(|b| b["mode"] == "watch").count();
    (watched, all.len())
}

/// Waits (at most `within`) until every one of `targets` is watched.
async fn until_watched(admin: SocketAddr, targets: usize, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (watched, all) = watched(admin).await;
        if watched >= targets || started.elapsed() > within {
            if watched < targets {
                println!("  only {watched} of {all} targets watched after {within:?}");
            }
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The label a binary is printed with: its path.
fn label(binary: &Path) -> String {
    binary.display().to_string()
}

/// A duration in seconds with two decimals.
fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// `value / baseline` as `1.23x`, or `-` when the baseline is zero.
fn ratio(value: f64, baseline: f64) -> String {
    if baseline == 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}x", value / baseline)
    }
}

/// The percentile `p` (0..=100) of sorted `values`.
fn percentile(values: &[Duration], p: usize) -> Duration {
    values[(values.len() * p / 100).min(values.len() - 1)]
}
