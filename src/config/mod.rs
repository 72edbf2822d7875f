//! Settings: one table of settings ([`spec`]) naming each by its [`key`], reachable from
//! flags ([`cli`]), a TOML file and the environment ([`layers`]), validated into the
//! configuration of each stage: every value read on its own (`read`, with the parsers in
//! `parse`), the rules between them (`rules`), the stage configurations assembled
//! (`build`). This file holds the results, the errors, loading and reloading.
//! Names match UnitedTraders/haproxy-grpc-agent where they overlap.

mod build;
pub mod cli;
pub mod key;
pub mod layers;
mod parse;
mod read;
mod rules;
pub mod spec;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use cli::{Action, Invocation};
pub use layers::{Layers, Resolved, Source, Value};
pub use parse::parse_duration;

use crate::admin::AdminConfig;
use crate::oracle::OracleConfig;
use crate::probe::ProbeConfig;
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
    /// The deprecated settings a layer sets, each with what to do instead.
    pub fn deprecated(&self) -> Vec<(&'static str, &'static str)> {
        spec::DEPRECATED
            .iter()
            .filter(|(key, _)| {
                self.resolved
                    .get(key)
                    .is_some_and(|value| value.source != Source::Default)
            })
            .copied()
            .collect()
    }

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
        build::check(resolved)
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
