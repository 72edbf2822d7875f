use super::*;

/// Parses `line` and compares the outcome with `expected`: the canonical request line of the
/// target, or the reply a refused line gets.
fn check(line: &str, expected: &str) {
    let got = match parse_request(line.as_bytes()) {
        Ok(target) => target.to_request_line(),
        Err(error) => Reply::bad_request(&error).to_line(),
    };
    assert_eq!(got.trim_end_matches('\n'), expected, "line {line:?}");
}

#[test]
fn accepted_forms() {
    let table = [
        (
            "10.0.0.7 50051 no-ssl api.internal",
            "10.0.0.7 50051 no-ssl api.internal",
        ),
        (
            "10.0.0.7 50051 no-ssl api.internal\r",
            "10.0.0.7 50051 no-ssl api.internal",
        ),
        (
            "10.0.0.7\t50051  ssl\t api.internal",
            "10.0.0.7 50051 ssl api.internal",
        ),
        (
            "  10.0.0.7 50051 ssl api.internal  ",
            "10.0.0.7 50051 ssl api.internal",
        ),
        (
            "Backend-1.Example.com 1 ssl api",
            "backend-1.example.com 1 ssl api",
        ),
        (
            "backend.example.com. 65535 ssl api",
            "backend.example.com. 65535 ssl api",
        ),
        ("svc_a.local 080 no-ssl api", "svc_a.local 80 no-ssl api"),
        ("::1 50051 no-ssl localhost", "[::1] 50051 no-ssl localhost"),
        (
            "[::1] 50051 no-ssl localhost",
            "[::1] 50051 no-ssl localhost",
        ),
        (
            "[2001:DB8::0:1] 443 ssl [2001:db8::1]:443",
            "[2001:db8::1] 443 ssl [2001:db8::1]:443",
        ),
        ("h 443 ssl api.internal:8443", "h 443 ssl api.internal:8443"),
        ("h 443 ssl 10.1.2.3", "h 443 ssl 10.1.2.3"),
        ("h 443 ssl 10.1.2.3:443", "h 443 ssl 10.1.2.3:443"),
        (
            "h 50051 no-ssl api my.pkg.Service",
            "h 50051 no-ssl api my.pkg.Service",
        ),
        (
            "h 50051 no-ssl api grpc.health.v1.Health",
            "h 50051 no-ssl api grpc.health.v1.Health",
        ),
    ];
    for (line, expected) in table {
        check(line, expected);
    }
}

#[test]
fn rejected_forms() {
    let long_host = format!("{}.com", "a".repeat(250));
    let long_label = format!("{}.com", "a".repeat(64));
    let long_service = format!("h 1 ssl a {}", "s".repeat(MAX_SERVICE_LEN + 1));
    let table: Vec<(&str, &str)> = vec![
        ("", "down #bad request: empty line"),
        ("   \t ", "down #bad request: empty line"),
        ("\r", "down #bad request: empty line"),
        (
            "h",
            "down #bad request: expected 4 or 5 words (host port ssl|no-ssl authority [service]), got 1",
        ),
        (
            "h 1 ssl",
            "down #bad request: expected 4 or 5 words (host port ssl|no-ssl authority [service]), got 3",
        ),
        (
            "h 1 ssl a s extra",
            "down #bad request: expected 4 or 5 words (host port ssl|no-ssl authority [service]), got 6",
        ),
        (
            "h 0 ssl a",
            "down #bad request: port 0 out of range (1-65535)",
        ),
        (
            "h 65536 ssl a",
            "down #bad request: port 65536 out of range (1-65535)",
        ),
        (
            "h 99999 ssl a",
            "down #bad request: port 99999 out of range (1-65535)",
        ),
        (
            "h 123456789012345678901234567890 ssl a",
            "down #bad request: port 123456789012345678901234... out of range (1-65535)",
        ),
        (
            "h -1 ssl a",
            "down #bad request: port \"-1\" is not a number",
        ),
        (
            "h +80 ssl a",
            "down #bad request: port \"+80\" is not a number",
        ),
        (
            "h 1e3 ssl a",
            "down #bad request: port \"1e3\" is not a number",
        ),
        (
            "h 0x50 ssl a",
            "down #bad request: port \"0x50\" is not a number",
        ),
        (
            "h 1 SSL a",
            "down #bad request: tls word \"SSL\" must be ssl or no-ssl",
        ),
        (
            "h 1 tls a",
            "down #bad request: tls word \"tls\" must be ssl or no-ssl",
        ),
        (
            "h 1 nossl a",
            "down #bad request: tls word \"nossl\" must be ssl or no-ssl",
        ),
        ("-h 1 ssl a", "down #bad request: invalid host \"-h\""),
        ("a..b 1 ssl a", "down #bad request: invalid host \"a..b\""),
        ("a/b 1 ssl a", "down #bad request: invalid host \"a/b\""),
        (
            "999.1.1.1 1 ssl a",
            "down #bad request: invalid host \"999.1.1.1\"",
        ),
        ("1.2.3 1 ssl a", "down #bad request: invalid host \"1.2.3\""),
        ("[::1 1 ssl a", "down #bad request: invalid host \"[::1\""),
        (
            "[10.0.0.1] 1 ssl a",
            "down #bad request: invalid host \"[10.0.0.1]\"",
        ),
        ("::g 1 ssl a", "down #bad request: invalid host \"::g\""),
        (
            "fe80::1%eth0 1 ssl a",
            "down #bad request: invalid host \"fe80::1%eth0\"",
        ),
        (
            &long_host,
            "down #bad request: expected 4 or 5 words (host port ssl|no-ssl authority [service]), got 1",
        ),
        (
            "h 1 ssl user@api",
            "down #bad request: invalid authority \"user@api\"",
        ),
        (
            "h 1 ssl api/path",
            "down #bad request: invalid authority \"api/path\"",
        ),
        (
            "h 1 ssl api:0",
            "down #bad request: invalid authority \"api:0\"",
        ),
        (
            "h 1 ssl api:x",
            "down #bad request: invalid authority \"api:x\"",
        ),
        (
            "h 1 ssl [::1]x",
            "down #bad request: invalid authority \"[::1]x\"",
        ),
        (
            "h 1 ssl [zz]:1",
            "down #bad request: invalid authority \"[zz]:1\"",
        ),
        (
            "h 1 ssl a\0b",
            "down #bad request: control character in line",
        ),
        (
            "h 1 ssl a\x1b[2J",
            "down #bad request: control character in line",
        ),
        (
            &long_service,
            "down #bad request: service name longer than 256 bytes",
        ),
    ];
    for (line, expected) in table {
        check(line, expected);
    }
    let long_host_line = format!("{long_host} 1 ssl a");
    check(
        &long_host_line,
        &format!("down #bad request: invalid host \"{}...\"", "a".repeat(24)),
    );
    let long_label_line = format!("{long_label} 1 ssl a");
    check(
        &long_label_line,
        &format!("down #bad request: invalid host \"{}...\"", "a".repeat(24)),
    );
}

#[test]
fn non_utf8_is_a_bad_request() {
    let error = parse_request(b"h\xff 1 ssl a").unwrap_err();
    assert_eq!(
        Reply::bad_request(&error).to_line(),
        "down #bad request: not UTF-8\n"
    );
}

#[test]
fn reply_lines() {
    let table = [
        (Reply::up("SERVING 0.7ms"), "up #SERVING 0.7ms\n"),
        (Reply::down("NOT_SERVING"), "down #NOT_SERVING\n"),
        (Reply::up(""), "up\n"),
        (
            Reply::new(Verdict::Drain, "NOT_SERVING"),
            "drain #NOT_SERVING\n",
        ),
        (
            Reply::new(Verdict::Maint, "NOT_SERVING"),
            "maint #NOT_SERVING\n",
        ),
        (
            Reply {
                ready: true,
                ..Reply::up("SERVING 1.0ms")
            },
            "up ready #SERVING 1.0ms\n",
        ),
        (
            Reply::down("line\nbreak\ttab é"),
            "down #line?break?tab ??\n",
        ),
    ];
    for (reply, expected) in table {
        assert_eq!(reply.to_line(), expected);
    }
    let long = Reply::down("x".repeat(500)).to_line();
    assert_eq!(long.len(), "down #".len() + MAX_REASON_LEN + 1);
}
