//! Hysteresis, pure: what a target's state becomes after one more observation, when a
//! status a Watch stream holds has earned its flip, and the reply for HAProxy. No clock is
//! read here; every instant is given.
//!
//! `rise N` and `fall N` mean N consecutive observations an interval apart. Polling makes
//! one observation per probe. A Watch stream makes one when a status arrives and one per
//! interval while it holds, counted from the time held (so a status that holds costs no
//! wake-up): a status that arrived at `t` turns the state at `t + (N - 1) × interval`.
//!
//! The backend's own word is not noise: an explicit unhealthy answer (NOT_SERVING, or a
//! gRPC status its handlers sent) turns an up target down at once when the rules say so
//! (`explicit_at_once`, the default); only failures to get an answer count through
//! `fall`. `rise` always counts the way back up.

use std::time::Duration;

use tokio::time::Instant;

pub use super::config::ReplyPolicy;
use crate::probe::{Outcome, ServingStatus};
use crate::protocol::{Reply, Verdict};

/// One result about a target: a probe's, or a status a Watch stream sent.
#[derive(Clone, Debug)]
pub struct Observation {
    pub outcome: Outcome,
    /// When it was made (a probe's end, a status's arrival).
    pub at: Instant,
    /// How long the probe (or the stream's opening) took.
    pub latency: Duration,
}

/// How observations count toward rise and fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Consecutive healthy observations that turn a down target up.
    pub rise: u32,
    /// Consecutive failed observations that turn an up target down.
    pub fall: u32,
    /// `Some(interval)` for a Watch stream's statuses: they count by the time they hold.
    /// `None` for probes: each counts once.
    pub held: Option<Duration>,
    pub replies: ReplyPolicy,
    /// An explicit unhealthy answer turns the state down at once instead of counting
    /// through `fall`.
    pub explicit_at_once: bool,
}

/// The run of observations that agree (healthy or not) up to the latest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streak {
    healthy: bool,
    /// The first observation of the run.
    since: Instant,
    /// Observations counted one by one (probes; a held status counts once here).
    counted: u32,
}

impl Streak {
    /// How many observations the run is worth at `now`.
    fn count(&self, now: Instant, held: Option<Duration>) -> u32 {
        let by_time = match held {
            Some(interval) if !interval.is_zero() => {
                let held_for = now.saturating_duration_since(self.since);
                let intervals = held_for.as_nanos() / interval.as_nanos();
                u32::try_from(intervals)
                    .unwrap_or(u32::MAX)
                    .saturating_add(1)
            }
            _ => 0,
        };
        self.counted.max(by_time)
    }
}

/// The state of one target, replaced whole after every observation.
#[derive(Clone, Debug)]
pub struct Health {
    pub up: bool,
    pub last: Outcome,
    pub probed_at: Instant,
    pub latency: Duration,
    /// The latest unhealthy outcome. While a down target counts healthy observations back
    /// up to `rise`, it is answered with this outcome's verdict, so a drained backend
    /// stays drained (not down) until it is up again.
    pub last_failure: Option<Outcome>,
    /// While the latest observations never reached the backend: the verdict answered
    /// just before the first of them (`None` if there was none). A panic holds it.
    pub outage_from: Option<Verdict>,
    /// A panic held this outage's verdict (see [`Health::hold_for_panic`]): the first
    /// answer after it resumes the held `up` at once, with no `rise` to count, as if the
    /// outage had never been the backend's.
    pub held_by_panic: bool,
    streak: Streak,
    /// The rules the latest observation was counted under.
    rules: Rules,
}

impl Health {
    /// The first result decides the state outright: there is nothing to smooth yet.
    pub fn first(observation: Observation, rules: &Rules) -> Health {
        let healthy = rules.replies.is_healthy(&observation.outcome);
        Health {
            up: healthy,
            last_failure: (!healthy).then(|| observation.outcome.clone()),
            outage_from: None,
            held_by_panic: false,
            streak: Streak {
                healthy,
                since: observation.at,
                counted: 1,
            },
            last: observation.outcome,
            probed_at: observation.at,
            latency: observation.latency,
            rules: *rules,
        }
    }

    /// The state after one more observation: the run grows or starts over, and the state
    /// flips once the run is worth `rise` (healthy) or `fall` (failed) observations.
    pub fn next(&self, observation: Observation, rules: &Rules) -> Health {
        if let Some(settled) = self.settled(observation.at) {
            return settled.next(observation, rules);
        }
        let healthy = rules.replies.is_healthy(&observation.outcome);
        let streak = if healthy == self.streak.healthy {
            // A held status counts by time: a repeat adds nothing.
            let step = u32::from(rules.held.is_none());
            Streak {
                counted: self.streak.counted.saturating_add(step),
                ..self.streak
            }
        } else {
            Streak {
                healthy,
                since: observation.at,
                counted: 1,
            }
        };
        let last_failure = if healthy {
            self.last_failure.clone()
        } else {
            Some(observation.outcome.clone())
        };
        let outage_from = match (observation.outcome.is_unreached(), self.last.is_unreached()) {
            (false, _) => None,
            (true, true) => self.outage_from,
            (true, false) => Some(self.reply(&self.rules.replies, observation.at).verdict),
        };
        let unreached = observation.outcome.is_unreached();
        let resumed = healthy && self.held_by_panic && self.outage_from == Some(Verdict::Up);
        let health = Health {
            up: self.up || resumed,
            last_failure,
            outage_from,
            held_by_panic: unreached && self.held_by_panic,
            streak,
            last: observation.outcome,
            probed_at: observation.at,
            latency: observation.latency,
            rules: *rules,
        };
        Health {
            up: health.earned_up(observation.at),
            ..health
        }
    }

    /// Holds the verdict this outage began from while the target's group panics: an up
    /// target stays up however many unreachable observations it counts, and the first
    /// answer after the outage resumes it (see `held_by_panic`). Only for an observation
    /// that did not reach the backend.
    pub fn hold_for_panic(&mut self) {
        if !self.last.is_unreached() {
            return;
        }
        self.held_by_panic = true;
        if self.outage_from == Some(Verdict::Up) {
            self.up = true;
        }
    }

    /// After a panic that held this outage ended while the target still cannot be
    /// reached: the held verdict stands, and `fall` counts afresh from this observation,
    /// so a target whose group healed a moment before it does not go down for failures
    /// counted while the fault was the agent's.
    pub fn release_from_panic(&mut self) {
        if !self.held_by_panic {
            return;
        }
        self.held_by_panic = false;
        if self.outage_from == Some(Verdict::Up) {
            self.up = true;
        }
        self.streak = Streak {
            healthy: false,
            since: self.probed_at,
            counted: 1,
        };
    }

    /// When a held status earns its flip if it still holds then; `None` if the state and
    /// the run agree, or the run counts by probes.
    pub fn flip_due(&self) -> Option<Instant> {
        let interval = self.rules.held?;
        if self.up == self.streak.healthy {
            return None;
        }
        let needed = if self.streak.healthy {
            self.rules.rise
        } else {
            self.rules.fall
        };
        // The run is worth 1 + whole intervals held: it reaches `needed` after
        // `needed - 1` of them.
        Some(self.streak.since + interval * needed.saturating_sub(1))
    }

    /// The state at `now`, if a held status has earned its flip by then.
    pub fn settled(&self, now: Instant) -> Option<Health> {
        let up = self.earned_up(now);
        (up != self.up).then(|| Health { up, ..self.clone() })
    }

    /// Healthy and failed observations in a row, as the run is worth at `now`.
    pub fn consecutive(&self, now: Instant) -> (u32, u32) {
        let count = self.streak.count(now, self.rules.held);
        if self.streak.healthy {
            (count, 0)
        } else {
            (0, count)
        }
    }

    fn earned_up(&self, now: Instant) -> bool {
        let count = self.streak.count(now, self.rules.held);
        match (self.up, self.streak.healthy) {
            // Held by a panic: the count is not the backend's until the panic is over.
            (true, false) if self.held_by_panic => true,
            (true, false) if self.rules.explicit_at_once && self.last.is_explicit() => false,
            (true, false) => count < self.rules.fall,
            (false, true) => count >= self.rules.rise,
            (up, _) => up,
        }
    }

    /// The reply for HAProxy at `now`. While hysteresis holds a verdict against the last
    /// observation, the reason says how far the count has got. If the policy can answer
    /// `drain` or `maint`, every `up` also says `ready` so HAProxy lifts that state when
    /// the backend recovers.
    pub fn reply(&self, policy: &ReplyPolicy, now: Instant) -> Reply {
        let healthy = policy.is_healthy(&self.last);
        let mut reason = self.last.reason();
        if healthy {
            reason.push(' ');
            reason.push_str(&format_latency(self.latency));
        }
        let count = self.streak.count(now, self.rules.held);
        match (self.up, healthy) {
            (true, true) | (false, false) => {}
            (true, false) => reason.push_str(&format!(" ({count}/{} to down)", self.rules.fall)),
            (false, true) => reason.push_str(&format!(" ({count}/{} to up)", self.rules.rise)),
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

    /// The backend's answer, if the last observation was one.
    pub fn serving_status(&self) -> Option<ServingStatus> {
        match self.last {
            Outcome::Answered(status) => Some(status),
            Outcome::Failed(_) => None,
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

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
