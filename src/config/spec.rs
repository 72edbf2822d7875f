//! The one table of settings. Every layer derives its names from it: the TOML key is
//! `key`, the flag is `--` + key with dashes, the environment variable is
//! `HAPROXY_AGENT_` + key in capitals.

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
            "server_bind",
            Some("0.0.0.0"),
            "IP",
            Restart,
            "address the agent port listens on",
        ),
        &["server_bind_address"],
    ),
    spec(
        "server_port",
        Some("5555"),
        "port",
        Restart,
        "agent port HAProxy's agent-check connects to (0 picks a free port)",
    ),
    spec(
        "max_connections",
        Some("4096"),
        "count",
        Restart,
        "agent connections served at once; more are closed without a reply",
    ),
    spec(
        "max_line",
        Some("1024"),
        "bytes",
        Live,
        "longest request line; longer ones get `down #request line too long`",
    ),
    aliased(
        multi(spec(
            "allow_sources",
            None,
            "CIDR",
            Live,
            "addresses that may connect to the agent port (HAProxy hosts); others are closed at once; unset allows any; repeatable (file: a list)",
        )),
        &["allow_source"],
    ),
    spec(
        "read_deadline",
        Some("5s"),
        "duration",
        Live,
        "time a client has to send each request line",
    ),
    // gRPC probes.
    aliased(
        spec(
            "grpc_connect_timeout",
            Some("1000ms"),
            "duration",
            Live,
            "bound on resolve, TCP connect, TLS and HTTP/2 handshakes to a backend",
        ),
        &["grpc_connect_timeout_ms"],
    ),
    aliased(
        spec(
            "grpc_rpc_timeout",
            Some("1500ms"),
            "duration",
            Live,
            "bound on one Health/Check call once connected",
        ),
        &["grpc_rpc_timeout_ms"],
    ),
    multi(spec(
        "grpc_metadata",
        None,
        "name=value",
        Restart,
        "extra metadata header sent with every Check; repeatable (file: a [grpc_metadata] table)",
    )),
    spec(
        "user_agent",
        None,
        "text",
        Restart,
        "user-agent sent to backends [default: haproxy-grpc-agent/VERSION]",
    ),
    spec(
        "tls_ca_file",
        None,
        "path",
        Restart,
        "PEM CA bundle trusted for ssl backends, besides the system roots",
    ),
    spec(
        "tls_cert_file",
        None,
        "path",
        Restart,
        "PEM client certificate for mTLS to ssl backends (with --tls-key-file)",
    ),
    spec(
        "tls_key_file",
        None,
        "path",
        Restart,
        "PEM private key of the client certificate",
    ),
    spec(
        "tls_insecure_skip_verify",
        Some("false"),
        "bool",
        Restart,
        "DANGER: accept any backend certificate and name (testing only)",
    ),
    aliased(
        spec(
            "grpc_channel_cache",
            Some("true"),
            "bool",
            Restart,
            "keep one connection per backend endpoint between checks; false opens a fresh connection for every check",
        ),
        &["grpc_channel_cache_enabled"],
    ),
    spec(
        "grpc_max_connections",
        Some("4"),
        "count",
        Restart,
        "most HTTP/2 connections to one backend endpoint; more than one only when its stream limit is reached (Watch streams past it: polled)",
    ),
    // The oracle.
    spec(
        "check_interval",
        Some("2000ms"),
        "duration",
        Live,
        "time between background probes of one backend",
    ),
    spec(
        "check_jitter",
        Some("10"),
        "percent",
        Live,
        "random spread of each interval (10 means 0.9x to 1.1x)",
    ),
    spec(
        "rise",
        Some("2"),
        "count",
        Live,
        "consecutive healthy probes that bring a down backend up",
    ),
    spec(
        "fall",
        Some("3"),
        "count",
        Live,
        "consecutive failed probes that take an up backend down",
    ),
    spec(
        "health_mode",
        Some("watch"),
        "poll|watch",
        Live,
        "poll: a Check every interval; watch: a Health/Watch stream per target, with a Check every liveness_interval (a backend without Watch is polled)",
    ),
    spec(
        "liveness_interval",
        Some("10s"),
        "duration",
        Live,
        "while a target is watched, how often a Check confirms the backend still answers; also how long a backend connection with streams may stay silent before it is PINGed",
    ),
    spec(
        "trust_watch",
        Some("false"),
        "bool",
        Live,
        "apply a status change a Watch stream reports at once, instead of counting it through rise/fall",
    ),
    spec(
        "miss_timeout",
        Some("1000ms"),
        "duration",
        Live,
        "how long a request for an unseen backend waits for its first probe",
    ),
    spec(
        "idle_ttl",
        Some("5m"),
        "duration",
        Restart,
        "backends not asked about for this long are evicted",
    ),
    spec(
        "max_targets",
        Some("100000"),
        "count",
        Live,
        "most backends registered at once",
    ),
    spec(
        "stale_after",
        None,
        "duration",
        Live,
        "answer `down #stale` when no probe completed for this long [default: 3 intervals plus both gRPC timeouts]",
    ),
    aliased(
        multi(spec(
            "allow_backends",
            None,
            "CIDR or glob[:port[-port]]",
            Live,
            "backends the agent may probe: a CIDR or hostname glob, optionally with :port or :low-high; names are checked again after resolution; unset allows any; repeatable (file: a list)",
        )),
        &["allow_backend"],
    ),
    spec(
        "max_probes_in_flight",
        Some("1024"),
        "count",
        Restart,
        "probes running at once across all backends",
    ),
    // Replies.
    spec(
        "not_serving_reply",
        Some("down"),
        "down|drain|maint",
        Live,
        "what a NOT_SERVING backend is answered",
    ),
    spec(
        "unimplemented_reply",
        Some("down"),
        "up|down",
        Live,
        "what a server without the health service (UNIMPLEMENTED) is answered",
    ),
    // Admin and metrics listener.
    aliased(
        spec(
            "metrics_bind",
            Some("127.0.0.1"),
            "IP",
            Restart,
            "address of the admin and metrics listener",
        ),
        &["metrics_bind_address"],
    ),
    spec(
        "metrics_port",
        Some("9090"),
        "port",
        Restart,
        "port of the admin and metrics listener (0 picks a free port)",
    ),
    spec(
        "admin_token",
        None,
        "text",
        Restart,
        "bearer token the admin API's DELETE and POST require; without one they are allowed only on a loopback --metrics-bind",
    ),
    spec(
        "admin_max_connections",
        Some("64"),
        "count",
        Restart,
        "admin and metrics connections served at once; more wait in the listen queue",
    ),
    spec(
        "events_buffer",
        Some("1024"),
        "count",
        Restart,
        "state changes a slow /events subscriber may fall behind before it misses some",
    ),
    // Logging.
    spec(
        "log_level",
        Some("info"),
        "level",
        Live,
        "trace, debug, info, warn, error or off (per-module levels: --log-modules)",
    ),
    multi(spec(
        "log_modules",
        None,
        "module=level",
        Live,
        "log level of one module; repeatable (file: a [log_modules] table)",
    )),
    spec(
        "log_format",
        Some("json"),
        "json|pretty",
        Restart,
        "log line format",
    ),
    spec(
        "log_destination",
        None,
        "console|file",
        Restart,
        "where logs go: console (standard output) or file (needs --log-file) [default: file if --log-file is set]",
    ),
    aliased(
        spec(
            "log_file",
            None,
            "path",
            Restart,
            "append logs to this file instead of standard output",
        ),
        &["log_file_path"],
    ),
    aliased(
        spec(
            "log_rotation",
            Some("never"),
            "never|daily|hourly",
            Restart,
            "rotate --log-file by time",
        ),
        &["log_file_rotation"],
    ),
    aliased(
        spec(
            "log_max_files",
            None,
            "count",
            Restart,
            "rotated log files kept (with --log-rotation)",
        ),
        &["log_file_max_files"],
    ),
];

/// Settings whose values are credentials: never logged, printed or echoed in errors.
pub fn is_secret(key: &str) -> bool {
    key == "admin_token"
}

/// Settings whose values may hold credentials (metadata headers carry API keys): their
/// values are left out of error messages too.
pub fn hide_value_in_errors(key: &str) -> bool {
    is_secret(key) || key == "grpc_metadata"
}

/// The spec for `key`, by canonical name or file alias.
pub fn find(key: &str) -> Option<&'static Spec> {
    SETTINGS
        .iter()
        .find(|spec| spec.key == key || spec.aliases.contains(&key))
}
