//! The driver task of one connection: it polls h2's connection future (frames, flow
//! control, resets), and decides the keep-alive PING, the liveness Check of a connection
//! with Watch streams, and when a retired or silent connection is closed.

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::conn::{Conn, Control, Signal, Slot};
use super::io::Io;
use super::{LivenessCheck, Use};
use crate::probe::config::Timeouts;
use crate::probe::{BoxFuture, ProbeError, errors};

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

/// How the driver proves a connection with Watch streams alive: it holds the connection
/// weakly (a strong handle would keep h2 from closing it when the pool lets go).
pub(super) struct Liveness {
    conn: Weak<Conn>,
    check: LivenessCheck,
    /// The liveness Check in flight, polled by the driver's loop.
    running: Option<BoxFuture<'static, Result<(), ProbeError>>>,
}

impl Liveness {
    pub(super) fn new(conn: &Arc<Conn>, check: LivenessCheck) -> Liveness {
        Liveness {
            conn: Arc::downgrade(conn),
            check,
            running: None,
        }
    }

    /// Starts a liveness Check on the connection, unless it has left the pool's hands.
    fn start(&mut self, rpc_by: Instant) {
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        let slot = Slot::take(&conn, Use::Check);
        self.running = Some((self.check)(slot, rpc_by));
    }

    fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The answer to the Check in flight; polled only while one runs.
    async fn answer(&mut self) -> Result<(), ProbeError> {
        self.running
            .as_mut()
            .expect("polled only while running")
            .await
    }
}

/// What the driver keeps between wakes: the instants it must look at the connection again,
/// and whether a PING is wanted.
struct Schedule {
    /// When the keep-alive next looks at the connection.
    keepalive_at: Instant,
    /// A PING is wanted and not yet sent (one is sent only when none is in flight).
    ping_now: bool,
    /// When the PING in flight must be answered by.
    pong_due: Option<Instant>,
    /// When a retired connection is closed at the latest.
    close_by: Option<Instant>,
}

impl Schedule {
    fn new(keepalive_at: Instant) -> Schedule {
        Schedule {
            keepalive_at,
            ping_now: false,
            pong_due: None,
            close_by: None,
        }
    }

    /// The bookkeeping after any wake: a connection past its close or PING deadline is
    /// closed (`Err`: why), the keep-alive looks when its timer fired, and a PING wanted is
    /// sent.
    fn after_wake(
        &mut self,
        fired: bool,
        settings: Timeouts,
        control: &Control,
        liveness: &mut Liveness,
        pings: &mut h2::PingPong,
    ) -> Result<(), ProbeError> {
        let now = Instant::now();
        if let Some(by) = self.close_by
            && now >= by
        {
            return Err(control
                .retired_reason()
                .unwrap_or_else(|| ProbeError::transport("connection retired")));
        }
        if self.pong_due.is_some_and(|due| now >= due) {
            return Err(ProbeError::Transport(format!(
                "no answer to PING within {}ms",
                settings.rpc.as_millis()
            )));
        }
        if fired && now >= self.keepalive_at {
            self.keepalive(now, settings, control, liveness);
        }
        if self.ping_now && self.pong_due.is_none() {
            self.ping_now = false;
            pings
                .send_ping(h2::Ping::opaque())
                .map_err(|error| errors::connection(&error))?;
            self.pong_due = Some(now + settings.rpc);
        }
        Ok(())
    }

    /// A connection with Watch streams and no Check answered for `CHECK_EVERY` keep-alives
    /// gets a liveness Check; one with streams that was silent for a keep-alive is PINGed.
    /// The next look is when either would come due, or a keep-alive from now.
    fn keepalive(
        &mut self,
        now: Instant,
        settings: Timeouts,
        control: &Control,
        liveness: &mut Liveness,
    ) {
        let unchecked_until = control.checked.at() + settings.keepalive * CHECK_EVERY;
        let silent_until = control.heard_at() + settings.keepalive;
        let watched = control.watches.load(Ordering::Relaxed) > 0;
        let busy = control.streams.load(Ordering::Relaxed) > 0;
        if watched && unchecked_until <= now && !liveness.is_running() && control.usable() {
            liveness.start(now + settings.rpc);
        }
        self.ping_now |= busy && silent_until <= now && !liveness.is_running();
        // Silent until now: the PING (or Check) sent now is this round, and the next one
        // is an interval from now. Skipping it would leave the connection unheard for two
        // intervals, longer than a watched target may go before it reads stale.
        let next_silent = if silent_until > now {
            silent_until
        } else {
            now + settings.keepalive
        };
        self.keepalive_at = if unchecked_until > now {
            unchecked_until.min(next_silent)
        } else {
            next_silent
        };
    }

    /// The next instant the driver must look: the keep-alive, a PING's deadline, a retired
    /// connection's close.
    fn next(&self) -> Instant {
        [Some(self.keepalive_at), self.pong_due, self.close_by]
            .into_iter()
            .flatten()
            .min()
            .expect("the keep-alive is always set")
    }
}

/// Drives one connection: h2's own work (frames, flow control, resets), the keep-alive
/// PING, the liveness Check of a connection with Watch streams, and the bound on a retired
/// connection's life. When it returns, the connection is dropped: the socket closes and
/// every call still on it fails.
///
/// The wait stays one `select!` loop: its branches share the connection, the PING handle
/// and the timer, which are pinned here once; the decisions after a wake are in
/// [`Schedule::after_wake`].
pub(super) async fn drive(
    connection: h2::client::Connection<Io, Bytes>,
    mut pings: h2::PingPong,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    control: &Control,
    timeouts: &ArcSwap<Timeouts>,
    mut liveness: Liveness,
) {
    // The task wakes for every frame: the futures it waits on are made once and re-armed
    // only when their deadline moves, so a wake costs no timer work.
    tokio::pin!(connection);
    control.heard_now();
    let mut schedule = Schedule::new(Instant::now() + timeouts.load().keepalive);
    let mut armed = schedule.keepalive_at;
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(timer);
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
            checked = liveness.answer(), if liveness.is_running() => {
                liveness.running = None;
                if let Err(error) = checked {
                    break error;
                }
            }
            pong = poll_fn(|cx| pings.poll_pong(cx)), if schedule.pong_due.is_some() => match pong {
                Ok(_) => {
                    schedule.pong_due = None;
                    control.heard_now();
                }
                Err(error) => break errors::connection(&error),
            },
            // The sender lives in `control`, so the channel never closes here.
            Some(signal) = signals.recv() => match signal {
                Signal::Ping => {
                    control.ping_asked.store(false, Ordering::Relaxed);
                    schedule.ping_now = true;
                }
                Signal::Retired => {
                    let settings = **timeouts.load();
                    let close_by = Instant::now() + settings.connect + settings.rpc;
                    schedule.close_by.get_or_insert(close_by);
                }
            },
            _ = &mut timer => fired = true,
        }
        let settings = **timeouts.load();
        if let Err(reason) =
            schedule.after_wake(fired, settings, control, &mut liveness, &mut pings)
        {
            break reason;
        }
        let next = schedule.next();
        if next != armed || fired {
            armed = next;
            timer.as_mut().reset(slotted(armed));
        }
    };
    control.retire(reason);
}
