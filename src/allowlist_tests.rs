use super::*;

fn list(entries: &[&str]) -> Allowlist {
    Allowlist::parse(entries.iter().copied()).unwrap()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn cidrs_contain_what_they_should() {
    let net = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(net.contains("10.1.255.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    // A dual-stack socket's view of an IPv4 peer.
    assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
    let v6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(v6.contains("2001:db8:1::7".parse().unwrap()));
    assert!(!v6.contains("2001:db9::7".parse().unwrap()));
    assert!(!v6.contains("10.1.0.1".parse().unwrap()));
    // Host bits are ignored; a bare address is one host; /0 is everything of a family.
    assert_eq!(Cidr::parse("10.1.2.3/16").unwrap(), net);
    assert!(
        Cidr::parse("192.0.2.7")
            .unwrap()
            .contains("192.0.2.7".parse().unwrap())
    );
    assert!(
        !Cidr::parse("192.0.2.7")
            .unwrap()
            .contains("192.0.2.8".parse().unwrap())
    );
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
}

#[test]
fn bad_entries_say_what_is_wrong() {
    for (entry, expected) in [
        ("", "empty entry"),
        ("10.0.0.0/33", "prefix length must be 0 to 32"),
        ("10.0.0.256", "not an IP address or CIDR"),
        ("10.0.0.0/8:0", "not a port"),
        ("10.0.0.0/8:70000", "not a port"),
        ("10.0.0.0/8:90-80", "port range 90-80 is empty"),
        ("api internal", "neither a CIDR nor a hostname glob"),
        ("[2001:db8::/32", "no closing ]"),
        ("[2001:db8::/32]443", "expected :port after ]"),
        ("a/b", "neither a CIDR nor a hostname glob"),
    ] {
        let error = Rule::parse(entry).unwrap_err();
        assert!(error.contains(expected), "{entry:?}: {error}");
    }
}

#[test]
fn rules_print_back_as_they_parse() {
    for entry in [
        "10.0.0.0/8",
        "10.0.0.0/8:50051",
        "10.0.0.0/8:50000-50100",
        "*.internal:443",
        "[2001:db8::/32]:443",
        "2001:db8::/32",
    ] {
        let rule = Rule::parse(entry).unwrap();
        assert_eq!(Rule::parse(&rule.to_string()).unwrap(), rule, "{entry}");
    }
    assert_eq!(
        Rule::parse("API.Internal").unwrap().to_string(),
        "api.internal"
    );
}

#[test]
fn an_empty_list_allows_everything() {
    let open = Allowlist::default();
    assert_eq!(open.admit("169.254.169.254", 80), Admission::Allowed);
    assert_eq!(open.admit("anything", 1), Admission::Allowed);
    assert!(open.allows_address(addr("127.0.0.1:22")));
}

#[test]
fn addresses_need_an_address_rule_with_their_port() {
    let allow = list(&[
        "10.0.0.0/8:50051",
        "192.0.2.0/24:8000-8100",
        "[2001:db8::/32]:443",
    ]);
    assert_eq!(allow.admit("10.9.9.9", 50051), Admission::Allowed);
    assert_eq!(allow.admit("10.9.9.9", 50052), Admission::Denied);
    assert_eq!(allow.admit("192.0.2.1", 8050), Admission::Allowed);
    assert_eq!(allow.admit("192.0.2.1", 8101), Admission::Denied);
    assert_eq!(allow.admit("127.0.0.1", 50051), Admission::Denied);
    assert_eq!(allow.admit("2001:db8::1", 443), Admission::Allowed);
    assert_eq!(allow.admit("[2001:db8::1]", 443), Admission::Allowed);
    assert_eq!(allow.admit("2001:db9::1", 443), Admission::Denied);
}

#[test]
fn names_match_globs_and_are_checked_again_after_resolution() {
    // Names only: the name decides; addresses are not restricted.
    let names = list(&["*.svc.internal:50051", "api-?.example"]);
    assert_eq!(
        names.admit("orders.svc.internal", 50051),
        Admission::Allowed
    );
    assert_eq!(names.admit("a.b.svc.internal", 50051), Admission::Allowed);
    assert_eq!(
        names.admit("ORDERS.svc.internal.", 50051),
        Admission::Allowed
    );
    assert_eq!(names.admit("orders.svc.internal", 50052), Admission::Denied);
    assert_eq!(names.admit("svc.internal", 50051), Admission::Denied);
    assert_eq!(names.admit("api-1.example", 9), Admission::Allowed);
    assert_eq!(names.admit("api-12.example", 9), Admission::Denied);
    // An IP literal needs an address rule, and there is none.
    assert_eq!(names.admit("10.0.0.1", 50051), Admission::Denied);
    assert!(names.allows_address(addr("127.0.0.1:50051")));

    // Addresses only: any name, but only to allowed addresses.
    let addresses = list(&["10.0.0.0/8"]);
    assert_eq!(
        addresses.admit("anything.example", 80),
        Admission::CheckAddresses
    );
    assert!(addresses.allows_address(addr("10.3.2.1:80")));
    assert!(!addresses.allows_address(addr("127.0.0.1:80")));

    // Both: the name must match and its addresses must be allowed.
    let both = list(&["*.internal", "10.0.0.0/8"]);
    assert_eq!(both.admit("db.internal", 5432), Admission::CheckAddresses);
    assert_eq!(both.admit("db.example", 5432), Admission::Denied);
    assert!(!both.allows_address(addr("169.254.169.254:80")));
}

#[test]
fn globs() {
    for (pattern, name, expected) in [
        ("*", "", true),
        ("*", "a.b", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbb", false),
        ("*.x", "a.x", true),
        ("*.x", ".x", true),
        ("*.x", "x", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("*a*b*", "xxaxxbxx", true),
        ("*a*b", "xxaxxbxxc", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob_match(pattern, name), expected, "{pattern} vs {name}");
    }
}

#[test]
fn sources() {
    let sources = Sources::parse(["10.0.0.0/8", "127.0.0.1"]).unwrap();
    assert!(sources.allows("10.4.4.4".parse().unwrap()));
    assert!(sources.allows("127.0.0.1".parse().unwrap()));
    assert!(sources.allows("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!sources.allows("127.0.0.2".parse().unwrap()));
    assert!(Sources::default().allows("192.0.2.1".parse().unwrap()));
    assert!(Sources::parse(["*.internal"]).is_err());
}
