//! Collecting raw values from the layers, lowest precedence first: built-in defaults,
//! environment, config file, flags. Each value keeps the layer it came from, so errors
//! and `--check-config` can say where it was set.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::SettingError;
use super::key;
use super::spec::{self, SETTINGS, Spec};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Env(String),
    File { path: PathBuf, key: String },
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env(var) => write!(f, "environment {var}"),
            Source::File { path, key } => write!(f, "file {} key {key}", path.display()),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A raw value and its origin. Lists and maps are comma-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub source: Source,
}

/// The winning raw value of every setting that has one, keyed by [`Spec::key`].
pub type Resolved = BTreeMap<&'static str, Value>;

/// The inputs of one load: flags already matched to settings, the config file (if any)
/// and the environment, behind a lookup so tests can supply their own.
pub struct Layers<'a> {
    pub flags: Vec<(&'static Spec, Vec<String>)>,
    pub config_file: Option<PathBuf>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Layers<'_> {
    /// Every setting's winning value, and the problems found in the layers themselves
    /// (unreadable file, unknown keys, wrong TOML types). The values that could be read
    /// are returned either way, so they can be checked too and every problem reported
    /// at once.
    pub fn resolve(&self) -> (Resolved, Vec<SettingError>) {
        let mut resolved = Resolved::new();
        let mut errors = Vec::new();
        for spec in SETTINGS {
            if let Some(default) = spec.default {
                resolved.insert(
                    spec.key,
                    Value {
                        text: default.to_string(),
                        source: Source::Default,
                    },
                );
            }
            // The canonical name wins over an alias.
            let given = std::iter::once(spec.env())
                .chain(spec.alias_envs())
                .find_map(|var| (self.env)(&var).map(|text| (var, text)));
            if let Some((var, text)) = given {
                resolved.insert(
                    spec.key,
                    Value {
                        text,
                        source: Source::Env(var),
                    },
                );
            }
        }
        if let Some(path) = &self.config_file {
            let (values, mut file_errors) = read_file(path);
            resolved.extend(values);
            errors.append(&mut file_errors);
        }
        for (spec, values) in &self.flags {
            let text = values.join(",");
            resolved.insert(
                spec.key,
                Value {
                    text,
                    source: Source::Flag(spec.flag()),
                },
            );
        }
        (resolved, errors)
    }
}

/// Reads a TOML config file: flat keys named like the settings (or UnitedTraders'
/// names), tables for map settings, and UnitedTraders' `[logging]` section. Returns the
/// values it could read and the problems with the others.
pub fn read_file(path: &Path) -> (Resolved, Vec<SettingError>) {
    let file_error = |problem: String| (Resolved::new(), vec![SettingError::file(path, problem)]);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            return file_error(format!(
                "cannot read it: {error}; check the path given with --config"
            ));
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(error) => {
            let error: toml::de::Error = error;
            return file_error(format!("not valid TOML: {}", error.to_string().trim_end()));
        }
    };
    let mut resolved = Resolved::new();
    let mut errors = Vec::new();
    // UnitedTraders' [logging] values win over its top-level log_level/log_format, so
    // they are read last.
    let (logging, top): (Vec<_>, Vec<_>) = table.iter().partition(|(key, _)| *key == "logging");
    for (key, value) in top {
        match spec::find(key) {
            Some(spec) => match file_value(spec, value) {
                Ok(text) => {
                    let source = Source::File {
                        path: path.to_path_buf(),
                        key: key.clone(),
                    };
                    resolved.insert(spec.key, Value { text, source });
                }
                Err(problem) => errors.push(SettingError::file_key(path, key, problem)),
            },
            None => errors.push(SettingError::file_key(
                path,
                key,
                "unknown key; `haproxy-grpc-agent --help` lists every setting".to_string(),
            )),
        }
    }
    for (_, logging) in logging {
        read_logging_section(path, logging, &mut resolved, &mut errors);
    }
    (resolved, errors)
}

/// Turns a TOML value into the setting's raw text.
fn file_value(spec: &Spec, value: &toml::Value) -> Result<String, String> {
    match (value, spec.multi) {
        (toml::Value::String(text), _) => Ok(text.clone()),
        (toml::Value::Integer(number), false) => Ok(number.to_string()),
        (toml::Value::Boolean(flag), false) => Ok(flag.to_string()),
        (toml::Value::Table(table), true) => table
            .iter()
            .map(|(name, value)| match value {
                toml::Value::String(text) => Ok(format!("{name}={text}")),
                other => Err(format!("{name} must be a string, not {}", other.type_str())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|pairs| pairs.join(",")),
        (toml::Value::Array(items), true) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("list items must be strings, not {}", item.type_str()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        (other, true) => Err(format!(
            "expects a table of name = \"value\", not {}",
            other.type_str()
        )),
        (other, false) => Err(format!(
            "expects a string, number or boolean, not {}",
            other.type_str()
        )),
    }
}

/// UnitedTraders' `[logging]`: destination, level, format, file_path, file_rotation,
/// file_max_files and a `[logging.packages]` table of per-module levels.
fn read_logging_section(
    path: &Path,
    section: &toml::Value,
    resolved: &mut Resolved,
    errors: &mut Vec<SettingError>,
) {
    let Some(section) = section.as_table() else {
        errors.push(SettingError::file_key(
            path,
            "logging",
            "must be a table".to_string(),
        ));
        return;
    };
    // UnitedTraders logs to the console unless `destination = "file"`, whatever
    // `file_path` says.
    let to_file = section.get("destination").and_then(toml::Value::as_str) == Some("file");
    for (name, value) in section {
        let file_key = format!("logging.{name}");
        let target = match name.as_str() {
            "file_path" if !to_file => continue,
            "level" => key::LOG_LEVEL,
            "format" => key::LOG_FORMAT,
            "packages" => key::LOG_MODULES,
            "destination" => key::LOG_DESTINATION,
            "file_path" => key::LOG_FILE,
            "file_rotation" => key::LOG_ROTATION,
            "file_max_files" => key::LOG_MAX_FILES,
            _ => {
                errors.push(SettingError::file_key(
                    path,
                    &file_key,
                    "unknown key in [logging]".to_string(),
                ));
                continue;
            }
        };
        let spec = spec::find(target).expect("every [logging] key maps to a setting");
        match file_value(spec, value) {
            Ok(text) => {
                let source = Source::File {
                    path: path.to_path_buf(),
                    key: file_key,
                };
                resolved.insert(spec.key, Value { text, source });
            }
            Err(problem) => errors.push(SettingError::file_key(path, &file_key, problem)),
        }
    }
}
