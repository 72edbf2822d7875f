//! The name of every setting, once. The settings table and the validation both use these
//! constants, so a misspelt name is a compile error instead of a setting that silently
//! reads as unset. The strings are the names users see: TOML keys as they are, flags with
//! dashes, environment variables in capitals after `HAPROXY_AGENT_`.
//!
//! Error messages and help text that mention a setting in prose keep the name as text, so
//! they read (and can be searched for) as users see them.

// The agent listener.
pub const SERVER_BIND: &str = "server_bind";
pub const SERVER_PORT: &str = "server_port";
pub const MAX_CONNECTIONS: &str = "max_connections";
pub const MAX_LINE: &str = "max_line";
pub const ALLOW_SOURCES: &str = "allow_sources";
pub const READ_DEADLINE: &str = "read_deadline";

// gRPC probes.
pub const GRPC_CONNECT_TIMEOUT: &str = "grpc_connect_timeout";
pub const GRPC_RPC_TIMEOUT: &str = "grpc_rpc_timeout";
pub const GRPC_METADATA: &str = "grpc_metadata";
pub const USER_AGENT: &str = "user_agent";
pub const TLS_CA_FILE: &str = "tls_ca_file";
pub const TLS_CERT_FILE: &str = "tls_cert_file";
pub const TLS_KEY_FILE: &str = "tls_key_file";
pub const TLS_INSECURE_SKIP_VERIFY: &str = "tls_insecure_skip_verify";
pub const GRPC_CHANNEL_CACHE: &str = "grpc_channel_cache";
pub const GRPC_MAX_CONNECTIONS: &str = "grpc_max_connections";

// The oracle.
pub const CHECK_INTERVAL: &str = "check_interval";
pub const CHECK_JITTER: &str = "check_jitter";
pub const RISE: &str = "rise";
pub const FALL: &str = "fall";
pub const HEALTH_MODE: &str = "health_mode";
pub const LIVENESS_INTERVAL: &str = "liveness_interval";
/// Deprecated and ignored (see `spec::DEPRECATED`).
pub const TRUST_WATCH: &str = "trust_watch";
pub const EXPLICIT_ANSWERS: &str = "explicit_answers";
pub const AGENT_FAULT_REPLY: &str = "agent_fault_reply";
pub const PANIC_THRESHOLD: &str = "panic_threshold";
pub const PANIC_MIN_GROUP: &str = "panic_min_group";
pub const MISS_TIMEOUT: &str = "miss_timeout";
pub const IDLE_TTL: &str = "idle_ttl";
pub const MAX_TARGETS: &str = "max_targets";
pub const STALE_AFTER: &str = "stale_after";
pub const ALLOW_BACKENDS: &str = "allow_backends";
pub const MAX_PROBES_IN_FLIGHT: &str = "max_probes_in_flight";

// Load-aware weights.
pub const ORCA_WEIGHTS: &str = "orca_weights";
pub const ORCA_REPORT_INTERVAL: &str = "orca_report_interval";
pub const ORCA_ERROR_PENALTY: &str = "orca_error_penalty";
pub const ORCA_SMOOTHING: &str = "orca_smoothing";
pub const ORCA_MAX_STEP: &str = "orca_max_step";
pub const ORCA_MIN_WEIGHT: &str = "orca_min_weight";
pub const ORCA_BLACKOUT: &str = "orca_blackout";
pub const ORCA_EXPIRY: &str = "orca_expiry";

// Replies.
pub const NOT_SERVING_REPLY: &str = "not_serving_reply";
pub const UNIMPLEMENTED_REPLY: &str = "unimplemented_reply";

// Admin and metrics listener.
pub const METRICS_BIND: &str = "metrics_bind";
pub const METRICS_PORT: &str = "metrics_port";
pub const ADMIN_TOKEN: &str = "admin_token";
pub const ADMIN_MAX_CONNECTIONS: &str = "admin_max_connections";
pub const EVENTS_BUFFER: &str = "events_buffer";

// Logging.
pub const LOG_LEVEL: &str = "log_level";
pub const LOG_MODULES: &str = "log_modules";
pub const LOG_FORMAT: &str = "log_format";
pub const LOG_DESTINATION: &str = "log_destination";
pub const LOG_FILE: &str = "log_file";
pub const LOG_ROTATION: &str = "log_rotation";
pub const LOG_MAX_FILES: &str = "log_max_files";
