//! The oracle's settings: its bounds, and how each target is probed and answered. Swapped
//! whole on reload.

use std::time::Duration;

use super::health::Rules;
use crate::probe::{Outcome, ServingStatus};
use crate::protocol::Verdict;

/// The oracle's bounds and timings.
#[derive(Clone, Copy, Debug)]
pub struct OracleConfig {
    pub poller: PollerConfig,
    /// How long a request for an unseen target waits for its first probe.
    pub miss_timeout: Duration,
    /// A target nobody has asked about for this long is evicted and its poller stopped.
    pub idle_ttl: Duration,
    /// Most targets registered at once; a request for one more is the agent's fault
    /// (`target_limit`), not the backend's.
    pub max_targets: usize,
    /// Answers older than this are not trusted: the agent fell behind (`stale`).
    pub stale_after: Duration,
    /// Probes running at once, across all targets; targets whose last probe failed on
    /// the way may hold at most half of them (see `poll::Shared::in_flight`).
    pub max_probes_in_flight: usize,
    pub panic: PanicConfig,
}

/// When a group's transport failures look like the agent's own trouble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PanicConfig {
    /// A group panics when more than this percentage of its members cannot be reached at
    /// once; 0 turns panic off.
    pub threshold: u8,
    /// Groups smaller than this never panic (a group of one is one backend).
    pub min_group: usize,
}

/// How often and how strictly each target is probed.
#[derive(Clone, Copy, Debug)]
pub struct PollerConfig {
    pub interval: Duration,
    /// Each wait is `interval` scaled by a random factor in `1 ± jitter`, so targets
    /// registered together spread out while the mean rate stays one probe per interval.
    pub jitter: f64,
    /// Consecutive healthy observations that turn a down target up.
    pub rise: u32,
    /// Consecutive failed observations that turn an up target down.
    pub fall: u32,
    /// Guard on one probe, above the prober's own timeouts.
    pub probe_deadline: Duration,
    pub replies: ReplyPolicy,
    /// Poll with Check, or follow a Health/Watch stream.
    pub mode: HealthMode,
    /// A connection carrying Watch streams gets a liveness Check this often (the probe
    /// layer's keep-alive); a watched target's answer may be this much older than a
    /// polled one's before it reads stale.
    pub liveness_interval: Duration,
    /// How the backend's explicit unhealthy answers count.
    pub explicit_answers: ExplicitAnswers,
}

/// How an explicit unhealthy answer (NOT_SERVING, a gRPC status the backend's handlers
/// sent) counts toward `fall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplicitAnswers {
    /// It turns the target down at once (Envoy's rule: the host's own word is an active
    /// failure; only network failures count toward the threshold).
    AtOnce,
    /// It counts through `fall` like a failure to get an answer.
    Counted,
}

impl ExplicitAnswers {
    /// The name in settings.
    pub fn as_str(self) -> &'static str {
        match self {
            ExplicitAnswers::AtOnce => "at_once",
            ExplicitAnswers::Counted => "counted",
        }
    }
}

impl PollerConfig {
    /// How probes count toward rise and fall.
    pub fn probe_rules(&self) -> Rules {
        Rules {
            rise: self.rise,
            fall: self.fall,
            held: None,
            replies: self.replies,
            explicit_at_once: self.explicit_answers == ExplicitAnswers::AtOnce,
        }
    }

    /// How a Watch stream's statuses count: by the time they hold.
    pub fn watch_rules(&self) -> Rules {
        Rules {
            held: Some(self.interval),
            ..self.probe_rules()
        }
    }
}

/// How a target's health is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthMode {
    Poll,
    Watch,
}

impl HealthMode {
    /// The name in settings and in `/backends`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthMode::Poll => "poll",
            HealthMode::Watch => "watch",
        }
    }
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
        outcome.is_healthy() || self.unimplemented == Verdict::Up && outcome.is_unimplemented()
    }

    /// The verdict for an unhealthy state whose last observation was `outcome`.
    pub fn unhealthy_verdict(&self, outcome: &Outcome) -> Verdict {
        match outcome {
            Outcome::Answered(ServingStatus::NotServing) => self.not_serving,
            _ => Verdict::Down,
        }
    }
}
