//! Many hosts end to end (docs/cluster.md): three hosts made of network
//! namespaces on a bridge, a real three-member etcd, a real router on each
//! host wired to it (blocks, identities, routes, guard table), and real
//! vassals launched with `vassal-launch --address auto`. Every scenario
//! runs in both modes, direct routes and VXLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vassal_tests::cluster_harness::{Cluster, ClusterRouter, ClusterRouterSpec, ClusterVassal};
use vassal_tests::wait_until;

/// The lease TTL of every router here: a dead host is gone this fast.
const TTL: u64 = 2;

/// Three hosts, etcd, and a router on each.
struct Env {
    routers: Vec<ClusterRouter>,
    _cluster: Cluster,
}

fn env(mode: &'static str) -> Env {
    let cluster = Cluster::new(3);
    let routers: Vec<ClusterRouter> = (0..3)
        .map(|i| {
            let mut spec = ClusterRouterSpec::node(&format!("host-{i}"));
            spec.mode = mode;
            spec.lease_ttl = TTL;
            spec.masquerade = true;
            ClusterRouter::start(&cluster, i, &spec)
        })
        .collect();
    let env = Env {
        routers,
        _cluster: cluster,
    };
    for r in &env.routers {
        let others: Vec<String> = env
            .routers
            .iter()
            .filter(|o| o.node != r.node)
            .map(|o| o.block())
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || {
                let routes = r.routes();
                others.iter().all(|b| routes.contains(b.as_str()))
            }),
            "{}: no routes to {others:?}: {}\n{}",
            r.node,
            r.routes(),
            r.log_text()
        );
    }
    env
}

/// The MAC the VXLAN device of the host holding `block` has.
fn mac_of(block: &str) -> String {
    let net = block.split('/').next().unwrap_or_default();
    let octets: Vec<String> = net
        .split('.')
        .map(|o| format!("{:02x}", o.parse::<u8>().unwrap_or(0)))
        .collect();
    format!("02:76:{}", octets.join(":"))
}

fn a_dead_host_vanishes_and_routes_follow_restarts(mode: &'static str) {
    let mut env = env(mode);
    let blocks: Vec<String> = env.routers.iter().map(|r| r.block()).collect();
    // A vassal on host 2, known to host 0.
    let v = ClusterVassal::launch(&env.routers[2], "gone", "web");
    assert!(v.accepted());
    let addr = v.addr.to_string();
    assert!(wait_until(Duration::from_secs(10), || env.routers[0]
        .identities()
        .iter()
        .any(|(a, _, _)| *a == addr)));
    // Router 1 dies first (SIGKILL: nothing cleaned up), then router 2.
    env.routers[1].kill();
    env.routers[2].kill();
    let dead = Instant::now();
    let r0 = &env.routers[0];
    let gone = |r: &ClusterRouter, b: &str| {
        !r.routes().contains(b) && !r.nodes().iter().any(|(_, nb)| nb == b)
    };
    assert!(
        wait_until(Duration::from_secs(TTL + 3), || gone(r0, &blocks[1])
            && gone(r0, &blocks[2])
            && !r0.identities().iter().any(|(a, _, _)| *a == addr)),
        "{mode}: dead hosts still routed: {}",
        r0.routes()
    );
    let took = dead.elapsed();
    assert!(
        took <= Duration::from_secs(TTL + 2),
        "{mode}: took {took:?}"
    );
    if mode == "vxlan" {
        let fdb = r0.host_out(&["bridge", "fdb", "show", "dev", "vassal-vx"]);
        assert!(!fdb.contains(&mac_of(&blocks[2])), "{fdb}");
    }
    // Router 1's host still holds the routes it left, to blocks 0 and 2;
    // restarted, it routes exactly to the live host 0.
    assert!(env.routers[1].routes().contains(blocks[2].as_str()));
    env.routers[1].spawn();
    assert_eq!(env.routers[1].block(), blocks[1]);
    let r1 = &env.routers[1];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let routes = r1.routes();
            routes.contains(blocks[0].as_str()) && !routes.contains(blocks[2].as_str())
        }),
        "{mode}: not re-synced: {}",
        r1.routes()
    );
    assert!(wait_until(Duration::from_secs(10), || env.routers[0]
        .routes()
        .contains(blocks[1].as_str())));
    // A clean stop removes its routes, the guard table and the device.
    assert!(env.routers[1].stop(), "{}", env.routers[1].log_text());
    let r1 = &env.routers[1];
    assert_eq!(r1.routes().trim(), "", "{mode}");
    assert!(!r1
        .host_out(&["nft", "list", "tables"])
        .contains("vassal_cluster"));
    assert!(!r1.host_out(&["ip", "link", "show"]).contains("vassal-vx"));
}

#[test]
fn direct_a_dead_host_vanishes_and_routes_follow_restarts() {
    a_dead_host_vanishes_and_routes_follow_restarts("direct");
}

#[test]
fn vxlan_a_dead_host_vanishes_and_routes_follow_restarts() {
    a_dead_host_vanishes_and_routes_follow_restarts("vxlan");
}
