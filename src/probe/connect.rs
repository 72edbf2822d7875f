//! Reaching a backend's TCP port: name resolution and connect under one connect timeout,
//! with errors typed so a failed check can say exactly what went wrong.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::Timeouts;
use crate::allowlist::Allowlist;

/// Why a connection to a backend could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("dns: {0}")]
    Dns(String),
    #[error("connection refused")]
    Refused,
    #[error("connect timeout")]
    Timeout,
    #[error("connect: {0}")]
    Other(io::Error),
    /// Every address the name resolved to is outside `allow_backends`.
    #[error("{0}")]
    Denied(String),
}

/// Where to connect: the request line's host and port, whatever the authority says.
#[derive(Clone, Debug)]
pub struct ConnectTo {
    pub host: String,
    pub port: u16,
    pub timeouts: Arc<ArcSwap<Timeouts>>,
    pub allowlist: Arc<ArcSwap<Allowlist>>,
}

impl ConnectTo {
    /// Resolves the host and connects to the first address that accepts, all within
    /// `timeout`. Addresses are tried in the resolver's order.
    pub async fn connect(self) -> Result<TcpStream, ConnectFailure> {
        let deadline = Instant::now() + self.timeouts.load().connect;
        let addrs = tokio::time::timeout_at(deadline, self.resolve())
            .await
            .map_err(|_| ConnectFailure::Timeout)??;
        // A name may resolve outside the allowlist: only its allowed addresses are tried.
        let allowlist = self.allowlist.load();
        let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
            .into_iter()
            .partition(|addr| allowlist.allows_address(*addr));
        if allowed.is_empty() && !denied.is_empty() {
            let shown: Vec<String> = denied
                .iter()
                .take(3)
                .map(|addr| addr.ip().to_string())
                .collect();
            return Err(ConnectFailure::Denied(format!(
                "{} resolves to {}",
                self.host,
                shown.join(", ")
            )));
        }
        let mut last = ConnectFailure::Dns("no addresses".to_string());
        for addr in allowed {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Err(_) => return Err(ConnectFailure::Timeout),
                Ok(Ok(stream)) => {
                    // Probes are small request/response exchanges: never wait for Nagle.
                    stream.set_nodelay(true).map_err(ConnectFailure::Other)?;
                    return Ok(stream);
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    last = ConnectFailure::Refused;
                }
                Ok(Err(error)) => last = ConnectFailure::Other(error),
            }
        }
        Err(last)
    }

    async fn resolve(&self) -> Result<Vec<SocketAddr>, ConnectFailure> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|error| ConnectFailure::Dns(dns_message(&error)))?;
        Ok(addrs.collect())
    }
}

/// getaddrinfo's messages are long and vary by libc; keep the part an operator needs.
fn dns_message(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    text.to_ascii_lowercase()
}
