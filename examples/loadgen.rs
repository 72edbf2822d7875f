//! An HAProxy-like load generator: a new TCP connection per request, one line, read the
//! reply, reset. It measures cached answers from the real agent over many registered
//! targets against a constant-`up` responder that shares the agent's accept/read/write
//! path (the ceiling), in the same run, alternating phases. A third phase repeats the
//! agent's while a client reads the admin API (`/backends`, `/metrics`) as fast as it
//! answers, to show the admin side does not slow agent replies.
//!
//! ```text
//! cargo run --release --example loadgen -- --targets 1000 --concurrency 32 --duration 5s
//! ```

#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "../tests/support/http.rs"]
mod http;
#[path = "../tests/support/load.rs"]
mod load;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{HealthBackend, Wire};
use clap::Parser;
use haproxy_grpc_agent::App;
use haproxy_grpc_agent::config::{Settings, parse_duration};
use haproxy_grpc_agent::responder::{self, ConstantUp};
use haproxy_grpc_agent::shutdown::Shutdown;
use load::{Phase, run_phase, warm_up};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Distinct targets registered in the agent (spread over backends of 100 services).
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Requests in flight at once (each on its own connection).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Length of each measured phase.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Ceiling/agent phase pairs.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

const SERVICES_PER_BACKEND: usize = 100;

fn main() {
    let args = Args::parse();
    // Log as the daemon does (JSON at info, with connection spans), into a sink: the
    // logging cost on the request path is part of what is measured.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .init();
    // The servers (agent, ceiling, backends) get their own runtime and threads; the load
    // generator gets another, as HAProxy would be another process.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (agent_addr, admin_addr, ceiling_addr, lines, _backends, _shutdown) =
        servers.block_on(start_servers(args.targets));
    let lines = Arc::new(lines);
    client.block_on(warm_up(agent_addr, &lines));
    println!(
        "{} targets registered and up; {} connections in flight; {:?} per phase",
        lines.len(),
        args.concurrency,
        args.duration
    );
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "phase", "req/s", "p50 µs", "p99 µs", "p999 µs", "non-up"
    );
    let mut totals = [Phase::default(), Phase::default(), Phase::default()];
    let mut admin_requests = 0u64;
    let mut admin_time = Duration::ZERO;
    for _ in 0..args.rounds {
        for (index, (name, addr)) in [
            ("ceiling", ceiling_addr),
            ("agent", agent_addr),
            ("agent+adm", agent_addr),
        ]
        .into_iter()
        .enumerate()
        {
            let admin_load =
                (index == 2).then(|| client.spawn(admin_load(admin_addr, args.duration)));
            let mut phase = client.block_on(run_phase(
                addr,
                Arc::clone(&lines),
                args.concurrency,
                args.duration,
            ));
            if let Some(load) = admin_load {
                admin_requests += client.block_on(load).unwrap();
                admin_time += phase.elapsed;
            }
            phase.summary().print(name);
            totals[index].merge(phase);
        }
    }
    let [mut ceiling, mut agent, mut loaded] = totals;
    println!("{:-<58}", "");
    let (c, a, l) = (ceiling.summary(), agent.summary(), loaded.summary());
    c.print("ceiling");
    a.print("agent");
    l.print("agent+adm");
    println!(
        "agent/ceiling: throughput {:.3}x (goal >= 0.90), p99 {:.3}x (goal <= 1.20)",
        a.rate / c.rate,
        a.p99 as f64 / c.p99 as f64
    );
    println!(
        "agent under admin load/agent: throughput {:.3}x, p99 {:.3}x; admin answered {:.0} requests/s (/backends of {} targets and /metrics, alternating)",
        l.rate / a.rate,
        l.p99 as f64 / a.p99 as f64,
        admin_requests as f64 / admin_time.as_secs_f64(),
        lines.len()
    );
}

/// Reads `/backends` and `/metrics` back to back for `duration`; returns how many
/// answers came back.
async fn admin_load(admin: SocketAddr, duration: Duration) -> u64 {
    let end = Instant::now() + duration;
    let mut answered = 0;
    while Instant::now() < end {
        let path = if answered % 2 == 0 {
            "/backends"
        } else {
            "/metrics"
        };
        let response = http::get(admin, path).await;
        assert_eq!(response.status, 200, "{path}");
        answered += 1;
    }
    answered
}

async fn start_servers(
    targets: usize,
) -> (
    SocketAddr,
    SocketAddr,
    SocketAddr,
    Vec<String>,
    Vec<HealthBackend>,
    Shutdown,
) {
    let mut backends = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < targets {
        let backend = HealthBackend::start().await;
        for service in 0..SERVICES_PER_BACKEND.min(targets - lines.len()) {
            let name = format!("bench.Service{service}");
            backend.set(&name, Wire::Serving);
            lines.push(format!(
                "127.0.0.1 {} no-ssl localhost {name}\n",
                backend.port()
            ));
        }
        backends.push(backend);
    }
    let shutdown = Shutdown::new();
    let args = [
        "haproxy-grpc-agent",
        "--server-bind",
        "127.0.0.1",
        "--server-port",
        "0",
        "--max-connections",
        "10000",
        "--metrics-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
    ];
    let settings = Settings::from_args(args).expect("valid settings");
    let responder_config = settings.responder.clone();
    let app = App::bind(settings, shutdown.clone(), prometheus::Registry::new())
        .await
        .expect("agent starts");
    let agent_addr = app.agent_addr();
    let admin_addr = app.admin_addr();
    tokio::spawn(app.run());
    let ceiling = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ceiling_addr = ceiling.local_addr().unwrap();
    tokio::spawn(responder::serve(
        ceiling,
        ConstantUp,
        Arc::new(arc_swap::ArcSwap::from_pointee(responder_config)),
        haproxy_grpc_agent::metrics::Metrics::unregistered().expect("metrics"),
        shutdown.clone(),
    ));
    (
        agent_addr,
        admin_addr,
        ceiling_addr,
        lines,
        backends,
        shutdown,
    )
}
