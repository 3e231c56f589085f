//! vassal-router datapath with real traffic: vassal <-> host, vassal <->
//! vassal, established replies, anti-spoofing, exact byte counters, IPv6,
//! and reload under traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use vassal_tests::router_harness::{
    echo_server, tcp_echo, udp_echo, RouterSpec, TestRouter, TestVassal, PYTHON,
};
use vassal_tests::wait_until;

/// Rules letting vassals reach the gateway (and be reached from it), and
/// alice reach bob but not the other way round.
const GATEWAY_AND_ALICE_TO_BOB: &str = r#"
[default]
out = "allow"
in = "deny"
established = true

[[in]]
action = "allow"
project = "bob"
proto = "icmp"

[[in]]
action = "allow"
project = "bob"
proto = "tcp"
dst_port = "7000"
"#;

#[test]
fn router_vassal_reaches_host_and_counters_match_the_bytes() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n".into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "alice", 2);
    // 3 echo requests of 100 payload bytes: 20 + 8 + 100 = 128 IP bytes each.
    assert!(
        v.ping(&router.gateway().to_string(), 3, 100),
        "{}",
        router.log_text()
    );
    let m = router.scrape();
    let get = |name: &str| vassal_tests::metric(&m, name, "project=\"alice\"").unwrap_or(-1.0);
    assert_eq!(get("vassal_tx_packets_total"), 3.0);
    assert_eq!(get("vassal_tx_bytes_total"), 384.0);
    assert_eq!(get("vassal_rx_packets_total"), 3.0);
    assert_eq!(get("vassal_rx_bytes_total"), 384.0);
    assert_eq!(get("vassal_attached"), 1.0);
    // The echo flow is in the table (its id is the same for every request).
    assert!(
        get("vassal_flows") >= 1.0
            || wait_until(Duration::from_secs(3), || router
                .metric("vassal_flows", "project=\"alice\"")
                >= 1.0)
    );

    // The host may not open anything into the vassal (in default deny),
    // and that is counted as a firewall drop of alice.
    let dropped = router.dropped("alice", "firewall");
    let host_ping = std::process::Command::new("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1", &v.addr.to_string()])
        .status()
        .unwrap();
    assert!(!host_ping.success());
    assert_eq!(router.dropped("alice", "firewall"), dropped + 1.0);

    // stats prints the same numbers.
    let alice = router.stats_of("alice");
    assert_eq!(alice["tx_bytes"], 384);
    assert_eq!(alice["rx_packets"], 3);
    assert_eq!(alice["attached"], true);
    assert_eq!(alice["dropped"]["firewall"], 1);
}

#[test]
fn router_icmp_errors_about_established_flows_reach_the_vassal() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n".into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "alice", 2);
    // UDP to a closed port of the gateway: the host's port unreachable
    // passes the in chain (default deny) as related to the flow, so the
    // socket sees ECONNREFUSED instead of a timeout.
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\n\
         s.connect(('{}', 9))\ns.send(b'x')\ntry:\n    s.recv(10)\nexcept ConnectionRefusedError:\n    sys.exit(0)\nexcept socket.timeout:\n    sys.exit(1)\nsys.exit(2)\n",
        router.gateway()
    );
    let status = v.ns.command(PYTHON).args(["-c", &script]).status().unwrap();
    assert!(status.success(), "{status:?} {}", router.log_text());
    assert_eq!(router.dropped("alice", "firewall"), 0.0);
}

#[test]
fn router_default_rules_keep_vassals_from_the_gateway_and_each_other() {
    let router = TestRouter::start(&RouterSpec::default());
    let a = TestVassal::attach(&router, "alice", 2);
    let b = TestVassal::attach(&router, "bob", 3);
    assert!(a.ping_fails(&router.gateway().to_string()));
    assert!(a.ping_fails(&b.addr.to_string()));
    assert!(router.dropped("alice", "firewall") >= 2.0);
    assert_eq!(
        router.metric("vassal_rx_packets_total", "project=\"bob\""),
        0.0
    );
}

#[test]
fn router_vassal_to_vassal_switching_with_both_chains_and_established_replies() {
    let router = TestRouter::with_rules(GATEWAY_AND_ALICE_TO_BOB);
    let alice = TestVassal::attach(&router, "alice", 2);
    let bob = TestVassal::attach(&router, "bob", 3);
    // alice -> bob: out allows, bob's in chain allows icmp; the replies come
    // back through alice's in chain (default deny) only as an established flow.
    assert!(
        alice.ping(&bob.addr.to_string(), 2, 56),
        "{}",
        router.log_text()
    );
    // bob -> alice: alice's in chain denies.
    assert!(bob.ping_fails(&alice.addr.to_string()));
    assert!(router.dropped("alice", "firewall") >= 1.0);

    // TCP: allowed to bob's port 7000 only; replies flow back.
    let dir = router.dir.join("echo-bob");
    let _server = echo_server(&bob.ns, "0.0.0.0", 7000, &dir);
    assert!(tcp_echo(&alice.ns, &bob.addr.to_string(), 7000, 100_000));
    let _server2 = echo_server(&bob.ns, "0.0.0.0", 7001, &router.dir.join("echo-bob2"));
    assert!(!tcp_echo(&alice.ns, &bob.addr.to_string(), 7001, 10));
    assert!(!udp_echo(&alice.ns, &bob.addr.to_string(), 7000, 10));

    // Switched inside the router, never through the kernel: the router
    // wrote nothing into the host tun (its rx counter) during this ping.
    let host_rx = || {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/rx_packets",
            router.device
        ))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let before = host_rx();
    let rx_b = router.metric("vassal_rx_packets_total", "project=\"bob\"");
    assert!(alice.ping(&bob.addr.to_string(), 3, 56));
    assert_eq!(
        router.metric("vassal_rx_packets_total", "project=\"bob\""),
        rx_b + 3.0
    );
    assert_eq!(host_rx(), before);
}

#[test]
fn router_spoofed_sources_are_dropped_and_counted() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n".into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "mallory", 2);
    let forged = router.addr(99);
    v.ns.exec(&["ip", "addr", "add", &format!("{forged}/32"), "dev", "vt0"]);
    let gw = router.gateway().to_string();
    assert!(!v.ns.try_exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        &forged.to_string(),
        &gw
    ]));
    assert_eq!(router.dropped("mallory", "spoofed"), 3.0);
    assert_eq!(
        router.metric("vassal_tx_packets_total", "project=\"mallory\""),
        0.0
    );
    // Its own address still works.
    assert!(v.ping(&gw, 1, 56));
}

#[test]
fn router_ipv6_vassal_reaches_the_gateway_and_other_vassals() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(GATEWAY_AND_ALICE_TO_BOB.replace("proto = \"icmp\"", "proto = \"icmpv6\"")),
        ipv6: true,
        ..Default::default()
    });
    let alice = TestVassal::attach6(&router, "alice", 2);
    let bob = TestVassal::attach6(&router, "bob", 3);
    assert!(
        alice.ping(&router.gateway6(), 2, 56),
        "{}",
        router.log_text()
    );
    assert!(alice.ping(bob.addr6.as_ref().unwrap(), 2, 56));
    assert!(bob.ping_fails(alice.addr6.as_ref().unwrap()));
    let dir = router.dir.join("echo6");
    let _server = echo_server(&bob.ns, "::", 7000, &dir);
    assert!(tcp_echo(
        &alice.ns,
        bob.addr6.as_ref().unwrap(),
        7000,
        50_000
    ));
}

#[test]
fn router_reload_under_traffic_swaps_rules_and_refuses_invalid_files() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n".into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "alice", 2);
    let gw = router.gateway().to_string();
    let socket = router.socket.to_str().unwrap().to_owned();

    // Continuous traffic during the reloads.
    let mut flood =
        vassal_tests::KillOnDrop::spawn(v.ns.command("ping").args(["-n", "-q", "-i", "0.01", &gw]));
    let sent_before = router.metric("vassal_tx_packets_total", "project=\"alice\"");

    // Same rules reloaded under traffic: nothing dropped.
    let out = router.cli(&["reload", "--socket", &socket]);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_tx_packets_total", "project=\"alice\"")
        > sent_before + 20.0));
    assert_eq!(router.dropped("alice", "firewall"), 0.0);

    // An invalid file is refused; the old rules stay in force.
    std::fs::write(&router.rules_path, "[default]\nout = \"perhaps\"\n").unwrap();
    let out = router.cli(&["reload", "--socket", &socket]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("perhaps"),
        "{out:?}"
    );
    assert_eq!(router.metric("vassal_rules_reload_failures_total", ""), 1.0);
    let sent = router.metric("vassal_tx_packets_total", "project=\"alice\"");
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_tx_packets_total", "project=\"alice\"")
        > sent + 10.0));

    // A valid denying file by SIGHUP: new echo requests are now dropped.
    std::fs::write(
        &router.rules_path,
        "[default]\nout = \"allow\"\nin = \"deny\"\n[[out]]\naction = \"deny\"\nproto = \"icmp\"\n",
    )
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(router.child.as_ref().unwrap().pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || router
            .dropped("alice", "firewall")
            > 10.0),
        "{}",
        router.log_text()
    );
    let _ = flood.0.kill();
    assert_eq!(router.metric("vassal_rules_reloads_total", ""), 2.0);
}

#[test]
fn router_unknown_destinations_in_the_subnet_are_no_route() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\n".into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "alice", 2);
    assert!(v.ping_fails(&router.addr(77).to_string()));
    assert_eq!(router.dropped("alice", "no_route"), 1.0);
    // From the host to an unattached address: counted as a host drop.
    let _ = std::process::Command::new("ping")
        .args([
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
            &router.addr(78).to_string(),
        ])
        .status();
    assert_eq!(
        router.metric("vassal_host_dropped_packets_total", "reason=\"no_route\""),
        1.0
    );
}

#[test]
fn router_a_full_flow_table_refuses_new_flows_of_that_project_only() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(
            "[default]\nout = \"allow\"\nin = \"deny\"\n\n[[out]]\naction = \"allow\"\nproto = \"udp\"\ndst_port = \"9000-9100\"\nlog = true\n"
                .into(),
        ),
        extra: "[flows]\nmax_per_project = 3\n".into(),
        ..Default::default()
    });
    let alice = TestVassal::attach(&router, "alice", 2);
    let bob = TestVassal::attach(&router, "bob", 3);
    // Five UDP flows (five source ports) from alice: three fit.
    let script = format!(
        "import socket\nsocks=[socket.socket(socket.AF_INET,socket.SOCK_DGRAM) for _ in range(5)]\n\
         for i,s in enumerate(socks):\n    s.sendto(b'x'*10, ('{}', 9001+i))\n",
        router.gateway()
    );
    vassal_tests::run(alice.ns.command(PYTHON).args(["-c", &script]));
    assert!(wait_until(Duration::from_secs(3), || router
        .dropped("alice", "flow_table_full")
        == 2.0));
    assert_eq!(
        router.metric("vassal_tx_packets_total", "project=\"alice\""),
        3.0
    );
    assert!(wait_until(Duration::from_secs(3), || router
        .metric("vassal_flows", "project=\"alice\"")
        == 3.0));
    // bob is not affected.
    assert!(bob.ping(&router.gateway().to_string(), 1, 56));
    assert_eq!(router.dropped("bob", "flow_table_full"), 0.0);
    // The matching rule has `log = true`: its matches are logged.
    assert!(router.log_text().contains("rule match"));
}
