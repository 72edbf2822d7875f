//! One HTTP/2 connection as its calls see it: the stream slots they hold ([`Slot`]), what
//! they share with the connection's driver ([`Control`]: counts, retirement, PINGs asked
//! for, when the backend was last heard), and the wake-up of Checks waiting for a slot
//! ([`Freed`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::Use;
use crate::probe::{Heard, ProbeError};

/// Wakes Checks waiting for a stream slot; costs a freed slot nothing when none waits.
#[derive(Default)]
pub(super) struct Freed {
    pub(super) notify: Notify,
    waiting: AtomicUsize,
}

impl Freed {
    /// Counts a waiter while the guard lives.
    pub(super) fn wait(&self) -> impl Drop + '_ {
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

/// Numbers connections for the whole process, so a retry can name the one to avoid.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// One HTTP/2 connection, shared by the calls that hold a [`Slot`] on it.
pub(super) struct Conn {
    pub(super) id: u64,
    sender: h2::client::SendRequest<Bytes>,
    pub(super) control: Arc<Control>,
}

impl Conn {
    pub(super) fn new(sender: h2::client::SendRequest<Bytes>, control: Arc<Control>) -> Conn {
        Conn {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            sender,
            control,
        }
    }

    pub(super) fn stream_limit(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    pub(super) fn has_room(&self, purpose: Use) -> bool {
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
pub(super) struct Control {
    /// Streams this agent has open here, and how many of them are Watches.
    pub(super) streams: AtomicUsize,
    pub(super) watches: AtomicUsize,
    /// Why no new call may start here; set once.
    retired: Mutex<Option<ProbeError>>,
    /// Set once, when it is retired: read on every placement, without a lock.
    retired_flag: AtomicBool,
    /// Whether a PING is asked for and not yet sent (asks in between are one).
    pub(super) ping_asked: AtomicBool,
    /// Tells the driver of a retirement or a PING asked for; cheap for the driver to poll
    /// on every wake.
    signals: mpsc::UnboundedSender<Signal>,
    /// When the backend last answered something here.
    heard: Arc<Heard>,
    /// When a Check was last answered here.
    pub(super) checked: Heard,
    freed: Arc<Freed>,
}

/// What a connection's calls tell its driver.
#[derive(Clone, Copy, Debug)]
pub(super) enum Signal {
    Retired,
    Ping,
}

impl Control {
    pub(super) fn new(freed: Arc<Freed>) -> (Control, mpsc::UnboundedReceiver<Signal>) {
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

    pub(super) fn usable(&self) -> bool {
        !self.retired_flag.load(Ordering::Relaxed)
    }

    /// Takes no new call from now on; the first reason is kept.
    pub(super) fn retire(&self, reason: ProbeError) {
        self.retired
            .lock()
            .expect("retired lock poisoned")
            .get_or_insert(reason);
        if !self.retired_flag.swap(true, Ordering::Relaxed) {
            let _ = self.signals.send(Signal::Retired);
        }
        self.freed.wake();
    }

    pub(super) fn retired_reason(&self) -> Option<ProbeError> {
        self.retired.lock().expect("retired lock poisoned").clone()
    }

    pub(super) fn heard_now(&self) {
        self.heard.now();
    }

    pub(super) fn heard_at(&self) -> Instant {
        self.heard.at()
    }
}

/// A stream slot on a connection, held for the call's whole life.
pub struct Slot {
    conn: Arc<Conn>,
    purpose: Use,
}

impl Slot {
    pub(super) fn take(conn: &Arc<Conn>, purpose: Use) -> Slot {
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
