//! Prometheus metrics, namespace `haproxy_grpc_agent_`. The registry is made by the caller
//! (main) and handed in; nothing here is global. No metric has a per-target label: the
//! per-target detail is the admin `/backends` view.
//!
//! Hot paths touch only pre-resolved children (an atomic add each); label lookups happen
//! once, here.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::probe::{Outcome, ProbeError, ServingStatus};
use crate::protocol::Verdict;

const NAMESPACE: &str = "haproxy_grpc_agent";

/// Every metric the agent keeps. Cheap to clone (the metric handles are `Arc`s).
#[derive(Clone)]
pub struct Metrics {
    requests: Results,
    errors: IntCounterVec,
    /// `check_errors_total`'s children by `error_type`, resolved once: counting a `down`
    /// answer takes no lock.
    errors_by_type: std::sync::Arc<std::collections::HashMap<&'static str, IntCounter>>,
    pub check_duration: Histogram,
    pub connections_active: IntGauge,
    /// `haproxy_connections_refused_total` by reason (`limit`, `source`).
    refused: IntCounterVec,
    pub channels_active: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub targets_registered: IntGauge,
    evictions: IntCounterVec,
    probes: IntCounterVec,
    pub probe_duration: Histogram,
    transitions: IntCounterVec,
    pub poller_lag: Histogram,
    pub probes_in_flight: IntGauge,
    pub watch_streams_active: IntGauge,
    pub events_dropped: IntCounter,
    reloads: IntCounterVec,
}

/// `check_requests_total` by result, resolved once.
#[derive(Clone)]
struct Results {
    all: IntCounterVec,
    up: IntCounter,
    down: IntCounter,
    drain: IntCounter,
    maint: IntCounter,
    error: IntCounter,
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
        let requests = IntCounterVec::new(
            opts(
                "check_requests_total",
                "Agent requests answered, by the reply's verdict (error: a malformed request)",
            ),
            &["result"],
        )?;
        let seconds = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(NAMESPACE)
                    .buckets(buckets),
            )
        };
        let fast = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ];
        let errors = IntCounterVec::new(
            opts(
                "check_errors_total",
                "Agent requests not answered up, by cause",
            ),
            &["error_type"],
        )?;
        let metrics = Metrics {
            requests: Results {
                up: requests.with_label_values(&["up"]),
                down: requests.with_label_values(&["down"]),
                drain: requests.with_label_values(&["drain"]),
                maint: requests.with_label_values(&["maint"]),
                error: requests.with_label_values(&["error"]),
                all: requests,
            },
            errors: errors.clone(),
            errors_by_type: std::sync::Arc::new(
                ERROR_TYPES
                    .iter()
                    .map(|&error_type| (error_type, errors.with_label_values(&[error_type])))
                    .collect(),
            ),
            check_duration: seconds(
                "check_duration_seconds",
                "Time to answer one agent request, from its line read to its reply ready",
                fast.clone(),
            )?,
            connections_active: IntGauge::with_opts(opts(
                "haproxy_connections_active",
                "Agent connections open now",
            ))?,
            refused: IntCounterVec::new(
                opts(
                    "haproxy_connections_refused_total",
                    "Agent connections closed at once without a reply, by reason",
                ),
                &["reason"],
            )?,
            channels_active: IntGauge::with_opts(opts(
                "grpc_channels_active",
                "HTTP/2 connections to backends open now",
            ))?,
            cache_hits: IntCounter::with_opts(opts(
                "cache_hits_total",
                "Requests for a registered target",
            ))?,
            cache_misses: IntCounter::with_opts(opts(
                "cache_misses_total",
                "Requests that registered a new target",
            ))?,
            targets_registered: IntGauge::with_opts(opts(
                "targets_registered",
                "Targets registered now",
            ))?,
            evictions: IntCounterVec::new(
                opts(
                    "evictions_total",
                    "Targets removed from the cache, by cause",
                ),
                &["cause"],
            )?,
            probes: IntCounterVec::new(
                opts("probes_total", "Background health checks, by result"),
                &["result"],
            )?,
            probe_duration: seconds(
                "probe_duration_seconds",
                "Time one health check took",
                fast.clone(),
            )?,
            transitions: IntCounterVec::new(
                opts(
                    "state_transitions_total",
                    "Targets changing state, by the new state",
                ),
                &["to"],
            )?,
            poller_lag: seconds(
                "poller_lag_seconds",
                "How late background checks start after they are due",
                fast,
            )?,
            probes_in_flight: IntGauge::with_opts(opts(
                "probes_in_flight",
                "Health checks running now",
            ))?,
            watch_streams_active: IntGauge::with_opts(opts(
                "watch_streams_active",
                "Health/Watch streams open now (targets watched rather than polled)",
            ))?,
            events_dropped: IntCounter::with_opts(opts(
                "events_dropped_total",
                "State-change events a slow /events subscriber missed",
            ))?,
            reloads: IntCounterVec::new(
                opts("reloads_total", "Configuration reloads, by result"),
                &["result"],
            )?,
        };
        // Make every label value visible at zero, so dashboards see the series at once.
        for cause in ["idle", "admin", "capacity", "replaced"] {
            metrics.evictions.with_label_values(&[cause]);
        }
        for to in ["up", "down"] {
            metrics.transitions.with_label_values(&[to]);
        }
        for result in ["applied", "refused"] {
            metrics.reloads.with_label_values(&[result]);
        }
        for reason in ["limit", "source"] {
            metrics.refused.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.all.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.check_duration.clone()),
            Box::new(self.connections_active.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.channels_active.clone()),
            Box::new(self.cache_hits.clone()),
            Box::new(self.cache_misses.clone()),
            Box::new(self.targets_registered.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.probes.clone()),
            Box::new(self.probe_duration.clone()),
            Box::new(self.transitions.clone()),
            Box::new(self.poller_lag.clone()),
            Box::new(self.probes_in_flight.clone()),
            Box::new(self.watch_streams_active.clone()),
            Box::new(self.events_dropped.clone()),
            Box::new(self.reloads.clone()),
        ]
    }

    /// Counts one answered request by its verdict.
    pub fn request_answered(&self, verdict: Verdict) {
        match verdict {
            Verdict::Up => self.requests.up.inc(),
            Verdict::Down => self.requests.down.inc(),
            Verdict::Drain => self.requests.drain.inc(),
            Verdict::Maint => self.requests.maint.inc(),
        }
    }

    /// Counts one malformed request (answered `down #bad request` or too long).
    pub fn request_refused(&self, error_type: &'static str) {
        self.requests.error.inc();
        self.error(error_type);
    }

    /// Counts a request answered other than up, by cause.
    pub fn error(&self, error_type: &'static str) {
        match self.errors_by_type.get(error_type) {
            Some(counter) => counter.inc(),
            None => self.errors.with_label_values(&[error_type]).inc(),
        }
    }

    /// Counts an agent connection closed at once: over the limit, or from outside
    /// `allow_sources`.
    pub fn refused(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    pub fn evicted(&self, cause: &'static str) {
        self.evictions.with_label_values(&[cause]).inc();
    }

    pub fn probed(&self, outcome: &Outcome) {
        self.probes
            .with_label_values(&[outcome_kind(outcome)])
            .inc();
    }

    pub fn transition(&self, up: bool) {
        let to = if up { "up" } else { "down" };
        self.transitions.with_label_values(&[to]).inc();
    }

    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.with_label_values(&[result]).inc();
    }
}

/// Every `error_type` of `check_errors_total`: the request's own problems, the oracle's,
/// and the unhealthy kinds of [`outcome_kind`].
pub const ERROR_TYPES: &[&str] = &[
    "parse_error",
    "line_too_long",
    "read_timeout",
    "target_limit",
    "first_probe_pending",
    "stale",
    "not_serving",
    "service_unknown",
    "unknown_status",
    "timeout",
    "connect_timeout",
    "backend_unreachable",
    "tls",
    "unimplemented",
    "grpc_status",
    "transport",
    "invalid_target",
    "denied",
];

/// A low-cardinality name for a check's outcome: the `result` of `probes_total` and the
/// `error_type` of `check_errors_total`.
pub fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Answered(ServingStatus::Serving) => "serving",
        Outcome::Answered(ServingStatus::NotServing) => "not_serving",
        Outcome::Answered(ServingStatus::ServiceUnknown) => "service_unknown",
        Outcome::Answered(ServingStatus::Unknown | ServingStatus::Unrecognized(_)) => {
            "unknown_status"
        }
        Outcome::Failed(error) => match error {
            ProbeError::RpcTimeout(_) | ProbeError::Deadline(_) => "timeout",
            ProbeError::ConnectTimeout(_) => "connect_timeout",
            ProbeError::ConnectionRefused | ProbeError::Connect(_) | ProbeError::Dns(_) => {
                "backend_unreachable"
            }
            ProbeError::Tls(_) => "tls",
            ProbeError::Status { .. } if error.is_unimplemented() => "unimplemented",
            ProbeError::Status { .. } => "grpc_status",
            ProbeError::Transport(_) => "transport",
            ProbeError::InvalidTarget(_) => "invalid_target",
            ProbeError::Denied(_) => "denied",
        },
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}
