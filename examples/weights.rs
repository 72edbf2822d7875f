//! Convergence through HAProxy: how long a backend's load change takes to become the
//! server's weight in HAProxy's `show stat`, and how closely a roundrobin frontend's
//! traffic then splits by the weights.
//!
//! Three ORCA backends (tonic health + `StreamCoreMetrics` on one port each) report cpu
//! 0.2, 0.5 and 0.2; the real agent binary follows them with `weight=orca`, and the real
//! HAProxy asks the agent every `--agent-inter`. Once `show stat` shows the weights the
//! reports give, the last backend's cpu goes to 0.8; the run prints when its weight in
//! HAProxy first moves and when it reaches its final value, every value on the way, then
//! sends `--connections` connections through the frontend and prints each server's share
//! against its weight's share. Everything is on 127.0.0.1.
//!
//! ```text
//! cargo build --release --bin haproxy-grpc-agent --example weights
//! target/release/examples/weights
//! target/release/examples/weights --orca-smoothing 0s --orca-max-step 100 --orca-blackout 0s
//! ```

#[path = "support/agent_process.rs"]
mod agent_process;
#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "support/haproxy_process.rs"]
mod haproxy_process;
#[path = "../tests/support/orca.rs"]
mod orca;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent_process::AgentProcess;
use clap::Parser;
use haproxy_grpc_agent::config::parse_duration;
use haproxy_grpc_agent::weight::headroom;
use haproxy_process::{HaproxyProcess, Server, ServerStat};
use orca::OrcaBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[derive(Parser)]
struct Args {
    /// The agent binary.
    #[arg(long, default_value = "target/release/haproxy-grpc-agent")]
    agent: PathBuf,
    /// The haproxy binary.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
    /// The agent's --orca-report-interval.
    #[arg(long, default_value = "10s")]
    orca_report_interval: String,
    /// The agent's --orca-smoothing.
    #[arg(long, default_value = "10s")]
    orca_smoothing: String,
    /// The agent's --orca-max-step.
    #[arg(long, default_value_t = 20)]
    orca_max_step: u16,
    /// The agent's --orca-blackout.
    #[arg(long, default_value = "10s")]
    orca_blackout: String,
    /// The agent's --orca-min-weight (the floor).
    #[arg(long, default_value_t = 10)]
    orca_min_weight: u16,
    /// HAProxy's agent-inter.
    #[arg(long, default_value = "1s")]
    agent_inter: String,
    /// The cpu_utilization each backend reports at first, one server per value.
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.5,0.2")]
    cpu: Vec<f64>,
    /// The cpu_utilization the last backend reports once the weights have settled.
    #[arg(long, default_value_t = 0.8)]
    changed_to: f64,
    /// Connections sent through HAProxy's frontend once the weights have settled again.
    #[arg(long, default_value_t = 3000)]
    connections: usize,
    /// The longest wait for a weight.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    timeout: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    assert!(!args.cpu.is_empty(), "--cpu needs at least one value");
    let mut backends = Vec::new();
    for cpu in &args.cpu {
        let backend = OrcaBackend::start().await;
        backend.set_cpu_utilization(*cpu);
        backends.push(backend);
    }
    let mut agent = spawn_agent(&args);
    let names: Vec<String> = (0..backends.len())
        .map(|index| char::from(b'a' + index as u8).to_string())
        .collect();
    let servers: Vec<Server> = names
        .iter()
        .zip(&backends)
        .map(|(name, backend)| Server {
            name: name.clone(),
            port: backend.port(),
            agent_line: format!("127.0.0.1 {} no-ssl localhost weight=orca", backend.port()),
        })
        .collect();
    let frontend_port = free_port();
    let haproxy = HaproxyProcess::start(
        &args.haproxy,
        frontend_port,
        agent.addr.port(),
        &args.agent_inter,
        &servers,
    );
    println!(
        "{}; agent {} with --orca-report-interval {} --orca-smoothing {} --orca-max-step {} --orca-blackout {} --orca-min-weight {}; agent-inter {}",
        HaproxyProcess::version(&args.haproxy),
        args.agent.display(),
        args.orca_report_interval,
        args.orca_smoothing,
        args.orca_max_step,
        args.orca_blackout,
        args.orca_min_weight,
        args.agent_inter
    );

    let started = Instant::now();
    let first: Vec<u32> = args
        .cpu
        .iter()
        .map(|cpu| u32::from(headroom(*cpu, args.orca_min_weight)))
        .collect();
    wait_for_weights(&haproxy, &names, &first, args.timeout).await;
    println!(
        "cpu {:?}: show stat shows the weights {first:?} {:.1} s after HAProxy started",
        args.cpu,
        started.elapsed().as_secs_f64()
    );

    let changed_name = names.last().unwrap();
    let last = backends.len() - 1;
    let final_weight = u32::from(headroom(args.changed_to, args.orca_min_weight));
    let changed = Instant::now();
    backends[last].set_cpu_utilization(args.changed_to);
    let moves = follow_weight(&haproxy, changed_name, final_weight, changed, args.timeout).await;
    let (first_move, _, _) = moves.first().expect("the weight moved");
    let (reached, _, last_agt) = moves.last().unwrap();
    println!(
        "server {changed_name}: cpu {} -> {}: HAProxy's weight first moved after {:.1} s, reached {final_weight} after {:.1} s (last_agt {last_agt:?})",
        args.cpu[last],
        args.changed_to,
        first_move.as_secs_f64(),
        reached.as_secs_f64()
    );
    let path: Vec<String> = moves
        .iter()
        .map(|(at, weight, _)| format!("{weight} at {:.1} s", at.as_secs_f64()))
        .collect();
    println!("  weights on the way: {}", path.join(", "));

    let mut weights = first.clone();
    weights[last] = final_weight;
    let frontend = SocketAddr::from(([127, 0, 0, 1], frontend_port));
    split(
        &haproxy,
        frontend,
        &backends,
        &names,
        &weights,
        args.connections,
    )
    .await;
    drop(haproxy);
    agent.stop();
}

/// Starts the agent binary with the ORCA settings of `args`.
fn spawn_agent(args: &Args) -> AgentProcess {
    let flags: Vec<String> = [
        "--server-bind",
        "127.0.0.1",
        "--server-port",
        "0",
        "--metrics-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--log-level",
        "warn",
        "--log-modules",
        "haproxy_grpc_agent=info",
        "--orca-report-interval",
        &args.orca_report_interval,
        "--orca-smoothing",
        &args.orca_smoothing,
        "--orca-max-step",
        &args.orca_max_step.to_string(),
        "--orca-blackout",
        &args.orca_blackout,
        "--orca-min-weight",
        &args.orca_min_weight.to_string(),
    ]
    .map(String::from)
    .to_vec();
    AgentProcess::spawn(&args.agent, &flags)
}

/// A 127.0.0.1 port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `show stat` every 50 ms until the named servers show `weights`.
async fn wait_for_weights(
    haproxy: &HaproxyProcess,
    names: &[String],
    weights: &[u32],
    within: Duration,
) -> HashMap<String, ServerStat> {
    let deadline = Instant::now() + within;
    loop {
        let servers = haproxy.servers().await;
        let shown = names
            .iter()
            .zip(weights)
            .all(|(name, weight)| servers.get(name).and_then(|stat| stat.weight) == Some(*weight));
        if shown {
            return servers;
        }
        assert!(
            Instant::now() < deadline,
            "show stat did not come to the weights {weights:?} within {within:?}; last seen {servers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `show stat` every 50 ms and records each weight `name` shows (with the time since
/// `since` and its `last_agt`) until it shows `wanted`.
async fn follow_weight(
    haproxy: &HaproxyProcess,
    name: &str,
    wanted: u32,
    since: Instant,
    within: Duration,
) -> Vec<(Duration, u32, String)> {
    let mut seen = haproxy
        .servers()
        .await
        .get(name)
        .and_then(|stat| stat.weight);
    let mut moves = Vec::new();
    loop {
        let servers = haproxy.servers().await;
        if let Some(stat) = servers.get(name)
            && stat.weight.is_some()
            && stat.weight != seen
        {
            seen = stat.weight;
            moves.push((since.elapsed(), seen.unwrap(), stat.last_agt.clone()));
            if seen == Some(wanted) {
                return moves;
            }
        }
        assert!(
            since.elapsed() < within,
            "server {name}'s weight did not reach {wanted} within {within:?}; moves {moves:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `count` connections through `frontend` and prints each server's share, counted
/// by its backend, against its weight's share, and the largest difference.
async fn split(
    haproxy: &HaproxyProcess,
    frontend: SocketAddr,
    backends: &[OrcaBackend],
    names: &[String],
    weights: &[u32],
    count: usize,
) {
    let accepted = || -> Vec<u64> {
        backends
            .iter()
            .map(|backend| backend.health.accepted_connections() as u64)
            .collect()
    };
    let before = accepted();
    let started = Instant::now();
    send_connections(frontend, count).await;
    let took = started.elapsed();
    let received: Vec<u64> = accepted()
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let stats = haproxy.servers().await;
    let total_weight: u32 = weights.iter().sum();
    let total: u64 = received.iter().sum();
    println!(
        "{count} connections through HAProxy's roundrobin in {:.1} s; {total} reached the backends",
        took.as_secs_f64()
    );
    let mut worst: f64 = 0.0;
    for ((name, weight), received) in names.iter().zip(weights).zip(&received) {
        let share = 100.0 * *received as f64 / total.max(1) as f64;
        let expected = 100.0 * f64::from(*weight) / f64::from(total_weight);
        worst = worst.max((share - expected).abs());
        let shown = stats.get(name).and_then(|stat| stat.weight);
        println!(
            "  server {name}: weight {weight} (show stat {shown:?}), {received} connections = {share:.2} % against the weight's {expected:.2} % ({:+.2} points)",
            share - expected
        );
    }
    println!("  largest error of the split against the weights: {worst:.2} percentage points");
}

/// Opens `count` connections to `frontend`, one after another; each sends HTTP/2's
/// preface and waits for the backend's first bytes, so that it has reached a backend.
async fn send_connections(frontend: SocketAddr, count: usize) {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for sent in 0..count {
        let through = async {
            let mut stream = tokio::net::TcpStream::connect(frontend).await?;
            stream.write_all(PREFACE).await?;
            let mut first = [0u8; 1];
            stream.read_exact(&mut first).await?;
            std::io::Result::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), through).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("connection {sent} through haproxy failed: {error}"),
            Err(_) => panic!("connection {sent} through haproxy had no answer within 5s"),
        }
    }
}
