//! `verdicts pair`: one agent, then two, on one farm (what each costs the backends and
//! its host), then two HAProxy instances, each with its own agent or both with one, and
//! an agent lost and started again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent_process::AgentProcess;
use crate::asker::Asker;
use crate::backend::{HealthBackend, Wire};
use crate::haproxy::{Farm, Haproxy, ServerLine};
use crate::verdicts_outages::silences;
use crate::{farm, free_port, label, load, secs, spawn, stop, until_watched};

/// What the farm and the agents cost over one window.
struct Load {
    watch_streams: usize,
    watch_opens_per_second: f64,
    checks_per_second: f64,
    connections: usize,
    /// Each agent's CPU (percent of one core) and RSS (KiB).
    agents: Vec<(f64, u64)>,
}

async fn measure(farm: &[HealthBackend], agents: &[&AgentProcess], window: Duration) -> Load {
    let checks = || farm.iter().map(HealthBackend::total_checks).sum::<u64>();
    let watches = || farm.iter().map(HealthBackend::watches).sum::<u64>();
    let (checks_before, watches_before) = (checks(), watches());
    let before: Vec<f64> = agents.iter().map(|a| a.stats().cpu_seconds).collect();
    tokio::time::sleep(window).await;
    let seconds = window.as_secs_f64();
    Load {
        watch_streams: farm.iter().map(HealthBackend::open_watches).sum(),
        watch_opens_per_second: (watches() - watches_before) as f64 / seconds,
        checks_per_second: (checks() - checks_before) as f64 / seconds,
        connections: farm.iter().map(HealthBackend::open_connections).sum(),
        agents: agents
            .iter()
            .zip(before)
            .map(|(agent, cpu)| {
                let stats = agent.stats();
                ((stats.cpu_seconds - cpu) * 100.0 / seconds, stats.rss_kib)
            })
            .collect(),
    }
}

/// HAProxy's own TCP check beside the agent's, at the agent-inter.
const PAIR_FARM: Farm = Farm {
    server_words: "check inter 2s",
    agent_inter: "500ms",
    frontend_port: None,
};

/// One agent, then two, on one farm; then two HAProxy instances with their own agents or
/// one shared agent, and that agent killed and restarted.
pub async fn pair(binary: &Path, backends: usize, services: usize, servers: usize) {
    let (farm, lines) = farm::start_farm(backends, services).await;
    let lines = Arc::new(lines);
    let targets = lines.len();
    let max_targets = (targets + 10).to_string();
    let flags = ["--max-targets", max_targets.as_str()];
    let (port1, port2) = (free_port(), free_port());
    println!(
        "pair: {targets} targets ({backends} backends x {services} services), {}; each agent asked for every target every 2s",
        label(binary)
    );
    // Longer than one liveness round with its Check (every third of 10 s), with jitter.
    let window = Duration::from_secs(32);
    let ready = |agent: &AgentProcess| {
        let (addr, admin) = (agent.addr, agent.admin);
        let lines = Arc::clone(&lines);
        async move {
            load::warm_up(addr, &lines).await;
            until_watched(admin, targets, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            Asker::start(addr, &lines, Duration::from_secs(2))
        }
    };
    let mut first = spawn(binary, port1, &flags);
    let asker1 = ready(&first).await;
    let one = measure(&farm, &[&first], window).await;
    let mut second = spawn(binary, port2, &flags);
    let asker2 = ready(&second).await;
    let two = measure(&farm, &[&first, &second], window).await;
    asker1.finish().await;
    asker2.finish().await;
    println!(
        "\n| agents | Watch streams open | Watch opens/s | Checks/s | backend connections | agent CPU (% of a core) | agent RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (count, load) in [(1, &one), (2, &two)] {
        let cpu: Vec<String> = load.agents.iter().map(|a| format!("{:.1}", a.0)).collect();
        let rss: Vec<String> = load
            .agents
            .iter()
            .map(|a| format!("{:.1}", a.1 as f64 / 1024.0))
            .collect();
        println!(
            "| {count} | {} | {:.2} | {:.1} | {} | {} | {} |",
            load.watch_streams,
            load.watch_opens_per_second,
            load.checks_per_second,
            load.connections,
            cpu.join(" + "),
            rss.join(" + ")
        );
    }

    let names: Vec<(String, u16, String)> = (0..servers.min(targets))
        .map(|n| {
            let port = farm[n / services].port();
            (format!("t{n}"), port, lines[n].trim_end().to_string())
        })
        .collect();
    println!(
        "\nHAProxy: two instances of {} servers each, agent-inter 500ms, check inter 2s; the agent SIGKILLed at 0s, t0 NOT_SERVING from 2s to 14s, the agent started again at 10s",
        names.len()
    );
    let stage = Stage {
        binary,
        flags: &flags,
        first_backend: &farm[0],
        servers: &names,
    };
    // Each HAProxy host with its own agent, then both with the first.
    for (scenario, ports) in [
        ("one agent beside each HAProxy", (port1, port2)),
        ("one shared agent", (port1, port1)),
    ] {
        first = outage(&stage, scenario, ports, first, second.admin).await;
    }
    stop(&mut first);
    stop(&mut second);
}

/// What every outage scenario of `pair` shares.
struct Stage<'a> {
    binary: &'a Path,
    flags: &'a [&'a str],
    /// The backend of target t0 (the first), flipped during the outage.
    first_backend: &'a HealthBackend,
    servers: &'a [(String, u16, String)],
}

/// Two HAProxy instances asking the agents on `ports`; the agent on the first port
/// (`agent`) killed, then started again; returns the new one.
async fn outage(
    stage: &Stage<'_>,
    scenario: &str,
    (port1, port2): (u16, u16),
    mut agent: AgentProcess,
    other_admin: SocketAddr,
) -> AgentProcess {
    let Stage {
        binary,
        flags,
        first_backend,
        servers,
    } = *stage;
    let lines: Vec<ServerLine> = servers
        .iter()
        .map(|(name, port, line)| (name.as_str(), *port, line.clone()))
        .collect();
    let names: Vec<String> = servers.iter().map(|(name, _, _)| name.clone()).collect();
    let haproxies = [
        Haproxy::start_farm(port1, &lines, &PAIR_FARM),
        Haproxy::start_farm(port2, &lines, &PAIR_FARM),
    ];
    for haproxy in &haproxies {
        let within = Duration::from_secs(60);
        haproxy
            .until_all(&names, ("UP", "SERVING"), Instant::now(), within)
            .await;
    }
    println!("\n{scenario}: HAProxy 1 asks the agent on port {port1}, HAProxy 2 on port {port2}");
    let killed = Instant::now();
    tokio::task::block_in_place(|| agent.kill());
    let service = farm::service(0);
    let mut flipped = false;
    let mut restarted = None;
    let mut shown_down = [None, None];
    let mut shown_up_again = [None, None];
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut next_print = Duration::ZERO;
    while killed.elapsed() < Duration::from_secs(22) {
        ticks.tick().await;
        let at = killed.elapsed();
        if !flipped && at >= Duration::from_secs(2) {
            first_backend.set(&service, Wire::NotServing);
            flipped = true;
        }
        if restarted.is_none() && at >= Duration::from_secs(10) {
            agent = spawn(binary, port1, flags);
            restarted = Some(killed.elapsed());
        }
        if flipped && at >= Duration::from_secs(14) {
            first_backend.set(&service, Wire::Serving);
        }
        let mut line = format!("  {:>5.1}s", at.as_secs_f64());
        for (n, haproxy) in haproxies.iter().enumerate() {
            let stats = haproxy.servers().await;
            let up = stats
                .values()
                .filter(|s| s.status.starts_with("UP"))
                .count();
            let down = stats
                .values()
                .filter(|s| s.status.starts_with("DOWN"))
                .count();
            let t0 = stats
                .get("t0")
                .map(|s| s.status.clone())
                .unwrap_or_default();
            if flipped && shown_down[n].is_none() && t0.starts_with("DOWN") {
                shown_down[n] = Some(at);
            }
            if shown_down[n].is_some() && shown_up_again[n].is_none() && t0.starts_with("UP") {
                shown_up_again[n] = Some(at);
            }
            let sample = stats
                .get("t1")
                .map(|s| s.last_agt.clone())
                .unwrap_or_default();
            line.push_str(&format!(
                " | HAProxy {}: {up} UP {down} DOWN, t0 {t0}, t1 last_agt {sample:?}",
                n + 1
            ));
        }
        if at >= next_print {
            println!("{line}");
            next_print += Duration::from_secs(1);
        }
    }
    let show = |at: Option<Duration>| at.map_or("never".to_string(), secs);
    for n in 0..2 {
        println!(
            "  HAProxy {}: t0 (NOT_SERVING from 2.00s to 14.00s) DOWN at {}, UP again at {}; agent started again at {}",
            n + 1,
            show(shown_down[n]),
            show(shown_up_again[n]),
            show(restarted)
        );
    }
    for (which, admin) in [
        ("agent 1 (restarted)", agent.admin),
        ("agent 2", other_admin),
    ] {
        println!("  {which} silences: {}", silences(admin).await);
    }
    agent
}
