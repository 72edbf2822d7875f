//! `verdicts cut`, `verdicts restart` and `verdicts steady`: the agent's network cut at
//! 1,000 targets, a restart at 10,000, and a healthy farm where nothing happens, each
//! asked the way HAProxy asks (every target once per period, spread).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent_process::AgentProcess;
use crate::asker::{Asker, Tally};
use crate::backend::HealthBackend;
use crate::netns::{CUT_FLAGS, IP, Netns};
use crate::{base_flags, farm, free_port, label, load, secs, spawn, stop, until_watched};

/// Backends' addresses on the test's side of the namespace's link.
const CUT_ADDRESSES: u8 = 10;

/// The agent inside a namespace, its backends on ten addresses outside, asked every
/// 500 ms; every address cut for `cut_for`, then healed.
pub async fn cut(agents: &[PathBuf], backends: usize, services: usize, cut_for: Duration) {
    let netns = tokio::task::block_in_place(Netns::new);
    let addresses: Vec<IpAddr> = (0..CUT_ADDRESSES).map(|n| netns.v4(10 + n)).collect();
    for address in &addresses {
        netns.add_outside(*address);
    }
    let (_farm, lines) = farm::start_farm_on(&addresses, backends, services).await;
    let lines = Arc::new(lines);
    let targets = lines.len();
    println!(
        "cut: {targets} targets ({backends} backends x {services} services on {} addresses), agent in namespace {}, asked every 500ms; flags {}",
        addresses.len(),
        netns.name,
        CUT_FLAGS.join(" ")
    );
    let max_targets = (targets + 10).to_string();
    let mut rows = Vec::new();
    for binary in agents {
        let mut words: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            netns.name.clone(),
            label(binary),
        ];
        words.extend(base_flags(&netns.inside_v4().to_string(), 0));
        words.extend(CUT_FLAGS.iter().map(|flag| flag.to_string()));
        words.extend(["--max-targets".to_string(), max_targets.clone()]);
        let mut agent = tokio::task::block_in_place(|| AgentProcess::spawn(Path::new(IP), &words));
        load::warm_up(agent.addr, &lines).await;
        until_watched(agent.admin, targets, Duration::from_secs(60)).await;
        let asker = Asker::start(agent.addr, &lines, Duration::from_millis(500));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cut = Instant::now();
        tokio::task::block_in_place(|| addresses.iter().for_each(|a| netns.cut(*a)));
        tokio::time::sleep(cut_for).await;
        let healed = Instant::now();
        tokio::task::block_in_place(|| addresses.iter().for_each(|a| netns.heal(*a)));
        tokio::time::sleep(Duration::from_secs(20)).await;
        let ended = Instant::now();
        let answers = asker.finish().await;
        let during = answers.tally(cut, healed);
        let after = answers.tally(healed, ended);
        let live = answers.all_live_after(healed);
        println!("{}:", label(binary));
        println!("  before the cut  {}", answers.tally(answers.started, cut));
        println!("  during the cut  {during}");
        println!("  after the heal  {after}");
        println!("  down replies by reason: {:?}", answers.down_reasons);
        println!(
            "  every target answering a live up after the heal: {}",
            live.map_or("not within 20s".to_string(), secs)
        );
        rows.push((binary.clone(), during, after, live));
        stop(&mut agent);
    }
    println!(
        "\n| binary | asks during the cut | down (goal 0) | held (up #panic) | live up | silent | down after the heal | all live after the heal |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (binary, during, after, live) in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            label(&binary),
            during.asks,
            during.down,
            during.held,
            during.up,
            during.silent,
            after.down,
            live.map_or("> 20s".to_string(), secs)
        );
    }
}

/// A healthy farm, nothing happening, asked as HAProxy asks: anything but a live `up`
/// is the agent's doing.
pub async fn steady(
    agents: &[PathBuf],
    (backends, services): (usize, usize),
    every: Duration,
    during: Duration,
    agent_flags: &[String],
) {
    let (_farm, lines) = farm::start_farm(backends, services).await;
    let lines = Arc::new(lines);
    let targets = lines.len();
    let max_targets = (targets + 10).to_string();
    println!(
        "steady: {targets} targets, asked every {every:?} for {during:?}; agent flags {}",
        agent_flags.join(" ")
    );
    for binary in agents {
        let mut flags = vec!["--max-targets", &max_targets];
        flags.extend(agent_flags.iter().map(String::as_str));
        let mut agent = spawn(binary, 0, &flags);
        let started = Instant::now();
        load::warm_up(agent.addr, &lines).await;
        until_watched(agent.admin, targets, Duration::from_secs(60)).await;
        println!(
            "{}: all up and watched {} after the start",
            label(binary),
            secs(started.elapsed())
        );
        let asker = Asker::start(agent.addr, &lines, every);
        tokio::time::sleep(during).await;
        let answers = asker.finish().await;
        let stretch = Duration::from_secs(1);
        let mut from = answers.started;
        while from < answers.started + during {
            let tally = answers.tally(from, from + stretch);
            if tally.up != tally.asks {
                let offset = from - answers.started;
                println!("  {:>3}s..+1s {tally}", offset.as_secs());
            }
            from += stretch;
        }
        println!("  all: {}", answers.tally(answers.started, Instant::now()));
        println!("  silences: {}", silences(agent.admin).await);
        stop(&mut agent);
    }
}

/// Check and Watch calls the farm received so far.
fn farm_rpcs(farm: &[HealthBackend]) -> u64 {
    farm.iter()
        .map(|backend| backend.total_checks() + backend.watches())
        .sum()
}

/// 10,000 targets asked every 2 s; SIGTERM and a new agent on the same port.
pub async fn restart(agents: &[PathBuf], backends: usize, services: usize) {
    let (farm, lines) = farm::start_farm(backends, services).await;
    let lines = Arc::new(lines);
    let targets = lines.len();
    let port = free_port();
    let max_targets = (targets + 10).to_string();
    let flags = ["--max-targets", &max_targets, "--idle-ttl", "1h"];
    println!(
        "restart: {targets} targets ({backends} backends x {services} services), asked every 2s, agent on port {port}"
    );
    let mut rows = Vec::new();
    for binary in agents {
        let mut agent = spawn(binary, port, &flags);
        let warming = Instant::now();
        load::warm_up(agent.addr, &lines).await;
        let watched_in = until_watched(agent.admin, targets, Duration::from_secs(120)).await;
        println!(
            "{}: {targets} up in {}, all watched {} later",
            label(binary),
            secs(warming.elapsed() - watched_in),
            secs(watched_in)
        );
        let asker = Asker::start(agent.addr, &lines, Duration::from_secs(2));
        let before = farm_rpcs(&farm);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let steady = (farm_rpcs(&farm) - before) as f64 / 6.0;
        let restarted = Instant::now();
        stop(&mut agent);
        let stopped_in = restarted.elapsed();
        let mut agent = spawn(binary, port, &flags);
        let listening_in = restarted.elapsed();
        let mut per_second = Vec::new();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        let mut last = farm_rpcs(&farm);
        for _ in 0..20 {
            ticks.tick().await;
            let now = farm_rpcs(&farm);
            per_second.push(now - last);
            last = now;
        }
        let answers = asker.finish().await;
        let first = answers.tally(restarted, restarted + Duration::from_secs(10));
        let live = answers.all_live_after(restarted);
        println!(
            "  SIGTERM to exit {}, to the new agent listening {}",
            secs(stopped_in),
            secs(listening_in)
        );
        println!("  first 10s after SIGTERM: {first}");
        println!("  down replies by reason: {:?}", answers.down_reasons);
        println!(
            "  every target answering a live up: {} after SIGTERM (asks 2s apart)",
            live.map_or("not within 20s".to_string(), secs)
        );
        println!(
            "  backends' probe rate (Checks + Watch opens per second): steady {steady:.0}; after the restart, second by second: {per_second:?}"
        );
        rows.push((binary.clone(), first, live, per_second));
        stop(&mut agent);
    }
    println!(
        "\n| binary | asks in 10s | refused | silent | down | up | all live | peak probes/s | probes in the first 10s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (binary, first, live, per_second) in rows {
        let Tally {
            asks,
            up,
            held,
            down,
            silent,
            refused,
            ..
        } = first;
        println!(
            "| {} | {asks} | {refused} | {silent} | {down} | {} | {} | {} | {} |",
            label(&binary),
            up + held,
            live.map_or("> 20s".to_string(), secs),
            per_second.iter().max().unwrap_or(&0),
            per_second.iter().take(10).sum::<u64>()
        );
    }
}

/// The agent's `agent_faults_total` counts (the silences it chose), from /metrics.
pub async fn silences(admin: SocketAddr) -> String {
    let text = crate::http::get(admin, "/metrics").await.body;
    let counts: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("agent_faults_total{"))
        .map(|line| line.trim_start_matches("haproxy_grpc_agent_agent_faults_total"))
        .collect();
    if counts.is_empty() {
        "none".to_string()
    } else {
        counts.join(", ")
    }
}
