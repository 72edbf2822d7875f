//! Floods, faults and a soak against the real agent binary, with figures: what the
//! hardening issue asks to be shown under load rather than in a unit test.
//!
//! ```text
//! cargo build --release --bin haproxy-grpc-agent --example robustness
//! target/release/examples/robustness idle      # 10,000 idle connections while HAProxy asks
//! target/release/examples/robustness flood     # connections far beyond --max-connections
//! target/release/examples/robustness restart   # SIGKILL under load, restart, cold start
//! target/release/examples/robustness soak --duration 10m   # flapping backends, steady load
//! ```

#[path = "support/agent_process.rs"]
mod agent_process;
#[path = "../tests/support/backend.rs"]
mod backend;
#[path = "support/farm.rs"]
mod farm;
#[path = "../tests/support/http.rs"]
mod http;
#[path = "../tests/support/load.rs"]
mod load;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_process::AgentProcess;
use backend::{HealthBackend, Wire};
use clap::{Parser, Subcommand};
use haproxy_grpc_agent::config::parse_duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    run: Run,
    /// Backends in the farm, one target each.
    #[arg(long, default_value_t = 1000, global = true)]
    targets: usize,
    /// Requests per second HAProxy-like clients make while the run goes on.
    #[arg(long, default_value_t = 1000, global = true)]
    rate: u32,
    /// The agent binary.
    #[arg(
        long,
        default_value = "target/release/haproxy-grpc-agent",
        global = true
    )]
    agent: PathBuf,
}

#[derive(Subcommand)]
enum Run {
    /// Idle connections held open while the clients ask at `--rate`.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        read_deadline: Duration,
        /// Open, hold and let close this many times (memory must not grow round on round).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
    /// Connection attempts far beyond `--max-connections`, held open.
    Flood {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 2000)]
        max_connections: usize,
    },
    /// SIGKILL the agent while clients ask, start it again on the same port.
    Restart,
    /// Steady asking while backends flap, for `--duration`: RSS, fds and replies.
    Soak {
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
    },
}

fn main() {
    let args = Args::parse();
    haproxy_grpc_agent::raise_open_file_limit();
    let farm_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (farm, lines) = farm_runtime.block_on(farm::start_farm(args.targets, 1));
    let lines = Arc::new(lines);
    println!("farm: {} backends, one target each", args.targets);
    match args.run {
        Run::Idle {
            connections,
            read_deadline,
            rounds,
        } => client.block_on(idle(
            &args.agent,
            &lines,
            args.rate,
            connections,
            read_deadline,
            rounds,
        )),
        Run::Flood {
            connections,
            max_connections,
        } => client.block_on(flood(&args.agent, &lines, connections, max_connections)),
        Run::Restart => client.block_on(restart(&args.agent, &farm, &lines, args.rate)),
        Run::Soak { duration } => {
            let farm = Arc::new(farm);
            client.block_on(soak(&args.agent, farm, &lines, args.rate, duration))
        }
    }
}

fn flags(extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--server-bind",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--idle-ttl",
        "1h",
        "--log-level",
        "warn",
        "--log-modules",
        "haproxy_grpc_agent=info",
    ]
    .map(String::from)
    .to_vec();
    if !extra.contains(&"--server-port") {
        flags.extend(["--server-port".to_string(), "0".to_string()]);
    }
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    flags
}

/// One sample of `name` from the agent's /metrics.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = http::get(admin, "/metrics").await.body;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Opens `count` connections that never send a byte, 256 at a time.
async fn open_idle(addr: SocketAddr, count: usize) -> Vec<(TcpStream, Instant)> {
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let batch = (count - held.len()).min(256);
        let opened: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(async move {
                    let stream = TcpStream::connect(addr).await?;
                    Ok::<_, std::io::Error>((stream, Instant::now()))
                })
            })
            .collect();
        for open in opened {
            if let Ok(opened) = open.await.unwrap() {
                held.push(opened);
            }
        }
    }
    held
}

/// Waits (up to `within`) for each connection to be closed by the agent; the time from
/// its opening to its close, or `None` if it stayed open.
async fn close_times(held: Vec<(TcpStream, Instant)>, within: Duration) -> Vec<Option<Duration>> {
    let waits: Vec<_> = held
        .into_iter()
        .map(|(mut stream, opened)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                match tokio::time::timeout(within, stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Some(opened.elapsed()),
                    // A reply (none is expected from a silent client) or still open.
                    _ => None,
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(waits.len());
    for wait in waits {
        times.push(wait.await.unwrap());
    }
    times
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn idle(
    binary: &std::path::Path,
    lines: &Arc<Vec<String>>,
    rate: u32,
    connections: usize,
    read_deadline: Duration,
    rounds: usize,
) {
    let deadline = format!("{}ms", read_deadline.as_millis());
    let limit = (connections + 2000).to_string();
    let mut agent = AgentProcess::spawn(
        binary,
        &flags(&["--max-connections", &limit, "--read-deadline", &deadline]),
    );
    load::warm_up(agent.addr, lines).await;
    let before = agent.stats();
    let window = Duration::from_secs(5);
    let mut baseline = load::run_rate(agent.addr, Arc::clone(lines), rate, window).await;
    let baseline = baseline.summary();
    println!(
        "baseline: {rate}/s for {window:?}: p50 {} µs, p99 {} µs, p999 {} µs, {} not up, {} errors; agent {} fds, RSS {} KiB",
        baseline.p50,
        baseline.p99,
        baseline.p999,
        baseline.not_up,
        baseline.errors,
        before.fds,
        before.rss_kib
    );
    for round in 1..=rounds {
        let opening = Instant::now();
        let held = open_idle(agent.addr, connections).await;
        let opened_in = opening.elapsed();
        let mut loaded = load::run_rate(agent.addr, Arc::clone(lines), rate, window).await;
        let loaded = loaded.summary();
        let during = agent.stats();
        let active = metric(agent.admin, "haproxy_grpc_agent_haproxy_connections_active").await;
        println!(
            "round {round}: {} idle connections opened in {:.1}s and held; asking {rate}/s meanwhile: p50 {} µs, p99 {} µs (goal < 10 ms), p999 {} µs, {} not up, {} errors",
            held.len(),
            opened_in.as_secs_f64(),
            loaded.p50,
            loaded.p99,
            loaded.p999,
            loaded.not_up,
            loaded.errors
        );
        println!(
            "round {round}: agent meanwhile {} fds, RSS {} KiB, haproxy_connections_active {active}",
            during.fds, during.rss_kib
        );
        let mut closes: Vec<Duration> = close_times(held, read_deadline + Duration::from_secs(10))
            .await
            .into_iter()
            .flatten()
            .collect();
        closes.sort();
        let after = agent.stats();
        println!(
            "round {round}: idle connections closed by the agent: {} of {connections}, {:.2}s to {:.2}s after opening (read deadline {:?}); then {} fds (before {}), RSS {} KiB (before {})",
            closes.len(),
            closes.first().map_or(0.0, Duration::as_secs_f64),
            closes.last().map_or(0.0, Duration::as_secs_f64),
            read_deadline,
            after.fds,
            before.fds,
            after.rss_kib,
            before.rss_kib
        );
    }
    agent.stop();
}

async fn flood(
    binary: &std::path::Path,
    lines: &Arc<Vec<String>>,
    connections: usize,
    max_connections: usize,
) {
    let limit = max_connections.to_string();
    let mut agent = AgentProcess::spawn(
        binary,
        &flags(&["--max-connections", &limit, "--read-deadline", "30s"]),
    );
    load::warm_up(agent.addr, lines).await;
    let before = agent.stats();
    // Sample the agent's fds all through the flood.
    let sampling = Arc::new(AtomicBool::new(true));
    let most_fds = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, most_fds) = (Arc::clone(&sampling), Arc::clone(&most_fds));
        let pid = agent.pid();
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|dir| dir.count())
                    .unwrap_or(0) as u64;
                most_fds.fetch_max(fds, Ordering::Relaxed);
                // The sampler's own thread, not a runtime worker.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    // Each connection watched from its connect: closed by the agent (and how soon), or
    // still open after a second (held: it counts against the bound).
    let permits = Arc::new(tokio::sync::Semaphore::new(512));
    let attempts: Vec<_> = (0..connections)
        .map(|_| {
            let (permits, addr) = (Arc::clone(&permits), agent.addr);
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.unwrap();
                let mut stream = TcpStream::connect(addr).await.ok()?;
                let connected = Instant::now();
                let mut buf = [0u8; 16];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Some((Some(connected.elapsed()), None)),
                    _ => Some((None, Some(stream))),
                }
            })
        })
        .collect();
    let mut quick = Vec::new();
    let mut held = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Some((Some(closed_after), _)) => quick.push(closed_after),
            Some((None, Some(stream))) => held.push(stream),
            _ => {}
        }
    }
    let flooded_in = started.elapsed();
    // While the bound is full: a request is closed at once rather than left waiting.
    let refused_at = Instant::now();
    let refused = load::request(agent.addr, &lines[0]).await;
    let refused_in = refused_at.elapsed();
    quick.sort();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let refused_total = metric(
        agent.admin,
        "haproxy_grpc_agent_haproxy_connections_refused_total{reason=\"limit\"}",
    )
    .await;
    println!(
        "flood: {connections} connections in {:.1}s against --max-connections {max_connections}; {} held open by the agent",
        flooded_in.as_secs_f64(),
        held.len()
    );
    println!(
        "closed at once by the agent: {} (refused counter {refused_total}); connect to close p50 {} µs, p99 {} µs, max {} µs",
        quick.len(),
        percentile(&quick, 0.5).as_micros(),
        percentile(&quick, 0.99).as_micros(),
        quick.last().map_or(0, |d| d.as_micros())
    );
    drop(held);
    println!(
        "agent fds: {} before, at most {} during the flood (bound {max_connections} + backends + own)",
        before.fds,
        most_fds.load(Ordering::Relaxed)
    );
    println!(
        "a request while the bound was full: {:?} in {} ms",
        refused.map(|(reply, _)| String::from_utf8_lossy(&reply).trim_end().to_string()),
        refused_in.as_millis()
    );
    // The held ones are closed now: accept goes on as before.
    let after_at = Instant::now();
    let answer = loop {
        let (reply, latency) = load::request(agent.addr, &lines[0]).await.unwrap();
        if !reply.is_empty() {
            break (reply, latency);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "after the flood: {:?} in {} µs, {} ms after the flood connections closed",
        String::from_utf8_lossy(&answer.0).trim_end(),
        answer.1.as_micros(),
        after_at.elapsed().as_millis()
    );
    let mut phase =
        load::run_rate(agent.addr, Arc::clone(lines), 1000, Duration::from_secs(3)).await;
    let summary = phase.summary();
    println!(
        "then 1000/s for 3s: p99 {} µs, {} not up, {} errors; agent {} fds",
        summary.p99,
        summary.not_up,
        summary.errors,
        agent.stats().fds
    );
    agent.stop();
}

async fn restart(
    binary: &std::path::Path,
    farm: &[HealthBackend],
    lines: &Arc<Vec<String>>,
    rate: u32,
) {
    // A long interval: after the restart, every probe a target gets is its cold-start one.
    let common = ["--check-interval", "60s", "--max-probes-in-flight", "64"];
    let mut agent = AgentProcess::spawn(binary, &flags(&common));
    let port = agent.addr.port().to_string();
    load::warm_up(agent.addr, lines).await;
    let addr = agent.addr;
    // Clients keep asking through the crash and the restart.
    let asking = tokio::spawn(load::run_rate(
        addr,
        Arc::clone(lines),
        rate,
        Duration::from_secs(8),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A probe is a Check or a Watch (the agent watches by default).
    let probes = |backend: &HealthBackend| backend.checks(&farm::service(0)) + backend.watches();
    let checks_before: Vec<u64> = farm.iter().map(probes).collect();
    let killed = Instant::now();
    agent.kill();
    let mut with_port = common.to_vec();
    with_port.extend(["--server-port", &port]);
    let restarted = AgentProcess::spawn(binary, &flags(&with_port));
    let listening = killed.elapsed();
    // The first answer after the restart (a cold-start miss).
    let first = load::request(restarted.addr, &lines[0]).await;
    println!(
        "SIGKILL under {rate}/s; the new agent listened on the same port {} ms after the kill; first answer {:?} {} ms after the kill",
        listening.as_millis(),
        first
            .as_ref()
            .map(|(reply, _)| String::from_utf8_lossy(reply).trim_end().to_string()),
        killed.elapsed().as_millis()
    );
    // Every target asked at once, as HAProxy's checks arrive after a restart.
    let started = Instant::now();
    let asks: Vec<_> = lines
        .iter()
        .map(|line| {
            let line = line.clone();
            tokio::spawn(async move { load::request(addr, &line).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut up, mut other) = (0, Vec::new());
    for ask in asks {
        match ask.await.unwrap() {
            Ok((reply, latency)) => {
                latencies.push(latency);
                if reply.starts_with(b"up") {
                    up += 1;
                } else {
                    other.push(String::from_utf8_lossy(&reply).trim_end().to_string());
                }
            }
            Err(error) => other.push(error.to_string()),
        }
    }
    let all_answered = started.elapsed();
    latencies.sort();
    let mut during = asking.await.unwrap();
    let during = during.summary();
    let once = farm
        .iter()
        .zip(&checks_before)
        .filter(|(backend, before)| probes(backend) == *before + 1)
        .count();
    println!(
        "cold start after the restart: {} targets asked at once, {up} up in {:.0} ms (p50 {} ms, max {} ms; miss timeout 2000 ms), {} other: {:?}",
        lines.len(),
        all_answered.as_secs_f64() * 1000.0,
        percentile(&latencies, 0.5).as_millis(),
        latencies.last().map_or(0, |d| d.as_millis()),
        other.len(),
        other.iter().take(3).collect::<Vec<_>>()
    );
    println!(
        "probes (Check or Watch) per target since the kill: exactly one for {once} of {} targets",
        farm.len()
    );
    println!(
        "the steady clients across kill and restart: about {} answered, {} connection errors (agent down), {} not up",
        (during.rate * 8.0) as u64,
        during.errors,
        during.not_up
    );
    let mut restarted = restarted;
    restarted.stop();
}

/// Reply kinds in the soak.
#[derive(Default)]
struct Tally {
    up: AtomicU64,
    /// Down because of a flap: NOT_SERVING, or on the way back up.
    flapped: AtomicU64,
    other: AtomicU64,
    io_errors: AtomicU64,
}

async fn soak(
    binary: &std::path::Path,
    farm: Arc<Vec<HealthBackend>>,
    lines: &Arc<Vec<String>>,
    rate: u32,
    duration: Duration,
) {
    let mut agent = AgentProcess::spawn(binary, &flags(&["--check-interval", "1s"]));
    load::warm_up(agent.addr, lines).await;
    let start = agent.stats();
    println!(
        "soak for {duration:?}: {} targets, asking {rate}/s, one backend flipped to NOT_SERVING for 3 s every 200 ms; agent at start RSS {} KiB, {} fds",
        lines.len(),
        start.rss_kib,
        start.fds
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (farm, stop) = (Arc::clone(&farm), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let index = fastrand::usize(..farm.len());
                farm[index].set(&farm::service(0), Wire::NotServing);
                let farm = Arc::clone(&farm);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    farm[index].set(&farm::service(0), Wire::Serving);
                });
                flips += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            flips
        })
    };
    let tally = Arc::new(Tally::default());
    let other_samples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let asker = {
        let (lines, stop, tally, samples) = (
            Arc::clone(lines),
            Arc::clone(&stop),
            Arc::clone(&tally),
            Arc::clone(&other_samples),
        );
        let addr = agent.addr;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                next = (next + 7919) % lines.len();
                let line = lines[next].clone();
                let (tally, samples) = (Arc::clone(&tally), Arc::clone(&samples));
                tokio::spawn(async move {
                    match load::request(addr, &line).await {
                        Ok((reply, _)) => {
                            let text = String::from_utf8_lossy(&reply);
                            if text.starts_with("up") {
                                tally.up.fetch_add(1, Ordering::Relaxed);
                            } else if text.contains("NOT_SERVING") || text.contains(" to up)") {
                                tally.flapped.fetch_add(1, Ordering::Relaxed);
                            } else {
                                tally.other.fetch_add(1, Ordering::Relaxed);
                                let mut samples = samples.lock().unwrap();
                                if samples.len() < 5 {
                                    samples.push(text.trim_end().to_string());
                                }
                            }
                        }
                        Err(_) => {
                            tally.io_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    };
    let began = Instant::now();
    let report_every = Duration::from_secs(60).min(duration);
    while began.elapsed() < duration {
        tokio::time::sleep(report_every.min(duration.saturating_sub(began.elapsed()))).await;
        let now = agent.stats();
        println!(
            "  {:>4.0}s: RSS {} KiB, {} fds; replies: {} up, {} down by a flap, {} other, {} connection errors",
            began.elapsed().as_secs_f64(),
            now.rss_kib,
            now.fds,
            tally.up.load(Ordering::Relaxed),
            tally.flapped.load(Ordering::Relaxed),
            tally.other.load(Ordering::Relaxed),
            tally.io_errors.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flapper.await.unwrap();
    asker.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = agent.stats();
    println!(
        "soak done: {flips} flips; RSS {} -> {} KiB, fds {} -> {}; {} up, {} down by a flap, {} other replies {:?}, {} connection errors",
        start.rss_kib,
        end.rss_kib,
        start.fds,
        end.fds,
        tally.up.load(Ordering::Relaxed),
        tally.flapped.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
        other_samples.lock().unwrap(),
        tally.io_errors.load(Ordering::Relaxed)
    );
    agent.stop();
}
