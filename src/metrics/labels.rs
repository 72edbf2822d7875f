//! The label values of the labelled metrics, as enums: a misspelt value is a compile
//! error rather than a new series, and each metric resolves one child per value once.

use std::marker::PhantomData;
use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, Opts};

use crate::probe::{Outcome, ProbeError, ServingStatus};
use crate::protocol::Verdict;

/// An enum whose values are every value of one metric's label.
pub(super) trait LabelValue: Copy + 'static {
    /// Every value, in declaration order, so a value's `index` is its place here.
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn index(self) -> usize;
}

/// Declares a label enum with each value's exported string written once, beside its
/// variant. `ALL` is made from the same list, so it cannot miss a variant or reorder one.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $value:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
        }

        impl $name {
            /// Every value, each exported from zero.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value as exported.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }

        impl LabelValue for $name {
            const ALL: &'static [$name] = $name::ALL;

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// `check_requests_total{result}`: the reply's verdict, `error` for a malformed
    /// request, `silent` for one closed without a reply (an agent fault).
    RequestResult {
        Up => "up",
        Down => "down",
        Drain => "drain",
        Maint => "maint",
        Error => "error",
        Silent => "silent",
    }
}

impl From<Verdict> for RequestResult {
    fn from(verdict: Verdict) -> RequestResult {
        match verdict {
            Verdict::Up => RequestResult::Up,
            Verdict::Down => RequestResult::Down,
            Verdict::Drain => RequestResult::Drain,
            Verdict::Maint => RequestResult::Maint,
        }
    }
}

label_values! {
    /// `check_errors_total{error_type}`: why a request was not answered `up`. The
    /// request's own problems, the oracle's, and the unhealthy [`OutcomeKind`]s under the
    /// same names.
    ErrorType {
        ParseError => "parse_error",
        LineTooLong => "line_too_long",
        ReadTimeout => "read_timeout",
        TargetLimit => "target_limit",
        FirstProbePending => "first_probe_pending",
        Stale => "stale",
        NoProbeSlot => "no_probe_slot",
        ShuttingDown => "shutting_down",
        Panic => "panic",
        NotServing => "not_serving",
        ServiceUnknown => "service_unknown",
        UnknownStatus => "unknown_status",
        Timeout => "timeout",
        ConnectTimeout => "connect_timeout",
        BackendUnreachable => "backend_unreachable",
        Tls => "tls",
        Unimplemented => "unimplemented",
        GrpcStatus => "grpc_status",
        Transport => "transport",
        InvalidTarget => "invalid_target",
        Denied => "denied",
    }
}

label_values! {
    /// A low-cardinality name for a check's outcome: `probes_total{result}`.
    OutcomeKind {
        Serving => "serving",
        NotServing => "not_serving",
        ServiceUnknown => "service_unknown",
        UnknownStatus => "unknown_status",
        Timeout => "timeout",
        ConnectTimeout => "connect_timeout",
        BackendUnreachable => "backend_unreachable",
        Tls => "tls",
        Unimplemented => "unimplemented",
        GrpcStatus => "grpc_status",
        Transport => "transport",
        InvalidTarget => "invalid_target",
        Denied => "denied",
    }
}

impl OutcomeKind {
    pub fn of(outcome: &Outcome) -> OutcomeKind {
        match outcome {
            Outcome::Answered(ServingStatus::Serving) => OutcomeKind::Serving,
            Outcome::Answered(ServingStatus::NotServing) => OutcomeKind::NotServing,
            Outcome::Answered(ServingStatus::ServiceUnknown) => OutcomeKind::ServiceUnknown,
            Outcome::Answered(ServingStatus::Unknown | ServingStatus::Unrecognized(_)) => {
                OutcomeKind::UnknownStatus
            }
            Outcome::Failed(error) => match error {
                ProbeError::RpcTimeout(_) | ProbeError::Deadline(_) => OutcomeKind::Timeout,
                ProbeError::ConnectTimeout(_) => OutcomeKind::ConnectTimeout,
                ProbeError::ConnectionRefused | ProbeError::Connect(_) | ProbeError::Dns(_) => {
                    OutcomeKind::BackendUnreachable
                }
                ProbeError::Tls(_) => OutcomeKind::Tls,
                ProbeError::Status { .. } if error.is_unimplemented() => OutcomeKind::Unimplemented,
                ProbeError::Status { .. } => OutcomeKind::GrpcStatus,
                ProbeError::Transport(_) => OutcomeKind::Transport,
                ProbeError::InvalidTarget(_) => OutcomeKind::InvalidTarget,
                ProbeError::Denied(_) => OutcomeKind::Denied,
            },
        }
    }

    /// The `check_errors_total` cause of a reply made from this outcome, under the same
    /// name; none for `serving`, which is never a failure.
    pub fn error_type(self) -> Option<ErrorType> {
        let error_type = match self {
            OutcomeKind::Serving => return None,
            OutcomeKind::NotServing => ErrorType::NotServing,
            OutcomeKind::ServiceUnknown => ErrorType::ServiceUnknown,
            OutcomeKind::UnknownStatus => ErrorType::UnknownStatus,
            OutcomeKind::Timeout => ErrorType::Timeout,
            OutcomeKind::ConnectTimeout => ErrorType::ConnectTimeout,
            OutcomeKind::BackendUnreachable => ErrorType::BackendUnreachable,
            OutcomeKind::Tls => ErrorType::Tls,
            OutcomeKind::Unimplemented => ErrorType::Unimplemented,
            OutcomeKind::GrpcStatus => ErrorType::GrpcStatus,
            OutcomeKind::Transport => ErrorType::Transport,
            OutcomeKind::InvalidTarget => ErrorType::InvalidTarget,
            OutcomeKind::Denied => ErrorType::Denied,
        };
        Some(error_type)
    }
}

label_values! {
    /// `agent_faults_total{cause}`: a request the agent could not answer from the
    /// backend's word, for a trouble of its own. Answered with silence (HAProxy keeps its
    /// last verdict), or `down` with `agent_fault_reply = down`.
    FaultCause {
        FirstProbePending => "first_probe_pending",
        TargetLimit => "target_limit",
        NoProbeSlot => "no_probe_slot",
        Stale => "stale",
        ShuttingDown => "shutting_down",
        Panic => "panic",
    }
}

label_values! {
    /// `panics_total{scope}`: a group, or the whole agent, starting to hold its targets'
    /// verdicts because most of them cannot be reached at once.
    PanicScope {
        Group => "group",
        Agent => "agent",
    }
}

label_values! {
    /// `haproxy_connections_refused_total{reason}`: an agent connection closed at once,
    /// over `max_connections` or from outside `allow_sources`.
    RefusedReason {
        Limit => "limit",
        Source => "source",
    }
}

label_values! {
    /// `evictions_total{cause}`: why a target left the cache.
    EvictionCause {
        Idle => "idle",
        Admin => "admin",
        Capacity => "capacity",
        Replaced => "replaced",
    }
}

label_values! {
    /// `state_transitions_total{to}`: the state a target flipped to.
    TransitionTo {
        Up => "up",
        Down => "down",
    }
}

label_values! {
    /// `reloads_total{result}`: whether a reload's new settings were applied.
    ReloadResult {
        Applied => "applied",
        Refused => "refused",
    }
}

/// A counter labelled by `L`, with one child per value resolved at construction: counting
/// is an index and an atomic add (no lock, no lookup), and every value is exported from
/// zero so dashboards see each series at once.
#[derive(Clone)]
pub(super) struct LabeledCounter<L> {
    vec: IntCounterVec,
    children: Arc<[IntCounter]>,
    values: PhantomData<L>,
}

impl<L: LabelValue> LabeledCounter<L> {
    pub(super) fn new(opts: Opts, label: &str) -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(opts, &[label])?;
        let children = L::ALL
            .iter()
            .map(|value| vec.with_label_values(&[value.as_str()]))
            .collect();
        Ok(LabeledCounter {
            vec,
            children,
            values: PhantomData,
        })
    }

    pub(super) fn inc(&self, value: L) {
        self.children[value.index()].inc();
    }

    #[cfg(test)]
    pub(super) fn get(&self, value: L) -> u64 {
        self.children[value.index()].get()
    }

    pub(super) fn collector(&self) -> Box<dyn Collector> {
        Box::new(self.vec.clone())
    }
}

impl FaultCause {
    /// The `check_errors_total` cause of a fault answered `down`, under the same name.
    pub fn error_type(self) -> ErrorType {
        match self {
            FaultCause::FirstProbePending => ErrorType::FirstProbePending,
            FaultCause::TargetLimit => ErrorType::TargetLimit,
            FaultCause::NoProbeSlot => ErrorType::NoProbeSlot,
            FaultCause::Stale => ErrorType::Stale,
            FaultCause::ShuttingDown => ErrorType::ShuttingDown,
            FaultCause::Panic => ErrorType::Panic,
        }
    }
}
