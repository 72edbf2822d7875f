//! One registered target, the value of the oracle's cache: the health its poller last
//! published, how it is asked about, and the handle that stops its poller. Its fields are
//! private: the poller changes them through `observe`, `settle` and friends, the cache
//! reads them, and everyone else sees a [`Snapshot`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::AgentFault;
use super::config::HealthMode;
use super::health::{Health, Observation, Rules};
use super::panic::Membership;
use super::poll::Shared;
use crate::events::{State, Transition};
use crate::metrics::Metrics;
use crate::probe::{Heard, LoadWeight, TargetProber};
use crate::protocol::{Reply, Target};
use crate::shutdown::Shutdown;
use crate::weight::LoadReport;

pub struct Entry {
    target: Target,
    /// Probes the target; also says what its backend's load reports give.
    prober: Arc<dyn TargetProber>,
    health: ArcSwapOption<Health>,
    /// Woken once, when the first result is published.
    first_result: Notify,
    /// Woken after every published result.
    published: Notify,
    /// Stops the poller (eviction, shutdown).
    stop: Shutdown,
    registered_at: Instant,
    /// Milliseconds after the oracle's epoch when the target was last asked about.
    last_asked_ms: AtomicU64,
    times_asked: AtomicU64,
    /// Milliseconds after the oracle's epoch when the poller next looks (0: not planned).
    next_due_ms: AtomicU64,
    /// Asks the poller to probe now instead of waiting.
    refresh: Notify,
    /// A Health/Watch stream is open for the target now (it is not polled).
    watched: AtomicBool,
    /// While watched: when the backend was last heard on the stream's connection.
    heard: ArcSwapOption<Heard>,
    /// When the backend was last heard on the connection of a stream that has ended:
    /// milliseconds after `registered_at`, plus one (0: never). A target whose stream
    /// ends is as fresh as its connection was.
    heard_before_ms: AtomicU64,
    /// The poller's latest attempt found no probe slot within its deadline: the agent's
    /// lateness, not the backend's.
    no_slot: AtomicBool,
    /// Its place in its panic group.
    membership: Membership,
}

/// Up, down, or not known yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Up,
    Down,
}

impl Status {
    /// The name `/backends` shows and filters on.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Up => "up",
            Status::Down => "down",
        }
    }
}

/// A registered target as it is now, in plain values.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub target: Target,
    pub status: Status,
    /// Watch while a stream is open for it, else poll.
    pub mode: HealthMode,
    /// The last observation's answer (`SERVING`, ...), if it was one.
    pub serving_status: Option<String>,
    /// What a request for it is answered now; `None` while the first probe is pending
    /// or when the agent's own fault leaves it nothing to say.
    pub reply: Option<Reply>,
    /// The agent's own fault that leaves it without a reply now (`stale: ...`).
    pub agent_fault: Option<String>,
    /// Its panic group's name.
    pub group: String,
    /// Why its verdict is held now, if its group or the agent panics.
    pub panic: Option<String>,
    pub last_reason: Option<String>,
    pub last_probe_at: Option<SystemTime>,
    pub last_probe_latency: Option<Duration>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub times_asked: u64,
    pub registered_at: SystemTime,
    /// `None` if never asked (only registered by an admin action).
    pub last_asked_at: Option<SystemTime>,
    /// The poller's next probe, or a held status's flip; `None` if nothing is planned.
    pub next_probe_at: Option<SystemTime>,
    /// What the backend's load reports say, for a target that wants a weight.
    pub load: Option<LoadSnapshot>,
}

/// A weighted target's load reports as they are now.
#[derive(Clone, Debug)]
pub struct LoadSnapshot {
    /// `reporting`, `waiting` (no report yet) or `no_reports` (the backend has none).
    pub state: &'static str,
    /// The weight answered while up, in percent.
    pub weight: Option<u16>,
    pub report: Option<LoadReport>,
    pub report_age: Option<Duration>,
}

impl LoadSnapshot {
    fn of(weight: LoadWeight, now: Instant) -> Option<LoadSnapshot> {
        let (state, weight, report, age) = match weight {
            LoadWeight::Off => return None,
            LoadWeight::NoReports => ("no_reports", None, None, None),
            LoadWeight::Waiting => ("waiting", None, None, None),
            LoadWeight::Percent {
                percent,
                report,
                at,
            } => (
                "reporting",
                Some(percent),
                Some(report),
                Some(now.saturating_duration_since(at)),
            ),
        };
        Some(LoadSnapshot {
            state,
            weight,
            report,
            report_age: age,
        })
    }
}

impl Entry {
    pub(super) fn new(
        target: Target,
        prober: Arc<dyn TargetProber>,
        stop: Shutdown,
        membership: Membership,
    ) -> Entry {
        Entry {
            target,
            prober,
            health: ArcSwapOption::empty(),
            first_result: Notify::new(),
            published: Notify::new(),
            stop,
            registered_at: Instant::now(),
            last_asked_ms: AtomicU64::new(0),
            times_asked: AtomicU64::new(0),
            next_due_ms: AtomicU64::new(0),
            refresh: Notify::new(),
            watched: AtomicBool::new(false),
            heard: ArcSwapOption::empty(),
            heard_before_ms: AtomicU64::new(0),
            no_slot: AtomicBool::new(false),
            membership,
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub(super) fn prober(&self) -> Arc<dyn TargetProber> {
        Arc::clone(&self.prober)
    }

    pub(super) fn health(&self) -> Option<Arc<Health>> {
        self.health.load_full()
    }

    pub(super) fn stop_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    pub(super) fn stop(&self) {
        self.stop.trigger();
    }

    pub(super) fn asked(&self, millis: u64) {
        self.times_asked.fetch_add(1, Ordering::Relaxed);
        self.last_asked_ms.store(millis, Ordering::Relaxed);
    }

    /// Plans the poller's next look at `millis` after the epoch; 0 plans none.
    pub(super) fn plan(&self, millis: u64) {
        self.next_due_ms.store(millis, Ordering::Relaxed);
    }

    /// The poller's latest attempt found no probe slot in time.
    pub(super) fn found_no_slot(&self) {
        self.no_slot.store(true, Ordering::Relaxed);
    }

    pub(super) fn lacks_slot(&self) -> bool {
        self.no_slot.load(Ordering::Relaxed)
    }

    /// Whether the backend has not answered yet, or its latest observation failed to get
    /// an answer: such targets share a smaller budget of probe slots, so those that never
    /// answer cannot take every slot from those that do.
    pub(super) fn is_failing(&self) -> bool {
        self.health
            .load()
            .as_deref()
            .is_none_or(|health| health.last.is_transport_failure())
    }

    /// Why its verdict is held now, if its group or the agent panics.
    pub(super) fn panic(&self) -> Option<String> {
        self.membership.panic()
    }

    pub(super) fn ask_refresh(&self) {
        self.refresh.notify_one();
    }

    pub(super) fn refresh_asked(&self) -> Notified<'_> {
        self.refresh.notified()
    }

    pub(super) fn first_result(&self) -> Notified<'_> {
        self.first_result.notified()
    }

    pub(super) fn published(&self) -> Notified<'_> {
        self.published.notified()
    }

    /// How long the latest answer has gone unconfirmed at `now`, if longer than it may.
    /// A polled target's answer is as fresh as its last probe (`limit`); a watched one's
    /// as its stream's connection (`watched_limit`: statuses come only on a change), and
    /// so it stays after the stream ends, until the next observation; a stream that
    /// cannot say is fresh while it is open.
    pub(super) fn is_stale(
        &self,
        now: Instant,
        limit: Duration,
        watched_limit: Duration,
    ) -> Option<Duration> {
        let health = self.health.load();
        let probed = health
            .as_deref()
            .map_or(self.registered_at, |health| health.probed_at);
        let mut last = probed;
        let mut fresh_until = probed + limit;
        let mut heard = self
            .heard_before_ms
            .load(Ordering::Relaxed)
            .checked_sub(1)
            .map(|millis| self.registered_at + Duration::from_millis(millis));
        if self.watched.load(Ordering::Relaxed) {
            match self.heard.load().as_deref() {
                Some(now_heard) => heard = Some(now_heard.at()),
                None => return None,
            }
        }
        if let Some(heard) = heard {
            last = last.max(heard);
            fresh_until = fresh_until.max(heard + watched_limit);
        }
        (now > fresh_until).then(|| now.saturating_duration_since(last))
    }

    /// Counts one more observation under `rules` and publishes the new state.
    pub(super) fn observe(&self, observation: Observation, rules: &Rules, shared: &Shared) {
        // A flip a held status earned before this observation happened then, even if its
        // timer has not published it yet (replies already answer it).
        self.settle(observation.at, shared);
        let previous = self.health.load_full();
        let mut health = match previous.as_deref() {
            None => Health::first(observation, rules),
            Some(previous) => previous.next(observation, rules),
        };
        // While its group panics, a target that cannot be reached keeps the verdict its
        // outage began from: no flip, no transition logged, and no rise to count after;
        // once the panic is over, its fall counts afresh.
        if self.membership.panic().is_some() {
            health.hold_for_panic();
        } else {
            health.release_from_panic();
        }
        self.publish(previous.as_deref(), health, shared);
    }

    /// Publishes the flip a held status has earned by `now`, if it has.
    pub(super) fn settle(&self, now: Instant, shared: &Shared) {
        let previous = self.health.load_full();
        if let Some(health) = previous.as_deref().and_then(|health| health.settled(now)) {
            self.publish(previous.as_deref(), health, shared);
        }
    }

    /// Stores the new state, and logs, counts and feeds a change of state once, when it
    /// happens.
    fn publish(&self, previous: Option<&Health>, health: Health, shared: &Shared) {
        if previous.map(|previous| previous.up) != Some(health.up) {
            let from = match previous {
                None => State::New,
                Some(previous) => State::of(previous.up),
            };
            let to = State::of(health.up);
            let reason = health.last.reason();
            tracing::info!(target_line = %self.target, from = from.as_str(), to = to.as_str(), reason = %reason, "backend state changed");
            shared.metrics.transition(health.up);
            shared.events.publish(Transition {
                target: self.target.clone(),
                from,
                to,
                reason,
                at: SystemTime::now(),
            });
        }
        self.membership.set_failing(health.last.is_unreached());
        self.no_slot.store(false, Ordering::Relaxed);
        self.health.store(Some(Arc::new(health)));
        if previous.is_none() {
            self.first_result.notify_waiters();
        }
        self.published.notify_waiters();
    }

    /// The target as it is at `now`; `answer` is what the oracle would answer.
    pub(super) fn snapshot(
        &self,
        now: Instant,
        shared: &Shared,
        answer: Option<Result<Reply, AgentFault>>,
    ) -> Snapshot {
        let (reply, agent_fault) = match answer {
            None => (None, None),
            Some(Ok(reply)) => (Some(reply), None),
            Some(Err(fault)) => (None, Some(fault.reason)),
        };
        let health = self.health.load_full();
        let health = health.as_deref();
        let times_asked = self.times_asked.load(Ordering::Relaxed);
        let next_due = self.next_due_ms.load(Ordering::Relaxed);
        let (consecutive_successes, consecutive_failures) =
            health.map_or((0, 0), |health| health.consecutive(now));
        let wall = |at: Instant| wall_clock(at, now);
        Snapshot {
            target: self.target.clone(),
            status: match health {
                None => Status::Pending,
                Some(health) if health.up => Status::Up,
                Some(_) => Status::Down,
            },
            mode: if self.watched.load(Ordering::Relaxed) {
                HealthMode::Watch
            } else {
                HealthMode::Poll
            },
            serving_status: health
                .and_then(Health::serving_status)
                .map(|status| status.to_string()),
            reply,
            agent_fault,
            group: self.membership.group_name().to_string(),
            panic: self.membership.panic(),
            last_reason: health.map(|health| health.last.reason()),
            last_probe_at: health.map(|health| wall(health.probed_at)),
            last_probe_latency: health.map(|health| health.latency),
            consecutive_successes,
            consecutive_failures,
            times_asked,
            registered_at: wall(self.registered_at),
            last_asked_at: (times_asked > 0)
                .then(|| wall(shared.instant_at(self.last_asked_ms.load(Ordering::Relaxed)))),
            next_probe_at: (next_due > 0).then(|| wall(shared.instant_at(next_due))),
            load: LoadSnapshot::of(self.prober.weight(now), now),
        }
    }
}

/// The wall-clock time of a monotonic instant (past or future), as seen at `now`.
fn wall_clock(at: Instant, now: Instant) -> SystemTime {
    let wall = SystemTime::now();
    if at <= now {
        wall - (now - at)
    } else {
        wall + (at - now)
    }
}

/// Marks the entry watched, and counts the stream, while it lives.
pub(super) struct Watching<'a> {
    entry: &'a Entry,
    metrics: &'a Metrics,
}

impl<'a> Watching<'a> {
    pub(super) fn new(
        entry: &'a Entry,
        metrics: &'a Metrics,
        heard: Option<Arc<Heard>>,
    ) -> Watching<'a> {
        entry.heard.store(heard);
        entry.watched.store(true, Ordering::Relaxed);
        metrics.probes.watch_streams_active.inc();
        Watching { entry, metrics }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let entry = self.entry;
        // Kept before the target stops counting as watched, so no reply in between finds
        // it older than its connection was.
        if let Some(heard) = entry.heard.load().as_deref() {
            let since = heard.at().saturating_duration_since(entry.registered_at);
            let millis = u64::try_from(since.as_millis()).unwrap_or(u64::MAX - 1);
            entry.heard_before_ms.store(millis + 1, Ordering::Relaxed);
        }
        entry.watched.store(false, Ordering::Relaxed);
        entry.heard.store(None);
        self.metrics.probes.watch_streams_active.dec();
    }
}
