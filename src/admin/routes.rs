//! Every admin endpoint and its rules: filters, authorization, ids, JSON errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio_stream::StreamExt;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::State;
use super::views::{
    BackendView, PanicView, TransitionView, WeightView, error_json, json, json_body, text,
};
use crate::events::Event;
use crate::oracle::Snapshot;
use crate::protocol::{self, Target};

/// Every route, with JSON errors for what matches none.
pub fn routes(
    state: State,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    probe_routes(&state)
        .or(backend_routes(&state))
        .unify()
        .or(events_route(state))
        .unify()
        .recover(rejected)
        .unify()
}

/// Hands each request its own clone of the shared state.
fn with_state(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// What Prometheus and orchestrators poll: `/metrics`, `/healthz`, `/readyz`.
fn probe_routes(state: &State) -> BoxedFilter<(Response,)> {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(metrics_text);
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| text(StatusCode::OK, "ok\n"));
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(readiness);
    metrics.or(healthz).unify().or(readyz).unify().boxed()
}

/// The cache seen from outside: list and show backends, and the two mutations (evict,
/// refresh), which must pass [`authorize`].
fn backend_routes(state: &State) -> BoxedFilter<(Response,)> {
    let auth = warp::header::optional::<String>("authorization");
    let list = warp::path!("backends")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state(state.clone()))
        .then(list_backends);
    let refresh = warp::path!("backends" / String / "refresh")
        .and(warp::post())
        .and(auth)
        .and(with_state(state.clone()))
        .then(refresh_backend);
    let one = warp::path!("backends" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(show_backend);
    let evict = warp::path!("backends" / String)
        .and(warp::delete())
        .and(auth)
        .and(with_state(state.clone()))
        .map(evict_backend);
    list.or(refresh)
        .unify()
        .or(one)
        .unify()
        .or(evict)
        .unify()
        .boxed()
}

/// `/events`: state transitions as server-sent events.
fn events_route(state: State) -> BoxedFilter<(Response,)> {
    warp::path!("events")
        .and(warp::get())
        .and(with_state(state))
        .map(event_stream)
        .boxed()
}

fn readiness(state: State) -> Response {
    if state.readiness.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
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
            .snapshots()
            .iter()
            .filter(|snapshot| {
                host.as_ref()
                    .is_none_or(|host| &snapshot.target.host == host)
            })
            .filter(|snapshot| {
                status
                    .as_ref()
                    .is_none_or(|status| snapshot.status.as_str() == status)
            })
            .map(BackendView::of)
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

fn show_backend(id: String, state: State) -> Response {
    match find(&state, &id) {
        Ok(snapshot) => json(StatusCode::OK, &BackendView::of(&snapshot)),
        Err(error) => error.into_response(),
    }
}

fn evict_backend(id: String, authorization: Option<String>, state: State) -> Response {
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
        Some(Ok(snapshot)) => json(StatusCode::OK, &BackendView::of(&snapshot)),
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
            Ok(event) => {
                let encoded = match event.as_ref() {
                    Event::Transition(transition) => warp::sse::Event::default()
                        .event("transition")
                        .json_data(TransitionView::of(transition)),
                    Event::Weight(change) => warp::sse::Event::default()
                        .event("weight")
                        .json_data(WeightView::of(change)),
                    Event::Panic(change) => warp::sse::Event::default()
                        .event("panic")
                        .json_data(PanicView::of(change)),
                };
                encoded.unwrap_or_else(|_| warp::sse::Event::default().comment("unencodable event"))
            }
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

fn find(state: &State, id: &str) -> Result<Snapshot, ApiError> {
    let target = decode_id(id)?;
    state
        .oracle
        .snapshot(&target)
        .ok_or_else(|| not_registered(id))
}

fn not_registered(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no registered backend with id {id:?}"),
    )
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
    use crate::admin::backend_id;

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
