//! Load reports → an HAProxy weight, pure: no clock is read and nothing is sent here.
//!
//! HAProxy's agent may answer `NN%`: the server's weight becomes NN % of the weight its
//! configuration gives it. A server's share of a dynamic balancer's traffic is its weight
//! over the sum of them all, so the agent answers each server's *headroom*:
//!
//! ```text
//! utilization = application_utilization if the backend sets it (> 0), else cpu_utilization
//! effective   = utilization + error_penalty × eps / rps_fractional      (when rps > 0)
//! smoothed    = exponential average of effective, time constant `smoothing`
//! target      = 100 × (1 − smoothed), within [floor, 100]
//! weight      = moves toward target by at most `max_step` points per report
//! ```
//!
//! The utilization and the error penalty are gRFC A58's (weighted_round_robin), where
//! `eps / qps × penalty` makes a server that fails fast look busy rather than idle. A58
//! weights a backend by `qps / utilization`, a capacity the client then compares across
//! the backends it balances; an agent answers each server alone, with no view of HAProxy's
//! farm, so it answers the share of its usual weight the server can take now. A farm
//! whose servers run hotter than others moves traffic away from them until their
//! utilizations meet.
//!
//! What keeps a farm stable: the smoothing (one report does not swing a weight), the
//! bounded step, a floor while up (a hot server still gets some traffic, and 0 % stays
//! the word for drain), a blackout after a stream (re)opens (100 % until reports have come
//! for that long), and 100 % once the last report is older than `expiry`.

use std::time::Duration;

use tokio::time::Instant;

/// The parts of an ORCA `OrcaLoadReport` the weight uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub cpu_utilization: f64,
    pub application_utilization: f64,
    pub rps_fractional: f64,
    pub eps: f64,
}

/// Which utilization a report's weight came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Application,
    Cpu,
}

impl LoadReport {
    /// The utilization the weight uses and where it came from; `None` when the report has
    /// neither (proto3 cannot tell 0 from unset, so 0 is unset, as A58 treats it).
    pub fn utilization(&self) -> Option<(f64, Source)> {
        let valid = |value: f64| value.is_finite() && value > 0.0;
        if valid(self.application_utilization) {
            Some((self.application_utilization, Source::Application))
        } else if valid(self.cpu_utilization) {
            Some((self.cpu_utilization, Source::Cpu))
        } else {
            None
        }
    }

    /// The utilization with errors counted as load: `+ penalty × eps / rps`; `None` when
    /// the report gives no utilization, or numbers whose sum is not finite (a subnormal
    /// `rps_fractional` makes `eps / rps` infinite): such a report is not acted on, so a
    /// backend cannot make a weight NaN.
    pub fn effective_utilization(&self, error_penalty: f64) -> Option<f64> {
        let (utilization, _) = self.utilization()?;
        let effective = utilization + self.error_rate().unwrap_or(0.0) * error_penalty;
        effective.is_finite().then_some(effective)
    }

    /// `eps / rps`, when both are positive and finite.
    fn error_rate(&self) -> Option<f64> {
        let positive = |value: f64| value.is_finite() && value > 0.0;
        (positive(self.rps_fractional) && positive(self.eps))
            .then(|| self.eps / self.rps_fractional)
    }

    /// The few words the reply's reason gets: `cpu 0.82`, `app 0.40`, and the error rate
    /// when there is one (`err 0.05`).
    pub fn describe(&self) -> Option<String> {
        let (utilization, source) = self.utilization()?;
        let name = match source {
            Source::Application => "app",
            Source::Cpu => "cpu",
        };
        let mut words = format!("{name} {utilization:.2}");
        if let Some(rate) = self.error_rate() {
            if !rate.is_finite() {
                words.push_str(" (ignored: error rate not finite)");
                return Some(words);
            }
            words.push_str(&format!(" err {rate:.2}"));
        }
        Some(words)
    }
}

/// How reports become a weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightConfig {
    /// A58's `error_utilization_penalty`.
    pub error_penalty: f64,
    /// The time constant of the utilization's exponential average.
    pub smoothing: Duration,
    /// The most a weight moves on one report, in percentage points.
    pub max_step: u16,
    /// The lowest weight while up, in percent (at least 1: 0 % is HAProxy's drain).
    pub floor: u16,
    /// After a stream (re)opens, reports must have come this long before they count.
    pub blackout: Duration,
    /// A weight whose last report is older than this is 100 % again.
    pub expiry: Duration,
}

impl Default for WeightConfig {
    fn default() -> WeightConfig {
        WeightConfig {
            error_penalty: 1.0,
            smoothing: Duration::from_secs(10),
            max_step: 20,
            floor: 10,
            blackout: Duration::from_secs(10),
            expiry: Duration::from_secs(180),
        }
    }
}

/// One endpoint's weight, kept from its reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Weighting {
    /// Since when reports have come without a gap longer than `expiry` (the blackout
    /// counts from here); `None` before the first report.
    reporting_since: Option<Instant>,
    last_report: Option<(LoadReport, Instant)>,
    /// The smoothed effective utilization.
    smoothed: Option<f64>,
    /// The weight answered once the blackout is over, in percent.
    weight: u16,
}

impl Default for Weighting {
    fn default() -> Weighting {
        Weighting::new()
    }
}

impl Weighting {
    pub fn new() -> Weighting {
        Weighting {
            reporting_since: None,
            last_report: None,
            smoothed: None,
            weight: 100,
        }
    }

    /// The stream was (re)opened: everything starts over, the blackout included.
    pub fn opened(&mut self) {
        *self = Weighting::new();
    }

    /// Takes one report received at `now`.
    pub fn report(&mut self, report: LoadReport, now: Instant, config: &WeightConfig) {
        let expired = self
            .last_report
            .is_some_and(|(_, at)| now.saturating_duration_since(at) > config.expiry);
        if expired {
            self.opened();
        }
        let previous = self.last_report.map(|(_, at)| at);
        self.last_report = Some((report, now));
        let since = *self.reporting_since.get_or_insert(now);
        let Some(effective) = report.effective_utilization(config.error_penalty) else {
            return;
        };
        let smoothed = match (self.smoothed, previous) {
            (Some(smoothed), Some(previous)) if !config.smoothing.is_zero() => {
                let elapsed = now.saturating_duration_since(previous).as_secs_f64();
                let alpha = 1.0 - (-elapsed / config.smoothing.as_secs_f64()).exp();
                smoothed + (effective - smoothed) * alpha
            }
            _ => effective,
        };
        // Finite inputs keep the average finite; this is the guard that it stays so.
        let smoothed = if smoothed.is_finite() {
            smoothed
        } else {
            effective
        };
        self.smoothed = Some(smoothed);
        // In the blackout the weight stays at 100 %; the average still learns.
        if now.saturating_duration_since(since) < config.blackout {
            return;
        }
        let target = headroom(smoothed, config.floor);
        let step = i32::from(config.max_step.max(1));
        let moved = (i32::from(target) - i32::from(self.weight)).clamp(-step, step);
        self.weight = (i32::from(self.weight) + moved) as u16;
    }

    /// The last report and when it came.
    pub fn last_report(&self) -> Option<(LoadReport, Instant)> {
        self.last_report
    }

    /// The weight to answer at `now`, in percent, and the report it rests on; `None` when
    /// no report has come yet (the reply then carries no weight).
    pub fn weight(&self, now: Instant, config: &WeightConfig) -> Option<(u16, LoadReport)> {
        let (report, at) = self.last_report?;
        let since = self.reporting_since?;
        let neutral = now.saturating_duration_since(at) > config.expiry
            || now.saturating_duration_since(since) < config.blackout
            || report.utilization().is_none();
        Some((if neutral { 100 } else { self.weight }, report))
    }
}

/// `100 × (1 − utilization)` in whole percent, within `[floor, 100]` (floor at least 1).
pub fn headroom(utilization: f64, floor: u16) -> u16 {
    let floor = floor.clamp(1, 100);
    if !utilization.is_finite() {
        return floor;
    }
    let percent = (100.0 * (1.0 - utilization)).round();
    percent.clamp(f64::from(floor), 100.0) as u16
}

#[cfg(test)]
#[path = "weight_tests.rs"]
mod tests;
