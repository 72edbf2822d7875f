//! Log output: a tracing subscriber writing JSON lines or human-readable text to stdout.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "--log-level {level:?} is not a level or filter: {reason}; use trace, debug, info, warn or error"
)]
pub struct LogLevelError {
    level: String,
    reason: String,
}

/// Checks a level or filter string such as `info` or `warn,haproxy_grpc_agent=debug`.
pub fn filter(level: &str) -> Result<EnvFilter, LogLevelError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|error| LogLevelError {
            level: level.to_string(),
            reason: error.to_string(),
        })
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}
