use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// Loads flags, an optional file body and environment variables; returns the settings or
/// the error lines.
fn load_with(
    flags: &[&str],
    file: Option<&str>,
    env: &[(&str, &str)],
) -> Result<Loaded, Vec<String>> {
    let dir = std::env::temp_dir().join(format!(
        "hga-config-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec!["haproxy-grpc-agent".to_string()];
    if let Some(body) = file {
        let path = dir.join("config.toml");
        std::fs::write(&path, body).unwrap();
        args.push("--config".into());
        args.push(path.display().to_string());
    }
    args.extend(flags.iter().map(|f| f.to_string()));
    let invocation = cli::parse(args).expect("the command line parses");
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.get(name).cloned();
    let layers = Layers {
        flags: invocation.flags,
        config_file: invocation.config_file,
        env: &lookup,
    };
    let result = load(&layers).map_err(|errors| errors.0.iter().map(|e| e.to_string()).collect());
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn winner(loaded: &Loaded, key: &str) -> (String, String) {
    let value = &loaded.resolved[key];
    let source = match &value.source {
        Source::File { key, .. } => format!("file {key}"),
        other => other.to_string(),
    };
    (value.text.clone(), source)
}

#[test]
fn durations() {
    let table: [(&str, Result<Duration, ()>); 10] = [
        ("500ms", Ok(Duration::from_millis(500))),
        ("1500", Ok(Duration::from_millis(1500))),
        ("2s", Ok(Duration::from_secs(2))),
        ("5m", Ok(Duration::from_secs(300))),
        ("1h", Ok(Duration::from_secs(3600))),
        ("1d", Ok(Duration::from_secs(86400))),
        ("250us", Ok(Duration::from_micros(250))),
        ("", Err(())),
        ("1.5s", Err(())),
        ("2 s", Err(())),
    ];
    for (text, expected) in table {
        assert_eq!(parse_duration(text).map_err(|_| ()), expected, "{text:?}");
    }
}

#[test]
fn defaults_are_valid() {
    let settings = Settings::defaults();
    assert_eq!(settings.agent_addr, "0.0.0.0:5555".parse().unwrap());
    assert_eq!(settings.metrics_addr, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(settings.oracle.stale_after, Duration::from_millis(8500));
    assert_eq!(settings.logging.filter, "info");
}

#[test]
fn precedence_flag_over_file_over_env_over_default() {
    let file = "rise = 4\ncheck_interval = \"3s\"\n";
    let env = [
        ("HAPROXY_AGENT_RISE", "5"),
        ("HAPROXY_AGENT_CHECK_INTERVAL", "4s"),
        ("HAPROXY_AGENT_FALL", "6"),
    ];
    let loaded = load_with(&["--rise", "7"], Some(file), &env).unwrap();
    // flag > file, file > env, env > default, default alone.
    assert_eq!(winner(&loaded, "rise"), ("7".into(), "flag --rise".into()));
    assert_eq!(
        winner(&loaded, "check_interval"),
        ("3s".into(), "file check_interval".into())
    );
    assert_eq!(
        winner(&loaded, "fall"),
        ("6".into(), "environment HAPROXY_AGENT_FALL".into())
    );
    assert_eq!(
        winner(&loaded, "miss_timeout"),
        ("1000ms".into(), "default".into())
    );
    // flag > env without a file.
    let loaded = load_with(&["--fall", "2"], None, &env).unwrap();
    assert_eq!(winner(&loaded, "fall"), ("2".into(), "flag --fall".into()));
    assert_eq!(loaded.settings.oracle.poller.rise, 5);
}

#[test]
fn united_traders_config_file_loads_unchanged() {
    // A configuration written for UnitedTraders/haproxy-grpc-agent, [logging] included.
    let file = r#"
server_port = 6000
server_bind_address = "127.0.0.1"
grpc_connect_timeout_ms = 800
grpc_rpc_timeout_ms = 1200
metrics_port = 9191
metrics_bind_address = "0.0.0.0"
log_level = "warn"
log_format = "pretty"

[logging]
destination = "console"
level = "debug"
file_path = "/var/log/ignored-for-console.log"

[logging.packages]
"haproxy_grpc_agent::probe" = "trace"
"tonic" = "warn"
"#;
    let settings = load_with(&[], Some(file), &[]).unwrap().settings;
    assert_eq!(settings.agent_addr, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(settings.metrics_addr, "0.0.0.0:9191".parse().unwrap());
    assert_eq!(settings.probe.connect_timeout, Duration::from_millis(800));
    assert_eq!(settings.probe.rpc_timeout, Duration::from_millis(1200));
    // [logging].level wins over the top-level log_level, as in UnitedTraders.
    assert_eq!(
        settings.logging.filter,
        "debug,haproxy_grpc_agent::probe=trace,tonic=warn"
    );
    assert_eq!(settings.logging.format, LogFormat::Pretty);
    assert_eq!(settings.logging.file, None);
}

#[test]
fn united_traders_file_destination() {
    let file = "[logging]\ndestination = \"file\"\nfile_path = \"/tmp/agent.log\"\nfile_rotation = \"daily\"\nfile_max_files = 5\n";
    let logging = load_with(&[], Some(file), &[]).unwrap().settings.logging;
    assert_eq!(logging.file, Some(PathBuf::from("/tmp/agent.log")));
    assert_eq!(logging.rotation, LogRotation::Daily);
    assert_eq!(logging.max_files, Some(5));
    let missing_path =
        load_with(&[], Some("[logging]\ndestination = \"file\"\n"), &[]).unwrap_err();
    assert!(
        missing_path[0].starts_with("log_destination = \"file\" (from file ")
            && missing_path[0].contains("file_path"),
        "{missing_path:?}"
    );
}

#[test]
fn united_traders_logging_and_channel_cache_names_in_every_layer() {
    let env = [
        ("HAPROXY_AGENT_LOG_DESTINATION", "file"),
        ("HAPROXY_AGENT_LOG_FILE_PATH", "/tmp/from-env.log"),
        ("HAPROXY_AGENT_LOG_FILE_ROTATION", "hourly"),
        ("HAPROXY_AGENT_LOG_FILE_MAX_FILES", "3"),
        ("HAPROXY_AGENT_GRPC_CHANNEL_CACHE", "false"),
    ];
    let loaded = load_with(&[], None, &env).unwrap();
    let logging = &loaded.settings.logging;
    assert_eq!(logging.file, Some(PathBuf::from("/tmp/from-env.log")));
    assert_eq!(logging.rotation, LogRotation::Hourly);
    assert_eq!(logging.max_files, Some(3));
    assert!(!loaded.settings.probe.channel_cache);
    assert_eq!(
        winner(&loaded, "log_file"),
        (
            "/tmp/from-env.log".into(),
            "environment HAPROXY_AGENT_LOG_FILE_PATH".into()
        )
    );
    let flags = [
        "--log-destination",
        "console",
        "--log-file-path",
        "/tmp/from-flag.log",
        "--grpc-channel-cache",
        "true",
    ];
    let settings = load_with(&flags, None, &env).unwrap().settings;
    assert_eq!(settings.logging.file, None, "console ignores the path");
    assert!(settings.probe.channel_cache);
    let file = "grpc_channel_cache_enabled = false\n";
    assert!(
        !load_with(&[], Some(file), &[])
            .unwrap()
            .settings
            .probe
            .channel_cache
    );
    assert!(Settings::defaults().probe.channel_cache);
}

#[test]
fn united_traders_env_and_flags() {
    let env = [
        ("HAPROXY_AGENT_SERVER_PORT", "7000"),
        ("HAPROXY_AGENT_SERVER_BIND", "127.0.0.2"),
        ("HAPROXY_AGENT_METRICS_PORT", "7001"),
        ("HAPROXY_AGENT_METRICS_BIND", "127.0.0.3"),
        ("HAPROXY_AGENT_LOG_LEVEL", "error"),
        ("HAPROXY_AGENT_LOG_FORMAT", "pretty"),
        ("HAPROXY_AGENT_GRPC_CONNECT_TIMEOUT", "700"),
        ("HAPROXY_AGENT_GRPC_RPC_TIMEOUT", "900"),
    ];
    let settings = load_with(&[], None, &env).unwrap().settings;
    assert_eq!(settings.agent_addr, "127.0.0.2:7000".parse().unwrap());
    assert_eq!(settings.metrics_addr, "127.0.0.3:7001".parse().unwrap());
    assert_eq!(settings.logging.filter, "error");
    assert_eq!(settings.logging.format, LogFormat::Pretty);
    assert_eq!(settings.probe.connect_timeout, Duration::from_millis(700));
    assert_eq!(settings.probe.rpc_timeout, Duration::from_millis(900));
    let flags = [
        "--server-port",
        "7100",
        "--server-bind",
        "::1",
        "--metrics-port",
        "7101",
        "--metrics-bind",
        "::1",
        "--log-level",
        "warn",
        "--log-format",
        "json",
        "--grpc-connect-timeout",
        "300",
        "--grpc-rpc-timeout",
        "400",
    ];
    let settings = load_with(&flags, None, &env).unwrap().settings;
    assert_eq!(settings.agent_addr, "[::1]:7100".parse().unwrap());
    assert_eq!(settings.metrics_addr, "[::1]:7101".parse().unwrap());
    assert_eq!(settings.logging.filter, "warn");
    assert_eq!(settings.probe.connect_timeout, Duration::from_millis(300));
    assert_eq!(settings.probe.rpc_timeout, Duration::from_millis(400));
}

#[test]
fn maps_from_every_layer() {
    let file = "[grpc_metadata]\nx-team = \"edge\"\n\n[log_modules]\n\"haproxy_grpc_agent::oracle\" = \"debug\"\n";
    let settings = load_with(&[], Some(file), &[]).unwrap().settings;
    assert_eq!(
        settings.probe.metadata,
        [("x-team".to_string(), "edge".to_string())]
    );
    assert_eq!(
        settings.logging.filter,
        "info,haproxy_grpc_agent::oracle=debug"
    );
    let env = [("HAPROXY_AGENT_GRPC_METADATA", "a=1,b=2")];
    let settings = load_with(
        &["--grpc-metadata", "c=3", "--grpc-metadata", "d=4"],
        None,
        &env,
    )
    .unwrap()
    .settings;
    assert_eq!(
        settings.probe.metadata,
        [("c".into(), "3".into()), ("d".into(), "4".into())]
    );
    let settings = load_with(&[], None, &env).unwrap().settings;
    assert_eq!(
        settings.probe.metadata,
        [("a".into(), "1".into()), ("b".into(), "2".into())]
    );
}

#[test]
fn allowlists_from_every_layer() {
    use crate::allowlist::{Admission, Allowlist};
    let admits = |settings: &Settings, host: &str, port: u16| {
        settings.probe.allowlist.admit(host, port) == Admission::Allowed
    };
    let file = "allow_backends = [\"10.0.0.0/8:50051\", \"192.0.2.0/24\"]\nallow_sources = [\"10.1.0.0/16\"]\n";
    let settings = load_with(&[], Some(file), &[]).unwrap().settings;
    assert!(admits(&settings, "10.2.3.4", 50051));
    assert!(!admits(&settings, "10.2.3.4", 50052));
    assert!(admits(&settings, "192.0.2.9", 1));
    assert!(
        settings
            .responder
            .sources
            .allows("10.1.2.3".parse().unwrap())
    );
    assert!(
        !settings
            .responder
            .sources
            .allows("10.2.0.1".parse().unwrap())
    );
    // Singular aliases in every layer; the environment is comma-separated.
    let env = [("HAPROXY_AGENT_ALLOW_BACKEND", "10.0.0.0/8,192.0.2.0/24:443")];
    let settings = load_with(&[], None, &env).unwrap().settings;
    assert_eq!(settings.probe.allowlist.rules().len(), 2);
    let settings = load_with(
        &[
            "--allow-backend",
            "127.0.0.1:1-9",
            "--allow-source",
            "127.0.0.1",
        ],
        None,
        &env,
    )
    .unwrap()
    .settings;
    assert!(admits(&settings, "127.0.0.1", 9));
    assert!(
        !admits(&settings, "10.0.0.1", 9),
        "the flag replaces the environment"
    );
    assert_eq!(
        *settings.probe.allowlist,
        Allowlist::parse(["127.0.0.1:1-9"]).unwrap()
    );
    // Unset: everything is allowed.
    let settings = load_with(&[], None, &[]).unwrap().settings;
    assert!(settings.probe.allowlist.is_empty() && settings.responder.sources.is_empty());
}

/// One validation case: flags, a config file body, environment variables, and a fragment
/// the single error line must contain.
type Case<'a> = (
    &'a [&'a str],
    Option<&'a str>,
    &'a [(&'a str, &'a str)],
    &'a str,
);

/// Each rule: the inputs and a fragment the single error line must contain.
#[test]
fn every_validation_rule_names_setting_layer_value_and_fix() {
    let table: &[Case] = &[
        (
            &["--allow-backend", "10.0.0.0/40"],
            None,
            &[],
            r#"allow_backends = "10.0.0.0/40" (from flag --allow-backends): "10.0.0.0/40": the prefix length must be 0 to 32"#,
        ),
        (
            &[],
            None,
            &[("HAPROXY_AGENT_ALLOW_SOURCES", "10.0.0.0/8,*.internal")],
            r#"allow_sources = "10.0.0.0/8,*.internal" (from environment HAPROXY_AGENT_ALLOW_SOURCES): "*.internal" is not an IP address or CIDR"#,
        ),
        (
            &["--server-port", "70000"],
            None,
            &[],
            r#"server_port = "70000" (from flag --server-port): not a port; use 0-65535"#,
        ),
        (
            &[],
            Some("server_port = \"x\""),
            &[],
            r#"server_port = "x" (from file "#,
        ),
        (
            &[],
            None,
            &[("HAPROXY_AGENT_SERVER_BIND", "localhost")],
            r#"server_bind = "localhost" (from environment HAPROXY_AGENT_SERVER_BIND): not an IP address"#,
        ),
        (
            &["--max-connections", "0"],
            None,
            &[],
            "max_connections = \"0\" (from flag --max-connections): out of range; use a whole number from 1 to 1000000",
        ),
        (
            &["--max-connections", "18446744073709551615"],
            None,
            &[],
            "max_connections = \"18446744073709551615\" (from flag --max-connections): out of range; use a whole number from 1 to 1000000",
        ),
        (
            &["--max-targets", "18446744073709551615"],
            None,
            &[],
            "max_targets = \"18446744073709551615\" (from flag --max-targets): out of range; use a whole number from 1 to 100000000",
        ),
        (
            &["--idle-ttl", "400000d"],
            None,
            &[],
            "idle_ttl = \"400000d\" (from flag --idle-ttl): too long; use at most 365d",
        ),
        (
            &["--check-interval", "366d"],
            None,
            &[],
            "check_interval = \"366d\" (from flag --check-interval): too long; use at most 365d",
        ),
        (
            &["--max-line", "8"],
            None,
            &[],
            "max_line = \"8\" (from flag --max-line): out of range; use a whole number from 16 to 65536",
        ),
        (
            &["--read-deadline", "0"],
            None,
            &[],
            "read_deadline = \"0\" (from flag --read-deadline): must be above 0",
        ),
        (
            &["--grpc-connect-timeout", "fast"],
            None,
            &[],
            "grpc_connect_timeout = \"fast\" (from flag --grpc-connect-timeout): not a duration",
        ),
        (
            &["--check-interval", "5ms"],
            None,
            &[],
            "check_interval = \"5ms\" (from flag --check-interval): must be at least 10ms",
        ),
        (
            &["--check-jitter", "60"],
            None,
            &[],
            "check_jitter = \"60\" (from flag --check-jitter): out of range; use a whole number from 0 to 50",
        ),
        (
            &["--rise", "0"],
            None,
            &[],
            "rise = \"0\" (from flag --rise): out of range",
        ),
        (
            &["--fall", "0"],
            None,
            &[],
            "fall = \"0\" (from flag --fall): out of range",
        ),
        (
            &["--not-serving-reply", "up"],
            None,
            &[],
            "not_serving_reply = \"up\" (from flag --not-serving-reply): use one of: down, drain, maint",
        ),
        (
            &["--unimplemented-reply", "drain"],
            None,
            &[],
            "unimplemented_reply = \"drain\" (from flag --unimplemented-reply): use one of: up, down",
        ),
        (
            &["--log-level", "loud"],
            None,
            &[],
            "log_level = \"loud\" (from flag --log-level): use one of: trace, debug, info, warn, error, off",
        ),
        (
            &["--log-format", "xml"],
            None,
            &[],
            "log_format = \"xml\" (from flag --log-format): use one of: json, pretty",
        ),
        (
            &["--log-modules", "tonic"],
            None,
            &[],
            "log_modules = \"tonic\" (from flag --log-modules): \"tonic\" is not name=value",
        ),
        (
            &["--grpc-metadata", "te=x"],
            None,
            &[],
            "grpc_metadata = <redacted> (from flag --grpc-metadata): \"te\" is reserved",
        ),
        (
            &["--grpc-metadata", "Bad Name=x"],
            None,
            &[],
            "is not a valid metadata name",
        ),
        (
            &["--tls-ca-file", "/nonexistent/ca.pem"],
            None,
            &[],
            "tls_ca_file = \"/nonexistent/ca.pem\" (from flag --tls-ca-file): cannot be read",
        ),
        (
            &["--tls-insecure-skip-verify", "maybe"],
            None,
            &[],
            "tls_insecure_skip_verify = \"maybe\" (from flag --tls-insecure-skip-verify): not a boolean",
        ),
        (
            &["--metrics-port", "5555"],
            None,
            &[],
            "metrics_port = \"5555\" (from flag --metrics-port): is the same as server_port (5555)",
        ),
        (
            &["--miss-timeout", "3s"],
            None,
            &[],
            "miss_timeout = \"3s\" (from flag --miss-timeout): 3s exceeds grpc_connect_timeout + grpc_rpc_timeout (2.5s)",
        ),
        (
            &["--idle-ttl", "1s"],
            None,
            &[],
            "idle_ttl = \"1s\" (from flag --idle-ttl): 1s is shorter than check_interval (2s)",
        ),
        (
            &["--stale-after", "3s"],
            None,
            &[],
            "stale_after = \"3s\" (from flag --stale-after): 3s must exceed check_interval plus both gRPC timeouts (4.5s)",
        ),
        (&[], Some("bogus = 1"), &[], "bogus (from file "),
        (
            &[],
            Some("rise = [1]"),
            &[],
            "expects a string, number or boolean, not array",
        ),
        (&[], Some("rise = "), &[], "not valid TOML"),
        (
            &[],
            Some("[logging]\nwhatever = 1"),
            &[],
            "logging.whatever (from file ",
        ),
    ];
    for (flags, file, env, expected) in table {
        let errors = load_with(flags, *file, env).expect_err(expected);
        assert_eq!(errors.len(), 1, "{flags:?} {file:?}: {errors:?}");
        assert!(
            errors[0].contains(expected),
            "{flags:?} {file:?}:\n  got  {}\n  want {expected}",
            errors[0]
        );
    }
}

#[test]
fn tls_pairs_and_conflicts() {
    let dir = std::env::temp_dir().join(format!("hga-tls-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("x.pem");
    std::fs::write(&pem, "not checked here").unwrap();
    let pem = pem.to_str().unwrap();
    let errors = load_with(&["--tls-cert-file", pem], None, &[]).unwrap_err();
    assert!(
        errors[0].contains("tls_cert_file and tls_key_file go together"),
        "{errors:?}"
    );
    let errors = load_with(&["--tls-key-file", pem], None, &[]).unwrap_err();
    assert!(errors[0].starts_with("tls_key_file"), "{errors:?}");
    let errors = load_with(
        &["--tls-insecure-skip-verify", "--tls-ca-file", pem],
        None,
        &[],
    )
    .unwrap_err();
    assert!(
        errors[0].contains("cannot be combined with tls_ca_file"),
        "{errors:?}"
    );
    assert!(load_with(&["--tls-cert-file", pem, "--tls-key-file", pem], None, &[]).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_problem_is_reported_at_once() {
    let errors = load_with(
        &["--rise", "0", "--fall", "x"],
        Some("max_line = 1\nbogus = 2\ncheck_jitter = [5]\n"),
        &[("HAPROXY_AGENT_SERVER_PORT", "-1")],
    )
    .unwrap_err();
    let keys: Vec<&str> = errors
        .iter()
        .map(|e| e.split(' ').next().unwrap())
        .collect();
    // The file's own problems (unknown key, wrong type) first, then every bad value.
    assert_eq!(
        keys,
        [
            "bogus",
            "check_jitter",
            "server_port",
            "max_line",
            "rise",
            "fall"
        ],
        "{errors:#?}"
    );
}

#[test]
fn every_setting_has_a_name_of_its_own() {
    // The `key` constants turn a misspelt name into a compile error; a name pasted onto a
    // second setting would still compile, so no two settings or aliases may share one.
    let mut names: Vec<&str> = spec::SETTINGS
        .iter()
        .flat_map(|spec| std::iter::once(spec.key).chain(spec.aliases.iter().copied()))
        .collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a name is used twice in SETTINGS");
}
