//! The files the packages ship besides the binary (`examples/package_assets.rs`):
//! `packaging/config.toml` is the generated default configuration (a stale copy is
//! rewritten and the test fails, so the fresh file gets committed), it loads as exactly the
//! built-in defaults, the values it shows are real and valid once uncommented, and the man
//! pages and completions know every setting.

#[path = "../examples/package_assets.rs"]
#[allow(dead_code)]
mod package_assets;

#[path = "support/flags.rs"]
mod flags;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flags::known_flags;
use std::process::{Command, Output};

use haproxy_grpc_agent::config::spec::{self, SETTINGS, Spec};

use package_assets::Asset;

const PACKAGED_CONFIG: &str = "packaging/config.toml";

#[test]
fn packaged_config_is_generated_from_the_spec() {
    let path = project_file(PACKAGED_CONFIG);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    ensure_file_contents(&path, &current, &package_assets::render_config());
}

#[test]
fn packaged_config_loads_as_exactly_the_defaults() {
    let with_file = check_config(Some(&project_file(PACKAGED_CONFIG)));
    let without = check_config(None);
    let report = success(&with_file, PACKAGED_CONFIG);
    let values = report_values(&report);
    for (key, (assignment, source)) in &values {
        assert!(
            source == "default" || source.starts_with("default:"),
            "{PACKAGED_CONFIG} sets {key}: `{assignment}` comes from {source}"
        );
    }
    assert_eq!(
        report,
        success(&without, "no config file"),
        "{PACKAGED_CONFIG} changes the configuration; as shipped it must change nothing"
    );
    let defaulted: BTreeSet<&str> = SETTINGS
        .iter()
        .filter(|spec| spec.default.is_some() && !spec::is_secret(spec.key))
        .map(|spec| spec.key)
        .collect();
    let shown: BTreeSet<&str> = values.keys().map(String::as_str).collect();
    assert_eq!(
        shown, defaulted,
        "--check-config reports other settings than the defaulted ones"
    );
}

/// Uncommenting every example line (except files that must exist and placeholders for
/// secrets) still loads, with the defaults unchanged: the values shown are the real
/// defaults, spelled as the file accepts them.
#[test]
fn uncommented_packaged_config_is_valid_and_keeps_the_defaults() {
    let text = std::fs::read_to_string(project_file(PACKAGED_CONFIG)).expect("read config");
    let (uncommented, flat, tables) = uncomment(&text);

    let expected: BTreeSet<&str> = SETTINGS
        .iter()
        .filter(|spec| !spec.is_map() && spec.unit != "path" && !spec::is_secret(spec.key))
        .filter(|spec| !package_assets::is_deprecated(spec))
        .map(|spec| spec.key)
        .collect();
    let found: BTreeSet<&str> = flat.keys().map(String::as_str).collect();
    assert_eq!(
        found, expected,
        "{PACKAGED_CONFIG} should show one `# key = value` line per setting"
    );
    let multi: BTreeSet<&str> = SETTINGS
        .iter()
        .filter(|spec| spec.is_map())
        .map(|spec| spec.key)
        .collect();
    assert_eq!(
        tables.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        multi,
        "{PACKAGED_CONFIG} should show a commented table per map setting"
    );

    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-config-uncommented.toml");
    std::fs::write(&path, &uncommented).expect("write the uncommented config");
    let report = success(
        &check_config(Some(&path)),
        "the uncommented packaged config",
    );
    let values = report_values(&report);
    let defaults = report_values(&success(&check_config(None), "no config file"));

    for (key, assignment) in &flat {
        let (reported, source) = values
            .get(key)
            .unwrap_or_else(|| panic!("--check-config does not report {key}:\n{report}"));
        assert_eq!(
            reported, assignment,
            "{key} is read differently than written"
        );
        assert!(
            source.starts_with("file "),
            "{key} should come from the file, not {source}"
        );
        if let Some((default, _)) = defaults.get(key) {
            assert_eq!(
                assignment, default,
                "{PACKAGED_CONFIG} shows {key} with another value than its default"
            );
        }
    }
    for key in &tables {
        let (_, source) = values
            .get(key)
            .unwrap_or_else(|| panic!("--check-config does not report [{key}]:\n{report}"));
        assert!(source.starts_with("file "), "[{key}] comes from {source}");
    }
}

#[test]
fn man_pages_document_every_setting_and_name_only_real_flags() {
    let pages = by_name(package_assets::man_pages());
    let main = pages
        .get("haproxy-grpc-agent.1")
        .expect("haproxy-grpc-agent.1");
    for spec in SETTINGS {
        assert!(
            main.contains(&roff_escaped(&spec.flag())),
            "the man page does not document {}",
            spec.flag()
        );
    }
    for section in [
        "FILES",
        "ENVIRONMENT",
        "SIGNALS",
        "\"EXIT STATUS\"",
        "\"SEE ALSO\"",
    ] {
        assert!(
            main.contains(&format!(".SH {section}\n")),
            "the man page has no {section} section"
        );
    }
    assert!(main.contains(&roff_escaped(package_assets::CONFIG_PATH)));
    for (page, flag) in [
        ("haproxy-grpc-agent-probe.1", "--authority"),
        ("haproxy-grpc-agent-query.1", "--agent"),
    ] {
        let text = pages.get(page).unwrap_or_else(|| panic!("no {page}"));
        assert!(text.contains(&roff_escaped(flag)), "{page} lacks {flag}");
        assert!(
            text.contains(".SH \"EXIT STATUS\"\n"),
            "{page} lacks EXIT STATUS"
        );
    }

    let known = known_flags();
    for (page, text) in &pages {
        let unknown: Vec<String> = escaped_long_flags(text)
            .into_iter()
            .filter(|flag| !known.contains(flag))
            .collect();
        assert!(
            unknown.is_empty(),
            "{page} names flags the agent does not have: {unknown:?}"
        );
    }
}

#[test]
fn completions_offer_every_setting() {
    let scripts = by_name(package_assets::completions());
    for (name, flag_of) in [
        ("haproxy-grpc-agent.bash", long_flag as fn(&str) -> String),
        ("_haproxy-grpc-agent", long_flag),
        ("haproxy-grpc-agent.fish", fish_flag),
    ] {
        let script = scripts.get(name).unwrap_or_else(|| panic!("no {name}"));
        for spec in SETTINGS {
            let flag = flag_of(&spec.flag()[2..]);
            assert!(script.contains(&flag), "{name} does not offer {flag}");
        }
        for word in ["probe", "query", "drain", "maint"] {
            assert!(script.contains(word), "{name} does not offer {word}");
        }
    }
}

fn long_flag(name: &str) -> String {
    format!("--{name}")
}

fn fish_flag(name: &str) -> String {
    format!("-l {name}")
}

fn by_name(assets: Vec<Asset>) -> BTreeMap<String, String> {
    assets
        .into_iter()
        .map(|asset| {
            let text = String::from_utf8(asset.contents).expect("assets are UTF-8");
            (asset.name, text)
        })
        .collect()
}

/// `--check-config` of the agent binary with `file` (or none), in an environment without
/// `HAPROXY_AGENT_*` variables.
fn check_config(file: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_haproxy-grpc-agent"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(spec::ENV_PREFIX) {
            command.env_remove(name);
        }
    }
    if let Some(file) = file {
        command.arg("--config").arg(file);
    }
    command
        .arg("--check-config")
        .output()
        .expect("run haproxy-grpc-agent --check-config")
}

/// The report of a successful `--check-config`.
fn success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "--check-config with {what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("the report is UTF-8")
}

/// The report's value lines (`key = value  # source`; commented lines are unset
/// settings): key to the assignment and its source.
fn report_values(report: &str) -> BTreeMap<String, (String, String)> {
    report
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (assignment, source) = line
                .split_once("  # ")
                .unwrap_or_else(|| panic!("unexpected --check-config line {line:?}"));
            let assignment = assignment.trim_end();
            let key = assignment
                .split_once(" = ")
                .map_or(assignment, |(key, _)| key);
            (
                key.to_string(),
                (assignment.to_string(), source.trim().to_string()),
            )
        })
        .collect()
}

/// The config with every `# key = value` line of a flat setting uncommented (but files
/// that must exist and secrets, whose example is a placeholder) and every commented
/// table of a list or map setting; also returns the flat assignments and the tables.
fn uncomment(config: &str) -> (String, BTreeMap<String, String>, BTreeSet<String>) {
    let mut out = String::new();
    let mut flat = BTreeMap::new();
    let mut tables = BTreeSet::new();
    let mut in_table = false;
    for line in config.lines() {
        let code = line.strip_prefix("# ").unwrap_or("");
        let table = code
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(spec::find)
            .filter(|spec| spec.is_map());
        let setting = code
            .split_once(" = ")
            .and_then(|(key, _)| spec::find(key).filter(|spec| spec.key == key));
        let uncommented = if let Some(table) = table {
            in_table = true;
            tables.insert(table.key.to_string());
            true
        } else if in_table && !code.is_empty() && code.parse::<toml::Table>().is_ok() {
            true
        } else if let Some(spec) = setting.filter(|spec| !in_table && shown_as_valid(spec)) {
            let previous = flat.insert(spec.key.to_string(), code.to_string());
            assert!(previous.is_none(), "{} is shown twice", spec.key);
            true
        } else {
            in_table &= !line.is_empty();
            false
        };
        out.push_str(if uncommented { code } else { line });
        out.push('\n');
    }
    (out, flat, tables)
}

/// Whether the value the file shows for `spec` must load as it is.
fn shown_as_valid(spec: &Spec) -> bool {
    !spec.is_map() && spec.unit != "path" && !spec::is_secret(spec.key)
}

/// Words like `\-\-check\-interval` in roff, unescaped.
fn escaped_long_flags(roff: &str) -> BTreeSet<String> {
    let plain = roff.replace("\\-", "-");
    let mut flags = BTreeSet::new();
    for (start, _) in plain.match_indices("--") {
        let boundary = plain[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
        let tail = &plain[start + 2..];
        if !boundary || !tail.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(tail.len());
        flags.insert(format!("--{}", tail[..len].trim_end_matches('-')));
    }
    flags
}

fn roff_escaped(text: &str) -> String {
    text.replace('-', "\\-")
}

/// rust-analyzer's `ensure_file_contents`: when the file is stale, write the fresh
/// contents and fail, so the update shows up in `git status` and gets committed. The
/// file is replaced whole (a rename), as other tests read it meanwhile.
fn ensure_file_contents(path: &Path, current: &str, fresh: &str) {
    if current.replace("\r\n", "\n") == fresh {
        return;
    }
    let temporary = path.with_extension("toml.new");
    std::fs::write(&temporary, fresh)
        .and_then(|()| std::fs::rename(&temporary, path))
        .unwrap_or_else(|error| panic!("cannot update {}: {error}", path.display()));
    panic!(
        "{} was out of date with src/config/spec.rs (or examples/package_assets.rs) and has \
         been regenerated; review the change (`git diff packaging/`), commit it, and re-run \
         the tests",
        path.display()
    );
}

fn project_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}
