//! What a valid rule file means: defaults, bare addresses, port lists,
//! projects, ports without proto, families, logging, verdict indexes.

use std::net::IpAddr;
use std::path::Path;

use firewall_rules::naive::Naive;
use firewall_rules::{Action, Chain, PacketKey, Peer, ProjectId, RuleSet, Verdict};

fn rules(text: &str) -> RuleSet {
    RuleSet::parse(text, Path::new("rules.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn key(project: ProjectId, src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> PacketKey {
    PacketKey {
        project,
        src: src.parse::<IpAddr>().expect("test address"),
        dst: dst.parse::<IpAddr>().expect("test address"),
        proto,
        src_port: sport,
        dst_port: dport,
        peer: Peer::Outside,
    }
}

/// The compiled and naive verdicts, which must agree.
fn verdict(set: &RuleSet, chain: Chain, k: &PacketKey) -> Verdict {
    let compiled = set.compile().classify(chain, k);
    assert_eq!(compiled, Naive::new(set).classify(chain, k), "{k:?}");
    compiled
}

#[test]
fn defaults_when_absent() {
    let set = rules("");
    let d = set.defaults();
    assert_eq!(
        (d.out, d.inbound, d.established),
        (Action::Allow, Action::Deny, true)
    );
    let set = rules("[default]\nin = \"allow\"\n");
    assert_eq!(set.defaults().out, Action::Allow);
    assert_eq!(set.defaults().inbound, Action::Allow);
    let k = key(ProjectId::UNKNOWN, "10.0.0.1", "10.0.0.2", 6, 1, 2);
    assert_eq!(
        verdict(&rules("[default]\nout = \"deny\"\n"), Chain::Out, &k),
        Verdict {
            action: Action::Deny,
            rule: None,
            log: false
        }
    );
}

#[test]
fn first_match_wins_and_reports_its_index_and_log() {
    let set = rules(
        "[[out]]\naction = \"allow\"\ndst = \"10.0.0.5\"\n[[out]]\naction = \"deny\"\ndst = \"10.0.0.0/8\"\nlog = true\n",
    );
    let p = ProjectId::UNKNOWN;
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "10.200.0.2", "10.0.0.5", 6, 1, 2)),
        Verdict {
            action: Action::Allow,
            rule: Some(0),
            log: false
        }
    );
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "10.200.0.2", "10.0.0.6", 6, 1, 2)),
        Verdict {
            action: Action::Deny,
            rule: Some(1),
            log: true
        }
    );
    assert_eq!(
        verdict(&set, Chain::In, &key(p, "10.0.0.6", "10.200.0.2", 6, 1, 2)).rule,
        None
    );
    assert_eq!(set.rules(Chain::Out)[1].line, 4);
}

#[test]
fn bare_addresses_are_single_hosts() {
    let set = rules("[[out]]\naction = \"deny\"\ndst = \"10.0.0.5\"\n[[out]]\naction = \"deny\"\ndst = \"2001:db8::5\"\n");
    assert_eq!(
        set.rules(Chain::Out)[0].dst.map(|n| n.prefix_len()),
        Some(32)
    );
    assert_eq!(
        set.rules(Chain::Out)[1].dst.map(|n| n.prefix_len()),
        Some(128)
    );
    let p = ProjectId::UNKNOWN;
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "10.1.1.1", "10.0.0.5", 17, 1, 2)).rule,
        Some(0)
    );
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "10.1.1.1", "10.0.0.4", 17, 1, 2)).rule,
        None
    );
    assert_eq!(
        verdict(
            &set,
            Chain::Out,
            &key(p, "2001:db8::1", "2001:db8::5", 17, 1, 2)
        )
        .rule,
        Some(1)
    );
}

#[test]
fn port_lists_and_ports_without_proto() {
    let set = rules("[[out]]\naction = \"deny\"\ndst_port = \"25,465, 1000-2000\"\n");
    let p = ProjectId::UNKNOWN;
    let hit = |proto, port| {
        verdict(
            &set,
            Chain::Out,
            &key(p, "10.0.0.1", "192.0.2.1", proto, 40000, port),
        )
        .rule
    };
    assert_eq!(hit(6, 25), Some(0));
    assert_eq!(hit(17, 465), Some(0));
    assert_eq!(hit(6, 1000), Some(0));
    assert_eq!(hit(6, 2000), Some(0));
    assert_eq!(hit(6, 2001), None);
    assert_eq!(hit(6, 26), None);
    // Ports without proto match tcp and udp only.
    assert_eq!(hit(132, 25), None);
    assert_eq!(hit(1, 0), None);
}

#[test]
fn protocols_by_name_and_number() {
    let set = rules("[[in]]\naction = \"allow\"\nproto = \"icmp\"\n[[in]]\naction = \"allow\"\nproto = 47\n[[in]]\naction = \"allow\"\nproto = \"udp\"\n");
    let p = ProjectId::UNKNOWN;
    let hit = |proto| {
        verdict(
            &set,
            Chain::In,
            &key(p, "192.0.2.1", "10.0.0.1", proto, 0, 0),
        )
        .rule
    };
    assert_eq!(
        (hit(1), hit(47), hit(17), hit(6)),
        (Some(0), Some(1), Some(2), None)
    );
}

#[test]
fn projects_restrict_rules_and_unknown_projects_match_only_projectless_rules() {
    let set = rules(
        "[[out]]\naction = \"deny\"\nproject = \"alice\"\n[[out]]\naction = \"deny\"\nproject = [\"bob\", \"carol\"]\n[[out]]\naction = \"allow\"\n",
    );
    let c = set.compile();
    let at = |name: &str| {
        verdict(
            &set,
            Chain::Out,
            &key(c.project_id(name), "10.0.0.1", "192.0.2.1", 6, 1, 2),
        )
        .rule
    };
    assert_eq!(at("alice"), Some(0));
    assert_eq!(at("bob"), Some(1));
    assert_eq!(at("carol"), Some(1));
    assert_eq!(at("mallory"), Some(2));
    assert_eq!(c.project_id("mallory"), ProjectId::UNKNOWN);
    assert_ne!(c.project_id("alice"), c.project_id("bob"));
}

#[test]
fn the_other_family_never_matches() {
    let set = rules("[[out]]\naction = \"deny\"\nsrc = \"0.0.0.0/0\"\n[[out]]\naction = \"deny\"\ndst = \"::/0\"\n");
    let p = ProjectId::UNKNOWN;
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "10.0.0.1", "192.0.2.1", 6, 1, 2)).rule,
        Some(0)
    );
    assert_eq!(
        verdict(&set, Chain::Out, &key(p, "fd00::1", "2001:db8::1", 6, 1, 2)).rule,
        Some(1)
    );
    let v4only = rules("[[out]]\naction = \"deny\"\ndst = \"0.0.0.0/0\"\n");
    assert_eq!(
        verdict(
            &v4only,
            Chain::Out,
            &key(p, "fd00::1", "2001:db8::1", 6, 1, 2)
        )
        .rule,
        None
    );
    // Address-less rules apply to both families.
    let any = rules("[[out]]\naction = \"deny\"\nproto = \"tcp\"\n");
    assert_eq!(
        verdict(&any, Chain::Out, &key(p, "fd00::1", "2001:db8::1", 6, 1, 2)).rule,
        Some(0)
    );
    assert_eq!(
        verdict(&any, Chain::Out, &key(p, "10.0.0.1", "192.0.2.1", 6, 1, 2)).rule,
        Some(0)
    );
}

#[test]
fn summary_counts_rules_and_defaults() {
    let set = rules(
        "[default]\nestablished = false\n[[out]]\naction = \"deny\"\nlog = true\n[[out]]\naction = \"allow\"\n[[in]]\naction = \"allow\"\n",
    );
    assert_eq!(set.rule_count(Chain::Out), 2);
    assert_eq!(set.rule_count(Chain::In), 1);
    let s = set.summary();
    assert!(
        s.contains("out 2 rules (1 allow, 1 deny, 1 logged), default allow"),
        "{s}"
    );
    assert!(
        s.contains("in  1 rule (1 allow, 0 deny, 0 logged), default deny"),
        "{s}"
    );
    assert!(
        s.contains("established replies are checked like any packet"),
        "{s}"
    );
}

#[test]
fn classifier_is_send_sync_and_cheap_to_share() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<firewall_rules::Classifier>();
    shareable::<RuleSet>();
}

#[test]
fn peer_names_the_other_end_by_its_project() {
    // The cluster recipe of docs/rules.md: same project passes, redis-team
    // is reachable by everyone on 6379, the rest of the vassal range is shut.
    let set = rules(
        "[[in]]\naction = \"allow\"\npeer = \"same\"\n\
         [[in]]\naction = \"allow\"\npeer_project = \"redis-team\"\nproto = \"tcp\"\nsrc_port = 6379\n\
         [[in]]\naction = \"deny\"\npeer = \"unknown\"\nlog = true\n\
         [[in]]\naction = \"allow\"\npeer = \"outside\"\ndst_port = 80\n\
         [[out]]\naction = \"allow\"\npeer = \"same\"\n\
         [[out]]\naction = \"allow\"\npeer = \"other\"\npeer_project = [\"redis-team\", \"web\"]\n\
         [[out]]\naction = \"deny\"\npeer = \"vassal\"\n\
         [[out]]\naction = \"deny\"\npeer = \"unknown\"\n",
    );
    let c = set.compile();
    let alice = c.project_id("alice");
    let redis = c.project_id("redis-team");
    let vassal = |project: ProjectId, same: bool| Peer::Vassal { project, same };
    let at = |chain: Chain, own: ProjectId, peer: Peer, sport: u16, dport: u16| {
        let mut k = key(own, "10.0.0.1", "10.0.1.2", 6, sport, dport);
        k.peer = peer;
        verdict(&set, chain, &k).rule
    };
    // alice is named by no rule: same-project still matches (by name).
    assert_eq!(alice, ProjectId::UNKNOWN);
    assert_eq!(at(Chain::In, alice, vassal(alice, true), 1, 2), Some(0));
    assert_eq!(at(Chain::In, alice, vassal(alice, false), 1, 2), None);
    assert_eq!(at(Chain::In, alice, vassal(redis, false), 6379, 2), Some(1));
    assert_eq!(at(Chain::In, alice, vassal(redis, false), 6380, 2), None);
    assert_eq!(at(Chain::In, alice, Peer::Unknown, 1, 2), Some(2));
    assert!(
        verdict(&set, Chain::In, &{
            let mut k = key(alice, "10.0.0.1", "10.0.1.2", 6, 1, 2);
            k.peer = Peer::Unknown;
            k
        })
        .log
    );
    assert_eq!(at(Chain::In, alice, Peer::Outside, 1, 80), Some(3));
    assert_eq!(at(Chain::In, alice, Peer::Outside, 1, 81), None);
    assert_eq!(at(Chain::Out, alice, vassal(alice, true), 1, 2), Some(0));
    assert_eq!(at(Chain::Out, alice, vassal(redis, false), 1, 2), Some(1));
    assert_eq!(
        at(Chain::Out, alice, vassal(c.project_id("web"), false), 1, 2),
        Some(1)
    );
    assert_eq!(at(Chain::Out, alice, vassal(alice, false), 1, 2), Some(2));
    assert_eq!(at(Chain::Out, alice, Peer::Unknown, 1, 2), Some(3));
    assert_eq!(at(Chain::Out, alice, Peer::Outside, 1, 2), None);
    // redis-team talking to redis-team: "same" comes first.
    assert_eq!(at(Chain::Out, redis, vassal(redis, true), 1, 2), Some(0));
}
