//! The documentation kept true by the code: the settings table in `docs/configuration.md`
//! is generated from `SETTINGS` (a stale table is rewritten and the test fails, so the
//! fresh file gets committed), and every flag and `HAPROXY_AGENT_*` variable the README
//! names exists.

#[path = "support/flags.rs"]
mod flags;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flags::known_flags;

use haproxy_grpc_agent::config::spec::{Reload, SETTINGS, Spec};

const TABLE_BEGIN: &str = "<!-- settings-table:begin -->";
const TABLE_END: &str = "<!-- settings-table:end -->";

/// README sections that run cargo and the examples, whose flags are not the agent's.
const README_SECTIONS_NOT_CHECKED: &[&str] =
    &["Quickstart", "HAProxy versions tested", "Benchmarks"];

#[test]
fn settings_table_is_generated_from_the_spec() {
    let path = project_file("docs/configuration.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let fresh = with_table(&text, &settings_table());
    ensure_file_contents(&path, &text, &fresh);
}

#[test]
fn readme_names_only_real_flags_and_variables() {
    let path = project_file("README.md");
    let readme = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let checked = sections_except(&readme, README_SECTIONS_NOT_CHECKED);

    let flags = known_flags();
    let unknown: Vec<String> = long_flags(&checked)
        .into_iter()
        .filter(|flag| !flags.contains(flag))
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md names flags the agent does not have: {unknown:?}; fix the README or the \
         command line (src/config/cli.rs, src/config/spec.rs)"
    );

    let mut variables: BTreeSet<String> = SETTINGS.iter().map(Spec::env).collect();
    variables.insert("HAPROXY_AGENT_CONFIG".to_string());
    let unknown: Vec<String> = env_variables(&checked)
        .into_iter()
        .filter(|variable| !variables.contains(variable))
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md names environment variables the agent does not read: {unknown:?}"
    );
}

/// The settings table, one row per setting, in `SETTINGS` order.
fn settings_table() -> String {
    let mut out = String::from(
        "| TOML key | environment variable | flag | default | unit | on reload | meaning |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for spec in SETTINGS {
        let (meaning, help_default) = split_default(spec.help);
        let mut key = if spec.multi {
            format!("`[{}]`", spec.key)
        } else {
            format!("`{}`", spec.key)
        };
        for alias in spec.aliases {
            key.push_str(&format!(" or `{alias}`"));
        }
        let mut flag = format!("`{}`", spec.flag());
        for alias in spec.alias_flags() {
            flag.push_str(&format!(" or `--{alias}`"));
        }
        if spec.multi {
            flag.push_str(" (repeatable)");
        }
        let mut env = format!("`{}`", spec.env());
        for alias in spec.alias_envs() {
            env.push_str(&format!(" or `{alias}`"));
        }
        let default = match (spec.default, help_default) {
            (Some(default), _) => format!("`{default}`"),
            (None, Some(derived)) => derived.to_string(),
            (None, None) => "unset".to_string(),
        };
        let unit = if spec.unit.contains('|') {
            let choices: Vec<String> = spec.unit.split('|').map(|c| format!("`{c}`")).collect();
            choices.join(", ")
        } else {
            spec.unit.to_string()
        };
        let reload = match spec.reload {
            Reload::Live => "live",
            Reload::Restart => "restart",
        };
        let cells = [
            key,
            env,
            flag,
            default,
            unit,
            reload.to_string(),
            meaning.to_string(),
        ];
        let cells: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// Help text ending in `[default: ...]` (a default computed at load time): the text
/// before it, and the default.
fn split_default(help: &str) -> (&str, Option<&str>) {
    help.rsplit_once(" [default: ")
        .and_then(|(text, rest)| Some((text, Some(rest.strip_suffix(']')?))))
        .unwrap_or((help, None))
}

/// `text` with the lines between the table markers replaced by `table`.
fn with_table(text: &str, table: &str) -> String {
    let missing = |marker: &str| -> ! {
        panic!(
            "docs/configuration.md has no {marker} line; put the markers back around the settings table"
        )
    };
    let begin = text
        .find(TABLE_BEGIN)
        .unwrap_or_else(|| missing(TABLE_BEGIN))
        + TABLE_BEGIN.len();
    let end = text[begin..]
        .find(TABLE_END)
        .unwrap_or_else(|| missing(TABLE_END))
        + begin;
    format!("{}\n{table}{}", &text[..begin], &text[end..])
}

/// rust-analyzer's `ensure_file_contents`: when the file is stale, write the fresh
/// contents and fail, so the update shows up in `git status` and gets committed.
fn ensure_file_contents(path: &Path, current: &str, fresh: &str) {
    if normalize_newlines(current) == normalize_newlines(fresh) {
        return;
    }
    std::fs::write(path, fresh)
        .unwrap_or_else(|error| panic!("cannot update {}: {error}", path.display()));
    panic!(
        "{} was out of date with src/config/spec.rs and has been updated; review the change \
         (`git diff docs/`), commit it, and re-run the tests",
        path.display()
    );
}

fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

fn project_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The README without the `## ` sections named in `skip`.
fn sections_except(markdown: &str, skip: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            skipping = skip.contains(&title.trim());
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Words like `--check-interval` in `text` (not `---` table rules or `<!--` comments).
fn long_flags(text: &str) -> BTreeSet<String> {
    words_after(
        text,
        "--",
        |c| c.is_ascii_lowercase(),
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
    )
}

/// Words like `HAPROXY_AGENT_RISE` in `text`.
fn env_variables(text: &str) -> BTreeSet<String> {
    words_after(
        text,
        "HAPROXY_AGENT_",
        |c| c.is_ascii_uppercase(),
        |c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_',
    )
}

/// Words starting with `prefix` at a word boundary, whose next character passes `first`,
/// running while characters pass `rest`.
fn words_after(
    text: &str,
    prefix: &str,
    first: impl Fn(char) -> bool,
    rest: impl Fn(char) -> bool,
) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for (start, _) in text.match_indices(prefix) {
        let boundary = text[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        let tail = &text[start + prefix.len()..];
        if !boundary || !tail.starts_with(&first) {
            continue;
        }
        let len = tail.find(|c: char| !rest(c)).unwrap_or(tail.len());
        words.insert(format!(
            "{prefix}{}",
            tail[..len].trim_end_matches(['-', '_'])
        ));
    }
    words
}
