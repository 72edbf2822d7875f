//! A scripted HTTP/2 server written frame by frame, for backends that misbehave in ways a
//! real gRPC server never would (or does only when hostile). It reads the client's preface,
//! sends its SETTINGS, acknowledges the client's SETTINGS and (unless told not to) PINGs,
//! decodes each request's header block (HPACK) and body (the service name), and answers a
//! request with the steps a script gives: bytes built with the helpers at the end of this
//! file, a health answer from its status table (a Check, or a Watch kept open and sent every
//! change), a late answer, silence, a flood, a close or a TCP reset.
//!
//! Options add what hostile cases need: server SETTINGS, a stream limit it enforces (a
//! stream opened past it is refused with REFUSED_STREAM, as RFC 9113 §5.1.2 allows), a
//! strict HPACK check after SETTINGS_HEADER_TABLE_SIZE 0 (GOAWAY COMPRESSION_ERROR, as
//! nghttp2 answers), and stream windows opened one WINDOW_UPDATE per stream. Every
//! connection has an index (0 is the first accepted) and keeps what the client sent it (each
//! frame's kind, flags, stream, length and first payload bytes), the bytes it wrote, and
//! whether the client closed it. The backend counts requests, resets, accepted and open
//! connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::AbortOnDrop;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;

pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
pub const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// Frames kept per connection, and calls per backend: a flood cannot exhaust the test.
const RECORD_LIMIT: usize = 100_000;
/// Payload bytes kept of each frame received.
const HEAD_BYTES: usize = 16;

/// What the server does for one request.
pub enum Step {
    /// Writes these bytes (frames built with the helpers below).
    Send(Vec<u8>),
    /// Closes the connection.
    Close,
    /// Resets the TCP connection (RST, not FIN).
    Reset,
    /// Answers as a health server from the status table: a Check at once (NOT_FOUND for an
    /// unknown service), a Watch with headers and the status, kept open and sent each change.
    Serve,
    /// Writes `bytes` after `after`, unless the client has reset `stream` by then (as a
    /// server's cancelled handler would not answer).
    Later {
        after: Duration,
        stream: u32,
        bytes: Vec<u8>,
    },
    /// Writes nothing more on this connection, ever (no answers, no SETTINGS or PING acks),
    /// and keeps the socket open. It still reads and records what the client sends: to the
    /// client that is the same as a peer that stopped reading, and the test sees its PINGs.
    Silence,
    /// Writes `chunk` again and again (no faster than `pacer` allows, if given) until the
    /// client closes the connection.
    Flood {
        chunk: Vec<u8>,
        pacer: Option<Arc<Pacer>>,
    },
}

/// One request, as a responder sees it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The connection's index: 0 for the first accepted.
    pub conn: usize,
    pub stream: u32,
    /// Requests before this one, on every connection.
    pub n: usize,
    /// Requests before this one on this connection.
    pub on_conn: usize,
    pub path: String,
    pub service: String,
    pub at: Instant,
}

/// The steps for the `n`th request (from 0) on stream `stream`.
pub type Script = Arc<dyn Fn(u32, usize) -> Vec<Step> + Send + Sync>;

/// The steps for one request, knowing its connection, path and service.
pub type Responder = Arc<dyn Fn(&Call) -> Vec<Step> + Send + Sync>;

/// A responder that answers every request as a health server does.
pub fn serving() -> Responder {
    Arc::new(|_| vec![Step::Serve])
}

#[derive(Clone)]
pub struct Options {
    /// The server's SETTINGS, sent once the client's preface is read.
    pub settings: Vec<(u16, u32)>,
    pub answer_pings: bool,
    /// Refuses (RST_STREAM REFUSED_STREAM) a stream opened while MAX_CONCURRENT_STREAMS are
    /// open. A limit applies from the moment it is sent, acknowledged or not, as grpc-go and
    /// nghttp2 servers do: REFUSED_STREAM says the stream was not processed, so a client can
    /// always make it again.
    pub enforce_stream_limit: bool,
    /// After the client acknowledges SETTINGS_HEADER_TABLE_SIZE 0, its next header block must
    /// start with a dynamic table size update and none may use the dynamic table; else
    /// GOAWAY COMPRESSION_ERROR and close.
    pub strict_table_size: bool,
    /// Sends WINDOW_UPDATE of this much on each stream once its HEADERS arrive (for a server
    /// that announces SETTINGS_INITIAL_WINDOW_SIZE 0).
    pub open_stream_windows: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            settings: Vec::new(),
            answer_pings: true,
            enforce_stream_limit: false,
            strict_table_size: false,
            open_stream_windows: None,
        }
    }
}

pub struct RawBackend {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    /// RST_STREAM frames received from the client.
    pub resets: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
}

/// What the accept loop, the connections and the test share.
struct Shared {
    options: Mutex<Options>,
    responder: Responder,
    requests: Arc<AtomicUsize>,
    resets: Arc<AtomicUsize>,
    /// Serving status per service; "" starts SERVING.
    statuses: Mutex<HashMap<String, i32>>,
    /// Bumped on every status change, for Watch streams.
    version: tokio::sync::watch::Sender<u64>,
    connections: Mutex<Vec<Arc<Conn>>>,
    calls: Mutex<Vec<Call>>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        for conn in lock(&self.shared.connections).iter() {
            conn.stop.cancel();
        }
    }
}

impl RawBackend {
    /// Answers each request with `script(stream, n)`, with default options.
    pub async fn start(script: Script) -> RawBackend {
        let responder: Responder = Arc::new(move |call: &Call| script(call.stream, call.n));
        RawBackend::start_with(Options::default(), responder).await
    }

    pub async fn start_with(options: Options, responder: Responder) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            options: Mutex::new(options),
            responder,
            requests: Arc::new(AtomicUsize::new(0)),
            resets: Arc::new(AtomicUsize::new(0)),
            statuses: Mutex::new(HashMap::from([(String::new(), 1)])),
            version: tokio::sync::watch::Sender::new(0),
            connections: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        });
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&accepted),
            Arc::clone(&open),
        ));
        RawBackend {
            port,
            requests: Arc::clone(&shared.requests),
            resets: Arc::clone(&shared.resets),
            accepted,
            open,
            shared,
            _task: AbortOnDrop(task),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Sets a service's serving status (1 SERVING, 2 NOT_SERVING); open Watch streams are
    /// sent the change.
    pub fn set_status(&self, service: &str, status: i32) {
        lock(&self.shared.statuses).insert(service.to_string(), status);
        self.shared.version.send_modify(|version| *version += 1);
    }

    /// Sends SETTINGS to every open connection, and to later ones in place of the same ids.
    pub fn send_settings(&self, settings: &[(u16, u32)]) {
        {
            let mut options = lock(&self.shared.options);
            options
                .settings
                .retain(|(id, _)| !settings.iter().any(|(new, _)| new == id));
            options.settings.extend_from_slice(settings);
        }
        for conn in self.connections().iter().filter(|conn| conn.is_open()) {
            conn.state().sent_settings(settings);
            conn.send(Out::Bytes(settings_frame(settings)));
        }
    }

    /// Makes connection `index` silent from now on (see [`Step::Silence`]).
    pub fn silence(&self, index: usize) {
        self.connection(index).send(Out::Silence);
    }

    /// Every connection accepted so far, in order.
    pub fn connections(&self) -> Vec<Arc<Conn>> {
        lock(&self.shared.connections).clone()
    }

    pub fn connection(&self, index: usize) -> Arc<Conn> {
        let connections = lock(&self.shared.connections);
        let count = connections.len();
        let conn = connections.get(index);
        Arc::clone(conn.unwrap_or_else(|| panic!("no connection {index}: {count} accepted")))
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// Streams refused for the stream limit, on every connection.
    pub fn refused(&self) -> usize {
        self.connections().iter().map(|conn| conn.refused()).sum()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let index = accepted.fetch_add(1, Ordering::SeqCst);
        open.fetch_add(1, Ordering::SeqCst);
        let (out, queue) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            index,
            accepted_at: Instant::now(),
            received: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            silent: AtomicBool::new(false),
            closed_by_peer: Mutex::new(None),
            state: Mutex::new(ConnState::default()),
            out,
            stop: CancellationToken::new(),
        });
        lock(&shared.connections).push(Arc::clone(&conn));
        let (shared, open) = (Arc::clone(&shared), Arc::clone(&open));
        tokio::spawn(async move {
            let (reader, writer) = stream.into_split();
            tokio::join!(
                read_loop(reader, &conn, &shared),
                write_loop(writer, &conn, queue),
                push_watch_changes(&conn, &shared),
            );
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// One accepted connection, as the test inspects it.
pub struct Conn {
    pub index: usize,
    pub accepted_at: Instant,
    received: Mutex<Vec<Frame>>,
    written: AtomicU64,
    silent: AtomicBool,
    closed_by_peer: Mutex<Option<Instant>>,
    state: Mutex<ConnState>,
    out: mpsc::UnboundedSender<Out>,
    /// Ends the connection's tasks (and so closes the socket).
    stop: CancellationToken,
}

/// A frame the client sent.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub len: usize,
    /// The first bytes of the payload.
    pub head: Vec<u8>,
    pub at: Instant,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.head.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().unwrap()))
    }
}

impl Conn {
    pub fn frames(&self) -> Vec<Frame> {
        lock(&self.received).clone()
    }

    /// Whether the client sent a frame of this kind.
    pub fn saw(&self, kind: u8) -> bool {
        lock(&self.received).iter().any(|frame| frame.kind == kind)
    }

    /// Bytes written to the client.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// When the client closed the connection (EOF or reset seen by a read or a write).
    pub fn closed_by_peer(&self) -> Option<Instant> {
        *lock(&self.closed_by_peer)
    }

    pub fn is_open(&self) -> bool {
        !self.stop.is_cancelled()
    }

    /// Streams refused for the stream limit.
    pub fn refused(&self) -> usize {
        self.state().refused
    }

    /// The stream limit in force, if any.
    pub fn limit(&self) -> Option<u32> {
        self.state().limit
    }

    /// Whether the client has acknowledged every SETTINGS sent on this connection.
    pub fn settings_acknowledged(&self) -> bool {
        self.state().pending_settings.is_empty()
    }

    /// Why the strict HPACK check closed the connection, if it did.
    pub fn violation(&self) -> Option<String> {
        self.state().violation.clone()
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    fn send(&self, out: Out) {
        let _ = self.out.send(out);
    }

    fn peer_closed(&self) {
        lock(&self.closed_by_peer).get_or_insert_with(Instant::now);
        self.stop.cancel();
    }
}

/// What the reader, the writer and the test share about one connection.
#[derive(Default)]
struct ConnState {
    /// SETTINGS sent and not yet acknowledged, oldest first.
    pending_settings: VecDeque<Vec<(u16, u32)>>,
    limit: Option<u32>,
    /// Streams counted against the limit: opened, and not yet ended by either side.
    active: HashSet<u32>,
    /// Requests whose header block arrived and whose body is still coming.
    requests: HashMap<u32, Request>,
    reset_by_client: HashSet<u32>,
    /// Open Watch streams: the service and the status last sent.
    watches: HashMap<u32, (String, i32)>,
    refused: usize,
    requests_seen: usize,
    violation: Option<String>,
}

impl ConnState {
    fn sent_settings(&mut self, settings: &[(u16, u32)]) {
        self.pending_settings.push_back(settings.to_vec());
        for &(id, value) in settings {
            if id == MAX_CONCURRENT_STREAMS {
                self.limit = Some(value);
            }
        }
    }
}

struct Request {
    path: String,
    body: Vec<u8>,
}

/// What the writer is asked to do, in order.
enum Out {
    Bytes(Vec<u8>),
    Close,
    Reset,
    Silence,
    Flood(Vec<u8>, Option<Arc<Pacer>>),
}

/// Paces floods: all that share one write no faster than its rate together.
pub struct Pacer {
    bytes_per_second: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Arc<Pacer> {
        Arc::new(Pacer {
            bytes_per_second: bytes_per_second as f64,
            next: Mutex::new(Instant::now()),
        })
    }

    /// Waits for this many bytes' turn.
    async fn wait(&self, bytes: usize) {
        let turn = {
            let mut next = lock(&self.next);
            let turn = (*next).max(Instant::now());
            *next = turn + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second);
            turn
        };
        tokio::time::sleep_until(turn).await;
    }
}

async fn write_loop(mut io: OwnedWriteHalf, conn: &Conn, mut queue: mpsc::UnboundedReceiver<Out>) {
    loop {
        let next = tokio::select! {
            _ = conn.stop.cancelled() => return,
            next = queue.recv() => next,
        };
        let Some(out) = next else { return };
        let silent = conn.silent.load(Ordering::SeqCst);
        match out {
            Out::Bytes(_) | Out::Flood(..) if silent => {}
            Out::Bytes(bytes) => {
                if io.write_all(&bytes).await.is_err() {
                    return conn.peer_closed();
                }
                conn.written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                forget_ended_streams(conn, &bytes);
            }
            Out::Flood(chunk, pacer) => return flood(&mut io, conn, &chunk, pacer).await,
            Out::Silence => conn.silent.store(true, Ordering::SeqCst),
            Out::Close => return conn.stop.cancel(),
            Out::Reset => {
                // SO_LINGER 0: closing sends RST (non-blocking with a zero linger).
                let _ = socket2::SockRef::from(io.as_ref()).set_linger(Some(Duration::ZERO));
                // No FIN first: the socket closes (with RST) when the reader lets go.
                io.forget();
                return conn.stop.cancel();
            }
        }
    }
}

/// Writes `chunk` until the connection ends; nothing else is written after a flood.
async fn flood(io: &mut OwnedWriteHalf, conn: &Conn, chunk: &[u8], pacer: Option<Arc<Pacer>>) {
    loop {
        let turn = async {
            if let Some(pacer) = &pacer {
                pacer.wait(chunk.len()).await;
            }
            io.write_all(chunk).await
        };
        let written = tokio::select! {
            _ = conn.stop.cancelled() => return,
            written = turn => written,
        };
        if written.is_err() {
            return conn.peer_closed();
        }
        conn.written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
}

/// Streams the server ended (END_STREAM or RST_STREAM) no longer count against the limit.
fn forget_ended_streams(conn: &Conn, mut bytes: &[u8]) {
    let mut state = conn.state();
    while bytes.len() >= 9 {
        let length = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
        let (kind, flags) = (bytes[3], bytes[4]);
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let ends = kind == RST_STREAM || (kind <= HEADERS && flags & END_STREAM != 0);
        if ends {
            state.active.remove(&stream);
            state.watches.remove(&stream);
        }
        bytes = bytes.get(9 + length..).unwrap_or_default();
    }
}

/// Sends each open Watch stream its service's status whenever it changes.
async fn push_watch_changes(conn: &Conn, shared: &Shared) {
    let mut version = shared.version.subscribe();
    loop {
        tokio::select! {
            _ = conn.stop.cancelled() => return,
            changed = version.changed() => if changed.is_err() { return },
        }
        let statuses = lock(&shared.statuses).clone();
        let mut state = conn.state();
        for (stream, (service, last)) in state.watches.iter_mut() {
            let now = statuses.get(service).copied().unwrap_or(SERVICE_UNKNOWN);
            if now != *last {
                *last = now;
                conn.send(Out::Bytes(data(*stream, &message(now), false)));
            }
        }
    }
}

const SERVICE_UNKNOWN: i32 = 3;

/// The reader's own state: the header block being assembled and the HPACK decoder.
struct Reader<'a> {
    conn: &'a Arc<Conn>,
    shared: &'a Shared,
    options: Options,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block waiting for CONTINUATION: stream, END_STREAM, bytes so far.
    block: Option<(u32, bool, Vec<u8>)>,
    /// The dynamic table size the client's encoder may use, and whether its next header
    /// block must start by saying it lowered it.
    table_max: usize,
    expect_size_update: bool,
    /// Request DATA not yet given back with a WINDOW_UPDATE.
    unacked: usize,
}

async fn read_loop(mut io: OwnedReadHalf, conn: &Arc<Conn>, shared: &Shared) {
    let options = lock(&shared.options).clone();
    let mut reader = Reader {
        conn,
        shared,
        decoder: loona_hpack::Decoder::new(),
        block: None,
        table_max: 4096,
        expect_size_update: false,
        unacked: 0,
        options,
    };
    let mut preface = [0u8; 24];
    let read = tokio::select! {
        _ = conn.stop.cancelled() => return,
        read = io.read_exact(&mut preface) => read,
    };
    if read.is_err() {
        return conn.peer_closed();
    }
    let settings = reader.options.settings.clone();
    conn.state().sent_settings(&settings);
    conn.send(Out::Bytes(settings_frame(&settings)));
    loop {
        let frame = tokio::select! {
            _ = conn.stop.cancelled() => return,
            frame = read_frame(&mut io) => frame,
        };
        let Ok((header, payload)) = frame else {
            return conn.peer_closed();
        };
        reader.frame(header, payload);
    }
}

async fn read_frame(io: &mut OwnedReadHalf) -> std::io::Result<([u8; 9], Vec<u8>)> {
    let mut header = [0u8; 9];
    io.read_exact(&mut header).await?;
    let length = (header[0] as usize) << 16 | (header[1] as usize) << 8 | header[2] as usize;
    let mut payload = vec![0u8; length];
    io.read_exact(&mut payload).await?;
    Ok((header, payload))
}

impl Reader<'_> {
    fn frame(&mut self, header: [u8; 9], payload: Vec<u8>) {
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        {
            let mut received = lock(&self.conn.received);
            if received.len() < RECORD_LIMIT {
                received.push(Frame {
                    kind,
                    flags,
                    stream,
                    len: payload.len(),
                    head: payload[..payload.len().min(HEAD_BYTES)].to_vec(),
                    at: Instant::now(),
                });
            }
        }
        match kind {
            SETTINGS if flags & ACK == 0 => {
                self.conn.send(Out::Bytes(frame(SETTINGS, ACK, 0, &[])))
            }
            SETTINGS => self.settings_acknowledged(),
            PING if flags & ACK == 0 && self.options.answer_pings => {
                self.conn.send(Out::Bytes(frame(PING, ACK, 0, &payload)));
            }
            RST_STREAM => {
                self.shared.resets.fetch_add(1, Ordering::SeqCst);
                let mut state = self.conn.state();
                state.reset_by_client.insert(stream);
                state.active.remove(&stream);
                state.requests.remove(&stream);
                state.watches.remove(&stream);
            }
            HEADERS => {
                let block = header_block(flags, &payload);
                self.block = Some((stream, flags & END_STREAM != 0, block.to_vec()));
                if flags & END_HEADERS != 0 {
                    self.end_block();
                }
            }
            CONTINUATION => {
                if let Some((_, _, block)) = self.block.as_mut() {
                    block.extend_from_slice(&payload);
                }
                if flags & END_HEADERS != 0 {
                    self.end_block();
                }
            }
            DATA => self.data(stream, flags, &payload),
            _ => {}
        }
    }

    /// The oldest SETTINGS the server sent are in force for the client's encoder now.
    fn settings_acknowledged(&mut self) {
        let Some(settings) = self.conn.state().pending_settings.pop_front() else {
            return;
        };
        for (id, value) in settings {
            if id == HEADER_TABLE_SIZE && (value as usize) < self.table_max {
                self.table_max = value as usize;
                self.expect_size_update = self.options.strict_table_size;
            }
        }
    }

    fn end_block(&mut self) {
        let Some((stream, end_stream, block)) = self.block.take() else {
            return;
        };
        if let Err(violation) = self.check_table_use(&block) {
            return self.compression_error(stream, violation);
        }
        let mut path = String::new();
        let decoded = self.decoder.decode_with_cb(&block, |name, value| {
            if &*name == b":path" {
                path = String::from_utf8_lossy(&value).into_owned();
            }
        });
        if let Err(error) = decoded {
            return self.compression_error(stream, format!("undecodable header block: {error}"));
        }
        let mut state = self.conn.state();
        if state.active.contains(&stream) || state.reset_by_client.contains(&stream) {
            return; // trailers, or a stream already given up
        }
        if self.options.enforce_stream_limit
            && let Some(limit) = state.limit
            && state.active.len() >= limit as usize
        {
            state.refused += 1;
            drop(state);
            return self
                .conn
                .send(Out::Bytes(rst_stream(stream, REFUSED_STREAM)));
        }
        state.active.insert(stream);
        let request = Request {
            path,
            body: Vec::new(),
        };
        state.requests.insert(stream, request);
        drop(state);
        if let Some(increment) = self.options.open_stream_windows {
            self.conn.send(Out::Bytes(window_update(stream, increment)));
        }
        if end_stream {
            self.dispatch(stream);
        }
    }

    /// RFC 7541 §4.2 and what nghttp2 enforces: after the client acknowledged a smaller
    /// table, its next block starts with a size update; at size 0, no block may insert into
    /// or refer to the dynamic table.
    fn check_table_use(&mut self, block: &[u8]) -> Result<(), String> {
        if !self.options.strict_table_size {
            return Ok(());
        }
        let representations = representations(block)?;
        if std::mem::take(&mut self.expect_size_update)
            && !matches!(representations.first(), Some(Representation::SizeUpdate(_)))
        {
            return Err(format!(
                "the first header block after SETTINGS_HEADER_TABLE_SIZE {} was acknowledged \
                 does not start with a dynamic table size update (first byte {:#04x})",
                self.table_max,
                block.first().copied().unwrap_or_default()
            ));
        }
        for representation in representations {
            let problem = match representation {
                Representation::SizeUpdate(size) if size > self.table_max => {
                    format!("size update to {size} above the {} allowed", self.table_max)
                }
                _ if self.table_max > 0 => continue,
                Representation::Indexed(index) if index > STATIC_ENTRIES => {
                    format!("refers to dynamic table entry {index} of an empty table")
                }
                Representation::Literal { name, .. } if name > STATIC_ENTRIES => {
                    format!("names dynamic table entry {name} of an empty table")
                }
                Representation::Literal {
                    incremental: true, ..
                } => "inserts into the dynamic table (literal with incremental indexing)".into(),
                _ => continue,
            };
            return Err(problem);
        }
        Ok(())
    }

    fn compression_error(&mut self, stream: u32, violation: String) {
        self.conn.state().violation.get_or_insert(violation);
        self.conn
            .send(Out::Bytes(goaway(stream, COMPRESSION_ERROR, b"")));
        self.conn.send(Out::Close);
    }

    fn data(&mut self, stream: u32, flags: u8, payload: &[u8]) {
        // Flow control: the client's DATA is given back once 16 KiB of it has arrived.
        self.unacked += payload.len();
        if self.unacked >= 16 * 1024 {
            self.conn
                .send(Out::Bytes(window_update(0, self.unacked as u32)));
            self.unacked = 0;
        }
        if let Some(request) = self.conn.state().requests.get_mut(&stream) {
            request.body.extend_from_slice(payload);
        }
        if flags & END_STREAM != 0 {
            self.dispatch(stream);
        }
    }

    /// A whole request: runs the responder and carries out its steps.
    fn dispatch(&mut self, stream: u32) {
        // A stream refused, reset or already answered is no request (any more).
        let (request, on_conn) = {
            let mut state = self.conn.state();
            let Some(request) = state.requests.remove(&stream) else {
                return;
            };
            state.requests_seen += 1;
            (request, state.requests_seen - 1)
        };
        let call = Call {
            conn: self.conn.index,
            stream,
            n: self.shared.requests.fetch_add(1, Ordering::SeqCst),
            on_conn,
            service: service_of(&request.body),
            path: request.path,
            at: Instant::now(),
        };
        {
            let mut calls = lock(&self.shared.calls);
            if calls.len() < RECORD_LIMIT {
                calls.push(call.clone());
            }
        }
        for step in (self.shared.responder)(&call) {
            self.step(&call, step);
        }
    }

    fn step(&mut self, call: &Call, step: Step) {
        let conn = self.conn;
        match step {
            Step::Send(bytes) => conn.send(Out::Bytes(bytes)),
            Step::Close => conn.send(Out::Close),
            Step::Reset => conn.send(Out::Reset),
            Step::Silence => conn.send(Out::Silence),
            Step::Flood { chunk, pacer } => conn.send(Out::Flood(chunk, pacer)),
            Step::Serve => self.serve(call),
            Step::Later {
                after,
                stream,
                bytes,
            } => {
                let conn = Arc::clone(conn);
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    if !conn.state().reset_by_client.contains(&stream) {
                        conn.send(Out::Bytes(bytes));
                    }
                });
            }
        }
    }

    fn serve(&mut self, call: &Call) {
        let status = lock(&self.shared.statuses).get(&call.service).copied();
        let stream = call.stream;
        if call.path == WATCH_PATH {
            let status = status.unwrap_or(SERVICE_UNKNOWN);
            let service = call.service.clone();
            self.conn.state().watches.insert(stream, (service, status));
            let opening = [
                headers(stream, GRPC_HEADERS, false),
                data(stream, &message(status), false),
            ];
            return self.conn.send(Out::Bytes(opening.concat()));
        }
        let answer = match status {
            Some(status) => answer(stream, status),
            None => headers(
                stream,
                &[
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "5"),
                ],
                true,
            ),
        };
        self.conn.send(Out::Bytes(answer));
    }
}

/// The header block fragment of a HEADERS payload: without padding and priority.
fn header_block(flags: u8, payload: &[u8]) -> &[u8] {
    const PADDED: u8 = 0x8;
    const PRIORITY: u8 = 0x20;
    let mut block = payload;
    let mut pad = 0;
    if flags & PADDED != 0 && !block.is_empty() {
        pad = block[0] as usize;
        block = &block[1..];
    }
    if flags & PRIORITY != 0 {
        block = block.get(5..).unwrap_or_default();
    }
    &block[..block.len().saturating_sub(pad)]
}

/// The service a HealthCheckRequest body names ("" if it names none or is malformed).
fn service_of(body: &[u8]) -> String {
    body.get(5..)
        .and_then(|message| haproxy_grpc_agent::probe::pb::HealthCheckRequest::decode(message).ok())
        .map(|request| request.service)
        .unwrap_or_default()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// HPACK representations (RFC 7541 §6), enough to see how a block uses the dynamic table.

/// Entries in HPACK's static table; higher indexes are the dynamic table's.
const STATIC_ENTRIES: usize = 61;

#[derive(Debug)]
enum Representation {
    Indexed(usize),
    /// A literal field: the index of its name (0: the name is a literal too).
    Literal {
        incremental: bool,
        name: usize,
    },
    SizeUpdate(usize),
}

fn representations(block: &[u8]) -> Result<Vec<Representation>, String> {
    let mut at = 0;
    let mut found = Vec::new();
    while at < block.len() {
        let first = block[at];
        let representation = if first & 0x80 != 0 {
            Representation::Indexed(integer(block, &mut at, 7)?)
        } else if first & 0xe0 == 0x20 {
            Representation::SizeUpdate(integer(block, &mut at, 5)?)
        } else {
            let incremental = first & 0xc0 == 0x40;
            let name = integer(block, &mut at, if incremental { 6 } else { 4 })?;
            if name == 0 {
                skip_string(block, &mut at)?;
            }
            skip_string(block, &mut at)?;
            Representation::Literal { incremental, name }
        };
        found.push(representation);
    }
    Ok(found)
}

fn integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, String> {
    let truncated = || "truncated HPACK integer".to_string();
    let mask = (1usize << prefix) - 1;
    let mut value = *block.get(*at).ok_or_else(truncated)? as usize & mask;
    *at += 1;
    if value < mask {
        return Ok(value);
    }
    for shift in (0..28).step_by(7) {
        let byte = *block.get(*at).ok_or_else(truncated)?;
        *at += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("HPACK integer too long".into())
}

fn skip_string(block: &[u8], at: &mut usize) -> Result<(), String> {
    let length = integer(block, at, 7)?;
    *at += length;
    if *at > block.len() {
        return Err("truncated HPACK string".into());
    }
    Ok(())
}

// Frames, for scripts.

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings_frame(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(settings.len() * 6);
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK block of literal fields without indexing (new names, no Huffman).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
    }
    out
}

/// One literal field with incremental indexing (a new name): the client's decoder adds it
/// to its dynamic table, where it becomes entry 62 (`0xbe` refers to it).
pub fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    string(&mut out, name.as_bytes());
    string(&mut out, value.as_bytes());
    out
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths up to 126 fit the 7-bit prefix; longer ones continue.
    if bytes.len() < 127 {
        out.push(bytes.len() as u8);
    } else {
        out.push(127);
        let mut rest = bytes.len() - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(bytes);
}

pub fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block(fields))
}

pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// A length-prefixed HealthCheckResponse with this status value.
pub fn message(status: i32) -> Vec<u8> {
    let encoded = haproxy_grpc_agent::probe::pb::HealthCheckResponse { status }.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    out
}

pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub const GRPC_HEADERS: &[(&str, &str)] =
    &[(":status", "200"), ("content-type", "application/grpc")];

/// A well-formed answer with this serving status: headers, message, trailers.
pub fn answer(stream: u32, status: i32) -> Vec<u8> {
    [
        headers(stream, GRPC_HEADERS, false),
        data(stream, &message(status), false),
        headers(stream, &[("grpc-status", "0")], true),
    ]
    .concat()
}
