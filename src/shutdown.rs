//! One shutdown vocabulary for every task: a [`Shutdown`] handle that is triggered once
//! (by a signal in the daemon, by hand in tests) and awaited everywhere.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown trigger. Children stop when their parent does, and can also be
/// stopped alone (an evicted target's poller, for one).
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts shutdown for this handle, its clones and its children.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has been triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// A handle that is triggered with this one, or on its own.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }
}

/// What an operator asked for with a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or SIGINT (named): stop.
    Stop(&'static str),
}

/// The daemon's signal handlers, installed once.
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.terminate.recv() => Request::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Request::Stop("SIGINT"),
            _ = self.hangup.recv() => Request::Reload,
        }
    }
}
