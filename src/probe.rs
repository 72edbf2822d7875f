//! Asking a backend `grpc.health.v1.Health` (Check, and Watch streams): the [`Probe`] seam
//! and its implementation. This is the only module that speaks gRPC.

mod answer;
mod call;
mod code;
mod config;
mod connect;
mod endpoint;
mod errors;
mod grpc;
mod insecure;
mod load;
mod request;
mod resolve;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

pub use code::Code;
pub use config::{LoadConfig, ProbeConfig, ProbeSetupError, TlsSettings};
pub use grpc::GrpcProbe;
pub use load::LoadCounters;

use crate::protocol::Target;

/// The generated `grpc.health.v1` messages and server (the server serves tests and examples;
/// the agent asks over its own h2 client, so no client is generated).
pub mod pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("grpc.health.v1");
}

/// The generated ORCA (gRFC A51) messages and `OpenRcaService` server (for the test
/// backends; as with health, no client is generated). The modules mirror the proto
/// packages because the service's generated code names the load report by a relative
/// path (`super::super::super::super::data::orca::v3`); `data` and `service` are the
/// short names to use.
pub mod orca_pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    pub use xds::data::orca::v3 as data;
    pub use xds::service::orca::v3 as service;

    pub mod xds {
        pub mod data {
            pub mod orca {
                pub mod v3 {
                    tonic::include_proto!("xds.data.orca.v3");
                }
            }
        }
        pub mod service {
            pub mod orca {
                pub mod v3 {
                    tonic::include_proto!("xds.service.orca.v3");
                }
            }
        }
    }
}

/// A boxed future, so the seam stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Makes per-target probers. Implementations share connections between targets on the same
/// backend endpoint; dropping every prober of an endpoint releases its connection.
pub trait Probe: Send + Sync + 'static {
    fn prober(&self, target: &Target) -> Arc<dyn TargetProber>;

    /// Whether the target may be probed at all (`allow_backends`, before any name is
    /// resolved). The oracle asks before registering a target.
    fn admits(&self, _target: &Target) -> Result<(), ProbeError> {
        Ok(())
    }

    /// Applies reloadable settings (the timeouts) to every prober, current and future.
    fn reconfigure(&self, _config: &ProbeConfig) {}
}

/// Probes one target. Callers never run two checks of one prober at once.
pub trait TargetProber: Send + Sync + 'static {
    /// One health check. Implementations bound it by their connect and RPC timeouts.
    fn check(&self) -> BoxFuture<'_, Outcome>;

    /// The weight the target's backend's load reports give now; `Off` for a target that
    /// wants none.
    fn weight(&self, _now: Instant) -> LoadWeight {
        LoadWeight::Off
    }

    /// Opens a `Health/Watch` stream. A prober without one answers UNIMPLEMENTED, as a
    /// server without Watch does, and its target is polled.
    fn watch(&self) -> BoxFuture<'_, Result<WatchStream, ProbeError>> {
        Box::pin(async {
            Err(ProbeError::Status {
                code: Code::Unimplemented,
                message: "this prober has no watch".to_string(),
            })
        })
    }
}

/// What a target's load reports say about its weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadWeight {
    /// The target wants no weight.
    Off,
    /// The backend sends no load reports (it answered UNIMPLEMENTED).
    NoReports,
    /// No report has come yet.
    Waiting,
    /// The weight in percent, the report it rests on, and when that report came.
    Percent {
        percent: u16,
        report: crate::weight::LoadReport,
        at: Instant,
    },
}

/// What a Watch stream says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The backend's status now (sent at once, then at every change).
    Status(ServingStatus),
    /// The stream is over, and why.
    Ended(ProbeError),
}

/// An open Watch stream; dropping it cancels the stream.
pub struct WatchStream {
    source: Box<dyn WatchSource>,
    /// When the backend was last heard on the stream's connection, if the prober knows.
    heard: Option<Arc<Heard>>,
    /// What must live as long as the stream (maybe its connection).
    _holds: Vec<Box<dyn Send + Sync>>,
}

/// When a backend was last heard on one connection (any frame that answers the agent: a
/// message, a call's answer, a PING's). Written by the connection, read without a lock by
/// whoever needs to know how fresh what came over it is.
#[derive(Debug)]
pub struct Heard {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    millis: AtomicU64,
}

impl Heard {
    /// Heard now.
    pub fn new() -> Heard {
        Heard {
            epoch: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    pub fn now(&self) {
        let millis = self.epoch.elapsed().as_millis() as u64;
        self.millis.store(millis, Ordering::Relaxed);
    }

    pub fn at(&self) -> Instant {
        self.epoch + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

impl Default for Heard {
    fn default() -> Heard {
        Heard::new()
    }
}

/// Where a Watch stream's events come from: polled by [`WatchStream::next`], so a stream
/// needs no task of its own.
pub trait WatchSource: Send + 'static {
    /// The next event; after `Ended` the source is not polled again.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<WatchEvent>;
}

/// A channel of events (scripted probers in tests).
impl WatchSource for tokio::sync::mpsc::Receiver<WatchEvent> {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<WatchEvent> {
        self.poll_recv(cx).map(|event| {
            event.unwrap_or_else(|| WatchEvent::Ended(ProbeError::transport("watch closed")))
        })
    }
}

impl WatchStream {
    pub fn new(source: impl WatchSource) -> WatchStream {
        WatchStream {
            source: Box::new(source),
            heard: None,
            _holds: Vec::new(),
        }
    }

    /// The stream's connection is heard through `heard`.
    pub fn heard_through(mut self, heard: Arc<Heard>) -> WatchStream {
        self.heard = Some(heard);
        self
    }

    /// When the backend was last heard on the stream's connection, if known.
    pub fn heard(&self) -> Option<Arc<Heard>> {
        self.heard.clone()
    }

    /// Keeps `held` alive as long as the stream (dropped after what it already holds).
    pub fn holding(mut self, held: Box<dyn Send + Sync>) -> WatchStream {
        self._holds.push(held);
        self
    }

    /// The next event; after `Ended`, the stream is done. Cancel safe.
    pub async fn next(&mut self) -> WatchEvent {
        std::future::poll_fn(|cx| self.source.poll_event(cx)).await
    }
}

/// What one health check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with a serving status.
    Answered(ServingStatus),
    /// The check failed before a status came back.
    Failed(ProbeError),
}

impl Outcome {
    /// Only SERVING counts as healthy.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Outcome::Answered(ServingStatus::Serving))
    }

    /// Whether the check failed with UNIMPLEMENTED (see [`ProbeError::is_unimplemented`]).
    pub fn is_unimplemented(&self) -> bool {
        matches!(self, Outcome::Failed(error) if error.is_unimplemented())
    }

    /// Whether this is the backend's own word: a serving status, or a gRPC status its
    /// handlers answered (see [`ProbeError::is_backend_answer`]). An explicit answer is
    /// honoured at once; only failures to get one count through `fall`.
    pub fn is_explicit(&self) -> bool {
        match self {
            Outcome::Answered(_) => true,
            Outcome::Failed(error) => error.is_backend_answer(),
        }
    }

    /// Whether the check failed on the way to the backend (see
    /// [`ProbeError::is_transport`]): the kind of failure the agent's own network trouble
    /// also makes.
    pub fn is_transport_failure(&self) -> bool {
        matches!(self, Outcome::Failed(error) if error.is_transport())
    }

    /// Whether the check never reached the backend (see [`ProbeError::is_unreached`]):
    /// what the agent's own network trouble looks like.
    pub fn is_unreached(&self) -> bool {
        matches!(self, Outcome::Failed(error) if error.is_unreached())
    }

    /// The short reason shown to HAProxy.
    pub fn reason(&self) -> String {
        match self {
            Outcome::Answered(status) => status.to_string(),
            Outcome::Failed(error) => error.to_string(),
        }
    }
}

/// `HealthCheckResponse.ServingStatus`, with room for values a newer server might send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
    Unrecognized(i32),
}

impl ServingStatus {
    pub fn from_wire(value: i32) -> ServingStatus {
        use pb::health_check_response::ServingStatus as Wire;
        match Wire::try_from(value) {
            Ok(Wire::Unknown) => ServingStatus::Unknown,
            Ok(Wire::Serving) => ServingStatus::Serving,
            Ok(Wire::NotServing) => ServingStatus::NotServing,
            Ok(Wire::ServiceUnknown) => ServingStatus::ServiceUnknown,
            Err(_) => ServingStatus::Unrecognized(value),
        }
    }
}

impl std::fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServingStatus::Unknown => f.write_str("UNKNOWN"),
            ServingStatus::Serving => f.write_str("SERVING"),
            ServingStatus::NotServing => f.write_str("NOT_SERVING"),
            ServingStatus::ServiceUnknown => f.write_str("SERVICE_UNKNOWN"),
            ServingStatus::Unrecognized(value) => write!(f, "unknown serving status {value}"),
        }
    }
}

impl ProbeError {
    /// A transport failure with a fixed reason.
    pub fn transport(reason: &str) -> ProbeError {
        ProbeError::Transport(reason.to_string())
    }

    /// Whether the backend's handlers answered with this status: every gRPC status but
    /// the ones gRPC libraries and proxies make up for a call that never reached a
    /// handler or never came back (UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED).
    pub fn is_backend_answer(&self) -> bool {
        matches!(self, ProbeError::Status { code, .. } if !code.is_transport())
    }

    /// Whether the call failed on the way: the name, the connection, TLS, silence, a
    /// reset, a deadline, or a gRPC status that means the same (see
    /// [`ProbeError::is_backend_answer`]). Not a denial or an invalid target: those are
    /// the request's.
    pub fn is_transport(&self) -> bool {
        match self {
            ProbeError::Dns(_)
            | ProbeError::ConnectionRefused
            | ProbeError::ConnectTimeout(_)
            | ProbeError::Connect(_)
            | ProbeError::Tls(_)
            | ProbeError::RpcTimeout(_)
            | ProbeError::Transport(_)
            | ProbeError::Deadline(_) => true,
            ProbeError::Status { code, .. } => code.is_transport(),
            ProbeError::InvalidTarget(_) | ProbeError::Denied(_) => false,
        }
    }

    /// Whether the call never reached the backend: the name did not resolve, the
    /// connection was not made in time or could not be made (unreachable), or nothing came
    /// back in time. This is what a cut in the agent's own network looks like. A refused
    /// connection, a reset, TLS alerts and malformed answers all prove the backend's host
    /// was reached, so they are not.
    pub fn is_unreached(&self) -> bool {
        matches!(
            self,
            ProbeError::Dns(_)
                | ProbeError::ConnectTimeout(_)
                | ProbeError::Connect(_)
                | ProbeError::RpcTimeout(_)
                | ProbeError::Deadline(_)
        )
    }

    /// Whether the backend answered UNIMPLEMENTED: it serves no health service (or no
    /// Watch), which an operator may count as up and a poller answers by polling instead.
    pub fn is_unimplemented(&self) -> bool {
        matches!(
            self,
            ProbeError::Status {
                code: Code::Unimplemented,
                ..
            }
        )
    }
}

/// Why a check failed. The `Display` text is the reason HAProxy shows, so it stays short.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("dns: {0}")]
    Dns(String),
    #[error("connection refused")]
    ConnectionRefused,
    #[error("connect timeout {}ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("rpc timeout {}ms", .0.as_millis())]
    RpcTimeout(Duration),
    /// The server answered with a non-OK gRPC status (e.g. NOT_FOUND, UNIMPLEMENTED).
    #[error("grpc {code}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status { code: Code, message: String },
    #[error("transport: {0}")]
    Transport(String),
    /// The check overran every timeout it was given; a guard, not a normal outcome.
    #[error("probe deadline {}ms exceeded", .0.as_millis())]
    Deadline(Duration),
    #[error("invalid target: {0}")]
    InvalidTarget(String),
    /// `allow_backends` does not allow the target (or any address its name resolves to);
    /// nothing was sent to it.
    #[error("denied by allowlist{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Denied(String),
}
