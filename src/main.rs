//! The daemon: parse flags, validate, bind, log the addresses, serve until a signal, drain.

use std::process::ExitCode;

use clap::Parser;
use haproxy_grpc_agent::config::Cli;
use haproxy_grpc_agent::shutdown::{self, Shutdown};
use haproxy_grpc_agent::{App, logging};

/// sysexits.h EX_USAGE: the command line or configuration is wrong.
const EX_USAGE: u8 = 64;
/// sysexits.h EX_UNAVAILABLE: a resource the agent needs (its port, a file) is not there.
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EX_USAGE);
        }
    };
    let settings = match cli.validate() {
        Ok(settings) => settings,
        Err(errors) => {
            for error in errors {
                eprintln!("haproxy-grpc-agent: invalid setting {error}");
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    let filter = match logging::filter(&settings.log_level) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("haproxy-grpc-agent: invalid setting {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    logging::init(filter, settings.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    runtime.block_on(run(settings))
}

async fn run(settings: haproxy_grpc_agent::config::Settings) -> ExitCode {
    tracing::info!(settings = ?settings, "starting");
    raise_open_file_limit();
    let shutdown = Shutdown::new();
    let app = match App::bind(settings, shutdown.clone()).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    tracing::info!(agent_addr = %app.agent_addr(), "agent listening");
    let serving = tokio::spawn(app.run());
    match shutdown::signal().await {
        Ok(signal) => tracing::info!(signal, "stopping: no new connections, finishing replies"),
        Err(error) => tracing::error!(%error, "cannot watch for signals; stopping"),
    }
    shutdown.trigger();
    let _ = serving.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Every backend connection and every HAProxy check is a socket, and the usual soft limit
/// (1024) is far below what a large farm needs: raise it to the hard limit, as Go's
/// runtime does. systemd's LimitNOFILE sets the hard limit.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::info!(
                from = soft,
                to = limit.rlim_max,
                "raised the open file limit"
            );
        }
    }
}
