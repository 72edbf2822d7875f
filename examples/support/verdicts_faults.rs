//! `verdicts flip` and `verdicts faults`: the backend's own NOT_SERVING through the real
//! HAProxy, and the agent's own faults asked one target at a time.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Wire;
use crate::haproxy::{Farm, Haproxy, ServerLine};
use crate::proxy::Proxy;
use crate::{Asked, ask_every, farm, label, load, percentile, ratio, secs, spawn, stop};

/// The HAProxy: its own TCP check every 2 s beside the agent's every 500 ms.
const FLIP_FARM: Farm = Farm {
    server_words: "check inter 2s",
    agent_inter: "500ms",
    frontend_port: None,
};

/// Ten backends x ten services behind HAProxy; per binary and mode: UP with SERVING (and,
/// in watch mode, every target watched), then all NOT_SERVING at once.
pub async fn flip(agents: &[PathBuf], modes: &[String]) {
    let (backends, services) = (10, 10);
    let (farm, lines) = farm::start_farm(backends, services).await;
    let servers: Vec<(String, u16, String)> = lines
        .iter()
        .enumerate()
        .map(|(n, line)| {
            let port = farm[n / services].port();
            (
                format!("b{}s{}", n / services, n % services),
                port,
                line.trim_end().to_string(),
            )
        })
        .collect();
    let server_lines: Vec<ServerLine> = servers
        .iter()
        .map(|(name, port, line)| (name.as_str(), *port, line.clone()))
        .collect();
    let names: Vec<String> = servers.iter().map(|(name, _, _)| name.clone()).collect();
    println!(
        "flip: {} servers ({backends} backends x {services} services), HAProxy agent-inter 500ms, check inter 2s ({})",
        names.len(),
        crate::haproxy::haproxy_binary().version
    );
    let mut rows = Vec::new();
    for binary in agents {
        for mode in modes {
            for backend in &farm {
                for service in 0..services {
                    backend.set(&farm::service(service), Wire::Serving);
                }
            }
            let mut agent = spawn(binary, 0, &["--health-mode", mode]);
            let haproxy = Haproxy::start_farm(agent.addr.port(), &server_lines, &FLIP_FARM);
            let up = ("UP", "SERVING");
            let within = Duration::from_secs(60);
            haproxy.until_all(&names, up, Instant::now(), within).await;
            if mode == "watch" {
                crate::until_watched(agent.admin, names.len(), within).await;
            }
            let flipped = Instant::now();
            for backend in &farm {
                for service in 0..services {
                    backend.set(&farm::service(service), Wire::NotServing);
                }
            }
            let down = ("DOWN", "NOT_SERVING");
            let mut took = haproxy.until_all(&names, down, flipped, within).await;
            took.sort();
            let (p50, p99, max) = (
                percentile(&took, 50),
                percentile(&took, 99),
                took[took.len() - 1],
            );
            println!(
                "{} {mode}: NOT_SERVING to DOWN p50 {} p99 {} max {}",
                label(binary),
                secs(p50),
                secs(p99),
                secs(max)
            );
            rows.push((binary.clone(), mode.clone(), [p50, p99, max]));
            drop(haproxy);
            stop(&mut agent);
        }
    }
    println!("\n| binary | mode | p50 | p99 | max | max vs baseline | goal max <= 0.70s |");
    println!("|---|---|---|---|---|---|---|");
    for (binary, mode, figures) in &rows {
        let baseline = rows
            .iter()
            .find(|(_, m, _)| m == mode)
            .map(|(_, _, f)| f[2])
            .unwrap_or_default();
        println!(
            "| {} | {mode} | {} | {} | {} | {} | {} |",
            label(binary),
            secs(figures[0]),
            secs(figures[1]),
            secs(figures[2]),
            ratio(figures[2].as_secs_f64(), baseline.as_secs_f64()),
            if figures[2] <= Duration::from_millis(700) {
                "met"
            } else {
                "not met"
            }
        );
    }
}

/// Every case for every binary, then one table.
pub async fn faults(agents: &[PathBuf], cases: &[String], stream_for: Duration) {
    let mut rows = Vec::new();
    for case in cases {
        for binary in agents {
            let asked = match case.as_str() {
                "full" => full(binary).await,
                "overload" => overload(binary).await,
                "stream" => stream(binary, stream_for).await,
                "slow" => slow(binary).await,
                other => panic!("unknown case {other}: use full, overload, stream or slow"),
            };
            println!(
                "{case} {}: {} (replies seen: {:?})",
                label(binary),
                asked.tally,
                asked.seen
            );
            rows.push((case.clone(), binary.clone(), asked.tally));
        }
    }
    println!("\n| case | binary | asks | up | down | silent | goal 0 down |");
    println!("|---|---|---|---|---|---|---|");
    for (case, binary, tally) in rows {
        println!(
            "| {case} | {} | {} | {} | {} | {} | {} |",
            label(&binary),
            tally.asks,
            tally.up + tally.held,
            tally.down,
            tally.silent + tally.refused,
            if tally.down == 0 { "met" } else { "not met" }
        );
    }
}

/// `--max-targets 20`, filled; a healthy 21st asked every 20 ms for 2 s.
async fn full(binary: &std::path::Path) -> Asked {
    let (_farm, lines) = farm::start_farm(1, 21).await;
    let mut agent = spawn(binary, 0, &["--max-targets", "20"]);
    load::warm_up(agent.addr, &lines[..20]).await;
    let every = Duration::from_millis(20);
    let asked = ask_every(agent.addr, &lines[20], every, Duration::from_secs(2)).await;
    stop(&mut agent);
    asked
}

/// Poll mode, four probe slots, forty backends that accept TCP (the kernel does, from
/// the listen backlog) and never say a word; a healthy target asked every 250 ms for 20 s.
async fn overload(binary: &std::path::Path) -> Asked {
    let (farm, lines) = farm::start_farm(1, 1).await;
    let flags = [
        "--health-mode",
        "poll",
        "--max-probes-in-flight",
        "4",
        "--check-interval",
        "500ms",
    ];
    let mut agent = spawn(binary, 0, &flags);
    load::warm_up(agent.addr, &lines).await;
    let mute: Vec<std::net::TcpListener> = (0..40)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    for listener in &mute {
        let port = listener.local_addr().unwrap().port();
        let line = format!("127.0.0.1 {port} no-ssl localhost");
        let addr = agent.addr;
        tokio::spawn(async move { crate::asker::ask(addr, &line).await });
    }
    let checks = farm[0].total_checks();
    let every = Duration::from_millis(250);
    let asked = ask_every(agent.addr, &lines[0], every, Duration::from_secs(20)).await;
    println!(
        "  {} Checks reached the healthy backend in 20 s",
        farm[0].total_checks() - checks
    );
    stop(&mut agent);
    asked
}

/// A watched healthy backend behind a proxy that resets every connection every 3 s and
/// holds a new connection's first word 700 ms; asked every 5 ms. `--check-interval
/// 200ms` as in tests/verdicts.rs, so that the old rule's staleness shows within the
/// reconnect.
async fn stream(binary: &std::path::Path, during: Duration) -> Asked {
    let (farm, _) = farm::start_farm(1, 1).await;
    let proxy = Proxy::start(farm[0].port(), Duration::from_millis(700)).await;
    let line = format!(
        "127.0.0.1 {} no-ssl localhost {}",
        proxy.port,
        farm::service(0)
    );
    let mut agent = spawn(binary, 0, &["--check-interval", "200ms"]);
    load::warm_up(agent.addr, std::slice::from_ref(&format!("{line}\n"))).await;
    crate::until_watched(agent.admin, 1, Duration::from_secs(20)).await;
    let started = Instant::now();
    let resetting = async {
        while started.elapsed() + Duration::from_secs(3) < during {
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.reset_all();
        }
    };
    let asking = ask_every(agent.addr, &line, Duration::from_millis(5), during);
    let ((), asked) = tokio::join!(resetting, asking);
    println!(
        "  {} connections through the proxy, {} Watch calls",
        proxy.connections(),
        farm[0].watches()
    );
    stop(&mut agent);
    asked
}

/// A backend whose connections say their first word after 1.2 s, the agent with 2 s
/// timeouts (the miss timeout stays 1 s); five (re)starts, each asked every 500 ms for
/// 4 s from the moment the agent listens, as HAProxy does after a restart.
async fn slow(binary: &std::path::Path) -> Asked {
    let (farm, _) = farm::start_farm(1, 1).await;
    let slow = Proxy::start(farm[0].port(), Duration::from_millis(1200)).await;
    let line = format!(
        "127.0.0.1 {} no-ssl localhost {}",
        slow.port,
        farm::service(0)
    );
    let flags = ["--grpc-connect-timeout", "2s", "--grpc-rpc-timeout", "2s"];
    let mut all = Asked::default();
    for _ in 0..5 {
        let mut agent = spawn(binary, 0, &flags);
        let every = Duration::from_millis(500);
        all.merge(ask_every(agent.addr, &line, every, Duration::from_secs(4)).await);
        stop(&mut agent);
    }
    all
}
