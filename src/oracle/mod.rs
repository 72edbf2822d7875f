//! The health oracle, the one home of a target's life. This module is the cache: a moka
//! cache from [`Target`] to its [`Entry`]. A hit answers from the entry at once; a miss
//! registers the target, starts its poller and waits, at most the miss timeout, for the
//! first probe, which concurrent misses share. Idle targets are evicted, which stops their
//! pollers.
//!
//! Only the backend, or the request line, earns a `down`. When the agent itself cannot say
//! (a first probe still pending, a full cache, no probe slot, a result gone stale because
//! the agent fell behind, shutting down, a panic with no verdict to hold) the answer is an
//! [`AgentFault`], which the agent port answers with silence by default.
//!
//! - [`config`]: the settings.
//! - [`entry`]: one target's state, and the [`Snapshot`] everyone else reads.
//! - [`health`]: hysteresis, pure.
//! - [`poll`]: a target's poller (Check every interval) and what pollers share.
//! - [`watch`]: following a Health/Watch stream.
//! - [`panic`]: groups whose failures look like the agent's own, and hold their verdicts.

mod config;
mod entry;
mod health;
mod panic;
mod poll;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::notification::RemovalCause;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

pub use config::{
    ExplicitAnswers, HealthMode, OracleConfig, PanicConfig, PollerConfig, ReplyPolicy,
};
pub use entry::{LoadSnapshot, Snapshot, Status};
pub use health::format_latency;
pub use poll::PROBE_SLOT;

use crate::events::Events;
pub use crate::metrics::FaultCause;
use crate::metrics::{ErrorType, EvictionCause, Metrics, OutcomeKind};
use crate::probe::{LoadWeight, Probe};
use crate::protocol::{Reply, Target, Verdict};
use crate::shutdown::Shutdown;
use entry::Entry;
use panic::Panics;

/// Why the oracle has no word from the backend for a request: a trouble of the agent's
/// own. HAProxy keeps its last verdict for an agent that closes without a reply, so the
/// agent port answers this with silence unless told to answer `down`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFault {
    pub cause: FaultCause,
    /// What a strict `down` reply would say.
    pub reason: String,
}

impl AgentFault {
    fn new(cause: FaultCause, reason: impl Into<String>) -> AgentFault {
        AgentFault {
            cause,
            reason: reason.into(),
        }
    }
}

/// A cheap, cloneable handle on the oracle. Pollers stop on eviction and on shutdown.
#[derive(Clone)]
pub struct Oracle {
    inner: Arc<Inner>,
}

struct Inner {
    cache: moka::sync::Cache<Target, Arc<Entry>>,
    probe: Arc<dyn Probe>,
    /// Swapped whole on reload; read on every request.
    config: ArcSwap<OracleConfig>,
    /// What the pollers share, their settings included.
    pollers: Arc<poll::Shared>,
    registered: Arc<AtomicUsize>,
    panics: Arc<Panics>,
    metrics: Metrics,
    shutdown: Shutdown,
    tasks: TaskTracker,
}

impl Oracle {
    /// Builds the cache and starts its housekeeping. Everything the oracle spawns stops
    /// when `shutdown` is triggered.
    pub fn new(
        probe: Arc<dyn Probe>,
        config: OracleConfig,
        shutdown: Shutdown,
        metrics: Metrics,
        events: Events,
    ) -> Oracle {
        let registered = Arc::new(AtomicUsize::new(0));
        let on_evict = Arc::clone(&registered);
        let evict_metrics = metrics.clone();
        let cache = moka::sync::Cache::builder()
            .time_to_idle(config.idle_ttl)
            .eviction_listener(move |target: Arc<Target>, entry: Arc<Entry>, cause| {
                entry.stop();
                let left = on_evict.fetch_sub(1, Ordering::Relaxed) - 1;
                evict_metrics.cache.targets_registered.set(left as i64);
                let cause = match cause {
                    RemovalCause::Expired => {
                        tracing::info!(target_line = %target, "target idle; stopped probing it");
                        EvictionCause::Idle
                    }
                    RemovalCause::Explicit => {
                        tracing::info!(target_line = %target, "target evicted by the admin api; stopped probing it");
                        EvictionCause::Admin
                    }
                    RemovalCause::Size => EvictionCause::Capacity,
                    RemovalCause::Replaced => EvictionCause::Replaced,
                };
                evict_metrics.evicted(cause);
            })
            .build();
        let panics = Arc::new(Panics::new(config.panic, metrics.clone(), events.clone()));
        let pollers = Arc::new(poll::Shared::new(
            config.poller,
            config.max_probes_in_flight,
            metrics.clone(),
            events,
        ));
        let oracle = Oracle {
            inner: Arc::new(Inner {
                cache,
                probe,
                config: ArcSwap::from_pointee(config),
                pollers,
                registered,
                panics,
                metrics,
                shutdown,
                tasks: TaskTracker::new(),
            }),
        };
        let housekeeping = housekeeping(
            Arc::downgrade(&oracle.inner),
            config.idle_ttl,
            oracle.inner.shutdown.clone(),
        );
        oracle.inner.tasks.spawn(housekeeping);
        oracle
    }

    /// The reply for `target`: from the cache on a hit, after at most the miss timeout on
    /// a miss; or the agent's own fault when it has no word from the backend.
    pub async fn ask(&self, target: Target) -> Result<Reply, AgentFault> {
        let asked_at = Instant::now();
        if self.inner.shutdown.is_triggered() {
            return Err(AgentFault::new(FaultCause::ShuttingDown, "shutting down"));
        }
        if let Err(denied) = self.inner.probe.admits(&target) {
            self.inner.metrics.error(ErrorType::Denied);
            return Ok(Reply::down(denied.to_string()));
        }
        let entry = self.lookup_or_register(target)?;
        entry.asked(self.inner.pollers.millis(asked_at));
        if let Some(reply) = self.answer_now(&entry, asked_at) {
            return reply;
        }
        let first = entry.first_result();
        tokio::pin!(first);
        first.as_mut().enable();
        // The result may have landed between the look above and `enable`.
        if let Some(reply) = self.answer_now(&entry, asked_at) {
            return reply;
        }
        let deadline = asked_at + self.inner.config.load().miss_timeout;
        let answered = match tokio::time::timeout_at(deadline, first).await {
            Ok(()) => self.answer_now(&entry, asked_at),
            Err(_) => None,
        };
        answered.unwrap_or_else(|| {
            Err(if entry.lacks_slot() {
                AgentFault::new(FaultCause::NoProbeSlot, "first probe found no probe slot")
            } else {
                AgentFault::new(FaultCause::FirstProbePending, "first probe pending")
            })
        })
    }

    /// Every registered target as it is now, in no particular order. Looking does not
    /// count as asking: it keeps no target from going idle.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let now = Instant::now();
        self.inner
            .cache
            .iter()
            .map(|(_, entry)| self.snapshot_of(&entry, now))
            .collect()
    }

    /// One registered target as it is now, without counting as a request for it.
    pub fn snapshot(&self, target: &Target) -> Option<Snapshot> {
        let entry = self.entry(target)?;
        Some(self.snapshot_of(&entry, Instant::now()))
    }

    fn entry(&self, target: &Target) -> Option<Arc<Entry>> {
        self.inner
            .cache
            .iter()
            .find(|(key, _)| key.as_ref() == target)
            .map(|(_, entry)| entry)
    }

    fn snapshot_of(&self, entry: &Entry, now: Instant) -> Snapshot {
        let answer = self
            .answer_at(entry, now)
            .map(|answer| answer.map(|answer| answer.reply));
        entry.snapshot(now, &self.inner.pollers, answer)
    }

    /// Removes a target and stops its poller; false if it was not registered.
    pub fn evict(&self, target: &Target) -> bool {
        let removed = self.inner.cache.remove(target).is_some();
        // Run the eviction listener now, so the poller stops before this returns.
        self.inner.cache.run_pending_tasks();
        removed
    }

    /// Probes a registered target now (its poller runs the probe, so there is still only
    /// one at a time) and returns its snapshot once a probe started after this call has
    /// published, or `Err(snapshot)` if none did within `within`. `None` if not registered.
    pub async fn refresh(
        &self,
        target: &Target,
        within: Duration,
    ) -> Option<Result<Snapshot, Snapshot>> {
        let entry = self.entry(target)?;
        let requested = Instant::now();
        let deadline = requested + within;
        let fresh = |entry: &Entry| {
            entry
                .health()
                .is_some_and(|health| health.probed_at - health.latency >= requested)
        };
        entry.ask_refresh();
        let in_time = loop {
            let published = entry.published();
            tokio::pin!(published);
            published.as_mut().enable();
            if fresh(&entry) {
                break true;
            }
            if tokio::time::timeout_at(deadline, published).await.is_err() {
                break false;
            }
        };
        let snapshot = self.snapshot_of(&entry, Instant::now());
        Some(if in_time { Ok(snapshot) } else { Err(snapshot) })
    }

    /// The oracle's settings now.
    pub fn config(&self) -> OracleConfig {
        **self.inner.config.load()
    }

    /// Applies new timings and bounds. Pollers pick them up at their next probe and keep
    /// their state; the idle TTL and the probes-in-flight bound are fixed at start.
    pub fn reconfigure(&self, config: OracleConfig) {
        self.inner.pollers.config.store(Arc::new(config.poller));
        self.inner.panics.reconfigure(config.panic);
        self.inner.config.store(Arc::new(config));
        self.inner.pollers.reconfigured.notify_waiters();
    }

    /// The number of registered targets.
    pub fn len(&self) -> usize {
        self.inner.registered.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the oracle's tasks (pollers, housekeeping) to finish after shutdown.
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await
    }

    fn lookup_or_register(&self, target: Target) -> Result<Arc<Entry>, AgentFault> {
        let inner = &self.inner;
        if let Some(entry) = inner.cache.get(&target) {
            inner.metrics.cache.hits.inc();
            return Ok(entry);
        }
        // Reserve a slot first, so concurrent misses cannot overshoot the bound.
        let max = inner.config.load().max_targets;
        if inner.registered.fetch_add(1, Ordering::Relaxed) >= max {
            inner.registered.fetch_sub(1, Ordering::Relaxed);
            let reason = format!("target limit reached ({max})");
            return Err(AgentFault::new(FaultCause::TargetLimit, reason));
        }
        let entry = inner
            .cache
            .entry(target.clone())
            .or_insert_with(|| Arc::new(self.new_entry(target)));
        if !entry.is_fresh() {
            inner.registered.fetch_sub(1, Ordering::Relaxed);
            inner.metrics.cache.hits.inc();
            return Ok(entry.into_value());
        }
        inner.metrics.cache.misses.inc();
        inner
            .metrics
            .cache
            .targets_registered
            .set(inner.registered.load(Ordering::Relaxed) as i64);
        let entry = entry.into_value();
        tracing::debug!(target_line = %entry.target(), "target registered");
        let prober = entry.prober();
        let poll = poll::run(Arc::clone(&entry), prober, Arc::clone(&inner.pollers));
        inner.tasks.spawn(poll);
        Ok(entry)
    }

    fn new_entry(&self, target: Target) -> Entry {
        let prober = self.inner.probe.prober(&target);
        let membership = self.inner.panics.join(&target);
        Entry::new(target, prober, self.inner.shutdown.child(), membership)
    }

    /// The answer if one can be given without waiting, counted in the metrics: the cached
    /// health, or the agent's fault when its result is stale or held by a panic without a
    /// verdict.
    fn answer_now(&self, entry: &Entry, now: Instant) -> Option<Result<Reply, AgentFault>> {
        let answer = match self.answer_at(entry, now)? {
            Ok(answer) => answer,
            Err(fault) => return Some(Err(fault)),
        };
        if let Some(error_type) = answer.error_type {
            self.inner.metrics.error(error_type);
        }
        if answer.held {
            self.inner.metrics.probes.panic_replies.inc();
        }
        Some(Ok(answer.reply))
    }

    /// The answer from the cached health at `now`; `None` before the first result.
    fn answer_at(&self, entry: &Entry, now: Instant) -> Option<Result<Answer, AgentFault>> {
        let config = self.inner.config.load();
        // A watched target's answer comes over a connection proven alive once per
        // liveness interval, so it may be that much older. Every probe ends within its
        // deadline, with the backend's answer or a failure counted through `fall`, so an
        // answer older than this means the agent fell behind: its fault, not the backend's.
        let watched_limit = config.stale_after + config.poller.liveness_interval;
        if let Some(age) = entry.is_stale(now, config.stale_after, watched_limit) {
            let cause = if entry.lacks_slot() {
                FaultCause::NoProbeSlot
            } else {
                FaultCause::Stale
            };
            let reason = format!("stale: no probe result for {}", format_latency(age));
            return Some(Err(AgentFault::new(cause, reason)));
        }
        let health = entry.health()?;
        // A held status that has earned its flip is answered flipped, even in the moment
        // before its poller's timer publishes it.
        let settled = health.settled(now);
        let health = settled.as_ref().unwrap_or(&health);
        let mut reply = health.reply(&config.poller.replies, now);
        if health.last.is_unreached()
            && let Some(panic) = entry.panic()
        {
            return Some(held(health, &config.poller.replies, &panic));
        }
        if reply.verdict == Verdict::Up {
            with_weight(&mut reply, entry.prober().weight(now));
            return Some(Ok(Answer::plain(reply, None)));
        }
        let failure = health.last_failure.as_ref().unwrap_or(&health.last);
        Some(Ok(Answer::plain(
            reply,
            OutcomeKind::of(failure).error_type(),
        )))
    }
}

/// A reply, what it counts as, and whether a panic held it.
struct Answer {
    reply: Reply,
    error_type: Option<ErrorType>,
    held: bool,
}

impl Answer {
    fn plain(reply: Reply, error_type: Option<ErrorType>) -> Answer {
        Answer {
            reply,
            error_type,
            held: false,
        }
    }
}

/// The answer for a target whose group (or the agent) panics while its latest probes do
/// not reach it: the verdict it had before they began, saying why, or the agent's fault if
/// it had none.
fn held(health: &health::Health, policy: &ReplyPolicy, panic: &str) -> Result<Answer, AgentFault> {
    let Some(verdict) = health.outage_from else {
        let reason = format!("panic: {panic}; no verdict to hold");
        return Err(AgentFault::new(FaultCause::Panic, reason));
    };
    let reason = format!("panic: {panic}; held ({})", health.last.reason());
    let reply = Reply {
        ready: verdict == Verdict::Up && policy.not_serving != Verdict::Down,
        ..Reply::new(verdict, reason)
    };
    Ok(Answer {
        reply,
        error_type: None,
        held: true,
    })
}

/// An `up` reply with the weight the backend's load reports give, and the utilization it
/// rests on after the reason (`up 35% #SERVING 0.4ms cpu 0.82`). Without a report yet, or
/// from a backend that sends none, the reply carries no weight: HAProxy keeps the one it
/// has.
fn with_weight(reply: &mut Reply, weight: LoadWeight) {
    let LoadWeight::Percent {
        percent, report, ..
    } = weight
    else {
        return;
    };
    reply.weight = Some(percent);
    if let Some(words) = report.describe() {
        if !reply.reason.is_empty() {
            reply.reason.push(' ');
        }
        reply.reason.push_str(&words);
    }
}

/// moka evicts lazily, on cache activity; this makes idle targets leave on time even
/// when no request arrives. It holds the oracle weakly, so it ends with it too.
async fn housekeeping(inner: std::sync::Weak<Inner>, idle_ttl: Duration, shutdown: Shutdown) {
    let period = (idle_ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.triggered() => return,
            _ = ticks.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        inner.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;
