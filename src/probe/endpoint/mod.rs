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
//!
//! This file holds the pool: where a call goes, and connecting. A connection's shared
//! state and its stream slots are in `conn`, its driver task in `driver`, and the
//! transport under it in `io`.

mod conn;
mod driver;
mod io;
mod names;

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::config::Timeouts;
use super::connect::{ConnectFailure, ConnectTo};
use super::{BoxFuture, ProbeError, errors};
use conn::{Conn, Control, Freed};
use driver::{Liveness, drive};
use io::{Io, Sniffed};
use names::Names;

pub use conn::Slot;
pub use io::FirstBytes;

pub use super::config::{MAX_FRAME_SIZE, MAX_HEADER_LIST};
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
    /// The host's newest answer and where each connection went.
    names: Arc<Names>,
    tls: Option<Tls>,
    timeouts: Arc<ArcSwap<Timeouts>>,
    builder: h2::client::Builder,
    max_connections: usize,
    /// Open connections (the metric `grpc_channels_active`, whose published name says
    /// channels).
    gauge: prometheus::IntGauge,
    pool: Mutex<Vec<Arc<Conn>>>,
    /// Held while connecting, so calls that need a connection at once share one connect.
    connecting: tokio::sync::Mutex<()>,
    /// Woken when a stream slot frees or a connection leaves the pool.
    freed: Arc<Freed>,
    /// What proves a connection carrying Watch streams alive.
    liveness: LivenessCheck,
}

/// A new connection whose backend sent its SETTINGS (and answered the first PING), not
/// yet driven.
struct Settled {
    sender: h2::client::SendRequest<Bytes>,
    connection: h2::client::Connection<Io, Bytes>,
    pings: h2::PingPong,
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
            names: Arc::new(Names::new(connect_to)),
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
        // A name whose answer ran out is resolved again beside this call.
        self.names.renew_if_due(timeouts);
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
        // What the backend sends first explains a connection that never speaks HTTP/2.
        let first_bytes = Arc::new(Mutex::new(FirstBytes::default()));
        let (io, peer) = self.transport(timeouts, &first_bytes, by).await?;
        let settled = self.handshake(io, &first_bytes, timeouts, by).await?;
        let conn = self.start(settled);
        if let Some(peer) = peer {
            self.names.track(peer, &conn.control);
        }
        Ok(conn)
    }

    /// Resolve and TCP, then TLS for an `ssl` endpoint (a backend that chooses another
    /// protocol than h2 by ALPN is refused); with the address connected to.
    async fn transport(
        &self,
        timeouts: Timeouts,
        first_bytes: &Arc<Mutex<FirstBytes>>,
        by: Instant,
    ) -> Result<(Io, Option<std::net::IpAddr>), ProbeError> {
        let tcp = self
            .names
            .connect(by)
            .await
            .map_err(|failure| match failure {
                ConnectFailure::Dns(message) => ProbeError::Dns(message),
                ConnectFailure::Refused => ProbeError::ConnectionRefused,
                ConnectFailure::Timeout => ProbeError::ConnectTimeout(timeouts.connect),
                ConnectFailure::Other(error) => ProbeError::Connect(error.to_string()),
                ConnectFailure::Denied(detail) => ProbeError::Denied(detail),
            })?
            .stream;
        let peer = tcp.peer_addr().ok().map(|addr| addr.ip());
        let Some(tls) = &self.tls else {
            return Ok((Box::new(Sniffed::new(tcp, Arc::clone(first_bytes))), peer));
        };
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
        Ok((
            Box::new(Sniffed::new(stream, Arc::clone(first_bytes))),
            peer,
        ))
    }

    /// The HTTP/2 handshake and a first PING, answered before `by`. A failure is explained
    /// by the first bytes the backend sent.
    async fn handshake(
        &self,
        io: Io,
        first_bytes: &Mutex<FirstBytes>,
        timeouts: Timeouts,
        by: Instant,
    ) -> Result<Settled, ProbeError> {
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
                &first.bytes,
                self.tls.as_ref().is_some_and(|tls| tls.client_auth),
            ));
        }
        Ok(Settled {
            sender,
            connection,
            pings,
        })
    }

    /// Puts a settled connection to work: counted in the gauge, and driven by a task of its
    /// own, which counts it out when the connection closes.
    fn start(&self, settled: Settled) -> Arc<Conn> {
        let Settled {
            sender,
            connection,
            pings,
        } = settled;
        let (control, signals) = Control::new(Arc::clone(&self.freed));
        let control = Arc::new(control);
        let conn = Arc::new(Conn::new(sender, Arc::clone(&control)));
        self.gauge.inc();
        let gauge = self.gauge.clone();
        // A watched connection takes no call through `slot` while its streams hold: its
        // liveness Check is when its name's answer is looked at.
        let names = Arc::clone(&self.names);
        let check = Arc::clone(&self.liveness);
        let settings = Arc::clone(&self.timeouts);
        let renewing: LivenessCheck = Arc::new(move |slot, rpc_by| {
            names.renew_if_due(**settings.load());
            check(slot, rpc_by)
        });
        let liveness = Liveness::new(&conn, renewing);
        let timeouts = Arc::clone(&self.timeouts);
        tokio::spawn(async move {
            drive(connection, pings, signals, &control, &timeouts, liveness).await;
            gauge.dec();
        });
        conn
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
