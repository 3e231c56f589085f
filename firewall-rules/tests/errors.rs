//! Every validation error of the rule language, with its position, and the
//! rule that the whole file is refused with all of its problems listed.

use std::path::Path;

use firewall_rules::{RuleErrorKind, RuleErrors, RuleSet};

fn refuse(text: &str) -> RuleErrors {
    match RuleSet::parse(text, Path::new("rules.toml")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The single error of a one-rule `[[out]]` file with `body` as its fields.
fn rule_error(body: &str) -> (usize, usize, String, RuleErrorKind) {
    let errors = refuse(&format!("[[out]]\naction = \"deny\"\n{body}\n"));
    assert_eq!(errors.errors().len(), 1, "{errors}");
    let e = &errors.errors()[0];
    (e.line, e.column, e.place.clone(), e.kind.clone())
}

#[test]
fn host_bits_are_refused_with_the_network_meant() {
    let (line, col, place, kind) = rule_error("dst = \"10.1.2.3/8\"");
    assert_eq!((line, col, place.as_str()), (3, 7, "out[0].dst"));
    assert_eq!(
        kind,
        RuleErrorKind::HostBits {
            value: "10.1.2.3/8".into(),
            network: "10.0.0.0/8".into()
        }
    );
    let (.., kind) = rule_error("src = \"2001:db8::1/32\"");
    assert!(matches!(kind, RuleErrorKind::HostBits { network, .. } if network == "2001:db8::/32"));
}

#[test]
fn bad_cidrs_are_refused() {
    for bad in [
        "10.0.0.0/33",
        "10.0.0/8",
        "example.com",
        "",
        "10.0.0.0/",
        "::/129",
    ] {
        let (.., place, kind) = rule_error(&format!("src = \"{bad}\""));
        assert_eq!(place, "out[0].src");
        assert_eq!(kind, RuleErrorKind::BadCidr { value: bad.into() }, "{bad}");
    }
    let (.., kind) = rule_error("dst = 10");
    assert!(matches!(
        kind,
        RuleErrorKind::WrongType {
            found: "an integer",
            ..
        }
    ));
}

#[test]
fn unknown_protocols_are_refused() {
    for bad in ["\"tcpp\"", "\"TCP\"", "256", "-1", "\"300\""] {
        let (line, col, place, kind) = rule_error(&format!("proto = {bad}"));
        assert_eq!((line, col, place.as_str()), (3, 9, "out[0].proto"), "{bad}");
        assert!(
            matches!(kind, RuleErrorKind::UnknownProto { .. }),
            "{bad}: {kind:?}"
        );
    }
}

#[test]
fn port_errors_are_refused() {
    let cases = [
        (
            "dst_port = \"2000-1000\"",
            RuleErrorKind::PortRangeReversed {
                low: 2000,
                high: 1000,
            },
        ),
        (
            "dst_port = \"0\"",
            RuleErrorKind::PortOutOfRange { value: "0".into() },
        ),
        (
            "dst_port = 0",
            RuleErrorKind::PortOutOfRange { value: "0".into() },
        ),
        (
            "src_port = \"65536\"",
            RuleErrorKind::PortOutOfRange {
                value: "65536".into(),
            },
        ),
        (
            "src_port = 70000",
            RuleErrorKind::PortOutOfRange {
                value: "70000".into(),
            },
        ),
        (
            "dst_port = \"99999999999999999999\"",
            RuleErrorKind::PortOutOfRange {
                value: "99999999999999999999".into(),
            },
        ),
        (
            "dst_port = \"http\"",
            RuleErrorKind::BadPort {
                value: "http".into(),
            },
        ),
        (
            "dst_port = \"25,,80\"",
            RuleErrorKind::BadPort { value: "".into() },
        ),
        (
            "dst_port = \"1000-\"",
            RuleErrorKind::BadPort {
                value: "1000-".into(),
            },
        ),
        ("dst_port = \"\"", RuleErrorKind::EmptyPortList),
    ];
    for (body, want) in cases {
        let (line, _, place, kind) = rule_error(body);
        assert_eq!(line, 3, "{body}");
        assert!(place.ends_with("_port"), "{body}");
        assert_eq!(kind, want, "{body}");
    }
}

#[test]
fn ports_need_tcp_or_udp() {
    for proto in ["\"icmp\"", "\"icmpv6\"", "47", "\"0\""] {
        let errors = refuse(&format!(
            "[[in]]\naction = \"allow\"\nproto = {proto}\nsrc_port = \"53\"\ndst_port = 80\n"
        ));
        let e = errors.errors();
        assert_eq!(e.len(), 2, "{errors}");
        assert_eq!(
            (e[0].line, e[0].column, e[0].place.as_str()),
            (4, 12, "in[0].src_port")
        );
        assert_eq!((e[1].line, e[1].place.as_str()), (5, "in[0].dst_port"));
        assert!(matches!(e[0].kind, RuleErrorKind::PortsWithoutPorts { .. }));
    }
}

#[test]
fn mixed_families_are_refused() {
    let (line, _, place, kind) = rule_error("src = \"10.0.0.0/8\"\ndst = \"2001:db8::/32\"");
    assert_eq!((line, place.as_str()), (4, "out[0].dst"));
    assert_eq!(
        kind,
        RuleErrorKind::MixedFamily {
            src_family: "IPv4",
            dst_family: "IPv6"
        }
    );
    let (.., place, kind) = rule_error("proto = \"icmp\"\ndst = \"2001:db8::/32\"");
    assert_eq!(place, "out[0].proto");
    assert!(matches!(
        kind,
        RuleErrorKind::ProtoFamily {
            proto: "icmp",
            family: "IPv6",
            ..
        }
    ));
    let (.., kind) = rule_error("proto = \"icmpv6\"\nsrc = \"10.0.0.1\"");
    assert!(matches!(
        kind,
        RuleErrorKind::ProtoFamily {
            proto: "icmpv6",
            family: "IPv4",
            ..
        }
    ));
    let (.., kind) = rule_error("proto = 58\nsrc = \"10.0.0.1\"");
    assert!(matches!(
        kind,
        RuleErrorKind::ProtoFamily {
            proto: "icmpv6",
            ..
        }
    ));
}

#[test]
fn project_errors_are_refused() {
    let (line, col, place, kind) = rule_error("project = []");
    assert_eq!((line, col, place.as_str()), (3, 11, "out[0].project"));
    assert_eq!(kind, RuleErrorKind::EmptyProjectList);
    for bad in [
        "Alice",
        "-x",
        "",
        "a b",
        "abcdefghijklmnopqrstuvwxyz0123456789",
    ] {
        let (.., kind) = rule_error(&format!("project = [\"ok\", \"{bad}\"]"));
        assert!(
            matches!(kind, RuleErrorKind::BadProjectName { ref name, .. } if name == bad),
            "{bad}: {kind:?}"
        );
    }
    let (.., kind) = rule_error("project = [\"ok\", 3]");
    assert!(matches!(
        kind,
        RuleErrorKind::WrongType {
            found: "an integer",
            ..
        }
    ));
}

#[test]
fn unknown_keys_are_refused_everywhere() {
    let errors = refuse(
        "policy = 1\n[default]\nout = \"deny\"\nestablish = true\n[[out]]\naction = \"deny\"\ndport = 80\n[[in]]\naction = \"allow\"\n",
    );
    let e = errors.errors();
    assert_eq!(e.len(), 3, "{errors}");
    assert_eq!(
        (e[0].line, e[0].column, e[0].place.as_str()),
        (1, 1, "policy")
    );
    assert_eq!((e[1].line, e[1].place.as_str()), (4, "default.establish"));
    assert_eq!((e[2].line, e[2].place.as_str()), (7, "out[0].dport"));
    assert!(e
        .iter()
        .all(|e| matches!(e.kind, RuleErrorKind::UnknownKey { .. })));
}

#[test]
fn actions_and_types_are_checked() {
    let errors = refuse(
        "[default]\nout = \"block\"\nin = true\nestablished = \"yes\"\n[[out]]\ndst = \"10.0.0.0/8\"\n[[out]]\naction = \"drop\"\nlog = \"yes\"\n",
    );
    let kinds: Vec<_> = errors
        .errors()
        .iter()
        .map(|e| (e.line, e.place.clone(), e.kind.clone()))
        .collect();
    assert_eq!(kinds.len(), 6, "{errors}");
    assert!(
        matches!(&kinds[0], (2, p, RuleErrorKind::BadAction { value }) if p == "default.out" && value == "block")
    );
    assert!(matches!(&kinds[1], (3, p, RuleErrorKind::WrongType { .. }) if p == "default.in"));
    assert!(
        matches!(&kinds[2], (4, p, RuleErrorKind::WrongType { .. }) if p == "default.established")
    );
    assert!(matches!(&kinds[3], (5, p, RuleErrorKind::MissingAction) if p == "out[0].action"));
    assert!(matches!(&kinds[4], (8, p, RuleErrorKind::BadAction { .. }) if p == "out[1].action"));
    assert!(matches!(&kinds[5], (9, p, RuleErrorKind::WrongType { .. }) if p == "out[1].log"));
}

#[test]
fn chains_must_be_arrays_of_tables() {
    let errors = refuse("[out]\naction = \"deny\"\n");
    assert!(
        matches!(errors.errors()[0].kind, RuleErrorKind::WrongType { expected, .. } if expected.contains("[[out]]"))
    );
    let errors = refuse("in = [1]\n");
    assert_eq!(errors.errors()[0].place, "in[0]");
    let errors = refuse("default = 3\n");
    assert_eq!(errors.errors()[0].place, "default");
}

#[test]
fn toml_syntax_errors_are_reported_with_position() {
    let errors = refuse("[[out]]\naction = \"deny\ndst = \"10.0.0.0/8\"\n");
    let e = &errors.errors()[0];
    assert_eq!(e.place, "toml");
    assert_eq!(e.line, 2);
    assert!(matches!(e.kind, RuleErrorKind::Syntax { .. }));
    assert!(!errors.to_string().contains('\n') || errors.errors().len() > 1);
}

#[test]
fn every_problem_is_reported_and_the_whole_file_refused() {
    let text = "\
[default]
out = \"allow\"

[[out]]
action = \"deny\"
dst = \"10.0.0.1/8\"

[[out]]
action = \"allow\"
proto = \"tcp\"
dst_port = 443

[[out]]
action = \"allow\"
proto = \"gre\"
dst_port = \"80-79\"

[[in]]
action = \"allow\"
project = \"Bob\"
";
    let errors = refuse(text);
    let lines: Vec<String> = errors.to_string().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "rules.toml:6:7: out[0].dst: `10.0.0.1/8` has host bits set; expected the network address 10.0.0.0/8",
            "rules.toml:15:9: out[2].proto: unknown protocol `gre`; expected tcp, udp, icmp, icmpv6 or a number 0-255",
            "rules.toml:16:12: out[2].dst_port: port range 80-79 is upside down; expected the low port first (79-80)",
            "rules.toml:20:11: in[0].project: project name `Bob` must start with a lowercase letter or a digit; expected 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit",
        ]
    );
}

#[test]
fn load_reports_unreadable_files() {
    let errors =
        RuleSet::load(Path::new("/nonexistent/vassal-rules.toml")).expect_err("missing file");
    let e = &errors.errors()[0];
    assert_eq!(e.place, "file");
    assert!(matches!(e.kind, RuleErrorKind::Read { .. }));
    assert!(errors
        .to_string()
        .starts_with("/nonexistent/vassal-rules.toml:0:0: file: cannot read"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let errors = refuse("# é\n[[out]] # ünïcode\naction = \"deny\"\nsrc = \"é\"\n");
    assert_eq!((errors.errors()[0].line, errors.errors()[0].column), (4, 7));
}

#[test]
fn peer_words_and_contradictions_are_refused_with_their_position() {
    let (line, col, place, kind) = rule_error("peer = \"sam\"");
    assert_eq!((line, col, place.as_str()), (3, 8, "out[0].peer"));
    assert_eq!(
        kind,
        RuleErrorKind::BadPeer {
            value: "sam".into()
        }
    );
    let (.., kind) = rule_error("peer = [\"same\"]");
    assert!(matches!(
        kind,
        RuleErrorKind::WrongType {
            found: "an array",
            ..
        }
    ));
    let (line, col, place, kind) = rule_error("peer = \"outside\"\npeer_project = [\"web\"]");
    assert_eq!((line, col, place.as_str()), (4, 16, "out[0].peer_project"));
    assert_eq!(kind, RuleErrorKind::PeerWithoutProject { peer: "outside" });
    let (.., kind) = rule_error("peer = \"unknown\"\npeer_project = \"web\"");
    assert_eq!(kind, RuleErrorKind::PeerWithoutProject { peer: "unknown" });
    let (.., place, kind) = rule_error("peer_project = []");
    assert_eq!(place, "out[0].peer_project");
    assert_eq!(kind, RuleErrorKind::EmptyProjectList);
    let (.., place, kind) = rule_error("peer_project = [\"Web\"]");
    assert_eq!(place, "out[0].peer_project");
    assert!(matches!(kind, RuleErrorKind::BadProjectName { .. }));
    // The accepted spellings.
    for word in ["same", "other", "vassal", "unknown", "outside"] {
        RuleSet::parse(
            &format!("[[in]]\naction = \"allow\"\npeer = \"{word}\"\n"),
            Path::new("rules.toml"),
        )
        .unwrap_or_else(|e| panic!("{word}: {e}"));
    }
}
