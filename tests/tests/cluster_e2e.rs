//! Many hosts end to end (docs/cluster.md): three hosts made of network
//! namespaces on a bridge, a real three-member etcd, a real router on each
//! host wired to it (blocks, identities, routes, guard table), and real
//! vassals launched with `vassal-launch --address auto`. Every scenario
//! runs in both modes, direct routes and VXLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vassal_tests::cluster_harness::{
    Cluster, ClusterRouter, ClusterRouterSpec, ClusterVassal, LaunchedVassal,
};
use vassal_tests::launcher_harness::name;
use vassal_tests::router_harness::PYTHON;
use vassal_tests::{wait_until, KillOnDrop};

/// Vassals reach any known vassal and the outside; only their own project
/// gets in (`peer = "same"`, docs/rules.md). Across hosts the receiving
/// router takes the sender's project from its identity cache.
const RULES: &str = r#"
[default]
out = "deny"
in = "deny"
established = true

[[out]]
action = "allow"
peer = "vassal"

[[out]]
action = "allow"
peer = "outside"

[[in]]
action = "allow"
peer = "same"
"#;

/// A server answering every TCP connection and UDP datagram on `port`
/// with the address it came from (so the client sees whether its source
/// was kept or translated).
fn server_script(port: u16) -> String {
    [
        "import socket, threading",
        "def tcp():",
        "    s = socket.socket()",
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "    s.bind(('0.0.0.0', PORT))",
        "    s.listen(16)",
        "    while True:",
        "        c, a = s.accept()",
        "        c.sendall(a[0].encode())",
        "        c.close()",
        "threading.Thread(target=tcp, daemon=True).start()",
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "u.bind(('0.0.0.0', PORT))",
        "while True:",
        "    d, a = u.recvfrom(2048)",
        "    u.sendto(a[0].encode(), a)",
    ]
    .join("\n")
    .replace("PORT", &port.to_string())
}

/// A client asking `dst:port` over `kind` (tcp or udp) until it answers
/// or `secs` pass (the server may still be starting); prints the answer,
/// exits 1 without one.
fn client_script(kind: &str, dst: &str, port: u16, secs: u64) -> String {
    [
        "import socket, sys, time",
        "end = time.time() + SECS",
        "while True:",
        "    try:",
        "        if 'KIND' == 'tcp':",
        "            c = socket.create_connection(('DST', PORT), timeout=0.5)",
        "            print(c.recv(100).decode())",
        "        else:",
        "            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "            u.settimeout(0.3)",
        "            u.sendto(b'x', ('DST', PORT))",
        "            print(u.recvfrom(100)[0].decode())",
        "        break",
        "    except OSError:",
        "        if time.time() > end:",
        "            sys.exit(1)",
        "        time.sleep(0.1)",
    ]
    .join("\n")
    .replace("SECS", &secs.to_string())
    .replace("KIND", kind)
    .replace("DST", dst)
    .replace("PORT", &port.to_string())
}

/// Runs a client in a harness vassal's namespace: the answer, if any.
fn ask_from(v: &ClusterVassal, kind: &str, dst: &str, port: u16, secs: u64) -> Option<String> {
    let out =
        v.ns.command(PYTHON)
            .args(["-c", &client_script(kind, dst, port, secs)])
            .output()
            .expect("python");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs a client inside a launched vassal: the answer, if any.
fn ask_from_launched(
    v: &LaunchedVassal,
    kind: &str,
    dst: &str,
    port: u16,
    secs: u64,
) -> Option<String> {
    let (ok, out) = v.python(&client_script(kind, dst, port, secs));
    ok.then(|| out.trim().to_owned())
}

/// The lease TTL of every router here: a dead host is gone this fast.
const TTL: u64 = 2;

/// Three hosts, etcd, and a router on each.
struct Env {
    routers: Vec<ClusterRouter>,
    _cluster: Cluster,
}

fn env(mode: &'static str) -> Env {
    env_with(mode, "")
}

/// [`env`] with extra router configuration tables.
fn env_with(mode: &'static str, tables: &str) -> Env {
    let cluster = Cluster::new(3);
    let routers: Vec<ClusterRouter> = (0..3)
        .map(|i| {
            let mut spec = ClusterRouterSpec::node(&format!("host-{i}"));
            spec.mode = mode;
            spec.lease_ttl = TTL;
            spec.masquerade = true;
            spec.rules = Some(RULES.into());
            spec.tables = tables.to_owned();
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

/// (a) A project's vassals on two hosts reach each other (TCP and UDP,
/// both ways) under `peer = "same"` rules, with NAT on yet with their own
/// source addresses (the masquerade leaves the cluster prefix alone);
/// another project's vassal, whose own rules let it send, is denied by
/// the receiving router's in chain with the project its identity cache
/// holds for the sender, and counted there.
fn same_project_crosses_hosts_and_others_are_denied(mode: &'static str) {
    let env = env(mode);
    let shop = name("shop");
    let port = 7000;
    // A real vassal of `shop` on host 1, serving.
    let server = LaunchedVassal::start(
        &env.routers[1],
        &shop,
        &[PYTHON, "-c", &server_script(port)],
    );
    // Another of `shop` on host 0 (the harness's attach: the launcher
    // runs one vassal of a name per machine, and these hosts share one).
    let client = ClusterVassal::launch(&env.routers[0], &shop, "client");
    assert!(client.accepted(), "{:?}", client.answer);
    let dst = server.addr.to_string();
    assert!(
        wait_until(Duration::from_secs(10), || env.routers[0]
            .identities()
            .iter()
            .any(|(a, p, _)| *a == dst && *p == shop)),
        "{mode}: host 0 does not know the server"
    );
    for kind in ["udp", "tcp"] {
        assert_eq!(
            ask_from(&client, kind, &dst, port, 10).as_deref(),
            Some(client.addr.to_string().as_str()),
            "{mode} {kind}: host 0 -> host 1 (the server must see the vassal's own source)\n{}",
            env.routers[1].log_text()
        );
    }
    // The other way: the launched vassal asks a server on host 0.
    let _back = KillOnDrop::spawn(client.ns.command(PYTHON).args(["-c", &server_script(port)]));
    for kind in ["udp", "tcp"] {
        assert_eq!(
            ask_from_launched(&server, kind, &client.addr.to_string(), port, 10).as_deref(),
            Some(dst.as_str()),
            "{mode} {kind}: host 1 -> host 0"
        );
    }
    // Another project on host 2: its out chain lets it send to any known
    // vassal, host 1's in chain refuses it.
    let mallory = LaunchedVassal::start(&env.routers[2], &name("mal"), &["/bin/sleep", "600"]);
    for kind in ["udp", "tcp"] {
        assert_eq!(
            ask_from_launched(&mallory, kind, &dst, port, 1),
            None,
            "{mode} {kind}: another project got in"
        );
    }
    assert!(
        env.routers[1].dropped(&shop, "firewall") >= 2.0,
        "{mode}: host 1 did not count the denial"
    );
    assert_eq!(env.routers[2].dropped(&mallory.name, "firewall"), 0.0);
}

#[test]
fn direct_same_project_crosses_hosts_and_others_are_denied() {
    same_project_crosses_hosts_and_others_are_denied("direct");
}

#[test]
fn vxlan_same_project_crosses_hosts_and_others_are_denied() {
    same_project_crosses_hosts_and_others_are_denied("vxlan");
}
