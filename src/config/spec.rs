//! The one table of settings. Every layer derives its names from it: the TOML key is
//! `key`, the flag is `--` + key with dashes, the environment variable is
//! `HAPROXY_AGENT_` + key in capitals.
//!
//! The file is longer than most because it is one table, one entry per setting; split,
//! it would stop being the one place a setting is defined.

use super::key;

/// Whether a changed value takes effect on SIGHUP or needs a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    Live,
    Restart,
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// A list or map: repeatable flag, comma-separated in the environment, a table or
    /// array in the file.
    pub multi: bool,
    pub key: &'static str,
    /// Other names accepted for it in every layer (UnitedTraders' names): as a file key,
    /// as a `--flag` (dashes) and as an `HAPROXY_AGENT_` variable (capitals).
    pub aliases: &'static [&'static str],
    /// The value when no layer sets it; `None` means unset.
    pub default: Option<&'static str>,
    /// What the value is, for help and docs.
    pub unit: &'static str,
    pub reload: Reload,
    pub help: &'static str,
}

impl Spec {
    /// A map (`name=value` entries: a TOML table) rather than a list (a TOML array).
    pub fn is_map(&self) -> bool {
        self.multi && self.unit.contains('=')
    }

    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    pub fn env(&self) -> String {
        env_name(self.key)
    }

    /// A single value as a TOML file writes it: numbers and booleans bare, anything else
    /// a quoted string (durations included, so `500ms` stays readable).
    pub fn toml_scalar(&self, text: &str) -> String {
        let bare = match self.unit {
            "bool" => text.parse::<bool>().is_ok(),
            "count" | "port" | "bytes" | "percent" => text.parse::<i64>().is_ok(),
            _ => false,
        };
        if bare {
            text.to_string()
        } else {
            toml::Value::from(text).to_string()
        }
    }

    /// The environment variables of the aliases.
    pub fn alias_envs(&self) -> impl Iterator<Item = String> {
        self.aliases.iter().map(|alias| env_name(alias))
    }

    /// The long flags of the aliases, without the leading dashes.
    pub fn alias_flags(&self) -> impl Iterator<Item = String> {
        self.aliases.iter().map(|alias| alias.replace('_', "-"))
    }
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

pub const ENV_PREFIX: &str = "HAPROXY_AGENT_";

const fn spec(
    key: &'static str,
    default: Option<&'static str>,
    unit: &'static str,
    reload: Reload,
    help: &'static str,
) -> Spec {
    Spec {
        multi: false,
        key,
        aliases: &[],
        default,
        unit,
        reload,
        help,
    }
}

const fn multi(mut spec: Spec) -> Spec {
    spec.multi = true;
    spec
}

const fn aliased(mut spec: Spec, aliases: &'static [&'static str]) -> Spec {
    spec.aliases = aliases;
    spec
}

use Reload::{Live, Restart};

/// Every setting, in the order help and `--check-config` show them.
pub const SETTINGS: &[Spec] = &[
    // The agent listener.
    aliased(
        spec(
            key::SERVER_BIND,
            Some("0.0.0.0"),
            "IP",
            Restart,
            "address the agent port listens on",
        ),
        &["server_bind_address"],
    ),
    spec(
        key::SERVER_PORT,
        Some("5555"),
        "port",
        Restart,
        "agent port HAProxy's agent-check connects to (0 picks a free port)",
    ),
    spec(
        key::MAX_CONNECTIONS,
        Some("4096"),
        "count",
        Restart,
        "agent connections served at once; more are closed without a reply",
    ),
    spec(
        key::MAX_LINE,
        Some("1024"),
        "bytes",
        Live,
        "longest request line; longer ones get `down #request line too long`",
    ),
    aliased(
        multi(spec(
            key::ALLOW_SOURCES,
            None,
            "CIDR",
            Live,
            "addresses that may connect to the agent port (HAProxy hosts); others are closed at once; unset allows any; repeatable (file: a list)",
        )),
        &["allow_source"],
    ),
    spec(
        key::READ_DEADLINE,
        Some("5s"),
        "duration",
        Live,
        "time a client has to send each request line",
    ),
    // gRPC probes.
    aliased(
        spec(
            key::GRPC_CONNECT_TIMEOUT,
            Some("1000ms"),
            "duration",
            Live,
            "bound on resolve, TCP connect, TLS and HTTP/2 handshakes to a backend",
        ),
        &["grpc_connect_timeout_ms"],
    ),
    aliased(
        spec(
            key::GRPC_RPC_TIMEOUT,
            Some("1500ms"),
            "duration",
            Live,
            "bound on one Health/Check call once connected",
        ),
        &["grpc_rpc_timeout_ms"],
    ),
    multi(spec(
        key::GRPC_METADATA,
        None,
        "name=value",
        Restart,
        "extra metadata header sent with every Check; repeatable (file: a [grpc_metadata] table)",
    )),
    spec(
        key::USER_AGENT,
        None,
        "text",
        Restart,
        "user-agent sent to backends [default: haproxy-grpc-agent/VERSION]",
    ),
    spec(
        key::TLS_CA_FILE,
        None,
        "path",
        Restart,
        "PEM CA bundle trusted for ssl backends, besides the system roots",
    ),
    spec(
        key::TLS_CERT_FILE,
        None,
        "path",
        Restart,
        "PEM client certificate for mTLS to ssl backends (with --tls-key-file)",
    ),
    spec(
        key::TLS_KEY_FILE,
        None,
        "path",
        Restart,
        "PEM private key of the client certificate",
    ),
    spec(
        key::TLS_INSECURE_SKIP_VERIFY,
        Some("false"),
        "bool",
        Restart,
        "DANGER: accept any backend certificate and name (testing only)",
    ),
    aliased(
        spec(
            key::GRPC_CHANNEL_CACHE,
            Some("true"),
            "bool",
            Restart,
            "keep one connection per backend endpoint between checks; false opens a fresh connection for every check",
        ),
        &["grpc_channel_cache_enabled"],
    ),
    spec(
        key::GRPC_MAX_CONNECTIONS,
        Some("4"),
        "count",
        Restart,
        "most HTTP/2 connections to one backend endpoint; more than one only when its stream limit is reached (Watch streams past it: polled)",
    ),
    // The oracle.
    spec(
        key::CHECK_INTERVAL,
        Some("2000ms"),
        "duration",
        Live,
        "time between background probes of one backend",
    ),
    spec(
        key::CHECK_JITTER,
        Some("10"),
        "percent",
        Live,
        "random spread of each interval (10 means 0.9x to 1.1x)",
    ),
    spec(
        key::RISE,
        Some("2"),
        "count",
        Live,
        "consecutive healthy probes that bring a down backend up",
    ),
    spec(
        key::FALL,
        Some("3"),
        "count",
        Live,
        "consecutive failed probes that take an up backend down",
    ),
    spec(
        key::HEALTH_MODE,
        Some("watch"),
        "poll|watch",
        Live,
        "poll: a Check every interval; watch: a Health/Watch stream per target, and a liveness PING or Check per backend connection every liveness_interval (a backend without Watch is polled)",
    ),
    spec(
        key::LIVENESS_INTERVAL,
        Some("10s"),
        "duration",
        Live,
        "how often a backend connection carrying Watch streams is proven alive, for every target watched there: a PING, and every third time a Check that proves the backend still answers calls; also how long a connection with streams may stay silent before it is PINGed",
    ),
    spec(
        key::EXPLICIT_ANSWERS,
        Some("at_once"),
        "at_once|counted",
        Live,
        "at_once: the backend's own unhealthy answer (NOT_SERVING, a gRPC status its handlers sent), from Watch or Check, turns it down at once, and only failures to get an answer count through fall; counted: those answers count through fall too",
    ),
    spec(
        key::TRUST_WATCH,
        None,
        "bool",
        Live,
        "deprecated and ignored: explicit answers apply at once in both modes now (explicit_answers)",
    ),
    spec(
        key::AGENT_FAULT_REPLY,
        Some("silent"),
        "silent|down",
        Live,
        "what a request gets when the agent cannot answer from the backend's word for a trouble of its own (first probe pending, target limit, no probe slot, stale, shutting down, panic without a verdict): silent closes without a reply, so HAProxy keeps its last verdict; down answers `down #<cause>`",
    ),
    spec(
        key::PANIC_THRESHOLD,
        Some("50"),
        "percent",
        Live,
        "when more than this share of a group's targets (or of all endpoints) cannot be reached at once (DNS, connect timeout or unreachable, no answer in time; not a refusal, a reset or a bad answer, which prove the host was reached), the fault looks like the agent's own: their last verdicts are held (`up #panic: ...`); 0 turns it off",
    ),
    spec(
        key::PANIC_MIN_GROUP,
        Some("3"),
        "count",
        Live,
        "groups (group= on the request line, else targets sharing authority and service) smaller than this never panic; nor does the agent with fewer endpoints",
    ),
    spec(
        key::MISS_TIMEOUT,
        Some("1000ms"),
        "duration",
        Live,
        "how long a request for an unseen backend waits for its first probe",
    ),
    spec(
        key::IDLE_TTL,
        Some("5m"),
        "duration",
        Restart,
        "backends not asked about for this long are evicted",
    ),
    spec(
        key::MAX_TARGETS,
        Some("100000"),
        "count",
        Live,
        "most backends registered at once",
    ),
    spec(
        key::STALE_AFTER,
        None,
        "duration",
        Live,
        "a target with no probe result for this long is stale: the agent fell behind, which is its own fault (see agent_fault_reply) [default: 3 intervals plus both gRPC timeouts]",
    ),
    aliased(
        multi(spec(
            key::ALLOW_BACKENDS,
            None,
            "CIDR or glob[:port[-port]]",
            Live,
            "backends the agent may probe: a CIDR or hostname glob, optionally with :port or :low-high; names are checked again after resolution; unset allows any; repeatable (file: a list)",
        )),
        &["allow_backend"],
    ),
    spec(
        key::MAX_PROBES_IN_FLIGHT,
        Some("1024"),
        "count",
        Restart,
        "probes running at once across all backends",
    ),
    // Replies.
    spec(
        key::NOT_SERVING_REPLY,
        Some("down"),
        "down|drain|maint",
        Live,
        "what a NOT_SERVING backend is answered",
    ),
    spec(
        key::UNIMPLEMENTED_REPLY,
        Some("down"),
        "up|down",
        Live,
        "what a server without the health service (UNIMPLEMENTED) is answered",
    ),
    // Load-aware weights.
    spec(
        key::ORCA_WEIGHTS,
        Some("false"),
        "bool",
        Restart,
        "answer a weight (NN%) from each backend's ORCA load reports, for targets whose request line has no weight= option (weight=orca turns it on for one target, weight=none off)",
    ),
    spec(
        key::ORCA_REPORT_INTERVAL,
        Some("10s"),
        "duration",
        Restart,
        "how often backends are asked to send an ORCA load report (one stream per backend endpoint)",
    ),
    spec(
        key::ORCA_ERROR_PENALTY,
        Some("1.0"),
        "number",
        Restart,
        "how much errors count as load: the utilization used is utilization + penalty x eps / rps (gRFC A58's error_utilization_penalty)",
    ),
    spec(
        key::ORCA_SMOOTHING,
        Some("10s"),
        "duration",
        Restart,
        "the time constant of the exponential average of a backend's utilization (0s: no smoothing)",
    ),
    spec(
        key::ORCA_MAX_STEP,
        Some("20"),
        "count",
        Restart,
        "the most a weight moves on one report, in percentage points",
    ),
    spec(
        key::ORCA_MIN_WEIGHT,
        Some("10"),
        "count",
        Restart,
        "the lowest weight answered while up, in percent (0% stays drain's word)",
    ),
    spec(
        key::ORCA_BLACKOUT,
        Some("10s"),
        "duration",
        Restart,
        "after a load-report stream (re)opens, reports must have come this long before the weight moves from 100%",
    ),
    spec(
        key::ORCA_EXPIRY,
        Some("3m"),
        "duration",
        Restart,
        "a weight whose last report is older than this is 100% again",
    ),
    // Admin and metrics listener.
    aliased(
        spec(
            key::METRICS_BIND,
            Some("127.0.0.1"),
            "IP",
            Restart,
            "address of the admin and metrics listener",
        ),
        &["metrics_bind_address"],
    ),
    spec(
        key::METRICS_PORT,
        Some("9090"),
        "port",
        Restart,
        "port of the admin and metrics listener (0 picks a free port)",
    ),
    spec(
        key::ADMIN_TOKEN,
        None,
        "text",
        Restart,
        "bearer token the admin API's DELETE and POST require; without one they are allowed only on a loopback --metrics-bind",
    ),
    spec(
        key::ADMIN_MAX_CONNECTIONS,
        Some("64"),
        "count",
        Restart,
        "admin and metrics connections served at once; more wait in the listen queue",
    ),
    spec(
        key::EVENTS_BUFFER,
        Some("1024"),
        "count",
        Restart,
        "state changes a slow /events subscriber may fall behind before it misses some",
    ),
    // Logging.
    spec(
        key::LOG_LEVEL,
        Some("info"),
        "level",
        Live,
        "trace, debug, info, warn, error or off (per-module levels: --log-modules)",
    ),
    multi(spec(
        key::LOG_MODULES,
        None,
        "module=level",
        Live,
        "log level of one module; repeatable (file: a [log_modules] table)",
    )),
    spec(
        key::LOG_FORMAT,
        Some("json"),
        "json|pretty",
        Restart,
        "log line format",
    ),
    spec(
        key::LOG_DESTINATION,
        None,
        "console|file",
        Restart,
        "where logs go: console (standard output) or file (needs --log-file) [default: file if --log-file is set]",
    ),
    aliased(
        spec(
            key::LOG_FILE,
            None,
            "path",
            Restart,
            "append logs to this file instead of standard output",
        ),
        &["log_file_path"],
    ),
    aliased(
        spec(
            key::LOG_ROTATION,
            Some("never"),
            "never|daily|hourly",
            Restart,
            "rotate --log-file by time",
        ),
        &["log_file_rotation"],
    ),
    aliased(
        spec(
            key::LOG_MAX_FILES,
            None,
            "count",
            Restart,
            "rotated log files kept (with --log-rotation)",
        ),
        &["log_file_max_files"],
    ),
];

/// Settings whose values are credentials: never logged, printed or echoed in errors.
/// Settings still accepted but no longer used, and what to do instead: setting one is
/// logged as a warning at start, never an error, so an upgrade never stops an agent.
pub const DEPRECATED: &[(&str, &str)] = &[(
    key::TRUST_WATCH,
    "explicit answers apply at once in both modes now; remove it (explicit_answers = counted counts them through fall)",
)];

pub fn is_secret(name: &str) -> bool {
    name == key::ADMIN_TOKEN
}

/// Settings whose values may hold credentials (metadata headers carry API keys): their
/// values are left out of error messages too.
pub fn hide_value_in_errors(name: &str) -> bool {
    is_secret(name) || name == key::GRPC_METADATA
}

/// The spec for `name`, by canonical name or file alias.
pub fn find(name: &str) -> Option<&'static Spec> {
    SETTINGS
        .iter()
        .find(|spec| spec.key == name || spec.aliases.contains(&name))
}
