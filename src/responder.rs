//! The agent port: accept HAProxy's connections (bounded, with backoff on accept errors)
//! and answer each request line in order: read a bounded line → parse → ask → write.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::allowlist::Sources;
use crate::connection::{Connection, Frame};
use crate::metrics::{ErrorType, Metrics, RefusedReason};
use crate::oracle::Oracle;
use crate::protocol::{self, Reply, Target};
use crate::shutdown::Shutdown;

/// Answers one parsed request. The oracle is the real one; [`ConstantUp`] is the ceiling
/// the benchmarks compare it with.
pub trait Ask: Clone + Send + Sync + 'static {
    fn ask(&self, target: Target) -> impl Future<Output = Reply> + Send;
}

/// The responder's adapter to the oracle: the oracle knows no agent port.
impl Ask for Oracle {
    fn ask(&self, target: Target) -> impl Future<Output = Reply> + Send {
        Oracle::ask(self, target)
    }
}

/// Answers `up` to everything without looking: the fastest possible agent, used only to
/// measure what the accept/read/write path alone costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConstantUp;

impl Ask for ConstantUp {
    async fn ask(&self, _target: Target) -> Reply {
        Reply::up("")
    }
}

/// The bounds of the agent port.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest request line in bytes, terminator excluded.
    pub max_line: usize,
    /// How long a client may take to send each line (and to take each reply).
    pub read_deadline: Duration,
    /// After shutdown, how long in-flight replies may take before they are abandoned.
    pub drain_timeout: Duration,
    /// Who may connect (`allow_sources`); others are closed before anything is read.
    pub sources: Arc<Sources>,
}

/// How long a connection closed after a final reply keeps draining input so the reply
/// is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);

/// First and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves the agent port until `shutdown`, then stops accepting, lets in-flight replies
/// finish (up to `drain_timeout`) and returns.
pub async fn serve<A: Ask>(
    listener: TcpListener,
    oracle: A,
    config: Arc<ArcSwap<ResponderConfig>>,
    metrics: Metrics,
    shutdown: Shutdown,
) {
    // The connection limit is fixed at start; the rest is read per connection.
    let max_connections = config.load().max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut refusing = false;
    // Numbers connections for their log span: a short id that orders them.
    let mut connections: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(error) if is_per_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, pause_ms = backoff.as_millis() as u64, "accept failed; pausing before the next accept");
                tokio::select! {
                    _ = shutdown.triggered() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if !config.load().sources.allows(peer.ip()) {
            tracing::debug!(%peer, "connection from outside allow_sources; closed");
            metrics.refused(RefusedReason::Source);
            drop(stream);
            continue;
        }
        // Closing at once, without a reply, leaves HAProxy's last known state in place;
        // a `down` here would take healthy servers out because the agent is busy.
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.refused(RefusedReason::Limit);
            if !refusing {
                tracing::warn!(
                    max_connections,
                    "connection limit reached; closing new connections until one frees"
                );
                refusing = true;
            }
            drop(stream);
            continue;
        };
        if refusing {
            tracing::info!("below the connection limit again; accepting");
            refusing = false;
        }
        let oracle = oracle.clone();
        let shutdown = shutdown.clone();
        connections += 1;
        let id = format!("{connections:x}");
        let span = tracing::info_span!("conn", %id, %peer, backend = tracing::field::Empty);
        let open = Open::new(permit, &metrics);
        let handled = handle(stream, open, oracle, Arc::clone(&config), shutdown);
        tracker.spawn(handled.instrument(span));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(config.load().drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "drain timeout passed; closing the remaining agent connections"
        );
    }
}

/// One open agent connection: holds its slot and counts itself in
/// `haproxy_connections_active` until dropped.
struct Open {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, metrics: &Metrics) -> Open {
        metrics.port.connections_active.inc();
        Open {
            _permit: permit,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.port.connections_active.dec();
    }
}

/// Errors that concern only the connection being accepted, not the listener.
fn is_per_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// Answers the lines of one connection in order until the client closes, a bound is hit
/// or shutdown begins. A line already being answered is always answered.
async fn handle<A: Ask>(
    stream: TcpStream,
    open: Open,
    oracle: A,
    live: Arc<ArcSwap<ResponderConfig>>,
    shutdown: Shutdown,
) {
    // Pipelined replies must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream, live.load().max_line);
    loop {
        let read_deadline = live.load().read_deadline;
        let read = tokio::select! {
            biased;
            _ = shutdown.triggered() => return,
            read = tokio::time::timeout(read_deadline, connection.read_line()) => read,
        };
        let frame = match read {
            Ok(Ok(frame)) => frame,
            Ok(Err(_io_error)) => return,
            Err(_elapsed) => {
                // An idle client is simply closed; one stuck mid-line is told why.
                if connection.has_partial_line() {
                    open.metrics.request_refused(ErrorType::ReadTimeout);
                    let reason = format!(
                        "bad request: no end of line within {}ms",
                        read_deadline.as_millis()
                    );
                    let reply = Reply::down(reason);
                    let write = connection.write_reply(&reply);
                    if let Ok(Ok(())) = tokio::time::timeout(read_deadline, write).await {
                        connection.close_after_reply(LINGER).await;
                    }
                }
                return;
            }
        };
        let started = Instant::now();
        let metrics = &open.metrics;
        let (reply, close_after) = match frame {
            Frame::End => return,
            Frame::TooLong => {
                metrics.request_refused(ErrorType::LineTooLong);
                (Reply::down("request line too long"), true)
            }
            Frame::Line(line) => match protocol::parse_request(line) {
                Ok(target) => {
                    tracing::Span::current().record("backend", tracing::field::display(&target));
                    let reply = oracle.ask(target).await;
                    metrics.request_answered(reply.verdict);
                    (reply, false)
                }
                Err(error) => {
                    metrics.request_refused(ErrorType::ParseError);
                    (Reply::bad_request(&error), false)
                }
            },
        };
        metrics
            .port
            .check_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(reply = %reply.to_line().trim_end(), "answered");
        let written = tokio::time::timeout(read_deadline, connection.write_reply(&reply)).await;
        match written {
            Ok(Ok(())) if close_after => return connection.close_after_reply(LINGER).await,
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
