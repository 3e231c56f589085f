//! Many hosts end to end (docs/cluster.md): three hosts made of network
//! namespaces on a bridge, a real three-member etcd, a real router on each
//! host wired to it (blocks, identities, routes, guard table), and real
//! vassals launched with `vassal-launch --address auto`. Every scenario
//! runs in both modes, direct routes and VXLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use vassal_tests::cluster_harness::{Cluster, ClusterRouter, ClusterRouterSpec, LaunchedVassal};
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

# A service open to any address of the cluster prefix, known or not: the
# forged sources of test (d) would get in by it.
[[in]]
action = "allow"
peer = "unknown"
proto = "udp"
dst_port = 7300
"#;

/// The vassals' server: every TCP connection and UDP datagram on `port`
/// is answered with the address it came from (so the client sees whether
/// its source was kept or translated); TCP on `port + 1` echoes; a UDP
/// `report` is answered with every source seen so far.
fn server_script(port: u16) -> String {
    [
        "import socket, threading",
        "def answer():",
        "    s = socket.socket()",
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "    s.bind(('0.0.0.0', PORT))",
        "    s.listen(16)",
        "    while True:",
        "        c, a = s.accept()",
        "        c.sendall(a[0].encode())",
        "        c.close()",
        "def echo(c):",
        "    while True:",
        "        d = c.recv(4096)",
        "        if not d: break",
        "        c.sendall(d)",
        "def echoes():",
        "    s = socket.socket()",
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)",
        "    s.bind(('0.0.0.0', PORT + 1))",
        "    s.listen(16)",
        "    while True:",
        "        c, a = s.accept()",
        "        threading.Thread(target=echo, args=(c,), daemon=True).start()",
        "threading.Thread(target=answer, daemon=True).start()",
        "threading.Thread(target=echoes, daemon=True).start()",
        "seen = set()",
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "u.bind(('0.0.0.0', PORT))",
        "while True:",
        "    d, a = u.recvfrom(2048)",
        "    if d == b'report':",
        "        u.sendto(','.join(sorted(seen)).encode(), a)",
        "    else:",
        "        seen.add(a[0])",
        "        u.sendto(a[0].encode(), a)",
    ]
    .join("\n")
    .replace("PORT", &port.to_string())
}

fn client_script(kind: &str, dst: &str, port: u16, secs: u64) -> String {
    [
        "import socket, sys, time",
        "end = time.time() + SECS",
        "while True:",
        "    try:",
        "        if 'KIND' == 'connect':",
        "            socket.create_connection(('DST', PORT), timeout=0.5)",
        "            print('connected')",
        "        elif 'KIND' == 'udp-report':",
        "            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "            u.settimeout(0.3)",
        "            u.sendto(b'report', ('DST', PORT))",
        "            print(u.recvfrom(4096)[0].decode())",
        "        elif 'KIND' == 'tcp':",
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

/// Runs a client in host `router`'s own namespace: the answer, if any.
fn ask_from_host(
    router: &ClusterRouter,
    kind: &str,
    dst: &str,
    port: u16,
    secs: u64,
) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &router.ns, PYTHON, "-c"])
        .arg(client_script(kind, dst, port, secs))
        .output()
        .expect("python");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

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
    cluster: Cluster,
}

/// Two vassals of `project`, each serving on `port`: the server on host 1,
/// the client on host 0.
fn serving_pair(env: &Env, project: &str, port: u16) -> (LaunchedVassal, LaunchedVassal) {
    let serve = server_script(port);
    let start = |host: usize| {
        LaunchedVassal::start(
            &env.cluster,
            &env.routers[host],
            project,
            &[PYTHON, "-c", &serve],
        )
    };
    (start(1), start(0))
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
    let env = Env { routers, cluster };
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
    let v = LaunchedVassal::start(
        &env.cluster,
        &env.routers[2],
        &name("gone"),
        &["/bin/sleep", "600"],
    );
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
    drop(v);
}

#[test]
fn direct_a_dead_host_vanishes_and_routes_follow_restarts() {
    a_dead_host_vanishes_and_routes_follow_restarts("direct");
}

#[test]
fn vxlan_a_dead_host_vanishes_and_routes_follow_restarts() {
    a_dead_host_vanishes_and_routes_follow_restarts("vxlan");
}

/// Waits until `router` has `v`'s identity in its cache.
fn knows(router: &ClusterRouter, v: &LaunchedVassal) -> bool {
    let addr = v.addr.to_string();
    wait_until(Duration::from_secs(10), || {
        router
            .identities()
            .iter()
            .any(|(a, p, _)| *a == addr && *p == v.name)
    })
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
    // The same project on hosts 1 and 0, each serving.
    let (server, client) = serving_pair(&env, &shop, port);
    assert!(
        knows(&env.routers[0], &server),
        "{mode}: host 0 does not know the server"
    );
    assert!(
        knows(&env.routers[1], &client),
        "{mode}: host 1 does not know the client"
    );
    let (a, b) = (client.addr.to_string(), server.addr.to_string());
    for kind in ["udp", "tcp"] {
        assert_eq!(
            ask_from_launched(&client, kind, &b, port, 10).as_deref(),
            Some(a.as_str()),
            "{mode} {kind}: host 0 -> host 1 (the server must see the vassal's own source)\n{}",
            env.routers[1].log_text()
        );
        assert_eq!(
            ask_from_launched(&server, kind, &a, port, 10).as_deref(),
            Some(b.as_str()),
            "{mode} {kind}: host 1 -> host 0"
        );
    }
    // Another project on host 2: its out chain lets it send to any known
    // vassal, host 1's in chain refuses it.
    let mallory = LaunchedVassal::start(
        &env.cluster,
        &env.routers[2],
        &name("mal"),
        &["/bin/sleep", "600"],
    );
    for kind in ["udp", "tcp"] {
        assert_eq!(
            ask_from_launched(&mallory, kind, &b, port, 1),
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

/// IP packets this host's own stack split into fragments so far
/// (`/proc/net/snmp`, Ip: FragCreates, of its namespace).
fn fragments_created(router: &ClusterRouter) -> u64 {
    let snmp = router.host_out(&["cat", "/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (ip.next(), ip.next()) else {
        panic!("no Ip: lines in /proc/net/snmp of {}: {snmp}", router.ns);
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "FragCreates")
        .expect("FragCreates");
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .expect("FragCreates value")
}

/// Full-size packets between vassals of two hosts, every MTU at its
/// default (1500): 2 MB echoed over TCP arrive whole, and neither host
/// fragments a packet on the underlay. In VXLAN mode that needs the
/// VXLAN device 50 bytes smaller than the underlay (else each 1500-byte
/// packet becomes a 1550-byte datagram cut in two: a tenth of the
/// throughput); the vassal's TCP learns the smaller path MTU from the
/// kernel's "fragmentation needed", which its router lets through.
fn full_size_packets_cross_hosts_unfragmented(mode: &'static str) {
    let env = env(mode);
    let shop = name("shop");
    let port = 7000;
    let (server, client) = serving_pair(&env, &shop, port);
    assert!(knows(&env.routers[0], &server));
    if mode == "vxlan" {
        for r in &env.routers[..2] {
            let link = r.host_out(&["ip", "link", "show", "vassal-vx"]);
            assert!(link.contains(" mtu 1450 "), "{}: {link}", r.node);
        }
    }
    let before: Vec<u64> = env.routers[..2].iter().map(fragments_created).collect();
    let bulk = [
        "import socket, threading",
        "data = bytes(range(256)) * 8192",
        "got = bytearray()",
        "try:",
        "    c = socket.create_connection(('DST', PORT), timeout=20)",
        "    def send():",
        "        c.sendall(data)",
        "        c.shutdown(socket.SHUT_WR)",
        "    threading.Thread(target=send, daemon=True).start()",
        "    while len(got) < len(data):",
        "        d = c.recv(65536)",
        "        if not d: break",
        "        got += d",
        "    print('whole' if got == data else 'got %d bytes' % len(got))",
        "except OSError as e:",
        "    print('after %d bytes: %r' % (len(got), e))",
    ]
    .join("\n")
    .replace("DST", &server.addr.to_string())
    .replace("PORT", &(port + 1).to_string());
    let (ok, out) = client.python(&bulk);
    assert!(ok && out.trim() == "whole", "{mode}: echo of 2 MB: {out}");
    let after: Vec<u64> = env.routers[..2].iter().map(fragments_created).collect();
    assert_eq!(
        before, after,
        "{mode}: hosts 0 and 1 fragmented packets on the underlay"
    );
}

#[test]
fn direct_full_size_packets_cross_hosts_unfragmented() {
    full_size_packets_cross_hosts_unfragmented("direct");
}

#[test]
fn vxlan_full_size_packets_cross_hosts_unfragmented() {
    full_size_packets_cross_hosts_unfragmented("vxlan");
}

/// (c) etcd lost entirely: routes stay, a TCP connection across hosts
/// keeps carrying data, new cross-host traffic still passes (identities
/// cached), a local attach works, the gauge and the event say etcd is
/// down; once etcd is back, a vassal attached meanwhile on another host
/// appears everywhere and is reached.
fn losing_etcd_keeps_the_cluster_static(mode: &'static str) {
    let mut env = env(mode);
    let shop = name("shop");
    let port = 7000;
    let (server, client) = serving_pair(&env, &shop, port);
    assert!(knows(&env.routers[0], &server) && knows(&env.routers[1], &client));
    let dst = server.addr.to_string();
    let me = client.addr.to_string();
    assert!(
        ask_from_launched(&client, "udp", &dst, port, 10).is_some(),
        "{mode}: no path before"
    );
    // A TCP connection from host 1's vassal to host 0's echo port, kept
    // open across the outage: it echoes once now, and once more when the
    // test creates `go`.
    let go = env.cluster.dir.join(format!("go-{mode}"));
    let flow = format!(
        "import socket, os, time\n\
c = socket.create_connection(('{me}', {}), timeout=5)\n\
c.sendall(b'one'); assert c.recv(3) == b'one'\n\
print('first', flush=True)\n\
while not os.path.exists('{}'): time.sleep(0.05)\n\
c.sendall(b'two'); assert c.recv(3) == b'two'\n\
print('second', flush=True)\n",
        port + 1,
        go.display()
    );
    let mut kept = std::process::Command::new("nsenter")
        .args([
            "-t",
            &server.pid().to_string(),
            "-n",
            "--",
            PYTHON,
            "-c",
            &flow,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("nsenter");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(kept.stdout.take().unwrap()));
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("first"),
        "{mode}"
    );
    let routes_before: Vec<String> = env.routers.iter().map(|r| r.routes()).collect();

    for i in 0..3 {
        env.cluster.kill_etcd(i);
    }
    for r in &env.routers {
        assert!(
            wait_until(Duration::from_secs(15), || r
                .metric("vassal_cluster_etcd_up")
                == Some(0.0)),
            "{mode}: {} still thinks etcd is up",
            r.node
        );
        assert!(r.log_text().contains("\"event\":\"cluster_etcd_down\""));
    }
    // Nothing moved: routes, the kept connection, new flows.
    let routes_now: Vec<String> = env.routers.iter().map(|r| r.routes()).collect();
    assert_eq!(routes_now, routes_before, "{mode}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("second"),
        "{mode}"
    );
    assert!(kept.wait().unwrap().success());
    assert_eq!(
        ask_from_launched(&client, "tcp", &dst, port, 5).as_deref(),
        Some(me.as_str()),
        "{mode}: new flow"
    );
    // A local attach works without etcd; so does one of the project on
    // host 2, which host 0 cannot learn of yet.
    let local = LaunchedVassal::start(
        &env.cluster,
        &env.routers[0],
        &name("local"),
        &["/bin/sleep", "600"],
    );
    let late = LaunchedVassal::start(
        &env.cluster,
        &env.routers[2],
        &shop,
        &[PYTHON, "-c", &server_script(port)],
    );
    let late_addr = late.addr.to_string();
    assert!(!env.routers[0]
        .identities()
        .iter()
        .any(|(a, _, _)| *a == late_addr));

    for i in 0..3 {
        env.cluster.start_etcd(i);
    }
    assert!(env.cluster.wait_etcd(Duration::from_secs(20)));
    assert!(
        wait_until(Duration::from_secs(15), || env.routers[0]
            .identities()
            .iter()
            .any(|(a, p, _)| *a == late_addr && *p == shop)),
        "{mode}: the vassal attached during the outage never appeared on host 0"
    );
    assert!(wait_until(Duration::from_secs(10), || env.routers[0]
        .metric("vassal_cluster_etcd_up")
        == Some(1.0)));
    assert!(env.routers[0]
        .log_text()
        .contains("\"event\":\"cluster_etcd_up\""));
    assert_eq!(
        ask_from_launched(&client, "udp", &late_addr, port, 10).as_deref(),
        Some(me.as_str()),
        "{mode}: the new remote vassal is not reached"
    );
    drop(local);
}

#[test]
fn direct_losing_etcd_keeps_the_cluster_static() {
    losing_etcd_keeps_the_cluster_static("direct");
}

#[test]
fn vxlan_losing_etcd_keeps_the_cluster_static() {
    losing_etcd_keeps_the_cluster_static("vxlan");
}

/// The vassals of a forgery, all of one project: a `target` on host 0
/// answering on `port` (the server of [`server_script`]), a `forger` on
/// host `forger_host`, and a vassal on host 2 whose source it borrows.
struct Forgery {
    project: String,
    target: LaunchedVassal,
    forger: LaunchedVassal,
    on_host_2: LaunchedVassal,
}

fn forgery(env: &Env, forger_host: usize, port: u16) -> Forgery {
    let project = name("shop");
    let start = |host: usize, command: &[&str]| {
        LaunchedVassal::start(&env.cluster, &env.routers[host], &project, command)
    };
    let target = start(0, &[PYTHON, "-c", &server_script(port)]);
    let forger = start(forger_host, &["/bin/sleep", "600"]);
    let on_host_2 = start(2, &["/bin/sleep", "600"]);
    Forgery {
        project,
        target,
        forger,
        on_host_2,
    }
}

/// (d) A vassal on host 1 that took its namespace over sends toward a
/// vassal of its project on host 0 with the source of a vassal of that
/// project on host 2 (whose identity the receiver's peer rules would
/// let in), then with the source of a vassal on host 0 itself: neither
/// arrives (the sending router counts them as spoofed), while its own
/// source does.
fn a_forged_cluster_source_never_arrives(mode: &'static str) {
    let env = env(mode);
    let port = 7300;
    let Forgery {
        project: shop,
        target,
        forger,
        on_host_2,
    } = forgery(&env, 1, port);
    // The other vassal whose address it borrows, registered everywhere.
    let sibling = LaunchedVassal::start(
        &env.cluster,
        &env.routers[0],
        &name("sib"),
        &["/bin/sleep", "600"],
    );
    for v in [&target, &on_host_2, &sibling] {
        assert!(knows(&env.routers[1], v) && knows(&env.routers[0], v));
    }
    let dst = target.addr.to_string();
    let own = forger.addr.to_string();
    // What the target saw, asked from the forger's own address.
    let seen = || ask_from_launched(&forger, "udp-report", &dst, port, 10).unwrap_or_default();
    let send = |from: &str| {
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('{from}', 0))\nfor _ in range(5): s.sendto(b'x', ('{dst}', {port}))\n"
        );
        assert!(forger.python(&script).0, "sending from {from}");
    };
    // Its own source arrives (the path works).
    assert_eq!(
        ask_from_launched(&forger, "udp", &dst, port, 10).as_deref(),
        Some(own.as_str()),
        "{mode}"
    );
    for (what, forged) in [
        ("host 2's block", on_host_2.addr.to_string()),
        ("host 0's block", sibling.addr.to_string()),
    ] {
        assert!(
            forger
                .exec(&["ip", "addr", "add", &format!("{forged}/32"), "dev", "vx0"])
                .0
        );
        let spoofed = env.routers[1].dropped(&shop, "spoofed");
        send(&forged);
        // Asked after them, on the same path: had they arrived, the
        // target would have seen them first.
        let report = seen();
        assert!(report.contains(own.as_str()), "{mode}: {report}");
        assert!(
            !report.split(',').any(|a| a == forged),
            "{mode}: a source in {what} arrived at host 0: {report}"
        );
        assert!(
            env.routers[1].dropped(&shop, "spoofed") >= spoofed + 5.0,
            "{mode}: host 1 did not count the forgery from {what}"
        );
    }
}

#[test]
fn direct_a_forged_cluster_source_never_arrives() {
    a_forged_cluster_source_never_arrives("direct");
}

#[test]
fn vxlan_a_forged_cluster_source_never_arrives() {
    a_forged_cluster_source_never_arrives("vxlan");
}

/// (e) A vassal whose rules let it reach any outside address still never
/// reaches etcd (on another host, or on its own host even with the etcd
/// port open in `[host] allow`) or another host's underlay address: each
/// counted as `cluster_infra`. The host reaches all of them, and the
/// vassal reaches a real outside address.
fn a_vassal_never_reaches_etcd_or_the_underlay(mode: &'static str) {
    let env = env_with(mode, "[host]\nallow = [\"tcp/2379\"]\n");
    let h0 = &env.routers[0];
    // Servers on host 1 and 2 (every address), and "the internet" on
    // host 1: 203.0.113.1, routed from host 0 through host 1.
    let servers: Vec<KillOnDrop> = [1usize, 2]
        .iter()
        .map(|&i| {
            KillOnDrop::spawn(
                env.cluster.hosts[i]
                    .ns
                    .command(PYTHON)
                    .args(["-c", &server_script(7400)]),
            )
        })
        .collect();
    env.cluster.hosts[1]
        .ns
        .exec(&["ip", "addr", "add", "203.0.113.1/32", "dev", "lo"]);
    env.cluster.hosts[0].ns.exec(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        &env.cluster.hosts[1].underlay.to_string(),
    ]);
    let servers_kinds: &[&str] = &["tcp", "udp"];
    let etcd_kinds: &[&str] = &["connect"];
    let targets: Vec<(&str, String, u16, &[&str])> = vec![
        (
            "etcd on host 1",
            env.cluster.hosts[1].underlay.to_string(),
            2379,
            etcd_kinds,
        ),
        (
            "etcd on this host",
            env.cluster.hosts[0].underlay.to_string(),
            2379,
            etcd_kinds,
        ),
        (
            "host 2's underlay",
            env.cluster.hosts[2].underlay.to_string(),
            7400,
            servers_kinds,
        ),
    ];
    // Each answers host 0 (so a failure below is the router's doing).
    for (what, addr, port, kinds) in &targets {
        for kind in kinds.iter() {
            assert!(
                ask_from_host(h0, kind, addr, *port, 10).is_some(),
                "{mode}: host 0 cannot reach {what} at {addr}:{port} over {kind}"
            );
        }
    }
    // TCP: a UDP server bound to any address answers from its primary
    // one, which the NAT would not match.
    assert!(
        ask_from_host(h0, "tcp", "203.0.113.1", 7400, 10).is_some(),
        "{mode}: host 0 cannot reach the outside"
    );
    let v = LaunchedVassal::start(&env.cluster, h0, &name("nosy"), &["/bin/sleep", "600"]);
    assert_eq!(
        ask_from_launched(&v, "tcp", "203.0.113.1", 7400, 10).as_deref(),
        Some(env.cluster.hosts[0].underlay.to_string().as_str()),
        "{mode}: the vassal cannot reach the outside (NAT through its host)"
    );
    let mut reached = Vec::new();
    for (what, addr, port, kinds) in &targets {
        for kind in kinds.iter() {
            if ask_from_launched(&v, kind, addr, *port, 1).is_some() {
                reached.push(format!("{what} at {addr}:{port} over {kind}"));
            }
        }
    }
    assert!(reached.is_empty(), "{mode}: the vassal reached {reached:?}");
    assert!(
        h0.dropped(&v.name, "cluster_infra") >= 4.0,
        "{mode}: {} cluster_infra drops",
        h0.dropped(&v.name, "cluster_infra")
    );
    drop(servers);
}

#[test]
fn direct_a_vassal_never_reaches_etcd_or_the_underlay() {
    a_vassal_never_reaches_etcd_or_the_underlay("direct");
}

#[test]
fn vxlan_a_vassal_never_reaches_etcd_or_the_underlay() {
    a_vassal_never_reaches_etcd_or_the_underlay("vxlan");
}

/// (f) VXLAN mode: the host's VXLAN socket listens on UDP 4789 of every
/// host address, its gateway included. A vassal that sends it a VXLAN
/// datagram whose inner frame claims to come from host 2 (host 2's MAC, a
/// source of host 2's block that the identity cache holds for the same
/// project) must not get that frame decapsulated into its own host: the
/// guard table takes VXLAN only from the other hosts' underlay addresses.
/// `[host] allow` opens the port here, as an operator might by mistake, so
/// that the guard table is what is tried (the host table would stop it
/// first otherwise).
#[test]
fn vxlan_a_vassal_cannot_inject_frames_at_its_hosts_vxlan_socket() {
    let env = env_with("vxlan", "[host]\nallow = [\"udp/4789\"]\n");
    let port = 7300;
    let Forgery {
        target,
        forger,
        on_host_2,
        ..
    } = forgery(&env, 0, port);
    assert!(knows(&env.routers[0], &on_host_2));
    // Its own source arrives (the path works, and the target notes it).
    let own = forger.addr.to_string();
    assert_eq!(
        ask_from_launched(&forger, "udp", &target.addr.to_string(), port, 10).as_deref(),
        Some(own.as_str())
    );
    let block0 = env.routers[0].block();
    let gateway = block0.replace(".0/24", ".1");
    let mac = |block: &str| -> String {
        let hex: Vec<String> = mac_of(block).split(':').map(str::to_owned).collect();
        format!("bytes.fromhex('{}')", hex.join(""))
    };
    let script = format!(
        r#"
import socket, struct
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b)//2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return (~t) & 0xffff
src = socket.inet_aton("{forged}"); dst = socket.inet_aton("{dst}")
udp = struct.pack("!HHHH", 5555, {port}, 9, 0) + b"x"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = {to} + {from_} + b"\x08\x00"
vxlan = struct.pack("!II", 0x08000000, 1 << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(vxlan + eth + ip + udp, ("{gateway}", 4789))
"#,
        forged = on_host_2.addr,
        dst = target.addr,
        to = mac(&block0),
        from_ = mac(&env.routers[2].block()),
    );
    assert!(forger.python(&script).0, "sending the VXLAN datagrams");
    // Asked after them, from the forger's own address: had they arrived,
    // the target would have seen them first.
    let report = ask_from_launched(&forger, "udp-report", &target.addr.to_string(), port, 10)
        .unwrap_or_default();
    assert!(report.contains(own.as_str()), "{report}");
    assert!(
        !report.split(',').any(|a| a == on_host_2.addr.to_string()),
        "a frame injected at host 0's VXLAN socket arrived: {report}"
    );
}
