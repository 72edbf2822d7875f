//! The one-shot subcommands: `probe` (one Health/Check with the agent's settings, exit
//! codes as grpc-health-probe) and `query` (ask a running agent one line), and the
//! `--check-config` report.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::spec::SETTINGS;
use crate::config::{Resolved, Settings};
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
    let elapsed = crate::poller::format_latency(started.elapsed());
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

/// Sends one request line to a running agent and returns its reply line.
pub async fn query(agent: &str, line: &str, within: Duration) -> Result<String, String> {
    let agent: SocketAddr = agent
        .parse()
        .map_err(|_| format!("--agent {agent:?} is not IP:PORT"))?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(agent).await?;
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
        Err(_) => Err(format!("no reply from {agent} within {within:?}")),
        Ok(Err(error)) => Err(format!("cannot ask {agent}: {error}")),
        Ok(Ok(reply)) if reply.is_empty() => Err(format!("{agent} closed without a reply")),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// The effective configuration as a loadable TOML file, each value commented with the
/// layer it came from.
pub fn describe(resolved: &Resolved) -> String {
    let width = SETTINGS
        .iter()
        .map(|spec| spec.key.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for spec in SETTINGS {
        match resolved.get(spec.key) {
            Some(value) => {
                let assignment = format!("{} = {:?}", spec.key, value.text);
                out.push_str(&format!(
                    "{assignment:<pad$}  # {}\n",
                    value.source,
                    pad = width + 24
                ));
            }
            None => out.push_str(&format!("# {:<width$} (unset)\n", spec.key)),
        }
    }
    out
}
