//! Parsers for one setting's text each. Every error says what is allowed, so the
//! message can be shown as it is after the setting's name, value and layer. Only
//! `parse_file` looks outside: a TLS file must be readable before anything binds.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::Verdict;

/// Parses an HAProxy-style duration: a whole number with `us`, `ms`, `s`, `m`, `h` or `d`;
/// a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let problem = || {
        "not a duration; use a whole number with us, ms, s, m, h or d (e.g. 500ms, 2s, 5m); a bare number is milliseconds".to_string()
    };
    let value: u64 = digits.parse().map_err(|_| problem())?;
    let unit_us: u64 = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(problem()),
    };
    value
        .checked_mul(unit_us)
        .map(Duration::from_micros)
        .ok_or_else(|| "too long a duration".to_string())
}

/// The longest duration any setting takes. Far longer than any timing means, and short
/// enough that every sum and multiple the agent makes of its timings (deadlines, the
/// derived `stale_after`, moka's idle TTL bound of 1000 years) stays representable: a
/// setting past it is refused at load, never a panic after start.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    parse_duration_at_least(text, Duration::from_micros(1))
}

pub(super) fn parse_duration_at_least(text: &str, floor: Duration) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < floor {
        return Err(if floor == Duration::from_micros(1) {
            "must be above 0".to_string()
        } else {
            format!("must be at least {floor:?}")
        });
    }
    if duration > MAX_DURATION {
        return Err("too long; use at most 365d".to_string());
    }
    Ok(duration)
}

pub(super) fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "not an IP address; use e.g. 0.0.0.0, 127.0.0.1 or ::".to_string())
}

pub(super) fn parse_port(text: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| "not a port; use 0-65535 (0 picks a free port)".to_string())
}

pub(super) fn parse_count(text: &str, min: usize, max: usize) -> Result<usize, String> {
    let outside = || {
        if max == usize::MAX {
            format!("use a whole number of at least {min}")
        } else {
            format!("use a whole number from {min} to {max}")
        }
    };
    let value: usize = text
        .parse()
        .map_err(|_| format!("not a number; {}", outside()))?;
    if value < min || value > max {
        return Err(format!("out of range; {}", outside()));
    }
    Ok(value)
}

pub(super) fn parse_non_negative_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err("not a number of 0 or more; use for example 1.0".to_string()),
    }
}

pub(super) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("not a boolean; use true or false".to_string()),
    }
}

pub(super) fn parse_choice<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let found = choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text));
    found.map(|(_, value)| *value).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        format!("use one of: {}", names.join(", "))
    })
}

pub(super) fn parse_verdict(text: &str, allowed: &[Verdict]) -> Result<Verdict, String> {
    let choices: Vec<(&str, Verdict)> = allowed.iter().map(|v| (v.as_str(), *v)).collect();
    parse_choice(text, &choices)
}

pub(super) fn parse_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        Err("empty path".to_string())
    } else {
        Ok(PathBuf::from(text))
    }
}

/// A path that must name a readable file now (checked before anything binds).
pub(super) fn parse_file(text: &str) -> Result<PathBuf, String> {
    let path = parse_path(text)?;
    std::fs::File::open(&path).map_err(|error| format!("cannot be read: {error}"))?;
    Ok(path)
}

pub(super) fn parse_token(text: &str) -> Result<String, String> {
    if text.len() < 16 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "use at least 16 printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
                .to_string(),
        );
    }
    Ok(text.to_string())
}

pub(super) fn parse_user_agent(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(text.to_string())
    } else {
        Err("use printable ASCII".to_string())
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

pub(super) fn parse_level(text: &str) -> Result<String, String> {
    let level = text.to_ascii_lowercase();
    if LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(format!("use one of: {}", LEVELS.join(", ")))
    }
}

/// `name=value` pairs separated by commas.
fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_string(), value.trim().to_string()))
            }
            Some(_) => Err("an entry has an empty name; use name=value".to_string()),
            None => Err(format!(
                "{:?} is not name=value (values cannot contain commas)",
                pair.split('=').next().unwrap_or_default()
            )),
        })
        .collect()
}

pub(super) fn parse_log_modules(text: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_pairs(text)?;
    for (module, level) in &pairs {
        if !module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(format!(
                "{module:?} is not a module path such as haproxy_grpc_agent::probe"
            ));
        }
        parse_level(level).map_err(|problem| format!("level of {module}: {problem}"))?;
    }
    Ok(pairs)
}

/// Header names the transport owns; setting them would break the call.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "te",
    "user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "host",
    "connection",
];

pub(super) fn parse_metadata(text: &str) -> Result<Vec<(String, String)>, String> {
    let pairs = parse_pairs(text)?;
    for (name, value) in &pairs {
        let valid_name = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid_name || name.starts_with(':') {
            return Err(format!(
                "{name:?} is not a valid metadata name; use lowercase letters, digits, - _ ."
            ));
        }
        if RESERVED_HEADERS.contains(&name.as_str()) || name.ends_with("-bin") {
            return Err(format!("{name:?} is reserved by the gRPC transport"));
        }
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!("the value of {name} must be printable ASCII"));
        }
    }
    Ok(pairs)
}
