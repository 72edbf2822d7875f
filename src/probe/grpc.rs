//! The implementation of [`Probe`]: one [`Endpoint`] per backend endpoint (host, port,
//! tls, authority), shared by every service checked on it, whose HTTP/2 connections
//! (the `h2` crate, TLS by rustls) are made on demand. The calls are in [`super::call`],
//! the connections' life in [`super::endpoint`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;

use super::connect::ConnectTo;
use super::endpoint::{Endpoint, LivenessCheck, Tls};
use super::request::{Method, Prepared};
use super::{BoxFuture, Outcome, Probe, ProbeError, TargetProber, WatchStream};
use super::{call, insecure};
use crate::allowlist::{Admission, Allowlist};
use crate::protocol::Target;

/// How checks reach backends.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Bounds name resolution, TCP connect and the TLS handshake, each.
    pub connect_timeout: Duration,
    /// Bounds one `Check` call once connected; sent to the server as `grpc-timeout`.
    pub rpc_timeout: Duration,
    pub user_agent: String,
    /// Extra metadata headers sent with every Check.
    pub metadata: Vec<(String, String)>,
    /// Which backends may be probed; checked before registering, before every probe and
    /// on every resolved address.
    pub allowlist: Arc<Allowlist>,
    /// Keep the endpoint's connections between checks (false: a fresh one per check).
    /// Named after the setting `grpc_channel_cache`, which users know by that name.
    pub channel_cache: bool,
    /// The most HTTP/2 connections to one endpoint (more are opened only when the
    /// backend's stream limit is reached on every one).
    pub max_connections: usize,
    /// A connection that carries streams and was silent this long is PINGed
    /// (`liveness_interval`: how often a watched backend is confirmed alive).
    pub keepalive: Duration,
    pub tls: TlsSettings,
}

/// How TLS backends are verified, and how the agent identifies itself to them.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// PEM bundle trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for backends that require mTLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Accept any certificate for any name. For testing only; logged loudly at start-up.
    pub insecure_skip_verify: bool,
}

/// Errors building the prober, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    #[error("cannot read {path}: {source}; check the path and permissions")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {expected}; give a PEM file with one")]
    Pem {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("invalid grpc metadata {0:?}: use a lowercase name and a printable ASCII value")]
    Metadata(String),
    #[error("invalid tls settings: {0}")]
    Tls(String),
    #[error("invalid user agent {0:?}: use printable ASCII")]
    UserAgent(String),
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what it should, so a wrong file is named at
/// start-up. Errors never quote the contents (a key file's bytes are a secret).
fn read_pem(path: &PathBuf, expected: Pem) -> Result<Vec<u8>, ProbeSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|source| ProbeSetupError::File {
        path: path.clone(),
        source,
    })?;
    let (valid, what) = match expected {
        Pem::Certificates => {
            let mut certificates = CertificateDer::pem_slice_iter(&bytes);
            let valid = certificates
                .try_fold(0usize, |count, certificate| certificate.map(|_| count + 1))
                .is_ok_and(|count| count > 0);
            (valid, "certificate")
        }
        Pem::PrivateKey => (
            PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
            "private key (PKCS#8, PKCS#1 or SEC1)",
        ),
    };
    if !valid {
        return Err(ProbeSetupError::Pem {
            path: path.clone(),
            expected: what,
        });
    }
    Ok(bytes)
}

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
    /// For each endpoint's liveness Check.
    user_agent: Arc<str>,
    metadata: Arc<[(String, String)]>,
}

/// Weak handles, so an endpoint lives exactly as long as some target's prober holds it.
struct EndpointPool {
    endpoints: HashMap<EndpointKey, Weak<Endpoint>>,
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
                prune_at: 64,
            }),
        })
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
            pool.prune_at = (pool.endpoints.len() * 2).max(64);
        }
        let endpoint = Arc::new(self.builder.build(&key)?);
        pool.endpoints.insert(key, Arc::downgrade(&endpoint));
        Ok(endpoint)
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
            timeouts: Arc::clone(&self.timeouts),
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

/// The TLS server name of an authority: its host, without port or brackets.
fn server_name(authority: &str) -> Result<ServerName<'static>, ProbeError> {
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|error: http::uri::InvalidUri| ProbeError::InvalidTarget(error.to_string()))?;
    let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|error| ProbeError::InvalidTarget(format!("tls name {host:?}: {error}")))
}

/// The rustls client configuration for `ssl` backends: the system roots plus the CA file
/// (or no verification at all, when asked), the client certificate for mTLS, and ALPN h2.
fn client_tls(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, ProbeSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
    let builder = if settings.insecure_skip_verify {
        tracing::warn!("tls_insecure_skip_verify is on: backend certificates are NOT verified");
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(insecure::AcceptAnyCertificate::new());
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &settings.ca_file {
            let pem = read_pem(path, Pem::Certificates)?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
                roots.add(certificate).map_err(|error| {
                    ProbeSetupError::Tls(format!("{}: {error}", path.display()))
                })?;
            }
        } else if added == 0 {
            tracing::warn!(
                "no usable system tls roots and no tls_ca_file: ssl backends will fail verification"
            );
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&read_pem(cert, Pem::Certificates)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&read_pem(key, Pem::PrivateKey)?)
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
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
        Arc::new(GrpcTarget {
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

/// The probe's timeouts, swapped together on reload.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub rpc: Duration,
    /// PING a connection with streams after this much silence.
    pub keepalive: Duration,
}

impl Timeouts {
    fn of(config: &ProbeConfig) -> Timeouts {
        Timeouts {
            connect: config.connect_timeout,
            rpc: config.rpc_timeout,
            keepalive: config.keepalive,
        }
    }
}

impl TargetProber for GrpcTarget {
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
