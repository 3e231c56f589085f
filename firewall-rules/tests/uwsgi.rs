//! The uWSGI import: emitted TOML parses, classifies exactly as uWSGI's
//! tuntap firewall would (a reference evaluator written from
//! plugins/tuntap/firewall.c), and bad lines are errors naming the line.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use firewall_rules::{uwsgi, Action, Chain, PacketKey, Peer, ProjectId, RuleErrorKind, RuleSet};

/// uWSGI's rule: masked addresses, 0 = any, action 1 = deny.
struct URule {
    deny: bool,
    src: u32,
    src_mask: u32,
    dst: u32,
    dst_mask: u32,
}

/// Mirrors uwsgi_tuntap_opt_firewall() for the accepted syntax.
fn uwsgi_parse(value: &str) -> URule {
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.len() == 1 {
        return URule {
            deny: words[0] == "deny",
            src: 0,
            src_mask: 0,
            dst: 0,
            dst_mask: 0,
        };
    }
    let side = |s: &str| {
        let (a, m) = s
            .split_once('/')
            .map_or((s, 32u32), |(a, m)| (a, m.parse().expect("test mask")));
        let a = u32::from(a.parse::<Ipv4Addr>().expect("test address"));
        let mask = if m == 0 { 0 } else { u32::MAX << (32 - m) };
        (a & mask, mask)
    };
    let (src, src_mask) = side(words[1]);
    let (dst, dst_mask) = side(words[2]);
    URule {
        deny: words[0] == "deny",
        src,
        src_mask,
        dst,
        dst_mask,
    }
}

/// Mirrors uwsgi_tuntap_firewall_check(): true = drop.
fn uwsgi_denies(rules: &[URule], src: u32, dst: u32) -> bool {
    for r in rules {
        if r.src != 0 && src & r.src_mask != r.src {
            continue;
        }
        if r.dst != 0 && dst & r.dst_mask != r.dst {
            continue;
        }
        return r.deny;
    }
    false
}

const INI: &str = "\
[uwsgi]
plugin = tuntap
tuntap-router = emperor0 /tmp/tuntap.socket
; vassals reach the gateway and the world, not each other
tuntap-router-firewall-out = allow 192.168.0.0/24 192.168.0.1
tuntap-router-firewall-out = deny 192.168.0.0/24 192.168.0.0/24
tuntap-router-firewall-out = allow 192.168.0.0/24 0.0.0.0
tuntap-router-firewall-out = deny
tuntap-router-firewall-out = allow 10.0.0.0/8 10.0.0.0/8
tuntap-router-firewall-in = allow 192.168.0.1 192.168.0.0/24
tuntap-router-firewall-in = deny 192.168.0.0/24 192.168.0.0/24
tuntap-router-firewall-in = allow 0.0.0.0 192.168.0.7
tuntap-router-firewall-in = deny 10.1.2.3/8 0.0.0.0/0
tuntap-router-firewall-in = deny 0.0.0.0/16 203.0.113.0/24

[other]
tuntap-router-firewall-in = deny
";

fn lines_of(chain: &str) -> Vec<URule> {
    INI.lines()
        .take_while(|l| *l != "[other]")
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == format!("tuntap-router-firewall-{chain}"))
        .map(|(_, v)| uwsgi_parse(v.trim()))
        .collect()
}

fn key(src: u32, dst: u32) -> PacketKey {
    PacketKey {
        project: ProjectId::UNKNOWN,
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        proto: 6,
        src_port: 40000,
        dst_port: 80,
        peer: Peer::Outside,
    }
}

#[test]
fn imported_rules_classify_like_uwsgi() {
    let toml = uwsgi::import(INI, Path::new("vassals.ini")).expect("import");
    let rules = RuleSet::parse(&toml, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("emitted TOML refused:\n{e}\n{toml}"));
    let d = rules.defaults();
    assert_eq!(
        d.out,
        Action::Deny,
        "single-word deny becomes the out default"
    );
    assert_eq!(d.inbound, Action::Allow, "uWSGI's default is allow");
    assert!(!d.established, "uWSGI keeps no state");
    assert_eq!(
        rules.rule_count(Chain::Out),
        3,
        "the rule after the match-all is unreachable"
    );
    assert_eq!(rules.rule_count(Chain::In), 5, "[other] section ignored");
    assert!(toml.contains("unreachable in uWSGI"), "{toml}");
    assert!(
        toml.contains("vassals.ini:9:"),
        "origin lines are cited: {toml}"
    );

    let compiled = rules.compile();
    let out = lines_of("out");
    let inbound = lines_of("in");
    // Every address at or next to a boundary of the example, both ways.
    let points: Vec<u32> = [
        "0.0.0.0",
        "0.0.255.255",
        "0.1.0.0",
        "9.255.255.255",
        "10.0.0.0",
        "10.1.2.3",
        "10.255.255.255",
        "11.0.0.0",
        "192.167.255.255",
        "192.168.0.0",
        "192.168.0.1",
        "192.168.0.2",
        "192.168.0.7",
        "192.168.0.8",
        "192.168.0.255",
        "192.168.1.0",
        "203.0.112.255",
        "203.0.113.0",
        "203.0.113.255",
        "203.0.114.0",
        "255.255.255.255",
    ]
    .iter()
    .map(|a| u32::from(a.parse::<Ipv4Addr>().expect("test address")))
    .collect();
    let mut checked = 0;
    for &src in &points {
        for &dst in &points {
            for (chain, urules) in [(Chain::Out, &out), (Chain::In, &inbound)] {
                let want = if uwsgi_denies(urules, src, dst) {
                    Action::Deny
                } else {
                    Action::Allow
                };
                let got = compiled.classify(chain, &key(src, dst)).action;
                assert_eq!(
                    got,
                    want,
                    "{chain:?} {} -> {}",
                    Ipv4Addr::from(src),
                    Ipv4Addr::from(dst)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, points.len() * points.len() * 2);
}

#[test]
fn host_bits_and_zero_addresses_follow_uwsgi() {
    let toml = uwsgi::import(
        "[uwsgi]\ntuntap-router-firewall-in = deny 10.1.2.3/8 0.0.0.0/8\n",
        Path::new("a.ini"),
    )
    .expect("import");
    assert!(toml.contains("src = \"10.0.0.0/8\""), "{toml}");
    assert!(toml.contains("host bits dropped"), "{toml}");
    assert!(!toml.contains("dst ="), "0.0.0.0/8 is any in uWSGI: {toml}");
    let toml = uwsgi::import(
        "[uwsgi]\ntuntap-router-firewall-out = deny 0.0.0.0 0.0.0.0\n",
        Path::new("a.ini"),
    )
    .expect("import");
    assert!(
        toml.contains("dst = \"0.0.0.0/0\""),
        "any-any stays IPv4-only: {toml}"
    );
    let toml = uwsgi::import(
        "[uwsgi]\ntuntap-router-firewall-out = deny 10.0.0.1 10.0.0.2\n",
        Path::new("a.ini"),
    )
    .expect("import");
    assert!(
        toml.contains("src = \"10.0.0.1/32\"") && toml.contains("dst = \"10.0.0.2/32\""),
        "{toml}"
    );
}

#[test]
fn empty_ini_gives_uwsgi_defaults() {
    let toml = uwsgi::import("[uwsgi]\nmaster = true\n", Path::new("a.ini")).expect("import");
    let rules = RuleSet::parse(&toml, Path::new("imported.toml")).expect("parse");
    assert_eq!(rules.defaults().out, Action::Allow);
    assert_eq!(rules.defaults().inbound, Action::Allow);
    assert!(!rules.defaults().established);
}

#[test]
fn bad_lines_are_errors_naming_the_ini_line() {
    let ini = "\
[uwsgi]
tuntap-router-firewall-out = alow 10.0.0.0/8 0.0.0.0
tuntap-router-firewall-out = deny 10.0.0.0/8
tuntap-router-firewall-in = deny 10.0.0.0/33 0.0.0.0
tuntap-router-firewall-in =   deny 2001:db8::/32 0.0.0.0
tuntap-router-firewall-in = deny 10.0.0.0/0 0.0.0.0
tuntap-router-firewall-in = maybe
";
    let errors = uwsgi::import(ini, Path::new("bad.ini")).expect_err("must refuse");
    let e = errors.errors();
    assert_eq!(e.len(), 6, "{errors}");
    assert_eq!((e[0].line, e[0].column), (2, 30));
    assert!(matches!(e[0].kind, RuleErrorKind::UwsgiAction { .. }));
    assert!(matches!(e[1].kind, RuleErrorKind::UwsgiRule { .. }));
    assert!(matches!(e[2].kind, RuleErrorKind::UwsgiAddress { .. }));
    assert_eq!((e[3].line, e[3].column), (5, 31));
    assert!(matches!(e[3].kind, RuleErrorKind::UwsgiAddress { .. }));
    assert!(matches!(e[4].kind, RuleErrorKind::UwsgiZeroMask { .. }));
    assert!(matches!(e[5].kind, RuleErrorKind::UwsgiAction { .. }));
    let text = errors.to_string();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("bad.ini:2:30: tuntap-router-firewall-out: unknown action `alow`"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6);
}
