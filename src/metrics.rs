//! Prometheus metrics, namespace `haproxy_grpc_agent_`. The registry is made by the caller
//! (main) and handed in; nothing here is global. No metric has a per-target label: the
//! per-target detail is the admin `/backends` view.
//!
//! Every label value is an enum variant (see `labels`), so a misspelt one does not compile.
//! Hot paths touch only children resolved once, at construction (an index and an atomic
//! add each), and every label value is exported from zero.

mod labels;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

pub use self::labels::{
    ErrorType, EvictionCause, FaultCause, OutcomeKind, PanicScope, RefusedReason,
};
use self::labels::{LabeledCounter, ReloadResult, RequestResult, TransitionTo};
use crate::probe::Outcome;
use crate::protocol::Verdict;

const NAMESPACE: &str = "haproxy_grpc_agent";

/// The buckets of every `_seconds` histogram: 50 µs to 2.5 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Every metric the agent keeps, in one group per stage. Cheap to clone (the metric
/// handles are `Arc`s).
#[derive(Clone)]
pub struct Metrics {
    pub port: PortMetrics,
    pub cache: CacheMetrics,
    pub probes: ProbeMetrics,
    pub load: LoadMetrics,
    pub events_dropped: IntCounter,
    reloads: LabeledCounter<ReloadResult>,
}

/// The agent port: requests, why they were not answered `up`, and connections.
#[derive(Clone)]
pub struct PortMetrics {
    requests: LabeledCounter<RequestResult>,
    errors: LabeledCounter<ErrorType>,
    pub check_duration: Histogram,
    pub connections_active: IntGauge,
    refused: LabeledCounter<RefusedReason>,
    faults: LabeledCounter<FaultCause>,
}

/// The oracle's cache of targets.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub targets_registered: IntGauge,
    evictions: LabeledCounter<EvictionCause>,
}

/// Background health checks, their connections and the states they decide.
#[derive(Clone)]
pub struct ProbeMetrics {
    /// `grpc_channels_active`: the published name says channels; it counts HTTP/2
    /// connections.
    pub connections_active: IntGauge,
    results: LabeledCounter<OutcomeKind>,
    pub duration: Histogram,
    transitions: LabeledCounter<TransitionTo>,
    pub poller_lag: Histogram,
    pub in_flight: IntGauge,
    pub watch_streams_active: IntGauge,
    /// Groups (and the agent as a whole) holding their verdicts now.
    pub panics_active: IntGauge,
    panics: LabeledCounter<PanicScope>,
    /// Replies that held a verdict because of a panic.
    pub panic_replies: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them, with the process collector on Linux.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics::unregistered()?;
        for collector in metrics.collectors() {
            registry.register(collector)?;
        }
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// The metrics without a registry (one-shot commands, unit tests): counted, never
    /// exported.
    pub fn unregistered() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            port: PortMetrics::new()?,
            cache: CacheMetrics::new()?,
            probes: ProbeMetrics::new()?,
            load: LoadMetrics::new()?,
            events_dropped: IntCounter::with_opts(opts(
                "events_dropped_total",
                "State-change events a slow /events subscriber missed",
            ))?,
            reloads: LabeledCounter::new(
                opts("reloads_total", "Configuration reloads, by result"),
                "result",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let mut collectors = self.port.collectors();
        collectors.extend(self.cache.collectors());
        collectors.extend(self.probes.collectors());
        collectors.extend(self.load.collectors());
        collectors.push(Box::new(self.events_dropped.clone()));
        collectors.push(self.reloads.collector());
        collectors
    }

    /// Counts one answered request by its verdict.
    pub fn request_answered(&self, verdict: Verdict) {
        self.port.requests.inc(RequestResult::from(verdict));
    }

    /// Counts one malformed request (answered `down #bad request` or too long).
    pub fn request_refused(&self, error_type: ErrorType) {
        self.port.requests.inc(RequestResult::Error);
        self.error(error_type);
    }

    /// Counts a request the agent could not answer from the backend's word, by cause;
    /// `silent` when it was closed without a reply.
    pub fn agent_fault(&self, cause: FaultCause, silent: bool) {
        self.port.faults.inc(cause);
        if silent {
            self.port.requests.inc(RequestResult::Silent);
        } else {
            self.request_answered(Verdict::Down);
            self.error(cause.error_type());
        }
    }

    /// Counts a group, or the agent, starting to panic.
    pub fn panic_started(&self, scope: PanicScope) {
        self.probes.panics.inc(scope);
    }

    /// Counts a request answered other than up, by cause.
    pub fn error(&self, error_type: ErrorType) {
        self.port.errors.inc(error_type);
    }

    /// Counts an agent connection closed at once: over the limit, or from outside
    /// `allow_sources`.
    pub fn refused(&self, reason: RefusedReason) {
        self.port.refused.inc(reason);
    }

    pub fn evicted(&self, cause: EvictionCause) {
        self.cache.evictions.inc(cause);
    }

    pub fn probed(&self, outcome: &Outcome) {
        self.probes.results.inc(OutcomeKind::of(outcome));
    }

    pub fn transition(&self, up: bool) {
        let to = if up {
            TransitionTo::Up
        } else {
            TransitionTo::Down
        };
        self.probes.transitions.inc(to);
    }

    pub fn reloaded(&self, applied: bool) {
        let result = if applied {
            ReloadResult::Applied
        } else {
            ReloadResult::Refused
        };
        self.reloads.inc(result);
    }
}

impl PortMetrics {
    fn new() -> Result<PortMetrics, prometheus::Error> {
        Ok(PortMetrics {
            requests: LabeledCounter::new(
                opts(
                    "check_requests_total",
                    "Agent requests answered, by the reply's verdict (error: a malformed request)",
                ),
                "result",
            )?,
            errors: LabeledCounter::new(
                opts(
                    "check_errors_total",
                    "Agent requests not answered up, by cause",
                ),
                "error_type",
            )?,
            check_duration: seconds(
                "check_duration_seconds",
                "Time to answer one agent request, from its line read to its reply ready",
            )?,
            connections_active: IntGauge::with_opts(opts(
                "haproxy_connections_active",
                "Agent connections open now",
            ))?,
            refused: LabeledCounter::new(
                opts(
                    "haproxy_connections_refused_total",
                    "Agent connections closed at once without a reply, by reason",
                ),
                "reason",
            )?,
            faults: LabeledCounter::new(
                opts(
                    "agent_faults_total",
                    "Agent requests not answered from the backend's word, for a trouble of the agent's own, by cause (silent unless agent_fault_reply = down)",
                ),
                "cause",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            self.requests.collector(),
            self.errors.collector(),
            Box::new(self.check_duration.clone()),
            Box::new(self.connections_active.clone()),
            self.refused.collector(),
            self.faults.collector(),
        ]
    }
}

impl CacheMetrics {
    fn new() -> Result<CacheMetrics, prometheus::Error> {
        Ok(CacheMetrics {
            hits: IntCounter::with_opts(opts(
                "cache_hits_total",
                "Requests for a registered target",
            ))?,
            misses: IntCounter::with_opts(opts(
                "cache_misses_total",
                "Requests that registered a new target",
            ))?,
            targets_registered: IntGauge::with_opts(opts(
                "targets_registered",
                "Targets registered now",
            ))?,
            evictions: LabeledCounter::new(
                opts(
                    "evictions_total",
                    "Targets removed from the cache, by cause",
                ),
                "cause",
            )?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.hits.clone()),
            Box::new(self.misses.clone()),
            Box::new(self.targets_registered.clone()),
            self.evictions.collector(),
        ]
    }
}

impl ProbeMetrics {
    fn new() -> Result<ProbeMetrics, prometheus::Error> {
        Ok(ProbeMetrics {
            connections_active: IntGauge::with_opts(opts(
                "grpc_channels_active",
                "HTTP/2 connections to backends open now",
            ))?,
            results: LabeledCounter::new(
                opts("probes_total", "Background health checks, by result"),
                "result",
            )?,
            duration: seconds("probe_duration_seconds", "Time one health check took")?,
            transitions: LabeledCounter::new(
                opts(
                    "state_transitions_total",
                    "Targets changing state, by the new state",
                ),
                "to",
            )?,
            poller_lag: seconds(
                "poller_lag_seconds",
                "How late background checks start after they are due",
            )?,
            in_flight: IntGauge::with_opts(opts("probes_in_flight", "Health checks running now"))?,
            watch_streams_active: IntGauge::with_opts(opts(
                "watch_streams_active",
                "Health/Watch streams open now (targets watched rather than polled)",
            ))?,
            panics_active: IntGauge::with_opts(opts(
                "panics_active",
                "Groups (and the agent as a whole) holding their targets' verdicts now, because most of their targets cannot be reached at once",
            ))?,
            panics: LabeledCounter::new(
                opts(
                    "panics_total",
                    "Panics started: a group, or the whole agent, holding its targets' verdicts",
                ),
                "scope",
            )?,
            panic_replies: IntCounter::with_opts(opts(
                "panic_replies_total",
                "Replies that held a target's last verdict because its group or the agent panicked",
            ))?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.connections_active.clone()),
            self.results.collector(),
            Box::new(self.duration.clone()),
            self.transitions.collector(),
            Box::new(self.poller_lag.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.watch_streams_active.clone()),
            Box::new(self.panics_active.clone()),
            self.panics.collector(),
            Box::new(self.panic_replies.clone()),
        ]
    }
}

/// Load-aware weights: the ORCA streams, their reports, and how many weights are reduced.
/// Per endpoint, never per target.
#[derive(Clone)]
pub struct LoadMetrics {
    pub streams_active: IntGauge,
    pub reports: IntCounter,
    pub weights_reduced: IntGauge,
}

impl LoadMetrics {
    fn new() -> Result<LoadMetrics, prometheus::Error> {
        Ok(LoadMetrics {
            streams_active: IntGauge::with_opts(opts(
                "orca_streams_active",
                "ORCA load-report streams open now (one per backend endpoint whose targets want a weight)",
            ))?,
            reports: IntCounter::with_opts(opts(
                "orca_reports_total",
                "ORCA load reports received",
            ))?,
            weights_reduced: IntGauge::with_opts(opts(
                "orca_weights_reduced",
                "Backend endpoints whose weight is below 100 % now",
            ))?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.streams_active.clone()),
            Box::new(self.reports.clone()),
            Box::new(self.weights_reduced.clone()),
        ]
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

fn seconds(name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(BUCKETS.to_vec()),
    )
}

#[cfg(test)]
mod tests;
