//! haproxy-grpc-agent answers HAProxy `agent-check` requests from a cache of gRPC health
//! states that background pollers keep fresh.
//!
//! The way of one request: [`responder`] accepts and reads a bounded line
//! ([`connection`]) → [`protocol`] parses it → [`oracle`] answers from its cache (a miss
//! starts the target's poller, whose [`probe`] asks the backend) → [`protocol`] formats the reply →
//! [`responder`] writes it. Beside it, [`admin`] shows and steers the cache over HTTP and
//! serves [`metrics`]; [`events`] carries state changes to it. See ARCHITECTURE.md.

// Two system calls need `unsafe` (the open-file limit here, the admin thread's priority);
// each is allowed where it is, with its SAFETY comment. Nothing else may use it.
#![deny(unsafe_code)]

pub mod admin;
pub mod allowlist;
pub mod commands;
pub mod config;
pub mod connection;
pub mod events;
pub mod logging;
pub mod metrics;
pub mod oracle;
pub mod probe;
pub mod protocol;
pub mod responder;
pub mod shutdown;
pub mod weight;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::admin::Readiness;
use crate::config::{ConfigErrors, Layers, Loaded, ReloadReport, Settings};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::oracle::Oracle;
use crate::probe::{GrpcProbe, LoadCounters, Probe, ProbeSetupError};
use crate::responder::ResponderConfig;
use crate::shutdown::Shutdown;

/// Every backend connection and every HAProxy check is a socket, and the usual soft limit
/// (1024) is far below what a large farm needs: raises it to the hard limit, as Go's
/// runtime does (systemd's LimitNOFILE sets the hard limit). Returns the old and new soft
/// limits when it changed anything.
#[allow(unsafe_code)]
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return None;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0).then_some((soft, limit.rlim_max))
    }
}

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
    #[error(
        "cannot listen on {addr} for the admin api: {source}; pick another --metrics-bind/--metrics-port or stop what holds it"
    )]
    BindAdmin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The assembled daemon: bound, not yet serving.
pub struct App {
    listener: TcpListener,
    admin_listener: TcpListener,
    admin: admin::State,
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
    metrics: Metrics,
}

impl Reloader {
    /// SIGHUP: re-reads the layers; when the result is valid, applies it and makes it
    /// `current`. On error nothing changes.
    pub fn reload(
        &self,
        layers: &Layers<'_>,
        current: &mut Loaded,
    ) -> Result<ReloadReport, ConfigErrors> {
        let (reloaded, report) = match config::reload(layers, current) {
            Ok(reloaded) => reloaded,
            Err(errors) => {
                self.metrics.reloaded(false);
                return Err(errors);
            }
        };
        self.apply(&reloaded.settings);
        self.metrics.reloaded(true);
        *current = reloaded;
        Ok(report)
    }

    /// Swaps in the reloadable part of `settings`: responder bounds, oracle timings and
    /// thresholds, probe timeouts. Settings that need a restart are left as they were.
    pub fn apply(&self, settings: &Settings) {
        let mut responder = settings.responder.clone();
        responder.max_connections = self.responder.load().max_connections;
        self.responder.store(Arc::new(responder));
        self.oracle.reconfigure(settings.oracle);
        self.probe.reconfigure(&settings.probe);
    }
}

impl App {
    /// Builds the prober, the oracle and the metrics (registered in `registry`) and binds
    /// the agent port and the admin port. Background work stops when `shutdown` is
    /// triggered.
    pub async fn bind(
        settings: Settings,
        shutdown: Shutdown,
        registry: prometheus::Registry,
    ) -> Result<App, StartError> {
        let metrics = Metrics::new(&registry)?;
        let events = Events::new(settings.admin.events_buffer);
        let probe = GrpcProbe::new(settings.probe.clone())?
            .count_connections(metrics.probes.connections_active.clone())
            .count_load(LoadCounters {
                streams_active: metrics.load.streams_active.clone(),
                reports: metrics.load.reports.clone(),
                weights_reduced: metrics.load.weights_reduced.clone(),
            })
            .tell_weights(events.clone());
        let probe: Arc<dyn Probe> = Arc::new(probe);
        let oracle = Oracle::new(
            Arc::clone(&probe),
            settings.oracle,
            shutdown.clone(),
            metrics.clone(),
            events.clone(),
        );
        let addr = settings.agent_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        if !addr.ip().is_loopback() && settings.probe.allowlist.is_empty() {
            tracing::warn!(
                agent = %addr,
                "the agent port is reachable beyond this host and allow_backends is empty: whoever can connect can make the agent open connections to any host and port; set allow_backends (and allow_sources)"
            );
        }
        let addr = settings.metrics_addr;
        let admin_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::BindAdmin { addr, source })?;
        let admin = admin::State {
            oracle: oracle.clone(),
            registry,
            metrics: metrics.clone(),
            events,
            readiness: Readiness::default(),
            config: settings.admin.clone(),
            addr: admin_listener
                .local_addr()
                .map_err(|source| StartError::BindAdmin { addr, source })?,
        };
        let reloader = Reloader {
            responder: Arc::new(ArcSwap::from_pointee(settings.responder.clone())),
            oracle: oracle.clone(),
            probe,
            metrics,
        };
        Ok(App {
            listener,
            admin_listener,
            admin,
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

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
    }

    pub fn oracle(&self) -> &Oracle {
        &self.oracle
    }

    /// The handle that applies reloaded settings while the app runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until shutdown is triggered, then drains agent connections (the admin API
    /// stays up meanwhile, `/readyz` answering 503), closes the admin listener and stops
    /// the pollers.
    pub async fn run(self) {
        let App {
            listener,
            admin_listener,
            admin,
            oracle,
            reloader,
            shutdown,
        } = self;
        let readiness = admin.readiness.clone();
        let metrics = admin.metrics.clone();
        // The admin API outlives the drain, so it can say the agent is not ready.
        let admin_stop = Shutdown::new();
        let admin_serving = admin::spawn(admin_listener, admin, admin_stop.clone());
        let config = Arc::clone(&reloader.responder);
        readiness.set(true);
        let serving = responder::serve(listener, oracle.clone(), config, metrics, shutdown.clone());
        let readiness_on_stop = {
            let shutdown = shutdown.clone();
            let readiness = readiness.clone();
            async move {
                shutdown.triggered().await;
                readiness.set(false);
            }
        };
        tokio::join!(serving, readiness_on_stop);
        shutdown.trigger();
        admin_stop.trigger();
        admin_serving.stopped().await;
        oracle.stopped().await;
    }
}
