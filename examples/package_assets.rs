//! The files the .deb and .rpm packages ship besides the binary, generated from the
//! command-line definition and the settings table so they never drift from the code: man
//! pages (the agent and each subcommand), bash, zsh and fish completions, and the
//! commented default configuration.
//!
//! ```sh
//! cargo run --example package_assets -- OUT_DIR
//! ```
//!
//! `packaging/config.toml` is the committed copy of the configuration;
//! `tests/packaging_assets.rs` keeps it fresh and checks every file this writes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::{Arg, Command, ValueHint};
use clap_complete::{Generator, Shell};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use haproxy_grpc_agent::commands::exit;
use haproxy_grpc_agent::config::cli;
use haproxy_grpc_agent::config::spec::{self, Reload, SETTINGS, Spec};

const BIN: &str = "haproxy-grpc-agent";

/// Where the packages install the configuration (the service's `HAPROXY_AGENT_CONFIG`).
pub const CONFIG_PATH: &str = "/etc/haproxy-grpc-agent/config.toml";

/// sysexits.h EX_USAGE and EX_UNAVAILABLE, as `src/main.rs` exits.
const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

/// Width of the generated configuration's comment lines.
const WIDTH: usize = 88;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example package_assets -- OUT_DIR");
        return ExitCode::from(EX_USAGE);
    };
    match write_all(Path::new(&out_dir)) {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot write to {}: {error}", out_dir.display());
            ExitCode::FAILURE
        }
    }
}

/// One generated file.
pub struct Asset {
    pub name: String,
    pub contents: Vec<u8>,
}

/// Every file the packages ship besides the binary.
pub fn assets() -> Vec<Asset> {
    let mut assets = man_pages();
    assets.extend(completions());
    assets.push(Asset {
        name: "config.toml".to_string(),
        contents: render_config().into_bytes(),
    });
    assets
}

/// Writes every asset into `out_dir` (created if missing) and returns their paths.
pub fn write_all(out_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)?;
    assets()
        .into_iter()
        .map(|asset| {
            let path = out_dir.join(&asset.name);
            std::fs::write(&path, &asset.contents)?;
            Ok(path)
        })
        .collect()
}

/// The agent's command line as the packaged files describe it: each setting's unit
/// becomes a completion hint (file names for paths, the choices of `a|b|c`, true or
/// false), which the command line itself does not declare because it checks values
/// with the other layers.
pub fn command() -> Command {
    SETTINGS.iter().fold(cli::command(), |command, spec| {
        command.mut_arg(spec.key, |arg| with_value_hint(arg, spec))
    })
}

fn with_value_hint(arg: Arg, spec: &Spec) -> Arg {
    match spec.unit {
        "path" => arg.value_hint(ValueHint::FilePath),
        "bool" => arg.value_parser(PossibleValuesParser::new(["true", "false"])),
        choices if choices.contains('|') => {
            arg.value_parser(PossibleValuesParser::new(choices.split('|')))
        }
        _ => arg,
    }
}

// ---------------------------------------------------------------------------------------
// Man pages
// ---------------------------------------------------------------------------------------

/// `haproxy-grpc-agent.1`, and one page per subcommand (`haproxy-grpc-agent-probe.1`, ...).
pub fn man_pages() -> Vec<Asset> {
    let mut root = command().disable_help_subcommand(true);
    let about = root
        .get_about()
        .map(ToString::to_string)
        .unwrap_or_default();
    root = root.long_about(format!("{about}\n\n{DESCRIPTION}"));
    root.build();
    let page_of = |command: &Command| {
        format!(
            "{}(1)",
            command.get_display_name().unwrap_or(command.get_name())
        )
    };
    let all_pages: Vec<String> = std::iter::once(&root)
        .chain(root.get_subcommands())
        .map(page_of)
        .collect();
    let see_also = |command: &Command| -> Vec<String> {
        let own = page_of(command);
        all_pages
            .iter()
            .filter(|page| **page != own)
            .cloned()
            .chain(["haproxy(1)".to_string()])
            .collect()
    };
    let mut pages = vec![man_page(&root, root_sections, &see_also(&root))];
    for sub in root.get_subcommands() {
        let sections = match sub.get_name() {
            "probe" => probe_sections,
            "query" => query_sections,
            _ => no_sections,
        };
        pages.push(man_page(sub, sections, &see_also(sub)));
    }
    pages
}

/// The root page's DESCRIPTION after the one-line summary.
const DESCRIPTION: &str = "\
HAProxy's agent-check connects to the agent port and sends one line, \
<host> <port> <ssl|no-ssl> <authority> [<service>]. The agent answers up or down (or drain \
or maint, see --not-serving-reply) and a reason, from a cache that background pollers keep \
fresh with grpc.health.v1.Health/Check. The first request for a backend registers it and \
waits at most --miss-timeout for its first probe; from then on the backend is probed every \
--check-interval, whoever asks, with --rise/--fall hysteresis, until nobody has asked about \
it for --idle-ttl.

An HTTP listener on --metrics-bind:--metrics-port serves Prometheus metrics, health and \
readiness, and an API that lists, evicts and refreshes backends.";

/// clap_mangen's sections, then the command's own (in place of clap_mangen's EXTRA: the
/// after-help text is part of the root page's CONFIGURATION), VERSION and SEE ALSO.
fn man_page(
    command: &Command,
    own_sections: fn(&mut Roff, &Command),
    see_also: &[String],
) -> Asset {
    let man = Man::new(command.clone()).source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")));
    let mut own = Roff::new();
    own_sections(&mut own, command);
    let mut last = Roff::new();
    heading(&mut last, "SEE ALSO");
    last.text([roman(see_also.join(", "))]);
    paragraph(
        &mut last,
        "docs/configuration.md (every setting, its flag, variable, default and whether it \
         reloads) and docs/admin.md (the admin API and its metrics).",
    );
    let mut out = Vec::new();
    let mut render = || -> std::io::Result<()> {
        man.render_title(&mut out)?;
        // Option names are not words to hyphenate, and a ragged right edge keeps the long
        // synopsis readable.
        out.extend_from_slice(b".ad l\n.nh\n");
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if command.has_subcommands() {
            man.render_subcommands_section(&mut out)?;
        }
        own.to_writer(&mut out)?;
        if command.get_version().is_some() {
            man.render_version_section(&mut out)?;
        }
        last.to_writer(&mut out)
    };
    render().expect("writing to memory cannot fail");
    Asset {
        name: man.get_filename(),
        contents: out,
    }
}

fn root_sections(roff: &mut Roff, command: &Command) {
    heading(roff, "CONFIGURATION");
    if let Some(after_help) = command.get_after_help() {
        paragraph(roff, &after_help.to_string());
    }
    paragraph(
        roff,
        &format!(
            "--check-config loads and validates every layer, prints the effective \
             configuration with the layer each value came from, and exits. SIGHUP re-reads \
             the file and the environment: settings that reload apply at once, the others \
             keep their value until a restart. Unknown keys, values out of range and \
             conflicting settings are refused, every problem reported at once. The \
             packaged {CONFIG_PATH} lists every setting, commented out at its default."
        ),
    );

    heading(roff, "EXIT STATUS");
    item(
        roff,
        "0",
        "Stopped after SIGTERM or SIGINT, or --check-config found the configuration valid.",
    );
    item(
        roff,
        &EX_USAGE.to_string(),
        "The command line or the configuration is invalid (one line per problem on \
         standard error); nothing was started.",
    );
    item(
        roff,
        &EX_UNAVAILABLE.to_string(),
        "A listener cannot bind (address in use, not permitted), the log file cannot be \
         opened, or the signal handlers cannot be installed.",
    );
    paragraph(
        roff,
        &format!("The subcommands have their own, see {BIN}-probe(1) and {BIN}-query(1)."),
    );

    heading(roff, "ENVIRONMENT");
    item(
        roff,
        "HAPROXY_AGENT_CONFIG",
        "The configuration file to read when --config is not given.",
    );
    item(
        roff,
        &format!("{}<KEY>", spec::ENV_PREFIX),
        &format!(
            "Every setting, named by its file key in capitals (--check-interval is \
             {prefix}CHECK_INTERVAL); lists and maps are comma-separated name=value pairs. \
             A file value or a flag wins over the environment.",
            prefix = spec::ENV_PREFIX
        ),
    );

    heading(roff, "FILES");
    item(
        roff,
        CONFIG_PATH,
        "The configuration the packages install, every setting commented out at its \
         default; the service reads it through HAPROXY_AGENT_CONFIG. Readable by root and \
         the service's group only (mode 0640), as it may hold the admin token.",
    );

    heading(roff, "SIGNALS");
    item(
        roff,
        "SIGHUP",
        "Reload: re-read the configuration file and the environment (flags given at \
         start-up still win). Live settings apply at once and registered backends keep \
         their state; restart-only ones keep their old value and are logged. An invalid \
         configuration changes nothing.",
    );
    item(
        roff,
        "SIGTERM, SIGINT",
        "Drain: stop accepting, finish the replies in flight (up to the miss timeout plus \
         one second), stop the pollers and exit 0.",
    );
}

fn probe_sections(roff: &mut Roff, _: &Command) {
    heading(roff, "EXIT STATUS");
    paragraph(roff, "As grpc-health-probe:");
    let codes = [
        (exit::SERVING, "The backend answered SERVING."),
        (
            exit::BAD_ARGUMENTS,
            "Bad arguments: an invalid address or setting.",
        ),
        (
            exit::CONNECTION_FAILURE,
            "Connection failure: DNS, refused, connect timeout, TLS.",
        ),
        (
            exit::RPC_FAILURE,
            "RPC failure: any gRPC error status (UNIMPLEMENTED, NOT_FOUND, ...) or the RPC \
             timeout.",
        ),
        (
            exit::NOT_SERVING,
            "Not serving: NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN.",
        ),
    ];
    for (code, meaning) in codes {
        item(roff, &code.to_string(), meaning);
    }
    common_subcommand_sections(roff);
}

fn query_sections(roff: &mut Roff, _: &Command) {
    heading(roff, "EXIT STATUS");
    item(
        roff,
        "0",
        "The agent replied (whatever the reply); it is printed.",
    );
    item(
        roff,
        &EX_USAGE.to_string(),
        "--agent is malformed, or the configuration is invalid.",
    );
    item(
        roff,
        &EX_UNAVAILABLE.to_string(),
        "The agent cannot be reached or does not answer within 10 seconds.",
    );
    common_subcommand_sections(roff);
}

fn no_sections(_: &mut Roff, _: &Command) {}

fn common_subcommand_sections(roff: &mut Roff) {
    heading(roff, "ENVIRONMENT");
    paragraph(
        roff,
        &format!(
            "The agent's settings apply, from flags, the configuration file \
             (HAPROXY_AGENT_CONFIG or --config) or {}<KEY> variables, as for {BIN}(1).",
            spec::ENV_PREFIX
        ),
    );
}

fn heading(roff: &mut Roff, title: &str) {
    roff.control("SH", [title]);
}

fn paragraph(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.text([roman(text)]);
}

fn item(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(tag)]);
    roff.text([roman(text)]);
}

// ---------------------------------------------------------------------------------------
// Completions
// ---------------------------------------------------------------------------------------

/// `haproxy-grpc-agent.bash`, `_haproxy-grpc-agent` (zsh) and `haproxy-grpc-agent.fish`.
pub fn completions() -> Vec<Asset> {
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            let mut contents = Vec::new();
            clap_complete::generate(shell, &mut command(), BIN, &mut contents);
            Asset {
                name: shell.file_name(BIN),
                contents,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The default configuration
// ---------------------------------------------------------------------------------------

const CONFIG_HEADER: &str = "\
# haproxy-grpc-agent configuration
#
# The packages install this file as /etc/haproxy-grpc-agent/config.toml, and the service
# reads it (HAPROXY_AGENT_CONFIG). As shipped it changes nothing: every setting is
# commented out at its built-in default, so the agent answers HAProxy's agent-check on
# 0.0.0.0:5555, serves the admin API and metrics on 127.0.0.1:9090, and logs JSON lines
# to standard output (the journal). Uncomment a line and change its value to override it.
#
# Precedence, highest first: command-line flag > this file > environment
# (HAPROXY_AGENT_<KEY>) > built-in default.
#
# Check a change:  haproxy-grpc-agent -c /etc/haproxy-grpc-agent/config.toml --check-config
# Apply it:        systemctl reload haproxy-grpc-agent   (settings that apply on reload)
#                  systemctl restart haproxy-grpc-agent  (settings that need a restart)
#
# Durations: 250us, 500ms, 2s, 5m, 1h, 1d; a bare number is milliseconds.
# Every setting with its flag and environment variable: docs/configuration.md, and
# `man haproxy-grpc-agent`.
";

/// The values shown for settings that are unset by default: TOML, and valid for the
/// agent unless noted.
const EXAMPLES: &[(&str, &str)] = &[
    ("user_agent", r#""haproxy-grpc-agent (ops@example.com)""#),
    ("tls_ca_file", r#""/etc/haproxy-grpc-agent/ca.pem""#),
    ("tls_cert_file", r#""/etc/haproxy-grpc-agent/client.pem""#),
    ("tls_key_file", r#""/etc/haproxy-grpc-agent/client.key""#),
    ("stale_after", r#""10s""#),
    // Not a valid token on purpose: uncommented as it is, --check-config refuses it.
    ("admin_token", r#""<output of openssl rand -hex 32>""#),
    ("log_destination", r#""console""#),
    ("log_file", r#""/var/log/haproxy-grpc-agent/agent.log""#),
    ("log_max_files", "7"),
    (
        "allow_backends",
        r#"["10.0.0.0/8:50051", "*.svc.internal:50000-50100"]"#,
    ),
    ("allow_sources", r#"["10.1.0.0/24", "127.0.0.1"]"#),
];

/// The entries shown in the tables of map settings.
const TABLE_EXAMPLES: &[(&str, &[&str])] = &[
    (
        "grpc_metadata",
        &[r#"authorization = "Bearer <token>""#, r#"x-tenant = "ops""#],
    ),
    ("log_modules", &[r#""haproxy_grpc_agent::probe" = "debug""#]),
];

/// Settings still accepted but no longer used: a new configuration does not show them.
pub fn is_deprecated(spec: &Spec) -> bool {
    spec::DEPRECATED.iter().any(|(key, _)| *key == spec.key)
}

/// Settings whose values are often credentials: the file should stay private.
fn holds_credentials(spec: &Spec) -> bool {
    spec::is_secret(spec.key) || spec.key == "grpc_metadata"
}

/// The commented default configuration: every flat setting but the deprecated ones,
/// grouped as `--help` groups them, then the tables of the map settings (TOML tables come
/// after flat keys).
pub fn render_config() -> String {
    let mut out = String::from(CONFIG_HEADER);
    let headings = help_headings();
    let mut current = None;
    let current_settings = SETTINGS
        .iter()
        .zip(headings)
        .filter(|(spec, _)| !is_deprecated(spec));
    for (spec, heading) in current_settings {
        if heading != current {
            if let Some(title) = &heading {
                out.push_str(&banner(title));
            }
            current = heading;
        }
        out.push('\n');
        out.push_str(&setting_block(spec));
    }
    out.push_str(&banner("Tables"));
    out.push_str(&comment(
        "Maps are TOML tables, which must come after every key above: uncomment the table \
         header together with its entries.",
    ));
    for spec in SETTINGS.iter().filter(|spec| spec.is_map()) {
        out.push('\n');
        out.push_str(&table_block(spec));
    }
    out
}

/// Each setting's `--help` heading, found as clap finds it: on its argument.
fn help_headings() -> Vec<Option<String>> {
    let command = cli::command();
    SETTINGS
        .iter()
        .map(|spec| {
            command
                .get_arguments()
                .find(|arg| arg.get_id() == spec.key)
                .unwrap_or_else(|| panic!("{} has no command-line argument", spec.key))
                .get_help_heading()
                .map(str::to_string)
        })
        .collect()
}

fn banner(title: &str) -> String {
    let rule = format!("# {}\n", "-".repeat(WIDTH - 2));
    format!("\n\n{rule}# {title}\n{rule}")
}

fn setting_block(spec: &Spec) -> String {
    let (meaning, derived_default) = help_parts(spec);
    let mut about = vec![unit_text(spec), reload_text(spec.reload).to_string()];
    about.extend(
        spec.aliases
            .iter()
            .map(|alias| format!("Also read as {alias}.")),
    );
    let mut out = comment(&meaning);
    if spec.is_map() {
        about.push(format!(
            "Set it in the [{}] table at the end of this file.",
            spec.key
        ));
        out.push_str(&comment(&about.join(" ")));
        return out;
    }
    if holds_credentials(spec) {
        about.push(CREDENTIAL_NOTE.to_string());
    }
    let value = match (spec.default, derived_default) {
        (Some(default), _) => spec.toml_scalar(default),
        (None, derived) => {
            about.push(match derived {
                Some(derived) => format!("Default: {derived}; for example:"),
                None => "Unset by default; for example:".to_string(),
            });
            example(spec).to_string()
        }
    };
    out.push_str(&comment(&about.join(" ")));
    out.push_str(&format!("# {} = {value}\n", spec.key));
    out
}

const CREDENTIAL_NOTE: &str = "A credential: if you set it, keep this file mode 0640, owner \
     root, group haproxy-grpc-agent (as the packages install it).";

fn table_block(spec: &Spec) -> String {
    let (meaning, _) = help_parts(spec);
    let mut about = vec![unit_text(spec), reload_text(spec.reload).to_string()];
    if holds_credentials(spec) {
        about.push(CREDENTIAL_NOTE.to_string());
    }
    let mut out = comment(&meaning);
    out.push_str(&comment(&about.join(" ")));
    out.push_str(&format!("# [{}]\n", spec.key));
    let entries = TABLE_EXAMPLES
        .iter()
        .find(|(key, _)| *key == spec.key)
        .map(|(_, entries)| *entries)
        .unwrap_or_else(|| {
            panic!(
                "{} has no table example; add one to TABLE_EXAMPLES in examples/package_assets.rs",
                spec.key
            )
        });
    for entry in entries {
        out.push_str(&format!("# {entry}\n"));
    }
    out
}

fn example(spec: &Spec) -> &'static str {
    EXAMPLES
        .iter()
        .find(|(key, _)| *key == spec.key)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| {
            panic!(
                "{} is unset by default and has no example; add one to EXAMPLES in \
                 examples/package_assets.rs",
                spec.key
            )
        })
}

/// The help text as a sentence about the file: flags named as keys, the derived default
/// (`[default: ...]`) split off, and for lists the flag's "repeatable" dropped.
fn help_parts(spec: &Spec) -> (String, Option<String>) {
    let (text, derived) = match spec.help.rsplit_once(" [default: ") {
        Some((text, rest)) => (text, rest.strip_suffix(']').map(flags_as_keys)),
        None => (spec.help, None),
    };
    let text = match (spec.multi, text.split_once("; repeatable")) {
        (true, Some((text, _))) => text,
        _ => text,
    };
    (sentence(&flags_as_keys(text)), derived)
}

/// `--log-file` becomes `log_file`: in this file settings go by their keys.
fn flags_as_keys(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("--") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(after.len());
        match spec::find(&after[..len].replace('-', "_")) {
            Some(spec) => out.push_str(spec.key),
            None => out.push_str(&rest[start..start + 2 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Capitalized, with a full stop.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// What the value is, as a sentence.
fn unit_text(spec: &Spec) -> String {
    match spec.unit {
        "bool" => "Type: boolean.".to_string(),
        "IP" => "Type: IP address.".to_string(),
        choices if choices.contains('|') => {
            let choices: Vec<String> = choices.split('|').map(|c| format!("\"{c}\"")).collect();
            format!("One of: {}.", choices.join(", "))
        }
        list if spec.multi && !spec.is_map() => format!("A list of: {list}."),
        pair if spec.multi => match pair.split_once('=') {
            Some((name, value)) => format!("Entries: {name} = \"{value}\"."),
            None => format!("Entries: {pair}."),
        },
        unit => format!("Type: {unit}."),
    }
}

fn reload_text(reload: Reload) -> &'static str {
    match reload {
        Reload::Live => "Applies on reload.",
        Reload::Restart => "Needs a restart.",
    }
}

/// `text` as `# ` comment lines of at most [`WIDTH`] characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}
