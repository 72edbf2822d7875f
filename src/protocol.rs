//! The agent-check line codec: request bytes → [`Target`], [`Reply`] → reply bytes. Pure, no I/O.
//!
//! A request is `<host> <port> <ssl|no-ssl> <authority> [<service>] [weight=orca|none]
//! [group=NAME]`,
//! words separated by spaces or tabs; the line terminator has already been removed by the
//! reader (a trailing `\r` is tolerated here). A word holding `=` is an option, never a
//! service (gRPC service names have none), so today's 4- and 5-word lines mean what they
//! meant. A reply is a verdict (`up`, `down`, `drain`, `maint`), maybe `ready` and a weight
//! (`NN%`), optionally followed by ` #<reason>`, and a newline.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name accepted (RFC 1035 limit for a presentation-format name).
pub const MAX_HOST_LEN: usize = 253;
/// Longest authority accepted: a host name, a colon and a port.
pub const MAX_AUTHORITY_LEN: usize = MAX_HOST_LEN + 6;
/// Longest gRPC service name accepted.
pub const MAX_SERVICE_LEN: usize = 256;
/// Longest reason written after `#`, [`CUT_MARK`] included; HAProxy shows it in `last_agt`,
/// so keep it short.
pub const MAX_REASON_LEN: usize = 120;
/// What ends a reason that was cut to fit [`MAX_REASON_LEN`].
pub const CUT_MARK: &str = "...";
/// Longest `group=` name accepted.
pub const MAX_GROUP_LEN: usize = 64;
/// How much of an offending word an error message quotes.
const MAX_QUOTED_LEN: usize = 24;

/// One backend health question: which server, how to reach it, which service to ask about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// A DNS name, an IPv4 address or an IPv6 address (stored without brackets).
    pub host: String,
    pub port: u16,
    /// `ssl` on the request line: speak TLS to the backend.
    pub tls: bool,
    /// The HTTP/2 `:authority` and, with TLS, the server name to verify.
    pub authority: String,
    /// The gRPC service name to check; empty means the whole server.
    pub service: String,
    /// Whether the reply carries a weight from the backend's load reports.
    pub weight: WeightWord,
    /// The `group=` option: the targets that fail together when the fault is the agent's
    /// own (see the oracle's panic); `None` groups by authority and service.
    pub group: Option<String>,
}

/// The request line's `weight=` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightWord {
    /// No option: the `orca_weights` setting decides.
    #[default]
    Unset,
    /// `weight=orca`: a weight from the backend's ORCA load reports.
    Orca,
    /// `weight=none`: no weight, whatever the setting says.
    None,
}

impl WeightWord {
    /// The option as written on a request line; `None` when unset.
    pub fn as_option(self) -> Option<&'static str> {
        match self {
            WeightWord::Unset => None,
            WeightWord::Orca => Some("weight=orca"),
            WeightWord::None => Some("weight=none"),
        }
    }
}

impl Target {
    /// The request line that asks for this target, without a terminator.
    pub fn to_request_line(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let tls = if self.tls { "ssl" } else { "no-ssl" };
        let mut line = format!("{host} {} {tls} {}", self.port, self.authority);
        if !self.service.is_empty() {
            line.push(' ');
            line.push_str(&self.service);
        }
        if let Some(option) = self.weight.as_option() {
            line.push(' ');
            line.push_str(option);
        }
        if let Some(group) = &self.group {
            line.push_str(" group=");
            line.push_str(group);
        }
        line
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_request_line())
    }
}

/// Why a request line was refused. The `Display` text follows `bad request: ` in the reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("empty line")]
    Empty,
    #[error("not UTF-8")]
    NotUtf8,
    #[error("control character in line")]
    ControlCharacter,
    #[error("expected 4 or 5 words (host port ssl|no-ssl authority [service]), got {0}")]
    WordCount(usize),
    #[error("unknown option \"{0}\"; the options are weight=orca, weight=none and group=NAME")]
    UnknownOption(String),
    #[error("invalid group \"{0}\"; a group name is 1-64 letters, digits, '.', '-' or '_'")]
    Group(String),
    #[error("option \"{0}\" given twice")]
    RepeatedOption(String),
    #[error("invalid host \"{0}\"")]
    Host(String),
    #[error("port \"{0}\" is not a number")]
    PortNotNumber(String),
    #[error("port {0} out of range (1-65535)")]
    PortOutOfRange(String),
    #[error("tls word \"{0}\" must be ssl or no-ssl")]
    TlsWord(String),
    #[error("invalid authority \"{0}\"")]
    Authority(String),
    #[error("service name longer than {MAX_SERVICE_LEN} bytes")]
    ServiceTooLong,
}

/// Parses one request line (terminator removed; a trailing `\r` is ignored).
pub fn parse_request(line: &[u8]) -> Result<Target, BadRequest> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| BadRequest::NotUtf8)?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(BadRequest::ControlCharacter);
    }
    let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let [host, port, tls, authority, rest @ ..] = words.as_slice() else {
        return Err(if words.is_empty() {
            BadRequest::Empty
        } else {
            BadRequest::WordCount(words.len())
        });
    };
    let (options, plain): (Vec<&str>, Vec<&str>) = rest.iter().partition(|w| w.contains('='));
    let service = match plain.as_slice() {
        [] => "",
        [service] => service,
        _ => return Err(BadRequest::WordCount(4 + plain.len())),
    };
    if service.len() > MAX_SERVICE_LEN {
        return Err(BadRequest::ServiceTooLong);
    }
    let host = parse_host(host)?;
    let port = parse_port(port)?;
    let tls = parse_tls(tls)?;
    let authority = parse_authority(authority)?;
    let options = parse_options(&options)?;
    Ok(Target {
        host,
        port,
        tls,
        authority,
        service: service.to_string(),
        weight: options.weight.unwrap_or_default(),
        group: options.group,
    })
}

/// The options a request line gave.
#[derive(Default)]
struct Options {
    weight: Option<WeightWord>,
    group: Option<String>,
}

/// The options after the authority and service (words holding `=`), in any order, each
/// at most once.
fn parse_options(options: &[&str]) -> Result<Options, BadRequest> {
    let mut parsed = Options::default();
    for option in options {
        let repeated = match option.split_once('=') {
            Some(("weight", "orca")) => parsed.weight.replace(WeightWord::Orca).is_some(),
            Some(("weight", "none")) => parsed.weight.replace(WeightWord::None).is_some(),
            Some(("group", name)) => parsed.group.replace(parse_group(name)?).is_some(),
            _ => return Err(BadRequest::UnknownOption(quote(option))),
        };
        if repeated {
            let name = option.split_once('=').map_or(*option, |(name, _)| name);
            return Err(BadRequest::RepeatedOption(quote(name)));
        }
    }
    Ok(parsed)
}

/// A group name: what an operator writes in a config file and reads in a reason, so a
/// plain word.
fn parse_group(name: &str) -> Result<String, BadRequest> {
    let valid = !name.is_empty()
        && name.len() <= MAX_GROUP_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(BadRequest::Group(quote(name)))
    }
}

fn quote(word: &str) -> String {
    match word.char_indices().nth(MAX_QUOTED_LEN) {
        Some((end, _)) => format!("{}...", &word[..end]),
        None => word.to_string(),
    }
}

fn parse_host(word: &str) -> Result<String, BadRequest> {
    let bad = || BadRequest::Host(quote(word));
    if let Some(inner) = word.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad)?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| bad());
    }
    if word.contains(':') {
        return word
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| bad());
    }
    // Something made only of digits and dots is meant as an IPv4 address, never a name.
    if word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return word
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| bad());
    }
    if is_dns_name(word) {
        Ok(word.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

/// A presentation-format DNS name: labels of letters, digits, `-` and `_` (1-63 bytes,
/// no leading or trailing `-`), an optional trailing dot, at most [`MAX_HOST_LEN`] bytes.
fn is_dns_name(word: &str) -> bool {
    let name = word.strip_suffix('.').unwrap_or(word);
    !name.is_empty()
        && name.len() <= MAX_HOST_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_port(word: &str) -> Result<u16, BadRequest> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRequest::PortNotNumber(quote(word)));
    }
    match word.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(BadRequest::PortOutOfRange(quote(word))),
    }
}

fn parse_tls(word: &str) -> Result<bool, BadRequest> {
    match word {
        "ssl" => Ok(true),
        "no-ssl" => Ok(false),
        _ => Err(BadRequest::TlsWord(quote(word))),
    }
}

/// An authority is `host` or `host:port`, where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address. It becomes the `:authority` header and the TLS server name.
fn parse_authority(word: &str) -> Result<String, BadRequest> {
    let bad = || BadRequest::Authority(quote(word));
    if word.len() > MAX_AUTHORITY_LEN {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = word.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (None, port)
    } else {
        match word.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(word), None),
        }
    };
    if let Some(host) = host {
        let is_ipv4 = host.parse::<Ipv4Addr>().is_ok();
        if !is_ipv4 && !is_dns_name(host) {
            return Err(bad());
        }
    }
    if let Some(port) = port {
        parse_port(port).map_err(|_| bad())?;
    }
    Ok(word.to_string())
}

/// What the agent tells HAProxy about a server: the operational state (`up`, `down`) or
/// an administrative one (`drain`: no new sessions; `maint`: out of service).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Up,
    Down,
    Drain,
    Maint,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Up => "up",
            Verdict::Down => "down",
            Verdict::Drain => "drain",
            Verdict::Maint => "maint",
        }
    }
}

/// One reply line: a verdict, maybe a weight, and the reason HAProxy shows in `last_agt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub verdict: Verdict,
    /// Adds HAProxy's `ready` word, which lifts a `drain` or `maint` the agent set before.
    pub ready: bool,
    /// `NN%`: the server's weight as a share of the weight its configuration gives it.
    pub weight: Option<u16>,
    pub reason: String,
}

impl Reply {
    pub fn new(verdict: Verdict, reason: impl Into<String>) -> Reply {
        Reply {
            verdict,
            ready: false,
            weight: None,
            reason: reason.into(),
        }
    }

    pub fn up(reason: impl Into<String>) -> Reply {
        Reply::new(Verdict::Up, reason)
    }

    pub fn down(reason: impl Into<String>) -> Reply {
        Reply::new(Verdict::Down, reason)
    }

    /// The reply for a refused request line.
    pub fn bad_request(error: &BadRequest) -> Reply {
        Reply::down(format!("bad request: {error}"))
    }

    /// Appends the reply line, newline included. The reason is made fit for HAProxy's
    /// stats, in this order:
    ///
    /// 1. Words holding a URL (`http://` or `https://`, in any case) are removed, with the
    ///    whitespace that led to them; some errors end with a link to their documentation,
    ///    which in `last_agt` would only crowd out what happened.
    /// 2. Anything but printable ASCII becomes `?`, so the line stays one line.
    /// 3. A reason longer than [`MAX_REASON_LEN`] bytes is cut after its last whole word
    ///    (words are separated by spaces) that leaves room for ` ...`, so no word is shown
    ///    in part; only a first word too long for that is cut inside, with `...` right
    ///    after it. A cut reason ends with [`CUT_MARK`] and stays within the bound.
    ///
    /// A reason left empty is not written, nor its `#`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.verdict.as_str().as_bytes());
        if self.ready {
            out.extend_from_slice(b" ready");
        }
        if let Some(percent) = self.weight {
            out.extend_from_slice(format!(" {percent}%").as_bytes());
        }
        let reason = without_urls(&self.reason);
        if !reason.is_empty() {
            out.extend_from_slice(b" #");
            push_bounded(out, &reason);
        }
        out.push(b'\n');
    }

    /// The reply line as a string, newline included.
    pub fn to_line(&self) -> String {
        let mut out = Vec::new();
        self.encode(&mut out);
        String::from_utf8(out).expect("encode writes ASCII only")
    }
}

/// `reason` without the words (runs of characters between whitespace) that hold a URL; the
/// words left keep the whitespace that was between them, and none is left at either end.
/// Borrows when there is nothing to remove, as for every reason the agent makes itself.
pub fn without_urls(reason: &str) -> Cow<'_, str> {
    if !reason.contains("://") || !reason.split_whitespace().any(is_url) {
        return Cow::Borrowed(reason);
    }
    let mut kept = String::with_capacity(reason.len());
    let mut rest = reason;
    while !rest.is_empty() {
        let space_len = rest.len() - rest.trim_start().len();
        let word_len = rest[space_len..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - space_len);
        let (space, word) = rest[..space_len + word_len].split_at(space_len);
        rest = &rest[space_len + word_len..];
        if word.is_empty() || is_url(word) {
            continue;
        }
        if !kept.is_empty() {
            kept.push_str(space);
        }
        kept.push_str(word);
    }
    Cow::Owned(kept)
}

fn is_url(word: &str) -> bool {
    let bytes = word.as_bytes();
    [b"http://".as_slice(), b"https://".as_slice()]
        .iter()
        .any(|scheme| {
            bytes
                .windows(scheme.len())
                .any(|w| w.eq_ignore_ascii_case(scheme))
        })
}

/// Appends `reason` as printable ASCII, cut to [`MAX_REASON_LEN`] bytes at a word boundary
/// and marked, as [`Reply::encode`] describes.
fn push_bounded(out: &mut Vec<u8>, reason: &str) {
    let start = out.len();
    // One byte past the bound is enough to know the reason must be cut.
    out.extend(
        reason
            .bytes()
            .take(MAX_REASON_LEN + 1)
            .map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' }),
    );
    if out.len() - start <= MAX_REASON_LEN {
        return;
    }
    let shown = &out[start..];
    // Room for the kept words, a space and the mark.
    let room = MAX_REASON_LEN - CUT_MARK.len() - 1;
    let whole_words = shown[..=room]
        .iter()
        .rposition(|&b| b == b' ')
        .map(|space| shown[..space].trim_ascii_end().len())
        .filter(|&len| len > 0);
    match whole_words {
        Some(len) => {
            out.truncate(start + len);
            out.push(b' ');
        }
        None => out.truncate(start + MAX_REASON_LEN - CUT_MARK.len()),
    }
    out.extend_from_slice(CUT_MARK.as_bytes());
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
