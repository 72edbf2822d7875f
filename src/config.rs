//! Settings: the command line (with built-in defaults) and its validation into the
//! configuration of each stage. Flag names match UnitedTraders/haproxy-grpc-agent where
//! they overlap.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::oracle::OracleConfig;
use crate::poller::PollerConfig;
use crate::probe::{ProbeConfig, TlsSettings};
use crate::responder::ResponderConfig;

/// Answers HAProxy agent-check requests from a cache of gRPC health states kept fresh by
/// background probes.
#[derive(Debug, Clone, Parser)]
#[command(name = "haproxy-grpc-agent", version, about, long_about = None)]
pub struct Cli {
    /// Address the agent port listens on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub server_bind: IpAddr,
    /// Agent port HAProxy's agent-check connects to (0 picks a free port).
    #[arg(long, default_value_t = 5555, value_name = "PORT")]
    pub server_port: u16,
    /// Agent connections served at once; more are closed without a reply.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Longest request line in bytes; longer lines get `down #request line too long`.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub max_line: usize,
    /// How long a client may take to send each request line.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub read_deadline: Duration,

    /// Bound on name resolution, TCP connect and TLS handshake to a backend.
    #[arg(long, default_value = "1000ms", value_parser = parse_duration, value_name = "DURATION")]
    pub grpc_connect_timeout: Duration,
    /// Bound on one Health/Check call once connected.
    #[arg(long, default_value = "1500ms", value_parser = parse_duration, value_name = "DURATION")]
    pub grpc_rpc_timeout: Duration,
    /// PEM file of CA certificates trusted for `ssl` backends, besides the system roots.
    #[arg(long, value_name = "PATH")]
    pub tls_ca_file: Option<PathBuf>,

    /// Time between background probes of one target.
    #[arg(long, default_value = "2000ms", value_parser = parse_duration, value_name = "DURATION")]
    pub check_interval: Duration,
    /// Random spread of each interval, in percent (10 means 0.9x to 1.1x).
    #[arg(long, default_value_t = 10, value_name = "PERCENT")]
    pub check_jitter: u8,
    /// Consecutive healthy probes that bring a down target up.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub rise: u32,
    /// Consecutive failed probes that take an up target down.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub fall: u32,
    /// How long a request for an unseen target waits for its first probe.
    #[arg(long, default_value = "1000ms", value_parser = parse_duration, value_name = "DURATION")]
    pub miss_timeout: Duration,
    /// Targets not asked about for this long are evicted and no longer probed.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_ttl: Duration,
    /// Most targets registered at once.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_targets: usize,
    /// Answer `down #stale` when no probe completed for this long [default: 3 intervals
    /// plus both gRPC timeouts].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stale_after: Option<Duration>,
    /// Probes running at once across all targets.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_probes_in_flight: usize,

    /// Log level, or a tracing filter such as `info,haproxy_grpc_agent::probe=debug`.
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A validated configuration, split by stage.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent_addr: SocketAddr,
    pub responder: ResponderConfig,
    pub probe: ProbeConfig,
    pub oracle: OracleConfig,
    pub log_level: String,
    pub log_format: LogFormat,
}

/// One invalid setting: which, what it was, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct SettingError {
    pub flag: &'static str,
    pub problem: String,
}

impl Cli {
    /// Checks every setting and reports every problem at once.
    pub fn validate(self) -> Result<Settings, Vec<SettingError>> {
        let mut errors = Vec::new();
        let mut require = |ok: bool, flag: &'static str, problem: String| {
            if !ok {
                errors.push(SettingError { flag, problem });
            }
        };
        require(
            self.max_connections > 0,
            "max-connections",
            "must be at least 1".into(),
        );
        require(
            (16..=65536).contains(&self.max_line),
            "max-line",
            format!("{} is outside 16-65536 bytes", self.max_line),
        );
        require(
            !self.read_deadline.is_zero(),
            "read-deadline",
            "must be above 0".into(),
        );
        require(
            !self.grpc_connect_timeout.is_zero(),
            "grpc-connect-timeout",
            "must be above 0".into(),
        );
        require(
            !self.grpc_rpc_timeout.is_zero(),
            "grpc-rpc-timeout",
            "must be above 0".into(),
        );
        require(
            self.check_interval >= Duration::from_millis(10),
            "check-interval",
            format!("{:?} is below the 10ms minimum", self.check_interval),
        );
        require(
            self.check_jitter <= 50,
            "check-jitter",
            format!("{}% is above the 50% maximum", self.check_jitter),
        );
        require(self.rise >= 1, "rise", "must be at least 1".into());
        require(self.fall >= 1, "fall", "must be at least 1".into());
        require(
            !self.miss_timeout.is_zero(),
            "miss-timeout",
            "must be above 0 (use a small value such as 10ms to never wait)".into(),
        );
        require(
            self.idle_ttl >= self.check_interval,
            "idle-ttl",
            format!(
                "{:?} is shorter than --check-interval {:?}; targets would be evicted before their second probe",
                self.idle_ttl, self.check_interval
            ),
        );
        require(
            self.max_targets > 0,
            "max-targets",
            "must be at least 1".into(),
        );
        require(
            self.max_probes_in_flight > 0,
            "max-probes-in-flight",
            "must be at least 1".into(),
        );
        if let Some(path) = &self.tls_ca_file {
            require(
                path.is_file(),
                "tls-ca-file",
                format!("{} is not a readable file", path.display()),
            );
        }
        let probe_budget = self.grpc_connect_timeout + self.grpc_rpc_timeout;
        let stale_after = self
            .stale_after
            .unwrap_or(self.check_interval * 3 + probe_budget);
        require(
            stale_after > self.check_interval + probe_budget,
            "stale-after",
            format!(
                "{stale_after:?} must exceed --check-interval plus both gRPC timeouts ({:?}), or healthy targets would read as stale",
                self.check_interval + probe_budget
            ),
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            agent_addr: SocketAddr::new(self.server_bind, self.server_port),
            responder: ResponderConfig {
                max_connections: self.max_connections,
                max_line: self.max_line,
                read_deadline: self.read_deadline,
                drain_timeout: self.miss_timeout + Duration::from_secs(1),
            },
            probe: ProbeConfig {
                connect_timeout: self.grpc_connect_timeout,
                rpc_timeout: self.grpc_rpc_timeout,
                user_agent: format!("haproxy-grpc-agent/{}", env!("CARGO_PKG_VERSION")),
                tls: TlsSettings {
                    ca_file: self.tls_ca_file,
                },
            },
            oracle: OracleConfig {
                poller: PollerConfig {
                    interval: self.check_interval,
                    jitter: f64::from(self.check_jitter) / 100.0,
                    rise: self.rise,
                    fall: self.fall,
                    probe_deadline: probe_budget + Duration::from_millis(100),
                },
                miss_timeout: self.miss_timeout,
                idle_ttl: self.idle_ttl,
                max_targets: self.max_targets,
                stale_after,
                max_probes_in_flight: self.max_probes_in_flight,
            },
            log_level: self.log_level,
            log_format: self.log_format,
        })
    }
}

impl Settings {
    /// The built-in defaults, as if no flag were given.
    pub fn defaults() -> Settings {
        Cli::parse_from(["haproxy-grpc-agent"])
            .validate()
            .expect("the defaults are valid")
    }
}

/// Parses an HAProxy-style duration: a whole number with `us`, `ms`, `s`, `m`, `h` or `d`;
/// a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let problem = || {
        format!(
            "{text:?} is not a duration; use a whole number with us, ms, s, m, h or d (e.g. 500ms, 2s, 5m); a bare number is milliseconds"
        )
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
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table: [(&str, Result<Duration, ()>); 10] = [
            ("500ms", Ok(Duration::from_millis(500))),
            ("1500", Ok(Duration::from_millis(1500))),
            ("2s", Ok(Duration::from_secs(2))),
            ("5m", Ok(Duration::from_secs(300))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("1d", Ok(Duration::from_secs(86400))),
            ("250us", Ok(Duration::from_micros(250))),
            ("", Err(())),
            ("1.5s", Err(())),
            ("2 s", Err(())),
        ];
        for (text, expected) in table {
            assert_eq!(parse_duration(text).map_err(|_| ()), expected, "{text:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let cli = Cli::parse_from(["x", "--rise", "0", "--fall", "0", "--idle-ttl", "1s"]);
        let errors = cli.validate().unwrap_err();
        let flags: Vec<_> = errors.iter().map(|e| e.flag).collect();
        assert_eq!(flags, ["rise", "fall", "idle-ttl"]);
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::defaults();
        assert_eq!(settings.agent_addr, "0.0.0.0:5555".parse().unwrap());
        assert_eq!(settings.oracle.stale_after, Duration::from_millis(8500));
    }
}
