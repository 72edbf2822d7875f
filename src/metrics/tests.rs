use std::collections::BTreeMap;

use prometheus::Registry;

use super::labels::LabelValue;
use super::*;
use crate::probe::{ProbeError, ServingStatus};

/// Each labelled metric's label values as exported, before anything is counted.
fn exported_label_values() -> BTreeMap<String, Vec<String>> {
    let registry = Registry::new();
    Metrics::new(&registry).unwrap();
    let mut exported = BTreeMap::new();
    for family in registry.gather() {
        let mut values: Vec<String> = family
            .get_metric()
            .iter()
            .flat_map(|metric| metric.get_label())
            .map(|label| format!("{}={}", label.name(), label.value()))
            .collect();
        values.sort();
        if !values.is_empty() {
            exported.insert(family.name().to_string(), values);
        }
    }
    exported
}

/// The unhealthy outcomes: in `probes_total` and, under the same names, in
/// `check_errors_total`.
const UNHEALTHY: &[&str] = &[
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

#[test]
fn every_label_value_is_exported_from_zero_under_its_name() {
    let exported = exported_label_values();
    let check = |metric: &str, label: &str, values: &[&str]| {
        let mut expected: Vec<String> = values
            .iter()
            .map(|value| format!("{label}={value}"))
            .collect();
        expected.sort();
        let metric = format!("haproxy_grpc_agent_{metric}");
        assert_eq!(exported.get(&metric), Some(&expected), "{metric}");
    };
    check(
        "check_requests_total",
        "result",
        &["up", "down", "drain", "maint", "error", "silent"],
    );
    let own = [
        "parse_error",
        "line_too_long",
        "read_timeout",
        "target_limit",
        "first_probe_pending",
        "stale",
        "no_probe_slot",
        "shutting_down",
        "panic",
    ];
    check(
        "check_errors_total",
        "error_type",
        &[&own[..], UNHEALTHY].concat(),
    );
    check(
        "probes_total",
        "result",
        &[&["serving"][..], UNHEALTHY].concat(),
    );
    check(
        "haproxy_connections_refused_total",
        "reason",
        &["limit", "source"],
    );
    check(
        "evictions_total",
        "cause",
        &["idle", "admin", "capacity", "replaced"],
    );
    check("state_transitions_total", "to", &["up", "down"]);
    check("reloads_total", "result", &["applied", "refused"]);
    check(
        "agent_faults_total",
        "cause",
        &[
            "first_probe_pending",
            "target_limit",
            "no_probe_slot",
            "stale",
            "shutting_down",
            "panic",
        ],
    );
    check("panics_total", "scope", &["group", "agent"]);
    assert_eq!(exported.len(), 9, "{:?}", exported.keys());
}

#[test]
fn an_outcome_kind_and_its_error_type_share_a_name() {
    for &kind in OutcomeKind::ALL {
        match kind.error_type() {
            Some(error_type) => assert_eq!(error_type.as_str(), kind.as_str()),
            None => assert_eq!(kind, OutcomeKind::Serving),
        }
    }
}

#[test]
fn a_value_indexes_its_own_child() {
    fn check<L: LabelValue + std::fmt::Debug>() {
        for (place, value) in L::ALL.iter().enumerate() {
            assert_eq!(value.index(), place, "{value:?}");
        }
    }
    check::<RequestResult>();
    check::<ErrorType>();
    check::<OutcomeKind>();
    check::<RefusedReason>();
    check::<EvictionCause>();
    check::<TransitionTo>();
    check::<ReloadResult>();
}

#[test]
fn counting_moves_only_its_own_series() {
    let metrics = Metrics::unregistered().unwrap();
    metrics.request_refused(ErrorType::LineTooLong);
    metrics.probed(&Outcome::Failed(ProbeError::Denied(String::new())));
    metrics.probed(&Outcome::Answered(ServingStatus::Serving));
    metrics.refused(RefusedReason::Source);
    metrics.evicted(EvictionCause::Capacity);
    metrics.transition(false);
    metrics.reloaded(true);

    assert_eq!(metrics.port.requests.get(RequestResult::Error), 1);
    assert_eq!(metrics.port.requests.get(RequestResult::Up), 0);
    assert_eq!(metrics.port.errors.get(ErrorType::LineTooLong), 1);
    assert_eq!(metrics.port.errors.get(ErrorType::ParseError), 0);
    assert_eq!(metrics.probes.results.get(OutcomeKind::Denied), 1);
    assert_eq!(metrics.probes.results.get(OutcomeKind::Serving), 1);
    assert_eq!(metrics.probes.results.get(OutcomeKind::Timeout), 0);
    assert_eq!(metrics.port.refused.get(RefusedReason::Source), 1);
    assert_eq!(metrics.port.refused.get(RefusedReason::Limit), 0);
    assert_eq!(metrics.cache.evictions.get(EvictionCause::Capacity), 1);
    assert_eq!(metrics.probes.transitions.get(TransitionTo::Down), 1);
    assert_eq!(metrics.probes.transitions.get(TransitionTo::Up), 0);
    assert_eq!(metrics.reloads.get(ReloadResult::Applied), 1);
}
