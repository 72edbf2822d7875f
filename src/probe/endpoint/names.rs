//! An endpoint's name and the addresses its connections went to. When the name's newest
//! answer has run out (its TTL, at least `resolve::MIN_ANSWER_LIFE`), the next call on the
//! endpoint (or a connection's liveness Check) asks again, in a task of its own so no call
//! waits for it; a connection whose address left the new answer is retired, and the
//! endpoint's retirement machinery closes it. Nothing runs for a name between calls.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Control;
use crate::probe::ProbeError;
use crate::probe::config::Timeouts;
use crate::probe::connect::{ConnectFailure, ConnectTo, Connected};
use crate::probe::resolve::{Answer, ResolveError};

/// A re-resolution whose nameserver did not answer is tried again this much later; the
/// connections stay meanwhile.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One endpoint's host, its newest answer and its connections' addresses.
pub(super) struct Names {
    connect_to: ConnectTo,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the name must be resolved again; `None` for an IP literal, or before the first
    /// answer (the first connect resolves).
    renew_at: Option<Instant>,
    /// A re-resolution is running.
    renewing: bool,
    /// Each connection's peer address, held weakly (a connection closes on its own).
    conns: Vec<(IpAddr, Weak<Control>)>,
}

impl Names {
    pub(super) fn new(connect_to: ConnectTo) -> Names {
        Names {
            connect_to,
            state: Mutex::new(State::default()),
        }
    }

    /// Resolves and connects by `by` (see [`ConnectTo::connect`]); the answer used says
    /// when to look again.
    pub(super) async fn connect(&self, by: Instant) -> Result<Connected, ConnectFailure> {
        let connected = self.connect_to.connect(by).await?;
        if let Some(answer) = &connected.answer {
            self.lock().renew_at = Some(answer.valid_until);
        }
        Ok(connected)
    }

    /// Remembers where a new connection went, so it is retired if the address leaves.
    pub(super) fn track(&self, peer: IpAddr, control: &Arc<Control>) {
        if self.connect_to.literal().is_some() {
            return;
        }
        let mut state = self.lock();
        state.conns.retain(|(_, conn)| conn.strong_count() > 0);
        state.conns.push((peer, Arc::downgrade(control)));
    }

    /// Starts a re-resolution if the answer has run out and none is running: a task bounded
    /// by the connect timeout. One lock and a clock read when nothing is due.
    pub(super) fn renew_if_due(self: &Arc<Self>, timeouts: Timeouts) {
        {
            let mut state = self.lock();
            let now = Instant::now();
            if state.renewing || state.renew_at.is_none_or(|at| now < at) {
                return;
            }
            state.renewing = true;
        }
        let names = Arc::clone(self);
        tokio::spawn(async move {
            let by = Instant::now() + timeouts.connect;
            let answer = names.connect_to.resolve(by).await;
            names.renewed(answer);
        });
    }

    /// A re-resolution ended. A name that no longer resolves has no address left; one whose
    /// nameserver did not answer keeps its connections and is asked again later.
    fn renewed(&self, answer: Result<Answer, ResolveError>) {
        let mut state = self.lock();
        state.renewing = false;
        let kept: Vec<IpAddr> = match answer {
            Ok(answer) => {
                state.renew_at = Some(answer.valid_until);
                answer.addrs
            }
            Err(ResolveError::NoSuchName(_) | ResolveError::NoAddresses(_)) => {
                state.renew_at = None;
                Vec::new()
            }
            Err(_) => {
                state.renew_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                return;
            }
        };
        state.conns.retain(|(peer, conn)| {
            let Some(control) = conn.upgrade() else {
                return false;
            };
            if kept.contains(peer) {
                return true;
            }
            tracing::debug!(host = %self.connect_to.host, %peer, "address left the name's answer; retiring its connection");
            control.retire(ProbeError::transport(
                "the backend's address left its name's answer",
            ));
            false
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("names lock poisoned")
    }
}
