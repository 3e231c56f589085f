//! The routes between hosts' blocks (router `os::routes`), in both modes,
//! on three hosts made of network namespaces joined by a bridge (the
//! underlay, 198.51.100.0/24). Each host's block gateway (10.44.<k>.1)
//! stands on a veth device where the router's host tun would be; the
//! test talks UDP between them from sockets opened inside the hosts.
//!
//! What is proved: traffic between blocks crosses the underlay through the
//! routes each host installs (direct, and VXLAN with its FDB and neighbour
//! entries); a peer removed from the set loses its routes and entries; and
//! a packet claiming a remote block's source is refused unless that
//! block's host sent it (VXLAN: another host of the cluster; direct: any
//! interface but the one the block's route uses).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vassal_router::daemon::cluster_routes::{follow, ClusterView, Membership, NodeView};
use vassal_router::os::routes::{Block6, Mode, PeerBlock, RouteError, Routes, GUARD_TABLE};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    let out = Command::new("ip").args(&all).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three hosts and the underlay; removed on drop.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn host(&self, k: usize) -> &str {
        &self.names[k]
    }

    fn new(tag: &str) -> Net {
        let id = std::process::id() % 100_000;
        let names: Vec<String> = (0..4).map(|k| format!("c2{tag}{k}-{id}")).collect();
        // Owned from here on, so a failed step still removes them.
        let net = Net { names };
        let names = &net.names;
        for n in names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        let ul = &names[0];
        ip(&["-n", ul, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", ul, "link", "set", "br0", "up"]);
        for (k, h) in names.iter().enumerate().skip(1) {
            let port = format!("h{k}p");
            ip(&[
                "link", "add", "ul0", "netns", h, "type", "veth", "peer", "name", &port, "netns",
                ul,
            ]);
            ip(&["-n", ul, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("198.51.100.{k}/24"),
                "dev",
                "ul0",
            ]);
            ip(&["-n", h, "link", "set", "ul0", "up"]);
            // A veth pair standing for the router's host tun (no dummy
            // driver on every kernel).
            ip(&[
                "-n", h, "link", "add", "blk0", "type", "veth", "peer", "name", "blk1",
            ]);
            ip(&["-n", h, "link", "set", "blk1", "up"]);
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("10.44.{k}.1/24"),
                "dev",
                "blk0",
            ]);
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("fd00:44:{k}::1/64"),
                "dev",
                "blk0",
                "nodad",
            ]);
            ip(&["-n", h, "link", "set", "blk0", "up"]);
            // No kernel reverse-path filter: the guard table must do it.
            let fwd = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    h,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ])
                .status()
                .expect("sysctl");
            assert!(fwd.success());
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("thread in netns")
}

/// Gives host `ns` an address of block 2's IPv6 block (fd00:44:2::99) on
/// its block device, to send with a source it does not hold.
fn take_block2_v6_source(ns: &str) {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        "fd00:44:2::99/128",
        "dev",
        "blk0",
        "nodad",
    ]);
}

fn block(k: u8) -> PeerBlock {
    PeerBlock {
        block: format!("10.44.{k}.0/24").parse().expect("block"),
        gateway: Ipv4Addr::new(10, 44, k, 1),
        underlay: Ipv4Addr::new(198, 51, 100, k),
        v6: Some(Block6 {
            block: format!("fd00:44:{k}::/64").parse().expect("block6"),
            gateway: format!("fd00:44:{k}::1").parse().expect("gateway6"),
        }),
    }
}

fn mode(vxlan: bool) -> Mode {
    if vxlan {
        Mode::Vxlan {
            device: "vsl-vx".into(),
            vni: 42,
            port: 4789,
        }
    } else {
        Mode::Direct
    }
}

/// Host `k`'s routes to every other host of `peers`.
fn routes_on(net: &Net, k: u8, vxlan: bool, peers: &[u8]) -> Routes {
    let others: Vec<PeerBlock> = peers
        .iter()
        .filter(|&&p| p != k)
        .map(|&p| block(p))
        .collect();
    inside(net.host(usize::from(k)), move || {
        let own = block(k);
        let mut r = Routes::new(mode(vxlan), own.block, own.underlay).expect("routes");
        r.sync(&others).expect("sync");
        r
    })
}

/// A UDP socket bound to `addr` in namespace `ns`.
fn socket(ns: &str, addr: impl Into<IpAddr>, port: u16) -> UdpSocket {
    let addr = SocketAddr::new(addr.into(), port);
    inside(ns, move || {
        let s = UdpSocket::bind(addr).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        s
    })
}

/// Whether a datagram from `from` reaches `to` (a few tries: the first
/// packets may wait on neighbour resolution of the underlay).
fn reaches(from: &UdpSocket, to: &UdpSocket) -> bool {
    let dst = to.local_addr().expect("addr");
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        // No route at all (a gone host's block) is not reaching either.
        if from.send_to(b"hello", dst).is_err() {
            return false;
        }
        if let Ok((n, _)) = to.recv_from(&mut buf) {
            return &buf[..n] == b"hello";
        }
    }
    false
}

fn crosses_and_is_removed(vxlan: bool) {
    let net = Net::new(if vxlan { "v" } else { "d" });
    let all = [1u8, 2, 3];
    let mut r1 = routes_on(&net, 1, vxlan, &all);
    let _r2 = routes_on(&net, 2, vxlan, &all);
    let _r3 = routes_on(&net, 3, vxlan, &all);
    let (h1, h2) = (net.host(1), net.host(2));
    let routes = ip_out(h1, &["route", "show", "proto", "118"]);
    if vxlan {
        assert!(
            routes.contains("10.44.2.0/24 via 10.44.2.1 dev vsl-vx onlink"),
            "{routes}"
        );
        let link = ip_out(h1, &["-d", "link", "show", "vsl-vx"]);
        assert!(link.contains("vxlan id 42"), "{link}");
        assert!(link.contains("nolearning"), "{link}");
        assert!(link.contains("02:76:0a:2c:01:00"), "{link}");
        // The underlay's 1500 less VXLAN's 50, not the kernel's default.
        assert!(link.contains(" mtu 1450 "), "{link}");
        let fdb = Command::new("bridge")
            .args(["-n", h1, "fdb", "show", "dev", "vsl-vx"])
            .output()
            .expect("bridge");
        let fdb = String::from_utf8_lossy(&fdb.stdout);
        assert!(
            fdb.contains("02:76:0a:2c:02:00 dst 198.51.100.2 self permanent"),
            "{fdb}"
        );
        let neigh = ip_out(h1, &["neigh", "show", "dev", "vsl-vx"]);
        assert!(
            neigh.contains("10.44.2.1 lladdr 02:76:0a:2c:02:00 PERMANENT"),
            "{neigh}"
        );
        assert!(
            neigh.contains("fd00:44:2::1 lladdr 02:76:0a:2c:02:00 PERMANENT"),
            "{neigh}"
        );
        let routes6 = ip_out(h1, &["-6", "route", "show", "proto", "118"]);
        assert!(
            routes6.contains("fd00:44:2::/64 via fd00:44:2::1 dev vsl-vx"),
            "{routes6}"
        );
    } else {
        // Linux routes no IPv6 block via an IPv4 underlay address.
        let routes6 = ip_out(h1, &["-6", "route", "show", "proto", "118"]);
        assert!(routes6.trim().is_empty(), "{routes6}");
        assert!(
            routes.contains("10.44.2.0/24 via 198.51.100.2 dev ul0"),
            "{routes}"
        );
        assert!(
            routes.contains("10.44.3.0/24 via 198.51.100.3 dev ul0"),
            "{routes}"
        );
    }
    let a = socket(h1, Ipv4Addr::new(10, 44, 1, 1), 7001);
    let b = socket(h2, Ipv4Addr::new(10, 44, 2, 1), 7002);
    assert!(reaches(&a, &b), "block 1 -> block 2");
    assert!(reaches(&b, &a), "block 2 -> block 1");
    let gw6 = |k: u8| -> IpAddr { format!("fd00:44:{k}::1").parse().expect("gateway6") };
    let a6 = socket(h1, gw6(1), 7011);
    let b6 = socket(h2, gw6(2), 7012);
    assert_eq!(reaches(&a6, &b6), vxlan, "IPv6 block 1 -> block 2");
    assert_eq!(reaches(&b6, &a6), vxlan, "IPv6 block 2 -> block 1");

    // Host 2 leaves: host 1 drops its routes and entries.
    r1.sync(&[block(3)]).expect("sync without 2");
    let routes = ip_out(h1, &["route", "show", "proto", "118"]);
    assert!(!routes.contains("10.44.2.0/24"), "{routes}");
    assert!(routes.contains("10.44.3.0/24"), "{routes}");
    let routes6 = ip_out(h1, &["-6", "route", "show", "proto", "118"]);
    assert!(!routes6.contains("fd00:44:2::"), "{routes6}");
    assert_eq!(routes6.contains("fd00:44:3::/64"), vxlan, "{routes6}");
    assert!(!reaches(&a6, &b6), "no IPv6 route to a gone host's block");
    if vxlan {
        let neigh = ip_out(h1, &["neigh", "show", "dev", "vsl-vx"]);
        assert!(!neigh.contains("10.44.2.1"), "{neigh}");
        assert!(!neigh.contains("fd00:44:2::1"), "{neigh}");
    }
    assert!(!reaches(&a, &b), "no route to a gone host's block");
    assert_eq!(
        r1.installed().iter().map(|p| p.block).collect::<Vec<_>>(),
        vec![block(3).block]
    );
    // Clean exit: nothing of the router's left.
    inside(h1, move || r1.clear());
    assert!(ip_out(h1, &["route", "show", "proto", "118"])
        .trim()
        .is_empty());
    assert!(ip_out(h1, &["-6", "route", "show", "proto", "118"])
        .trim()
        .is_empty());
    assert!(ip_out(h1, &["link", "show", "vsl-vx"]).trim().is_empty());
    let tables = Command::new("ip")
        .args(["netns", "exec", h1, "nft", "list", "tables"])
        .output()
        .expect("nft");
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(GUARD_TABLE));
}

#[test]
fn direct_routes_carry_traffic_between_blocks_and_follow_the_peer_set() {
    crosses_and_is_removed(false);
}

#[test]
fn vxlan_routes_carry_traffic_between_blocks_and_follow_the_peer_set() {
    crosses_and_is_removed(true);
}

/// The VXLAN device takes the underlay interface's MTU less 50 (else every
/// full-size vassal packet is fragmented on the underlay); an underlay
/// address no interface holds, or an interface too small for VXLAN's
/// headers, is refused by name before anything is created.
#[test]
fn vxlan_device_is_sized_by_the_underlay_and_an_unusable_underlay_is_refused() {
    let net = Net::new("m");
    let h1 = net.host(1).to_owned();
    let own = block(1);
    let vxlan_link = |ns: &str| ip_out(ns, &["link", "show", "vsl-vx"]);
    ip(&["-n", &h1, "link", "set", "ul0", "mtu", "9000"]);
    let r = inside(&h1, move || {
        Routes::new(mode(true), own.block, own.underlay)
    });
    let r = r.expect("routes on a 9000-byte underlay");
    let link = vxlan_link(&h1);
    assert!(link.contains(" mtu 8950 "), "{link}");
    inside(&h1, move || {
        let mut r = r;
        r.clear()
    });

    ip(&["-n", &h1, "link", "set", "ul0", "mtu", "1320"]);
    let r = inside(&h1, move || {
        Routes::new(mode(true), own.block, own.underlay).map(drop)
    });
    match r {
        Err(e @ RouteError::UnderlayMtu { .. }) => {
            let text = e.to_string();
            assert!(text.contains("ul0") && text.contains("1320"), "{text}");
        }
        other => panic!("a 1320-byte underlay was accepted: {other:?}"),
    }
    assert!(vxlan_link(&h1).trim().is_empty(), "a device was left");

    let elsewhere = Ipv4Addr::new(198, 51, 100, 99);
    let r = inside(&h1, move || {
        Routes::new(mode(true), own.block, elsewhere).map(drop)
    });
    match r {
        Err(e @ RouteError::NoUnderlay { .. }) => {
            assert!(e.to_string().contains("198.51.100.99"), "{e}");
        }
        other => panic!("an underlay address of no interface was accepted: {other:?}"),
    }
    assert!(vxlan_link(&h1).trim().is_empty(), "a device was left");
}

#[test]
fn vxlan_a_remote_blocks_source_from_another_host_is_dropped() {
    let net = Net::new("f");
    let all = [1u8, 2, 3];
    let _r1 = routes_on(&net, 1, true, &all);
    let _r2 = routes_on(&net, 2, true, &all);
    let _r3 = routes_on(&net, 3, true, &all);
    let (h1, h2, h3) = (net.host(1), net.host(2), net.host(3));
    // Host 3 (a cluster member, through its own tunnel) claims block 2.
    ip(&["-n", h3, "addr", "add", "10.44.2.99/32", "dev", "blk0"]);
    let a = socket(h1, Ipv4Addr::new(10, 44, 1, 1), 7101);
    let honest = socket(h2, Ipv4Addr::new(10, 44, 2, 1), 7102);
    let forger = socket(h3, Ipv4Addr::new(10, 44, 2, 99), 7103);
    assert!(reaches(&honest, &a), "block 2's own host gets through");
    assert!(
        !reaches(&forger, &a),
        "block 2's source from host 3 must be dropped"
    );
    // The same for block 2's IPv6 block.
    take_block2_v6_source(h3);
    let gw6: IpAddr = "fd00:44:1::1".parse().expect("gateway6");
    let a6 = socket(h1, gw6, 7111);
    let honest6 = socket(h2, "fd00:44:2::1".parse::<IpAddr>().expect("v6"), 7112);
    let forger6 = socket(h3, "fd00:44:2::99".parse::<IpAddr>().expect("v6"), 7113);
    assert!(
        reaches(&honest6, &a6),
        "block 2's own host gets through (IPv6)"
    );
    assert!(
        !reaches(&forger6, &a6),
        "block 2's IPv6 source from host 3 must be dropped"
    );
    // Host 3 takes host 2's MAC for its device (which flushes the
    // device's forwarding and neighbour entries: put host 1's back); its
    // underlay address still gives it away.
    ip(&[
        "-n",
        h3,
        "link",
        "set",
        "vsl-vx",
        "address",
        "02:76:0a:2c:02:00",
    ]);
    let fdb = Command::new("bridge")
        .args([
            "-n",
            h3,
            "fdb",
            "replace",
            "02:76:0a:2c:01:00",
            "dev",
            "vsl-vx",
            "dst",
            "198.51.100.1",
            "self",
            "permanent",
        ])
        .status()
        .expect("bridge");
    assert!(fdb.success());
    ip(&[
        "-n",
        h3,
        "neigh",
        "replace",
        "10.44.1.1",
        "lladdr",
        "02:76:0a:2c:01:00",
        "dev",
        "vsl-vx",
        "nud",
        "permanent",
    ]);
    assert!(
        !reaches(&forger, &a),
        "host 3 with host 2's MAC must be dropped"
    );
}

#[test]
fn direct_a_remote_blocks_source_off_its_route_is_dropped() {
    let net = Net::new("r");
    let all = [1u8, 2, 3];
    let _r1 = routes_on(&net, 1, false, &all);
    let _r2 = routes_on(&net, 2, false, &all);
    let (h1, rogue) = (net.host(1), net.host(3));
    // A rogue link into host 1 that is not the underlay the route to
    // block 2 uses.
    ip(&[
        "link", "add", "rog0", "netns", h1, "type", "veth", "peer", "name", "rog1", "netns", rogue,
    ]);
    ip(&["-n", h1, "addr", "add", "192.0.2.1/30", "dev", "rog0"]);
    ip(&["-n", h1, "link", "set", "rog0", "up"]);
    ip(&["-n", rogue, "addr", "add", "192.0.2.2/30", "dev", "rog1"]);
    ip(&["-n", rogue, "link", "set", "rog1", "up"]);
    ip(&["-n", rogue, "addr", "add", "10.44.2.99/32", "dev", "blk0"]);
    ip(&[
        "-n",
        rogue,
        "route",
        "add",
        "10.44.1.0/24",
        "via",
        "192.0.2.1",
        "src",
        "10.44.2.99",
    ]);
    let a = socket(h1, Ipv4Addr::new(10, 44, 1, 1), 7201);
    let honest = socket(net.host(2), Ipv4Addr::new(10, 44, 2, 1), 7202);
    let forger = socket(rogue, Ipv4Addr::new(10, 44, 2, 99), 7203);
    assert!(reaches(&honest, &a), "block 2's own host gets through");
    assert!(
        !reaches(&forger, &a),
        "block 2's source off the underlay must be dropped"
    );
    // IPv6: direct mode routes no IPv6 block, so a source of block 2's
    // IPv6 block is dropped even where host 1's own (default) route leads
    // back the way it came, as a host's route to the internet would.
    for (ns, addr) in [(h1, "2001:db8:200::1/64"), (rogue, "2001:db8:200::2/64")] {
        let dev = if ns == h1 { "rog0" } else { "rog1" };
        ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
    }
    ip(&[
        "-n",
        h1,
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:200::2",
    ]);
    take_block2_v6_source(rogue);
    ip(&[
        "-n",
        rogue,
        "-6",
        "route",
        "add",
        "fd00:44:1::/64",
        "via",
        "2001:db8:200::1",
    ]);
    let a6 = socket(h1, "fd00:44:1::1".parse::<IpAddr>().expect("v6"), 7211);
    let forger6 = socket(rogue, "fd00:44:2::99".parse::<IpAddr>().expect("v6"), 7213);
    assert!(
        !reaches(&forger6, &a6),
        "block 2's IPv6 source must be dropped in direct mode"
    );
    // The path itself works: the rogue's own address gets through.
    let plain = socket(
        rogue,
        "2001:db8:200::2".parse::<IpAddr>().expect("v6"),
        7214,
    );
    assert!(reaches(&plain, &a6), "the rogue link carries IPv6 at all");
}

/// A membership the test drives: what the cluster core's cache would
/// report.
struct FakeMembership {
    view: std::sync::Mutex<ClusterView>,
    /// The test holds the sender: dropping it ends the membership.
    changes: tokio::sync::watch::Receiver<u64>,
}

impl Membership for FakeMembership {
    fn view(&self) -> ClusterView {
        self.view.lock().expect("view").clone()
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }
}

fn node(k: u8) -> NodeView {
    NodeView {
        node: format!("host{k}"),
        block: block(k).block,
        block6: None,
        underlay: IpAddr::V4(block(k).underlay),
    }
}

#[test]
fn the_follower_keeps_routes_and_view_equal_to_the_membership_and_static_without_changes() {
    let net = Net::new("m");
    let h1 = net.host(1).to_owned();
    let _r2 = routes_on(&net, 2, false, &[1, 2, 3]);
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let membership = Arc::new(FakeMembership {
        view: std::sync::Mutex::new(ClusterView {
            node: "host1".into(),
            prefixes: vec!["10.44.0.0/16".parse().expect("prefix")],
            nodes: vec![node(1), node(2), node(3)],
            identities: vec![(
                "10.44.2.5".parse().expect("addr"),
                "shop".into(),
                "host2".into(),
            )],
            infra: Vec::new(),
        }),
        changes: rx,
    });
    let published = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let (m, p, ns) = (Arc::clone(&membership), Arc::clone(&published), h1.clone());
    let (done, follower) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let own = block(1);
        let routes = Routes::new(Mode::Direct, own.block, own.underlay).expect("routes");
        let publish = move |view: vassal_router::state::remote::RemoteView| {
            p.lock().expect("published").push(view.identities.len());
        };
        let m: Arc<dyn Membership> = m;
        let mut routes = rt.block_on(follow(m, publish, routes, std::future::pending()));
        let left = routes.installed().len();
        routes.clear();
        let _ = done.send(left);
    });
    let routes_now = || ip_out(&h1, &["route", "show", "proto", "118"]);
    let wait_for = |what: &str, f: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = routes_now();
            if f(&r) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {r}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("routes to hosts 2 and 3", &|r| {
        r.contains("10.44.2.0/24 via 198.51.100.2") && r.contains("10.44.3.0/24 via 198.51.100.3")
    });
    assert_eq!(published.lock().expect("published").first(), Some(&1));
    let a = socket(&h1, Ipv4Addr::new(10, 44, 1, 1), 7301);
    let b = socket(net.host(2), Ipv4Addr::new(10, 44, 2, 1), 7302);
    assert!(reaches(&a, &b));

    // Host 3 dies: once its lease expires the cache drops it, and so do
    // the routes.
    membership
        .view
        .lock()
        .expect("view")
        .nodes
        .retain(|n| n.node != "host3");
    tx.send_modify(|v| *v += 1);
    wait_for("host 3 gone", &|r| !r.contains("10.44.3.0/24"));

    // etcd lost entirely: the cache reports nothing new, so routes and
    // flows stay as they are.
    std::thread::sleep(Duration::from_millis(300));
    assert!(routes_now().contains("10.44.2.0/24 via 198.51.100.2"));
    assert!(reaches(&a, &b));

    // The membership ends (router exit): the follower hands the routes
    // back, and they are removed.
    drop(tx);
    let left = follower
        .recv_timeout(Duration::from_secs(10))
        .expect("the follower ends with the membership");
    assert_eq!(left, 1);
    assert!(routes_now().trim().is_empty());
}
