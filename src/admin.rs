//! The admin and metrics listener (warp over hyper), `--metrics-bind`:`--metrics-port`,
//! default `127.0.0.1:9090`. Endpoints:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/healthz` | `200 ok` while the process runs |
//! | GET | `/readyz` | `200 ready` while the agent port is serving, `503` before and while draining |
//! | GET | `/backends` | JSON array of every registered target; filters `?status=up\|down\|pending`, `?host=H` |
//! | GET | `/backends/{id}` | one target |
//! | DELETE | `/backends/{id}` | evicts it: its poller stops, its connection closes |
//! | POST | `/backends/{id}/refresh` | probes it now and returns the new state |
//! | GET | `/events` | Server-Sent Events: a `transition` event per state change, `dropped` when a slow reader missed some |
//!
//! A target's id is its agent line (`host port ssl|no-ssl authority [service]`, as
//! `Target` prints it) in base64url without padding: URL-safe, stable, and decodable by
//! hand (`echo -n ID | basenc --base64url -d` after adding `=` padding).
//!
//! DELETE and POST need `Authorization: Bearer <admin_token>` when a token is set; with
//! none they are allowed only when the listener is on a loopback address. Errors are JSON:
//! `{"error": "..."}`.
//!
//! The admin side never holds what the agent needs: it runs on its own thread and runtime
//! at nice +10, reads the oracle's lock-free state, builds large answers (`/metrics`,
//! `/backends`) on its blocking pool, serves at most `admin_max_connections` connections,
//! and its event feed drops events for a slow reader rather than wait.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::task::TaskTracker;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::events::{Events, Transition};
use crate::metrics::Metrics;
use crate::oracle::Oracle;
use crate::poller::Entry;
use crate::probe::Outcome;
use crate::protocol::{self, Target};
use crate::shutdown::Shutdown;

/// How long an admin client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin listener's settings (its address is `Settings::metrics_addr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Required by DELETE and POST when set.
    pub token: Option<String>,
    pub max_connections: usize,
    /// Unread events a `/events` subscriber may hold before it misses some.
    pub events_buffer: usize,
}

/// Whether the agent port is serving: set when it starts accepting, cleared when it
/// drains.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the handlers need; cheap to clone.
#[derive(Clone)]
pub struct State {
    pub oracle: Oracle,
    pub registry: prometheus::Registry,
    pub metrics: Metrics,
    pub events: Events,
    pub readiness: Readiness,
    pub config: AdminConfig,
    /// The bound address: mutations without a token need it to be loopback.
    pub addr: SocketAddr,
}

/// The admin API's own thread, with its own runtime, at a lower CPU priority than the
/// agent's (nice +10): on a busy machine the kernel runs agent replies and probes first,
/// and a heavy `/backends` or `/metrics` waits instead. Threads it starts (its blocking
/// pool) inherit the priority.
pub struct AdminThread {
    done: tokio::sync::oneshot::Receiver<()>,
}

impl AdminThread {
    /// Waits until the admin thread has closed its listener and connections.
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

/// Starts the admin API on its own thread; it stops on `shutdown`.
pub fn spawn(listener: TcpListener, state: State, shutdown: Shutdown) -> AdminThread {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    // The listener moves to the admin runtime's reactor.
    let listener = listener
        .into_std()
        .expect("a bound listener converts to std");
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            lower_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(2)
                .thread_name("admin-blocking")
                .build()
                .expect("the admin runtime starts");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener registers");
                serve(listener, state, shutdown).await;
            });
            let _ = done_tx.send(());
        })
        .expect("the admin thread starts");
    AdminThread { done }
}

/// nice +10 for the calling thread (Linux applies nice per thread).
#[allow(unsafe_code)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the calling thread's
    // nice value; it reads no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Serves the admin API on `listener` until `shutdown`; open connections (event streams
/// included) are closed then.
pub async fn serve(listener: TcpListener, state: State, shutdown: Shutdown) {
    let routes = routes(state.clone());
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let tracker = TaskTracker::new();
    loop {
        // Wait for a free slot before accepting: excess clients queue in the backlog.
        let permit = tokio::select! {
            _ = shutdown.triggered() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                // Resource errors (EMFILE) would spin; give the agent the CPU.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(warp::service(routes.clone()));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that connects and says nothing gives its slot back.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(io, service);
            tokio::select! {
                _ = shutdown.triggered() => {}
                served = connection => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Every route, with JSON errors for what matches none.
pub fn routes(
    state: State,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let auth = warp::header::optional::<String>("authorization");

    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .then(metrics_text);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| text(StatusCode::OK, "ok\n"));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| {
            if state.readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        });
    let list = warp::path!("backends")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .then(list_backends);
    let one = warp::path!("backends" / String)
        .and(warp::get())
        .and(with_state.clone())
        .map(|id: String, state: State| match find(&state, &id) {
            Ok(entry) => json(StatusCode::OK, &view(&state.oracle, &entry)),
            Err(error) => error.into_response(),
        });
    let evict = warp::path!("backends" / String)
        .and(warp::delete())
        .and(auth)
        .and(with_state.clone())
        .map(|id: String, authorization: Option<String>, state: State| {
            let evicted = authorize(&state, authorization.as_deref())
                .and_then(|()| decode_id(&id))
                .and_then(|target| {
                    if state.oracle.evict(&target) {
                        Ok(target)
                    } else {
                        Err(not_registered(&id))
                    }
                });
            match evicted {
                Ok(target) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "evicted": id, "line": target.to_string() }),
                ),
                Err(error) => error.into_response(),
            }
        });
    let refresh = warp::path!("backends" / String / "refresh")
        .and(warp::post())
        .and(auth)
        .and(with_state.clone())
        .then(refresh_backend);
    let events = warp::path!("events")
        .and(warp::get())
        .and(with_state)
        .map(event_stream);

    metrics
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(list)
        .unify()
        .or(refresh)
        .unify()
        .or(one)
        .unify()
        .or(evict)
        .unify()
        .or(events)
        .unify()
        .recover(rejected)
        .unify()
}

async fn metrics_text(state: State) -> Response {
    // Gathering reads /proc for the process metrics: keep it off the async workers.
    let gathered = tokio::task::spawn_blocking(move || {
        let families = state.registry.gather();
        prometheus::TextEncoder::new().encode_to_string(&families)
    })
    .await;
    match gathered {
        Ok(Ok(body)) => {
            let mut response = Response::new(body.into());
            response.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            response
        }
        Ok(Err(error)) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        Err(error) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn list_backends(query: HashMap<String, String>, state: State) -> Response {
    for key in query.keys() {
        if key != "status" && key != "host" {
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("unknown filter {key:?}; use status=up|down|pending or host=NAME"),
            );
        }
    }
    let status = query.get("status").cloned();
    if let Some(status) = &status
        && !matches!(status.as_str(), "up" | "down" | "pending")
    {
        return error_json(
            StatusCode::BAD_REQUEST,
            &format!("status={status:?} is not a status; use up, down or pending"),
        );
    }
    let host = query.get("host").cloned();
    // A large farm is a large array: build it on the blocking pool.
    let built = tokio::task::spawn_blocking(move || {
        let mut views: Vec<BackendView> = state
            .oracle
            .entries()
            .iter()
            .filter(|entry| host.as_ref().is_none_or(|host| &entry.target.host == host))
            .map(|entry| view(&state.oracle, entry))
            .filter(|view| status.as_ref().is_none_or(|status| view.status == status))
            .collect();
        views.sort_by(|a, b| a.line.cmp(&b.line));
        serde_json::to_vec(&views)
    })
    .await;
    match built {
        Ok(Ok(body)) => json_body(StatusCode::OK, body),
        Ok(Err(error)) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
        Err(error) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

async fn refresh_backend(id: String, authorization: Option<String>, state: State) -> Response {
    let target = match authorize(&state, authorization.as_deref()).and_then(|()| decode_id(&id)) {
        Ok(target) => target,
        Err(error) => return error.into_response(),
    };
    // Long enough for one probe that waits for a slot and then uses all its time.
    let within = state.oracle.config().poller.probe_deadline + Duration::from_secs(1);
    match state.oracle.refresh(&target, within).await {
        None => not_registered(&id).into_response(),
        Some(Ok(entry)) => json(StatusCode::OK, &view(&state.oracle, &entry)),
        Some(Err(_)) => error_json(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("no probe of {target} finished within {within:?}"),
        ),
    }
}

fn event_stream(state: State) -> Response {
    let dropped = state.metrics.events_dropped.clone();
    let feed = tokio_stream::wrappers::BroadcastStream::new(state.events.subscribe());
    let stream = feed.map(move |item| {
        let event = match item {
            Ok(transition) => warp::sse::Event::default()
                .event("transition")
                .json_data(TransitionView::of(&transition))
                .unwrap_or_else(|_| warp::sse::Event::default().comment("unencodable event")),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                dropped.inc_by(missed);
                warp::sse::Event::default()
                    .event("dropped")
                    .data(missed.to_string())
            }
        };
        Ok::<_, Infallible>(event)
    });
    let keep_alive = warp::sse::keep_alive().interval(Duration::from_secs(15));
    warp::reply::Reply::into_response(warp::sse::reply(keep_alive.stream(stream)))
}

/// A refused admin request: its status and what to do about it.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response {
        let mut response = error_json(self.status, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The mutation rule: a configured token must be presented; without one, only a loopback
/// listener accepts mutations.
fn authorize(state: &State, authorization: Option<&str>) -> Result<(), ApiError> {
    match &state.config.token {
        Some(token) => {
            let presented = authorization
                .and_then(|value| value.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this needs Authorization: Bearer <admin_token>",
                ))
            }
        }
        None if state.addr.ip().is_loopback() => Ok(()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "changes are refused: the admin listener is not on loopback and no admin_token is set; set admin_token or bind it to 127.0.0.1",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A target's id: its agent line in base64url without padding.
pub fn backend_id(target: &Target) -> String {
    URL_SAFE_NO_PAD.encode(target.to_string())
}

/// The target an id names, or a 400 saying why not.
fn decode_id(id: &str) -> Result<Target, ApiError> {
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid backend id {id:?}: {why}; ids are the `id` field of GET /backends"),
        )
    };
    let line = URL_SAFE_NO_PAD
        .decode(id)
        .map_err(|error| invalid(error.to_string()))?;
    protocol::parse_request(&line).map_err(|error| invalid(error.to_string()))
}

fn find(state: &State, id: &str) -> Result<Arc<Entry>, ApiError> {
    let target = decode_id(id)?;
    state
        .oracle
        .entry(&target)
        .ok_or_else(|| not_registered(id))
}

fn not_registered(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no registered backend with id {id:?}"),
    )
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
    /// What a request for it is answered now.
    pub reply: Option<String>,
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
}

pub fn view(oracle: &Oracle, entry: &Entry) -> BackendView {
    let target = &entry.target;
    let health = entry.health.load_full();
    let times_asked = entry.times_asked.load(Ordering::Relaxed);
    let next_due = entry.next_due_ms.load(Ordering::Relaxed);
    BackendView {
        id: backend_id(target),
        line: target.to_string(),
        host: target.host.clone(),
        port: target.port,
        tls: target.tls,
        authority: target.authority.clone(),
        service: target.service.clone(),
        status: match health.as_deref() {
            None => "pending",
            Some(health) if health.up => "up",
            Some(_) => "down",
        },
        mode: if entry.watched.load(Ordering::Relaxed) {
            "watch"
        } else {
            "poll"
        },
        serving_status: health.as_deref().and_then(|health| match &health.last {
            Outcome::Answered(status) => Some(status.to_string()),
            Outcome::Failed(_) => None,
        }),
        reply: oracle
            .peek(entry)
            .map(|reply| reply.to_line().trim_end().to_string()),
        last_reason: health.as_deref().map(|health| health.last.reason()),
        last_probe_unix_ms: health.as_deref().map(|health| unix_ms(health.probed_at)),
        last_probe_latency_ms: health
            .as_deref()
            .map(|health| health.latency.as_secs_f64() * 1000.0),
        consecutive_successes: health.as_deref().map_or(0, |h| h.consecutive_successes),
        consecutive_failures: health.as_deref().map_or(0, |h| h.consecutive_failures),
        times_asked,
        registered_unix_ms: unix_ms(entry.registered_at),
        last_asked_unix_ms: (times_asked > 0)
            .then(|| unix_ms(oracle.instant_at(entry.last_asked_ms.load(Ordering::Relaxed)))),
        next_probe_unix_ms: (next_due > 0).then(|| unix_ms(oracle.instant_at(next_due))),
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
    fn of(transition: &Transition) -> TransitionView {
        TransitionView {
            id: backend_id(&transition.target),
            line: transition.target.to_string(),
            from: transition.from,
            to: transition.to,
            reason: transition.reason.clone(),
            unix_ms: system_ms(transition.at),
        }
    }
}

/// Wall-clock milliseconds of a monotonic instant (past or future).
fn unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::now();
    let wall = if at <= now {
        wall - (now - at)
    } else {
        wall + (at - now)
    };
    system_ms(wall)
}

fn system_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_body(status, body),
        Err(error) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn json_body(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    json_body(status, body.to_string().into_bytes())
}

/// What matched no route: 404 or 405, as JSON.
async fn rejected(rejection: warp::Rejection) -> Result<Response, Infallible> {
    if rejection.is_not_found() {
        return Ok(error_json(
            StatusCode::NOT_FOUND,
            "no such endpoint; see the admin section of the README",
        ));
    }
    if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error_json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
        ));
    }
    if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(error_json(StatusCode::BAD_REQUEST, "invalid query string"));
    }
    Ok(error_json(
        StatusCode::BAD_REQUEST,
        &format!("{rejection:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_round_trip() {
        for line in [
            "10.0.0.7 50051 no-ssl api.internal",
            "::1 443 ssl [::1]:443 shop.Cart/v2",
            "backend.example 8443 ssl backend.example:8443 a.b.C",
        ] {
            let target = protocol::parse_request(line.as_bytes()).unwrap();
            let id = backend_id(&target);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
            assert_eq!(decode_id(&id).ok(), Some(target), "{line}");
        }
        assert!(decode_id("not base64!").is_err());
        assert!(decode_id(&URL_SAFE_NO_PAD.encode("not a line")).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abc", b"abcdef"));
    }
}
