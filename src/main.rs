//! The daemon: parse the command line, load and validate the configuration, then run the
//! agent (bind, log the addresses, serve until a signal, drain) or a one-shot command.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use haproxy_grpc_agent::config::{self, Action, Layers, Loaded};
use haproxy_grpc_agent::shutdown::{Request, Shutdown, Signals};
use haproxy_grpc_agent::{App, commands, logging};

/// sysexits.h EX_USAGE: the command line or configuration is wrong.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_UNAVAILABLE: a resource the agent needs (its port, a file) is not there.
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let invocation = match config::cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            if config::cli::names_probe(std::env::args_os()) {
                return ExitCode::from(commands::exit::BAD_ARGUMENTS);
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let layers = Layers {
        flags: invocation.flags.clone(),
        config_file: invocation.config_file.clone(),
        env: &env,
    };
    let usage_error = match invocation.action {
        Action::Probe { .. } => commands::exit::BAD_ARGUMENTS,
        _ => EX_USAGE,
    };
    let loaded = match config::load(&layers) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(usage_error);
        }
    };
    if invocation.check_config {
        return match commands::check_config(&loaded) {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                eprintln!("error: {problem}");
                ExitCode::from(EX_USAGE)
            }
        };
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    match invocation.action {
        Action::Probe {
            address,
            tls,
            authority,
            service,
        } => {
            let target = match commands::probe_target(&address, tls, authority.as_deref(), &service)
            {
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
        Action::Query { agent, line } => {
            match runtime.block_on(commands::query(&agent, &line, Duration::from_secs(10))) {
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
        Action::Run => {
            let log_filter = match logging::init(&loaded.settings.logging) {
                Ok(handle) => handle,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            };
            runtime.block_on(run(loaded, &layers, log_filter))
        }
    }
}

async fn run(
    mut loaded: Loaded,
    layers: &Layers<'_>,
    log_filter: logging::FilterHandle,
) -> ExitCode {
    tracing::info!(settings = %loaded.summary(), "starting");
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
    loop {
        match signals.next().await {
            Request::Stop(signal) => {
                tracing::info!(signal, "stopping: no new connections, finishing replies");
                break;
            }
            Request::Reload => match reloader.reload(layers, &mut loaded) {
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
            },
        }
    }
    shutdown.trigger();
    let _ = serving.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
