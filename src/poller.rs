//! One target's background schedule: probe every interval (with jitter), apply rise/fall
//! hysteresis, publish the new [`Health`], and log a transition once, when it happens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::events::{Events, Transition};
use crate::metrics::Metrics;
use crate::probe::{Outcome, ProbeError, ServingStatus, TargetProber, WatchEvent};
use crate::protocol::{Reply, Target, Verdict};
use crate::shutdown::Shutdown;

/// How often and how strictly targets are probed.
#[derive(Clone, Copy, Debug)]
pub struct PollerConfig {
    pub interval: Duration,
    /// Each wait is `interval` scaled by a random factor in `1 ± jitter`, so targets
    /// registered together spread out while the mean rate stays one probe per interval.
    pub jitter: f64,
    /// Consecutive healthy probes that turn a down target up.
    pub rise: u32,
    /// Consecutive failed probes that turn an up target down.
    pub fall: u32,
    /// Guard on one probe, above the prober's own timeouts.
    pub probe_deadline: Duration,
    pub replies: ReplyPolicy,
    /// Poll with Check, or follow a Health/Watch stream.
    pub mode: HealthMode,
    /// While watched, a Check this often confirms the backend still answers.
    pub liveness_interval: Duration,
    /// A status change a Watch reports applies at once (rise and fall of 1).
    pub trust_watch: bool,
}

/// How a target's health is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMode {
    Poll,
    Watch,
}

/// How outcomes other than SERVING and failures map onto HAProxy's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyPolicy {
    /// The verdict for NOT_SERVING: `down`, or `drain`/`maint` for graceful rollouts.
    pub not_serving: Verdict,
    /// The verdict for a server without the health service: `down` or `up`.
    pub unimplemented: Verdict,
}

impl ReplyPolicy {
    /// Whether the outcome counts as healthy for hysteresis.
    pub fn is_healthy(&self, outcome: &Outcome) -> bool {
        outcome.is_healthy() || self.unimplemented == Verdict::Up && is_unimplemented(outcome)
    }

    /// The verdict for an unhealthy state whose last probe gave `outcome`.
    fn unhealthy_verdict(&self, outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Answered(ServingStatus::NotServing) => self.not_serving,
            _ => Verdict::Down,
        }
    }
}

fn is_unimplemented(outcome: &Outcome) -> bool {
    outcome.is_unimplemented()
}

/// One registered target, the value of the oracle's cache: the latest health its poller
/// published and the handle that stops that poller.
pub struct Entry {
    pub target: Target,
    pub health: ArcSwapOption<Health>,
    /// Woken once, when the first probe result is published.
    pub first_result: Notify,
    pub stop: Shutdown,
    pub registered_at: Instant,
    /// Milliseconds after the oracle's epoch when the target was last asked about.
    pub last_asked_ms: AtomicU64,
    pub times_asked: AtomicU64,
    /// Milliseconds after the oracle's epoch when the next probe is due.
    pub next_due_ms: AtomicU64,
    /// Asks the poller to probe now instead of waiting out its interval.
    pub refresh: Notify,
    /// Woken after every published result.
    pub published: Notify,
    /// A Health/Watch stream is open for the target now (it is not polled).
    pub watched: std::sync::atomic::AtomicBool,
}

/// What every poller shares: the settings it reads each round, the reload signal, the
/// bound on probes in flight, the metrics and the state-change feed.
pub struct Shared {
    /// Swapped whole on reload; read once per probe.
    pub config: ArcSwap<PollerConfig>,
    /// Wakes waiting pollers after a reload so they re-plan with the new interval.
    pub reconfigured: Notify,
    /// `max_probes_in_flight`.
    pub permits: Semaphore,
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
}

/// The cached state of one target, replaced whole after every probe.
#[derive(Clone, Debug)]
pub struct Health {
    pub up: bool,
    pub last: Outcome,
    pub probed_at: Instant,
    pub latency: Duration,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// The latest unhealthy outcome. While a down target counts healthy probes back up
    /// to `rise`, it is answered with this outcome's verdict, so a drained backend stays
    /// drained (not down) until it is up again.
    pub last_failure: Option<Outcome>,
}

impl Health {
    /// The first result decides the state outright: there is nothing to smooth yet.
    pub fn first(
        last: Outcome,
        probed_at: Instant,
        latency: Duration,
        config: &PollerConfig,
    ) -> Health {
        let healthy = config.replies.is_healthy(&last);
        Health {
            up: healthy,
            consecutive_successes: healthy as u32,
            consecutive_failures: !healthy as u32,
            last_failure: (!healthy).then(|| last.clone()),
            last,
            probed_at,
            latency,
        }
    }

    /// The state after one more probe: counts move, and the verdict flips only after
    /// `rise` healthy or `fall` failed probes in a row.
    pub fn next(
        &self,
        last: Outcome,
        probed_at: Instant,
        latency: Duration,
        config: &PollerConfig,
    ) -> Health {
        let (rise, fall) = (config.rise, config.fall);
        let healthy = config.replies.is_healthy(&last);
        let (successes, failures) = if healthy {
            (self.consecutive_successes.saturating_add(1), 0)
        } else {
            (0, self.consecutive_failures.saturating_add(1))
        };
        let up = if self.up {
            failures < fall
        } else {
            successes >= rise
        };
        let last_failure = if healthy {
            self.last_failure.clone()
        } else {
            Some(last.clone())
        };
        Health {
            up,
            last_failure,
            last,
            probed_at,
            latency,
            consecutive_successes: successes,
            consecutive_failures: failures,
        }
    }

    /// The reply for HAProxy. While hysteresis holds a verdict against the last probe,
    /// the reason says how far the count has got.
    /// If the policy can answer `drain` or `maint`, every `up` also says `ready` so HAProxy
    /// lifts that state when the backend recovers.
    pub fn reply(&self, config: &PollerConfig) -> Reply {
        let policy = &config.replies;
        let healthy = policy.is_healthy(&self.last);
        let mut reason = self.last.reason();
        if healthy {
            reason.push(' ');
            reason.push_str(&format_latency(self.latency));
        }
        match (self.up, healthy) {
            (true, true) | (false, false) => {}
            (true, false) => reason.push_str(&format!(
                " ({}/{} to down)",
                self.consecutive_failures, config.fall
            )),
            (false, true) => reason.push_str(&format!(
                " ({}/{} to up)",
                self.consecutive_successes, config.rise
            )),
        }
        if self.up {
            Reply {
                ready: policy.not_serving != Verdict::Down,
                ..Reply::up(reason)
            }
        } else {
            let failure = self.last_failure.as_ref().unwrap_or(&self.last);
            Reply::new(policy.unhealthy_verdict(failure), reason)
        }
    }
}

/// `0.7ms` below 10 ms, whole milliseconds above.
pub fn format_latency(latency: Duration) -> String {
    let ms = latency.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// Shortest and longest wait before a failed Watch stream is opened again (jittered).
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// When a target in watch mode opens its next stream.
struct WatchPlan {
    /// The backend has no Health/Watch: it is polled for as long as it is registered.
    unimplemented: bool,
    backoff: Duration,
    retry_at: Instant,
    /// A liveness Check failed while watched: poll until a Check answers again.
    until_check_answers: bool,
}

impl WatchPlan {
    fn new() -> WatchPlan {
        WatchPlan {
            unimplemented: false,
            backoff: WATCH_BACKOFF_MIN,
            retry_at: Instant::now(),
            until_check_answers: false,
        }
    }

    /// When the next stream may be opened, if the target is to be watched at all.
    fn next_attempt(&self, config: &PollerConfig) -> Option<Instant> {
        let watching = config.mode == HealthMode::Watch;
        (watching && !self.unimplemented && !self.until_check_answers).then_some(self.retry_at)
    }

    fn failed(&mut self, delivered: bool, liveness: bool) {
        if delivered {
            self.backoff = WATCH_BACKOFF_MIN;
        }
        let jitter = 0.8 + fastrand::f64() * 0.4;
        self.retry_at = Instant::now() + self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
        self.until_check_answers |= liveness;
    }
}

/// Probes `entry` until its stop handle is triggered (eviction or shutdown). In watch mode
/// it follows a Health/Watch stream instead while one is open, and polls in the gaps.
/// Never runs two probes of one target together.
pub async fn run(entry: Arc<Entry>, prober: Arc<dyn TargetProber>, shared: Arc<Shared>) {
    let stop = entry.stop.clone();
    let mut watch = WatchPlan::new();
    let mut due = Instant::now();
    loop {
        let watch_at = watch.next_attempt(&shared.config.load());
        if watch_at.is_some_and(|at| at <= Instant::now()) {
            match watch_session(&entry, prober.as_ref(), &shared, &stop).await {
                SessionEnd::Stopped => return,
                SessionEnd::ModeChanged => {}
                SessionEnd::Unimplemented => {
                    tracing::info!(target_line = %entry.target, "backend has no Health/Watch; polling it with Check");
                    watch.unimplemented = true;
                }
                SessionEnd::Failed {
                    error,
                    delivered,
                    liveness,
                } => {
                    tracing::debug!(target_line = %entry.target, %error, "watch stream ended; polling until it is open again");
                    watch.failed(delivered, liveness);
                }
            }
            // Polling covers the gap, from now.
            due = Instant::now();
        }
        // Read once per round, so a reload applies from the next probe on.
        let deadline = shared.config.load().probe_deadline;
        let probed = tokio::select! {
            _ = stop.triggered() => return,
            probed = probe_once(prober.as_ref(), deadline, &shared) => probed,
        };
        let (outcome, started, latency) = probed;
        if matches!(outcome, Outcome::Answered(_)) {
            watch.until_check_answers = false;
        }
        shared
            .metrics
            .poller_lag
            .observe(started.saturating_duration_since(due).as_secs_f64());
        publish(&entry, outcome, started + latency, latency, &shared, false);
        let previous = due;
        due = next_due(previous, &shared.config.load(), Instant::now());
        // Wait for the next probe; a reload re-plans the wait with the new interval, a
        // refresh request ends it, and so does the time to open a Watch stream again.
        loop {
            entry
                .next_due_ms
                .store(shared.millis(due), Ordering::Relaxed);
            let reload = shared.reconfigured.notified();
            let watch_at = watch.next_attempt(&shared.config.load());
            tokio::select! {
                _ = stop.triggered() => return,
                _ = tokio::time::sleep_until(shared.slotted(due)) => break,
                _ = tokio::time::sleep_until(watch_at.unwrap_or(due)), if watch_at.is_some() => break,
                _ = entry.refresh.notified() => {
                    due = Instant::now();
                    break;
                }
                _ = reload => {
                    due = next_due(previous, &shared.config.load(), Instant::now());
                    if watch.next_attempt(&shared.config.load()).is_some() {
                        break;
                    }
                }
            }
        }
    }
}

/// How a Watch session ended.
enum SessionEnd {
    Stopped,
    /// A reload switched the target to polling.
    ModeChanged,
    /// The backend answered Watch with UNIMPLEMENTED.
    Unimplemented,
    Failed {
        error: ProbeError,
        /// The stream had delivered statuses (so it had worked: the backoff starts over).
        delivered: bool,
        /// A liveness Check failed, not the stream.
        liveness: bool,
    },
}

/// Marks the entry watched, and counts the stream, while it lives.
struct Watching<'a> {
    entry: &'a Entry,
    shared: &'a Shared,
}

impl<'a> Watching<'a> {
    fn new(entry: &'a Entry, shared: &'a Shared) -> Watching<'a> {
        entry.watched.store(true, Ordering::Relaxed);
        shared.metrics.watch_streams_active.inc();
        Watching { entry, shared }
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.entry.watched.store(false, Ordering::Relaxed);
        self.shared.metrics.watch_streams_active.dec();
    }
}

/// Follows one Watch stream: every status it sends is published (at once with
/// `trust_watch`, else counted through rise/fall, one count per interval while it holds),
/// and a Check every `liveness_interval` confirms the backend still answers.
async fn watch_session(
    entry: &Entry,
    prober: &dyn TargetProber,
    shared: &Shared,
    stop: &Shutdown,
) -> SessionEnd {
    let unimplemented = |error: &ProbeError| is_unimplemented(&Outcome::Failed(error.clone()));
    let deadline = shared.config.load().probe_deadline;
    // Opening the stream and its first message count as one probe.
    let opened = {
        let _permit = shared
            .permits
            .acquire()
            .await
            .expect("the probe semaphore is never closed");
        shared.metrics.probes_in_flight.inc();
        let started = Instant::now();
        let opening = async {
            let mut stream = prober.watch().await?;
            let first = stream.next().await;
            Ok::<_, ProbeError>((stream, first))
        };
        let opened = tokio::select! {
            _ = stop.triggered() => None,
            opened = tokio::time::timeout(deadline, opening) => Some(opened),
        };
        shared.metrics.probes_in_flight.dec();
        opened.map(|opened| (opened, started, started.elapsed()))
    };
    let Some((opened, started, mut latency)) = opened else {
        return SessionEnd::Stopped;
    };
    let failed = |error: ProbeError, delivered: bool| SessionEnd::Failed {
        error,
        delivered,
        liveness: false,
    };
    let (mut stream, first) = match opened {
        Err(_) => return failed(ProbeError::Deadline(deadline), false),
        Ok(Err(error)) if unimplemented(&error) => return SessionEnd::Unimplemented,
        Ok(Err(error)) => return failed(error, false),
        Ok(Ok(opened)) => opened,
    };
    let mut last = match first {
        WatchEvent::Status(status) => status,
        WatchEvent::Ended(error) if unimplemented(&error) => return SessionEnd::Unimplemented,
        WatchEvent::Ended(error) => return failed(error, false),
    };
    let outcome = Outcome::Answered(last);
    shared.metrics.probed(&outcome);
    shared.metrics.probe_duration.observe(latency.as_secs_f64());
    let trust = shared.config.load().trust_watch;
    publish(entry, outcome, started + latency, latency, shared, trust);
    let _watching = Watching::new(entry, shared);
    let interval = shared.config.load().interval;
    let mut next_tick = Instant::now() + interval;
    let mut liveness_at = Instant::now() + shared.config.load().liveness_interval;
    loop {
        // Registered before the settings are read, so no reload falls between the two.
        let reload = shared.reconfigured.notified();
        let config = **shared.config.load();
        if config.mode != HealthMode::Watch {
            return SessionEnd::ModeChanged;
        }
        entry
            .next_due_ms
            .store(shared.millis(next_tick.min(liveness_at)), Ordering::Relaxed);
        let check_now = tokio::select! {
            _ = stop.triggered() => return SessionEnd::Stopped,
            event = stream.next() => {
                match event {
                    WatchEvent::Status(status) => {
                        last = status;
                        let now = Instant::now();
                        publish(entry, Outcome::Answered(status), now, latency, shared, config.trust_watch);
                    }
                    WatchEvent::Ended(error) if unimplemented(&error) => return SessionEnd::Unimplemented,
                    WatchEvent::Ended(error) => return failed(error, true),
                }
                false
            }
            // The stream is open and still says `last`: that is this interval's
            // observation (it keeps the answer fresh, and counts toward rise/fall).
            _ = tokio::time::sleep_until(shared.slotted(next_tick)) => {
                publish(entry, Outcome::Answered(last), Instant::now(), latency, shared, false);
                next_tick = (next_tick + config.interval).max(Instant::now());
                false
            }
            _ = tokio::time::sleep_until(shared.slotted(liveness_at)) => true,
            _ = entry.refresh.notified() => true,
            _ = reload => {
                if shared.config.load().mode != HealthMode::Watch {
                    return SessionEnd::ModeChanged;
                }
                false
            }
        };
        if check_now {
            let (outcome, started, took) = tokio::select! {
                _ = stop.triggered() => return SessionEnd::Stopped,
                probed = probe_once(prober, config.probe_deadline, shared) => probed,
            };
            match outcome {
                Outcome::Failed(error) => {
                    return SessionEnd::Failed {
                        error,
                        delivered: true,
                        liveness: true,
                    };
                }
                answered => {
                    latency = took;
                    publish(entry, answered, started + took, took, shared, false);
                }
            }
            liveness_at = Instant::now() + config.liveness_interval;
        }
    }
}

async fn probe_once(
    prober: &dyn TargetProber,
    deadline: Duration,
    shared: &Shared,
) -> (Outcome, Instant, Duration) {
    let _permit = shared
        .permits
        .acquire()
        .await
        .expect("the probe semaphore is never closed");
    let metrics = &shared.metrics;
    metrics.probes_in_flight.inc();
    let started = Instant::now();
    let outcome = match tokio::time::timeout(deadline, prober.check()).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Failed(ProbeError::Deadline(deadline)),
    };
    let latency = started.elapsed();
    metrics.probes_in_flight.dec();
    metrics.probed(&outcome);
    metrics.probe_duration.observe(latency.as_secs_f64());
    (outcome, started, latency)
}

/// The next probe is one jittered interval after the previous one was due; a probe that
/// overran its interval is followed at once rather than by a burst of catch-up probes.
fn next_due(previous: Instant, config: &PollerConfig, now: Instant) -> Instant {
    let factor = 1.0 + config.jitter * (fastrand::f64() * 2.0 - 1.0);
    let due = previous + config.interval.mul_f64(factor);
    due.max(now)
}

/// Publishes a new health for the entry. A `trusted` outcome (a Watch status with
/// `trust_watch`) applies at once: rise and fall of 1.
fn publish(
    entry: &Entry,
    outcome: Outcome,
    probed_at: Instant,
    latency: Duration,
    shared: &Shared,
    trusted: bool,
) {
    let mut config = **shared.config.load();
    if trusted {
        config.rise = 1;
        config.fall = 1;
    }
    let previous = entry.health.load_full();
    let health = match previous.as_deref() {
        None => Health::first(outcome, probed_at, latency, &config),
        Some(previous) => previous.next(outcome, probed_at, latency, &config),
    };
    let changed = previous.as_deref().map(|p| p.up) != Some(health.up);
    if changed {
        let from = match previous.as_deref() {
            None => "new",
            Some(p) if p.up => "up",
            Some(_) => "down",
        };
        let to = if health.up { "up" } else { "down" };
        let reason = health.last.reason();
        tracing::info!(target_line = %entry.target, from, to, reason = %reason, "backend state changed");
        shared.metrics.transition(health.up);
        shared.events.publish(Transition {
            target: entry.target.clone(),
            from,
            to,
            reason,
            at: SystemTime::now(),
        });
    }
    entry.health.store(Some(Arc::new(health)));
    if previous.is_none() {
        entry.first_result.notify_waiters();
    }
    entry.published.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(not_serving: Verdict, unimplemented: Verdict) -> PollerConfig {
        PollerConfig {
            interval: Duration::from_secs(1),
            jitter: 0.0,
            rise: 2,
            fall: 3,
            probe_deadline: Duration::from_secs(3),
            replies: ReplyPolicy {
                not_serving,
                unimplemented,
            },
            mode: HealthMode::Poll,
            liveness_interval: Duration::from_secs(10),
            trust_watch: false,
        }
    }

    fn serving() -> Outcome {
        Outcome::Answered(ServingStatus::Serving)
    }

    fn refused() -> Outcome {
        Outcome::Failed(ProbeError::ConnectionRefused)
    }

    /// Feeds outcomes through hysteresis (rise 2, fall 3) and compares each reply line.
    fn check(outcomes: &[Outcome], expected: &[&str]) {
        check_with(config(Verdict::Down, Verdict::Down), outcomes, expected)
    }

    fn check_with(config: PollerConfig, outcomes: &[Outcome], expected: &[&str]) {
        let now = Instant::now();
        let latency = Duration::from_micros(700);
        let mut health: Option<Health> = None;
        let mut got = Vec::new();
        for outcome in outcomes {
            let next = match &health {
                None => Health::first(outcome.clone(), now, latency, &config),
                Some(h) => h.next(outcome.clone(), now, latency, &config),
            };
            got.push(next.reply(&config).to_line().trim_end().to_string());
            health = Some(next);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn first_result_decides_then_fall_needs_three_failures() {
        check(
            &[serving(), refused(), refused(), refused(), refused()],
            &[
                "up #SERVING 0.7ms",
                "up #connection refused (1/3 to down)",
                "up #connection refused (2/3 to down)",
                "down #connection refused",
                "down #connection refused",
            ],
        );
    }

    #[test]
    fn rise_needs_two_successes_and_a_failure_resets_the_count() {
        check(
            &[refused(), serving(), refused(), serving(), serving()],
            &[
                "down #connection refused",
                "down #SERVING 0.7ms (1/2 to up)",
                "down #connection refused",
                "down #SERVING 0.7ms (1/2 to up)",
                "up #SERVING 0.7ms",
            ],
        );
    }

    #[test]
    fn not_serving_is_a_failure_with_its_own_reason() {
        check(
            &[Outcome::Answered(ServingStatus::NotServing)],
            &["down #NOT_SERVING"],
        );
    }

    #[test]
    fn not_serving_can_drain_and_up_then_says_ready() {
        let not_serving = Outcome::Answered(ServingStatus::NotServing);
        let drain = config(Verdict::Drain, Verdict::Down);
        check_with(
            drain,
            &[not_serving.clone(), refused(), serving(), serving()],
            &[
                "drain #NOT_SERVING",
                "down #connection refused",
                "down #SERVING 0.7ms (1/2 to up)",
                "up ready #SERVING 0.7ms",
            ],
        );
        // Recovering from NOT_SERVING stays drained (never down) until `rise`.
        check_with(
            drain,
            &[not_serving.clone(), serving(), serving()],
            &[
                "drain #NOT_SERVING",
                "drain #SERVING 0.7ms (1/2 to up)",
                "up ready #SERVING 0.7ms",
            ],
        );
        let maint = config(Verdict::Maint, Verdict::Down);
        check_with(maint, &[not_serving], &["maint #NOT_SERVING"]);
    }

    #[test]
    fn unimplemented_can_count_as_up() {
        let unimplemented = Outcome::Failed(ProbeError::Status {
            code: crate::probe::Code::Unimplemented,
            message: String::new(),
        });
        check_with(
            config(Verdict::Down, Verdict::Up),
            std::slice::from_ref(&unimplemented),
            &["up #grpc UNIMPLEMENTED 0.7ms"],
        );
        check(&[unimplemented], &["down #grpc UNIMPLEMENTED"]);
    }

    #[test]
    fn latency_format() {
        assert_eq!(format_latency(Duration::from_micros(700)), "0.7ms");
        assert_eq!(format_latency(Duration::from_micros(9_940)), "9.9ms");
        assert_eq!(format_latency(Duration::from_millis(12)), "12ms");
    }
}
