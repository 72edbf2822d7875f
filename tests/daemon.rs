//! The binary as an operator runs it: exit codes, `--check-config`, the start-up log,
//! SIGHUP reload, SIGTERM, a port in use, and the `probe` and `query` subcommands.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::backend::{HealthBackend, Wire};
use support::daemon::{BINARY, Daemon, TempDir};
use support::*;

/// Runs the binary to completion off the async runtime (backends keep serving), with no
/// `HAPROXY_AGENT_*` variables but those given.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(BINARY);
        command.args(&args);
        for (name, _) in std::env::vars() {
            if name.starts_with("HAPROXY_AGENT_") {
                command.env_remove(name);
            }
        }
        command.envs(env).output().expect("run the agent binary")
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The output line that sets `key`.
fn line_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{text}"))
}

#[tokio::test]
async fn bad_flag_values_exit_64_and_name_the_flag() {
    let table = [
        (&["--check-interval", "2 seconds"][..], "--check-interval"),
        (&["--server-port", "70000"][..], "--server-port"),
        (&["--rise", "0"][..], "--rise"),
        (&["--log-format", "xml"][..], "--log-format"),
        (&["--log-level", "loud=="][..], "--log-level"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        // A number past what the agent can hold is refused before anything starts (it
        // used to pass --check-config and leave a dead agent port behind readiness).
        (
            &[
                "--check-config",
                "--max-connections",
                "18446744073709551615",
            ][..],
            "--max-connections",
        ),
        (
            &["--max-targets", "18446744073709551615"][..],
            "--max-targets",
        ),
        (
            &["--check-config", "--idle-ttl", "400000d"][..],
            "--idle-ttl",
        ),
    ];
    for (args, flag) in table {
        let output = run(args, &[]).await;
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        assert!(
            stderr(&output).contains(flag),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[tokio::test]
async fn version_and_help_exit_0() {
    let version = run(&["--version"], &[]).await;
    assert!(version.status.success());
    assert_eq!(
        stdout(&version).trim(),
        format!("haproxy-grpc-agent {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [&["--help"][..], &["probe", "--help"], &["query", "--help"]] {
        let help = run(args, &[]).await;
        assert!(help.status.success(), "{args:?}");
        assert!(
            stdout(&help).contains("Usage: haproxy-grpc-agent"),
            "{args:?}"
        );
    }
    // Every setting has its flag in the help, with its environment variable.
    let help = stdout(&run(&["--help"], &[]).await);
    for spec in haproxy_grpc_agent::config::spec::SETTINGS {
        assert!(
            help.contains(&spec.flag()),
            "{} missing from --help",
            spec.flag()
        );
        assert!(
            help.contains(&spec.env()),
            "{} missing from --help",
            spec.env()
        );
    }
}

#[tokio::test]
async fn check_config_prints_every_value_with_its_source() {
    let dir = TempDir::new("check-config");
    let file = dir.write(
        "config.toml",
        "rise = 4\ngrpc_rpc_timeout_ms = 900\n[grpc_metadata]\nx-api-key = \"s3cret\"\n[logging]\nlevel = \"debug\"\n",
    );
    let file = file.to_str().unwrap();
    let output = run(
        &["-c", file, "--check-interval", "3s", "--check-config"],
        &[
            ("HAPROXY_AGENT_FALL", "5"),
            ("HAPROXY_AGENT_ADMIN_TOKEN", "token-s3cret-0123456789"),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(!text.contains("token-s3cret"), "{text}");
    assert!(text.contains("# admin_token = \"<redacted>\""), "{text}");
    // A bad token is refused without being echoed.
    let bad = run(&["--check-config", "--admin-token", "short-s3cret"], &[]).await;
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("admin_token = <redacted> (from flag --admin-token)"));
    assert!(!stderr(&bad).contains("short-s3cret"), "{}", stderr(&bad));
    let check = |key: &str, value: &str, source: &str| {
        let line = line_of(&text, key);
        assert!(line.starts_with(&format!("{key} = {value} ")), "{line}");
        assert!(line.ends_with(&format!("# {source}")), "{line}");
    };
    check("check_interval", "\"3s\"", "flag --check-interval");
    check("rise", "4", &format!("file {file} key rise"));
    check(
        "grpc_rpc_timeout",
        "\"900\"",
        &format!("file {file} key grpc_rpc_timeout_ms"),
    );
    check(
        "log_level",
        "\"debug\"",
        &format!("file {file} key logging.level"),
    );
    check("fall", "5", "environment HAPROXY_AGENT_FALL");
    check("metrics_port", "9090", "default");
    // Values computed from others are shown; metadata values never are.
    assert!(text.contains("# stale_after = \"10900ms\""), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    check(
        "grpc_metadata",
        "{ x-api-key = \"<redacted>\" }",
        &format!("file {file} key grpc_metadata"),
    );
    assert!(text.ends_with("# configuration is valid\n"), "{text}");

    // The output is itself a configuration file that loads to the same values.
    let again = dir.write("effective.toml", &text);
    let reloaded = run(
        &["-c", again.to_str().unwrap(), "--check-config"],
        &[
            ("HAPROXY_AGENT_FALL", "5"),
            ("HAPROXY_AGENT_ADMIN_TOKEN", "token-s3cret-0123456789"),
        ],
    )
    .await;
    assert_eq!(reloaded.status.code(), Some(0), "{}", stderr(&reloaded));
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| line.split("  #").next().unwrap().trim_end().to_string())
            .collect()
    };
    assert_eq!(values(&stdout(&reloaded)), values(&text));
}

#[tokio::test]
async fn a_united_traders_config_file_loads_unchanged() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/unitedtraders-config.toml"
    );
    let output = run(&["-c", file, "--check-config"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let from = |key: &str| format!("# file {file} key {key}");
    for (key, value, source) in [
        ("server_bind", "\"0.0.0.0\"", "server_bind_address"),
        ("server_port", "5555", "server_port"),
        ("metrics_bind", "\"0.0.0.0\"", "metrics_bind_address"),
        (
            "grpc_connect_timeout",
            "\"1000\"",
            "grpc_connect_timeout_ms",
        ),
        ("grpc_rpc_timeout", "\"1500\"", "grpc_rpc_timeout_ms"),
        ("grpc_channel_cache", "true", "grpc_channel_cache_enabled"),
        ("log_level", "\"debug\"", "logging.level"),
        ("log_format", "\"pretty\"", "logging.format"),
        ("log_destination", "\"file\"", "logging.destination"),
        (
            "log_file",
            "\"/var/log/haproxy-agent/agent.log\"",
            "logging.file_path",
        ),
        ("log_rotation", "\"daily\"", "logging.file_rotation"),
        ("log_max_files", "7", "logging.file_max_files"),
    ] {
        let line = line_of(&text, key);
        assert!(line.starts_with(&format!("{key} = {value} ")), "{line}");
        assert!(line.ends_with(&from(source)), "{line}");
    }
    assert!(
        line_of(&text, "log_modules").contains("\"haproxy_grpc_agent::server\" = \"trace\""),
        "{text}"
    );
}

#[tokio::test]
async fn check_config_exits_64_naming_every_problem_in_every_layer() {
    let dir = TempDir::new("check-config-bad");
    let file = dir.write("config.toml", "rise = 0\nbogus = 1\n");
    let file = file.to_str().unwrap();
    let output = run(
        &["-c", file, "--check-interval", "2x", "--check-config"],
        &[("HAPROXY_AGENT_FALL", "many")],
    )
    .await;
    assert_eq!(output.status.code(), Some(64));
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let errors = stderr(&output);
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 4, "{errors}");
    let expected = [
        format!("bogus (from file {file}): unknown key"),
        "check_interval = \"2x\" (from flag --check-interval): not a duration".to_string(),
        format!("rise = \"0\" (from file {file} key rise): out of range"),
        "fall = \"many\" (from environment HAPROXY_AGENT_FALL): not a number".to_string(),
    ];
    for needle in expected {
        assert!(
            lines.iter().any(|line| line.contains(&needle)),
            "{needle:?} not in:\n{errors}"
        );
    }
    // TLS files are read and parsed, as at start-up.
    let not_pem = dir.write("ca.pem", "not a certificate");
    let output = run(
        &["--tls-ca-file", not_pem.to_str().unwrap(), "--check-config"],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!("{} holds no certificate", not_pem.display())),
        "{errors}"
    );
    // A missing file is a problem of the file layer, named with its path.
    let output = run(&["-c", "/nonexistent/agent.toml", "--check-config"], &[]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("/nonexistent/agent.toml"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_the_bound_address_answers_and_stops_on_sigterm() {
    let backend = HealthBackend::start().await;
    let mut agent = Daemon::start(
        &[
            "--log-format",
            "json",
            "--log-modules",
            "haproxy_grpc_agent::responder=debug",
            "--grpc-metadata",
            "x-api-key=s3cret",
        ],
        &[],
    );
    let line = line_for(backend.port(), "");
    let reply = ask(agent.addr(), &line).await;
    assert!(reply.starts_with("up #SERVING"), "{reply:?}");
    // The transition is one info line with old state, new state and reason.
    let changed = agent.wait_for_log("\"backend state changed\"", Duration::from_secs(5));
    for field in ["\"from\":\"new\"", "\"to\":\"up\"", "\"reason\":\"SERVING"] {
        assert!(changed.contains(field), "{field} in {changed}");
    }
    // The answer is logged (at debug) inside the connection's span: id, peer, backend.
    let answered = agent.wait_for_log("\"answered\"", Duration::from_secs(5));
    for field in [
        "\"name\":\"conn\"",
        "\"id\":",
        "\"peer\":\"127.0.0.1:",
        &line,
    ] {
        assert!(answered.contains(field), "{field} in {answered}");
    }
    // The settings are logged at start, metadata values redacted.
    let starting = agent.wait_for_log("\"starting\"", Duration::from_secs(1));
    assert!(starting.contains("check_interval=2000ms"), "{starting}");

    assert!(
        starting.contains("grpc_metadata=x-api-key=<redacted>"),
        "{starting}"
    );

    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    agent.wait_for_log("\"stopped\"", Duration::from_secs(1));
    let leaked: Vec<String> = agent
        .log()
        .into_iter()
        .filter(|line| line.contains("s3cret"))
        .collect();
    assert!(
        leaked.is_empty(),
        "metadata values stay out of logs: {leaked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_it_when_invalid() {
    let backend = HealthBackend::start().await;
    backend.set("", Wire::NotServing);
    let dir = TempDir::new("sighup");
    let file = dir.write(
        "config.toml",
        "not_serving_reply = \"down\"\ncheck_interval = \"100ms\"\n",
    );
    let mut agent = Daemon::start(&["-c", file.to_str().unwrap()], &[]);
    let line = line_for(backend.port(), "");
    assert!(
        ask(agent.addr(), &line)
            .await
            .starts_with("down #NOT_SERVING")
    );

    dir.write(
        "config.toml",
        "not_serving_reply = \"drain\"\ncheck_interval = \"100ms\"\nmax_connections = 7\n",
    );
    agent.signal("HUP");
    let reloaded = agent.wait_for_log("\"configuration reloaded\"", Duration::from_secs(10));
    assert!(reloaded.contains("not_serving_reply"), "{reloaded}");
    let restart = agent.wait_for_log(
        "keep their old value until a restart",
        Duration::from_secs(1),
    );
    assert!(restart.contains("max_connections"), "{restart}");
    assert!(
        ask(agent.addr(), &line)
            .await
            .starts_with("drain #NOT_SERVING")
    );

    // An invalid file is refused with its problems logged; the running settings stay.
    dir.write("config.toml", "not_serving_reply = \"maybe\"\n");
    agent.signal("HUP");
    let refused = agent.wait_for_log("reload refused", Duration::from_secs(10));
    assert!(refused.contains("not_serving_reply"), "{refused}");
    assert!(
        ask(agent.addr(), &line)
            .await
            .starts_with("drain #NOT_SERVING")
    );

    agent.signal("INT");
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test]
async fn a_port_in_use_is_one_line_and_exit_69() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let output = run(&["--server-bind", "127.0.0.1", "--server-port", &port], &[]).await;
    assert_eq!(output.status.code(), Some(69));
    let errors = stderr(&output);
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(
        errors.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{errors}"
    );
    assert!(errors.contains("in use"), "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_with_grpc_health_probe_codes() {
    let serving = HealthBackend::start().await;
    let not_serving = HealthBackend::start().await;
    not_serving.set("", Wire::NotServing);
    not_serving.set("shop.Cart", Wire::Serving);
    let (unimplemented, _unimplemented) = unimplemented_backend().await;
    let (silent, _silent) = silent_backend().await;
    let refused = closed_port();
    let at = |port: u16| format!("127.0.0.1:{port}");
    let table: Vec<(Vec<String>, i32, &str)> = vec![
        (vec![at(serving.port())], 0, "SERVING"),
        (vec![at(not_serving.port())], 4, "NOT_SERVING"),
        (
            vec![
                at(not_serving.port()),
                "--service".into(),
                "shop.Cart".into(),
            ],
            0,
            "SERVING",
        ),
        (
            vec![at(not_serving.port()), "--service".into(), "nope".into()],
            3,
            "grpc NOT_FOUND",
        ),
        (vec![at(unimplemented)], 3, "grpc UNIMPLEMENTED"),
        // Takes TCP and never speaks HTTP/2: the connection is never made.
        (
            vec![at(silent), "--grpc-connect-timeout".into(), "300ms".into()],
            2,
            "connect: no http/2 settings from the backend within 300ms",
        ),
        (vec![at(refused)], 2, "connection refused"),
        // TLS to a plaintext server fails in the handshake: a connection failure.
        (vec![at(serving.port()), "--tls".into()], 2, "tls"),
    ];
    for (args, code, reason) in table {
        let mut argv = vec!["probe".to_string()];
        argv.extend(args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = run(&argv, &[]).await;
        let text = stdout(&output);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{argv:?}: {text}{}",
            stderr(&output)
        );
        assert!(text.starts_with(reason), "{argv:?}: {text}");
    }
    // Bad arguments, from clap or from the settings, exit 1.
    for argv in [
        &["probe"][..],
        &["probe", "no-port"],
        &["probe", "127.0.0.1:0"],
        &["probe", "127.0.0.1:50051", "--rise", "0"],
        &["probe", "127.0.0.1:50051", "--no-such-flag"],
    ] {
        let output = run(argv, &[]).await;
        assert_eq!(
            output.status.code(),
            Some(1),
            "{argv:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "{argv:?} says what is wrong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_uses_the_agent_tls_settings() {
    let pki = TestPki::new(&["backend.test"]);
    let dir = TempDir::new("probe-tls");
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let backend = HealthBackend::start_tls(&pki.cert_pem, &pki.key_pem).await;
    let address = format!("127.0.0.1:{}", backend.port());
    let probe = |extra: &'static [&'static str]| {
        let mut argv = vec![
            "probe".to_string(),
            address.clone(),
            "--tls".into(),
            "--authority".into(),
            "backend.test".into(),
        ];
        argv.extend(extra.iter().map(|a| a.to_string()));
        argv
    };
    let untrusted = probe(&[]);
    let untrusted: Vec<&str> = untrusted.iter().map(String::as_str).collect();
    let output = run(&untrusted, &[]).await;
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stdout(&output).starts_with("tls"), "{}", stdout(&output));

    // The CA from the environment, as the agent would take it.
    let output = run(
        &untrusted,
        &[("HAPROXY_AGENT_TLS_CA_FILE", ca.to_str().unwrap())],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).starts_with("SERVING"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prints_the_agent_reply() {
    let backend = HealthBackend::start().await;
    let agent = start_agent(&[]).await;
    let addr = agent.addr.to_string();
    let line = line_for(backend.port(), "");
    let output = run(&["query", "--agent", &addr, &line], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("up #SERVING"),
        "{}",
        stdout(&output)
    );

    let output = run(&["query", "--agent", &addr, "not a line"], &[]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).starts_with("down #bad request"),
        "{}",
        stdout(&output)
    );

    // A name resolves.
    let by_name = format!("localhost:{}", agent.addr.port());
    let output = run(&["query", "--agent", &by_name, &line], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("up #SERVING"),
        "{}",
        stdout(&output)
    );

    let output = run(&["query", "--agent", "5555", &line], &[]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("HOST:PORT"), "{}", stderr(&output));

    let nobody = format!("127.0.0.1:{}", closed_port());
    let output = run(&["query", "--agent", &nobody, &line], &[]).await;
    assert_eq!(output.status.code(), Some(69));
    assert!(stderr(&output).contains(&nobody), "{}", stderr(&output));
}
