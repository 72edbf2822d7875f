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

use crate::poller::{self, Entry, PollerConfig, format_latency};
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
    /// The part pollers read, once per probe.
    poller_config: Arc<ArcSwap<PollerConfig>>,
    /// Wakes waiting pollers after a reload so they re-plan with the new interval.
    reconfigured: Arc<Notify>,
    permits: Arc<Semaphore>,
    registered: Arc<AtomicUsize>,
    epoch: Instant,
    shutdown: Shutdown,
    tasks: TaskTracker,
}

impl Oracle {
    /// Builds the cache and starts its housekeeping. Everything the oracle spawns stops
    /// when `shutdown` is triggered.
    pub fn new(probe: Arc<dyn Probe>, config: OracleConfig, shutdown: Shutdown) -> Oracle {
        let registered = Arc::new(AtomicUsize::new(0));
        let on_evict = Arc::clone(&registered);
        let cache = moka::sync::Cache::builder()
            .time_to_idle(config.idle_ttl)
            .eviction_listener(move |target: Arc<Target>, entry: Arc<Entry>, cause| {
                entry.stop.trigger();
                on_evict.fetch_sub(1, Ordering::Relaxed);
                if cause == RemovalCause::Expired {
                    tracing::info!(target_line = %target, "target idle; stopped probing it");
                }
            })
            .build();
        let oracle = Oracle {
            inner: Arc::new(Inner {
                cache,
                probe,
                config: ArcSwap::from_pointee(config),
                poller_config: Arc::new(ArcSwap::from_pointee(config.poller)),
                reconfigured: Arc::new(Notify::new()),
                permits: Arc::new(Semaphore::new(config.max_probes_in_flight)),
                registered,
                epoch: Instant::now(),
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
        let entry = match self.lookup_or_register(target) {
            Ok(entry) => entry,
            Err(reply) => return reply,
        };
        entry.times_asked.fetch_add(1, Ordering::Relaxed);
        let since_epoch = asked_at.duration_since(self.inner.epoch).as_millis() as u64;
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
        match tokio::time::timeout_at(deadline, first).await {
            Ok(()) => self
                .answer_now(&entry, asked_at)
                .unwrap_or_else(|| Reply::down("first probe pending")),
            Err(_) => Reply::down("first probe pending"),
        }
    }

    /// Applies new timings and bounds. Pollers pick them up at their next probe and keep
    /// their state; the idle TTL and the probes-in-flight bound are fixed at start.
    pub fn reconfigure(&self, config: OracleConfig) {
        self.inner.poller_config.store(Arc::new(config.poller));
        self.inner.config.store(Arc::new(config));
        self.inner.reconfigured.notify_waiters();
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
            return Ok(entry.into_value());
        }
        let entry = entry.into_value();
        tracing::debug!(target_line = %entry.target, "target registered");
        let prober = inner.probe.prober(&entry.target);
        let poll = poller::run(
            Arc::clone(&entry),
            prober,
            Arc::clone(&inner.poller_config),
            Arc::clone(&inner.reconfigured),
            Arc::clone(&inner.permits),
        );
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
        }
    }

    /// The reply if one can be given without waiting: the cached health, or `stale` when
    /// no probe has completed for too long.
    fn answer_now(&self, entry: &Entry, now: Instant) -> Option<Reply> {
        let config = self.inner.config.load();
        let health = entry.health.load();
        let last_completed = match health.as_deref() {
            Some(health) => health.probed_at,
            None => entry.registered_at,
        };
        let age = now.saturating_duration_since(last_completed);
        if age > config.stale_after {
            return Some(Reply::down(format!(
                "stale: no probe for {}",
                format_latency(age)
            )));
        }
        health.as_deref().map(|health| health.reply(&config.poller))
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
