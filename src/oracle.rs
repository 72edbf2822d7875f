//! The health oracle: a moka cache from [`Target`] to its [`Entry`]. A hit answers from the
//! entry at once; a miss registers the target, starts its poller and waits, at most the
//! miss timeout, for the first probe, which concurrent misses share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use moka::notification::RemovalCause;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::events::Events;
use crate::metrics::{Metrics, outcome_kind};
use crate::poller::{self, Entry, Health, PollerConfig, format_latency};
use crate::probe::Probe;
use crate::protocol::{Reply, Target};
use crate::responder::Answer;
use crate::shutdown::Shutdown;

/// The oracle's bounds and timings.
#[derive(Clone, Copy, Debug)]
pub struct OracleConfig {
    pub poller: PollerConfig,
    /// How long a request for an unseen target waits for its first probe.
    pub miss_timeout: Duration,
    /// A target nobody has asked about for this long is evicted and its poller stopped.
    pub idle_ttl: Duration,
    /// Most targets registered at once; requests for more get `down`.
    pub max_targets: usize,
    /// Answers older than this are not trusted: the poller must be wedged.
    pub stale_after: Duration,
    /// Probes running at once, across all targets.
    pub max_probes_in_flight: usize,
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
    pollers: Arc<poller::Shared>,
    registered: Arc<AtomicUsize>,
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
                entry.stop.trigger();
                let left = on_evict.fetch_sub(1, Ordering::Relaxed) - 1;
                evict_metrics.targets_registered.set(left as i64);
                let cause = match cause {
                    RemovalCause::Expired => {
                        tracing::info!(target_line = %target, "target idle; stopped probing it");
                        "idle"
                    }
                    RemovalCause::Explicit => {
                        tracing::info!(target_line = %target, "target evicted by the admin api; stopped probing it");
                        "admin"
                    }
                    RemovalCause::Size => "capacity",
                    RemovalCause::Replaced => "replaced",
                };
                evict_metrics.evicted(cause);
            })
            .build();
        let pollers = Arc::new(poller::Shared {
            config: ArcSwap::from_pointee(config.poller),
            reconfigured: Notify::new(),
            permits: Semaphore::new(config.max_probes_in_flight),
            metrics: metrics.clone(),
            events,
            epoch: Instant::now(),
        });
        let oracle = Oracle {
            inner: Arc::new(Inner {
                cache,
                probe,
                config: ArcSwap::from_pointee(config),
                pollers,
                registered,
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
    /// a miss.
    pub async fn ask(&self, target: Target) -> Reply {
        let asked_at = Instant::now();
        if let Err(denied) = self.inner.probe.admits(&target) {
            self.inner.metrics.error("denied");
            return Reply::down(denied.to_string());
        }
        let entry = match self.lookup_or_register(target) {
            Ok(entry) => entry,
            Err(reply) => {
                self.inner.metrics.error("target_limit");
                return reply;
            }
        };
        entry.times_asked.fetch_add(1, Ordering::Relaxed);
        let since_epoch = self.inner.pollers.millis(asked_at);
        entry.last_asked_ms.store(since_epoch, Ordering::Relaxed);
        if let Some(reply) = self.answer_now(&entry, asked_at) {
            return reply;
        }
        let first = entry.first_result.notified();
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
            self.inner.metrics.error("first_probe_pending");
            Reply::down("first probe pending")
        })
    }

    /// Every registered target, in no particular order. Looking does not count as asking:
    /// it keeps no target from going idle.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.inner.cache.iter().map(|(_, entry)| entry).collect()
    }

    /// One registered target, without counting as a request for it.
    pub fn entry(&self, target: &Target) -> Option<Arc<Entry>> {
        self.inner
            .cache
            .iter()
            .find(|(key, _)| key.as_ref() == target)
            .map(|(_, entry)| entry)
    }

    /// Removes a target and stops its poller; false if it was not registered.
    pub fn evict(&self, target: &Target) -> bool {
        let removed = self.inner.cache.remove(target).is_some();
        // Run the eviction listener now, so the poller stops before this returns.
        self.inner.cache.run_pending_tasks();
        removed
    }

    /// Probes a registered target now (its poller runs the probe, so there is still only
    /// one at a time) and returns its entry once a probe started after this call has
    /// published, or `Err(entry)` if none did within `within`. `None` if not registered.
    pub async fn refresh(
        &self,
        target: &Target,
        within: Duration,
    ) -> Option<Result<Arc<Entry>, Arc<Entry>>> {
        let entry = self.entry(target)?;
        let requested = Instant::now();
        let deadline = requested + within;
        let fresh = |entry: &Entry| {
            entry
                .health
                .load()
                .as_deref()
                .is_some_and(|health| health.probed_at - health.latency >= requested)
        };
        entry.refresh.notify_one();
        let in_time = loop {
            let published = entry.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if fresh(&entry) {
                break true;
            }
            if tokio::time::timeout_at(deadline, published).await.is_err() {
                break false;
            }
        };
        Some(if in_time { Ok(entry) } else { Err(entry) })
    }

    /// What a request for this entry would be answered now (no waiting, nothing counted);
    /// `None` while its first probe is pending.
    pub fn peek(&self, entry: &Entry) -> Option<Reply> {
        self.reply_for(entry, Instant::now())
            .map(|(reply, _)| reply)
    }

    /// The oracle's settings now.
    pub fn config(&self) -> OracleConfig {
        **self.inner.config.load()
    }

    /// The instant `millis` after the epoch of the entries' millisecond clocks.
    pub fn instant_at(&self, millis: u64) -> Instant {
        self.inner.pollers.epoch + Duration::from_millis(millis)
    }

    /// Applies new timings and bounds. Pollers pick them up at their next probe and keep
    /// their state; the idle TTL and the probes-in-flight bound are fixed at start.
    pub fn reconfigure(&self, config: OracleConfig) {
        self.inner.pollers.config.store(Arc::new(config.poller));
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

    fn lookup_or_register(&self, target: Target) -> Result<Arc<Entry>, Reply> {
        let inner = &self.inner;
        if let Some(entry) = inner.cache.get(&target) {
            inner.metrics.cache_hits.inc();
            return Ok(entry);
        }
        // Reserve a slot first, so concurrent misses cannot overshoot the bound.
        let max = inner.config.load().max_targets;
        if inner.registered.fetch_add(1, Ordering::Relaxed) >= max {
            inner.registered.fetch_sub(1, Ordering::Relaxed);
            return Err(Reply::down(format!("target limit reached ({max})")));
        }
        let entry = inner
            .cache
            .entry(target.clone())
            .or_insert_with(|| Arc::new(self.new_entry(target)));
        if !entry.is_fresh() {
            inner.registered.fetch_sub(1, Ordering::Relaxed);
            inner.metrics.cache_hits.inc();
            return Ok(entry.into_value());
        }
        inner.metrics.cache_misses.inc();
        inner
            .metrics
            .targets_registered
            .set(inner.registered.load(Ordering::Relaxed) as i64);
        let entry = entry.into_value();
        tracing::debug!(target_line = %entry.target, "target registered");
        let prober = inner.probe.prober(&entry.target);
        let poll = poller::run(Arc::clone(&entry), prober, Arc::clone(&inner.pollers));
        inner.tasks.spawn(poll);
        Ok(entry)
    }

    fn new_entry(&self, target: Target) -> Entry {
        Entry {
            target,
            health: ArcSwapOption::empty(),
            first_result: Notify::new(),
            stop: self.inner.shutdown.child(),
            registered_at: Instant::now(),
            last_asked_ms: AtomicU64::new(0),
            times_asked: AtomicU64::new(0),
            next_due_ms: AtomicU64::new(0),
            refresh: Notify::new(),
            published: Notify::new(),
            watched: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The reply if one can be given without waiting: the cached health, or `stale` when
    /// no probe has completed for too long.
    fn answer_now(&self, entry: &Entry, now: Instant) -> Option<Reply> {
        let (reply, error_type) = self.reply_for(entry, now)?;
        if let Some(error_type) = error_type {
            self.inner.metrics.error(error_type);
        }
        Some(reply)
    }

    /// The reply from the cached health, or `stale` when no probe has completed for too
    /// long, with the cause when it is not `up`.
    fn reply_for(&self, entry: &Entry, now: Instant) -> Option<(Reply, Option<&'static str>)> {
        let config = self.inner.config.load();
        let health = entry.health.load();
        let last_completed = match health.as_deref() {
            Some(health) => health.probed_at,
            None => entry.registered_at,
        };
        let age = now.saturating_duration_since(last_completed);
        if age > config.stale_after {
            let reply = Reply::down(format!("stale: no probe for {}", format_latency(age)));
            return Some((reply, Some("stale")));
        }
        let health: &Health = health.as_deref()?;
        let reply = health.reply(&config.poller);
        let error_type = (reply.verdict != crate::protocol::Verdict::Up)
            .then(|| outcome_kind(health.last_failure.as_ref().unwrap_or(&health.last)));
        Some((reply, error_type))
    }
}

impl Answer for Oracle {
    fn answer(&self, target: Target) -> impl Future<Output = Reply> + Send {
        self.ask(target)
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
#[path = "oracle_tests.rs"]
mod tests;
