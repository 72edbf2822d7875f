//! The rules between settings, checked once every value has been read on its own. A rule
//! is checked only when the values it relates parsed (a value that did not is reported
//! already), and a broken rule blames the one setting to change. Two defaults adapt
//! rather than fail: miss_timeout shrinks to fit lowered gRPC timeouts, and
//! liveness_interval grows with check_interval.

use std::path::PathBuf;
use std::time::Duration;

use super::build::Checker;
use super::key;
use super::read::{AdminValues, AgentValues, LogDestination, LogValues, OracleValues};
use super::read::{ProbeValues, Values};

impl Checker<'_> {
    /// Checks every rule and puts the adapted values in effect. `None` when the probe
    /// timings or check_interval did not parse: stale_after cannot be worked out then,
    /// nothing can be built, and the rules after it are not checked.
    pub(super) fn apply_rules(&mut self, values: &mut Values) -> Option<()> {
        self.check_ports_differ(&values.agent, &values.admin);
        self.fit_miss_timeout(&values.probe, &mut values.oracle);
        self.check_tls(&values.probe);
        self.fit_liveness_interval(&mut values.oracle);
        self.check_idle_ttl(&values.oracle);
        values.oracle.stale_after = Some(self.check_stale_after(&values.probe, &values.oracle)?);
        values.log.file = self.check_log_destination(&values.log);
        Some(())
    }

    /// The agent and the admin listener cannot share a port, unless one picks a free one.
    fn check_ports_differ(&mut self, agent: &AgentValues, admin: &AdminValues) {
        let (Some(server), Some(metrics)) = (agent.port, admin.port) else {
            return;
        };
        self.rule(
            server == 0 || server != metrics || metrics == 0,
            key::METRICS_PORT,
            || {
                format!(
                    "is the same as server_port ({server}); give the admin listener its own port"
                )
            },
        );
    }

    /// A first request never needs to wait longer than one probe can take. The default
    /// shrinks to fit lowered timeouts; a value set on purpose must fit.
    fn fit_miss_timeout(&mut self, probe: &ProbeValues, oracle: &mut OracleValues) {
        let (Some(budget), Some(miss)) = (probe.budget(), oracle.miss_timeout) else {
            return;
        };
        let defaulted = self.defaulted(key::MISS_TIMEOUT);
        if defaulted {
            oracle.miss_timeout = Some(miss.min(budget));
        }
        self.rule(defaulted || miss <= budget, key::MISS_TIMEOUT, || {
            format!("{miss:?} exceeds grpc_connect_timeout + grpc_rpc_timeout ({budget:?}), the longest a first probe can take; lower it")
        });
    }

    /// A client certificate needs its key and the other way round; with verification off
    /// a CA would be silently ignored.
    fn check_tls(&mut self, probe: &ProbeValues) {
        let blamed = if probe.cert_file.is_some() {
            key::TLS_CERT_FILE
        } else {
            key::TLS_KEY_FILE
        };
        self.rule(
            probe.cert_file.is_some() == probe.key_file.is_some(),
            blamed,
            || {
                "tls_cert_file and tls_key_file go together; give both for mTLS, or neither"
                    .to_string()
            },
        );
        if probe.insecure_skip_verify == Some(true) {
            self.rule(probe.ca_file.is_none(), key::TLS_INSECURE_SKIP_VERIFY, || "cannot be combined with tls_ca_file: with verification off a CA means nothing; drop one of them".to_string());
        }
    }

    /// The liveness Check is never more frequent than polling: the default grows with
    /// the interval; a value set on purpose must be at least the interval.
    fn fit_liveness_interval(&mut self, oracle: &mut OracleValues) {
        let (Some(interval), Some(liveness)) = (oracle.interval, oracle.liveness_interval) else {
            return;
        };
        let defaulted = self.defaulted(key::LIVENESS_INTERVAL);
        if defaulted {
            oracle.liveness_interval = Some(liveness.max(interval));
        }
        self.rule(defaulted || liveness >= interval, key::LIVENESS_INTERVAL, || format!("{liveness:?} is shorter than check_interval ({interval:?}); a watched target would be checked more often than a polled one"));
    }

    /// An idle target lives at least one interval, so it is probed a second time.
    fn check_idle_ttl(&mut self, oracle: &OracleValues) {
        let (Some(interval), Some(idle_ttl)) = (oracle.interval, oracle.idle_ttl) else {
            return;
        };
        self.rule(idle_ttl >= interval, key::IDLE_TTL, || format!("{idle_ttl:?} is shorter than check_interval ({interval:?}); targets would be evicted before their second probe"));
    }

    /// The stale_after in effect: as set (or, when unset or invalid, three intervals plus
    /// one probe's budget). It must exceed one interval plus one probe, or a healthy
    /// target would read as stale. `None` when the timings it needs did not parse.
    fn check_stale_after(
        &mut self,
        probe: &ProbeValues,
        oracle: &OracleValues,
    ) -> Option<Duration> {
        let budget = probe.budget()?;
        let interval = oracle.interval?;
        let stale_after = oracle.stale_after.unwrap_or(interval * 3 + budget);
        let floor = interval + budget;
        self.rule(stale_after > floor, key::STALE_AFTER, || {
            format!("{stale_after:?} must exceed check_interval plus both gRPC timeouts ({floor:?}), or healthy targets would read as stale")
        });
        Some(stale_after)
    }

    /// The log file in effect. UnitedTraders' switch: `file` needs a path, `console`
    /// ignores one.
    fn check_log_destination(&mut self, log: &LogValues) -> Option<PathBuf> {
        match log.destination {
            Some(LogDestination::Console) => None,
            Some(LogDestination::File) => {
                self.rule(log.file.is_some(), key::LOG_DESTINATION, || {
                    "is \"file\" but no log file is set; set log_file (--log-file, or file_path in [logging])".to_string()
                });
                log.file.clone()
            }
            None => log.file.clone(),
        }
    }
}
