//! The one-shot subcommands: `probe` (one Health/Check with the agent's settings, exit
//! codes as grpc-health-probe) and `query` (ask a running agent one line), and the
//! `--check-config` report.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::key;
use crate::config::spec::{SETTINGS, Spec};
use crate::config::{Loaded, Settings, Source};
use crate::probe::{GrpcProbe, Outcome, Probe, ProbeError, ServingStatus};
use crate::protocol::{self, Target};

/// grpc-health-probe's exit codes.
pub mod exit {
    pub const SERVING: u8 = 0;
    pub const BAD_ARGUMENTS: u8 = 1;
    pub const CONNECTION_FAILURE: u8 = 2;
    pub const RPC_FAILURE: u8 = 3;
    pub const NOT_SERVING: u8 = 4;
}

/// The target a `probe` invocation names: `host:port` or `[ipv6]:port`, the authority
/// defaulting to the host.
pub fn probe_target(
    address: &str,
    tls: bool,
    authority: Option<&str>,
    service: &str,
) -> Result<Target, String> {
    let (host, port) = address
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| format!("{address:?} is not HOST:PORT (IPv6 as [::1]:50051)"))?;
    let authority = authority.unwrap_or(host);
    let line = format!(
        "{host} {port} {} {authority} {service}",
        if tls { "ssl" } else { "no-ssl" }
    );
    protocol::parse_request(line.as_bytes()).map_err(|error| error.to_string())
}

/// Runs one check and returns the exit code and the line to print.
pub async fn probe(settings: &Settings, target: &Target) -> (u8, String) {
    let probe = match GrpcProbe::new(settings.probe.clone()) {
        Ok(probe) => probe,
        Err(error) => return (exit::BAD_ARGUMENTS, format!("error: {error}")),
    };
    let started = tokio::time::Instant::now();
    let outcome = probe.prober(target).check().await;
    let elapsed = crate::oracle::format_latency(started.elapsed());
    let code = match &outcome {
        Outcome::Answered(ServingStatus::Serving) => exit::SERVING,
        Outcome::Answered(_) => exit::NOT_SERVING,
        Outcome::Failed(ProbeError::InvalidTarget(_)) => exit::BAD_ARGUMENTS,
        Outcome::Failed(
            ProbeError::Dns(_)
            | ProbeError::ConnectionRefused
            | ProbeError::ConnectTimeout(_)
            | ProbeError::Connect(_)
            | ProbeError::Tls(_),
        ) => exit::CONNECTION_FAILURE,
        Outcome::Failed(_) => exit::RPC_FAILURE,
    };
    (code, format!("{} ({elapsed}) {target}", outcome.reason()))
}

/// Why `query` got no reply.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// The agent could not be reached or did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// Sends one request line to a running agent (`--agent` is `HOST:PORT`, a name resolves)
/// and returns its reply line.
pub async fn query(agent: &str, line: &str, within: Duration) -> Result<String, QueryError> {
    let (host, port) = agent
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| {
            QueryError::Usage(format!(
                "--agent {agent:?} is not HOST:PORT (e.g. 127.0.0.1:5555, [::1]:5555)"
            ))
        })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().expect("checked above");
    let unavailable = QueryError::Unavailable;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream
            .write_all(format!("{}\n", line.trim_end()).as_bytes())
            .await?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\n") && stream.read(&mut byte).await? == 1 {
            reply.push(byte[0]);
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).trim_end().to_string())
    };
    match tokio::time::timeout(within, exchange).await {
        Err(_) => Err(unavailable(format!(
            "no reply from {agent} within {within:?}"
        ))),
        Ok(Err(error)) => Err(unavailable(format!("cannot ask {agent}: {error}"))),
        Ok(Ok(reply)) if reply.is_empty() => {
            Err(unavailable(format!("{agent} closed without a reply")))
        }
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// `--check-config`: the settings must also build a prober (the TLS files are read and
/// parsed, as at start-up). Returns the report or the problem.
pub fn check_config(loaded: &Loaded) -> Result<String, String> {
    GrpcProbe::new(loaded.settings.probe.clone()).map_err(|error| error.to_string())?;
    Ok(format!("{}# configuration is valid\n", describe(loaded)))
}

/// The effective configuration as a loadable TOML file, each value commented with the
/// layer it came from. Values computed from others are shown as comments; metadata values
/// are redacted (they often carry credentials, and `--check-config` output ends up in
/// journals).
pub fn describe(loaded: &Loaded) -> String {
    let width = SETTINGS
        .iter()
        .map(|spec| spec.key.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for spec in SETTINGS {
        let (line, comment) = match loaded.resolved.get(spec.key) {
            Some(value) if spec.key == key::MISS_TIMEOUT && value.source == Source::Default => {
                // The default shrinks to what a first probe can take at most.
                let effective = format!("{}ms", loaded.settings.oracle.miss_timeout.as_millis());
                (
                    format!("miss_timeout = {}", toml::Value::from(effective.as_str())),
                    "default: at most grpc_connect_timeout + grpc_rpc_timeout".to_string(),
                )
            }
            Some(value)
                if spec.key == key::LIVENESS_INTERVAL && value.source == Source::Default =>
            {
                // The default grows to the check interval.
                let millis = loaded.settings.oracle.poller.liveness_interval.as_millis();
                let effective = if millis.is_multiple_of(1000) {
                    format!("{}s", millis / 1000)
                } else {
                    format!("{millis}ms")
                };
                (
                    format!(
                        "liveness_interval = {}",
                        toml::Value::from(effective.as_str())
                    ),
                    "default: 10s, or check_interval if longer".to_string(),
                )
            }
            // Commented out, so the report still loads (with the secret from elsewhere).
            Some(value) if crate::config::spec::is_secret(spec.key) => (
                format!("# {} = \"<redacted>\"", spec.key),
                value.source.to_string(),
            ),
            Some(value) => (
                format!("{} = {}", spec.key, toml_value(spec, &value.text)),
                value.source.to_string(),
            ),
            None => match derived(loaded, spec.key) {
                Some((value, how)) => (format!("# {} = {value:?}", spec.key), how),
                None => (format!("# {}", spec.key), "unset".to_string()),
            },
        };
        out.push_str(&format!("{line:<pad$}  # {comment}\n", pad = width + 24));
    }
    out
}

/// A setting's text as TOML: numbers and booleans bare, lists as arrays, maps as inline
/// tables.
fn toml_value(spec: &Spec, text: &str) -> String {
    if spec.multi && !spec.is_map() {
        let items: Vec<String> = text
            .split(',')
            .filter(|item| !item.is_empty())
            .map(|item| toml::Value::from(item).to_string())
            .collect();
        return format!("[{}]", items.join(", "));
    }
    if spec.multi {
        let pairs: Vec<String> = text
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = if spec.key == key::GRPC_METADATA {
                    "<redacted>"
                } else {
                    value
                };
                format!("{} = {}", toml_key(name), toml::Value::from(value))
            })
            .collect();
        return format!("{{ {} }}", pairs.join(", "));
    }
    spec.toml_scalar(text)
}

/// A table key: bare when TOML allows it, quoted otherwise (module paths have `::`).
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_string()
    } else {
        toml::Value::from(name).to_string()
    }
}

/// The value the agent uses for a setting no layer set, and how it was derived.
fn derived(loaded: &Loaded, setting: &str) -> Option<(String, String)> {
    let settings = &loaded.settings;
    match setting {
        key::STALE_AFTER => Some((
            format!("{}ms", settings.oracle.stale_after.as_millis()),
            "unset: 3 check intervals plus both gRPC timeouts".to_string(),
        )),
        key::USER_AGENT => Some((
            settings.probe.user_agent.clone(),
            "unset: the built-in user agent".to_string(),
        )),
        _ => None,
    }
}
