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
    /// Most targets registered at once; requests for more get `down`.
    pub max_targets: usize,
    /// Answers older than this are not trusted: the poller must be wedged.
    pub stale_after: Duration,
    /// Probes running at once, across all targets.
    pub max_probes_in_flight: usize,
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
    /// A status change a Watch reports applies at once (rise and fall of 1).
    pub trust_watch: bool,
}

impl PollerConfig {
    /// How probes count toward rise and fall.
    pub fn probe_rules(&self) -> Rules {
        Rules {
            rise: self.rise,
            fall: self.fall,
            held: None,
            replies: self.replies,
        }
    }

    /// How a Watch stream's statuses count: by the time they hold, or at once with
    /// `trust_watch`.
    pub fn watch_rules(&self) -> Rules {
        let (rise, fall) = if self.trust_watch {
            (1, 1)
        } else {
            (self.rise, self.fall)
        };
        Rules {
            rise,
            fall,
            held: Some(self.interval),
            replies: self.replies,
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
