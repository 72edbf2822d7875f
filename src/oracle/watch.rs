//! A target followed by a Health/Watch stream: every status the stream sends is an
//! observation, counted by the time it holds (see [`super::health`]), so a target whose
//! status holds costs no wake-up at all. The only timer is a pending flip's. Whether the
//! backend still answers is the probe layer's business, once per connection (its liveness
//! Check): when that fails the connection closes, the stream ends, and the target is
//! polled until a stream is open again.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{HealthMode, PollerConfig};
use super::entry::{Entry, Watching};
use super::health::Observation;
use super::poll::{Shared, probe_once};
use crate::probe::{Outcome, ProbeError, ServingStatus, TargetProber, WatchEvent, WatchStream};

/// Shortest and longest wait before a failed Watch stream is opened again (jittered).
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// When a target in watch mode opens its next stream.
pub(super) struct WatchPlan {
    /// The backend has no Health/Watch: it is polled for as long as it is registered.
    unimplemented: bool,
    backoff: Duration,
    retry_at: Instant,
    /// A Check failed while watched: poll until a Check answers again.
    until_check_answers: bool,
}

/// How following a stream ended.
pub(super) enum Ended {
    /// A reload switched the target to polling.
    ModeChanged,
    /// The backend answered Watch with UNIMPLEMENTED.
    Unimplemented,
    /// The stream failed to open, or ended.
    Failed(ProbeError),
    /// A Check asked for while watched (a refresh) failed.
    CheckFailed(ProbeError),
    /// No probe slot came in time to open it: the agent's lateness, no observation.
    NoSlot,
}

/// One attempt at following a stream.
pub(super) struct Session {
    pub end: Ended,
    /// The stream opened and its first status was published.
    pub opened: bool,
}

impl WatchPlan {
    pub(super) fn new() -> WatchPlan {
        WatchPlan {
            unimplemented: false,
            backoff: WATCH_BACKOFF_MIN,
            retry_at: Instant::now(),
            until_check_answers: false,
        }
    }

    /// When the next stream may be opened, if the target is to be watched at all.
    pub(super) fn next_attempt(&self, config: &PollerConfig) -> Option<Instant> {
        let watching = config.mode == HealthMode::Watch;
        (watching && !self.unimplemented && !self.until_check_answers).then_some(self.retry_at)
    }

    pub(super) fn is_due(&self, config: &PollerConfig, now: Instant) -> bool {
        self.next_attempt(config).is_some_and(|at| at <= now)
    }

    pub(super) fn check_answered(&mut self) {
        self.until_check_answers = false;
    }

    /// Plans the next attempt after `session`.
    pub(super) fn ended(&mut self, entry: &Entry, session: &Session) {
        let target = entry.target();
        match &session.end {
            Ended::ModeChanged => {}
            Ended::Unimplemented => {
                tracing::info!(target_line = %target, "backend has no Health/Watch; polling it with Check");
                self.unimplemented = true;
            }
            Ended::Failed(error) => {
                tracing::debug!(target_line = %target, %error, "watch stream ended; polling until it is open again");
                self.back_off(session.opened);
            }
            // Nothing failed: the agent was busy. Try again soon, without growing the
            // backoff a failing stream earns.
            Ended::NoSlot => self.retry_at = Instant::now() + WATCH_BACKOFF_MIN,
            Ended::CheckFailed(error) => {
                tracing::debug!(target_line = %target, %error, "check failed while watched; polling until a check answers");
                self.back_off(session.opened);
                self.until_check_answers = true;
            }
        }
    }

    /// The next attempt after a backoff, which starts over after a stream that worked.
    fn back_off(&mut self, worked: bool) {
        if worked {
            self.backoff = WATCH_BACKOFF_MIN;
        }
        let jitter = 0.8 + fastrand::f64() * 0.4;
        self.retry_at = Instant::now() + self.backoff.mul_f64(jitter);
        self.backoff = (self.backoff * 2).min(WATCH_BACKOFF_MAX);
    }
}

/// Opens a stream and follows it until it ends, the mode changes, or a Check asked for
/// while watched fails. Cancel safe: dropping it closes the stream.
pub(super) async fn follow(entry: &Entry, prober: &dyn TargetProber, shared: &Shared) -> Session {
    let config = **shared.config.load();
    let (mut stream, first) = match open(entry, prober, config.probe_deadline, shared).await {
        Ok(opened) => opened,
        Err(end) => {
            return Session { end, opened: false };
        }
    };
    let latency = first.latency;
    let _watching = Watching::new(entry, &shared.metrics, stream.heard());
    entry.observe(first, &config.watch_rules(), shared);
    let end = loop {
        // Registered before the settings are read, so no reload falls between the two.
        let reload = shared.reconfigured.notified();
        let config = **shared.config.load();
        if config.mode != HealthMode::Watch {
            break Ended::ModeChanged;
        }
        let flip_at = entry.health().and_then(|health| health.flip_due());
        entry.plan(flip_at.map_or(0, |at| shared.millis(at).max(1)));
        tokio::select! {
            event = stream.next() => match event {
                WatchEvent::Status(status) => {
                    let observation = Observation {
                        outcome: Outcome::Answered(status),
                        at: Instant::now(),
                        latency,
                    };
                    entry.observe(observation, &config.watch_rules(), shared);
                }
                WatchEvent::Ended(error) if error.is_unimplemented() => break Ended::Unimplemented,
                WatchEvent::Ended(error) => break Ended::Failed(error),
            },
            _ = tokio::time::sleep_until(shared.slotted(flip_at.unwrap_or_else(Instant::now))), if flip_at.is_some() => {
                entry.settle(Instant::now(), shared);
            }
            _ = entry.refresh_asked() => {
                let Some((observation, _)) = probe_once(entry, prober, config.probe_deadline, shared).await else {
                    continue;
                };
                if let Outcome::Failed(error) = observation.outcome {
                    break Ended::CheckFailed(error);
                }
                entry.observe(observation, &config.watch_rules(), shared);
            }
            _ = reload => {}
        }
    };
    Session { end, opened: true }
}

/// Opens a stream and reads its first status, as one probe: within the probe deadline,
/// holding a probes-in-flight permit, counted in the metrics.
async fn open(
    entry: &Entry,
    prober: &dyn TargetProber,
    deadline: Duration,
    shared: &Shared,
) -> Result<(WatchStream, Observation), Ended> {
    let Some(in_flight) = shared.in_flight(deadline, entry.is_failing()).await else {
        entry.found_no_slot();
        return Err(Ended::NoSlot);
    };
    let metrics = &shared.metrics;
    let started = Instant::now();
    let opening = async {
        let mut stream = prober.watch().await?;
        let first = stream.next().await;
        Ok::<_, ProbeError>((stream, first))
    };
    let opened = tokio::time::timeout(deadline, opening).await;
    drop(in_flight);
    let latency = started.elapsed();
    let (stream, first) = match opened {
        Err(_) => return Err(Ended::Failed(ProbeError::Deadline(deadline))),
        Ok(Err(error)) => return Err(ended(error)),
        Ok(Ok(opened)) => opened,
    };
    let status: ServingStatus = match first {
        WatchEvent::Status(status) => status,
        WatchEvent::Ended(error) => return Err(ended(error)),
    };
    let outcome = Outcome::Answered(status);
    metrics.probed(&outcome);
    metrics.probes.duration.observe(latency.as_secs_f64());
    let observation = Observation {
        outcome,
        at: started + latency,
        latency,
    };
    Ok((stream, observation))
}

fn ended(error: ProbeError) -> Ended {
    if error.is_unimplemented() {
        Ended::Unimplemented
    } else {
        Ended::Failed(error)
    }
}
