//! Names like a modern client: the agent binary runs in a network namespace the test makes,
//! whose hosts file and resolv.conf the test writes, and reaches real health backends on
//! the test's side of a veth link. A blackholed address beside a good one does not make a
//! healthy backend read down (Happy Eyeballs), a nameserver that never answers delays no
//! other name, and a name whose answer changes moves its connection when its TTL runs out.
//!
//! These tests need root and iproute2; they fail saying so without them.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::backend::HealthBackend;
use support::daemon::Daemon;
use support::netns::{Netns, SilentDns, TableDns};
use support::{ask, eventually, reply_becomes};
use tokio::time::Instant;

/// The agent's default `--grpc-connect-timeout`, which bounds resolution and connect.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

fn line(name: &str, port: u16) -> String {
    format!("{name} {port} no-ssl {name}")
}

/// `eyeballs.test` has the addresses `hosts` lists (in that order), one a blackhole and
/// one a serving backend: it reads up within the connect timeout.
async fn up_beside_a_blackhole(case: &str, hosts: impl Fn(&Netns) -> Vec<IpAddr>) {
    let netns = Netns::new();
    let backend = HealthBackend::start_on(SocketAddr::new(netns.outside_v4(), 0), None).await;
    let listed: String = hosts(&netns)
        .iter()
        .map(|addr| format!("{addr} eyeballs.test\n"))
        .collect();
    netns.write_etc("hosts", &listed);
    let agent = Daemon::start_in(&netns, &[]);
    let started = Instant::now();
    let reply = reply_becomes(
        agent.addr(),
        &line("eyeballs.test", backend.port()),
        "up",
        CONNECT_TIMEOUT,
    )
    .await;
    let took = started.elapsed();
    eprintln!("names: {case}: {reply:?} after {took:?}");
    assert!(took < CONNECT_TIMEOUT, "{case}: up after {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_address_listed_first_does_not_make_a_healthy_backend_down() {
    up_beside_a_blackhole("ipv4, blackhole first", |netns| {
        vec![netns.silent_v4(), netns.outside_v4()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_address_listed_second_is_never_needed() {
    up_beside_a_blackhole("ipv4, blackhole second", |netns| {
        vec![netns.outside_v4(), netns.silent_v4()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_ipv6_address_does_not_hide_a_serving_ipv4_one() {
    up_beside_a_blackhole("AAAA blackholed, A serving", |netns| {
        vec![netns.silent_v6(), netns.outside_v4()]
    })
    .await;
}

/// How many names ask a silent nameserver at once.
const SILENT_NAMES: usize = 600;

#[tokio::test(flavor = "multi_thread")]
async fn a_nameserver_that_never_answers_delays_no_other_name() {
    let netns = Netns::new();
    let nameserver = SilentDns::start(netns.outside_v4()).await;
    netns.write_etc(
        "resolv.conf",
        &format!("nameserver {}\n", netns.outside_v4()),
    );
    netns.write_etc("hosts", &format!("{} listed.test\n", netns.outside_v4()));
    let backend = HealthBackend::start_on(SocketAddr::new(netns.outside_v4(), 0), None).await;
    // 600 names that cannot be resolved are most of the agent's endpoints: that looks like
    // the agent's own trouble, and a panic would answer them with silence. This test is
    // about the reasons and the delays, so panic is off.
    let agent = Daemon::start_in(&netns, &["--panic-threshold", "0"]);
    let addr = agent.addr();

    let mut asking = tokio::task::JoinSet::new();
    for index in 0..SILENT_NAMES {
        let silent = line(&format!("silent-{index}.test"), backend.port());
        asking.spawn(async move { ask(addr, &silent).await });
    }
    // Every one of them is waiting on the nameserver (an A and an AAAA question each)
    // before the listed name is asked.
    eventually(
        Duration::from_secs(10),
        "the silent names' questions",
        || async { nameserver.questions() >= 2 * SILENT_NAMES },
    )
    .await;

    let started = Instant::now();
    let margin = Duration::from_millis(500);
    let reply = reply_becomes(
        addr,
        &line("listed.test", backend.port()),
        "up",
        CONNECT_TIMEOUT + margin,
    )
    .await;
    let took = started.elapsed();
    eprintln!("names: a listed name beside {SILENT_NAMES} silent ones: {reply:?} after {took:?}");
    assert!(took < CONNECT_TIMEOUT + margin, "up after {took:?}");

    // The silent names read down, saying why, and none hangs.
    let answered = tokio::time::timeout(Duration::from_secs(10), asking.join_all())
        .await
        .expect("every silent name is answered");
    assert_eq!(answered.len(), SILENT_NAMES);
    let started = Instant::now();
    let late = line("silent-late.test", backend.port());
    let reply = reply_becomes(addr, &late, "down #dns: timeout", Duration::from_secs(5)).await;
    let took = started.elapsed();
    eprintln!("names: a name whose nameserver is silent: {reply:?} after {took:?}");
    for index in [0, SILENT_NAMES - 1] {
        let silent = line(&format!("silent-{index}.test"), backend.port());
        reply_becomes(addr, &silent, "down #dns: timeout", Duration::from_secs(5)).await;
    }
}

/// `moving.test` resolves to an old backend, then (TTL one second) to a new one on the
/// same port: its probes move to the new one and the old connection is closed.
async fn moves_with_its_name(mode: &str) {
    let netns = Netns::new();
    let dns = TableDns::start(netns.outside_v4()).await;
    netns.write_etc(
        "resolv.conf",
        &format!("nameserver {}\n", netns.outside_v4()),
    );
    let old = HealthBackend::start_on(SocketAddr::new(netns.outside_v4(), 0), None).await;
    let moved_to = netns.v4(4);
    netns.add_outside(moved_to);
    let new = HealthBackend::start_on(SocketAddr::new(moved_to, old.port()), None).await;
    dns.set("moving.test", &[netns.outside_v4()]);
    let agent = Daemon::start_in(
        &netns,
        &[
            "--health-mode",
            mode,
            "--check-interval",
            "200ms",
            "--liveness-interval",
            "200ms",
        ],
    );
    let moving = line("moving.test", old.port());
    reply_becomes(agent.addr(), &moving, "up", Duration::from_secs(5)).await;
    eventually(
        Duration::from_secs(5),
        "one connection at the old backend",
        || async { old.open_connections() == 1 },
    )
    .await;

    dns.set("moving.test", &[moved_to]);
    let started = Instant::now();
    // TTL (1 s) + the next call or liveness Check (3 liveness intervals) + a resolution
    // and the retired connection's last call (connect + RPC timeout).
    let bound = Duration::from_secs(1) + Duration::from_millis(600) + Duration::from_millis(2500);
    let margin = Duration::from_secs(2);
    eventually(
        bound + margin,
        "probes at the new address, none left at the old",
        || async { (new.total_checks() > 0 || new.watches() > 0) && old.open_connections() == 0 },
    )
    .await;
    eprintln!("names: {mode}: moved in {:?}", started.elapsed());
    let (checks, watches) = (old.total_checks(), old.watches());
    reply_becomes(agent.addr(), &moving, "up", Duration::from_secs(2)).await;
    // A few probes later, the old backend has seen nothing more.
    let seen = new.total_checks() + new.watches();
    eventually(
        Duration::from_secs(5),
        "more probes at the new backend",
        || async { new.total_checks() + new.watches() > seen + 1 || mode == "watch" },
    )
    .await;
    assert_eq!(
        (old.total_checks(), old.watches()),
        (checks, watches),
        "no new call at the old address"
    );
    assert!(dns.questions() >= 2, "the name was asked again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_polled_name_moves_when_its_answer_changes() {
    moves_with_its_name("poll").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_name_moves_when_its_answer_changes() {
    moves_with_its_name("watch").await;
}
