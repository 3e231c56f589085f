//! The cluster core (docs/cluster.md): blocks claimed in etcd, automatic
//! addresses, the identity cache, and what happens when etcd or a host is
//! lost. Real etcd (three members) and real routers, each in its own
//! simulated host's network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};
use vassal_attach::{RefuseReason, Response};
use vassal_tests::cluster_harness::{Cluster, ClusterRouter, ClusterRouterSpec, ClusterVassal};
use vassal_tests::wait_until;

fn routers(cluster: &Cluster, n: usize) -> Vec<ClusterRouter> {
    (0..n)
        .map(|i| ClusterRouter::start(cluster, i, &ClusterRouterSpec::node(&format!("host-{i}"))))
        .collect()
}

fn every_router_knows(routers: &[ClusterRouter], what: impl Fn(&ClusterRouter) -> bool) -> bool {
    wait_until(Duration::from_secs(15), || routers.iter().all(&what))
}

/// What keeps a hand-made attachment: its namespace, tun and connection.
type Attachment = (
    vassal_tests::Netns,
    std::os::fd::OwnedFd,
    std::os::fd::OwnedFd,
);

/// Attaches the tun of a fresh namespace to `router` with a hello of the
/// test's own (no lease): the answer, and what keeps the attachment.
fn hello(
    router: &ClusterRouter,
    version: u32,
    project: &str,
    ipv4: std::net::Ipv4Addr,
    ipv6: Option<std::net::Ipv6Addr>,
) -> (Response, Attachment) {
    use std::os::fd::AsFd;
    let ns = vassal_tests::Netns::new("cv");
    let tun = vassal_tests::router_harness::create_tun_in(&ns, "vt0", 0);
    let conn = vassal_attach::transport::connect(&router.socket).unwrap();
    let hello = vassal_attach::Request::Hello(vassal_attach::Hello {
        version,
        project: project.into(),
        ipv4,
        ipv6,
        net_out: None,
        net_in: None,
    });
    let answer = vassal_attach::transport::call(conn.as_fd(), &hello, Some(tun.as_fd())).unwrap();
    (answer, (ns, tun, conn))
}

/// How long a router that must refuse to start may take to exit.
const REFUSAL: Duration = Duration::from_secs(20);

#[test]
fn blocks_never_collide_even_when_claimed_at_the_same_instant() {
    let cluster = Cluster::new(3);
    let mut rs: Vec<ClusterRouter> = (0..3)
        .map(|i| {
            ClusterRouter::configure(&cluster, i, &ClusterRouterSpec::node(&format!("host-{i}")))
        })
        .collect();
    for r in &mut rs {
        r.spawn_nowait();
    }
    for r in &rs {
        r.wait_ready();
    }
    let blocks: Vec<String> = rs.iter().map(|r| r.block()).collect();
    let distinct: HashSet<&String> = blocks.iter().collect();
    assert_eq!(distinct.len(), 3, "blocks collide: {blocks:?}");
    for b in &blocks {
        assert!(b.starts_with("10.240.") && b.ends_with(".0/24"), "{b}");
    }
    // etcd agrees: one key per block, naming the node that serves it.
    let out = cluster.etcdctl(&["get", "--prefix", "/vassal/blocks/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (r, b) in rs.iter().zip(&blocks) {
        assert!(
            text.contains(&format!("\"node\":\"{}\"", r.node)) && text.contains(b.as_str()),
            "{text}"
        );
    }
    // Every router sees every block.
    let want: Vec<(String, String)> = {
        let mut w: Vec<_> = rs
            .iter()
            .zip(&blocks)
            .map(|(r, b)| (r.node.clone(), b.clone()))
            .collect();
        w.sort();
        w
    };
    assert!(
        every_router_knows(&rs, |r| r.nodes() == want),
        "{:?}",
        rs[0].nodes()
    );
}

#[test]
fn a_restarted_router_gets_its_block_back() {
    let cluster = Cluster::new(3);
    let mut rs = routers(&cluster, 2);
    let before = rs[1].block();
    rs[1].kill();
    // Its block key is still there (lease not expired): it is adopted,
    // not refused.
    rs[1].spawn();
    assert_eq!(rs[1].block(), before);
    // And after the lease expired too.
    rs[1].kill();
    std::thread::sleep(Duration::from_secs(5));
    rs[1].spawn();
    assert_eq!(rs[1].block(), before);
    assert_ne!(rs[0].block(), before);
}

#[test]
fn a_router_started_while_etcd_is_down_keeps_its_persisted_block() {
    let mut cluster = Cluster::new(3);
    let mut r = ClusterRouter::start(&cluster, 0, &ClusterRouterSpec::node("host-0"));
    let block = r.block();
    r.kill();
    for i in 0..3 {
        cluster.kill_etcd(i);
    }
    r.spawn();
    let view = r.view();
    assert_eq!(view["block"], block.as_str());
    assert_eq!(view["etcd_up"], false);
    assert_eq!(r.metric("vassal_cluster_etcd_up"), Some(0.0));
    // A local attach works, with an address of the persisted block.
    let v = ClusterVassal::launch(&r, "alpha", "web");
    assert!(v.accepted(), "{:?}", v.answer);
    assert!(block.starts_with(&v.addr.to_string().rsplit_once('.').unwrap().0.to_string()));
    // etcd returns: the identity registered meanwhile is written.
    for i in 0..3 {
        cluster.start_etcd(i);
    }
    assert!(cluster.wait_etcd(Duration::from_secs(30)));
    let want = (v.addr.to_string(), "alpha".to_owned(), "host-0".to_owned());
    assert!(
        wait_until(Duration::from_secs(20), || r.identities().contains(&want)),
        "{:?}\n{}",
        r.identities(),
        r.log_text()
    );
    assert_eq!(r.view()["etcd_up"], true);
    assert_eq!(r.view()["block"], block.as_str());
}

#[test]
fn a_first_start_without_etcd_and_without_state_fails_clearly() {
    let mut cluster = Cluster::new(3);
    for i in 0..3 {
        cluster.kill_etcd(i);
    }
    let mut r = ClusterRouter::configure(&cluster, 0, &ClusterRouterSpec::node("host-0"));
    r.spawn_nowait();
    let status = r.exit_within(REFUSAL);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        r.log_text().contains("a first start needs etcd"),
        "{}",
        r.log_text()
    );
}

#[test]
fn a_tampered_state_file_is_not_trusted() {
    let mut cluster = Cluster::new(3);
    let mut r = ClusterRouter::start(&cluster, 0, &ClusterRouterSpec::node("host-0"));
    r.kill();
    for i in 0..3 {
        cluster.kill_etcd(i);
    }
    // Another node's block, or one outside the prefix: ignored, and with
    // etcd away the router refuses to start rather than guess.
    for bad in [
        r#"{"node":"host-9","block":"10.240.5.0/24"}"#,
        r#"{"node":"host-0","block":"192.0.2.0/24"}"#,
        "not json",
    ] {
        std::fs::write(&r.state_file, bad).unwrap();
        r.spawn_nowait();
        let status = r.exit_within(REFUSAL);
        assert!(status.is_some_and(|s| !s.success()), "{bad}: {status:?}");
        assert!(r.log_text().contains("is invalid"), "{}", r.log_text());
    }
}

#[test]
fn automatic_addresses_never_collide_and_survive_a_relaunch() {
    let cluster = Cluster::new(3);
    let rs = routers(&cluster, 2);
    let mut seen = HashSet::new();
    for r in &rs {
        let block = r.block();
        let net = block.trim_end_matches(".0/24");
        for k in 0..20 {
            let project = if k % 2 == 0 { "alpha" } else { "beta" };
            match r.lease(project, &format!("v{k}")) {
                Response::Leased {
                    ipv4,
                    gateway,
                    prefix_len,
                    ..
                } => {
                    assert!(
                        ipv4.to_string().starts_with(&format!("{net}.")),
                        "{ipv4} outside {block}"
                    );
                    assert_eq!(gateway.to_string(), format!("{net}.1"));
                    assert_eq!(prefix_len, 24);
                    assert!(seen.insert(ipv4), "{ipv4} handed out twice");
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // The same name gets the same address again, attached or not.
    let first = ClusterVassal::launch(&rs[0], "alpha", "web");
    assert!(first.accepted(), "{:?}", first.answer);
    let addr = first.addr;
    drop(first);
    let again = ClusterVassal::launch(&rs[0], "alpha", "web");
    assert!(again.accepted(), "{:?}", again.answer);
    assert_eq!(again.addr, addr);
    // Another project cannot take a leased address with a static hello.
    let stolen = match rs[0].lease("alpha", "db") {
        Response::Leased { ipv4, .. } => ipv4,
        other => panic!("{other:?}"),
    };
    let (answer, _attachment) = hello(&rs[0], 1, "beta", stolen, None);
    assert!(
        matches!(
            answer,
            Response::Refused {
                reason: RefuseReason::AddressInUse,
                ..
            }
        ),
        "{answer:?}"
    );
    // The reservation survives a router restart (persisted with the block).
    let mut r0 = rs.into_iter().next().unwrap();
    drop(again);
    r0.kill();
    r0.spawn();
    match r0.lease("alpha", "web") {
        Response::Leased { ipv4, .. } => assert_eq!(ipv4, addr),
        other => panic!("{other:?}"),
    }
}

#[test]
fn identities_reach_every_router_and_leave_with_their_vassal() {
    let cluster = Cluster::new(3);
    let rs = routers(&cluster, 3);
    let vassals: Vec<ClusterVassal> = rs
        .iter()
        .enumerate()
        .map(|(i, r)| ClusterVassal::launch(r, if i == 2 { "beta" } else { "alpha" }, "app"))
        .collect();
    let mut want: Vec<(String, String, String)> = vassals
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                v.addr.to_string(),
                if i == 2 { "beta" } else { "alpha" }.to_owned(),
                format!("host-{i}"),
            )
        })
        .collect();
    want.sort();
    assert!(
        every_router_knows(&rs, |r| r.identities() == want),
        "{:?}",
        rs[0].identities()
    );
    // A key naming a node for an address outside that node's block, or
    // outside the prefix, is not an identity (it would let one host speak
    // for another's vassals).
    let other_block = rs[1].block().replace(".0/24", ".77");
    for (addr, value) in [
        (
            other_block.as_str(),
            r#"{"project":"evil","node":"host-0"}"#,
        ),
        ("192.0.2.7", r#"{"project":"evil","node":"host-0"}"#),
    ] {
        let out = cluster.etcdctl(&["put", &format!("/vassal/identities/{addr}"), value]);
        assert!(out.status.success(), "{out:?}");
    }
    let marker = ClusterVassal::launch(&rs[0], "alpha", "marker");
    assert!(every_router_knows(&rs, |r| r.identities().len() == 4));
    for r in &rs {
        assert!(
            r.identities().iter().all(|i| i.1 != "evil"),
            "{:?}",
            r.identities()
        );
    }
    drop(marker);
    assert!(every_router_knows(&rs, |r| r.identities() == want));
    let gone = vassals.into_iter().next().unwrap();
    let addr = gone.addr.to_string();
    drop(gone);
    assert!(
        every_router_knows(&rs, |r| r.identities().iter().all(|i| i.0 != addr)),
        "{:?}",
        rs[1].identities()
    );
}

#[test]
fn losing_one_etcd_member_of_three_changes_nothing() {
    let mut cluster = Cluster::new(3);
    let rs = routers(&cluster, 3);
    let a = ClusterVassal::launch(&rs[0], "alpha", "a");
    assert!(every_router_knows(&rs, |r| r.identities().len() == 1));
    cluster.kill_etcd(1);
    // New identities still spread, and etcd never counts as down.
    let b = ClusterVassal::launch(&rs[2], "alpha", "b");
    assert!(b.accepted());
    assert!(
        every_router_knows(&rs, |r| r.identities().len() == 2),
        "{:?}\n{}\n{}\n{}",
        rs[0].identities(),
        rs[0].log_text(),
        rs[1].log_text(),
        rs[2].log_text()
    );
    std::thread::sleep(Duration::from_secs(4));
    for r in &rs {
        assert_eq!(r.metric("vassal_cluster_etcd_up"), Some(1.0), "{}", r.node);
        assert!(
            !r.log_text().contains("cluster_etcd_down"),
            "{}: {}",
            r.node,
            r.log_text()
        );
        assert_eq!(r.nodes().len(), 3);
    }
    drop(a);
}

#[test]
fn losing_every_etcd_member_fails_static() {
    let mut cluster = Cluster::new(3);
    let rs = routers(&cluster, 2);
    let a = ClusterVassal::launch(&rs[0], "alpha", "a");
    let b = ClusterVassal::launch(&rs[1], "beta", "b");
    assert!(every_router_knows(&rs, |r| r.identities().len() == 2));
    let before: Vec<_> = rs.iter().map(|r| (r.identities(), r.nodes())).collect();
    for i in 0..3 {
        cluster.kill_etcd(i);
    }
    assert!(
        every_router_knows(&rs, |r| r.metric("vassal_cluster_etcd_up") == Some(0.0)),
        "{}",
        rs[0].log_text()
    );
    for (r, (ids, nodes)) in rs.iter().zip(&before) {
        assert!(
            r.log_text().contains("\"event\":\"cluster_etcd_down\""),
            "{}",
            r.log_text()
        );
        // The caches stay as they were: nothing is forgotten.
        assert_eq!(&r.identities(), ids);
        assert_eq!(&r.nodes(), nodes);
    }
    // Local attaches keep working.
    let c = ClusterVassal::launch(&rs[0], "alpha", "c");
    assert!(c.accepted(), "{:?}", c.answer);
    // etcd returns: the new identity reaches the other router.
    for i in 0..3 {
        cluster.start_etcd(i);
    }
    let want = (c.addr.to_string(), "alpha".to_owned(), "host-0".to_owned());
    assert!(
        wait_until(Duration::from_secs(40), || rs[1]
            .identities()
            .contains(&want)),
        "{:?}\n{}",
        rs[1].identities(),
        rs[0].log_text()
    );
    assert!(every_router_knows(&rs, |r| r
        .metric("vassal_cluster_etcd_up")
        == Some(1.0)));
    assert!(rs[0].log_text().contains("\"event\":\"cluster_etcd_up\""));
    assert_eq!(rs[1].identities().len(), 3);
    drop((a, b));
}

/// etcd's revision now (each committed write transaction adds one).
fn revision(cluster: &Cluster) -> i64 {
    let out = cluster.etcdctl(&["get", "/vassal/", "--prefix", "--keys-only", "-w", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl JSON");
    v["header"]["revision"].as_i64().expect("revision")
}

/// Identities that queued while etcd was away, and a new session's rewrite
/// of all of them, are written a batch per transaction: etcd's revision
/// grows by a handful, not by one per vassal (one raft commit, one disk
/// flush, each). An address another node holds in etcd is left to it
/// with an event and does not hold the rest of its batch back.
#[test]
fn queued_identities_are_written_in_batches_and_a_held_address_is_left_alone() {
    const N: usize = 130;
    let mut cluster = Cluster::new(3);
    let rs = routers(&cluster, 2);
    let held = rs[0].block().replace(".0/24", ".40");
    let foreign = r#"{"project":"other","node":"host-1"}"#;
    let out = cluster.etcdctl(&["put", &format!("/vassal/identities/{held}"), foreign]);
    assert!(out.status.success(), "{out:?}");
    // Every member killed, and router 0 has seen it.
    let stop = |cluster: &mut Cluster| {
        for i in 0..3 {
            cluster.kill_etcd(i);
        }
        assert!(wait_until(Duration::from_secs(15), || rs[0]
            .metric("vassal_cluster_etcd_up")
            == Some(0.0)));
    };
    let start = revision(&cluster);
    stop(&mut cluster);
    let vassals: Vec<ClusterVassal> = (0..N)
        .map(|i| ClusterVassal::launch(&rs[0], "alpha", &format!("v{i}")))
        .collect();
    assert!(vassals.iter().any(|v| v.addr.to_string() == held));
    let all_known = |rs: &[ClusterRouter]| {
        wait_until(Duration::from_secs(40), || {
            rs[1]
                .identities()
                .iter()
                .filter(|i| i.1 == "alpha" && i.2 == "host-0")
                .count()
                == N - 1
        })
    };
    let restart = |cluster: &mut Cluster| {
        for i in 0..3 {
            cluster.start_etcd(i);
        }
        assert!(cluster.wait_etcd(Duration::from_secs(30)));
    };
    restart(&mut cluster);
    assert!(
        all_known(&rs),
        "{:?}\n{}",
        rs[1].identities().len(),
        rs[0].log_text()
    );
    let queued = revision(&cluster) - start;
    // Without batches: N - 1 identity writes, plus the block's.
    assert!(queued < 30, "{queued} writes for {N} queued identities");
    let value = cluster.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("/vassal/identities/{held}"),
    ]);
    assert_eq!(String::from_utf8_lossy(&value.stdout).trim(), foreign);
    let conflict = |line: &&str| {
        line.contains("\"event\":\"cluster_identity_conflict\"")
            && line.contains(&format!("\"address\":\"{held}\""))
            && line.contains("\"holder\":\"host-1\"")
    };
    let log = rs[0].log_text();
    // Once a session, however many syncs follow.
    assert_eq!(log.lines().filter(conflict).count(), 1, "{log}");

    // A new session rewrites every identity, each key present (this
    // node's, under the last session's lease): batches again.
    let again = revision(&cluster);
    stop(&mut cluster);
    restart(&mut cluster);
    assert!(wait_until(Duration::from_secs(40), || rs[0]
        .metric("vassal_cluster_etcd_up")
        == Some(1.0)));
    assert!(all_known(&rs));
    // Every identity under the new lease once the old one is revoked.
    std::thread::sleep(Duration::from_secs(1));
    assert!(all_known(&rs));
    let rewritten = revision(&cluster) - again;
    assert!(
        rewritten < 30,
        "{rewritten} writes to rewrite {N} identities"
    );
    let log = rs[0].log_text();
    assert_eq!(log.lines().filter(conflict).count(), 2, "{log}");
    drop(vassals);
}

#[test]
fn a_killed_router_vanishes_from_every_cache_within_its_lease_ttl() {
    let cluster = Cluster::new(3);
    let mut rs = routers(&cluster, 3);
    let v = ClusterVassal::launch(&rs[2], "alpha", "app");
    assert!(every_router_knows(&rs, |r| r.identities().len() == 1 && r.nodes().len() == 3));
    rs[2].kill();
    let killed = Instant::now();
    let others = &rs[..2];
    assert!(
        wait_until(Duration::from_secs(10), || others
            .iter()
            .all(|r| r.identities().is_empty() && r.nodes().len() == 2)),
        "{:?} {:?}",
        others[0].identities(),
        others[0].nodes()
    );
    // TTL 3 s; etcd may grant up to its own minimum TTL and checks expiry
    // every 500 ms: allow the TTL plus scheduling slack.
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(3 + 3), "took {took:?}");
    drop(v);
}

#[test]
fn a_partition_heals_without_duplicate_blocks_or_addresses() {
    let cluster = Cluster::new(5);
    // Four blocks (/18 of the /16), so the third router has a choice.
    let spec = |node: &str| ClusterRouterSpec {
        block: 18,
        ..ClusterRouterSpec::node(node)
    };
    let a = ClusterRouter::start(&cluster, 3, &spec("host-3"));
    let b = ClusterRouter::start(&cluster, 0, &spec("host-0"));
    let a_block = a.block();
    // The third router's name is chosen so that it tries the cut-off
    // host's block first (the claim starts at an FNV-1a hash of the name).
    let a_index = a_block.split('.').nth(2).unwrap().parse::<u32>().unwrap() / 64;
    let fnv = |s: &str| {
        s.bytes().fold(2166136261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16777619)
        })
    };
    let c_name = (0..)
        .map(|k| format!("host-4-{k}"))
        .find(|n| fnv(n) % 4 == a_index)
        .unwrap();
    let before = ClusterVassal::launch(&a, "alpha", "before");
    assert!(wait_until(Duration::from_secs(15), || b.nodes().len() == 2
        && b.identities().len() == 1));
    cluster.partition(3, true);
    // The others forget the cut-off host within its TTL...
    assert!(
        wait_until(Duration::from_secs(15), || b.nodes().len() == 1
            && b.identities().is_empty()),
        "{:?}",
        b.nodes()
    );
    // ...but a router starting meanwhile leaves its block alone (the node
    // record in etcd remembers it), while the cut-off host keeps serving it.
    let c = ClusterRouter::start(&cluster, 4, &spec(&c_name));
    assert_ne!(c.block(), a_block);
    assert!(wait_until(Duration::from_secs(15), || a.view()["etcd_up"] == false));
    assert_eq!(a.block(), a_block);
    let during = ClusterVassal::launch(&a, "alpha", "during");
    assert!(during.accepted(), "{:?}", during.answer);
    cluster.partition(3, false);
    // Healed: one block per node, every identity back, none twice.
    let rs = [a, b, c];
    assert!(
        every_router_knows(&rs, |r| r.nodes().len() == 3 && r.identities().len() == 2),
        "{:?} {:?}\n{}",
        rs[1].nodes(),
        rs[1].identities(),
        rs[0].log_text()
    );
    let nodes = rs[1].nodes();
    let blocks: HashSet<&String> = nodes.iter().map(|n| &n.1).collect();
    assert_eq!(blocks.len(), 3, "{nodes:?}");
    assert!(nodes.contains(&("host-3".to_owned(), a_block.clone())));
    let ids = rs[1].identities();
    let addrs: HashSet<&String> = ids.iter().map(|i| &i.0).collect();
    assert_eq!(addrs.len(), 2);
    assert!(ids.iter().all(|i| i.2 == "host-3"));
    assert_ne!(before.addr, during.addr);
}

#[test]
fn ipv6_blocks_pair_with_ipv4_and_both_identities_spread() {
    let cluster = Cluster::new(3);
    let spec = |node: &str| ClusterRouterSpec {
        cluster_extra: "prefix6 = \"fd00:240::/48\"\n".into(),
        ..ClusterRouterSpec::node(node)
    };
    let a = ClusterRouter::start(&cluster, 0, &spec("host-0"));
    let b = ClusterRouter::start(&cluster, 1, &spec("host-1"));
    let (v4, v6, g6, len6) = match a.lease_with("alpha", "web", true) {
        Response::Leased {
            ipv4,
            ipv6: Some(ipv6),
            gateway6: Some(g6),
            prefix6_len: Some(l),
            ..
        } => (ipv4, ipv6, g6, l),
        other => panic!("{other:?}"),
    };
    // Same offset in the paired /56 as in the /24.
    let third = v4.octets()[2];
    assert_eq!(len6, 56);
    assert_eq!(
        v6.to_string(),
        format!("fd00:240:0:{:x}00::{:x}", third, v4.octets()[3])
    );
    assert_eq!(g6.to_string(), format!("fd00:240:0:{third:x}00::1"));
    let (answer, attachment) = hello(&a, 2, "alpha", v4, Some(v6));
    assert!(matches!(answer, Response::Accepted { .. }), "{answer:?}");
    let want = vec![
        (v4.to_string(), "alpha".to_owned(), "host-0".to_owned()),
        (v6.to_string(), "alpha".to_owned(), "host-0".to_owned()),
    ];
    assert!(
        wait_until(Duration::from_secs(15), || {
            let mut ids = b.identities();
            ids.sort();
            let mut w = want.clone();
            w.sort();
            ids == w
        }),
        "{:?}",
        b.identities()
    );
    drop(attachment);
}
