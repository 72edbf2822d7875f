//! Validation of resolved values into each stage's configuration, in three steps: read
//! each setting on its own ([`super::read`]), check the rules between settings
//! ([`super::rules`]), then assemble the stage configurations (here). Every problem is
//! collected on the way, so one run reports everything to fix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::layers::{Resolved, Source};
use super::read::{AdminValues, OracleValues, ProbeValues, Values};
use super::read::{AgentValues, ConnectionValues, LoadValues, LogRotationValues, LogValues};
use super::{LogSettings, SettingError, Settings};
use crate::admin::AdminConfig;
use crate::oracle::{OracleConfig, PanicConfig, PollerConfig, ReplyPolicy};
use crate::probe::{LoadConfig, ProbeConfig, TlsSettings};
use crate::responder::ResponderConfig;
use crate::weight::WeightConfig;

/// The settings built from `resolved`, or every problem with them.
pub(super) fn check(resolved: &Resolved) -> Result<Settings, Vec<SettingError>> {
    let mut checker = Checker {
        resolved,
        errors: Vec::new(),
    };
    let settings = checker.build();
    match settings {
        Some(settings) if checker.errors.is_empty() => Ok(settings),
        _ => Err(checker.errors),
    }
}

/// Parses values and collects every problem.
pub(super) struct Checker<'a> {
    resolved: &'a Resolved,
    errors: Vec<SettingError>,
}

impl Checker<'_> {
    /// The parsed value of `key`, or `None` when unset or invalid (the error is recorded).
    pub(super) fn get<T>(
        &mut self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
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
    pub(super) fn defaulted(&self, key: &str) -> bool {
        self.resolved
            .get(key)
            .is_some_and(|value| value.source == Source::Default)
    }

    /// Records a broken rule between settings, blaming `key`.
    pub(super) fn rule(&mut self, holds: bool, key: &str, problem: impl FnOnce() -> String) {
        if !holds {
            let value = self.resolved.get(key).cloned();
            self.errors.push(SettingError {
                key: key.to_string(),
                value,
                problem: problem(),
            });
        }
    }

    /// The settings, or `None` when a value they need is missing (its error is recorded).
    fn build(&mut self) -> Option<Settings> {
        let mut values = self.read();
        self.apply_rules(&mut values)?;
        assemble(values)
    }
}

/// Each stage's configuration from values that passed the rules.
fn assemble(values: Values) -> Option<Settings> {
    let Values {
        agent,
        probe,
        oracle,
        admin,
        log,
        connections,
        log_rotation,
        load,
    } = values;
    let probe_budget = probe.budget()?;
    Some(Settings {
        agent_addr: SocketAddr::new(agent.bind?, agent.port?),
        metrics_addr: SocketAddr::new(admin.bind?, admin.port?),
        responder: responder_config(agent, oracle.miss_timeout?)?,
        probe: probe_config(probe, connections, load, oracle.liveness_interval?)?,
        oracle: oracle_config(oracle, probe_budget)?,
        admin: admin_config(admin)?,
        logging: log_settings(log, log_rotation)?,
    })
}

fn responder_config(agent: AgentValues, miss_timeout: Duration) -> Option<ResponderConfig> {
    Some(ResponderConfig {
        max_connections: agent.max_connections?,
        max_line: agent.max_line?,
        read_deadline: agent.read_deadline?,
        // A reply in flight at shutdown may be waiting on a first probe (up to
        // miss_timeout); a second more lets it be written.
        drain_timeout: miss_timeout + Duration::from_secs(1),
        sources: Arc::new(agent.sources),
        fault_reply: agent.fault_reply?,
    })
}

/// The probe's configuration. The keep-alive PING follows the liveness interval: both
/// bound how long a backend may stay silent.
fn probe_config(
    probe: ProbeValues,
    connections: ConnectionValues,
    load: LoadValues,
    keepalive: Duration,
) -> Option<ProbeConfig> {
    let default_user_agent = || format!("haproxy-grpc-agent/{}", env!("CARGO_PKG_VERSION"));
    Some(ProbeConfig {
        connect_timeout: probe.connect_timeout?,
        rpc_timeout: probe.rpc_timeout?,
        user_agent: probe.user_agent.unwrap_or_else(default_user_agent),
        metadata: probe.metadata,
        allowlist: Arc::new(probe.allowlist),
        channel_cache: connections.channel_cache?,
        max_connections: connections.max_connections?,
        keepalive,
        load: load_config(load)?,
        tls: TlsSettings {
            ca_file: probe.ca_file,
            cert_file: probe.cert_file,
            key_file: probe.key_file,
            insecure_skip_verify: probe.insecure_skip_verify?,
        },
    })
}

fn load_config(load: LoadValues) -> Option<LoadConfig> {
    Some(LoadConfig {
        by_default: load.weights?,
        report_interval: load.report_interval?,
        weight: WeightConfig {
            error_penalty: load.error_penalty?,
            smoothing: load.smoothing?,
            max_step: load.max_step? as u16,
            floor: load.min_weight? as u16,
            blackout: load.blackout?,
            expiry: load.expiry?,
        },
    })
}

fn oracle_config(oracle: OracleValues, probe_budget: Duration) -> Option<OracleConfig> {
    Some(OracleConfig {
        poller: PollerConfig {
            interval: oracle.interval?,
            jitter: oracle.jitter? as f64 / 100.0,
            rise: oracle.rise? as u32,
            fall: oracle.fall? as u32,
            // A little over one probe, so the probe's own timeouts fire first.
            probe_deadline: probe_budget + Duration::from_millis(100),
            mode: oracle.mode?,
            liveness_interval: oracle.liveness_interval?,
            explicit_answers: oracle.explicit_answers?,
            replies: ReplyPolicy {
                not_serving: oracle.not_serving?,
                unimplemented: oracle.unimplemented?,
            },
        },
        miss_timeout: oracle.miss_timeout?,
        idle_ttl: oracle.idle_ttl?,
        max_targets: oracle.max_targets?,
        stale_after: oracle.stale_after?,
        max_probes_in_flight: oracle.max_probes_in_flight?,
        panic: PanicConfig {
            threshold: oracle.panic_threshold? as u8,
            min_group: oracle.panic_min_group?,
        },
    })
}

fn admin_config(admin: AdminValues) -> Option<AdminConfig> {
    Some(AdminConfig {
        token: admin.token,
        max_connections: admin.max_connections?,
        events_buffer: admin.events_buffer?,
    })
}

/// The logging settings; per-module levels join the level in one tracing filter.
fn log_settings(log: LogValues, log_rotation: LogRotationValues) -> Option<LogSettings> {
    let mut filter = log.level?;
    for (module, level) in log.modules {
        filter.push_str(&format!(",{module}={level}"));
    }
    Some(LogSettings {
        filter,
        format: log.format?,
        file: log.file,
        rotation: log_rotation.rotation?,
        max_files: log_rotation.max_files,
    })
}
