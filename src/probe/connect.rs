//! Reaching a backend's TCP port the way a modern client does: the name resolved by the
//! probe's resolver ([`super::resolve`], never on the blocking pool), the addresses
//! `allow_backends` denies dropped, and the rest raced by Happy Eyeballs (RFC 8305): the
//! families interleaved, a new attempt every [`ATTEMPT_DELAY`] or as soon as one fails,
//! the first to connect kept. All of it by one deadline, with errors typed so a failed
//! check says exactly what went wrong.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::resolve::{Answer, ResolveError, Resolver};
use crate::allowlist::Allowlist;

/// RFC 8305's Connection Attempt Delay: the next address is tried this long after the
/// previous attempt started, unless that one failed sooner.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

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

/// A TCP connection, and the answer its address came from (none for an IP literal).
pub struct Connected {
    pub stream: TcpStream,
    pub answer: Option<Answer>,
}

/// Where to connect: the request line's host and port, whatever the authority says.
#[derive(Clone)]
pub struct ConnectTo {
    pub host: String,
    pub port: u16,
    pub resolver: Arc<Resolver>,
    pub allowlist: Arc<ArcSwap<Allowlist>>,
}

impl ConnectTo {
    /// Whether the host is an IP address (nothing to resolve).
    pub fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The name's newest answer, by `by`. Ends a hair before it, so that a lookup that
    /// takes the whole connect timeout is reported as the DNS's.
    pub async fn resolve(&self, by: Instant) -> Result<Answer, ResolveError> {
        let resolve_by = by.checked_sub(Duration::from_millis(1)).unwrap_or(by);
        self.resolver.lookup(&self.host, resolve_by).await
    }

    /// Resolves the host and connects to one of its allowed addresses by `by`.
    pub async fn connect(&self, by: Instant) -> Result<Connected, ConnectFailure> {
        let (ips, answer) = match self.literal() {
            Some(ip) => (vec![ip], None),
            None => {
                let answer = self
                    .resolve(by)
                    .await
                    .map_err(|error| ConnectFailure::Dns(error.to_string()))?;
                (answer.addrs.clone(), Some(answer))
            }
        };
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
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
        let stream = race(interleave(allowed), by).await?;
        // Probes are small request/response exchanges: never wait for Nagle.
        stream.set_nodelay(true).map_err(ConnectFailure::Other)?;
        Ok(Connected { stream, answer })
    }
}

/// The order addresses are tried in (RFC 8305 section 4): the families alternate,
/// starting with the family of the first address; each family keeps the resolver's order.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (mut leading, mut trailing): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first_v6);
    let mut ordered = Vec::with_capacity(leading.len() + trailing.len());
    leading.reverse();
    trailing.reverse();
    loop {
        match (leading.pop(), trailing.pop()) {
            (None, None) => return ordered,
            (one, other) => ordered.extend(one.into_iter().chain(other)),
        }
    }
}

/// Happy Eyeballs over `addrs` (already ordered): an attempt starts every
/// [`ATTEMPT_DELAY`], or at once when the last one failed; attempts keep racing, the first
/// connected wins and the others are dropped. At `by` with attempts still waiting it is a
/// timeout; with every attempt failed, refused if all were refused, else the last error.
async fn race(addrs: Vec<SocketAddr>, by: Instant) -> Result<TcpStream, ConnectFailure> {
    let mut waiting = addrs.into_iter();
    let mut attempts = JoinSet::new();
    let (mut failed, mut refused) = (0usize, 0usize);
    let mut last: Option<io::Error> = None;
    let mut next_at = Instant::now();
    loop {
        if Instant::now() >= next_at
            && let Some(addr) = waiting.next()
        {
            attempts.spawn(TcpStream::connect(addr));
            next_at = Instant::now() + ATTEMPT_DELAY;
        }
        if attempts.is_empty() {
            // Every address was tried and failed (or there was none).
            return Err(match last {
                Some(_) if refused == failed => ConnectFailure::Refused,
                Some(error) => ConnectFailure::Other(error),
                None => ConnectFailure::Dns("no addresses".to_string()),
            });
        }
        let more = waiting.len() > 0;
        tokio::select! {
            done = attempts.join_next() => match done.expect("attempts is not empty") {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => {
                    failed += 1;
                    if error.kind() == io::ErrorKind::ConnectionRefused {
                        refused += 1;
                    }
                    last = Some(error);
                    // A failed attempt hands over to the next address at once.
                    next_at = Instant::now();
                }
                Err(joined) => {
                    failed += 1;
                    last = Some(io::Error::other(joined.to_string()));
                    next_at = Instant::now();
                }
            },
            _ = tokio::time::sleep_until(next_at), if more => {}
            _ = tokio::time::sleep_until(by) => return Err(ConnectFailure::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &str) -> Vec<SocketAddr> {
        list.split_whitespace()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 443))
            .collect()
    }

    /// `given` ordered is `expected`.
    fn check(given: &str, expected: &str) {
        assert_eq!(
            interleave(addrs(given)),
            addrs(expected),
            "order of {given}"
        );
    }

    #[test]
    fn families_alternate_from_the_first_address() {
        check("", "");
        check("192.0.2.1", "192.0.2.1");
        check("192.0.2.1 192.0.2.2", "192.0.2.1 192.0.2.2");
        check(
            "2001:db8::1 2001:db8::2 192.0.2.1 192.0.2.2",
            "2001:db8::1 192.0.2.1 2001:db8::2 192.0.2.2",
        );
        check(
            "192.0.2.1 2001:db8::1 2001:db8::2",
            "192.0.2.1 2001:db8::1 2001:db8::2",
        );
        check(
            "2001:db8::1 192.0.2.1 192.0.2.2 192.0.2.3",
            "2001:db8::1 192.0.2.1 192.0.2.2 192.0.2.3",
        );
        check(
            "192.0.2.1 192.0.2.2 2001:db8::1",
            "192.0.2.1 2001:db8::1 192.0.2.2",
        );
    }

    #[tokio::test]
    async fn a_refused_attempt_hands_over_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A port just closed refuses.
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            gone.local_addr().unwrap()
        };
        let started = Instant::now();
        let by = started + Duration::from_secs(2);
        race(vec![closed, good], by)
            .await
            .expect("the second address connects");
        assert!(started.elapsed() < ATTEMPT_DELAY, "no wait after a refusal");
    }

    #[tokio::test]
    async fn all_refused_says_refused() {
        let closed = {
            let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            gone.local_addr().unwrap()
        };
        let by = Instant::now() + Duration::from_secs(2);
        let failure = race(vec![closed, closed], by).await.unwrap_err();
        assert!(matches!(failure, ConnectFailure::Refused), "{failure}");
    }
}
