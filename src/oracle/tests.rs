//! The oracle with a scripted fake probe on tokio's paused clock: the timing rules
//! (miss timeout, staleness, the probes-in-flight bound) checked exactly.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::probe::{BoxFuture, Outcome, ServingStatus, TargetProber};

/// Answers the first `answered` checks of each target with SERVING; later checks hang
/// until cancelled. Counts checks running at once.
struct Scripted {
    answered: usize,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
}

struct ScriptedTarget {
    answered: usize,
    calls: AtomicUsize,
    running: Arc<AtomicUsize>,
    most_running: Arc<AtomicUsize>,
}

impl Probe for Scripted {
    fn prober(&self, _target: &Target) -> Arc<dyn TargetProber> {
        Arc::new(ScriptedTarget {
            answered: self.answered,
            calls: AtomicUsize::new(0),
            running: Arc::clone(&self.running),
            most_running: Arc::clone(&self.most_running),
        })
    }
}

impl TargetProber for ScriptedTarget {
    fn check(&self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_running.fetch_max(now, Ordering::SeqCst);
            struct Finished<'a>(&'a AtomicUsize);
            impl Drop for Finished<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _finished = Finished(&self.running);
            if self.calls.fetch_add(1, Ordering::SeqCst) >= self.answered {
                std::future::pending::<()>().await;
            }
            Outcome::Answered(ServingStatus::Serving)
        })
    }
}

fn config(max_probes_in_flight: usize) -> OracleConfig {
    OracleConfig {
        poller: PollerConfig {
            interval: Duration::from_secs(1),
            jitter: 0.0,
            rise: 2,
            fall: 3,
            // Far away, so a hanging probe stays hanging: that is what these tests study.
            probe_deadline: Duration::from_secs(3600),
            replies: ReplyPolicy {
                not_serving: crate::protocol::Verdict::Down,
                unimplemented: crate::protocol::Verdict::Down,
            },
            mode: HealthMode::Poll,
            liveness_interval: Duration::from_secs(10),
            explicit_answers: super::ExplicitAnswers::AtOnce,
        },
        miss_timeout: Duration::from_millis(800),
        idle_ttl: Duration::from_secs(600),
        max_targets: 100,
        stale_after: Duration::from_secs(5),
        max_probes_in_flight,
        panic: super::PanicConfig {
            threshold: 50,
            min_group: 3,
        },
    }
}

fn fault(cause: FaultCause, reason: &str) -> Result<Reply, AgentFault> {
    Err(AgentFault {
        cause,
        reason: reason.to_string(),
    })
}

fn oracle(answered: usize, max_probes_in_flight: usize) -> (Oracle, Arc<AtomicUsize>) {
    let most_running = Arc::new(AtomicUsize::new(0));
    let probe = Scripted {
        answered,
        running: Arc::new(AtomicUsize::new(0)),
        most_running: Arc::clone(&most_running),
    };
    let oracle = Oracle::new(
        Arc::new(probe),
        config(max_probes_in_flight),
        Shutdown::new(),
        Metrics::unregistered().unwrap(),
        Events::new(16),
    );
    (oracle, most_running)
}

fn target(service: &str) -> Target {
    crate::protocol::parse_request(format!("127.0.0.1 50051 no-ssl localhost {service}").as_bytes())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_miss_waits_exactly_the_miss_timeout() {
    let (oracle, _) = oracle(0, 8);
    let started = Instant::now();
    assert_eq!(
        oracle.ask(target("a")).await,
        fault(FaultCause::FirstProbePending, "first probe pending")
    );
    assert_eq!(started.elapsed(), Duration::from_millis(800));
}

#[tokio::test(start_paused = true)]
async fn a_wedged_poller_is_the_agents_fault_not_the_backends() {
    let (oracle, _) = oracle(1, 8);
    let up = |answer: Result<Reply, AgentFault>| answer.unwrap().verdict;
    assert_eq!(
        up(oracle.ask(target("a")).await),
        crate::protocol::Verdict::Up
    );
    // The second probe (due at 1 s) never finishes; before 5 s the answer stands.
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert_eq!(
        up(oracle.ask(target("a")).await),
        crate::protocol::Verdict::Up
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        oracle.ask(target("a")).await,
        fault(FaultCause::Stale, "stale: no probe result for 5100ms")
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_cache_is_the_agents_fault() {
    let (oracle, _) = oracle(usize::MAX, 8);
    oracle.reconfigure(OracleConfig {
        max_targets: 2,
        ..config(8)
    });
    for service in ["a", "b"] {
        assert!(oracle.ask(target(service)).await.is_ok());
    }
    assert_eq!(
        oracle.ask(target("c")).await,
        fault(FaultCause::TargetLimit, "target limit reached (2)")
    );
}

#[tokio::test(start_paused = true)]
async fn probes_in_flight_never_exceed_the_bound() {
    // Each target answers its first check, then hangs: six healthy targets whose second
    // probes all hang at once.
    let (oracle, most_running) = oracle(1, 2);
    for i in 0..6 {
        let answer = oracle.ask(target(&format!("s{i}"))).await;
        assert!(answer.is_ok_and(|reply| reply.verdict == crate::protocol::Verdict::Up));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(oracle.len(), 6);
    assert_eq!(most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn targets_that_never_answered_hold_at_most_half_the_probe_slots() {
    let (oracle, most_running) = oracle(0, 4);
    let asks: Vec<_> = (0..6)
        .map(|i| {
            let oracle = oracle.clone();
            tokio::spawn(async move { oracle.ask(target(&format!("s{i}"))).await })
        })
        .collect();
    for ask in asks {
        assert_eq!(
            ask.await.unwrap(),
            fault(FaultCause::FirstProbePending, "first probe pending")
        );
    }
    assert_eq!(oracle.len(), 6);
    assert_eq!(most_running.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_poller() {
    let shutdown = Shutdown::new();
    let probe = Scripted {
        answered: usize::MAX,
        running: Arc::new(AtomicUsize::new(0)),
        most_running: Arc::new(AtomicUsize::new(0)),
    };
    let oracle = Oracle::new(
        Arc::new(probe),
        config(8),
        shutdown.clone(),
        Metrics::unregistered().unwrap(),
        Events::new(16),
    );
    for i in 0..3 {
        let _ = oracle.ask(target(&format!("s{i}"))).await;
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(1), oracle.stopped())
        .await
        .expect("pollers and housekeeping stop on shutdown");
}
