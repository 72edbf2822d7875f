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

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::oracle::Oracle;
use crate::probe::{GrpcProbe, ProbeSetupError};
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
    settings: Settings,
    shutdown: Shutdown,
}

impl App {
    /// Builds the prober and the oracle and binds the agent port. Background work stops
    /// when `shutdown` is triggered.
    pub async fn bind(settings: Settings, shutdown: Shutdown) -> Result<App, StartError> {
        let probe = Arc::new(GrpcProbe::new(settings.probe.clone())?);
        let oracle = Oracle::new(probe, settings.oracle, shutdown.clone());
        let addr = settings.agent_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(App {
            listener,
            oracle,
            settings,
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

    /// Serves until shutdown is triggered, then drains agent connections and stops the
    /// pollers.
    pub async fn run(self) {
        let App {
            listener,
            oracle,
            settings,
            shutdown,
        } = self;
        responder::serve(
            listener,
            oracle.clone(),
            settings.responder,
            shutdown.clone(),
        )
        .await;
        shutdown.trigger();
        oracle.stopped().await;
    }
}
