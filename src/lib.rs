//! haproxy-grpc-agent answers HAProxy `agent-check` requests from a cache of gRPC health
//! states that background pollers keep fresh.
//!
//! The way of one request: [`responder`] accepts and reads a bounded line
//! ([`connection`]) → [`protocol`] parses it → [`oracle`] answers from its cache (a miss
//! starts a [`poller`], whose [`probe`] asks the backend) → [`protocol`] formats the reply →
//! [`responder`] writes it. See ARCHITECTURE.md.

pub mod commands;
pub mod config;
pub mod connection;
pub mod logging;
pub mod oracle;
pub mod poller;
pub mod probe;
pub mod protocol;
pub mod responder;
pub mod shutdown;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::config::{ConfigErrors, Layers, Loaded, ReloadReport, Settings};
use crate::oracle::Oracle;
use crate::probe::{GrpcProbe, Probe, ProbeSetupError};
use crate::responder::ResponderConfig;
use crate::shutdown::Shutdown;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Probe(#[from] ProbeSetupError),
    #[error(
        "cannot listen on {addr}: {source}; pick another --server-bind/--server-port or stop what holds it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The assembled daemon: bound, not yet serving.
pub struct App {
    listener: TcpListener,
    oracle: Oracle,
    reloader: Reloader,
    shutdown: Shutdown,
}

/// Applies reloaded settings to the running stages. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    responder: Arc<ArcSwap<ResponderConfig>>,
    oracle: Oracle,
    probe: Arc<dyn Probe>,
}

impl Reloader {
    /// SIGHUP: re-reads the layers; when the result is valid, applies it and makes it
    /// `current`. On error nothing changes.
    pub fn reload(
        &self,
        layers: &Layers<'_>,
        current: &mut Loaded,
    ) -> Result<ReloadReport, ConfigErrors> {
        let (reloaded, report) = config::reload(layers, current)?;
        self.apply(&reloaded.settings);
        *current = reloaded;
        Ok(report)
    }

    /// Swaps in the reloadable part of `settings`: responder bounds, oracle timings and
    /// thresholds, probe timeouts. Settings that need a restart are left as they were.
    pub fn apply(&self, settings: &Settings) {
        let mut responder = settings.responder;
        responder.max_connections = self.responder.load().max_connections;
        self.responder.store(Arc::new(responder));
        self.oracle.reconfigure(settings.oracle);
        self.probe.reconfigure(&settings.probe);
    }
}

impl App {
    /// Builds the prober and the oracle and binds the agent port. Background work stops
    /// when `shutdown` is triggered.
    pub async fn bind(settings: Settings, shutdown: Shutdown) -> Result<App, StartError> {
        let probe: Arc<dyn Probe> = Arc::new(GrpcProbe::new(settings.probe.clone())?);
        let oracle = Oracle::new(Arc::clone(&probe), settings.oracle, shutdown.clone());
        let addr = settings.agent_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let reloader = Reloader {
            responder: Arc::new(ArcSwap::from_pointee(settings.responder)),
            oracle: oracle.clone(),
            probe,
        };
        Ok(App {
            listener,
            oracle,
            reloader,
            shutdown,
        })
    }

    /// The bound agent address (the real port when 0 was asked for).
    pub fn agent_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    /// The handle that applies reloaded settings while the app runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until shutdown is triggered, then drains agent connections and stops the
    /// pollers.
    pub async fn run(self) {
        let App {
            listener,
            oracle,
            reloader,
            shutdown,
        } = self;
        let config = Arc::clone(&reloader.responder);
        responder::serve(listener, oracle.clone(), config, shutdown.clone()).await;
        shutdown.trigger();
        oracle.stopped().await;
    }
}
