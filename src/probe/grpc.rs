//! The implementation of [`Probe`]: one [`Endpoint`] per backend endpoint (host, port,
//! tls, authority), shared by every service checked on it, whose HTTP/2 connections
//! (the `h2` crate, TLS by rustls) are made on demand. The calls are in [`super::call`],
//! the connections' life in [`super::endpoint`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use super::call;
use super::config::{ProbeConfig, ProbeSetupError, Timeouts};
use super::connect::ConnectTo;
use super::endpoint::{Endpoint, LivenessCheck, Tls};
use super::load::{self, Load, LoadCounters};
use super::request::{Method, Prepared};
use super::resolve::Resolver;
use super::tls::{client_tls, server_name};
use super::{BoxFuture, LoadWeight, Outcome, Probe, ProbeError, TargetProber, WatchStream};
use crate::allowlist::{Admission, Allowlist};
use crate::events::Events;
use crate::protocol::{Target, WeightWord};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EndpointKey {
    host: String,
    port: u16,
    tls: bool,
    authority: String,
}

/// Checks backends with `grpc.health.v1.Health/Check`.
pub struct GrpcProbe {
    config: ProbeConfig,
    /// Read on every connect and check, so a reload applies at once.
    timeouts: Arc<ArcSwap<Timeouts>>,
    /// `allow_backends`, swapped on reload; read before every probe and every connect.
    allowlist: Arc<ArcSwap<Allowlist>>,
    builder: EndpointBuilder,
    /// The extra metadata headers (names lowercased) and the user agent, sent with every
    /// Check.
    metadata: Vec<(String, String)>,
    user_agent: String,
    endpoints: Mutex<EndpointPool>,
    /// `orca_*` metrics.
    load_counters: LoadCounters,
    /// Where weight changes are told.
    events: Option<Events>,
}

/// What it takes to make an endpoint; cheap to clone.
#[derive(Clone)]
struct EndpointBuilder {
    /// `grpc_channels_active` (a published name; it counts connections): every open
    /// HTTP/2 connection counts itself.
    gauge: prometheus::IntGauge,
    tls: Arc<rustls::ClientConfig>,
    client_auth: bool,
    h2: h2::client::Builder,
    max_connections: usize,
    timeouts: Arc<ArcSwap<Timeouts>>,
    allowlist: Arc<ArcSwap<Allowlist>>,
    /// The one resolver every endpoint's name goes through.
    resolver: Arc<Resolver>,
    /// For each endpoint's liveness Check.
    user_agent: Arc<str>,
    metadata: Arc<[(String, String)]>,
}

/// Weak handles, so an endpoint lives exactly as long as some target's prober holds it.
struct EndpointPool {
    endpoints: HashMap<EndpointKey, Weak<Endpoint>>,
    /// The load reports of endpoints whose targets want a weight, as weakly held.
    loads: HashMap<EndpointKey, Weak<Load>>,
    prune_at: usize,
}

impl GrpcProbe {
    /// Loads the CA, certificate and key files and settles which roots TLS uses. A machine
    /// without system roots still verifies against the CA file, if one is given.
    pub fn new(config: ProbeConfig) -> Result<GrpcProbe, ProbeSetupError> {
        let tls = client_tls(&config.tls)?;
        HeaderValue::from_str(&config.user_agent)
            .map_err(|_| ProbeSetupError::UserAgent(config.user_agent.clone()))?;
        let user_agent = config.user_agent.clone();
        let mut metadata: Vec<(String, String)> = Vec::new();
        for (name, value) in &config.metadata {
            let key = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProbeSetupError::Metadata(name.clone()))?;
            if key.as_str().starts_with(':') || HeaderValue::from_str(value).is_err() {
                return Err(ProbeSetupError::Metadata(name.clone()));
            }
            // One value per name, the last given.
            metadata.retain(|(existing, _)| existing != key.as_str());
            metadata.push((key.as_str().to_string(), value.clone()));
        }
        let timeouts = Timeouts::of(&config);
        let timeouts = Arc::new(ArcSwap::from_pointee(timeouts));
        let allowlist = Arc::new(ArcSwap::new(Arc::clone(&config.allowlist)));
        let builder = EndpointBuilder {
            allowlist: Arc::clone(&allowlist),
            gauge: prometheus::IntGauge::new("grpc_channels_active", "connections")
                .expect("a valid metric name"),
            tls,
            client_auth: config.tls.cert_file.is_some(),
            h2: super::endpoint::client_builder(),
            max_connections: config.max_connections,
            timeouts: Arc::clone(&timeouts),
            resolver: Arc::new(Resolver::system(config.connect_timeout)),
            user_agent: user_agent.as_str().into(),
            metadata: metadata.as_slice().into(),
        };
        Ok(GrpcProbe {
            config,
            timeouts,
            allowlist,
            builder,
            metadata,
            user_agent,
            endpoints: Mutex::new(EndpointPool {
                endpoints: HashMap::new(),
                loads: HashMap::new(),
                prune_at: 64,
            }),
            load_counters: LoadCounters::unregistered(),
            events: None,
        })
    }

    /// Tells `events` (the `/events` feed) of weights that move far enough.
    pub fn tell_weights(mut self, events: Events) -> GrpcProbe {
        self.events = Some(events);
        self
    }

    /// Counts the load-report streams, reports and reduced weights in `counters`.
    pub fn count_load(mut self, counters: LoadCounters) -> GrpcProbe {
        self.load_counters = counters;
        self
    }

    /// Counts the HTTP/2 connections this probe opens in `gauge` (the metric
    /// `grpc_channels_active`, whose published name says channels).
    pub fn count_connections(mut self, gauge: prometheus::IntGauge) -> GrpcProbe {
        self.builder.gauge = gauge;
        self
    }

    /// The target's endpoint, shared with every target on it, made on first use.
    fn endpoint(&self, target: &Target) -> Result<Arc<Endpoint>, ProbeError> {
        let key = EndpointKey::of(target);
        let mut pool = self.endpoints.lock().expect("endpoint pool lock poisoned");
        if let Some(endpoint) = pool.endpoints.get(&key).and_then(Weak::upgrade) {
            return Ok(endpoint);
        }
        // Drop handles of released endpoints now and then, not on every insert.
        if pool.endpoints.len() >= pool.prune_at {
            pool.endpoints.retain(|_, weak| weak.strong_count() > 0);
            pool.loads.retain(|_, weak| weak.strong_count() > 0);
            pool.prune_at = (pool.endpoints.len() * 2).max(64);
        }
        let endpoint = Arc::new(self.builder.build(&key)?);
        pool.endpoints.insert(key, Arc::downgrade(&endpoint));
        Ok(endpoint)
    }
}

impl GrpcProbe {
    /// Whether the target's replies carry a weight: its `weight=` option, else the
    /// `orca_weights` setting.
    fn wants_weight(&self, target: &Target) -> bool {
        match target.weight {
            WeightWord::Orca => true,
            WeightWord::None => false,
            WeightWord::Unset => self.config.load.by_default,
        }
    }

    /// The endpoint's load reports, started by the first target that wants them; `None`
    /// if its request cannot be made (an invalid authority: the target fails anyway).
    fn load(&self, target: &Target, endpoint: &Arc<Endpoint>) -> Option<Arc<Load>> {
        let key = EndpointKey::of(target);
        let mut pool = self.endpoints.lock().expect("endpoint pool lock poisoned");
        if let Some(load) = pool.loads.get(&key).and_then(Weak::upgrade) {
            return Some(load);
        }
        let message = load::request_message(self.config.load.report_interval);
        let prepared = Prepared::with_message(
            Method::LoadReports,
            key.tls,
            &key.authority,
            &message,
            &self.user_agent,
            &self.metadata,
        )
        .ok()?;
        let name = format!("{}:{}", key.host, key.port);
        let load = load::start(
            Arc::clone(endpoint),
            name,
            prepared,
            &self.config.load,
            &self.load_counters,
            self.events.clone(),
        );
        pool.loads.insert(key, Arc::downgrade(&load));
        Some(load)
    }
}

impl EndpointKey {
    fn of(target: &Target) -> EndpointKey {
        EndpointKey {
            host: target.host.clone(),
            port: target.port,
            tls: target.tls,
            authority: target.authority.clone(),
        }
    }
}

impl EndpointBuilder {
    /// An endpoint whose connections are made by the calls that need them.
    fn build(&self, key: &EndpointKey) -> Result<Endpoint, ProbeError> {
        let tls = if key.tls {
            Some(Tls {
                config: Arc::clone(&self.tls),
                name: server_name(&key.authority)?,
                client_auth: self.client_auth,
            })
        } else {
            None
        };
        let connect_to = ConnectTo {
            host: key.host.clone(),
            port: key.port,
            resolver: Arc::clone(&self.resolver),
            allowlist: Arc::clone(&self.allowlist),
        };
        // The server's overall health (service ""): liveness asks whether the backend
        // answers at all, for every service watched on the connection.
        let prepared = Arc::new(Prepared::for_method(
            Method::Check,
            key.tls,
            &key.authority,
            "",
            &self.user_agent,
            &self.metadata,
        )?);
        let liveness: LivenessCheck = Arc::new(move |slot, rpc_by| {
            let prepared = Arc::clone(&prepared);
            Box::pin(async move { call::liveness(slot, &prepared, rpc_by).await })
        });
        Ok(Endpoint::new(
            connect_to,
            tls,
            Arc::clone(&self.timeouts),
            self.h2.clone(),
            self.max_connections,
            self.gauge.clone(),
            liveness,
        ))
    }
}

impl Probe for GrpcProbe {
    fn reconfigure(&self, config: &ProbeConfig) {
        self.timeouts.store(Arc::new(Timeouts::of(config)));
        self.allowlist.store(Arc::clone(&config.allowlist));
    }

    fn admits(&self, target: &Target) -> Result<(), ProbeError> {
        match self.allowlist.load().admit(&target.host, target.port) {
            Admission::Denied => Err(ProbeError::Denied(String::new())),
            Admission::Allowed | Admission::CheckAddresses => Ok(()),
        }
    }

    fn prober(&self, target: &Target) -> Arc<dyn TargetProber> {
        let endpoints = if self.config.channel_cache {
            Endpoints::Shared(self.endpoint(target))
        } else {
            Endpoints::Fresh {
                builder: Box::new(self.builder.clone()),
                key: EndpointKey::of(target),
            }
        };
        let prepare = |method| {
            Prepared::for_method(
                method,
                target.tls,
                &target.authority,
                &target.service,
                &self.user_agent,
                &self.metadata,
            )
        };
        let (prepared, prepared_watch) = (prepare(Method::Check), prepare(Method::Watch));
        let load = match &endpoints {
            Endpoints::Shared(Ok(endpoint)) if self.wants_weight(target) => {
                self.load(target, endpoint)
            }
            _ => None,
        };
        Arc::new(GrpcTarget {
            load,
            endpoints,
            prepared,
            prepared_watch,
            host: target.host.clone(),
            port: target.port,
            allowlist: Arc::clone(&self.allowlist),
        })
    }
}

struct GrpcTarget {
    endpoints: Endpoints,
    /// The endpoint's load reports, for a target that wants a weight.
    load: Option<Arc<Load>>,
    /// The requests, built once for every check and watch of this target.
    prepared: Result<Prepared, ProbeError>,
    prepared_watch: Result<Prepared, ProbeError>,
    host: String,
    port: u16,
    /// Checked before every probe, so a reload that denies the target stops its probes.
    allowlist: Arc<ArcSwap<Allowlist>>,
}

/// Where a target's checks get their endpoint.
enum Endpoints {
    /// The endpoint shared by every target on it: its connections, kept between checks.
    Shared(Result<Arc<Endpoint>, ProbeError>),
    /// A new endpoint (and connection) for every check, closed when the check ends.
    Fresh {
        builder: Box<EndpointBuilder>,
        key: EndpointKey,
    },
}

impl TargetProber for GrpcTarget {
    fn weight(&self, now: tokio::time::Instant) -> LoadWeight {
        self.load
            .as_ref()
            .map_or(LoadWeight::Off, |load| load.weight(now))
    }

    fn check(&self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            if self.allowlist.load().admit(&self.host, self.port) == Admission::Denied {
                return Outcome::Failed(ProbeError::Denied(String::new()));
            }
            // A fresh endpoint (and its connection) lives, and counts, until this check ends.
            let fresh;
            let endpoint = match &self.endpoints {
                Endpoints::Shared(Ok(endpoint)) => endpoint,
                Endpoints::Shared(Err(error)) => return Outcome::Failed(error.clone()),
                Endpoints::Fresh { builder, key } => match builder.build(key) {
                    Ok(endpoint) => {
                        fresh = endpoint;
                        &fresh
                    }
                    Err(error) => return Outcome::Failed(error),
                },
            };
            match &self.prepared {
                Ok(prepared) => call::check(endpoint, prepared).await,
                Err(error) => Outcome::Failed(error.clone()),
            }
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<WatchStream, ProbeError>> {
        Box::pin(async move {
            if self.allowlist.load().admit(&self.host, self.port) == Admission::Denied {
                return Err(ProbeError::Denied(String::new()));
            }
            let prepared = self.prepared_watch.as_ref().map_err(Clone::clone)?;
            match &self.endpoints {
                Endpoints::Shared(Ok(endpoint)) => call::watch(endpoint, prepared).await,
                Endpoints::Shared(Err(error)) => Err(error.clone()),
                // Without `grpc_channel_cache` a stream has a connection of its own, which
                // lives as long as the stream.
                Endpoints::Fresh { builder, key } => {
                    let endpoint = builder.build(key)?;
                    let stream = call::watch(&endpoint, prepared).await?;
                    Ok(stream.holding(Box::new(endpoint)))
                }
            }
        })
    }
}
