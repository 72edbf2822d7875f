//! Scale benchmark: the real agent binary as a child process, measured from /proc (CPU
//! seconds, RSS, open fds), against a farm of tonic health backends in this process that
//! counts the Check RPCs it receives.
//!
//! Phases: register every target (one request each) and wait for them to be up; an idle
//! window (background probes only): agent CPU per probe, probes per target per
//! interval, poll lag from the agent's own histogram; a loaded window with an HAProxy-like
//! client asking as fast as it can: answers/s, latency, and again probes per target per
//! interval (HAProxy's rate must not change the backends' load).
//!
//! ```text
//! cargo build --release --bin haproxy-grpc-agent --example scale
//! target/release/examples/scale --backends 1000 --services 10 --interval 1s --window 10s
//! ```
//!
//! `--agent` may be given more than once: the windows then run for each binary in turn on
//! the same farm, and the later ones are compared with the first (the baseline).
//!
//! `--orca`: every backend also serves ORCA load reports (cpu 0.5), and each binary runs
//! twice on the same farm, without weights and then with `--orca-weights true`; the
//! difference between the two idle windows is the cost of the weights: agent CPU per
//! report received and RSS per endpoint with a stream open.
//!
//! ```text
//! target/release/examples/scale --orca --backends 1000 --services 1 --interval 10s \
//!     --window 30s --concurrency 0 --agent-flag=--health-mode=watch
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
use std::time::{Duration, Instant};

use agent_process::AgentProcess;
use backend::{HealthBackend, Wire};
use clap::Parser;
use haproxy_grpc_agent::config::parse_duration;

#[derive(Parser)]
struct Args {
    /// Backend ports in the farm.
    #[arg(long, default_value_t = 1000)]
    backends: usize,
    /// Services per backend; targets = backends x services.
    #[arg(long, default_value_t = 1)]
    services: usize,
    /// The agent's --check-interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Length of each measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    window: Duration,
    /// Connections the loaded window keeps in flight (0 skips it).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Ask at this fixed rate (requests/s) in the loaded window instead of as fast as
    /// `--concurrency` allows.
    #[arg(long)]
    rate: Option<u32>,
    /// The agent binary; repeat it to compare binaries on one farm (the first is the
    /// baseline of the ratios).
    #[arg(long, default_value = "target/release/haproxy-grpc-agent")]
    agent: Vec<PathBuf>,
    /// More flags for the agent (repeatable), e.g. --agent-flag=--rise=1.
    #[arg(long = "agent-flag", allow_hyphen_values = true)]
    agent_flags: Vec<String>,
    /// Instead of the windows: ask for every target at once, all unseen (cold start),
    /// with this --max-probes-in-flight.
    #[arg(long)]
    cold: Option<usize>,
    /// Instead of the windows: flip every target to NOT_SERVING and back, each at a
    /// random moment, and time how long the agent takes to answer the new state.
    #[arg(long)]
    detect: bool,
    /// With --detect: the agent's modes to compare, one agent after the other on the same
    /// farm (`poll`, `watch`: the defaults, a backend's own answer at once;
    /// `poll-counted`, `watch-counted`: `--explicit-answers counted`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "poll,watch,watch-counted"
    )]
    modes: Vec<String>,
    /// Serve ORCA load reports from every backend and run each binary without and then
    /// with `--orca-weights true`, comparing the two idle windows.
    #[arg(long)]
    orca: bool,
    /// With --orca: the agent's --orca-report-interval in the run with weights.
    #[arg(long, default_value = "1s")]
    orca_report_interval: String,
}

/// The load report every backend of an `--orca` farm sends.
const FARM_CPU_UTILIZATION: f64 = 0.5;

fn main() {
    let args = Args::parse();
    // The farm and the client need a socket per backend and per connection.
    haproxy_grpc_agent::raise_open_file_limit();
    let targets = args.backends * args.services;
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
    let started = Instant::now();
    let (farm, lines, orca) = if args.orca {
        let (farm, lines, orca) = farm_runtime.block_on(farm::start_orca_farm(
            args.backends,
            args.services,
            FARM_CPU_UTILIZATION,
        ));
        (farm, lines, Some(orca))
    } else {
        let (farm, lines) = farm_runtime.block_on(farm::start_farm(args.backends, args.services));
        (farm, lines, None)
    };
    println!(
        "farm: {} backends x {} services = {targets} targets, up in {:.1}s",
        args.backends,
        args.services,
        started.elapsed().as_secs_f64()
    );
    let lines = Arc::new(lines);
    if args.cold.is_some() || args.detect {
        let binary = args.agent[0].clone();
        let (mut agent, _) = start_measured(&args, &binary, targets, &[], &client, &lines);
        if let Some(bound) = args.cold {
            client.block_on(cold_start(&agent, &farm, &lines, args.services, bound));
            agent.stop();
            return;
        }
        agent.stop();
        detect_modes(&args, targets, &client, farm, &lines);
        return;
    }
    let weights = [
        "--orca-weights",
        "true",
        "--orca-report-interval",
        &args.orca_report_interval,
    ];
    // Each run: a label and the agent flags it adds.
    let runs: Vec<(&str, &[&str])> = if args.orca {
        vec![("without weights", &[]), ("with weights", &weights)]
    } else {
        vec![("", &[])]
    };
    let mut results: Vec<(PathBuf, &str, Windows)> = Vec::new();
    for binary in &args.agent {
        for (label, extra) in &runs {
            let (mut agent, at_start) =
                start_measured(&args, binary, targets, extra, &client, &lines);
            let context = Context {
                targets,
                client: &client,
                farm: &farm,
                orca: orca.as_deref(),
                lines: &lines,
            };
            let measured = windows(&args, &agent, at_start, &context);
            agent.stop();
            results.push((binary.clone(), label, measured));
        }
    }
    compare(&results, args.backends);
}

/// Prints each binary's runs against the first binary's run of the same kind, and with
/// `--orca` each binary's run with weights against its run without.
fn compare(results: &[(PathBuf, &str, Windows)], endpoints: usize) {
    for (binary, label, measured) in results {
        let baseline = results
            .iter()
            .find(|(_, baseline_label, _)| baseline_label == label);
        if let Some((baseline_binary, _, baseline)) = baseline
            && baseline_binary != binary
        {
            println!(
                "{} vs {} {label}: CPU per probe {:.2}x, RSS per target {:.2}x (idle windows)",
                binary.display(),
                baseline_binary.display(),
                measured.cpu_per_probe_us / baseline.cpu_per_probe_us,
                measured.rss_per_target_kib / baseline.rss_per_target_kib
            );
        }
    }
    let runs_of = |binary: &PathBuf, wanted: &str| {
        results
            .iter()
            .find(|(of, label, _)| of == binary && *label == wanted)
            .map(|(_, _, measured)| measured)
    };
    for (binary, label, _) in results
        .iter()
        .filter(|(_, label, _)| *label == "with weights")
    {
        let (Some(without), Some(with)) =
            (runs_of(binary, "without weights"), runs_of(binary, label))
        else {
            continue;
        };
        // Rates, so that windows of slightly different lengths compare.
        let extra_cpu_per_second =
            with.cpu_seconds / with.seconds - without.cpu_seconds / without.seconds;
        let reports_per_second = with.reports as f64 / with.seconds;
        let extra_rss_kib = with.rss_kib as f64 - without.rss_kib as f64;
        println!(
            "{}: ORCA weights cost {:.1} µs of agent CPU per report ({:.3} of {:.3} CPU s/s extra, {:.0} reports/s received); RSS {:+} KiB = {:.2} KiB per endpoint with a stream open ({} of {endpoints} open)",
            binary.display(),
            extra_cpu_per_second * 1e6 / reports_per_second.max(f64::MIN_POSITIVE),
            extra_cpu_per_second,
            with.cpu_seconds / with.seconds,
            reports_per_second,
            extra_rss_kib,
            extra_rss_kib / with.open_streams.max(1) as f64,
            with.open_streams
        );
    }
}

/// What the windows run against.
struct Context<'a> {
    targets: usize,
    client: &'a tokio::runtime::Runtime,
    farm: &'a [HealthBackend],
    orca: Option<&'a farm::OrcaCounts>,
    lines: &'a Arc<Vec<String>>,
}

/// What an idle window measured.
struct Windows {
    cpu_per_probe_us: f64,
    rss_per_target_kib: f64,
    /// The idle window's length, the agent's CPU seconds in it and its RSS at its end.
    seconds: f64,
    cpu_seconds: f64,
    rss_kib: u64,
    /// ORCA load reports the farm sent in the idle window, and streams open at its end.
    reports: u64,
    open_streams: usize,
}

/// Spawns `binary`, times its first answer, prints its footprint at start.
fn start_measured(
    args: &Args,
    binary: &std::path::Path,
    targets: usize,
    extra: &[&str],
    client: &tokio::runtime::Runtime,
    lines: &Arc<Vec<String>>,
) -> (AgentProcess, agent_process::Stats) {
    let spawned = Instant::now();
    let agent = spawn_agent(args, binary, targets, extra);
    let (first, _) = client
        .block_on(load::request(agent.addr, &lines[0]))
        .expect("the agent answers");
    println!(
        "== {} {}: first answer ({}) {:.1} ms after spawning the agent",
        binary.display(),
        extra.join(" "),
        String::from_utf8_lossy(&first).trim_end(),
        spawned.elapsed().as_secs_f64() * 1000.0
    );
    let at_start = agent.stats();
    println!(
        "agent: pid {}, answering on {}, admin on {}; at start RSS {} KiB, {} fds",
        agent.pid(),
        agent.addr,
        agent.admin,
        at_start.rss_kib,
        at_start.fds
    );
    (agent, at_start)
}

/// `--detect`: one agent per mode on the same farm.
// The benchmark's main thread waits out its measured windows; no runtime runs on it.
#[allow(clippy::disallowed_methods)]
fn detect_modes(
    args: &Args,
    targets: usize,
    client: &tokio::runtime::Runtime,
    farm: Vec<HealthBackend>,
    lines: &Arc<Vec<String>>,
) {
    let farm = Arc::new(farm);
    for mode in &args.modes {
        let extra: &[&str] = match mode.as_str() {
            "poll" => &["--health-mode", "poll"],
            "watch" => &["--health-mode", "watch"],
            "poll-counted" => &["--health-mode", "poll", "--explicit-answers", "counted"],
            "watch-counted" => &["--health-mode", "watch", "--explicit-answers", "counted"],
            other => panic!("unknown mode {other}; use poll, watch, poll-counted or watch-counted"),
        };
        let mut agent = spawn_agent_with(args, &args.agent[0], targets, extra);
        client.block_on(load::warm_up(agent.addr, lines));
        std::thread::sleep(args.interval * 2);
        // Idle: what following the targets costs the backends and the agent.
        let window = Duration::from_secs(20);
        let rpcs = || {
            farm.iter()
                .map(|backend| backend.total_checks() + backend.watches())
                .sum::<u64>()
        };
        let (rpcs_before, before) = (rpcs(), agent.stats());
        std::thread::sleep(window);
        let (rpcs_after, after) = (rpcs(), agent.stats());
        let per_minute = 60.0 / window.as_secs_f64();
        println!(
            "{mode}: backend RPCs (Check + Watch) {:.1} per target per minute; agent CPU {:.1} µs per target per second; {} Watch streams open",
            (rpcs_after - rpcs_before) as f64 / targets as f64 * per_minute,
            (after.cpu_seconds - before.cpu_seconds) * 1e6 / targets as f64 / window.as_secs_f64(),
            farm.iter().map(HealthBackend::open_watches).sum::<usize>()
        );
        client.block_on(detection(
            &agent,
            &farm,
            lines,
            args.services,
            args.interval,
            mode,
        ));
        agent.stop();
    }
}

/// Registers every target, then the idle window and (unless `--concurrency 0`) the
/// loaded one.
#[allow(clippy::disallowed_methods)] // the main thread waits out the windows, as above
fn windows(
    args: &Args,
    agent: &AgentProcess,
    at_start: agent_process::Stats,
    context: &Context,
) -> Windows {
    let Context {
        targets,
        client,
        farm,
        orca,
        lines,
    } = *context;
    let registered = Instant::now();
    client.block_on(load::warm_up(agent.addr, lines));
    println!(
        "registered {targets} targets, all up, in {:.1}s",
        registered.elapsed().as_secs_f64()
    );
    // Let the first-probe burst spread out over a couple of intervals.
    std::thread::sleep(args.interval * 2);
    let agent_reports = || client.block_on(metric(agent.admin, "orca_reports_total"));
    let farm_reports = || orca.map_or(0, farm::OrcaCounts::reports);
    let open_streams = || orca.map_or(0, farm::OrcaCounts::open_streams);

    let total_checks = || farm.iter().map(HealthBackend::total_checks).sum::<u64>();
    let expected =
        |window: Duration| targets as f64 * window.as_secs_f64() / args.interval.as_secs_f64();

    // Idle: background probes only.
    let before = agent.stats();
    let lag_before = client.block_on(lag_histogram(agent.admin));
    let checks_before = total_checks();
    let (farm_reports_before, agent_reports_before) = (farm_reports(), agent_reports());
    let window_started = Instant::now();
    std::thread::sleep(args.window);
    let window = window_started.elapsed();
    let checks = total_checks() - checks_before;
    let after = agent.stats();
    let reports = farm_reports() - farm_reports_before;
    let lag_after = client.block_on(lag_histogram(agent.admin));
    let cpu = after.cpu_seconds - before.cpu_seconds;
    let sys = after.sys_seconds - before.sys_seconds;
    println!(
        "idle {:.1}s: {checks} probes, {:.3} per target per interval; agent CPU {:.2}s = {:.1} µs per probe ({:.1} user + {:.1} sys; {:.0}% of one core)",
        window.as_secs_f64(),
        checks as f64 / expected(window),
        cpu,
        cpu * 1e6 / checks.max(1) as f64,
        (cpu - sys) * 1e6 / checks.max(1) as f64,
        sys * 1e6 / checks.max(1) as f64,
        cpu * 100.0 / window.as_secs_f64()
    );
    println!(
        "idle: RSS {} KiB ({:.1} KiB per target above the start), {} fds; poll lag p50 <= {}, p99 <= {}, max bucket {} ({} probes)",
        after.rss_kib,
        (after.rss_kib as f64 - at_start.rss_kib as f64) / targets as f64,
        after.fds,
        lag_before.quantile_bound(&lag_after, 0.50),
        lag_before.quantile_bound(&lag_after, 0.99),
        lag_before.quantile_bound(&lag_after, 1.0),
        lag_after.count - lag_before.count
    );

    if let Some(orca) = orca {
        println!(
            "idle: ORCA: {reports} reports sent by the farm ({:.3} per endpoint per second), {:.0} received by the agent (its orca_reports_total), {} streams open ({} opened since the farm started)",
            reports as f64 / args.backends as f64 / window.as_secs_f64(),
            agent_reports() - agent_reports_before,
            orca.open_streams(),
            orca.streams()
        );
    }
    let measured = Windows {
        cpu_per_probe_us: cpu * 1e6 / checks.max(1) as f64,
        rss_per_target_kib: (after.rss_kib as f64 - at_start.rss_kib as f64) / targets as f64,
        seconds: window.as_secs_f64(),
        cpu_seconds: cpu,
        rss_kib: after.rss_kib,
        reports,
        open_streams: open_streams(),
    };
    if args.concurrency > 0 {
        let before = agent.stats();
        let checks_before = total_checks();
        let mut phase = match args.rate {
            Some(rate) => client.block_on(load::run_rate(
                agent.addr,
                Arc::clone(lines),
                rate,
                args.window,
            )),
            None => client.block_on(load::run_phase(
                agent.addr,
                Arc::clone(lines),
                args.concurrency,
                args.window,
            )),
        };
        let checks = total_checks() - checks_before;
        let after = agent.stats();
        let summary = phase.summary();
        println!(
            "loaded {:.1}s: {:.0} answers/s, p50 {} µs, p99 {} µs, p999 {} µs, {} not up, {} errors",
            phase.elapsed.as_secs_f64(),
            summary.rate,
            summary.p50,
            summary.p99,
            summary.p999,
            summary.not_up,
            summary.errors
        );
        let cpu = after.cpu_seconds - before.cpu_seconds;
        println!(
            "loaded: {checks} probes, {:.3} per target per interval while HAProxy asked {:.0}/s; agent CPU {:.2}s ({:.1} µs per answer+probe); RSS {} KiB, {} fds",
            checks as f64 / expected(phase.elapsed),
            summary.rate,
            cpu,
            cpu * 1e6 / (checks as f64 + summary.rate * phase.elapsed.as_secs_f64()),
            after.rss_kib,
            after.fds
        );
    }
    measured
}

/// Every target asked for at once, none seen before: each request must be answered within
/// the miss timeout, each target probed exactly once, and the probes in flight (sampled
/// from the agent's gauge every millisecond) must stay within the bound.
async fn cold_start(
    agent: &AgentProcess,
    farm: &[HealthBackend],
    lines: &Arc<Vec<String>>,
    services: usize,
    bound: usize,
) {
    let admin = agent.admin;
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            let mut most = 0u64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let text = http::get(admin, "/metrics").await.body;
                let now = text
                    .lines()
                    .find_map(|line| line.strip_prefix("haproxy_grpc_agent_probes_in_flight "))
                    .and_then(|value| value.parse::<f64>().ok())
                    .unwrap_or(0.0) as u64;
                most = most.max(now);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };
    let started = Instant::now();
    let asks: Vec<_> = lines
        .iter()
        .map(|line| {
            let line = line.clone();
            let addr = agent.addr;
            tokio::spawn(async move { load::request(addr, &line).await })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut up = 0;
    let mut failed = 0;
    for ask in asks {
        match ask.await.unwrap() {
            Ok((reply, latency)) => {
                up += usize::from(reply.starts_with(b"up"));
                latencies.push(latency);
            }
            Err(_) => failed += 1,
        }
    }
    let all_answered = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most_in_flight = sampler.await.unwrap();
    latencies.sort();
    let per_target: Vec<u64> = farm
        .iter()
        .flat_map(|backend| (0..services).map(move |s| backend.checks(&farm::service(s))))
        .collect();
    let once = per_target.iter().filter(|&&checks| checks == 1).count();
    println!(
        "cold start: {} requests at once, all answered in {:.0} ms ({} up, {} failed); latency p50 {} ms, max {} ms",
        lines.len(),
        all_answered.as_secs_f64() * 1000.0,
        up,
        failed,
        latencies[latencies.len() / 2].as_millis(),
        latencies.last().unwrap().as_millis()
    );
    println!(
        "cold start: {once} of {} targets probed exactly once (most {}); probes in flight sampled at most {most_in_flight} (bound {bound})",
        per_target.len(),
        per_target.iter().max().unwrap()
    );
}

/// Flips every target down and then up again, each at a random moment within one
/// interval, polling the agent every 20 ms; prints the percentiles of flip-to-answer time.
async fn detection(
    agent: &AgentProcess,
    farm: &Arc<Vec<HealthBackend>>,
    lines: &Arc<Vec<String>>,
    services: usize,
    interval: Duration,
    mode: &str,
) {
    for (status, expect) in [(Wire::NotServing, "down"), (Wire::Serving, "up")] {
        let flips: Vec<_> = (0..lines.len())
            .map(|index| {
                let (farm, lines) = (Arc::clone(farm), Arc::clone(lines));
                let addr = agent.addr;
                tokio::spawn(async move {
                    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
                    let service = farm::service(index % services);
                    farm[index / services].set(&service, status);
                    let flipped = Instant::now();
                    loop {
                        let (reply, _) = load::request(addr, &lines[index]).await.unwrap();
                        if reply.starts_with(expect.as_bytes()) {
                            return flipped.elapsed();
                        }
                        assert!(
                            flipped.elapsed() < Duration::from_secs(120),
                            "never {expect}"
                        );
                        // Fine-grained at first, so fast detection is measured finely;
                        // coarser later, so slow detection does not flood the agent.
                        let pause = if flipped.elapsed() < Duration::from_millis(200) {
                            Duration::from_millis(2)
                        } else {
                            Duration::from_millis(20)
                        };
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for flip in flips {
            latencies.push(flip.await.unwrap());
        }
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "{mode}: detection to {expect}: {} flips, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            latencies.last().unwrap().as_secs_f64() * 1000.0
        );
    }
}

/// Starts the agent binary for this run. The windows and the cold start measure polling
/// (Check RPCs are what the farm counts) unless `--agent-flag=--health-mode=...` says
/// otherwise; `--detect` compares the modes.
fn spawn_agent(
    args: &Args,
    binary: &std::path::Path,
    targets: usize,
    extra: &[&str],
) -> AgentProcess {
    let chosen = args
        .agent_flags
        .iter()
        .any(|flag| flag.starts_with("--health-mode"));
    let mode: &[&str] = if chosen {
        &[]
    } else {
        &["--health-mode", "poll"]
    };
    spawn_agent_with(args, binary, targets, &[mode, extra].concat())
}

/// Starts the agent binary for this run, with `extra` flags.
fn spawn_agent_with(
    args: &Args,
    binary: &std::path::Path,
    targets: usize,
    extra: &[&str],
) -> AgentProcess {
    // A cold start measures first probes only: nothing else may reach the farm.
    let interval = match args.cold {
        Some(_) => "60s".to_string(),
        None => format!("{}ms", args.interval.as_millis()),
    };
    let mut flags: Vec<String> = [
        "--server-bind",
        "127.0.0.1",
        "--server-port",
        "0",
        "--metrics-port",
        "0",
        "--check-interval",
        &interval,
        "--max-targets",
        &(targets + 10).to_string(),
        "--max-connections",
        "10000",
        "--idle-ttl",
        "1h",
        "--log-level",
        "warn",
        "--log-modules",
        "haproxy_grpc_agent=info",
    ]
    .map(String::from)
    .to_vec();
    flags.extend(args.agent_flags.iter().cloned());
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    if let Some(bound) = args.cold {
        flags.extend(["--max-probes-in-flight".to_string(), bound.to_string()]);
    }
    AgentProcess::spawn(binary, &flags)
}

/// The agent's metric `haproxy_grpc_agent_<name>` (one without labels); 0 when absent.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = http::get(admin, "/metrics").await.body;
    let prefix = format!("haproxy_grpc_agent_{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// The agent's `poller_lag_seconds` histogram: cumulative counts per upper bound.
struct Histogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

async fn lag_histogram(admin: SocketAddr) -> Histogram {
    let text = http::get(admin, "/metrics").await.body;
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("haproxy_grpc_agent_poller_lag_seconds_bucket{le=\"")
        {
            let (bound, value) = rest.split_once("\"} ").unwrap();
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap()
            };
            buckets.push((bound, value.parse().unwrap()));
        } else if let Some(value) =
            line.strip_prefix("haproxy_grpc_agent_poller_lag_seconds_count ")
        {
            count = value.parse().unwrap();
        }
    }
    Histogram { buckets, count }
}

impl Histogram {
    /// The smallest bucket bound holding the `q` quantile of what was observed between
    /// `self` and `later`, as text.
    fn quantile_bound(&self, later: &Histogram, q: f64) -> String {
        let total = later.count - self.count;
        if total == 0 {
            return "n/a".into();
        }
        for ((bound, after), (_, before)) in later.buckets.iter().zip(&self.buckets) {
            if (after - before) as f64 >= q * total as f64 {
                return if bound.is_infinite() {
                    "> 2.5s".into()
                } else {
                    format!("{}ms", bound * 1000.0)
                };
            }
        }
        "n/a".into()
    }
}
