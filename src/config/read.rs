//! Reading each setting on its own: its text parsed into a typed value, grouped by the
//! stage that uses it. A value that does not parse is `None` here and its error is
//! recorded; the rules between settings ([`super::rules`]) and the assembly into each
//! stage's configuration ([`super::build`]) come after.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::build::Checker;
use super::key;
use super::parse::{
    parse_bool, parse_choice, parse_count, parse_duration_at_least, parse_file, parse_ip,
    parse_level, parse_log_modules, parse_metadata, parse_non_negative_number, parse_path,
    parse_port, parse_positive_duration, parse_token, parse_user_agent, parse_verdict,
};
use super::{LogFormat, LogRotation};
use crate::allowlist::{Allowlist, Sources};
use crate::oracle::{ExplicitAnswers, HealthMode};
use crate::protocol::Verdict;
use crate::responder::FaultReply;

/// Every setting as read, by group.
pub(super) struct Values {
    pub(super) agent: AgentValues,
    pub(super) probe: ProbeValues,
    pub(super) oracle: OracleValues,
    pub(super) admin: AdminValues,
    pub(super) log: LogValues,
    pub(super) connections: ConnectionValues,
    pub(super) log_rotation: LogRotationValues,
    pub(super) load: LoadValues,
}

/// Load-aware weights: which targets get one, and how reports become it.
pub(super) struct LoadValues {
    pub(super) weights: Option<bool>,
    pub(super) report_interval: Option<Duration>,
    pub(super) error_penalty: Option<f64>,
    pub(super) smoothing: Option<Duration>,
    pub(super) max_step: Option<usize>,
    pub(super) min_weight: Option<usize>,
    pub(super) blackout: Option<Duration>,
    pub(super) expiry: Option<Duration>,
}

/// The agent listener.
pub(super) struct AgentValues {
    pub(super) bind: Option<IpAddr>,
    pub(super) port: Option<u16>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_line: Option<usize>,
    pub(super) read_deadline: Option<Duration>,
    pub(super) sources: Sources,
    pub(super) fault_reply: Option<FaultReply>,
}

/// What and how the probes may reach: the allowlist, the timeouts, what each call sends
/// and the TLS files.
pub(super) struct ProbeValues {
    pub(super) allowlist: Allowlist,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) rpc_timeout: Option<Duration>,
    pub(super) metadata: Vec<(String, String)>,
    pub(super) user_agent: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) insecure_skip_verify: Option<bool>,
}

impl ProbeValues {
    /// The longest one probe can take: connecting, then the call.
    pub(super) fn budget(&self) -> Option<Duration> {
        Some(self.connect_timeout? + self.rpc_timeout?)
    }
}

/// How many connections the probes keep to one backend endpoint.
pub(super) struct ConnectionValues {
    pub(super) channel_cache: Option<bool>,
    pub(super) max_connections: Option<usize>,
}

/// The oracle and each target's poller: timings, hysteresis, bounds and replies.
pub(super) struct OracleValues {
    pub(super) interval: Option<Duration>,
    pub(super) jitter: Option<usize>,
    pub(super) rise: Option<usize>,
    pub(super) fall: Option<usize>,
    pub(super) mode: Option<HealthMode>,
    pub(super) liveness_interval: Option<Duration>,
    pub(super) explicit_answers: Option<ExplicitAnswers>,
    pub(super) panic_threshold: Option<usize>,
    pub(super) panic_min_group: Option<usize>,
    pub(super) miss_timeout: Option<Duration>,
    pub(super) idle_ttl: Option<Duration>,
    pub(super) max_targets: Option<usize>,
    /// As set; the rules replace it with the value in effect (set or derived).
    pub(super) stale_after: Option<Duration>,
    pub(super) max_probes_in_flight: Option<usize>,
    pub(super) not_serving: Option<Verdict>,
    pub(super) unimplemented: Option<Verdict>,
}

/// The admin and metrics listener.
pub(super) struct AdminValues {
    pub(super) bind: Option<IpAddr>,
    pub(super) port: Option<u16>,
    pub(super) token: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) events_buffer: Option<usize>,
}

/// UnitedTraders' switch between logging to the console and to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogDestination {
    Console,
    File,
}

/// What is logged, how, and where.
pub(super) struct LogValues {
    pub(super) level: Option<String>,
    pub(super) modules: Vec<(String, String)>,
    pub(super) format: Option<LogFormat>,
    pub(super) destination: Option<LogDestination>,
    /// As set; the rules replace it with the file in effect.
    pub(super) file: Option<PathBuf>,
}

/// When the log file rotates, and how many rotated files are kept.
pub(super) struct LogRotationValues {
    pub(super) rotation: Option<LogRotation>,
    pub(super) max_files: Option<usize>,
}

impl Checker<'_> {
    /// Reads every setting. Errors are listed in the order values are read, and that
    /// order is older than these groups: the backend connection settings come between
    /// logging's output and its rotation. It is kept so that a configuration with several
    /// bad values is reported as it always was.
    pub(super) fn read(&mut self) -> Values {
        let agent = self.read_agent();
        let probe = self.read_probe();
        let oracle = self.read_oracle();
        let admin = self.read_admin();
        let log = self.read_log();
        let connections = self.read_connections();
        let log_rotation = self.read_log_rotation();
        let load = self.read_load();
        Values {
            agent,
            probe,
            oracle,
            admin,
            log,
            connections,
            log_rotation,
            load,
        }
    }

    fn read_agent(&mut self) -> AgentValues {
        AgentValues {
            bind: self.get(key::SERVER_BIND, parse_ip),
            port: self.get(key::SERVER_PORT, parse_port),
            // Each connection holds a file descriptor: a million is past any fd limit.
            max_connections: self.get(key::MAX_CONNECTIONS, |t| parse_count(t, 1, 1_000_000)),
            max_line: self.get(key::MAX_LINE, |t| parse_count(t, 16, 65536)),
            read_deadline: self.get(key::READ_DEADLINE, parse_positive_duration),
            sources: self
                .get(key::ALLOW_SOURCES, |t| Sources::parse(t.split(',')))
                .unwrap_or_default(),
            fault_reply: self.get(key::AGENT_FAULT_REPLY, |t| {
                parse_choice(
                    t,
                    &[("silent", FaultReply::Silent), ("down", FaultReply::Down)],
                )
            }),
        }
    }

    fn read_probe(&mut self) -> ProbeValues {
        ProbeValues {
            allowlist: self
                .get(key::ALLOW_BACKENDS, |t| Allowlist::parse(t.split(',')))
                .unwrap_or_default(),
            connect_timeout: self.get(key::GRPC_CONNECT_TIMEOUT, parse_positive_duration),
            rpc_timeout: self.get(key::GRPC_RPC_TIMEOUT, parse_positive_duration),
            metadata: self
                .get(key::GRPC_METADATA, parse_metadata)
                .unwrap_or_default(),
            user_agent: self.get(key::USER_AGENT, parse_user_agent),
            ca_file: self.get(key::TLS_CA_FILE, parse_file),
            cert_file: self.get(key::TLS_CERT_FILE, parse_file),
            key_file: self.get(key::TLS_KEY_FILE, parse_file),
            insecure_skip_verify: self.get(key::TLS_INSECURE_SKIP_VERIFY, parse_bool),
        }
    }

    fn read_load(&mut self) -> LoadValues {
        let any_duration = |t: &str| parse_duration_at_least(t, Duration::ZERO);
        LoadValues {
            weights: self.get(key::ORCA_WEIGHTS, parse_bool),
            report_interval: self.get(key::ORCA_REPORT_INTERVAL, |t| {
                parse_duration_at_least(t, Duration::from_millis(100))
            }),
            error_penalty: self.get(key::ORCA_ERROR_PENALTY, parse_non_negative_number),
            smoothing: self.get(key::ORCA_SMOOTHING, any_duration),
            max_step: self.get(key::ORCA_MAX_STEP, |t| parse_count(t, 1, 100)),
            min_weight: self.get(key::ORCA_MIN_WEIGHT, |t| parse_count(t, 1, 100)),
            blackout: self.get(key::ORCA_BLACKOUT, any_duration),
            expiry: self.get(key::ORCA_EXPIRY, parse_positive_duration),
        }
    }

    fn read_connections(&mut self) -> ConnectionValues {
        ConnectionValues {
            channel_cache: self.get(key::GRPC_CHANNEL_CACHE, parse_bool),
            max_connections: self.get(key::GRPC_MAX_CONNECTIONS, |t| parse_count(t, 1, 1_000)),
        }
    }

    fn read_oracle(&mut self) -> OracleValues {
        let at_least_10ms = |t: &str| parse_duration_at_least(t, Duration::from_millis(10));
        let modes = [("poll", HealthMode::Poll), ("watch", HealthMode::Watch)];
        OracleValues {
            interval: self.get(key::CHECK_INTERVAL, at_least_10ms),
            jitter: self.get(key::CHECK_JITTER, |t| parse_count(t, 0, 50)),
            rise: self.get(key::RISE, |t| parse_count(t, 1, 1000)),
            mode: self.get(key::HEALTH_MODE, |t| parse_choice(t, &modes)),
            liveness_interval: self.get(key::LIVENESS_INTERVAL, at_least_10ms),
            explicit_answers: self.get(key::EXPLICIT_ANSWERS, |t| {
                let choices = [
                    ("at_once", ExplicitAnswers::AtOnce),
                    ("counted", ExplicitAnswers::Counted),
                ];
                parse_choice(t, &choices)
            }),
            panic_threshold: self.get(key::PANIC_THRESHOLD, |t| parse_count(t, 0, 100)),
            panic_min_group: self.get(key::PANIC_MIN_GROUP, |t| parse_count(t, 2, 1_000_000)),
            fall: self.get(key::FALL, |t| parse_count(t, 1, 1000)),
            miss_timeout: self.get(key::MISS_TIMEOUT, parse_positive_duration),
            idle_ttl: self.get(key::IDLE_TTL, parse_positive_duration),
            max_targets: self.get(key::MAX_TARGETS, |t| parse_count(t, 1, 100_000_000)),
            stale_after: self.get(key::STALE_AFTER, parse_positive_duration),
            max_probes_in_flight: self
                .get(key::MAX_PROBES_IN_FLIGHT, |t| parse_count(t, 1, 1_000_000)),
            not_serving: self.get(key::NOT_SERVING_REPLY, |t| {
                parse_verdict(t, &[Verdict::Down, Verdict::Drain, Verdict::Maint])
            }),
            unimplemented: self.get(key::UNIMPLEMENTED_REPLY, |t| {
                parse_verdict(t, &[Verdict::Up, Verdict::Down])
            }),
        }
    }

    fn read_admin(&mut self) -> AdminValues {
        AdminValues {
            bind: self.get(key::METRICS_BIND, parse_ip),
            port: self.get(key::METRICS_PORT, parse_port),
            token: self.get(key::ADMIN_TOKEN, parse_token),
            max_connections: self.get(key::ADMIN_MAX_CONNECTIONS, |t| parse_count(t, 1, 100_000)),
            events_buffer: self.get(key::EVENTS_BUFFER, |t| parse_count(t, 1, 1_000_000)),
        }
    }

    fn read_log(&mut self) -> LogValues {
        let formats = [("json", LogFormat::Json), ("pretty", LogFormat::Pretty)];
        let destinations = [
            ("console", LogDestination::Console),
            ("file", LogDestination::File),
        ];
        LogValues {
            level: self.get(key::LOG_LEVEL, parse_level),
            modules: self
                .get(key::LOG_MODULES, parse_log_modules)
                .unwrap_or_default(),
            format: self.get(key::LOG_FORMAT, |t| parse_choice(t, &formats)),
            destination: self.get(key::LOG_DESTINATION, |t| parse_choice(t, &destinations)),
            file: self.get(key::LOG_FILE, parse_path),
        }
    }

    fn read_log_rotation(&mut self) -> LogRotationValues {
        let rotations = [
            ("never", LogRotation::Never),
            ("daily", LogRotation::Daily),
            ("hourly", LogRotation::Hourly),
        ];
        LogRotationValues {
            rotation: self.get(key::LOG_ROTATION, |t| parse_choice(t, &rotations)),
            max_files: self.get(key::LOG_MAX_FILES, |t| parse_count(t, 1, 100_000)),
        }
    }
}
