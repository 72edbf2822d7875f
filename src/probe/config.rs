//! The probe's settings, its start-up errors, its timeouts and the two HTTP/2 bounds its
//! reasons name: plain data that every part of the probe reads, so none of them depends
//! on another for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::allowlist::Allowlist;
use crate::weight::WeightConfig;

/// The largest frame the agent accepts: the protocol's default, never raised.
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// The largest decoded header list the agent accepts; a health answer needs a few hundred
/// bytes. h2 closes a connection whose header blocks decode to far more.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

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
    /// Load-aware weights from ORCA reports.
    pub load: LoadConfig,
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

/// The probe's timeouts, swapped together on reload.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub rpc: Duration,
    /// PING a connection with streams after this much silence.
    pub keepalive: Duration,
}

impl Timeouts {
    pub fn of(config: &ProbeConfig) -> Timeouts {
        Timeouts {
            connect: config.connect_timeout,
            rpc: config.rpc_timeout,
            keepalive: config.keepalive,
        }
    }
}

/// Load-aware weights: one ORCA stream per endpoint whose targets want a weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadConfig {
    /// Whether a target without a `weight=` option gets a weight (`orca_weights`).
    pub by_default: bool,
    /// The report interval asked of backends.
    pub report_interval: Duration,
    /// How reports become a weight.
    pub weight: WeightConfig,
}
