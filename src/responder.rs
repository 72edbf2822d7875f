//! The agent port: accept HAProxy's connections (bounded, with backoff on accept errors)
//! and answer each request line in order: read a bounded line → parse → ask → write.
//!
//! Only the backend or the request line earns a `down`: HAProxy takes it at once. When the
//! oracle has no word for a trouble of the agent's own ([`AgentFault`]), the connection is
//! closed without a reply, and HAProxy keeps its last verdict ("failure to connect to the
//! agent is not considered an error"); `agent_fault_reply = down` answers `down` instead.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::allowlist::Sources;
use crate::connection::{Connection, Frame};
use crate::metrics::{ErrorType, FaultCause, Metrics, RefusedReason};
use crate::oracle::{AgentFault, Oracle};
use crate::protocol::{self, Reply, Target};
use crate::shutdown::Shutdown;

/// Answers one parsed request. The oracle is the real one; [`ConstantUp`] is the ceiling
/// the benchmarks compare it with.
pub trait Ask: Clone + Send + Sync + 'static {
    fn ask(&self, target: Target) -> impl Future<Output = Result<Reply, AgentFault>> + Send;
}

/// The responder's adapter to the oracle: the oracle knows no agent port.
impl Ask for Oracle {
    fn ask(&self, target: Target) -> impl Future<Output = Result<Reply, AgentFault>> + Send {
        Oracle::ask(self, target)
    }
}

/// Answers `up` to everything without looking: the fastest possible agent, used only to
/// measure what the accept/read/write path alone costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConstantUp;

impl Ask for ConstantUp {
    async fn ask(&self, _target: Target) -> Result<Reply, AgentFault> {
        Ok(Reply::up(""))
    }
}

/// What a request the agent cannot answer from the backend's word gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReply {
    /// The connection is closed without a reply: HAProxy keeps its last verdict.
    Silent,
    /// `down #<the fault>`: strict, and HAProxy takes the server out at once.
    Down,
}

impl FaultReply {
    /// The name in settings.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultReply::Silent => "silent",
            FaultReply::Down => "down",
        }
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
    /// What an agent fault is answered.
    pub fault_reply: FaultReply,
}

/// How long a connection closed after a final reply keeps draining input so the reply
/// is not lost to a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A fault of one cause after this long without one starts a new episode, which is
/// logged; faults within an episode are only counted.
const FAULT_EPISODE_GAP: Duration = Duration::from_secs(10);

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
    let mut gate = Gate::new(config.load().max_connections);
    let tracker = TaskTracker::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // Numbers connections for their log span: a short id that orders them.
    let mut connections: u64 = 0;
    let faults = Arc::new(FaultLog::new());
    while let Some((stream, peer)) = accept(&listener, &mut backoff, &shutdown).await {
        let Some(permit) = gate.admit(peer, &config.load().sources, &metrics) else {
            drop(stream);
            continue;
        };
        connections += 1;
        let id = format!("{connections:x}");
        let span = tracing::info_span!("conn", %id, %peer, backend = tracing::field::Empty);
        let open = Open::new(permit, &metrics);
        let handled = handle(
            stream,
            open,
            oracle.clone(),
            Arc::clone(&config),
            Arc::clone(&faults),
            shutdown.clone(),
        );
        tracker.spawn(handled.instrument(span));
    }
    drop(listener);
    drain(tracker, config.load().drain_timeout).await;
}

/// The next connection, or `None` once shutdown begins. An error of the listener itself
/// (EMFILE and the like) pauses accepting for `backoff`, doubled on each error in a row, so
/// a full file table does not turn the loop into a busy spin.
async fn accept(
    listener: &TcpListener,
    backoff: &mut Duration,
    shutdown: &Shutdown,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.triggered() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => {
                *backoff = ACCEPT_BACKOFF_MIN;
                return Some(accepted);
            }
            Err(error) if is_per_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, pause_ms = backoff.as_millis() as u64, "accept failed; pausing before the next accept");
                tokio::select! {
                    _ = shutdown.triggered() => return None,
                    _ = tokio::time::sleep(*backoff) => {}
                }
                *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Who may take a connection slot. It remembers whether it is refusing for lack of slots
/// so that reaching the limit and leaving it are logged once each, not once per client.
struct Gate {
    slots: Arc<Semaphore>,
    max_connections: usize,
    refusing: bool,
}

impl Gate {
    fn new(max_connections: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            refusing: false,
        }
    }

    /// A slot for a connection from `peer`, or `None` when it is to be closed unanswered.
    fn admit(
        &mut self,
        peer: SocketAddr,
        sources: &Sources,
        metrics: &Metrics,
    ) -> Option<OwnedSemaphorePermit> {
        if !sources.allows(peer.ip()) {
            tracing::debug!(%peer, "connection from outside allow_sources; closed");
            metrics.refused(RefusedReason::Source);
            return None;
        }
        // Closing at once, without a reply, leaves HAProxy's last known state in place;
        // a `down` here would take healthy servers out because the agent is busy.
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics.refused(RefusedReason::Limit);
            if !self.refusing {
                tracing::warn!(
                    max_connections = self.max_connections,
                    "connection limit reached; closing new connections until one frees"
                );
                self.refusing = true;
            }
            return None;
        };
        if self.refusing {
            tracing::info!("below the connection limit again; accepting");
            self.refusing = false;
        }
        Some(permit)
    }
}

/// Waits up to `drain_timeout` for the open connections to finish the replies they owe.
async fn drain(tracker: TaskTracker, drain_timeout: Duration) {
    tracker.close();
    if tokio::time::timeout(drain_timeout, tracker.wait())
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
    faults: Arc<FaultLog>,
    shutdown: Shutdown,
) {
    // Pipelined replies must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream, live.load().max_line);
    let metrics = &open.metrics;
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
            Err(_elapsed) => return read_timed_out(connection, read_deadline, metrics).await,
        };
        let started = Instant::now();
        let answered = answer(frame, &oracle, metrics).await;
        let (reply, close_after) = match answered {
            Answered::End => return,
            Answered::Reply(reply, close_after) => (reply, close_after),
            Answered::Fault(fault) => {
                let policy = live.load().fault_reply;
                faults.record(&fault, policy, metrics);
                match policy {
                    // Closed without a word: HAProxy keeps its last verdict.
                    FaultReply::Silent => return,
                    FaultReply::Down => (Reply::down(fault.reason), false),
                }
            }
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

/// What one frame gets.
enum Answered {
    /// The client has closed its side.
    End,
    /// A reply, and whether the connection closes after it.
    Reply(Reply, bool),
    /// The agent has no word from the backend.
    Fault(AgentFault),
}

async fn answer<A: Ask>(frame: Frame<'_>, oracle: &A, metrics: &Metrics) -> Answered {
    match frame {
        Frame::End => Answered::End,
        Frame::TooLong => {
            metrics.request_refused(ErrorType::LineTooLong);
            Answered::Reply(Reply::down("request line too long"), true)
        }
        Frame::Line(line) => match protocol::parse_request(line) {
            Ok(target) => {
                tracing::Span::current().record("backend", tracing::field::display(&target));
                match oracle.ask(target).await {
                    Ok(reply) => {
                        metrics.request_answered(reply.verdict);
                        Answered::Reply(reply, false)
                    }
                    Err(fault) => Answered::Fault(fault),
                }
            }
            Err(error) => {
                metrics.request_refused(ErrorType::ParseError);
                Answered::Reply(Reply::bad_request(&error), false)
            }
        },
    }
}

/// Counts agent faults, and logs each cause once per episode: a fault after
/// [`FAULT_EPISODE_GAP`] without one of its cause.
struct FaultLog {
    epoch: Instant,
    /// Per cause: milliseconds after `epoch` of its latest fault, plus one (0: never).
    last_ms: Vec<AtomicU64>,
}

impl FaultLog {
    fn new() -> FaultLog {
        FaultLog {
            epoch: Instant::now(),
            last_ms: FaultCause::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, fault: &AgentFault, policy: FaultReply, metrics: &Metrics) {
        metrics.agent_fault(fault.cause, policy == FaultReply::Silent);
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms[fault.cause as usize].swap(now, Ordering::Relaxed);
        let gap = FAULT_EPISODE_GAP.as_millis() as u64;
        if last == 0 || now.saturating_sub(last) >= gap {
            let reply = match policy {
                FaultReply::Silent => "closing without a reply, so HAProxy keeps its last verdict",
                FaultReply::Down => "answering down (agent_fault_reply = down)",
            };
            tracing::warn!(cause = fault.cause.as_str(), reason = %fault.reason, "the agent cannot answer from the backend's word; {reply}");
        }
    }
}

/// The read deadline passed. An idle client is simply closed; one stuck mid-line is told
/// why first.
async fn read_timed_out(
    mut connection: Connection<TcpStream>,
    read_deadline: Duration,
    metrics: &Metrics,
) {
    if !connection.has_partial_line() {
        return;
    }
    metrics.request_refused(ErrorType::ReadTimeout);
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
