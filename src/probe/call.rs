//! The two calls of `grpc.health.v1.Health` over an endpoint's connections: a Check read
//! whole into an [`Outcome`], and a Watch read message by message. One deadline (connect +
//! RPC timeout) covers a call and its retry; a call the backend did not process is made
//! once more, on another connection. A call dropped before its answer resets its stream
//! (h2 sends RST_STREAM CANCEL when the last handle of an open stream goes).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use tokio::time::Instant;

use super::answer::Answer;
use super::endpoint::{Endpoint, Slot, Use};
use super::errors::{self, End};
use super::request::Prepared;
use super::{Heard, Outcome, ProbeError, ServingStatus, WatchEvent, WatchSource, WatchStream};
use crate::weight::LoadReport;

/// One Check: a stream slot (connecting if needed), the request, the whole answer.
pub async fn check(endpoint: &Endpoint, prepared: &Prepared) -> Outcome {
    let timeouts = endpoint.timeouts();
    let deadline = Instant::now() + timeouts.connect + timeouts.rpc;
    let mut avoid = None;
    loop {
        let slot = match endpoint.slot(Use::Check, avoid, deadline).await {
            Ok(slot) => slot,
            Err(error) => return Outcome::Failed(error),
        };
        let rpc_by = deadline.min(Instant::now() + timeouts.rpc);
        match tokio::time::timeout_at(rpc_by, exchange(&slot, prepared, rpc_by)).await {
            Ok(Ok(outcome)) => return outcome,
            // `send` and `failed` retired the connection already.
            Ok(Err(End::Unprocessed(_))) if avoid.is_none() => avoid = Some(slot.conn_id()),
            Ok(Err(end)) => return Outcome::Failed(end.error()),
            Err(_) => {
                // The stream is reset as the call is dropped; the connection is asked
                // whether it is alive at all.
                slot.suspect();
                return Outcome::Failed(ProbeError::RpcTimeout(timeouts.rpc));
            }
        }
    }
}

/// The liveness Check of a connection with Watch streams (see the endpoint module): any
/// gRPC answer by `rpc_by`, even an error status, proves the backend serves calls.
pub async fn liveness(slot: Slot, prepared: &Prepared, rpc_by: Instant) -> Result<(), ProbeError> {
    let started = Instant::now();
    match tokio::time::timeout_at(rpc_by, exchange(&slot, prepared, rpc_by)).await {
        Ok(Ok(Outcome::Answered(_) | Outcome::Failed(ProbeError::Status { .. }))) => Ok(()),
        Ok(Ok(Outcome::Failed(error))) => Err(error),
        Ok(Err(end)) => Err(end.error()),
        Err(_) => Err(ProbeError::Transport(format!(
            "no answer to a liveness check within {}ms",
            rpc_by.saturating_duration_since(started).as_millis()
        ))),
    }
}

/// Opens a Watch stream: a slot that leaves room for Checks, the request, and the
/// answer's headers (within the RPC timeout). Statuses are then read as they come.
pub async fn watch(endpoint: &Endpoint, prepared: &Prepared) -> Result<WatchStream, ProbeError> {
    let call = server_stream(endpoint, prepared, Answer::watch_data).await?;
    let heard = call.heard();
    Ok(WatchStream::new(call).heard_through(heard))
}

/// Opens an ORCA load-report stream, as a Watch is opened (a long-lived stream takes a
/// slot only where one stays free for Checks).
pub async fn load_reports(
    endpoint: &Endpoint,
    prepared: &Prepared,
) -> Result<StreamCall<LoadReport>, ProbeError> {
    server_stream(endpoint, prepared, Answer::load_reports).await
}

/// A long-lived server stream: its slot, request and answer's headers within one
/// deadline (connect + RPC timeout), retried once on another connection if the backend
/// did not process it.
async fn server_stream<T>(
    endpoint: &Endpoint,
    prepared: &Prepared,
    decode: Decode<T>,
) -> Result<StreamCall<T>, ProbeError> {
    let timeouts = endpoint.timeouts();
    let deadline = Instant::now() + timeouts.connect + timeouts.rpc;
    let mut avoid = None;
    loop {
        let slot = endpoint.slot(Use::Watch, avoid, deadline).await?;
        let rpc_by = deadline.min(Instant::now() + timeouts.rpc);
        let opening = open_stream(slot, prepared, rpc_by, decode);
        match tokio::time::timeout_at(rpc_by, opening).await {
            Ok(Ok(call)) => return Ok(call),
            Ok(Err((End::Unprocessed(_), conn))) if avoid.is_none() => avoid = Some(conn),
            Ok(Err((end, _))) => return Err(end.error()),
            Err(_) => return Err(ProbeError::RpcTimeout(timeouts.rpc)),
        }
    }
}

/// Sends the request on the slot's connection. A request h2 does not start never left, so
/// that failure is safe to make again; once the stream is open, the response tells how
/// the call ended.
fn send(
    slot: &Slot,
    prepared: &Prepared,
    rpc_by: Instant,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), End> {
    let left = rpc_by.saturating_duration_since(Instant::now());
    let (response, mut request) = slot
        .sender()
        .send_request(prepared.head(left), false)
        .map_err(|error| {
            let error = errors::connection(&error);
            slot.retire(error.clone());
            End::Unprocessed(error)
        })?;
    // The headers may be out (the connection task sends them at once) and the stream
    // closed before the message follows: a backend may answer the headers alone, with a
    // trailers-only status (UNIMPLEMENTED, an auth failure), then end the stream with
    // RST_STREAM NO_ERROR, whose answer a client must not discard (RFC 9113 section 8.1);
    // or it reset the stream, or the connection ended. h2 then refuses the message (a
    // closed stream is its only refusal of this one), and the response holds the answer or
    // the stream's error, at once.
    let _ = request.send_data(prepared.body(), true);
    Ok((response, request))
}

/// A failed stream's end. A connection-level failure, or REFUSED_STREAM (a backend over
/// its limit or going away), retires the connection: a retry goes to another.
fn failed(slot: &Slot, error: &h2::Error) -> End {
    let end = errors::stream(error);
    if error.is_reset() && matches!(end, End::Failed(_)) {
        return end;
    }
    slot.retire(end.reason().clone());
    // h2 fails the streams of a connection that ended with a broken pipe of its own
    // making; the connection's reason (a GOAWAY's code and text) says more.
    let synthetic = error
        .get_io()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
    match slot.retired_reason() {
        Some(reason) if synthetic => End::Failed(reason),
        _ => end,
    }
}

/// Feeds one header block to the answer.
fn feed(answer: &mut Answer, status: Option<http::StatusCode>, headers: &HeaderMap) {
    if let Some(status) = status {
        answer.field(b":status", status.as_str().as_bytes());
    }
    for (name, value) in headers {
        answer.field(name.as_str().as_bytes(), value.as_bytes());
    }
}

/// One Check's request and whole answer.
async fn exchange(slot: &Slot, prepared: &Prepared, rpc_by: Instant) -> Result<Outcome, End> {
    let (response, _request) = send(slot, prepared, rpc_by)?;
    let response = response.await.map_err(|error| failed(slot, &error))?;
    slot.heard();
    let (head, mut body) = response.into_parts();
    let mut answer = Answer::default();
    feed(&mut answer, Some(head.status), &head.headers);
    let trailers_only = body.is_end_stream();
    answer.end_block(trailers_only).map_err(End::Failed)?;
    if trailers_only {
        return Ok(answered(slot, answer));
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|error| failed(slot, &error))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        // Past the bound the stream is dropped, which resets it.
        answer.data(&chunk).map_err(End::Failed)?;
    }
    if let Some(trailers) = body
        .trailers()
        .await
        .map_err(|error| failed(slot, &error))?
    {
        feed(&mut answer, None, &trailers);
        answer.end_block(true).map_err(End::Failed)?;
    }
    Ok(answered(slot, answer))
}

/// A whole answer's outcome; a gRPC answer of any status tells the connection's liveness
/// that the backend still serves calls.
fn answered(slot: &Slot, answer: Answer) -> Outcome {
    let outcome = answer.outcome();
    if matches!(
        outcome,
        Outcome::Answered(_) | Outcome::Failed(ProbeError::Status { .. })
    ) {
        slot.checked();
    }
    outcome
}

/// Sends a server-stream request (a Watch, load reports) and reads its answer's headers;
/// the messages are read later, as `decode` makes them out of DATA.
async fn open_stream<T>(
    slot: Slot,
    prepared: &Prepared,
    rpc_by: Instant,
    decode: Decode<T>,
) -> Result<StreamCall<T>, (End, u64)> {
    let conn = slot.conn_id();
    let (response, request) = send(&slot, prepared, rpc_by).map_err(|end| (end, conn))?;
    let response = response
        .await
        .map_err(|error| (failed(&slot, &error), conn))?;
    slot.heard();
    let (head, body) = response.into_parts();
    let mut answer = Answer::default();
    feed(&mut answer, Some(head.status), &head.headers);
    let trailers_only = body.is_end_stream();
    answer
        .end_block(trailers_only)
        .map_err(|error| (End::Failed(error), conn))?;
    if trailers_only {
        // UNIMPLEMENTED and the like come as headers alone.
        return Err((End::Failed(answer.watch_end()), conn));
    }
    if let Some(error) = answer.head_error() {
        return Err((End::Failed(error), conn));
    }
    Ok(StreamCall {
        body,
        answer,
        pending: VecDeque::new(),
        ended: false,
        _request: request,
        slot,
        decode,
    })
}

/// Makes a stream's messages out of its DATA.
type Decode<T> = fn(&mut Answer, &[u8]) -> Result<Vec<T>, ProbeError>;

/// An open server stream, read when its reader asks for the next message: no task of its
/// own, and flow control holds a fast backend back. Dropping it drops the stream's
/// handles, and h2 resets the stream.
pub struct StreamCall<T> {
    body: h2::RecvStream,
    answer: Answer,
    /// Messages read but not yet handed out (bounded by the stream's window).
    pending: VecDeque<T>,
    ended: bool,
    _request: h2::SendStream<Bytes>,
    slot: Slot,
    decode: Decode<T>,
}

impl<T> StreamCall<T> {
    /// When the backend was last heard on the stream's connection.
    pub fn heard(&self) -> Arc<Heard> {
        self.slot.heard_clock()
    }

    fn end(&mut self, error: ProbeError) -> Poll<Result<T, ProbeError>> {
        self.ended = true;
        Poll::Ready(Err(error))
    }

    /// The next message, or why the stream ended; after the end, never ready again.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, ProbeError>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Poll::Ready(Ok(message));
            }
            if self.ended {
                return Poll::Pending;
            }
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.slot.heard();
                    match (self.decode)(&mut self.answer, &chunk) {
                        Ok(messages) => self.pending.extend(messages),
                        Err(error) => return self.end(error),
                    }
                }
                Some(Err(error)) => {
                    let error = failed(&self.slot, &error).error();
                    return self.end(error);
                }
                None => {
                    let trailers = ready!(self.body.poll_trailers(cx));
                    let error = match trailers {
                        Ok(trailers) => {
                            let mut answer = std::mem::take(&mut self.answer);
                            if let Some(trailers) = trailers {
                                feed(&mut answer, None, &trailers);
                            }
                            match answer.end_block(true) {
                                Ok(()) => answer.watch_end(),
                                Err(error) => error,
                            }
                        }
                        Err(error) => failed(&self.slot, &error).error(),
                    };
                    return self.end(error);
                }
            }
        }
    }

    /// The next message, or why the stream ended. Cancel safe.
    pub async fn next(&mut self) -> Result<T, ProbeError> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

impl WatchSource for StreamCall<ServingStatus> {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<WatchEvent> {
        self.poll_next(cx).map(|next| match next {
            Ok(status) => WatchEvent::Status(status),
            Err(error) => WatchEvent::Ended(error),
        })
    }
}
