//! Log output: a tracing subscriber writing JSON lines (or human-readable text) to
//! standard output or to a file, rotated by time if asked.

use std::path::Path;

use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogRotation, LogSettings};

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("cannot open log file {path}: {reason}; check the directory exists and is writable")]
    File { path: String, reason: String },
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: &LogSettings) -> Result<(), LogError> {
    let filter = EnvFilter::builder()
        .parse(&settings.filter)
        .map_err(|error| LogError::Filter {
            filter: settings.filter.clone(),
            reason: error.to_string(),
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (&settings.file, settings.format) {
        (None, LogFormat::Json) => builder.json().flatten_event(true).init(),
        (None, LogFormat::Pretty) => builder.init(),
        (Some(path), format) => {
            let writer = file_writer(path, settings)?;
            let builder = builder.with_writer(writer).with_ansi(false);
            match format {
                LogFormat::Json => builder.json().flatten_event(true).init(),
                LogFormat::Pretty => builder.init(),
            }
        }
    }
    Ok(())
}

fn file_writer(path: &Path, settings: &LogSettings) -> Result<RollingFileAppender, LogError> {
    let error = |reason: String| LogError::File {
        path: path.display().to_string(),
        reason,
    };
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| error("no file name".to_string()))?;
    let rotation = match settings.rotation {
        LogRotation::Never => Rotation::NEVER,
        LogRotation::Daily => Rotation::DAILY,
        LogRotation::Hourly => Rotation::HOURLY,
    };
    let mut builder = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name.to_string_lossy().into_owned());
    if let Some(max_files) = settings.max_files {
        builder = builder.max_log_files(max_files);
    }
    builder.build(directory).map_err(|e| error(e.to_string()))
}
