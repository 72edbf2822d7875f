//! When the agent's own network breaks, every backend looks dead at once; the agent then
//! holds their last verdicts (a panic) instead of emptying the farm. Tested with the agent
//! in a network namespace of the test's making, its ten backends on the far side of the
//! namespace's link, and the real HAProxy asking it; the cut drops every packet the agent
//! sends to the backends (no RST, no ICMP), as a dead link does, while HAProxy still
//! reaches the agent. A backend's own word is never held: a farm saying NOT_SERVING reads
//! down.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::daemon::Daemon;
use support::haproxy::{Farm, Haproxy, RemoteServer};
use support::http::{self, EventStream};
use support::netns::{CUT_FLAGS, Netns};
use support::*;
use tokio::time::Instant;

/// `CUT_FLAGS`' check interval.
const INTERVAL: Duration = Duration::from_secs(1);
const WITHIN: Duration = Duration::from_secs(30);

const FARM: Farm = Farm {
    server_words: "check inter 2s",
    agent_inter: "500ms",
    frontend_port: None,
};

/// Ten backends, each on its own address on the test's side of the namespace's link, and
/// the agent inside the namespace.
struct CutFarm {
    netns: Netns,
    addresses: Vec<IpAddr>,
    backends: Vec<HealthBackend>,
    lines: Vec<String>,
    agent: Daemon,
    admin: SocketAddr,
}

impl CutFarm {
    async fn start() -> CutFarm {
        let netns = Netns::new();
        let mut addresses = Vec::new();
        let mut backends = Vec::new();
        let mut lines = Vec::new();
        for n in 0..10 {
            let address = netns.v4(10 + n);
            netns.add_outside(address);
            let backend = HealthBackend::start_on(SocketAddr::new(address, 0), None).await;
            lines.push(format!("{address} {} no-ssl api.test", backend.port()));
            addresses.push(address);
            backends.push(backend);
        }
        let mut agent = Daemon::start_in(&netns, CUT_FLAGS);
        let admin = agent.admin_addr();
        CutFarm {
            netns,
            addresses,
            backends,
            lines,
            agent,
            admin,
        }
    }

    fn haproxy(&self) -> (Haproxy, Vec<String>) {
        let names: Vec<String> = (0..self.lines.len()).map(|n| format!("s{n}")).collect();
        let servers: Vec<RemoteServer> = names
            .iter()
            .enumerate()
            .map(|(n, name)| {
                let address = SocketAddr::new(self.addresses[n], self.backends[n].port());
                (name.as_str(), address, self.lines[n].clone())
            })
            .collect();
        (
            Haproxy::start_remote(self.agent.addr(), &servers, &FARM),
            names,
        )
    }

    /// Every target's reply now.
    async fn replies(&self) -> Vec<String> {
        let mut replies = Vec::new();
        for line in &self.lines {
            replies.push(ask(self.agent.addr(), line).await.trim_end().to_string());
        }
        replies
    }

    async fn metric(&self, name: &str) -> u64 {
        let text = http::get(self.admin, "/metrics").await.body;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
    }
}

/// The case: the agent's link to all ten backends cut. No target reads down, and
/// HAProxy shows none DOWN; the panic shows in `/backends`, the metrics and `/events`;
/// once the link is back, live verdicts return within an interval or so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_of_the_agents_own_network_holds_every_verdict_until_it_heals() {
    let farm = CutFarm::start().await;
    for line in &farm.lines {
        reply_becomes(farm.agent.addr(), line, "up #SERVING", WITHIN).await;
    }
    let (haproxy, names) = farm.haproxy();
    haproxy
        .until_all(&names, ("UP", "SERVING"), Instant::now(), WITHIN)
        .await;
    let mut events = EventStream::open(farm.admin).await;

    let cut = Instant::now();
    for address in &farm.addresses {
        farm.netns.cut(*address);
    }
    let mut replies_seen = 0;
    let mut held_seen = 0;
    // Long enough for every connection to be found dead and every target to count its
    // fall three times over.
    while cut.elapsed() < Duration::from_secs(15) {
        for reply in farm.replies().await {
            assert!(
                reply.starts_with("up"),
                "{:?} after the cut: {reply:?}",
                cut.elapsed()
            );
            replies_seen += 1;
            held_seen += usize::from(reply.contains("#panic: "));
        }
        for (name, stat) in haproxy.servers().await {
            assert!(
                stat.status.starts_with("UP"),
                "{:?} after the cut, HAProxy shows {name} {stat:?}",
                cut.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("during the cut: {replies_seen} replies, all up, {held_seen} of them held");
    let flips: Vec<String> = farm
        .agent
        .log()
        .into_iter()
        .filter(|line| {
            line.contains("\"backend state changed\"") && line.contains("\"to\":\"down\"")
        })
        .collect();
    assert!(flips.is_empty(), "held targets flipped: {flips:?}");
    assert!(held_seen > 0, "the panic never held a verdict");
    for line in &farm.lines {
        let view = http::get(farm.admin, "/backends").await.json();
        let shown = view
            .as_array()
            .and_then(|all| all.iter().find(|backend| backend["line"] == line.as_str()))
            .cloned()
            .unwrap_or_default();
        assert!(shown["panic"].is_string(), "/backends: {shown}");
    }
    assert!(farm.metric("haproxy_grpc_agent_panics_active").await >= 1);
    assert!(farm.metric("haproxy_grpc_agent_panic_replies_total").await > 0);
    let started = loop {
        let event = events.next(WITHIN).await;
        if event.event == "panic" {
            break event;
        }
    };
    assert!(
        started.data.contains("\"state\":\"started\""),
        "{started:?}"
    );

    let healed = Instant::now();
    for address in &farm.addresses {
        farm.netns.heal(*address);
    }
    let mut live = vec![None; farm.lines.len()];
    while live.iter().any(Option::is_none) {
        assert!(
            healed.elapsed() < WITHIN,
            "no live verdicts: {:?}",
            farm.replies().await
        );
        for (n, reply) in farm.replies().await.iter().enumerate() {
            assert!(reply.starts_with("up"), "after the heal: {reply:?}");
            if live[n].is_none() && reply.starts_with("up #SERVING") {
                live[n] = Some(healed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slowest = live.iter().flatten().max().copied().unwrap_or_default();
    eprintln!("live verdicts after the heal: the last within {slowest:?}");
    // A poll an interval apart meets the healed link; its connect may have begun just
    // before the heal and time out (500 ms) first.
    assert!(
        slowest <= INTERVAL * 2 + Duration::from_millis(500),
        "live verdicts took {slowest:?}"
    );
    let ended = loop {
        let event = events.next(WITHIN).await;
        if event.event == "panic" && event.data.contains("\"state\":\"ended\"") {
            break event;
        }
    };
    eprintln!("panic ended: {}", ended.data);
    for (name, stat) in haproxy.servers().await {
        assert!(stat.status.starts_with("UP"), "{name}: {stat:?}");
    }
}

/// One backend of ten cut is one dead backend: it reads down in the usual time (fall
/// intervals after its connection is found dead), and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cut_backend_of_ten_reads_down_in_the_usual_time() {
    let farm = CutFarm::start().await;
    for line in &farm.lines {
        reply_becomes(farm.agent.addr(), line, "up #SERVING", WITHIN).await;
    }
    let cut = Instant::now();
    farm.netns.cut(farm.addresses[3]);
    let reply = reply_becomes(farm.agent.addr(), &farm.lines[3], "down", WITHIN).await;
    let took = cut.elapsed();
    eprintln!("one of ten cut: {reply:?} after {took:?}");
    assert!(reply.starts_with("down #connect timeout"), "{reply:?}");
    // Found dead within liveness + RPC timeout (2.5 s), then fall 3: two intervals more.
    assert!(
        took <= Duration::from_secs(8),
        "down after {took:?}: slower than usual"
    );
    assert_eq!(farm.metric("haproxy_grpc_agent_panics_active").await, 0);
    let others: Vec<String> = farm.replies().await;
    for (n, reply) in others.iter().enumerate() {
        if n != 3 {
            assert!(reply.starts_with("up #SERVING"), "{reply:?}");
        }
    }
}

/// A backend's own word is never held: ten backends that all say NOT_SERVING read down.
#[tokio::test]
async fn a_whole_farm_saying_not_serving_reads_down() {
    let mut backends = Vec::new();
    let mut lines = Vec::new();
    for _ in 0..10 {
        let backend = HealthBackend::start().await;
        lines.push(format!("127.0.0.1 {} no-ssl api.test", backend.port()));
        backends.push(backend);
    }
    let agent = start_agent(CUT_FLAGS).await;
    for line in &lines {
        reply_becomes(agent.addr, line, "up #SERVING", WITHIN).await;
    }
    for backend in &backends {
        backend.set("", Wire::NotServing);
    }
    for line in &lines {
        reply_becomes(agent.addr, line, "down #NOT_SERVING", WITHIN).await;
    }
    let metrics = http::get(agent.admin, "/metrics").await.body;
    assert!(
        metrics.contains("haproxy_grpc_agent_panics_active 0"),
        "{metrics}"
    );
}
