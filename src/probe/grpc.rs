//! The tonic implementation of [`Probe`]: one lazily connected HTTP/2 channel per backend
//! endpoint (host, port, tls, authority), shared by every service checked on it.

use std::collections::HashMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::ServerCertVerifier;
use tonic::Code;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::connect::{ConnectFailure, ConnectTo};
use super::insecure;
use super::pb::HealthCheckRequest;
use super::pb::health_client::HealthClient;
use super::{BoxFuture, Outcome, Probe, ProbeError, ServingStatus, TargetProber};
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
    /// Keep one connection per endpoint between checks (false: a fresh one per check).
    pub channel_cache: bool,
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
    builder: ChannelBuilder,
    metadata: MetadataMap,
    channels: Mutex<ChannelPool>,
}

/// What it takes to make a channel to an endpoint; cheap to clone.
#[derive(Clone)]
struct ChannelBuilder {
    /// `grpc_channels_active`: every channel built counts itself until dropped.
    gauge: prometheus::IntGauge,
    user_agent: String,
    tls: ClientTlsConfig,
    verifier: Option<Arc<dyn ServerCertVerifier>>,
    timeouts: Arc<ArcSwap<Timeouts>>,
}

/// Weak handles, so a channel lives exactly as long as some target's prober holds it.
struct ChannelPool {
    channels: HashMap<EndpointKey, Weak<CountedChannel>>,
    prune_at: usize,
}

impl GrpcProbe {
    /// Loads the CA, certificate and key files and settles which roots TLS uses. A machine
    /// without system roots still verifies against the CA file, if one is given.
    pub fn new(config: ProbeConfig) -> Result<GrpcProbe, ProbeSetupError> {
        let mut tls = ClientTlsConfig::new().timeout(config.connect_timeout);
        if let Some(path) = &config.tls.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem(path, Pem::Certificates)?));
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            let cert = read_pem(cert, Pem::Certificates)?;
            let key = read_pem(key, Pem::PrivateKey)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let verifier = config.tls.insecure_skip_verify.then(|| {
            tracing::warn!("tls_insecure_skip_verify is on: backend certificates are NOT verified");
            Arc::new(insecure::AcceptAnyCertificate::new()) as Arc<dyn ServerCertVerifier>
        });
        let probe_endpoint = Endpoint::from_static("https://localhost");
        let try_tls = |tls: ClientTlsConfig| match &verifier {
            Some(verifier) => probe_endpoint
                .clone()
                .tls_config_with_verifier(tls, Arc::clone(verifier)),
            None => probe_endpoint.clone().tls_config(tls),
        };
        let with_roots = tls.clone().with_native_roots();
        let tls = if verifier.is_some() {
            try_tls(tls.clone()).map_err(|error| ProbeSetupError::Tls(error_chain(&error)))?;
            tls
        } else if try_tls(with_roots.clone()).is_ok() {
            with_roots
        } else {
            tracing::warn!(
                "no usable system tls roots; tls backends are verified against the tls ca file only"
            );
            try_tls(tls.clone()).map_err(|error| ProbeSetupError::Tls(error_chain(&error)))?;
            tls
        };
        Endpoint::from_static("http://localhost")
            .user_agent(config.user_agent.clone())
            .map_err(|_| ProbeSetupError::UserAgent(config.user_agent.clone()))?;
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.metadata {
            let key = MetadataKey::from_bytes(name.as_bytes())
                .map_err(|_| ProbeSetupError::Metadata(name.clone()))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| ProbeSetupError::Metadata(name.clone()))?;
            metadata.insert(key, value);
        }
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            rpc: config.rpc_timeout,
        };
        let timeouts = Arc::new(ArcSwap::from_pointee(timeouts));
        let builder = ChannelBuilder {
            gauge: prometheus::IntGauge::new("grpc_channels_active", "channels")
                .expect("a valid metric name"),
            user_agent: config.user_agent.clone(),
            tls,
            verifier,
            timeouts: Arc::clone(&timeouts),
        };
        Ok(GrpcProbe {
            config,
            timeouts,
            builder,
            metadata,
            channels: Mutex::new(ChannelPool {
                channels: HashMap::new(),
                prune_at: 64,
            }),
        })
    }

    /// Counts the channels this probe makes in `gauge` (`grpc_channels_active`).
    pub fn count_channels(mut self, gauge: prometheus::IntGauge) -> GrpcProbe {
        self.builder.gauge = gauge;
        self
    }

    /// The shared channel for the target's endpoint, made on first use.
    fn channel(&self, target: &Target) -> Result<Arc<CountedChannel>, ProbeError> {
        let key = EndpointKey::of(target);
        let mut pool = self.channels.lock().expect("channel pool lock poisoned");
        if let Some(channel) = pool.channels.get(&key).and_then(Weak::upgrade) {
            return Ok(channel);
        }
        // Drop handles of released channels now and then, not on every insert.
        if pool.channels.len() >= pool.prune_at {
            pool.channels.retain(|_, weak| weak.strong_count() > 0);
            pool.prune_at = (pool.channels.len() * 2).max(64);
        }
        let channel = Arc::new(self.builder.build(&key)?);
        pool.channels.insert(key, Arc::downgrade(&channel));
        Ok(channel)
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

impl ChannelBuilder {
    /// A lazily connecting channel: the connection is made by its first call.
    fn build(&self, key: &EndpointKey) -> Result<CountedChannel, ProbeError> {
        let invalid = |error: &dyn std::error::Error| ProbeError::InvalidTarget(error.to_string());
        let scheme = if key.tls { "https" } else { "http" };
        // The URI carries the authority (`:authority`, TLS server name); the connector
        // decides where the bytes go.
        let uri: Uri = format!("{scheme}://{}", key.authority)
            .parse()
            .map_err(|error: tonic::codegen::http::uri::InvalidUri| invalid(&error))?;
        let mut endpoint = Endpoint::from(uri)
            .user_agent(self.user_agent.clone())
            .map_err(|error| invalid(&error))?;
        if key.tls {
            let configured = match &self.verifier {
                Some(verifier) => {
                    endpoint.tls_config_with_verifier(self.tls.clone(), Arc::clone(verifier))
                }
                None => endpoint.tls_config(self.tls.clone()),
            };
            endpoint = configured.map_err(|error| ProbeError::Tls(error_chain(&error)))?;
        }
        let connect_to = ConnectTo {
            host: key.host.clone(),
            port: key.port,
            timeouts: Arc::clone(&self.timeouts),
        };
        let connector = tower::service_fn(move |_: Uri| connect_to.clone().connect());
        self.gauge.inc();
        Ok(CountedChannel {
            channel: endpoint.connect_with_connector_lazy(connector),
            gauge: self.gauge.clone(),
        })
    }
}

/// A channel that counts itself in `grpc_channels_active` while it lives.
struct CountedChannel {
    channel: Channel,
    gauge: prometheus::IntGauge,
}

impl Drop for CountedChannel {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Probe for GrpcProbe {
    fn reconfigure(&self, config: &ProbeConfig) {
        self.timeouts.store(Arc::new(Timeouts {
            connect: config.connect_timeout,
            rpc: config.rpc_timeout,
        }));
    }

    fn prober(&self, target: &Target) -> Arc<dyn TargetProber> {
        let channels = if self.config.channel_cache {
            Channels::Shared(self.channel(target))
        } else {
            Channels::Fresh {
                builder: Box::new(self.builder.clone()),
                key: EndpointKey::of(target),
            }
        };
        Arc::new(GrpcTarget {
            channels,
            metadata: self.metadata.clone(),
            service: target.service.clone(),
            tls: target.tls,
            timeouts: Arc::clone(&self.timeouts),
        })
    }
}

struct GrpcTarget {
    channels: Channels,
    metadata: MetadataMap,
    service: String,
    tls: bool,
    timeouts: Arc<ArcSwap<Timeouts>>,
}

/// Where a target's checks get their channel.
enum Channels {
    /// The endpoint's shared channel: one connection, kept between checks.
    Shared(Result<Arc<CountedChannel>, ProbeError>),
    /// A new channel (and connection) for every check, closed when the check ends.
    Fresh {
        builder: Box<ChannelBuilder>,
        key: EndpointKey,
    },
}

/// The two probe timeouts, swapped together on reload.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub rpc: Duration,
}

impl TargetProber for GrpcTarget {
    fn check(&self) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            // A fresh channel lives (and counts) until this check ends.
            let fresh;
            let channel = match &self.channels {
                Channels::Shared(Ok(channel)) => channel.channel.clone(),
                Channels::Shared(Err(error)) => return Outcome::Failed(error.clone()),
                Channels::Fresh { builder, key } => match builder.build(key) {
                    Ok(channel) => {
                        fresh = channel;
                        fresh.channel.clone()
                    }
                    Err(error) => return Outcome::Failed(error),
                },
            };
            let mut request = tonic::Request::from_parts(
                self.metadata.clone(),
                Default::default(),
                HealthCheckRequest {
                    service: self.service.clone(),
                },
            );
            // tonic enforces this on the client too, counted from when the connection is
            // ready; the outer bound covers a connect that never finishes.
            let timeouts = **self.timeouts.load();
            request.set_timeout(timeouts.rpc);
            let mut client = HealthClient::new(channel);
            let call = client.check(request);
            match tokio::time::timeout(timeouts.connect + timeouts.rpc, call).await {
                Err(_) => Outcome::Failed(ProbeError::RpcTimeout(timeouts.rpc)),
                Ok(Ok(response)) => {
                    Outcome::Answered(ServingStatus::from_wire(response.into_inner().status))
                }
                Ok(Err(status)) => Outcome::Failed(classify(&status, self.tls, timeouts)),
            }
        })
    }
}

/// Turns a failed call into the most specific reason its error chain supports.
fn classify(status: &tonic::Status, tls: bool, timeouts: Timeouts) -> ProbeError {
    let mut connecting = false;
    let mut deepest = None;
    let mut source = status.source();
    while let Some(error) = source {
        if let Some(failure) = error.downcast_ref::<ConnectFailure>() {
            return match failure {
                ConnectFailure::Dns(message) => ProbeError::Dns(message.clone()),
                ConnectFailure::Refused => ProbeError::ConnectionRefused,
                ConnectFailure::Timeout => ProbeError::ConnectTimeout(timeouts.connect),
                ConnectFailure::Other(error) => ProbeError::Connect(error.to_string()),
            };
        }
        if error.is::<tonic::TimeoutExpired>() {
            return ProbeError::RpcTimeout(timeouts.rpc);
        }
        connecting |= error.is::<tonic::ConnectError>();
        deepest = Some(error);
        source = error.source();
    }
    match deepest {
        // Past the TCP connector, a connect error can only come from the TLS handshake.
        Some(error) if connecting && tls => ProbeError::Tls(error.to_string()),
        Some(error) if connecting => ProbeError::Connect(error.to_string()),
        Some(error) => ProbeError::Transport(error.to_string()),
        None => ProbeError::Status {
            code: code_name(status.code()).to_string(),
            message: status.message().to_string(),
        },
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The canonical upper-case gRPC name of a status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
