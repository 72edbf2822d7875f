//! One backend endpoint's HTTP/2 connection, made on first use and again after it fails,
//! shared by every service checked there. A check writes its pre-encoded frames itself
//! (no hop through another task); one reader task per connection decodes what comes back
//! with [`super::frames`], answers SETTINGS and PING, and hands each stream's outcome to
//! the check waiting for it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connect::{ConnectFailure, ConnectTo};
use super::frames::{self, FrameHeader, MAX_FRAME_SIZE, Prepared, code, flag, kind};
use super::grpc::Timeouts;
use super::hpack;
use super::{Outcome, ProbeError, WatchEvent, WatchStream};

/// A connection's read buffer starts this large, and is cut back to it after a large frame.
const READ_BUFFER: usize = 1024;
/// Bound on writing a control frame (SETTINGS or PING ack, RST_STREAM, GOAWAY).
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connection window consumed before it is topped up again.
const WINDOW_TOP_UP: i64 = 1 << 30;
/// A Watch stream's window is topped up after this much of it is used.
const STREAM_TOP_UP: usize = 32 * 1024;
/// Watch messages read off the connection but not yet taken by the poller; a backend
/// that sends faster than that has its stream ended.
const WATCH_BUFFER: usize = 64;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// TLS for an `ssl` endpoint: the client configuration and the name to verify.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// One backend endpoint's connection.
pub struct Connection {
    connect_to: ConnectTo,
    tls: Option<Tls>,
    timeouts: Arc<ArcSwap<Timeouts>>,
    /// The current connection; held while connecting, so concurrent checks share a connect.
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

impl Connection {
    pub fn new(connect_to: ConnectTo, tls: Option<Tls>, timeouts: Arc<ArcSwap<Timeouts>>) -> Self {
        Connection {
            connect_to,
            tls,
            timeouts,
            live: tokio::sync::Mutex::new(None),
        }
    }

    /// One Check: connect if needed (within the connect timeout), then the call (within
    /// the RPC timeout). A call the backend never processed (the connection went away
    /// first, GOAWAY, REFUSED_STREAM) is made once more on a new connection.
    pub async fn check(&self, prepared: &Prepared) -> Outcome {
        self.on_live(|live, rpc| async move { live.call(prepared, rpc).await })
            .await
            .unwrap_or_else(Outcome::Failed)
    }

    /// Opens a Watch stream (within the RPC timeout once connected); statuses then arrive
    /// on the stream as the backend sends them. Like a Check, an open the backend never
    /// processed is made once more on a new connection.
    pub async fn watch(&self, prepared: &Prepared) -> Result<WatchStream, ProbeError> {
        self.on_live(|live, rpc| async move { live.open_watch(prepared, rpc).await })
            .await
    }

    /// Runs `call` on the usable connection (connecting first if needed), and once more on
    /// a new connection if the backend cannot have processed it on a reused one.
    async fn on_live<T, F, Fut>(&self, call: F) -> Result<T, ProbeError>
    where
        F: Fn(Arc<Live>, Duration) -> Fut,
        Fut: Future<Output = Result<T, End>>,
    {
        let timeouts = **self.timeouts.load();
        let mut retried = false;
        loop {
            let (live, fresh) = self.live(timeouts).await?;
            match call(live, timeouts.rpc).await {
                Ok(done) => return Ok(done),
                Err(End::Unprocessed(_)) if !fresh && !retried => retried = true,
                Err(End::Unprocessed(error) | End::Failed(error)) => return Err(error),
            }
        }
    }

    /// The usable connection, connecting first if there is none.
    async fn live(&self, timeouts: Timeouts) -> Result<(Arc<Live>, bool), ProbeError> {
        let mut slot = self.live.lock().await;
        if let Some(live) = slot.as_ref() {
            if live.state().unusable.is_none() {
                return Ok((Arc::clone(live), false));
            }
            // Calls still in flight there finish first; the reader ends after them.
            live.retire();
        }
        *slot = None;
        let live = tokio::time::timeout(timeouts.connect, self.connect(timeouts))
            .await
            .map_err(|_| ProbeError::ConnectTimeout(timeouts.connect))??;
        *slot = Some(Arc::clone(&live));
        Ok((live, true))
    }

    async fn connect(&self, timeouts: Timeouts) -> Result<Arc<Live>, ProbeError> {
        let tcp = self
            .connect_to
            .clone()
            .connect()
            .await
            .map_err(|failure| match failure {
                ConnectFailure::Dns(message) => ProbeError::Dns(message),
                ConnectFailure::Refused => ProbeError::ConnectionRefused,
                ConnectFailure::Timeout => ProbeError::ConnectTimeout(timeouts.connect),
                ConnectFailure::Other(error) => ProbeError::Connect(error.to_string()),
                ConnectFailure::Denied(detail) => ProbeError::Denied(detail),
            })?;
        let (reader, mut writer): (Reader, Writer) = match &self.tls {
            None => {
                let (reader, writer) = tcp.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|error| ProbeError::Tls(super::grpc::error_chain(&error)))?;
                if let Some(protocol) = stream.get_ref().1.alpn_protocol()
                    && protocol != b"h2"
                {
                    return Err(ProbeError::Tls(format!(
                        "backend chose {:?} by ALPN, not h2",
                        String::from_utf8_lossy(protocol)
                    )));
                }
                let (reader, writer) = tokio::io::split(stream);
                (Box::new(reader), Box::new(writer))
            }
        };
        write_flush(&mut writer, &frames::client_opening())
            .await
            .map_err(|error| ProbeError::Connect(format!("http/2 preface: {error}")))?;
        let live = Arc::new(Live {
            writer: tokio::sync::Mutex::new(Output {
                io: writer,
                buffer: BytesMut::with_capacity(256),
            }),
            state: Mutex::new(State::default()),
            capacity: Notify::new(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(read_loop(reader, Arc::clone(&live)));
        Ok(live)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(live) = self.live.get_mut().take() {
            live.stop.cancel();
        }
    }
}

/// How a call ended without an outcome.
#[derive(Debug)]
enum End {
    /// The backend cannot have processed it: safe to make again.
    Unprocessed(ProbeError),
    Failed(ProbeError),
}

/// One open HTTP/2 connection.
struct Live {
    writer: tokio::sync::Mutex<Output>,
    state: Mutex<State>,
    /// Woken when a window opens, a stream ends, settings change, or the connection ends.
    capacity: Notify,
    /// Ends the reader (and so the connection) when the endpoint is released.
    stop: CancellationToken,
}

/// The write half and a buffer reused for every call's frames.
struct Output {
    io: Writer,
    buffer: BytesMut,
}

/// What calls and the reader share.
struct State {
    streams: HashMap<u32, Pending>,
    next_stream: u32,
    /// The backend's connection-level window for our DATA.
    send_window: i64,
    /// The backend's SETTINGS.
    stream_window: i64,
    max_streams: usize,
    max_frame: usize,
    /// Why no new call may start here (closed, GOAWAY, stream ids used up).
    unusable: Option<ProbeError>,
}

impl Default for State {
    fn default() -> Self {
        State {
            streams: HashMap::new(),
            next_stream: 1,
            send_window: frames::DEFAULT_WINDOW,
            stream_window: frames::DEFAULT_WINDOW,
            max_streams: usize::MAX,
            max_frame: MAX_FRAME_SIZE,
            unusable: None,
        }
    }
}

/// A call waiting for its answer.
struct Pending {
    answer: frames::Answer,
    /// Whether any frame of the answer has arrived.
    touched: bool,
    sink: Sink,
}

/// Where a call's result goes.
enum Sink {
    /// A Check: one outcome.
    Unary(oneshot::Sender<Result<Outcome, End>>),
    /// A Watch: every status as it arrives, then why the stream ended.
    Stream {
        events: mpsc::Sender<WatchEvent>,
        /// DATA bytes since the stream's window was last topped up.
        unacked: usize,
    },
}

impl Pending {
    /// Hands over how the call ended.
    fn end(self, end: Result<Outcome, End>) {
        match self.sink {
            Sink::Unary(reply) => {
                let _ = reply.send(end);
            }
            Sink::Stream { events, .. } => {
                let error = match end {
                    Ok(Outcome::Failed(error))
                    | Err(End::Failed(error) | End::Unprocessed(error)) => error,
                    Ok(Outcome::Answered(_)) => ProbeError::transport("watch ended by the backend"),
                };
                let _ = events.try_send(WatchEvent::Ended(error));
            }
        }
    }
}

impl State {
    /// Ends one stream's call, if it is still waiting.
    fn finish(&mut self, stream: u32, end: Result<Outcome, End>) -> bool {
        match self.streams.remove(&stream) {
            Some(pending) => {
                pending.end(end);
                true
            }
            None => false,
        }
    }
}

/// Armed while a call's frames are being written; dropped armed, the write did not finish.
struct Writing<'a> {
    live: &'a Live,
    stream: u32,
    finished: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut state = self.live.state();
        state.streams.remove(&self.stream);
        state
            .unusable
            .get_or_insert_with(|| ProbeError::transport("a write to the backend was cut off"));
    }
}

/// Cancels its Watch stream when dropped (the poller stopped reading it).
struct StreamGuard {
    live: Arc<Live>,
    stream: u32,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.live.cancel(self.stream);
    }
}

impl Live {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("http/2 state lock poisoned")
    }

    async fn call(self: &Arc<Self>, prepared: &Prepared, rpc: Duration) -> Result<Outcome, End> {
        let deadline = Instant::now() + rpc;
        let timeout = || End::Failed(ProbeError::RpcTimeout(rpc));
        let (reply, answer) = oneshot::channel();
        let stream =
            tokio::time::timeout_at(deadline, self.start(prepared, rpc, Sink::Unary(reply)))
                .await
                .map_err(|_| timeout())??;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(end)) => end,
            Ok(Err(_)) => Err(End::Failed(ProbeError::transport("connection closed"))),
            Err(_) => {
                self.cancel(stream);
                Err(timeout())
            }
        }
    }

    async fn open_watch(
        self: &Arc<Self>,
        prepared: &Prepared,
        rpc: Duration,
    ) -> Result<WatchStream, End> {
        let (events, received) = mpsc::channel(WATCH_BUFFER);
        let sink = Sink::Stream { events, unacked: 0 };
        let stream = tokio::time::timeout(rpc, self.start(prepared, rpc, sink))
            .await
            .map_err(|_| End::Failed(ProbeError::RpcTimeout(rpc)))??;
        let guard = StreamGuard {
            live: Arc::clone(self),
            stream,
        };
        Ok(WatchStream::new(received).holding(Box::new(guard)))
    }

    /// Opens a stream for the call and writes its frames, once the backend's limits allow.
    async fn start(&self, prepared: &Prepared, rpc: Duration, sink: Sink) -> Result<u32, End> {
        let body = prepared.body_len() as i64;
        let mut reply = Some(sink);
        loop {
            let capacity = self.capacity.notified();
            {
                let mut output = self.writer.lock().await;
                let Output { io, buffer } = &mut *output;
                let opened = {
                    let mut state = self.state();
                    if let Some(error) = &state.unusable {
                        return Err(End::Unprocessed(error.clone()));
                    }
                    if body > state.stream_window {
                        return Err(End::Failed(ProbeError::transport(
                            "the backend's flow-control window is smaller than a check",
                        )));
                    }
                    if state.streams.len() < state.max_streams && state.send_window >= body {
                        let stream = state.next_stream;
                        if stream >= frames::MAX_STREAM_ID - 1 {
                            state.unusable =
                                Some(ProbeError::transport("http/2 stream ids used up"));
                        }
                        state.next_stream += 2;
                        state.send_window -= body;
                        let pending = Pending {
                            answer: frames::Answer::default(),
                            touched: false,
                            sink: reply.take().expect("a stream is opened once"),
                        };
                        state.streams.insert(stream, pending);
                        buffer.clear();
                        prepared.encode(buffer, stream, rpc, state.max_frame);
                        Some(stream)
                    } else {
                        None
                    }
                };
                if let Some(stream) = opened {
                    // Until the frames are all written, a failed or abandoned write (the
                    // deadline passed) leaves half a frame behind: forget the stream and
                    // take no new call on this connection.
                    let mut writing = Writing {
                        live: self,
                        stream,
                        finished: false,
                    };
                    if let Err(error) = write_flush(io, buffer).await {
                        return Err(End::Failed(ProbeError::transport(&format!(
                            "write: {error}"
                        ))));
                    }
                    writing.finished = true;
                    return Ok(stream);
                }
            }
            capacity.await;
        }
    }

    /// Gives up on a stream: forgets it and tells the backend.
    fn cancel(self: &Arc<Self>, stream: u32) {
        if self.state().streams.remove(&stream).is_none() {
            return;
        }
        self.capacity.notify_waiters();
        let mut frame = BytesMut::with_capacity(13);
        frames::put_rst_stream(&mut frame, stream, code::CANCEL);
        self.send_later(frame);
    }

    /// Writes a control frame from outside the reader without making the caller wait.
    fn send_later(self: &Arc<Self>, frame: BytesMut) {
        if self.stop.is_cancelled() {
            return;
        }
        let live = Arc::clone(self);
        tokio::spawn(async move {
            let mut output = live.writer.lock().await;
            let _ =
                tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write_flush(&mut output.io, &frame))
                    .await;
        });
    }

    /// Lets go of a connection that takes no new calls: it ends now if it is idle, and
    /// otherwise once its last call has its answer.
    fn retire(&self) {
        if self.state().streams.is_empty() {
            self.stop.cancel();
        }
    }

    /// Ends every waiting call and refuses new ones. A reason already known (a GOAWAY)
    /// says more than the end of the connection that followed it.
    fn close(&self, error: ProbeError) {
        let mut state = self.state();
        let error = state.unusable.get_or_insert(error).clone();
        for (_, pending) in state.streams.drain() {
            let end = if pending.touched {
                End::Failed(error.clone())
            } else {
                End::Unprocessed(error.clone())
            };
            pending.end(Err(end));
        }
        drop(state);
        self.capacity.notify_waiters();
    }
}

async fn write_flush(io: &mut Writer, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Reads and handles frames until the connection ends, then ends every waiting call.
async fn read_loop(mut io: Reader, live: Arc<Live>) {
    let mut reader = FrameReader {
        decoder: hpack::Decoder::default(),
        continuation: None,
        received: 0,
        settled: false,
        finished_any: false,
    };
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let mut out = BytesMut::new();
    let stopped = live.stop.cancelled();
    tokio::pin!(stopped);
    let end = loop {
        let read = tokio::select! {
            biased;
            _ = &mut stopped => break ProbeError::transport("connection closed"),
            read = io.read_buf(&mut input) => read,
        };
        match read {
            Ok(0) if reader.settled => break ProbeError::transport("connection closed by backend"),
            Ok(0) => {
                break ProbeError::transport("connection closed by backend before http/2 settings");
            }
            Err(error) => break ProbeError::transport(&format!("read: {error}")),
            Ok(_) => {}
        }
        let handled = reader.frames(&mut input, &live, &mut out);
        if reader.finished_any {
            reader.finished_any = false;
            live.capacity.notify_waiters();
        }
        if let Err((_, error_code)) = &handled {
            frames::put_goaway(&mut out, 0, *error_code);
        }
        if !out.is_empty() {
            let mut output = live.writer.lock().await;
            let written =
                tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write_flush(&mut output.io, &out))
                    .await;
            out.clear();
            if handled.is_ok() {
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => break ProbeError::transport(&format!("write: {error}")),
                    Err(_) => break ProbeError::transport("backend stopped reading"),
                }
            }
        }
        if let Err((error, _)) = handled {
            break error;
        }
        // A connection that takes no new calls ends with its last one.
        if let Some(error) = {
            let state = live.state();
            state.unusable.clone().filter(|_| state.streams.is_empty())
        } {
            break error;
        }
        if input.is_empty() && input.capacity() > 4 * READ_BUFFER {
            input = BytesMut::with_capacity(READ_BUFFER);
        }
    };
    live.close(end);
}

/// A header block still waiting for its CONTINUATION frames.
struct Continuation {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// The reader's own state: the HPACK decoder (only the reader decodes, in frame order).
struct FrameReader {
    decoder: hpack::Decoder,
    continuation: Option<Continuation>,
    /// DATA bytes received since the connection window was last topped up.
    received: i64,
    /// The backend's first SETTINGS has arrived.
    settled: bool,
    /// A stream ended in the last batch (calls waiting for capacity may go on).
    finished_any: bool,
}

/// A connection error: the reason, and the code for our GOAWAY.
type ConnectionError = (ProbeError, u32);

fn protocol(reason: &str) -> ConnectionError {
    (
        ProbeError::transport(&format!("http/2 protocol error: {reason}")),
        code::PROTOCOL_ERROR,
    )
}

impl FrameReader {
    /// Handles every complete frame in `input`; control answers go to `out`.
    fn frames(
        &mut self,
        input: &mut BytesMut,
        live: &Live,
        out: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        loop {
            if !self.settled && input.starts_with(b"HTTP/") {
                return Err((
                    ProbeError::transport("backend answered HTTP/1.x, not HTTP/2"),
                    code::PROTOCOL_ERROR,
                ));
            }
            if input.len() < frames::FRAME_HEADER_LEN {
                return Ok(());
            }
            let header = FrameHeader::parse(input);
            if !self.settled {
                if header.kind != kind::SETTINGS || header.has(flag::ACK) {
                    return Err((
                        ProbeError::transport(
                            "backend does not speak HTTP/2 (its first frame is not SETTINGS)",
                        ),
                        code::PROTOCOL_ERROR,
                    ));
                }
                self.settled = true;
            }
            if header.length > MAX_FRAME_SIZE {
                return Err((
                    ProbeError::transport(&format!(
                        "http/2 frame of {} bytes exceeds {MAX_FRAME_SIZE}",
                        header.length
                    )),
                    code::FRAME_SIZE_ERROR,
                ));
            }
            let total = frames::FRAME_HEADER_LEN + header.length;
            if input.len() < total {
                input.reserve(total - input.len());
                return Ok(());
            }
            let payload = &input[frames::FRAME_HEADER_LEN..total];
            self.frame(header, payload, live, out)?;
            input.advance(total);
        }
    }

    fn frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        live: &Live,
        out: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        if let Some(continuation) = &self.continuation
            && (header.kind != kind::CONTINUATION || header.stream != continuation.stream)
        {
            return Err(protocol("header block interrupted"));
        }
        match header.kind {
            kind::DATA => self.data(header, payload, live, out),
            kind::HEADERS => {
                if header.stream == 0 || header.stream.is_multiple_of(2) {
                    return Err(protocol("HEADERS on a stream the agent did not open"));
                }
                let mut block = unpad(&header, payload)?;
                if header.has(flag::PRIORITY) {
                    block = block.get(5..).ok_or_else(|| protocol("short HEADERS"))?;
                }
                let end_stream = header.has(flag::END_STREAM);
                if header.has(flag::END_HEADERS) {
                    self.block(header.stream, block, end_stream, live, out)
                } else {
                    self.continuation = Some(Continuation {
                        stream: header.stream,
                        end_stream,
                        block: block.to_vec(),
                    });
                    Ok(())
                }
            }
            kind::CONTINUATION => {
                let Some(continuation) = self.continuation.as_mut() else {
                    return Err(protocol("CONTINUATION without HEADERS"));
                };
                if continuation.block.len() + payload.len() > frames::MAX_HEADER_BLOCK {
                    return Err((
                        ProbeError::transport("http/2 header block too large"),
                        code::PROTOCOL_ERROR,
                    ));
                }
                continuation.block.extend_from_slice(payload);
                if header.has(flag::END_HEADERS) {
                    let done = self.continuation.take().expect("checked above");
                    self.block(done.stream, &done.block, done.end_stream, live, out)?;
                }
                Ok(())
            }
            kind::RST_STREAM => {
                if header.stream == 0 || payload.len() != 4 {
                    return Err(protocol("malformed RST_STREAM"));
                }
                let error = u32::from_be_bytes(payload.try_into().expect("four bytes"));
                let reason = ProbeError::transport(&format!(
                    "stream reset by backend ({})",
                    frames::code_name(error)
                ));
                let end = if error == code::REFUSED_STREAM {
                    End::Unprocessed(reason)
                } else {
                    End::Failed(reason)
                };
                self.finished_any |= live.state().finish(header.stream, Err(end));
                Ok(())
            }
            kind::SETTINGS => self.settings(header, payload, live, out),
            kind::PUSH_PROMISE => Err(protocol("PUSH_PROMISE though push is disabled")),
            kind::PING => {
                if header.stream != 0 || payload.len() != 8 {
                    return Err((
                        ProbeError::transport("http/2: malformed PING"),
                        code::FRAME_SIZE_ERROR,
                    ));
                }
                if !header.has(flag::ACK) {
                    frames::put_ping_ack(out, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if header.stream != 0 || payload.len() < 8 {
                    return Err(protocol("malformed GOAWAY"));
                }
                let last = u32::from_be_bytes(payload[..4].try_into().expect("four bytes"))
                    & frames::MAX_STREAM_ID;
                let error = u32::from_be_bytes(payload[4..8].try_into().expect("four bytes"));
                let debug = String::from_utf8_lossy(&payload[8..payload.len().min(72)])
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>();
                let reason = ProbeError::transport(&if debug.is_empty() {
                    format!("backend sent GOAWAY ({})", frames::code_name(error))
                } else {
                    format!(
                        "backend sent GOAWAY ({}: {debug})",
                        frames::code_name(error)
                    )
                });
                let mut state = live.state();
                state.unusable.get_or_insert_with(|| reason.clone());
                let beyond: Vec<u32> = state
                    .streams
                    .keys()
                    .copied()
                    .filter(|&stream| stream > last)
                    .collect();
                for stream in beyond {
                    state.finish(stream, Err(End::Unprocessed(reason.clone())));
                }
                self.finished_any = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err((
                        ProbeError::transport("http/2: malformed WINDOW_UPDATE"),
                        code::FRAME_SIZE_ERROR,
                    ));
                }
                let increment = (u32::from_be_bytes(payload.try_into().expect("four bytes"))
                    & 0x7fff_ffff) as i64;
                if header.stream == 0 {
                    if increment == 0 {
                        return Err(protocol("WINDOW_UPDATE of zero"));
                    }
                    let mut state = live.state();
                    state.send_window += increment;
                    if state.send_window > frames::MAX_WINDOW {
                        return Err((
                            ProbeError::transport(
                                "http/2: backend overflowed the flow-control window",
                            ),
                            code::FLOW_CONTROL_ERROR,
                        ));
                    }
                    self.finished_any = true;
                }
                Ok(())
            }
            // PRIORITY and frame types this agent does not know are ignored, as RFC 9113
            // requires.
            _ => Ok(()),
        }
    }

    fn data(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        live: &Live,
        out: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        if header.stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included.
        self.received += payload.len() as i64;
        if self.received >= WINDOW_TOP_UP {
            frames::put_window_update(out, 0, self.received as u32);
            self.received = 0;
        }
        let data = unpad(&header, payload)?;
        let mut state = live.state();
        let Some(pending) = state.streams.get_mut(&header.stream) else {
            return Ok(());
        };
        pending.touched = true;
        let end_stream = header.has(flag::END_STREAM);
        let end = match &mut pending.sink {
            Sink::Unary(_) => match pending.answer.data(data) {
                Err(error) => {
                    frames::put_rst_stream(out, header.stream, code::CANCEL);
                    Some(Err(End::Failed(error)))
                }
                Ok(()) if end_stream => None,
                Ok(()) => return Ok(()),
            },
            Sink::Stream { events, unacked } => {
                *unacked += payload.len();
                if *unacked >= STREAM_TOP_UP && !end_stream {
                    frames::put_window_update(out, header.stream, *unacked as u32);
                    *unacked = 0;
                }
                let delivered = pending.answer.watch_data(data).and_then(|statuses| {
                    statuses.into_iter().try_for_each(|status| {
                        events.try_send(WatchEvent::Status(status)).map_err(|_| {
                            ProbeError::transport("watch messages arrive faster than they are read")
                        })
                    })
                });
                match delivered {
                    Err(error) => {
                        frames::put_rst_stream(out, header.stream, code::CANCEL);
                        Some(Err(End::Failed(error)))
                    }
                    Ok(()) if end_stream => None,
                    Ok(()) => return Ok(()),
                }
            }
        };
        let pending = state.streams.remove(&header.stream).expect("found above");
        self.finished_any = true;
        match end {
            Some(end) => pending.end(end),
            None => finish_answer(pending),
        }
        Ok(())
    }

    /// A complete header block: decoded always (the HPACK table must follow every block),
    /// applied to its call if that is still waiting.
    fn block(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        live: &Live,
        out: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        let mut state = live.state();
        let mut pending = state.streams.get_mut(&stream);
        self.decoder
            .decode(block, |name, value| {
                if let Some(pending) = pending.as_mut() {
                    pending.answer.field(name, value);
                }
            })
            .map_err(|error| {
                (
                    ProbeError::transport(&format!("http/2 header compression: {error}")),
                    code::COMPRESSION_ERROR,
                )
            })?;
        let Some(pending) = pending else {
            return Ok(());
        };
        pending.touched = true;
        let problem = match pending.answer.end_block(end_stream) {
            Err(error) => Some(error),
            // A stream's headers are checked as soon as they come: a Watch may send
            // nothing more for a long time.
            Ok(()) if !end_stream && matches!(pending.sink, Sink::Stream { .. }) => {
                pending.answer.head_error()
            }
            Ok(()) => None,
        };
        match problem {
            Some(error) => {
                if !end_stream {
                    frames::put_rst_stream(out, stream, code::CANCEL);
                }
                self.finished_any |= state.finish(stream, Err(End::Failed(error)));
            }
            None if end_stream => {
                let pending = state.streams.remove(&stream).expect("found above");
                finish_answer(pending);
                self.finished_any = true;
            }
            None => {}
        }
        Ok(())
    }

    fn settings(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        live: &Live,
        out: &mut BytesMut,
    ) -> Result<(), ConnectionError> {
        if header.stream != 0 {
            return Err(protocol("SETTINGS on a stream"));
        }
        if header.has(flag::ACK) {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err((
                    ProbeError::transport("http/2: malformed SETTINGS ack"),
                    code::FRAME_SIZE_ERROR,
                ))
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err((
                ProbeError::transport("http/2: malformed SETTINGS"),
                code::FRAME_SIZE_ERROR,
            ));
        }
        let mut state = live.state();
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                0x3 => state.max_streams = value as usize,
                0x4 => {
                    if value as i64 > frames::MAX_WINDOW {
                        return Err((
                            ProbeError::transport("http/2: initial window size too large"),
                            code::FLOW_CONTROL_ERROR,
                        ));
                    }
                    state.stream_window = value as i64;
                }
                0x5 => {
                    if !(MAX_FRAME_SIZE as u32..1 << 24).contains(&value) {
                        return Err(protocol("invalid max frame size"));
                    }
                    state.max_frame = value as usize;
                }
                // HEADER_TABLE_SIZE does not matter to an encoder that never indexes;
                // other settings do not apply to a client.
                _ => {}
            }
        }
        frames::put_settings_ack(out);
        self.finished_any = true;
        Ok(())
    }
}

/// A call whose stream ended normally: a Check's outcome, or why a Watch ended.
fn finish_answer(pending: Pending) {
    match pending.sink {
        Sink::Unary(reply) => {
            let _ = reply.send(Ok(pending.answer.outcome()));
        }
        Sink::Stream { events, .. } => {
            let _ = events.try_send(WatchEvent::Ended(pending.answer.watch_end()));
        }
    }
}

/// A DATA or HEADERS payload without its padding.
fn unpad<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], ConnectionError> {
    if !header.has(flag::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return Err(protocol("padded frame without a pad length"));
    };
    if pad as usize > rest.len() {
        return Err(protocol("padding longer than the frame"));
    }
    Ok(&rest[..rest.len() - pad as usize])
}
