//! Settings: one table of settings ([`spec`]), reachable from flags ([`cli`]), a TOML file
//! and the environment ([`layers`]), validated here into the configuration of each stage.
//! Names match UnitedTraders/haproxy-grpc-agent where they overlap.

pub mod cli;
pub mod key;
pub mod layers;
mod parse;
pub mod spec;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use cli::{Action, Invocation};
pub use layers::{Layers, Resolved, Source, Value};
pub use parse::parse_duration;

use parse::{
    parse_bool, parse_choice, parse_count, parse_duration_at_least, parse_file, parse_ip,
    parse_level, parse_log_modules, parse_metadata, parse_path, parse_port,
    parse_positive_duration, parse_token, parse_user_agent, parse_verdict,
};

use crate::admin::AdminConfig;
use crate::allowlist::{Allowlist, Sources};
use crate::oracle::OracleConfig;
use crate::poller::{HealthMode, PollerConfig, ReplyPolicy};
use crate::probe::{ProbeConfig, TlsSettings};
use crate::protocol::Verdict;
use crate::responder::ResponderConfig;

/// A validated configuration, split by stage.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub admin: AdminConfig,
    pub responder: ResponderConfig,
    pub probe: ProbeConfig,
    pub oracle: OracleConfig,
    pub logging: LogSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogDestination {
    Console,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRotation {
    Never,
    Daily,
    Hourly,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// A tracing filter: the level, then `module=level` for each per-module level.
    pub filter: String,
    pub format: LogFormat,
    pub file: Option<PathBuf>,
    pub rotation: LogRotation,
    pub max_files: Option<usize>,
}

/// One invalid setting: which, what it was, where it came from, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub value: Option<Value>,
    pub problem: String,
}

impl SettingError {
    fn file(path: &Path, problem: String) -> SettingError {
        SettingError {
            key: format!("config file {}", path.display()),
            value: None,
            problem,
        }
    }

    fn file_key(path: &Path, key: &str, problem: String) -> SettingError {
        SettingError {
            key: format!("{key} (from file {})", path.display()),
            value: None,
            problem,
        }
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) if spec::hide_value_in_errors(&self.key) => write!(
                f,
                "{} = <redacted> (from {}): {}",
                self.key, value.source, self.problem
            ),
            Some(value) => write!(
                f,
                "{} = {:?} (from {}): {}",
                self.key, value.text, value.source, self.problem
            ),
            None => write!(f, "{}: {}", self.key, self.problem),
        }
    }
}

/// Every problem with a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<SettingError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "invalid setting {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded configuration with the raw values it was built from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub resolved: Resolved,
}

impl Loaded {
    /// Every set value on one line, for the start-up log. Metadata values can carry
    /// credentials, so only their names are shown.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for spec in spec::SETTINGS {
            let Some(value) = self.resolved.get(spec.key) else {
                continue;
            };
            let text = if spec.key == key::GRPC_METADATA {
                let names: Vec<&str> = value
                    .text
                    .split(',')
                    .map(|pair| pair.split('=').next().unwrap_or(""))
                    .collect();
                names
                    .iter()
                    .map(|name| format!("{name}=<redacted>"))
                    .collect::<Vec<_>>()
                    .join(",")
            } else if spec::is_secret(spec.key) {
                "<redacted>".to_string()
            } else {
                value.text.clone()
            };
            parts.push(format!("{}={text}", spec.key));
        }
        parts.join(" ")
    }
}

/// Resolves the layers and validates the result.
pub fn load(layers: &Layers<'_>) -> Result<Loaded, ConfigErrors> {
    let (resolved, settings) = resolve_and_check(layers)?;
    Ok(Loaded { settings, resolved })
}

/// The layers' values, checked: the layers' own problems and the values' problems
/// together, so one run shows everything to fix.
fn resolve_and_check(layers: &Layers<'_>) -> Result<(Resolved, Settings), ConfigErrors> {
    let (resolved, mut errors) = layers.resolve();
    match Settings::from_resolved(&resolved) {
        Ok(settings) if errors.is_empty() => Ok((resolved, settings)),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(mut value_errors) => {
            errors.append(&mut value_errors);
            Err(ConfigErrors(errors))
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed settings now in effect.
    pub applied: Vec<&'static str>,
    /// Changed settings that keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads the layers for SIGHUP. The new values must be valid on their own; settings
/// that cannot change while running keep their current values, and the report says which
/// changed anyway.
pub fn reload(
    layers: &Layers<'_>,
    current: &Loaded,
) -> Result<(Loaded, ReloadReport), ConfigErrors> {
    let (fresh, _) = resolve_and_check(layers)?;
    let mut merged = Resolved::new();
    let mut report = ReloadReport::default();
    for spec in spec::SETTINGS {
        let old = current.resolved.get(spec.key);
        let new = fresh.get(spec.key);
        let changed = old.map(|v| &v.text) != new.map(|v| &v.text);
        let (kept, list) = match spec.reload {
            spec::Reload::Live => (new, &mut report.applied),
            spec::Reload::Restart => (old, &mut report.needs_restart),
        };
        if let Some(value) = kept {
            merged.insert(spec.key, value.clone());
        }
        if changed {
            list.push(spec.key);
        }
    }
    let settings = Settings::from_resolved(&merged).map_err(ConfigErrors)?;
    Ok((
        Loaded {
            settings,
            resolved: merged,
        },
        report,
    ))
}

impl Settings {
    /// The built-in defaults, as if nothing were set.
    pub fn defaults() -> Settings {
        Settings::from_args(["haproxy-grpc-agent"]).expect("the defaults are valid")
    }

    /// Flags on top of the defaults, ignoring the environment (for tests and tools).
    pub fn from_args<I, T>(args: I) -> Result<Settings, ConfigErrors>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let invocation = cli::parse(args).map_err(|error| {
            ConfigErrors(vec![SettingError {
                key: "command line".into(),
                value: None,
                problem: error.to_string(),
            }])
        })?;
        let layers = Layers {
            flags: invocation.flags,
            config_file: invocation.config_file,
            env: &|_| None,
        };
        load(&layers).map(|loaded| loaded.settings)
    }

    /// Validates resolved values: each on its own, then the rules between them.
    pub fn from_resolved(resolved: &Resolved) -> Result<Settings, Vec<SettingError>> {
        let mut check = Checker {
            resolved,
            errors: Vec::new(),
        };
        let settings = check.build();
        match settings {
            Some(settings) if check.errors.is_empty() => Ok(settings),
            _ => Err(check.errors),
        }
    }
}

/// Parses values and collects every problem.
struct Checker<'a> {
    resolved: &'a Resolved,
    errors: Vec<SettingError>,
}

impl Checker<'_> {
    /// The parsed value of `key`, or `None` when unset or invalid (the error is recorded).
    fn get<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let value = self.resolved.get(key)?;
        match parse(value.text.trim()) {
            Ok(parsed) => Some(parsed),
            Err(problem) => {
                self.errors.push(SettingError {
                    key: key.to_string(),
                    value: Some(value.clone()),
                    problem,
                });
                None
            }
        }
    }

    /// Whether no layer set `key` (its built-in default is in use).
    fn defaulted(&self, key: &str) -> bool {
        self.resolved
            .get(key)
            .is_some_and(|value| value.source == Source::Default)
    }

    /// Records a broken rule between settings, blaming `key`.
    fn rule(&mut self, holds: bool, key: &str, problem: impl FnOnce() -> String) {
        if !holds {
            let value = self.resolved.get(key).cloned();
            self.errors.push(SettingError {
                key: key.to_string(),
                value,
                problem: problem(),
            });
        }
    }

    fn build(&mut self) -> Option<Settings> {
        let server_bind = self.get(key::SERVER_BIND, parse_ip);
        let server_port = self.get(key::SERVER_PORT, parse_port);
        let max_connections = self.get(key::MAX_CONNECTIONS, |t| parse_count(t, 1, usize::MAX));
        let max_line = self.get(key::MAX_LINE, |t| parse_count(t, 16, 65536));
        let read_deadline = self.get(key::READ_DEADLINE, parse_positive_duration);
        let sources = self
            .get(key::ALLOW_SOURCES, |t| Sources::parse(t.split(',')))
            .unwrap_or_default();
        let allowlist = self
            .get(key::ALLOW_BACKENDS, |t| Allowlist::parse(t.split(',')))
            .unwrap_or_default();
        let connect_timeout = self.get(key::GRPC_CONNECT_TIMEOUT, parse_positive_duration);
        let rpc_timeout = self.get(key::GRPC_RPC_TIMEOUT, parse_positive_duration);
        let metadata = self
            .get(key::GRPC_METADATA, parse_metadata)
            .unwrap_or_default();
        let user_agent = self.get(key::USER_AGENT, parse_user_agent);
        let ca_file = self.get(key::TLS_CA_FILE, parse_file);
        let cert_file = self.get(key::TLS_CERT_FILE, parse_file);
        let key_file = self.get(key::TLS_KEY_FILE, parse_file);
        let insecure_skip_verify = self.get(key::TLS_INSECURE_SKIP_VERIFY, parse_bool);
        let interval = self.get(key::CHECK_INTERVAL, |t| {
            parse_duration_at_least(t, Duration::from_millis(10))
        });
        let jitter = self.get(key::CHECK_JITTER, |t| parse_count(t, 0, 50));
        let rise = self.get(key::RISE, |t| parse_count(t, 1, 1000));
        let mode = self.get(key::HEALTH_MODE, |t| {
            parse_choice(
                t,
                &[("poll", HealthMode::Poll), ("watch", HealthMode::Watch)],
            )
        });
        let liveness_interval = self.get(key::LIVENESS_INTERVAL, |t| {
            parse_duration_at_least(t, Duration::from_millis(10))
        });
        let trust_watch = self.get(key::TRUST_WATCH, parse_bool);
        let fall = self.get(key::FALL, |t| parse_count(t, 1, 1000));
        let miss_timeout = self.get(key::MISS_TIMEOUT, parse_positive_duration);
        let idle_ttl = self.get(key::IDLE_TTL, parse_positive_duration);
        let max_targets = self.get(key::MAX_TARGETS, |t| parse_count(t, 1, usize::MAX));
        let stale_after = self.get(key::STALE_AFTER, parse_positive_duration);
        let max_probes_in_flight =
            self.get(key::MAX_PROBES_IN_FLIGHT, |t| parse_count(t, 1, 1_000_000));
        let not_serving = self.get(key::NOT_SERVING_REPLY, |t| {
            parse_verdict(t, &[Verdict::Down, Verdict::Drain, Verdict::Maint])
        });
        let unimplemented = self.get(key::UNIMPLEMENTED_REPLY, |t| {
            parse_verdict(t, &[Verdict::Up, Verdict::Down])
        });
        let metrics_bind = self.get(key::METRICS_BIND, parse_ip);
        let metrics_port = self.get(key::METRICS_PORT, parse_port);
        let admin_token = self.get(key::ADMIN_TOKEN, parse_token);
        let admin_max_connections =
            self.get(key::ADMIN_MAX_CONNECTIONS, |t| parse_count(t, 1, 100_000));
        let events_buffer = self.get(key::EVENTS_BUFFER, |t| parse_count(t, 1, 1_000_000));
        let log_level = self.get(key::LOG_LEVEL, parse_level);
        let log_modules = self
            .get(key::LOG_MODULES, parse_log_modules)
            .unwrap_or_default();
        let log_format = self.get(key::LOG_FORMAT, |t| {
            parse_choice(
                t,
                &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
            )
        });
        let log_destination = self.get(key::LOG_DESTINATION, |t| {
            parse_choice(
                t,
                &[
                    ("console", LogDestination::Console),
                    ("file", LogDestination::File),
                ],
            )
        });
        let log_file = self.get(key::LOG_FILE, parse_path);
        let channel_cache = self.get(key::GRPC_CHANNEL_CACHE, parse_bool);
        let grpc_max_connections =
            self.get(key::GRPC_MAX_CONNECTIONS, |t| parse_count(t, 1, 1_000));
        let log_rotation = self.get(key::LOG_ROTATION, |t| {
            parse_choice(
                t,
                &[
                    ("never", LogRotation::Never),
                    ("daily", LogRotation::Daily),
                    ("hourly", LogRotation::Hourly),
                ],
            )
        });
        let log_max_files = self.get(key::LOG_MAX_FILES, |t| parse_count(t, 1, 100_000));

        // Rules between settings, checked when both sides parsed.
        if let (Some(server), Some(metrics)) = (server_port, metrics_port) {
            self.rule(server == 0 || server != metrics || metrics == 0, key::METRICS_PORT, || {
                format!(
                    "is the same as server_port ({server}); give the admin listener its own port"
                )
            });
        }
        // A first request never needs to wait longer than one probe can take. The default
        // shrinks to fit lowered timeouts; a value set on purpose must fit.
        let mut miss_timeout = miss_timeout;
        if let (Some(connect), Some(rpc), Some(miss)) = (connect_timeout, rpc_timeout, miss_timeout)
        {
            let defaulted = self.defaulted(key::MISS_TIMEOUT);
            if defaulted {
                miss_timeout = Some(miss.min(connect + rpc));
            }
            self.rule(defaulted || miss <= connect + rpc, key::MISS_TIMEOUT, || {
                format!("{miss:?} exceeds grpc_connect_timeout + grpc_rpc_timeout ({:?}), the longest a first probe can take; lower it", connect + rpc)
            });
        }
        self.rule(
            cert_file.is_some() == key_file.is_some(),
            if cert_file.is_some() {
                key::TLS_CERT_FILE
            } else {
                key::TLS_KEY_FILE
            },
            || {
                "tls_cert_file and tls_key_file go together; give both for mTLS, or neither"
                    .to_string()
            },
        );
        if insecure_skip_verify == Some(true) {
            self.rule(ca_file.is_none(), key::TLS_INSECURE_SKIP_VERIFY, || "cannot be combined with tls_ca_file: with verification off a CA means nothing; drop one of them".to_string());
        }
        // The liveness Check is never more frequent than polling: the default grows with
        // the interval; a value set on purpose must be at least the interval.
        let mut liveness_interval = liveness_interval;
        if let (Some(interval), Some(liveness)) = (interval, liveness_interval) {
            let defaulted = self.defaulted(key::LIVENESS_INTERVAL);
            if defaulted {
                liveness_interval = Some(liveness.max(interval));
            }
            self.rule(defaulted || liveness >= interval, key::LIVENESS_INTERVAL, || format!("{liveness:?} is shorter than check_interval ({interval:?}); a watched target would be checked more often than a polled one"));
        }
        if let (Some(interval), Some(idle_ttl)) = (interval, idle_ttl) {
            self.rule(idle_ttl >= interval, key::IDLE_TTL, || format!("{idle_ttl:?} is shorter than check_interval ({interval:?}); targets would be evicted before their second probe"));
        }
        let probe_budget = connect_timeout? + rpc_timeout?;
        let stale_after = stale_after.unwrap_or(interval? * 3 + probe_budget);
        let floor = interval? + probe_budget;
        self.rule(stale_after > floor, key::STALE_AFTER, || {
            format!("{stale_after:?} must exceed check_interval plus both gRPC timeouts ({floor:?}), or healthy targets would read as stale")
        });

        // UnitedTraders' switch: `file` needs a path, `console` ignores one.
        let log_file = match log_destination {
            Some(LogDestination::Console) => None,
            Some(LogDestination::File) => {
                self.rule(log_file.is_some(), key::LOG_DESTINATION, || {
                    "is \"file\" but no log file is set; set log_file (--log-file, or file_path in [logging])".to_string()
                });
                log_file
            }
            None => log_file,
        };
        let mut filter = log_level?;
        for (module, level) in log_modules {
            filter.push_str(&format!(",{module}={level}"));
        }
        Some(Settings {
            agent_addr: SocketAddr::new(server_bind?, server_port?),
            metrics_addr: SocketAddr::new(metrics_bind?, metrics_port?),
            admin: AdminConfig {
                token: admin_token,
                max_connections: admin_max_connections?,
                events_buffer: events_buffer?,
            },
            responder: ResponderConfig {
                max_connections: max_connections?,
                max_line: max_line?,
                read_deadline: read_deadline?,
                drain_timeout: miss_timeout? + Duration::from_secs(1),
                sources: Arc::new(sources),
            },
            probe: ProbeConfig {
                connect_timeout: connect_timeout?,
                rpc_timeout: rpc_timeout?,
                user_agent: user_agent
                    .unwrap_or_else(|| format!("haproxy-grpc-agent/{}", env!("CARGO_PKG_VERSION"))),
                metadata,
                allowlist: Arc::new(allowlist),
                channel_cache: channel_cache?,
                max_connections: grpc_max_connections?,
                keepalive: liveness_interval?,
                tls: TlsSettings {
                    ca_file,
                    cert_file,
                    key_file,
                    insecure_skip_verify: insecure_skip_verify?,
                },
            },
            oracle: OracleConfig {
                poller: PollerConfig {
                    interval: interval?,
                    jitter: jitter? as f64 / 100.0,
                    rise: rise? as u32,
                    fall: fall? as u32,
                    probe_deadline: probe_budget + Duration::from_millis(100),
                    mode: mode?,
                    liveness_interval: liveness_interval?,
                    trust_watch: trust_watch?,
                    replies: ReplyPolicy {
                        not_serving: not_serving?,
                        unimplemented: unimplemented?,
                    },
                },
                miss_timeout: miss_timeout?,
                idle_ttl: idle_ttl?,
                max_targets: max_targets?,
                stale_after,
                max_probes_in_flight: max_probes_in_flight?,
            },
            logging: LogSettings {
                filter,
                format: log_format?,
                file: log_file,
                rotation: log_rotation?,
                max_files: log_max_files,
            },
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
