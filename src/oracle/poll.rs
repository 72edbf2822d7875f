//! One target's poller: the task that keeps its health. It follows a Health/Watch stream
//! while one is open (see [`super::watch`]) and polls with Check otherwise, every interval
//! with jitter; a refresh asks for a probe now. It never runs two probes of one target
//! together, and it stops with the entry (eviction, shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use tokio::time::Instant;

use super::config::PollerConfig;
use super::entry::Entry;
use super::health::Observation;
use super::watch::{self, WatchPlan};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::probe::{Outcome, ProbeError, TargetProber};

/// What every poller shares: the settings it reads each round, the reload signal, the
/// bound on probes in flight, the metrics and the state-change feed.
pub struct Shared {
    /// Swapped whole on reload; read once per probe.
    pub config: ArcSwap<PollerConfig>,
    /// Wakes waiting pollers after a reload so they re-plan with the new settings.
    pub reconfigured: Notify,
    /// `max_probes_in_flight`.
    permits: Semaphore,
    /// The share of `permits` that targets not answered yet, or whose latest probe got no
    /// answer, may hold (half, at least one): backends that never answer cannot take
    /// every slot from those that do.
    failing_permits: Semaphore,
    /// Probes are finding no slot in time (logged once when it starts and when it ends).
    starved: AtomicBool,
    pub metrics: Metrics,
    pub events: Events,
    /// The zero of the entries' millisecond clocks.
    pub epoch: Instant,
}

/// Probes start on slot boundaries: pollers due within one slot wake together, so the
/// runtime wakes once per slot rather than once per probe (a thread wake-up costs more
/// than a probe). The interval and its jitter are kept; a probe starts at most one slot
/// late.
pub const PROBE_SLOT: Duration = Duration::from_millis(25);

impl Shared {
    pub fn new(
        config: PollerConfig,
        max_probes_in_flight: usize,
        metrics: Metrics,
        events: Events,
    ) -> Shared {
        Shared {
            config: ArcSwap::from_pointee(config),
            reconfigured: Notify::new(),
            permits: Semaphore::new(max_probes_in_flight),
            failing_permits: Semaphore::new(max_probes_in_flight.div_ceil(2)),
            starved: AtomicBool::new(false),
            metrics,
            events,
            epoch: Instant::now(),
        }
    }

    /// The first slot boundary at or after `due`.
    pub fn slotted(&self, due: Instant) -> Instant {
        let slot = PROBE_SLOT.as_nanos();
        let since = due.saturating_duration_since(self.epoch).as_nanos();
        let rounded = since.div_ceil(slot) * slot;
        self.epoch + Duration::from_nanos(rounded as u64)
    }

    /// Milliseconds from the epoch to `at`.
    pub fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A probes-in-flight permit within `wait`, counted in `probes_in_flight` while held;
    /// a `failing` target's also takes one of the failing share. The guard gives them back
    /// however the probe ends, cancelled by an eviction included. `None` when no slot
    /// came in time: the agent is late, which is no observation of the backend.
    pub(super) async fn in_flight(&self, wait: Duration, failing: bool) -> Option<InFlight<'_>> {
        let acquire = async {
            let failing = match failing {
                true => Some(self.failing_permits.acquire().await.ok()?),
                false => None,
            };
            let permit = self.permits.acquire().await.ok()?;
            Some((permit, failing))
        };
        let Ok(Some((permit, failing))) = tokio::time::timeout(wait, acquire).await else {
            if !self.starved.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    wait_ms = wait.as_millis() as u64,
                    "probes find no slot in time (max_probes_in_flight); their targets keep their last verdicts, and stale ones get no reply"
                );
            }
            return None;
        };
        if self.starved.swap(false, Ordering::Relaxed) {
            tracing::info!("probes find slots again");
        }
        self.metrics.probes.in_flight.inc();
        Some(InFlight {
            _permit: permit,
            _failing: failing,
            gauge: &self.metrics.probes.in_flight,
        })
    }

    /// The instant `millis` after the epoch.
    pub fn instant_at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }
}

/// A probe's slot among `max_probes_in_flight`; see [`Shared::in_flight`].
pub(super) struct InFlight<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    _failing: Option<tokio::sync::SemaphorePermit<'a>>,
    gauge: &'a prometheus::IntGauge,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Keeps `entry`'s health until its stop handle is triggered (eviction or shutdown).
pub async fn run(entry: Arc<Entry>, prober: Arc<dyn TargetProber>, shared: Arc<Shared>) {
    let stop = entry.stop_handle();
    tokio::select! {
        _ = stop.triggered() => {}
        _ = keep(&entry, prober.as_ref(), &shared) => {}
    }
}

/// When the next probe is due, and when the last one was (a reload plans from there).
struct Schedule {
    due: Instant,
    last_due: Instant,
}

/// Follows a stream while one is open, polls when due, waits in between; never returns
/// (it ends when `run` drops it, at any await).
async fn keep(entry: &Entry, prober: &dyn TargetProber, shared: &Shared) {
    let mut watch = WatchPlan::new();
    let now = Instant::now();
    let mut schedule = Schedule {
        due: now,
        last_due: now,
    };
    loop {
        if watch.is_due(&shared.config.load(), Instant::now()) {
            let session = watch::follow(entry, prober, shared).await;
            watch.ended(entry, &session);
            if session.opened {
                // A stream that was open is followed by a probe at once: the first
                // observation after it. An attempt that never opened leaves the poll
                // schedule as it was, so attempts add no observations to rise and fall.
                schedule.due = Instant::now();
            }
        }
        if Instant::now() >= schedule.due {
            poll(entry, prober, shared, &mut watch, &mut schedule).await;
        }
        wait(entry, shared, &watch, &mut schedule).await;
    }
}

/// One poll: a Check, counted as one observation, and the next one planned.
async fn poll(
    entry: &Entry,
    prober: &dyn TargetProber,
    shared: &Shared,
    watch: &mut WatchPlan,
    schedule: &mut Schedule,
) {
    // Read once per round, so a reload applies from the next probe on.
    let config = **shared.config.load();
    let Some((observation, started)) =
        probe_once(entry, prober, config.probe_deadline, shared).await
    else {
        // No slot in time: no observation, and the next poll an interval on.
        schedule.last_due = schedule.due;
        schedule.due = next_due(schedule.last_due, &config, Instant::now());
        return;
    };
    if matches!(observation.outcome, Outcome::Answered(_)) {
        watch.check_answered();
    }
    let lag = started.saturating_duration_since(schedule.due);
    shared.metrics.probes.poller_lag.observe(lag.as_secs_f64());
    entry.observe(observation, &config.probe_rules(), shared);
    schedule.last_due = schedule.due;
    schedule.due = next_due(schedule.last_due, &config, Instant::now());
}

/// Waits for the next probe; a reload re-plans the wait with the new interval, a refresh
/// request ends it, and so does the time to open a Watch stream again.
async fn wait(entry: &Entry, shared: &Shared, watch: &WatchPlan, schedule: &mut Schedule) {
    loop {
        entry.plan(shared.millis(schedule.due));
        let reload = shared.reconfigured.notified();
        let watch_at = watch.next_attempt(&shared.config.load());
        tokio::select! {
            _ = tokio::time::sleep_until(shared.slotted(schedule.due)) => return,
            _ = tokio::time::sleep_until(watch_at.unwrap_or(schedule.due)), if watch_at.is_some() => return,
            _ = entry.refresh_asked() => {
                schedule.due = Instant::now();
                return;
            }
            _ = reload => {
                let config = shared.config.load();
                schedule.due = replanned(schedule.last_due, schedule.due, &config);
                if watch.next_attempt(&config).is_some() {
                    return;
                }
            }
        }
    }
}

/// One Check within `deadline`, holding a probes-in-flight permit, counted in the metrics.
/// Returns what it found and when it started; `None` (and the entry marked) when no
/// permit came within `deadline` either.
pub(super) async fn probe_once(
    entry: &Entry,
    prober: &dyn TargetProber,
    deadline: Duration,
    shared: &Shared,
) -> Option<(Observation, Instant)> {
    let Some(in_flight) = shared.in_flight(deadline, entry.is_failing()).await else {
        entry.found_no_slot();
        return None;
    };
    let metrics = &shared.metrics;
    let started = Instant::now();
    let outcome = match tokio::time::timeout(deadline, prober.check()).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(ProbeError::Deadline(deadline)),
    };
    let latency = started.elapsed();
    drop(in_flight);
    metrics.probed(&outcome);
    metrics.probes.duration.observe(latency.as_secs_f64());
    let observation = Observation {
        outcome,
        at: started + latency,
        latency,
    };
    Some((observation, started))
}

/// The next probe is one jittered interval after the previous one was due; a probe that
/// overran its interval is followed at once rather than by a burst of catch-up probes.
fn next_due(previous: Instant, config: &PollerConfig, now: Instant) -> Instant {
    let factor = 1.0 + config.jitter * (fastrand::f64() * 2.0 - 1.0);
    let due = previous + config.interval.mul_f64(factor);
    due.max(now)
}

/// After a reload, a probe planned one interval after `last` is planned again with the
/// new interval; a probe due at once stays due.
fn replanned(last_probe_due: Instant, due: Instant, config: &PollerConfig) -> Instant {
    let now = Instant::now();
    if due <= now {
        return due;
    }
    next_due(last_probe_due, config, now)
}
