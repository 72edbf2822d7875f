//! The command line, built from the settings table: one `--flag` per setting (global, so
//! the subcommands take them too), `-c/--config`, `--check-config`, and the `probe` and
//! `query` subcommands.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use super::key;
use super::spec::{SETTINGS, Spec};

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub config_file: Option<PathBuf>,
    pub check_config: bool,
    /// Settings given as flags, with every value given (repeatable ones can have several).
    pub flags: Vec<(&'static Spec, Vec<String>)>,
    pub action: Action,
}

/// The subcommand, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run,
    Probe {
        address: String,
        tls: bool,
        authority: Option<String>,
        service: String,
    },
    Query {
        agent: String,
        line: String,
    },
}

/// The whole command-line definition.
pub fn command() -> Command {
    let mut command = Command::new("haproxy-grpc-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Answers HAProxy agent-check requests from a cache of gRPC health states kept fresh by background probes.")
        .after_help(
            "Every setting can also be given in the config file (key = flag name with underscores) \
             or the environment (HAPROXY_AGENT_ + key in capitals). Precedence: flag > file > environment > default. \
             Durations: 500ms, 2s, 5m, 1h; a bare number is milliseconds.",
        )
        .arg(
            Arg::new("config")
                .short('c')
                .long("config")
                .value_name("PATH")
                .global(true)
                .env("HAPROXY_AGENT_CONFIG")
                .hide_env_values(true)
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file"),
        )
        .arg(
            Arg::new("check_config")
                .long("check-config")
                .action(ArgAction::SetTrue)
                .help("Load and validate the configuration, print it with where each value came from, and exit (0 valid, 64 invalid)"),
        )
        .subcommand(
            Command::new("probe")
                .about("Run one Health/Check with the agent's TLS and timeout settings; exit 0 serving, 1 bad arguments, 2 connection failure, 3 RPC failure, 4 not serving")
                .arg(Arg::new("address").required(true).value_name("HOST:PORT").help("backend to check, e.g. 10.0.0.7:50051 or [::1]:50051"))
                .arg(Arg::new("tls").long("tls").action(ArgAction::SetTrue).help("speak TLS (the agent line's `ssl`)"))
                .arg(Arg::new("authority").long("authority").value_name("AUTHORITY").help("HTTP/2 :authority and TLS server name [default: the host]"))
                .arg(Arg::new("service").long("service").value_name("NAME").default_value("").hide_default_value(true).help("gRPC service to check [default: the whole server]")),
        )
        .subcommand(
            Command::new("query")
                .about("Ask a running agent one request line and print its reply")
                .arg(Arg::new("agent").long("agent").value_name("HOST:PORT").default_value("127.0.0.1:5555").help("the agent to ask"))
                .arg(Arg::new("line").required(true).value_name("LINE").help("request line, e.g. \"10.0.0.7 50051 no-ssl api.internal\"")),
        );
    let mut heading = None;
    for spec in SETTINGS {
        if let Some((_, title)) = HEADINGS.iter().find(|(first, _)| *first == spec.key) {
            heading = Some(*title);
        }
        command = command.arg(setting_arg(spec).help_heading(heading));
    }
    command
}

/// Help sections: each starts at its first setting in the table's order.
const HEADINGS: &[(&str, &str)] = &[
    (key::SERVER_BIND, "Agent listener"),
    (key::GRPC_CONNECT_TIMEOUT, "gRPC probes"),
    (key::CHECK_INTERVAL, "Health oracle"),
    (key::NOT_SERVING_REPLY, "Replies"),
    (key::METRICS_BIND, "Admin and metrics listener"),
    (key::LOG_LEVEL, "Logging"),
];

fn setting_arg(spec: &'static Spec) -> Arg {
    let mut help = format!("{} [env: {}]", spec.help, spec.env());
    if let Some(default) = spec.default {
        help.push_str(&format!(" [default: {default}]"));
    }
    let arg = Arg::new(spec.key)
        .long(spec.flag()[2..].to_string())
        .aliases(spec.alias_flags())
        .value_name(spec.unit.to_ascii_uppercase())
        .global(true)
        .help(help);
    match (spec.multi, spec.unit) {
        (true, _) => arg.action(ArgAction::Append),
        // `--tls-insecure-skip-verify` alone means true.
        (false, "bool") => arg
            .num_args(0..=1)
            .default_missing_value("true")
            .action(ArgAction::Set),
        (false, _) => arg.action(ArgAction::Set),
    }
}

/// Parses the command line. Setting values stay text; they are checked with the other
/// layers, so a bad flag value is reported like a bad file value.
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let action = match matches.subcommand() {
        Some(("probe", probe)) => Action::Probe {
            address: text(probe, "address").unwrap_or_default(),
            tls: probe.get_flag("tls"),
            authority: text(probe, "authority"),
            service: text(probe, "service").unwrap_or_default(),
        },
        Some(("query", query)) => Action::Query {
            agent: text(query, "agent").unwrap_or_default(),
            line: text(query, "line").unwrap_or_default(),
        },
        _ => Action::Run,
    };
    // Global arguments given after a subcommand land in the subcommand's matches.
    let sub = matches.subcommand().map(|(_, sub)| sub);
    let flags = SETTINGS
        .iter()
        .filter_map(|spec| {
            let values = sub
                .and_then(|sub| values_given(sub, spec.key))
                .or_else(|| values_given(&matches, spec.key))?;
            Some((spec, values))
        })
        .collect();
    let config_file = sub
        .and_then(|sub| sub.get_one::<PathBuf>("config").cloned())
        .or_else(|| matches.get_one::<PathBuf>("config").cloned());
    Ok(Invocation {
        config_file,
        check_config: matches.get_flag("check_config"),
        flags,
        action,
    })
}

/// Whether the command line names the `probe` subcommand, even if it is otherwise wrong:
/// probe's argument errors exit 1, as grpc-health-probe's do.
pub fn names_probe<I, T>(args: I) -> bool
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .is_ok_and(|matches| matches.subcommand_name() == Some("probe"))
}

fn text(matches: &ArgMatches, id: &str) -> Option<String> {
    matches.get_one::<String>(id).cloned()
}

fn values_given(matches: &ArgMatches, id: &str) -> Option<Vec<String>> {
    if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
        return None;
    }
    matches
        .get_many::<String>(id)
        .map(|values| values.cloned().collect())
}
