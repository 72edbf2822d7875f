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

/// Changes the log filter of the running subscriber (on reload).
pub struct FilterHandle(Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>);

impl FilterHandle {
    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = parse_filter(filter)?;
        (self.0)(parsed).map_err(|reason| LogError::Filter {
            filter: filter.to_string(),
            reason,
        })
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|error| LogError::Filter {
            filter: filter.to_string(),
            reason: error.to_string(),
        })
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(settings: &LogSettings) -> Result<FilterHandle, LogError> {
    let filter = parse_filter(&settings.filter)?;
    let builder = tracing_subscriber::fmt();
    // Each format is its own subscriber type; the handle hides which one runs.
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            FilterHandle(Box::new(move |filter| {
                handle.reload(filter).map_err(|e| e.to_string())
            }))
        }};
    }
    Ok(match (&settings.file, settings.format) {
        (None, LogFormat::Json) => install!(builder.json().flatten_event(true)),
        (None, LogFormat::Pretty) => install!(builder),
        (Some(path), LogFormat::Json) => {
            let writer = file_writer(path, settings)?;
            install!(
                builder
                    .with_writer(writer)
                    .with_ansi(false)
                    .json()
                    .flatten_event(true)
            )
        }
        (Some(path), LogFormat::Pretty) => {
            let writer = file_writer(path, settings)?;
            install!(builder.with_writer(writer).with_ansi(false))
        }
    })
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
