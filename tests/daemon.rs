//! The binary as an operator runs it: start-up log with the bound address, exit 64 on a
//! bad flag, SIGTERM stops it with status 0.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::backend::HealthBackend;
use support::*;

const BINARY: &str = env!("CARGO_BIN_EXE_haproxy-grpc-agent");

#[test]
fn bad_flag_values_exit_64_and_name_the_flag() {
    let table = [
        (&["--check-interval", "2 seconds"][..], "--check-interval"),
        (&["--server-port", "70000"][..], "--server-port"),
        (&["--rise", "0"][..], "--rise"),
        (&["--log-format", "xml"][..], "--log-format"),
        (&["--log-level", "loud=="][..], "--log-level"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ];
    for (args, flag) in table {
        let output = Command::new(BINARY).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn version_and_help_exit_0() {
    for flag in ["--version", "--help"] {
        let output = Command::new(BINARY).arg(flag).output().unwrap();
        assert!(output.status.success(), "{flag}");
    }
}

#[tokio::test]
async fn logs_the_bound_address_answers_and_stops_on_sigterm() {
    let backend = HealthBackend::start().await;
    let mut child = Command::new(BINARY)
        .args([
            "--server-bind",
            "127.0.0.1",
            "--server-port",
            "0",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"agent listening\"") {
                let addr = line
                    .split("\"agent_addr\":\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next());
                let _ = addr_tx.send(addr.map(str::to_string));
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the agent logs its address")
        .expect("the log line carries agent_addr");
    let addr = addr.parse().unwrap();
    let reply = ask(addr, &line_for(backend.port(), "")).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    eventually(
        Duration::from_secs(10),
        "the agent exits after SIGTERM",
        || {
            status = child.try_wait().unwrap();
            std::future::ready(status.is_some())
        },
    )
    .await;
    assert_eq!(status.unwrap().code(), Some(0));
}
