//! The JSON the admin endpoints answer, built from the oracle's snapshots and the event
//! feed's transitions. The field names are part of the API.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::events::{PanicChange, Transition, WeightChange};
use crate::oracle::{LoadSnapshot, Snapshot};
use crate::protocol::Target;

/// A target's id: its agent line in base64url without padding.
pub fn backend_id(target: &Target) -> String {
    URL_SAFE_NO_PAD.encode(target.to_string())
}
/// One target as `/backends` shows it. The field names are part of the API.
#[derive(Debug, Serialize)]
pub struct BackendView {
    pub id: String,
    /// The agent line that names it.
    pub line: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub authority: String,
    pub service: String,
    /// `up`, `down`, or `pending` before the first probe result.
    pub status: &'static str,
    /// `watch` while a Health/Watch stream is open for it, else `poll`.
    pub mode: &'static str,
    /// The last probe's answer (`SERVING`, `NOT_SERVING`, ...), null if it failed.
    pub serving_status: Option<String>,
    /// What a request for it is answered now; null while the first probe is pending or
    /// when the agent would answer nothing (see `agent_fault`).
    pub reply: Option<String>,
    /// Why a request for it gets no reply from the backend's word now (`stale: ...`,
    /// `panic: ...`): a trouble of the agent's own, answered with silence by default.
    pub agent_fault: Option<String>,
    /// The group it panics with (`group=` on its line, else `authority/service`).
    pub group: String,
    /// Why its verdict is held now (its group or the agent panics), else null.
    pub panic: Option<String>,
    pub last_reason: Option<String>,
    pub last_probe_unix_ms: Option<u64>,
    pub last_probe_latency_ms: Option<f64>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub times_asked: u64,
    pub registered_unix_ms: u64,
    /// Null if only registered by an admin action (never asked).
    pub last_asked_unix_ms: Option<u64>,
    pub next_probe_unix_ms: Option<u64>,
    /// The backend's load reports and the weight they give; null for a target that wants
    /// no weight.
    pub load: Option<LoadView>,
}

/// A weighted target's load reports in `/backends`.
#[derive(Debug, Serialize)]
pub struct LoadView {
    /// `reporting`, `waiting` (no report yet) or `no_reports` (the backend has none).
    pub state: &'static str,
    /// The weight answered while up, in percent.
    pub weight_percent: Option<u16>,
    pub cpu_utilization: Option<f64>,
    pub application_utilization: Option<f64>,
    pub rps_fractional: Option<f64>,
    pub eps: Option<f64>,
    pub report_age_ms: Option<u64>,
}

impl LoadView {
    fn of(load: &LoadSnapshot) -> LoadView {
        let report = load.report.as_ref();
        LoadView {
            state: load.state,
            weight_percent: load.weight,
            cpu_utilization: report.map(|report| report.cpu_utilization),
            application_utilization: report.map(|report| report.application_utilization),
            rps_fractional: report.map(|report| report.rps_fractional),
            eps: report.map(|report| report.eps),
            report_age_ms: load.report_age.map(|age| age.as_millis() as u64),
        }
    }
}

impl BackendView {
    pub fn of(snapshot: &Snapshot) -> BackendView {
        let target = &snapshot.target;
        BackendView {
            id: backend_id(target),
            line: target.to_string(),
            host: target.host.clone(),
            port: target.port,
            tls: target.tls,
            authority: target.authority.clone(),
            service: target.service.clone(),
            status: snapshot.status.as_str(),
            mode: snapshot.mode.as_str(),
            serving_status: snapshot.serving_status.clone(),
            reply: snapshot
                .reply
                .as_ref()
                .map(|reply| reply.to_line().trim_end().to_string()),
            agent_fault: snapshot.agent_fault.clone(),
            group: snapshot.group.clone(),
            panic: snapshot.panic.clone(),
            last_reason: snapshot.last_reason.clone(),
            last_probe_unix_ms: snapshot.last_probe_at.map(system_ms),
            last_probe_latency_ms: snapshot
                .last_probe_latency
                .map(|latency| latency.as_secs_f64() * 1000.0),
            consecutive_successes: snapshot.consecutive_successes,
            consecutive_failures: snapshot.consecutive_failures,
            times_asked: snapshot.times_asked,
            registered_unix_ms: system_ms(snapshot.registered_at),
            last_asked_unix_ms: snapshot.last_asked_at.map(system_ms),
            next_probe_unix_ms: snapshot.next_probe_at.map(system_ms),
            load: snapshot.load.as_ref().map(LoadView::of),
        }
    }
}

/// One `transition` event of `/events`.
#[derive(Debug, Serialize)]
pub struct TransitionView {
    pub id: String,
    pub line: String,
    pub from: &'static str,
    pub to: &'static str,
    pub reason: String,
    pub unix_ms: u64,
}

impl TransitionView {
    pub(super) fn of(transition: &Transition) -> TransitionView {
        TransitionView {
            id: backend_id(&transition.target),
            line: transition.target.to_string(),
            from: transition.from.as_str(),
            to: transition.to.as_str(),
            reason: transition.reason.clone(),
            unix_ms: system_ms(transition.at),
        }
    }
}

/// One `weight` event of `/events`: an endpoint's weight moved far enough to tell.
#[derive(Debug, Serialize)]
pub struct WeightView {
    pub endpoint: String,
    pub from_percent: u16,
    pub to_percent: u16,
    pub reason: String,
    pub unix_ms: u64,
}

impl WeightView {
    pub(super) fn of(change: &WeightChange) -> WeightView {
        WeightView {
            endpoint: change.endpoint.clone(),
            from_percent: change.from,
            to_percent: change.to,
            reason: change.reason.clone(),
            unix_ms: system_ms(change.at),
        }
    }
}

/// One `panic` event of `/events`: a group, or the agent, started or ended holding its
/// failing targets' last verdicts.
#[derive(Debug, Serialize)]
pub struct PanicView {
    /// `group` or `agent`.
    pub scope: &'static str,
    pub group: String,
    /// `started` or `ended`.
    pub state: &'static str,
    pub failing: usize,
    pub members: usize,
    pub unix_ms: u64,
}

impl PanicView {
    pub(super) fn of(change: &PanicChange) -> PanicView {
        PanicView {
            scope: change.scope,
            group: change.group.clone(),
            state: if change.panicking { "started" } else { "ended" },
            failing: change.failing,
            members: change.members,
            unix_ms: system_ms(change.at),
        }
    }
}

pub(super) fn system_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_body(status, body),
        Err(error) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

pub(super) fn json_body(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn error_json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    json_body(status, body.to_string().into_bytes())
}
