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
//! Code map: [`server`] (its thread, runtime and listener), [`routes`] (every endpoint and
//! its rules), [`views`] (the JSON the endpoints answer). It reads the oracle's
//! [`Snapshot`](crate::oracle::Snapshot)s, never a target's state directly.
//!
//! The admin side never holds what the agent needs: it runs on its own thread and runtime
//! at nice +10, reads the oracle's lock-free state, builds large answers (`/metrics`,
//! `/backends`) on its blocking pool, serves at most `admin_max_connections` connections,
//! and its event feed drops events for a slow reader rather than wait.

mod routes;
mod server;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use routes::routes;
pub use server::{AdminThread, serve, spawn};
pub use views::{BackendView, TransitionView, backend_id};

use crate::events::Events;
use crate::metrics::Metrics;
use crate::oracle::Oracle;

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
