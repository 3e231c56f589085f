//! NAT egress: a vassal reaches a server in a separate "internet"
//! namespace (documentation addresses only), which sees the host's address;
//! the router's nftables table is installed once, replaced after a crash,
//! and removed on a clean exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use vassal_tests::router_harness::{
    add_ipv6, echo_server, tcp_echo, udp_echo, RouterSpec, TestRouter, TestVassal,
};
use vassal_tests::{Netns, Veth};

fn tables_named(table: &str) -> usize {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == format!("table inet {table}"))
        .count()
}

#[test]
fn router_nat_egress_shows_the_host_address_and_the_table_is_managed() {
    // A /30 of 198.51.100.0/24 per test process.
    let base = (std::process::id() % 60) as u8 * 4;
    let host_addr = format!("198.51.100.{}", base + 1);
    let server_addr = format!("198.51.100.{}", base + 2);
    let internet = Netns::new("in");
    let veth = Veth::new(
        &internet,
        &format!("{host_addr}/30"),
        &format!("{server_addr}/30"),
    );

    let mut router = TestRouter::start(&RouterSpec {
        nat: Some(Some(veth.host.clone())),
        ..Default::default()
    });
    let table = vassal_router::nat::table_name(&router.device);
    assert_eq!(tables_named(&table), 1);

    let log = router.dir.join("internet.log");
    let _server = echo_server(&internet, "0.0.0.0", 8080, &log);
    let mut v = TestVassal::attach(&router, "alice", 2);
    // Default rules: the internet is allowed, replies come back established.
    assert!(
        tcp_echo(&v.ns, &server_addr, 8080, 200_000),
        "{}",
        router.log_text()
    );
    assert!(udp_echo(&v.ns, &server_addr, 8080, 1000));
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains(&format!("tcp {host_addr}")), "{seen}");
    assert!(seen.contains(&format!("udp {host_addr}")), "{seen}");
    assert!(!seen.contains(&v.addr.to_string()), "{seen}");

    // The internet cannot open a connection into the vassal.
    assert!(!internet.try_exec(&["ping", "-c", "1", "-W", "1", &v.addr.to_string()]));

    // Crash: the table stays; the restart replaces it, never duplicates it.
    router.stop(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(tables_named(&table), 1);
    router.spawn();
    assert_eq!(tables_named(&table), 1);
    match v.hello(&router) {
        vassal_attach::Response::Accepted { .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(tcp_echo(&v.ns, &server_addr, 8080, 10_000));

    // Clean exit removes exactly its table.
    assert!(
        router.stop(nix::sys::signal::Signal::SIGTERM),
        "{}",
        router.log_text()
    );
    assert_eq!(tables_named(&table), 0);
    drop(veth);
}

#[test]
fn router_ipv6_nat_egress_shows_the_host_address() {
    let n = std::process::id() % 0xffff;
    let host_addr = format!("2001:db8:{n:x}::1");
    let server_addr = format!("2001:db8:{n:x}::2");
    let internet = Netns::new("in");
    let veth = Veth::new(&internet, "198.51.100.253/32", "198.51.100.254/32");
    add_ipv6(
        &internet,
        &veth,
        &format!("{host_addr}/64"),
        &format!("{server_addr}/64"),
    );

    let router = TestRouter::start(&RouterSpec {
        nat: Some(Some(veth.host.clone())),
        ipv6: true,
        ..Default::default()
    });
    let log = router.dir.join("internet6.log");
    let _server = echo_server(&internet, "::", 8080, &log);
    let v = TestVassal::attach6(&router, "alice", 2);
    assert!(
        tcp_echo(&v.ns, &server_addr, 8080, 50_000),
        "{}",
        router.log_text()
    );
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(seen.contains(&format!("tcp {host_addr}")), "{seen}");
    assert!(!seen.contains(v.addr6.as_deref().unwrap()), "{seen}");
}
