//! The router against the host side (issue 11): packets forged outside
//! with a vassal's source, vassals reaching for the host's own addresses,
//! and routers whose device names used to share one nftables table. Each
//! defence is tested alone where it has layers (the router's own nftables
//! table, then the router's datapath with the table's rules removed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_router::nat::table_name;
use vassal_tests::router_harness::{
    add_ipv6, echo_server, echo_server_cmd, tcp_echo, udp_echo, RouterSpec, TestRouter, TestVassal,
    PYTHON,
};
use vassal_tests::{unique, wait_until, KillOnDrop, Netns, Veth};

/// A /30 of 203.0.113.0/24 for test `n` of this file: (host side, the
/// "internet" side). The pid spreads concurrent test processes apart.
fn internet_pair(n: u8) -> (String, String) {
    let base = (std::process::id() % 16) as u8 * 16 + n * 4;
    (
        format!("203.0.113.{}", base + 1),
        format!("203.0.113.{}", base + 2),
    )
}

/// An "internet" namespace behind a veth with no reverse-path filter on
/// the host side, so that only vassal's own defences stand between a
/// forger there and a vassal.
fn internet(n: u8) -> (Netns, Veth, String, String) {
    let (host, far) = internet_pair(n);
    let ns = Netns::new("in");
    let veth = Veth::new(&ns, &format!("{host}/30"), &format!("{far}/30"));
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/rp_filter", veth.host),
        "0",
    )
    .unwrap();
    // The interface's value counts only when `all` is not stricter.
    let all = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap();
    assert_ne!(
        all.trim(),
        "1",
        "net.ipv4.conf.all.rp_filter = 1 (strict) would drop the forged packets before vassal sees them"
    );
    (ns, veth, host, far)
}

/// A python UDP receiver in `ns` bound to `ports`, which first sends
/// `open` from the first port to `first` (when set), then logs every
/// datagram as `<port> <src ip>:<src port> <payload>`.
fn udp_receiver(
    ns: &Netns,
    ports: &[u16],
    first: Option<(Ipv4Addr, u16)>,
    log: &Path,
) -> KillOnDrop {
    let script = format!(
        r#"
import socket, select
log = open({log:?}, "a", buffering=1)
socks = []
for p in {ports:?}:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", p)); socks.append(s)
first = {first}
if first: socks[0].sendto(b"open", first)
log.write("ready\n")
while True:
    r, _, _ = select.select(socks, [], [])
    for s in r:
        d, a = s.recvfrom(65536)
        log.write("%d %s:%d %s\n" % (s.getsockname()[1], a[0], a[1], d.decode(errors="replace")))
"#,
        log = log.display().to_string(),
        first = match first {
            Some((a, p)) => format!("({:?}, {p})", a.to_string()),
            None => "None".into(),
        },
    );
    let child = KillOnDrop::spawn(ns.command(PYTHON).args(["-c", &script]));
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(log)
            .is_ok_and(|t| t.contains("ready"))),
        "udp receiver did not start"
    );
    child
}

/// Sends `datagrams` (source address, source port, destination, port,
/// payload) with python in `cmd`'s namespace; IP_TRANSPARENT lets a socket
/// of the host use a source address that is not its own. A send refused
/// by an nftables drop (EPERM) is not an error.
fn send_udp(mut cmd: Command, datagrams: &[(String, u16, Ipv4Addr, u16, String)]) {
    let list: Vec<String> = datagrams
        .iter()
        .map(|(src, sport, dst, dport, data)| {
            format!(
                "({src:?}, {sport}, {:?}, {dport}, {data:?})",
                dst.to_string()
            )
        })
        .collect();
    let script = format!(
        r#"
import socket
for src, sport, dst, dport, data in [{}]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    s.bind((src, sport))
    try: s.sendto(data.encode(), (dst, dport))
    except PermissionError: pass  # an nft drop in the output hook
    s.close()
"#,
        list.join(", ")
    );
    let status = cmd.args(["-c", &script]).status().unwrap();
    assert!(status.success(), "sending {datagrams:?} failed");
}

const SPOOF_RULES: &str = r#"
[default]
out = "allow"
in = "deny"
established = true

[[in]]
action = "allow"
project = "alice"
proto = "udp"
dst_port = "9999"

[[in]]
action = "allow"
project = "bob"
proto = "udp"
dst_port = "6666"
"#;

/// Issue 11, item 3. Bob has a UDP flow to alice (5555 -> 9999) and takes
/// UDP on 6666 from anyone. Forged with alice's source: a "reply" on bob's
/// flow and a plain datagram, from the internet namespace (forwarded by
/// the host) and from a host process (IP_TRANSPARENT). None reaches bob:
/// first the router's nftables table stops them before the device (the
/// router never sees them), then, with those rules flushed by hand, the
/// router's own check drops and counts them. Genuine datagrams on the same
/// paths arrive each time, so the test cannot pass by losing everything.
#[test]
fn hostile_host_forged_vassal_source_never_reaches_a_vassal() {
    let (inet, veth, host, far) = internet(0);
    let mut router = TestRouter::start(&RouterSpec {
        rules: Some(SPOOF_RULES.into()),
        nat: Some(Some(veth.host.clone())),
        ..Default::default()
    });
    // A route to the vassal subnet through the host, as an upstream of a
    // host that announces it has.
    let (b, c) = router.net;
    inet.exec(&[
        "ip",
        "route",
        "add",
        &format!("10.{b}.{c}.0/24"),
        "via",
        &host,
    ]);
    let alice = TestVassal::attach(&router, "alice", 2);
    let bob = TestVassal::attach(&router, "bob", 3);
    let alice_log = router.dir.join("alice.log");
    let bob_log = router.dir.join("bob.log");
    let _a = udp_receiver(&alice.ns, &[9999], None, &alice_log);
    let _b = udp_receiver(&bob.ns, &[5555, 6666], Some((alice.addr, 9999)), &bob_log);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(
            &alice_log
        )
        .is_ok_and(|t| t.contains(&format!("9999 {}:5555 open", bob.addr)))),
        "bob's flow to alice was not opened:\n{}",
        router.log_text()
    );
    // The forger in the internet holds alice's address on its loopback.
    let a = alice.addr.to_string();
    inet.exec(&["ip", "addr", "add", &format!("{a}/32"), "dev", "lo"]);
    let gw = router.gateway().to_string();
    let round = |tag: &str| {
        send_udp(
            inet.command(PYTHON),
            &[
                (
                    a.clone(),
                    9999,
                    bob.addr,
                    5555,
                    format!("forged-reply-{tag}"),
                ),
                (
                    a.clone(),
                    4444,
                    bob.addr,
                    6666,
                    format!("forged-plain-{tag}"),
                ),
                (far.clone(), 4444, bob.addr, 6666, format!("genuine-{tag}")),
            ],
        );
        send_udp(
            Command::new(PYTHON),
            &[
                (
                    a.clone(),
                    9999,
                    bob.addr,
                    5555,
                    format!("forged-local-{tag}"),
                ),
                (
                    gw.clone(),
                    4445,
                    bob.addr,
                    6666,
                    format!("genuine-local-{tag}"),
                ),
            ],
        );
        // The genuine ones travel the same paths after the forged ones.
        assert!(
            wait_until(Duration::from_secs(5), || std::fs::read_to_string(&bob_log)
                .is_ok_and(|t| t.contains(&format!("genuine-{tag}"))
                    && t.contains(&format!("genuine-local-{tag}")))),
            "genuine datagrams lost ({tag}):\n{}",
            std::fs::read_to_string(&bob_log).unwrap_or_default()
        );
        let seen = std::fs::read_to_string(&bob_log).unwrap();
        assert!(
            !seen.contains("forged"),
            "a forged datagram reached bob ({tag}):\n{seen}"
        );
    };
    let spoofed = || router.metric("vassal_host_dropped_packets_total", "reason=\"spoofed\"");

    // Layer 1, the table: the router never saw the forged packets.
    round("table");
    assert_eq!(
        spoofed(),
        0.0,
        "the forged packets got past the nftables table"
    );

    // Layer 2, the router: the table's anti-spoofing rules removed by hand.
    let table = table_name(&router.device);
    for chain in ["forward", "output"] {
        vassal_tests::run(Command::new("nft").args(["flush", "chain", "inet", &table, chain]));
    }
    round("router");
    assert!(
        wait_until(Duration::from_secs(2), || spoofed() == 3.0),
        "spoofed host drops: {}",
        spoofed()
    );
    assert_eq!(router.dropped("bob", "firewall"), 0.0);
    assert!(router.stop(nix::sys::signal::Signal::SIGTERM));
}

/// Issue 11, item 4. Under the embedded default rules a vassal opens
/// nothing on the host's own addresses: not a TCP or UDP listener on the
/// egress interface's (public) IPv4 or IPv6 address, not ICMP echo there,
/// not the gateway; the ports of `[host] allow` work, and so do replies to
/// the vassal's own connections through NAT to the internet.
#[test]
fn hostile_host_vassals_reach_no_host_address_but_allowed_ports() {
    let (inet, veth, host, far) = internet(1);
    let net6 = format!("2001:db8:ffff:{:x}::", std::process::id() % 0xffff);
    let host6 = format!("{net6}1");
    add_ipv6(&inet, &veth, &format!("{host6}/64"), &format!("{net6}2/64"));
    const CLOSED: u16 = 7411;
    const OPEN: u16 = 7412;
    let router = TestRouter::start(&RouterSpec {
        nat: Some(Some(veth.host.clone())),
        ipv6: true,
        extra: format!("[host]\nallow = [\"tcp/{OPEN}\", \"udp/{OPEN}\"]\n"),
        ..Default::default()
    });
    let gw = router.gateway().to_string();
    let host_server = |bind: &str, port: u16, name: &str| {
        let log = router.dir.join(name);
        let child = KillOnDrop::spawn(
            Command::new(PYTHON)
                .args(["-c", &echo_server_cmd(bind, port, &log)])
                .stdin(Stdio::null()),
        );
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready"))
        }));
        (child, log)
    };
    let (_closed, closed_log) = host_server(&host, CLOSED, "closed.log");
    let (_open, open_log) = host_server(&host, OPEN, "open.log");
    let (_closed6, closed6_log) = host_server(&host6, CLOSED, "closed6.log");
    let (_open6, open6_log) = host_server(&host6, OPEN, "open6.log");
    let (_gws, gw_log) = host_server(&gw, CLOSED, "gateway.log");
    let inet_log = router.dir.join("internet.log");
    let _inet = echo_server(&inet, "0.0.0.0", 8080, &inet_log);
    let v = TestVassal::attach6(&router, "alice", 2);

    for addr in [&host, &host6] {
        assert!(
            !tcp_echo(&v.ns, addr, CLOSED, 100),
            "TCP to the host's public address {addr}"
        );
        assert!(
            !udp_echo(&v.ns, addr, CLOSED, 100),
            "UDP to the host's public address {addr}"
        );
        assert!(
            v.ping_fails(addr),
            "ICMP echo to the host's public address {addr}"
        );
    }
    assert!(!tcp_echo(&v.ns, &gw, CLOSED, 100), "TCP to the gateway");
    assert!(!udp_echo(&v.ns, &gw, CLOSED, 100), "UDP to the gateway");
    // The allowed ports, and the internet through NAT (replies pass).
    for addr in [&host, &host6] {
        assert!(
            tcp_echo(&v.ns, addr, OPEN, 100_000),
            "{addr}: {}",
            router.log_text()
        );
        assert!(udp_echo(&v.ns, addr, OPEN, 1000), "{addr}");
    }
    assert!(tcp_echo(&v.ns, &far, 8080, 100_000));
    assert!(udp_echo(&v.ns, &far, 8080, 1000));
    for log in [&closed_log, &closed6_log, &gw_log] {
        let seen = std::fs::read_to_string(log).unwrap();
        assert_eq!(seen.trim(), "ready", "{}: {seen}", log.display());
    }
    let v6 = v.addr6.clone().unwrap();
    for (log, src) in [(&open_log, v.addr.to_string()), (&open6_log, v6)] {
        let seen = std::fs::read_to_string(log).unwrap();
        assert!(
            seen.contains(&format!("tcp {src}")) && seen.contains(&format!("udp {src}")),
            "{seen}"
        );
    }
}

/// Every line of `nft list ruleset` that names device `dev` (quoted).
fn ruleset_lines_naming(dev: &str) -> usize {
    let out = vassal_tests::run(Command::new("nft").args(["list", "ruleset"]));
    String::from_utf8_lossy(&out.stdout)
        .matches(&format!("\"{dev}\""))
        .count()
}

/// Issue 11, item 9. Routers on `<x>-a` and `<x>_a` (distinct devices
/// that the old table name mapped to one table) run at once, NAT on: each
/// has its own table, and stopping one leaves the other's in place.
#[test]
fn hostile_host_routers_on_colliding_names_keep_their_own_tables() {
    let base = unique("vq");
    let mut routers: Vec<TestRouter> = ["-a", "_a"]
        .iter()
        .map(|suffix| {
            let mut r = TestRouter::start(&RouterSpec {
                nat: Some(None),
                ..Default::default()
            });
            r.stop(nix::sys::signal::Signal::SIGTERM);
            let dev = format!("{base}{suffix}");
            let config = std::fs::read_to_string(&r.config_path).unwrap().replace(
                &format!("device = \"{}\"", r.device),
                &format!("device = \"{dev}\""),
            );
            std::fs::write(&r.config_path, config).unwrap();
            r.device = dev;
            r.spawn();
            r
        })
        .collect();
    let (dash, under) = (routers[0].device.clone(), routers[1].device.clone());
    // Each table names its own device: forward, output and input rules.
    let (d, u) = (ruleset_lines_naming(&dash), ruleset_lines_naming(&under));
    assert!(d >= 5 && d == u, "{dash}: {d} rules, {under}: {u} rules");
    assert!(routers[1].stop(nix::sys::signal::Signal::SIGTERM));
    assert_eq!(ruleset_lines_naming(&under), 0);
    assert_eq!(
        ruleset_lines_naming(&dash),
        d,
        "stopping the router on {under} removed the table of {dash}"
    );
    // The survivor still attaches vassals.
    drop(TestVassal::attach(&routers[0], "alice", 2));
    assert!(routers[0].stop(nix::sys::signal::Signal::SIGTERM));
    assert_eq!(ruleset_lines_naming(&dash), 0);
}

/// Issue 11, item 9: an egress interface that would inject nft syntax, and
/// device names the kernel refuses or nft would read as a wildcard, are
/// refused by check-config with their location.
#[test]
fn hostile_host_check_config_refuses_hostile_interface_names() {
    let dir = std::env::temp_dir().join(format!("vassal-test-{}-cfg", unique("vq")));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("router.toml");
    for (text, field) in [
        (
            "device = \"vr0\"\n[nat]\negress_interface = \"eth0\\\" accept } table ip evil { chain c { type filter hook input priority 0; policy drop; } } table inet x { chain y { oifname \\\"eth0\"\n",
            "r.toml:3:20: nat.egress_interface",
        ),
        ("device = \"..\"\n", "r.toml:1:10: device"),
        ("device = \"vr*\"\n", "r.toml:1:10: device"),
    ] {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(vassal_tests::binary("vassal-router"))
            .args(["check-config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(
            err.contains(&field.replace("r.toml", &config.display().to_string())),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// State exhaustion of the control socket: a local uid that is not root
/// cannot connect at all (mode 0660, root's), and root's silent
/// connections are bounded by `limits.max_connections`: the one beyond is
/// closed at once and counted, while the others wait for their hello.
#[test]
fn hostile_host_control_connections_are_bounded() {
    use std::os::fd::AsFd;
    use vassal_attach::transport;
    let router = TestRouter::start(&RouterSpec {
        top: "[limits]\nmax_connections = 4\nhello_timeout_ms = 60000".into(),
        ..Default::default()
    });
    let socket = router.socket.clone();
    let code =
        vassal_tests::router_harness::as_uid(65534, move || match transport::connect(&socket) {
            Err(transport::TransportError::Connect {
                errno: nix::errno::Errno::EACCES,
                ..
            }) => 0,
            _ => 10,
        });
    assert_eq!(code, 0, "uid 65534 reached the control socket");
    let refused = || {
        router.metric(
            "vassal_attach_refusals_total",
            "reason=\"too_many_connections\"",
        )
    };
    // Four connections the router serves. One may be refused while the
    // router has not yet counted the harness's readiness probe as closed:
    // each is proven served before the next opens, and refused ones are
    // opened again.
    let mut held = Vec::new();
    while held.len() < 4 {
        let conn = transport::connect(&router.socket).unwrap();
        if transport::call(conn.as_fd(), &vassal_attach::Request::Stats, None).is_ok() {
            held.push(conn);
        }
    }
    let before = refused();
    let extra = transport::connect(&router.socket).unwrap();
    nix::sys::socket::setsockopt(
        &extra,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(5, 0),
    )
    .unwrap();
    assert!(
        matches!(
            transport::recv_response(extra.as_fd()),
            Err(transport::TransportError::Closed)
        ),
        "the fifth connection was kept"
    );
    assert!(wait_until(Duration::from_secs(5), || refused() == before + 1.0));
    // The four are still open: each can still be served.
    for conn in &held {
        let response = transport::call(conn.as_fd(), &vassal_attach::Request::Stats, None);
        assert!(response.is_ok(), "{response:?}");
    }
}
