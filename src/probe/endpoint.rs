//! One backend endpoint's HTTP/2 connections, through the `h2` crate configured as a
//! hardened client. This module owns the connections' life (see ARCHITECTURE.md, "A
//! backend connection's life"): where a call goes, when another connection is opened,
//! when one is retired and closed, the keep-alive PING. The calls themselves are in
//! [`super::call`].
//!
//! - A Check takes a free stream slot on any connection; a Watch only where one slot stays
//!   free for Checks after it. With no room, another connection is opened, up to
//!   `grpc_max_connections`; past it a Check waits for a slot (within its deadline) and a
//!   Watch is refused (its target is polled).
//! - A connection that takes no new calls (GOAWAY, REFUSED_STREAM, an error, no PING
//!   answer) leaves the pool at once and is closed when its last call ends, and at the
//!   latest connect + RPC timeout after it was retired.
//! - A connection that carries Watch streams is proven alive once per `liveness_interval`,
//!   whatever the number of targets watched there: by a PING, and every third interval
//!   by a liveness Check (service `""`) instead. The PING proves the connection and the
//!   backend's HTTP/2 stack, and costs a fraction of a Check; the Check proves the
//!   backend's handlers still run (a server can answer PINGs while they are wedged), and
//!   its answer is the data that gRPC servers want between PINGs (grpc-go and C-core
//!   answer a third PING without data in five minutes with GOAWAY `too_many_pings`). Any
//!   gRPC answer to the Check will do; no answer to either within the RPC timeout closes
//!   the connection, which ends its streams (and their targets are polled).
//! - A connection is PINGed when a call on it times out, and when it carries streams but
//!   nothing was heard on it for `liveness_interval`; no answer within the RPC timeout
//!   closes it.
//! - The drivers' timers fire on 25 ms boundaries, so connections due together wake the
//!   runtime once.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::connect::{ConnectFailure, ConnectTo};
use super::grpc::Timeouts;
use super::{BoxFuture, Heard, ProbeError, errors};

/// The largest frame the agent accepts: the protocol's default, never raised.
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// The largest decoded header list the agent accepts; a health answer needs a few hundred
/// bytes. h2 closes a connection whose header blocks decode to far more.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// A stream's receive window: room for the largest health message and its framing.
pub const STREAM_WINDOW: u32 = 32 * 1024;
/// The connection's receive window, shared by its streams.
pub const CONNECTION_WINDOW: u32 = 128 * 1024;
/// Request bytes h2 may buffer per stream (a request is a few hundred bytes).
pub const SEND_BUFFER: usize = 16 * 1024;
/// Streams the agent reset that h2 remembers (to ignore their late frames).
pub const MAX_RESET_STREAMS: usize = 64;
/// Streams the backend may make the agent reset by breaking the protocol, before h2
/// closes the connection.
pub const MAX_ERROR_RESETS: usize = 64;

/// TLS for an `ssl` endpoint: the client configuration and the name to verify.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
    /// Whether the agent presents a client certificate (to explain a close after the
    /// handshake).
    pub client_auth: bool,
}

/// The h2 client settings every connection uses.
pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .enable_push(false)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_reset_streams(MAX_RESET_STREAMS)
        .max_local_error_reset_streams(Some(MAX_ERROR_RESETS));
    builder
}

/// A connection with Watch streams gets a liveness Check every this many keep-alive
/// intervals (a PING in the others): two PINGs between Checks stay within the two ping
/// strikes gRPC servers allow.
pub const CHECK_EVERY: u32 = 3;

/// The drivers' timers fire on these boundaries (from one epoch for the process): a
/// thread wake-up costs more than the work a keep-alive does.
const TIMER_SLOT: Duration = Duration::from_millis(25);

/// The first timer boundary at or after `at`.
fn slotted(at: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let slot = TIMER_SLOT.as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos();
    epoch + Duration::from_nanos((since.div_ceil(slot) * slot) as u64)
}

/// A liveness Check on one connection, made by the calls module: `Ok` if the backend
/// answered it (any gRPC status) by the instant given.
pub type LivenessCheck =
    Arc<dyn Fn(Slot, Instant) -> BoxFuture<'static, Result<(), ProbeError>> + Send + Sync>;

/// What a call needs of the endpoint's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Check,
    Watch,
}

/// One backend endpoint: its connections, made on demand.
pub struct Endpoint {
    connect_to: ConnectTo,
    tls: Option<Tls>,
    timeouts: Arc<ArcSwap<Timeouts>>,
    builder: h2::client::Builder,
    max_connections: usize,
    /// `grpc_channels_active`: open connections.
    gauge: prometheus::IntGauge,
    pool: Mutex<Vec<Arc<Conn>>>,
    /// Held while connecting, so calls that need a connection at once share one connect.
    connecting: tokio::sync::Mutex<()>,
    /// Woken when a stream slot frees or a connection leaves the pool.
    freed: Arc<Freed>,
    /// What proves a connection carrying Watch streams alive.
    liveness: LivenessCheck,
}

/// Wakes Checks waiting for a stream slot; costs a freed slot nothing when none waits.
#[derive(Default)]
struct Freed {
    notify: Notify,
    waiting: AtomicUsize,
}

impl Freed {
    /// Counts a waiter while the guard lives.
    fn wait(&self) -> impl Drop + '_ {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self)
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

struct Waiting<'a>(&'a Freed);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where a call may go, decided under the pool lock.
enum Placement {
    Slot(Slot),
    /// No connection has room and the bound allows another.
    Connect,
    /// Every connection is full and the bound is reached.
    Full,
}

impl Endpoint {
    pub fn new(
        connect_to: ConnectTo,
        tls: Option<Tls>,
        timeouts: Arc<ArcSwap<Timeouts>>,
        builder: h2::client::Builder,
        max_connections: usize,
        gauge: prometheus::IntGauge,
        liveness: LivenessCheck,
    ) -> Endpoint {
        Endpoint {
            connect_to,
            tls,
            timeouts,
            builder,
            max_connections: max_connections.max(1),
            gauge,
            pool: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            freed: Arc::new(Freed::default()),
            liveness,
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        **self.timeouts.load()
    }

    /// A stream slot for a call, never on `avoid` (the connection a call the backend did
    /// not process came back from), connecting if needed. A Check waits for a slot until
    /// `deadline`; a Watch with no room anywhere fails at once.
    pub async fn slot(
        &self,
        purpose: Use,
        avoid: Option<u64>,
        deadline: Instant,
    ) -> Result<Slot, ProbeError> {
        let timeouts = self.timeouts();
        loop {
            match self.place(purpose, avoid) {
                Placement::Slot(slot) => return Ok(slot),
                Placement::Connect => {
                    let _connecting = self.connecting.lock().await;
                    // Another call may have connected while this one waited.
                    if let Placement::Slot(slot) = self.place(purpose, avoid) {
                        return Ok(slot);
                    }
                    let connect_by = deadline.min(Instant::now() + timeouts.connect);
                    let conn =
                        tokio::time::timeout_at(connect_by, self.connect(timeouts, connect_by))
                            .await
                            .map_err(|_| ProbeError::ConnectTimeout(timeouts.connect))??;
                    // The new connection knows the backend's stream limit: the call goes
                    // there only if the rule allows (a Watch may not, with a limit of 1).
                    let fits = conn.has_room(purpose);
                    let slot = fits.then(|| Slot::take(&conn, purpose));
                    self.pool.lock().expect("pool lock poisoned").push(conn);
                    if let Some(slot) = slot {
                        return Ok(slot);
                    }
                }
                Placement::Full if purpose == Use::Watch => {
                    return Err(ProbeError::transport(
                        "no stream for a watch: the backend's stream limit is reached on every connection",
                    ));
                }
                Placement::Full => {
                    let freed = self.freed.notify.notified();
                    tokio::pin!(freed);
                    freed.as_mut().enable();
                    let _waiting = self.freed.wait();
                    // A slot freed since `place` looked would not wake this call.
                    if let Placement::Slot(slot) = self.place(purpose, avoid) {
                        return Ok(slot);
                    }
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return Err(ProbeError::transport(
                            "no free stream: the backend's stream limit is reached on every connection",
                        ));
                    }
                }
            }
        }
    }

    fn place(&self, purpose: Use, avoid: Option<u64>) -> Placement {
        let mut pool = self.pool.lock().expect("pool lock poisoned");
        pool.retain(|conn| conn.control.usable());
        let mut others = 0;
        for conn in pool.iter() {
            if Some(conn.id) == avoid {
                continue;
            }
            others += 1;
            if conn.has_room(purpose) {
                return Placement::Slot(Slot::take(conn, purpose));
            }
        }
        // A backend whose limit leaves no room for a Watch next to a Check (1) gets no
        // further connection for one: its next connection would have the same limit.
        if purpose == Use::Watch && pool.iter().any(|conn| conn.stream_limit() < 2) {
            return Placement::Full;
        }
        // The connection to avoid still counts against the bound, unless it is the only
        // one: a retry must be able to go somewhere else.
        if pool.len() < self.max_connections || others == 0 {
            Placement::Connect
        } else {
            Placement::Full
        }
    }

    /// Resolve, TCP, TLS, the HTTP/2 handshake, and one PING answered: the answer comes
    /// after the backend's SETTINGS, so its stream limit is known before the first call.
    async fn connect(&self, timeouts: Timeouts, by: Instant) -> Result<Arc<Conn>, ProbeError> {
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
        let first_bytes = Arc::new(Mutex::new(FirstBytes::default()));
        let io: Io = match &self.tls {
            None => Box::new(Sniffed::new(tcp, Arc::clone(&first_bytes))),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|error| errors::tls_handshake(&error, tls.client_auth))?;
                if let Some(protocol) = stream.get_ref().1.alpn_protocol()
                    && protocol != b"h2"
                {
                    return Err(ProbeError::Tls(format!(
                        "backend chose {:?} by ALPN, not h2",
                        String::from_utf8_lossy(protocol)
                    )));
                }
                Box::new(Sniffed::new(stream, Arc::clone(&first_bytes)))
            }
        };
        let (sender, mut connection) = self
            .builder
            .handshake::<Io, Bytes>(io)
            .await
            .map_err(|error| ProbeError::Connect(format!("http/2 preface: {error}")))?;
        let mut pings = connection
            .ping_pong()
            .expect("the first take of a new connection");
        pings
            .send_ping(h2::Ping::opaque())
            .map_err(|error| ProbeError::Connect(format!("http/2: {error}")))?;
        // Just before the connect deadline: a backend that took TCP (and TLS) but never
        // speaks HTTP/2 gets its own reason.
        let settle_by = by.checked_sub(Duration::from_millis(1)).unwrap_or(by);
        let settled = tokio::select! {
            ended = &mut connection => Err(ended.err()),
            pong = poll_fn(|cx| pings.poll_pong(cx)) => pong.map_err(Some),
            _ = tokio::time::sleep_until(settle_by) => {
                return Err(ProbeError::Connect(format!(
                    "no http/2 settings from the backend within {}ms",
                    timeouts.connect.as_millis()
                )));
            }
        };
        if let Err(error) = settled {
            let first = first_bytes
                .lock()
                .expect("first bytes lock poisoned")
                .clone();
            return Err(errors::before_settings(
                error.as_ref(),
                &first,
                self.tls.as_ref().is_some_and(|tls| tls.client_auth),
            ));
        }
        let (control, signals) = Control::new(Arc::clone(&self.freed));
        let control = Arc::new(control);
        let conn = Arc::new(Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            sender,
            control: Arc::clone(&control),
        });
        self.gauge.inc();
        let gauge = self.gauge.clone();
        let timeouts = Arc::clone(&self.timeouts);
        let liveness = Liveness {
            conn: Arc::downgrade(&conn),
            check: Arc::clone(&self.liveness),
        };
        tokio::spawn(async move {
            drive(connection, pings, signals, &control, &timeouts, liveness).await;
            gauge.dec();
        });
        Ok(conn)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for conn in self.pool.get_mut().expect("pool lock poisoned").drain(..) {
            conn.control
                .retire(ProbeError::transport("endpoint released"));
        }
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

type Io = Box<dyn AsyncIo>;
trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// One HTTP/2 connection, shared by the calls that hold a [`Slot`] on it.
pub struct Conn {
    id: u64,
    sender: h2::client::SendRequest<Bytes>,
    control: Arc<Control>,
}

impl Conn {
    fn stream_limit(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    fn has_room(&self, purpose: Use) -> bool {
        // Asking h2 for the backend's limit takes its lock: a Check on a connection with
        // no stream of ours needs no answer (a backend allowing none at all holds the
        // stream in h2's queue, within the call's deadline).
        let streams = self.control.streams.load(Ordering::SeqCst);
        match purpose {
            Use::Check => streams == 0 || streams < self.stream_limit(),
            // One slot stays free for Checks after the Watch.
            Use::Watch => {
                let limit = self.stream_limit();
                streams < limit && self.control.watches.load(Ordering::Relaxed) + 1 < limit
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The last call on it ended and it left the pool (or the endpoint went): h2 closes
        // it now that no handle is left; the driver bounds how long that may take.
        self.control
            .retire(ProbeError::transport("connection released"));
    }
}

/// What a connection's calls and its driver task share.
struct Control {
    /// Streams this agent has open here, and how many of them are Watches.
    streams: AtomicUsize,
    watches: AtomicUsize,
    /// Why no new call may start here; set once.
    retired: Mutex<Option<ProbeError>>,
    /// Set once, when it is retired: read on every placement, without a lock.
    retired_flag: AtomicBool,
    /// Whether a PING is asked for and not yet sent (asks in between are one).
    ping_asked: AtomicBool,
    /// Tells the driver of a retirement or a PING asked for; cheap for the driver to poll
    /// on every wake.
    signals: mpsc::UnboundedSender<Signal>,
    /// When the backend last answered something here.
    heard: Arc<Heard>,
    /// When a Check was last answered here.
    checked: Heard,
    freed: Arc<Freed>,
}

/// What a connection's calls tell its driver.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Retired,
    Ping,
}

impl Control {
    fn new(freed: Arc<Freed>) -> (Control, mpsc::UnboundedReceiver<Signal>) {
        let (signals, received) = mpsc::unbounded_channel();
        let control = Control {
            streams: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            retired: Mutex::new(None),
            retired_flag: AtomicBool::new(false),
            ping_asked: AtomicBool::new(false),
            signals,
            heard: Arc::new(Heard::new()),
            checked: Heard::new(),
            freed,
        };
        (control, received)
    }

    /// Asks the driver for a PING (a call timed out).
    fn ask_ping(&self) {
        if !self.ping_asked.swap(true, Ordering::Relaxed) {
            let _ = self.signals.send(Signal::Ping);
        }
    }

    fn usable(&self) -> bool {
        !self.retired_flag.load(Ordering::Relaxed)
    }

    /// Takes no new call from now on; the first reason is kept.
    fn retire(&self, reason: ProbeError) {
        self.retired
            .lock()
            .expect("retired lock poisoned")
            .get_or_insert(reason);
        if !self.retired_flag.swap(true, Ordering::Relaxed) {
            let _ = self.signals.send(Signal::Retired);
        }
        self.freed.wake();
    }

    fn retired_reason(&self) -> Option<ProbeError> {
        self.retired.lock().expect("retired lock poisoned").clone()
    }

    fn heard_now(&self) {
        self.heard.now();
    }

    fn heard_at(&self) -> Instant {
        self.heard.at()
    }
}

/// A stream slot on a connection, held for the call's whole life.
pub struct Slot {
    conn: Arc<Conn>,
    purpose: Use,
}

impl Slot {
    fn take(conn: &Arc<Conn>, purpose: Use) -> Slot {
        conn.control.streams.fetch_add(1, Ordering::SeqCst);
        if purpose == Use::Watch {
            conn.control.watches.fetch_add(1, Ordering::Relaxed);
        }
        Slot {
            conn: Arc::clone(conn),
            purpose,
        }
    }

    pub fn conn_id(&self) -> u64 {
        self.conn.id
    }

    pub fn sender(&self) -> h2::client::SendRequest<Bytes> {
        self.conn.sender.clone()
    }

    /// The backend answered something on this connection.
    pub fn heard(&self) {
        self.conn.control.heard_now();
    }

    /// The backend answered a Check on this connection: it still serves calls.
    pub fn checked(&self) {
        self.conn.control.checked.now();
    }

    /// When the backend was last heard on this connection.
    pub fn heard_clock(&self) -> Arc<Heard> {
        Arc::clone(&self.conn.control.heard)
    }

    /// A call here timed out: PING the connection to learn whether it is alive.
    pub fn suspect(&self) {
        self.conn.control.ask_ping();
    }

    /// This connection takes no new call (GOAWAY, REFUSED_STREAM, a connection error).
    pub fn retire(&self, reason: ProbeError) {
        self.conn.control.retire(reason);
    }

    /// Why the connection was retired, if it was: a better reason than a stream's error
    /// when the whole connection ended.
    pub fn retired_reason(&self) -> Option<ProbeError> {
        self.conn.control.retired_reason()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let control = &self.conn.control;
        control.streams.fetch_sub(1, Ordering::SeqCst);
        if self.purpose == Use::Watch {
            control.watches.fetch_sub(1, Ordering::Relaxed);
        }
        control.freed.wake();
    }
}

/// How the driver proves a connection with Watch streams alive: it holds the connection
/// weakly (a strong handle would keep h2 from closing it when the pool lets go).
struct Liveness {
    conn: Weak<Conn>,
    check: LivenessCheck,
}

impl Liveness {
    /// A liveness Check on the connection, unless it has left the pool's hands.
    fn start(&self, rpc_by: Instant) -> Option<BoxFuture<'static, Result<(), ProbeError>>> {
        let conn = self.conn.upgrade()?;
        let slot = Slot::take(&conn, Use::Check);
        Some((self.check)(slot, rpc_by))
    }
}

/// Drives one connection: h2's own work (frames, flow control, resets), the keep-alive
/// PING, the liveness Check of a connection with Watch streams, and the bound on a retired
/// connection's life. When it returns, the connection is dropped: the socket closes and
/// every call still on it fails.
async fn drive(
    connection: h2::client::Connection<Io, Bytes>,
    mut pings: h2::PingPong,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    control: &Control,
    timeouts: &ArcSwap<Timeouts>,
    liveness: Liveness,
) {
    // The task wakes for every frame: the futures it waits on are made once and re-armed
    // only when their deadline moves, so a wake costs no timer work.
    tokio::pin!(connection);
    control.heard_now();
    let settings = **timeouts.load();
    let mut keepalive_at = Instant::now() + settings.keepalive;
    let mut armed = keepalive_at;
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(timer);
    let mut ping_now = false;
    let mut pong_due: Option<Instant> = None;
    let mut close_by: Option<Instant> = None;
    let mut checking: Option<BoxFuture<'static, Result<(), ProbeError>>> = None;
    control.checked.now();
    let reason = loop {
        let mut fired = false;
        tokio::select! {
            biased;
            ended = &mut connection => {
                break match ended {
                    Ok(()) => ProbeError::transport("connection closed by backend"),
                    Err(error) => errors::connection(&error),
                };
            }
            checked = async { checking.as_mut().expect("polled only while set").await }, if checking.is_some() => {
                checking = None;
                if let Err(error) = checked {
                    break error;
                }
            }
            pong = poll_fn(|cx| pings.poll_pong(cx)), if pong_due.is_some() => match pong {
                Ok(_) => {
                    pong_due = None;
                    control.heard_now();
                }
                Err(error) => break errors::connection(&error),
            },
            // The sender lives in `control`, so the channel never closes here.
            Some(signal) = signals.recv() => match signal {
                Signal::Ping => {
                    control.ping_asked.store(false, Ordering::Relaxed);
                    ping_now = true;
                }
                Signal::Retired => {
                    let settings = **timeouts.load();
                    close_by.get_or_insert(Instant::now() + settings.connect + settings.rpc);
                }
            },
            _ = &mut timer => fired = true,
        }
        let settings = **timeouts.load();
        let now = Instant::now();
        if let Some(by) = close_by
            && now >= by
        {
            break control
                .retired_reason()
                .unwrap_or_else(|| ProbeError::transport("connection retired"));
        }
        if pong_due.is_some_and(|due| now >= due) {
            break ProbeError::Transport(format!(
                "no answer to PING within {}ms",
                settings.rpc.as_millis()
            ));
        }
        if fired && now >= keepalive_at {
            // A connection with Watch streams and no Check answered for `CHECK_EVERY`
            // keep-alives gets a liveness Check; one with streams that was silent for a
            // keep-alive is PINGed. The next look is when either would come due, or a
            // keep-alive from now.
            let unchecked_until = control.checked.at() + settings.keepalive * CHECK_EVERY;
            let silent_until = control.heard_at() + settings.keepalive;
            let watched = control.watches.load(Ordering::Relaxed) > 0;
            let busy = control.streams.load(Ordering::Relaxed) > 0;
            if watched && unchecked_until <= now && checking.is_none() && control.usable() {
                checking = liveness.start(now + settings.rpc);
            }
            ping_now |= busy && silent_until <= now && checking.is_none();
            keepalive_at = [unchecked_until, silent_until]
                .into_iter()
                .filter(|at| *at > now)
                .min()
                .unwrap_or(now + settings.keepalive);
        }
        if ping_now && pong_due.is_none() {
            ping_now = false;
            if let Err(error) = pings.send_ping(h2::Ping::opaque()) {
                break errors::connection(&error);
            }
            pong_due = Some(now + settings.rpc);
        }
        let next = [Some(keepalive_at), pong_due, close_by]
            .into_iter()
            .flatten()
            .min()
            .expect("the keep-alive is always set");
        if next != armed || fired {
            armed = next;
            timer.as_mut().reset(slotted(armed));
        }
    };
    control.retire(reason);
}

/// The first bytes a backend sent, kept to explain a connection that never spoke HTTP/2.
#[derive(Clone, Debug, Default)]
pub struct FirstBytes {
    pub bytes: Vec<u8>,
}

const SNIFFED: usize = 16;

/// A transport that remembers the first bytes read from it.
struct Sniffed<T> {
    inner: T,
    first: Option<Arc<Mutex<FirstBytes>>>,
}

impl<T> Sniffed<T> {
    fn new(inner: T, first: Arc<Mutex<FirstBytes>>) -> Sniffed<T> {
        Sniffed {
            inner,
            first: Some(first),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(first) = &self.first {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                let mut first = first.lock().expect("first bytes lock poisoned");
                let room = SNIFFED.saturating_sub(first.bytes.len());
                first.bytes.extend_from_slice(&read[..read.len().min(room)]);
                if first.bytes.len() >= SNIFFED {
                    drop(first);
                    self.first = None;
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
