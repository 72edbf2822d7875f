//! The daemon: parse the command line, load and validate the configuration, then run the
//! agent (bind, log the addresses, serve until a signal, drain) or a one-shot command.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use haproxy_grpc_agent::config::cli::Invocation;
use haproxy_grpc_agent::config::{self, Action, Layers, Loaded};
use haproxy_grpc_agent::shutdown::{Request, Shutdown, Signals};
use haproxy_grpc_agent::{App, Reloader, commands, logging};
use tokio::runtime::Runtime;

/// sysexits.h EX_USAGE: the command line or configuration is wrong.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_UNAVAILABLE: a resource the agent needs (its port, a file) is not there.
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let invocation = match parse_command_line() {
        Ok(invocation) => invocation,
        Err(code) => return code,
    };
    let env = |name: &str| std::env::var(name).ok();
    let layers = Layers {
        flags: invocation.flags.clone(),
        config_file: invocation.config_file.clone(),
        env: &env,
    };
    let loaded = match load_config(&layers, &invocation.action) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if invocation.check_config {
        return check_config(&loaded);
    }
    let runtime = Runtime::new().expect("cannot start the tokio runtime");
    match invocation.action {
        Action::Probe {
            address,
            tls,
            authority,
            service,
        } => probe(
            &runtime,
            &loaded,
            &address,
            tls,
            authority.as_deref(),
            &service,
        ),
        Action::Query { agent, line } => query(&runtime, &agent, &line),
        Action::Run => {
            let log_filter = match start_logging(&loaded) {
                Ok(handle) => handle,
                Err(code) => return code,
            };
            runtime.block_on(run(loaded, &layers, log_filter))
        }
    }
}

/// The invocation, or the exit code once clap has printed help, the version or the
/// problem. A bad `probe` command line exits 1, as grpc-health-probe's does, so scripts
/// written for that tool read our codes the same way.
fn parse_command_line() -> Result<Invocation, ExitCode> {
    match config::cli::parse(std::env::args_os()) {
        Ok(invocation) => Ok(invocation),
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            Err(ExitCode::SUCCESS)
        }
        Err(error) => {
            let _ = error.print();
            if config::cli::names_probe(std::env::args_os()) {
                return Err(ExitCode::from(commands::exit::BAD_ARGUMENTS));
            }
            Err(ExitCode::from(EX_USAGE))
        }
    }
}

/// The layered, validated settings, or the exit code for a bad configuration after
/// printing every problem: 64, or 1 under `probe`, whose codes follow grpc-health-probe's.
fn load_config(layers: &Layers<'_>, action: &Action) -> Result<Loaded, ExitCode> {
    let usage_error = match action {
        Action::Probe { .. } => commands::exit::BAD_ARGUMENTS,
        _ => EX_USAGE,
    };
    config::load(layers).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(usage_error)
    })
}

/// `--check-config`: prints the effective settings, or the problem and exits 64.
fn check_config(loaded: &Loaded) -> ExitCode {
    match commands::check_config(loaded) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(problem) => {
            eprintln!("error: {problem}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// `probe`: one probe of one backend, printed as the agent line HAProxy would get.
fn probe(
    runtime: &Runtime,
    loaded: &Loaded,
    address: &str,
    tls: bool,
    authority: Option<&str>,
    service: &str,
) -> ExitCode {
    let target = match commands::probe_target(address, tls, authority, service) {
        Ok(target) => target,
        Err(problem) => {
            eprintln!("error: {problem}");
            return ExitCode::from(commands::exit::BAD_ARGUMENTS);
        }
    };
    let (code, line) = runtime.block_on(commands::probe(&loaded.settings, &target));
    println!("{line}");
    ExitCode::from(code)
}

/// `query`: asks a running agent one line and prints its reply.
fn query(runtime: &Runtime, agent: &str, line: &str) -> ExitCode {
    match runtime.block_on(commands::query(agent, line, Duration::from_secs(10))) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(commands::QueryError::Usage(problem)) => {
            eprintln!("error: {problem}");
            ExitCode::from(EX_USAGE)
        }
        Err(commands::QueryError::Unavailable(problem)) => {
            eprintln!("error: {problem}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// Installs the log subscriber; the handle changes its filter on reload. A log file that
/// cannot be opened exits 69.
fn start_logging(loaded: &Loaded) -> Result<logging::FilterHandle, ExitCode> {
    logging::init(&loaded.settings.logging).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(EX_UNAVAILABLE)
    })
}

/// The agent's life: bind (exit 69 on failure), log the addresses, serve and reload until
/// a stop signal, then drain.
async fn run(
    mut loaded: Loaded,
    layers: &Layers<'_>,
    log_filter: logging::FilterHandle,
) -> ExitCode {
    tracing::info!(settings = %loaded.summary(), "starting");
    for (setting, instead) in loaded.deprecated() {
        tracing::warn!(setting, "deprecated setting ignored: {instead}");
    }
    if let Some((from, to)) = haproxy_grpc_agent::raise_open_file_limit() {
        tracing::info!(from, to, "raised the open file limit");
    }
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("error: cannot install signal handlers: {error}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let shutdown = Shutdown::new();
    let registry = prometheus::Registry::new();
    let app = match App::bind(loaded.settings.clone(), shutdown.clone(), registry).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    tracing::info!(agent_addr = %app.agent_addr(), admin_addr = %app.admin_addr(), "agent listening");
    let reloader = app.reloader();
    let serving = tokio::spawn(app.run());
    until_stopped(&mut signals, &reloader, layers, &mut loaded, &log_filter).await;
    shutdown.trigger();
    let _ = serving.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Waits for a stop signal, reloading the configuration on each SIGHUP meanwhile.
async fn until_stopped(
    signals: &mut Signals,
    reloader: &Reloader,
    layers: &Layers<'_>,
    loaded: &mut Loaded,
    log_filter: &logging::FilterHandle,
) {
    loop {
        match signals.next().await {
            Request::Stop(signal) => {
                tracing::info!(signal, "stopping: no new connections, finishing replies");
                return;
            }
            Request::Reload => reload(reloader, layers, loaded, log_filter),
        }
    }
}

/// SIGHUP: a valid configuration is applied and what changed is logged; an invalid one
/// is logged and the running configuration kept.
fn reload(
    reloader: &Reloader,
    layers: &Layers<'_>,
    loaded: &mut Loaded,
    log_filter: &logging::FilterHandle,
) {
    match reloader.reload(layers, loaded) {
        Ok(report) => {
            if let Err(error) = log_filter.set(&loaded.settings.logging.filter) {
                tracing::warn!(%error, "log level not changed");
            }
            if !report.needs_restart.is_empty() {
                tracing::warn!(settings = ?report.needs_restart, "changed settings keep their old value until a restart");
            }
            tracing::info!(applied = ?report.applied, "configuration reloaded");
        }
        Err(errors) => {
            for error in &errors.0 {
                tracing::error!(%error, "reload refused; keeping the running configuration");
            }
        }
    }
}
