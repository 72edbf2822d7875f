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
        // The weight option, with or without a service, in either place after the authority.
        (
            "h 50051 no-ssl api weight=orca",
            "h 50051 no-ssl api weight=orca",
        ),
        (
            "h 50051 no-ssl api my.pkg.Service weight=orca",
            "h 50051 no-ssl api my.pkg.Service weight=orca",
        ),
        (
            "h 50051 no-ssl api weight=none my.pkg.Service",
            "h 50051 no-ssl api my.pkg.Service weight=none",
        ),
        // The group option, before or after the others; written last.
        (
            "h 50051 no-ssl api group=eu-west.api_1 weight=orca",
            "h 50051 no-ssl api weight=orca group=eu-west.api_1",
        ),
        (
            "h 50051 no-ssl api group=g my.pkg.Service",
            "h 50051 no-ssl api my.pkg.Service group=g",
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
            "h 1 ssl a s weight=heavy",
            "down #bad request: unknown option \"weight=heavy\"; the options are weight=orca, weight=none and group=NAME",
        ),
        (
            "h 1 ssl a a=b",
            "down #bad request: unknown option \"a=b\"; the options are weight=orca, weight=none and group=NAME",
        ),
        (
            "h 1 ssl a weight=orca weight=none",
            "down #bad request: option \"weight\" given twice",
        ),
        (
            "h 1 ssl a group=a group=b",
            "down #bad request: option \"group\" given twice",
        ),
        (
            "h 1 ssl a group=",
            "down #bad request: invalid group \"\"; a group name is 1-64 letters, digits, '.', '-' or '_'",
        ),
        (
            "h 1 ssl a group=a/b",
            "down #bad request: invalid group \"a/b\"; a group name is 1-64 letters, digits, '.', '-' or '_'",
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
fn a_weight_goes_after_the_verdict_and_ready() {
    let mut reply = Reply::up("SERVING 0.4ms cpu 0.82");
    reply.weight = Some(35);
    assert_eq!(reply.to_line(), "up 35% #SERVING 0.4ms cpu 0.82\n");
    reply.ready = true;
    assert_eq!(reply.to_line(), "up ready 35% #SERVING 0.4ms cpu 0.82\n");
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
}

/// Encodes a `down` reply with `reason` and compares what follows `down #` with `expected`
/// (empty: the reply has no reason at all).
fn check_reason(reason: &str, expected: &str) {
    let line = Reply::down(reason).to_line();
    let shown = match line.strip_prefix("down #") {
        Some(shown) => shown.trim_end_matches('\n'),
        None => {
            assert_eq!(line, "down\n", "reason {reason:?}");
            ""
        }
    };
    assert_eq!(shown, expected, "reason {reason:?}");
    assert!(shown.len() <= MAX_REASON_LEN, "reason {reason:?}");
}

#[test]
fn urls_are_removed_from_reasons() {
    let table = [
        (
            "tls: invalid peer certificate: UnknownIssuer https://docs.rs/rustls/latest/rustls/enum.Error.html",
            "tls: invalid peer certificate: UnknownIssuer",
        ),
        (
            "tls: bad certificate (see <https://rustls.dev/errors#1>) for api.test",
            "tls: bad certificate (see for api.test",
        ),
        ("HTTP://EXAMPLE.COM/ answered 503", "answered 503"),
        ("see:https://example.com/x,", ""),
        ("https://a.example https://b.example", ""),
        ("a\thttp://x\tb", "a?b"),
        ("a  http://x  b", "a  b"),
        // Not URLs: another scheme, a mangled scheme, the scheme alone without slashes.
        (
            "grpc NOT_FOUND: unknown service x://y",
            "grpc NOT_FOUND: unknown service x://y",
        ),
        (
            "dns: httpx://h and http:/h and https",
            "dns: httpx://h and http:/h and https",
        ),
        // Leading and trailing whitespace is left alone when nothing is removed.
        ("  SERVING 0.4ms ", "  SERVING 0.4ms "),
    ];
    for (reason, expected) in table {
        check_reason(reason, expected);
    }
}

#[test]
fn long_reasons_are_cut_after_a_whole_word() {
    let issue_13 = "tls: invalid peer certificate: certificate not valid for name \"api.test.internal\"; \
                    certificate is only valid for DnsName(\"api.test\") or DnsName(\"*.test\")";
    let w = |n: usize| "w".repeat(n);
    let table: Vec<(String, String)> = vec![
        // At the bound: shown whole.
        (w(MAX_REASON_LEN), w(MAX_REASON_LEN)),
        (
            format!("{} end", w(MAX_REASON_LEN - 4)),
            format!("{} end", w(MAX_REASON_LEN - 4)),
        ),
        // One byte over: the last word goes, ` ...` says so.
        (
            format!("{} tail", w(MAX_REASON_LEN - 4)),
            format!("{} ...", w(MAX_REASON_LEN - 4)),
        ),
        // The first word alone leaves no room for ` ...`: it is cut inside.
        (
            format!("{} tail", w(MAX_REASON_LEN - 3)),
            format!("{}...", w(MAX_REASON_LEN - 3)),
        ),
        (w(500), format!("{}...", w(MAX_REASON_LEN - 3))),
        (
            format!("  {}", w(200)),
            format!("  {}...", w(MAX_REASON_LEN - 5)),
        ),
        // Spaces before the cut are not kept.
        (format!("{}   {}", w(100), w(30)), format!("{} ...", w(100))),
        // Bytes that become `?` count as they are shown.
        (
            format!("{} é {}", w(112), w(10)),
            format!("{} ?? ...", w(112)),
        ),
        (
            issue_13.to_string(),
            "tls: invalid peer certificate: certificate not valid for name \"api.test.internal\"; \
             certificate is only valid for ..."
                .to_string(),
        ),
        // URLs go first, so what they took no longer counts.
        (format!("{} https://docs.rs/{}", w(100), w(100)), w(100)),
    ];
    for (reason, expected) in table {
        check_reason(&reason, &expected);
    }
}

/// Properties over generated input: no byte string panics the parser, whatever it accepts
/// formats back to a line that parses to the same target, and every reply is one line.
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Words a request line is made of, valid and not, so generated lines reach every
    /// branch of the parser rather than failing at the first word.
    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("10.0.0.7".to_string()),
            Just("[::1]".to_string()),
            Just("::1".to_string()),
            Just("[fe80::1%eth0]".to_string()),
            Just("api.internal".to_string()),
            Just("API.Internal.".to_string()),
            Just("-bad-.name".to_string()),
            Just("50051".to_string()),
            Just("0".to_string()),
            Just("65536".to_string()),
            Just("-1".to_string()),
            Just("1e3".to_string()),
            Just("0x50".to_string()),
            Just("ssl".to_string()),
            Just("no-ssl".to_string()),
            Just("SSL".to_string()),
            Just("api.internal:443".to_string()),
            Just("[2001:db8::1]:443".to_string()),
            Just("[2001:db8::1]x".to_string()),
            Just("grpc.health.v1.Health".to_string()),
            "[a-z0-9.:\\[\\]-]{0,12}",
            any::<u16>().prop_map(|port| port.to_string()),
            proptest::collection::vec(any::<char>(), 0..6).prop_map(String::from_iter),
        ]
    }

    fn separator() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(" "),
            Just("  "),
            Just("\t"),
            Just(""),
            Just("\r"),
            Just("\0")
        ]
    }

    fn lines() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec((word(), separator()), 0..8).prop_map(|parts| {
                parts
                    .into_iter()
                    .flat_map(|(word, separator)| [word, separator.to_string()])
                    .collect::<String>()
                    .into_bytes()
            }),
        ]
    }

    /// Reasons of printable words, long ones and URLs among them, so cuts and removals
    /// happen often.
    fn reasons() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "[a-zA-Z0-9:;,()\"_.-]{1,12}",
            "[a-z]{20,130}",
            Just("https://docs.rs/rustls/latest/rustls/enum.Error.html".to_string()),
            Just("<HTTP://example.com/x>".to_string()),
        ];
        let separator = prop_oneof![Just(" "), Just("  ")];
        proptest::collection::vec((word, separator), 0..30).prop_map(|parts| {
            parts
                .into_iter()
                .flat_map(|(word, separator)| [word, separator.to_string()])
                .collect::<String>()
        })
    }

    /// Targets as the parser produces them (names lowercase, IPv6 canonical).
    fn targets() -> impl Strategy<Value = Target> {
        let label = "[a-z0-9_]([a-z0-9_-]{0,10}[a-z0-9_])?";
        let name = proptest::collection::vec(label, 1..4).prop_map(|labels| labels.join("."));
        let host = prop_oneof![
            any::<u32>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
            any::<u128>().prop_map(|ip| std::net::Ipv6Addr::from(ip).to_string()),
            name.clone().prop_filter("not all digits and dots", |name| {
                !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            }),
        ];
        let authority = prop_oneof![
            name.clone().prop_filter("a name, not an address", |name| {
                !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            }),
            (name, 1..=u16::MAX).prop_map(|(name, port)| format!("{name}:{port}")),
            any::<u128>().prop_map(|ip| format!("[{}]:443", std::net::Ipv6Addr::from(ip))),
        ];
        // No `=` in a service: that makes a word an option.
        let service = "[!-~&&[^#=]]{0,40}";
        let weight = prop_oneof![
            Just(WeightWord::Unset),
            Just(WeightWord::Orca),
            Just(WeightWord::None),
        ];
        let group = proptest::option::of("[a-zA-Z0-9._-]{1,64}");
        (
            host,
            1..=u16::MAX,
            any::<bool>(),
            authority,
            service,
            (weight, group),
        )
            .prop_map(
                |(host, port, tls, authority, service, (weight, group))| Target {
                    host,
                    port,
                    tls,
                    authority,
                    service,
                    weight,
                    group,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn any_bytes_parse_or_are_refused_and_accepted_lines_round_trip(line in lines()) {
            match parse_request(&line) {
                Ok(target) => {
                    let again = parse_request(target.to_request_line().as_bytes());
                    prop_assert_eq!(again, Ok(target));
                }
                Err(error) => {
                    let reply = Reply::bad_request(&error).to_line();
                    prop_assert!(reply.starts_with("down #bad request: "));
                }
            }
        }

        #[test]
        fn every_target_formats_to_a_line_that_parses_back(target in targets()) {
            let line = target.to_request_line();
            prop_assert_eq!(parse_request(line.as_bytes()), Ok(target.clone()));
            // The reader may hand the line over with its carriage return.
            prop_assert_eq!(parse_request(format!("{line}\r").as_bytes()), Ok(target));
        }

        #[test]
        fn cut_reasons_end_at_a_word_boundary_with_the_mark(reason in reasons()) {
            let line = Reply::down(reason.clone()).to_line();
            let shown = line.strip_prefix("down #").unwrap_or("").trim_end_matches('\n');
            prop_assert!(!shown.to_ascii_lowercase().contains("http://"));
            prop_assert!(!shown.to_ascii_lowercase().contains("https://"));
            prop_assert!(shown.len() <= MAX_REASON_LEN);
            let whole = without_urls(&reason);
            if whole.len() <= MAX_REASON_LEN {
                prop_assert_eq!(shown, &*whole);
            } else if let Some(words) = shown.strip_suffix(" ...") {
                // Whole words: the original goes on with a space after them.
                prop_assert!(whole.starts_with(words));
                prop_assert_eq!(whole.as_bytes()[words.len()], b' ');
                prop_assert!(!words.ends_with(' '));
            } else {
                // Only a first word longer than the bound is cut inside.
                let cut = shown.strip_suffix(CUT_MARK).expect("a cut reason ends with the mark");
                prop_assert_eq!(cut.len(), MAX_REASON_LEN - CUT_MARK.len());
                prop_assert!(whole.starts_with(cut));
                prop_assert!(!cut.trim_start().contains(' '));
            }
        }

        #[test]
        fn every_reply_is_one_printable_line(reason in any::<String>(), ready in any::<bool>()) {
            for verdict in [Verdict::Up, Verdict::Down, Verdict::Drain, Verdict::Maint] {
                let line = Reply { verdict, ready, weight: None, reason: reason.clone() }.to_line();
                prop_assert!(line.ends_with('\n'));
                prop_assert_eq!(line.matches('\n').count(), 1);
                prop_assert!(line.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
                prop_assert!(line.len() <= "maint ready #".len() + MAX_REASON_LEN + 1);
            }
        }
    }
}
