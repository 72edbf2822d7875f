//! Who the agent may probe and who may ask it, as pure rules: `allow_backends` (CIDRs and
//! hostname globs, each with an optional port or port range) and `allow_sources` (CIDRs).
//!
//! A backend target is allowed when:
//! - its host is an IP address inside an address rule whose ports include its port; or
//! - its host is a name that matches a name rule whose ports include its port (when there
//!   are name rules), and every address it resolves to that the agent connects to is inside
//!   an address rule with that port (when there are address rules). A name that resolves
//!   partly outside is connected only to its allowed addresses, so a name cannot smuggle in
//!   an address the list does not allow.
//!
//! An empty list allows everything.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr {
            network: mask(network, prefix),
            prefix,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of IPv4 peers) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// What one rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hosts {
    Addresses(Cidr),
    /// A lowercase hostname pattern: `*` matches any run of characters (dots included),
    /// `?` one character.
    Names(String),
}

/// One `allow_backends` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    hosts: Hosts,
    ports: RangeInclusive<u16>,
}

impl Rule {
    /// `CIDR`, `glob`, either followed by `:port` or `:low-high`; IPv6 with a port in
    /// brackets: `[2001:db8::/32]:443`.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty entry; give a CIDR or a hostname glob".to_string());
        }
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: no closing ]"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(ports) => (host, Some(ports)),
                    None => return Err(format!("{text:?}: expected :port after ]")),
                },
            }
        } else if text.matches(':').count() > 1 {
            // A bare IPv6 address or network, no port.
            (text, None)
        } else {
            match text.split_once(':') {
                Some((host, ports)) => (host, Some(ports)),
                None => (text, None),
            }
        };
        let ports = match ports {
            None => 1..=u16::MAX,
            Some(ports) => parse_ports(ports).map_err(|problem| format!("{text:?}: {problem}"))?,
        };
        let looks_like_address = host.contains(':')
            || host
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '/');
        let hosts = if looks_like_address {
            Hosts::Addresses(Cidr::parse(host)?)
        } else {
            let valid = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.*?_".contains(c));
            if !valid || host.contains('/') {
                return Err(format!(
                    "{host:?} is neither a CIDR nor a hostname glob (letters, digits, - . _ * ?)"
                ));
            }
            Hosts::Names(host.to_ascii_lowercase())
        };
        Ok(Rule { hosts, ports })
    }
}

fn parse_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |text: &str| match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{text:?} is not a port (1-65535)")),
    };
    match text.split_once('-') {
        None => {
            let port = port(text)?;
            Ok(port..=port)
        }
        Some((low, high)) => {
            let (low, high) = (port(low)?, port(high)?);
            if low > high {
                return Err(format!("the port range {low}-{high} is empty"));
            }
            Ok(low..=high)
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.hosts {
            Hosts::Addresses(cidr) if cidr.network.is_ipv6() => format!("[{cidr}]"),
            Hosts::Addresses(cidr) => cidr.to_string(),
            Hosts::Names(glob) => glob.clone(),
        };
        match (*self.ports.start(), *self.ports.end()) {
            (1, u16::MAX) => write!(f, "{host}"),
            (low, high) if low == high => write!(f, "{host}:{low}"),
            (low, high) => write!(f, "{host}:{low}-{high}"),
        }
    }
}

/// The backend allowlist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    rules: Vec<Rule>,
}

/// What the list says of a target before any name is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Denied,
    /// Allowed by name; each address it resolves to must also be allowed.
    CheckAddresses,
}

impl Allowlist {
    pub fn new(rules: Vec<Rule>) -> Allowlist {
        Allowlist { rules }
    }

    /// Parses every entry; the first bad one is the error.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Allowlist, String> {
        let rules = entries
            .into_iter()
            .map(Rule::parse)
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn has_addresses(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(rule.hosts, Hosts::Addresses(_)))
    }

    /// The decision for a request line's host and port.
    pub fn admit(&self, host: &str, port: u16) -> Admission {
        if self.rules.is_empty() {
            return Admission::Allowed;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(address) = host.parse::<IpAddr>() {
            // An address needs an address rule: a list of names allows no bare address.
            return if self.has_addresses() && self.allows_address(SocketAddr::new(address, port)) {
                Admission::Allowed
            } else {
                Admission::Denied
            };
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let has_names = self
            .rules
            .iter()
            .any(|rule| matches!(rule.hosts, Hosts::Names(_)));
        let name_allowed = self.rules.iter().any(|rule| match &rule.hosts {
            Hosts::Names(glob) => rule.ports.contains(&port) && glob_match(glob, &name),
            Hosts::Addresses(_) => false,
        });
        match (has_names, name_allowed, self.has_addresses()) {
            (true, false, _) => Admission::Denied,
            (_, _, true) => Admission::CheckAddresses,
            _ => Admission::Allowed,
        }
    }

    /// Whether the agent may connect to `address` (after resolving a name the list
    /// allowed). With no address rules, any address is.
    pub fn allows_address(&self, address: SocketAddr) -> bool {
        if !self.has_addresses() {
            return true;
        }
        self.rules.iter().any(|rule| match &rule.hosts {
            Hosts::Addresses(cidr) => {
                rule.ports.contains(&address.port()) && cidr.contains(address.ip())
            }
            Hosts::Names(_) => false,
        })
    }
}

/// `*` any run of characters, `?` one; everything else literally (already lowercase).
fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The agent port's source allowlist: the addresses HAProxy connects from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    networks: Vec<Cidr>,
}

impl Sources {
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Sources, String> {
        let networks = entries
            .into_iter()
            .map(|entry| Cidr::parse(entry.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Sources { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether a peer may ask; an empty list allows everyone.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.networks.is_empty() || self.networks.iter().any(|cidr| cidr.contains(peer))
    }
}

#[cfg(test)]
#[path = "allowlist_tests.rs"]
mod tests;
