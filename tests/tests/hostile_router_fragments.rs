//! Issue 11, item 1: IP fragments through the router. Only a datagram's
//! first fragment holds its ports; every later fragment follows the verdict
//! the first one got (docs/security.md, "Fragments"). Real vassals (netns
//! with a tun attached to a real router), a test-built "internet" namespace
//! (203.0.113.0/24 and 2001:db8::/32) behind NAT, and fragments the kernel
//! builds itself (ping -s 3000, large UDP) or that a vassal crafts on its
//! own tun with a packet socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;
use vassal_tests::router_harness::{
    add_ipv6, echo_server, RouterSpec, TestRouter, TestVassal, PYTHON,
};
use vassal_tests::{try_run, wait_until, KillOnDrop, Netns, Veth};

/// A UDP server (IPv4 and IPv6) on port 5353 that answers every query with
/// 3000 bytes, as a DNS server answers over EDNS with a large record set.
const BIG_ANSWER_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 5353))
open(sys.argv[1], "w").write("ready\n")
while True:
    q, a = s.recvfrom(65536)
    s.sendto(bytes(i % 251 for i in range(3000)), a)
"#;

/// Sends one small query to `argv[1]`:5353 and exits 0 when the 3000-byte
/// answer arrives whole.
const BIG_ANSWER_CLIENT: &str = r#"
import socket, sys
dst = sys.argv[1]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
for _ in range(int(sys.argv[2])):
    s.sendto(b"query", (dst, 5353))
    try:
        got, _ = s.recvfrom(65536)
    except socket.timeout:
        sys.exit("no answer")
    if got != bytes(i % 251 for i in range(3000)):
        sys.exit("answer of %d bytes differs" % len(got))
"#;

/// Writes IP fragments of one datagram onto `vt0` with a packet socket
/// (the vassal's kernel passes them to the router as they are).
/// argv: src dst id dport which [tcp], where `which` lists the fragments to
/// send, each one of three (0: bytes 0-23, the transport header and more;
/// 1: bytes 24-47; 2: bytes 48-55, the last) or `OFFSET:LENGTH:MORE` for
/// any slice. The datagram is a UDP header and 48 bytes, or with `tcp` a
/// 20-byte TCP SYN header and 36 bytes.
const CRAFT: &str = r#"
import socket, struct, sys
src, dst, ident, dport, which = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
tcp = sys.argv[6:] == ["tcp"]
v6 = ":" in src
if tcp:
    data = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, 0x02, 65535, 0, 0) + bytes(range(36))
else:
    data = struct.pack("!HHHH", 40000, dport, 56, 0) + bytes(range(48))
parts = [(0, data[:24], True), (24, data[24:48], True), (48, data[48:], False)]
proto = 6 if tcp else 17
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def fragment(off, chunk, more):
    if v6:
        fh = struct.pack("!BBHI", proto, 0, off | more, ident)
        return struct.pack("!IHBB", 0x60000000, 8 + len(chunk), 44, 64) + \
            socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + fh + chunk
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident & 0xffff,
                    off // 8 | (0x2000 if more else 0), 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + chunk
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
for w in which.split(","):
    if ":" in w:
        off, n, more = (int(x) for x in w.split(":"))
        off, chunk, more = off, data[off:off + n], bool(more)
    else:
        off, chunk, more = parts[int(w)]
    s.sendto(fragment(off, chunk, more), ("vt0", 0x86DD if v6 else 0x0800))
"#;

/// Sends one UDP datagram of 3000 bytes of 0xff to `argv[1]`:7 with a
/// destination options header (PadN) in its fragmentable part, so every
/// fragment header names destination options next, and exits 0 when the
/// echo comes back.
const DSTOPTS_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
data = b"\xff" * 3000
s.sendto(data, (sys.argv[1], 7))
try:
    got, _ = s.recvfrom(65536)
except socket.timeout:
    sys.exit("no echo")
sys.exit(0 if got == data else "echo differs")
"#;

/// [`CRAFT`] in `ns`: fragments of datagram `id` from `src` to `dst`,
/// then the port, the fragments and options (`rest`).
fn craft(ns: &Netns, src: &str, dst: &str, id: u32, rest: &[&str]) {
    let id = id.to_string();
    python(ns, CRAFT, &[&[src, dst, id.as_str()][..], rest].concat()).unwrap();
}

/// alice's and bob's addresses in IPv4 and in IPv6, each with the first
/// datagram id a test sends in that family.
fn both_families(
    alice: &TestVassal,
    bob: &TestVassal,
    ids: [u32; 2],
) -> [(String, String, u32); 2] {
    [
        (alice.addr.to_string(), bob.addr.to_string(), ids[0]),
        (
            alice.addr6.clone().unwrap(),
            bob.addr6.clone().unwrap(),
            ids[1],
        ),
    ]
}

/// Waits (3 s) for `project`'s `fragment` drops to reach `n`.
fn assert_fragment_drops(router: &TestRouter, project: &str, n: f64) {
    assert!(
        wait_until(Duration::from_secs(3), || router
            .dropped(project, "fragment")
            == n),
        "fragment drops of {project}: {}",
        router.dropped(project, "fragment")
    );
}

/// Runs a python script inside `ns`; Ok when it exits 0, else its stderr.
fn python(ns: &Netns, script: &str, args: &[&str]) -> Result<(), String> {
    try_run(ns.command(PYTHON).args(["-c", script]).args(args))
}

/// A test-built "internet": a namespace behind a veth holding a /30 of
/// 203.0.113.0/24 and a /64 of 2001:db8::/32 (one per test process and
/// call), with the large-answer UDP server running.
struct Internet {
    veth: Veth,
    server: String,
    server6: String,
    _answers: KillOnDrop,
    _ns: Netns,
}

impl Internet {
    fn new(dir: &std::path::Path) -> Internet {
        // A /30 no other test (of this or another process) holds now,
        // starting from one this process and call make likely to be free.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let held = vassal_tests::router_harness::stdout_of(
            std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]),
        );
        let slot = (0..64)
            .map(|i| ((std::process::id() * 7 + n * 13 + i) % 64) as u8)
            .find(|s| !held.contains(&format!("203.0.113.{}/30", s * 4 + 1)))
            .expect("a free /30 of 203.0.113.0/24");
        let (host, server) = (
            format!("203.0.113.{}", slot * 4 + 1),
            format!("203.0.113.{}", slot * 4 + 2),
        );
        let ns = Netns::new("in");
        let veth = Veth::new(&ns, &format!("{host}/30"), &format!("{server}/30"));
        let net6 = format!(
            "2001:db8:{:x}:{:x}",
            0xf000 + std::process::id() % 0xfff,
            slot
        );
        let server6 = format!("{net6}::2");
        add_ipv6(
            &ns,
            &veth,
            &format!("{net6}::1/64"),
            &format!("{server6}/64"),
        );
        let ready = dir.join(format!("answers-{}.ready", veth.host));
        let answers = KillOnDrop::spawn(
            ns.command(PYTHON)
                .args(["-c", BIG_ANSWER_SERVER])
                .arg(&ready)
                .stdin(Stdio::null()),
        );
        assert!(
            wait_until(Duration::from_secs(5), || ready.exists()),
            "large-answer server did not start"
        );
        Internet {
            veth,
            server,
            server6,
            _answers: answers,
            _ns: ns,
        }
    }
}

/// A router with NAT through an internet, IPv4 and IPv6, the embedded
/// default rules, and one vassal `alice` with both families.
fn behind_nat() -> (Internet, TestRouter, TestVassal) {
    let internet = Internet::new(&std::env::temp_dir());
    let router = TestRouter::start(&RouterSpec {
        nat: Some(Some(internet.veth.host.clone())),
        ipv6: true,
        ..Default::default()
    });
    let alice = TestVassal::attach6(&router, "alice", 2);
    (internet, router, alice)
}

/// The kernel's reassembly counters of `ns`, IPv4 and IPv6 together:
/// (fragments that needed reassembly, datagrams reassembled).
fn reassembly(ns: &Netns) -> (u64, u64) {
    let text = String::from_utf8(
        ns.exec(&["cat", "/proc/net/snmp", "/proc/net/snmp6"])
            .stdout,
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut v4 = (0, 0);
    if let Some(i) = lines.iter().position(|l| l.starts_with("Ip: Forwarding")) {
        let names = lines[i].split_whitespace();
        let values = lines[i + 1].split_whitespace();
        for (n, v) in names.zip(values) {
            match n {
                "ReasmReqds" => v4.0 = v.parse().unwrap(),
                "ReasmOKs" => v4.1 = v.parse().unwrap(),
                _ => {}
            }
        }
    }
    let v6 = |name: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    (v4.0 + v6("Ip6ReasmReqds "), v4.1 + v6("Ip6ReasmOKs "))
}

#[test]
fn hostile_router_fragments_large_ping_out_of_a_vassal_gets_replies_ipv4_and_ipv6() {
    let (internet, router, alice) = behind_nat();
    assert!(
        alice.ping(&internet.server, 2, 3000),
        "ping -s 3000 to {} lost; log:\n{}",
        internet.server,
        router.log_text()
    );
    assert!(
        alice.ping(&internet.server6, 2, 3000),
        "ping -6 -s 3000 to {} lost",
        internet.server6
    );
    assert_eq!(router.dropped("alice", "fragment"), 0.0);
}

#[test]
fn hostile_router_fragments_a_3kb_udp_answer_arrives_ipv4_and_ipv6() {
    let (internet, router, alice) = behind_nat();
    // Three queries each way; every answer is three fragments.
    python(&alice.ns, BIG_ANSWER_CLIENT, &[&internet.server, "3"])
        .unwrap_or_else(|e| panic!("IPv4: {e}; log:\n{}", router.log_text()));
    python(&alice.ns, BIG_ANSWER_CLIENT, &[&internet.server6, "3"])
        .unwrap_or_else(|e| panic!("IPv6: {e}"));
    // Counters exact: 6 queries out, 6 answers of 3 fragments each in
    // (one query flow per family), no drop.
    let s = router.stats_of("alice");
    assert_eq!(s["tx_packets"], 6, "{s}");
    assert_eq!(s["rx_packets"], 18, "{s}");
    assert_eq!(router.dropped("alice", "fragment"), 0.0);
    assert_eq!(router.dropped("alice", "firewall"), 0.0);
}

#[test]
fn hostile_router_fragments_outgoing_later_fragments_open_no_port_0_flows() {
    let (internet, router, alice) = behind_nat();
    // Three 3000-byte datagrams out from one socket (and the answers):
    // one flow, not one more keyed on port 0 for the later fragments.
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n\
         for _ in range(3):\n    s.sendto(bytes(3000), ({:?}, 5353)); s.recvfrom(65536)\n",
        internet.server
    );
    python(&alice.ns, &script, &[]).unwrap_or_else(|e| panic!("{e}"));
    let s = router.stats_of("alice");
    assert_eq!(s["flows"], 1, "{s}");
    assert_eq!(s["tx_packets"], 9, "{s}");
    assert_eq!(s["rx_packets"], 9, "{s}");
    drop(internet);
}

#[test]
fn hostile_router_fragments_a_4000_byte_datagram_between_vassals_arrives() {
    let (router, alice, bob, _echo) = echo_on_bob_7();
    for dst in [bob.addr.to_string(), bob.addr6.clone().unwrap()] {
        assert!(
            vassal_tests::router_harness::udp_echo(&alice.ns, &dst, 7, 4000),
            "4000-byte datagram to {dst} lost; log:\n{}",
            router.log_text()
        );
    }
    assert_eq!(router.dropped("alice", "fragment"), 0.0);
    assert_eq!(router.dropped("bob", "fragment"), 0.0);
}

/// Rules under which nothing reaches a vassal but UDP to bob's port 7.
const BOB_UDP_7: &str = "[default]\nout = \"allow\"\nin = \"deny\"\n\
                         [[in]]\naction = \"allow\"\nproject = \"bob\"\nproto = \"udp\"\n\
                         dst_port = 7\n";

/// alice and bob, both families, on [`BOB_UDP_7`], with an echo server on
/// bob's port 7.
fn echo_on_bob_7() -> (TestRouter, TestVassal, TestVassal, KillOnDrop) {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(BOB_UDP_7.into()),
        ipv6: true,
        ..Default::default()
    });
    let alice = TestVassal::attach6(&router, "alice", 2);
    let bob = TestVassal::attach6(&router, "bob", 3);
    let log = router.dir.join("bob.log");
    let echo = echo_server(&bob.ns, "::", 7, &log);
    (router, alice, bob, echo)
}

/// Two vassals on permissive rules that deny one thing: UDP to bob's
/// port 9. Whatever alice crafts toward port 9 must not reach bob's kernel.
fn deny_port_9() -> (TestRouter, TestVassal, TestVassal) {
    let rules = "[default]\nout = \"allow\"\nin = \"allow\"\n\
                 [[in]]\naction = \"deny\"\nproject = \"bob\"\nproto = \"udp\"\ndst_port = 9\n";
    let router = TestRouter::start(&RouterSpec {
        rules: Some(rules.into()),
        ipv6: true,
        ..Default::default()
    });
    let alice = TestVassal::attach6(&router, "alice", 2);
    let bob = TestVassal::attach6(&router, "bob", 3);
    (router, alice, bob)
}

/// Sends the allowed train `id` (to port 7) from alice to `dst` and waits
/// until bob's kernel reassembled it: everything alice sent before it has
/// been through the router by then.
fn control_train(
    router: &TestRouter,
    alice: &TestVassal,
    bob: &TestVassal,
    src: &str,
    dst: &str,
    id: u32,
) {
    let (_, oks) = reassembly(&bob.ns);
    craft(&alice.ns, src, dst, id, &["7", "0,1,2"]);
    assert!(
        wait_until(Duration::from_secs(3), || reassembly(&bob.ns).1 == oks + 1),
        "the allowed crafted train {id} to {dst} did not arrive; log:\n{}",
        router.log_text()
    );
}

#[test]
fn hostile_router_fragments_of_a_denied_datagram_never_pass() {
    let (router, alice, bob) = deny_port_9();
    for (src, dst, id) in both_families(&alice, &bob, [4001, 0x6001]) {
        let (reqds, _) = reassembly(&bob.ns);
        // The first fragment to port 9 is denied by bob's in chain; its two
        // followers carry no port.
        craft(&alice.ns, &src, &dst, id, &["9", "0,1,2"]);
        control_train(&router, &alice, &bob, &src, &dst, id + 1);
        assert_eq!(
            reassembly(&bob.ns).0,
            reqds + 3,
            "only the control train's three fragments reached bob ({dst})"
        );
    }
    // Counted: the first fragments as firewall drops of bob, each follower
    // as a fragment drop of alice.
    assert_eq!(router.dropped("bob", "firewall"), 2.0);
    assert_fragment_drops(&router, "alice", 4.0);
}

#[test]
fn hostile_router_fragments_a_forged_later_fragment_alone_never_passes() {
    let (router, alice, bob) = deny_port_9();
    for (src, dst, id) in both_families(&alice, &bob, [5001, 0x7001]) {
        let (reqds, _) = reassembly(&bob.ns);
        // The middle and last fragments of a datagram nobody started.
        craft(&alice.ns, &src, &dst, id, &["9", "1,2"]);
        control_train(&router, &alice, &bob, &src, &dst, id + 1);
        assert_eq!(reassembly(&bob.ns).0, reqds + 3, "{dst}");
        // Out of order: a later fragment before its (allowed) first one is
        // dropped, and so the datagram is lost (docs/security.md).
        craft(&alice.ns, &src, &dst, id + 2, &["7", "1,0,2"]);
        control_train(&router, &alice, &bob, &src, &dst, id + 3);
    }
    assert_eq!(router.dropped("bob", "firewall"), 0.0);
    assert_fragment_drops(&router, "alice", 8.0);
}

#[test]
fn hostile_router_fragments_ipv6_destination_options_after_the_fragment_header_parse() {
    let (router, alice, bob, _echo) = echo_on_bob_7();
    python(&alice.ns, DSTOPTS_CLIENT, &[bob.addr6.as_deref().unwrap()])
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", router.log_text()));
    assert_eq!(router.dropped("alice", "malformed"), 0.0);
    assert_eq!(router.dropped("alice", "fragment"), 0.0);
}

#[test]
fn hostile_router_fragments_a_flood_of_first_fragments_fills_only_its_own_share() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some(BOB_UDP_7.into()),
        extra: "[fragments]\nmax_total = 8\nmax_per_project = 4\ntimeout = 60\n".into(),
        ..Default::default()
    });
    let alice = TestVassal::attach(&router, "alice", 2);
    let bob = TestVassal::attach(&router, "bob", 3);
    let carol = TestVassal::attach(&router, "carol", 4);
    let log = router.dir.join("bob.log");
    let _echo = echo_server(&bob.ns, "0.0.0.0", 7, &log);
    let (src, dst) = (alice.addr.to_string(), bob.addr.to_string());
    // alice starts 20 datagrams (allowed first fragments) and never ends
    // them: 4 fill her share, 16 are refused.
    for id in 100..120u32 {
        craft(&alice.ns, &src, &dst, id, &["7", "0"]);
    }
    assert_fragment_drops(&router, "alice", 16.0);
    assert!(
        wait_until(Duration::from_secs(3), || router
            .metric("vassal_fragment_table_size", "")
            == 4.0),
        "{}",
        router.scrape()
    );
    // carol's (and bob's answering) large datagrams still pass; alice's
    // own do not until her datagrams expire.
    assert!(
        vassal_tests::router_harness::udp_echo(&carol.ns, &dst, 7, 4000),
        "carol's 4000-byte datagram lost; log:\n{}",
        router.log_text()
    );
    assert!(!vassal_tests::router_harness::udp_echo(
        &alice.ns, &dst, 7, 4000
    ));
    assert_eq!(router.dropped("carol", "fragment"), 0.0);
    assert_eq!(router.dropped("bob", "fragment"), 0.0);
}

#[test]
fn hostile_router_fragments_tiny_and_overlapping_fragments_stay_refused() {
    let (router, alice, bob) = deny_port_9();
    for (src, dst, id) in both_families(&alice, &bob, [6001, 0x8001]) {
        let (reqds, _) = reassembly(&bob.ns);
        // Tiny (RFC 1858): a TCP first fragment of 8 bytes, its flags in
        // the second fragment; refused as malformed (as before the fix:
        // this one guards against a regression).
        craft(&alice.ns, &src, &dst, id, &["7", "0:8:1,8:48:0", "tcp"]);
        // Overlapping: an allowed UDP first fragment, then a fragment at
        // offset 8 that would rewrite what the first one was judged on.
        craft(&alice.ns, &src, &dst, id + 1, &["7", "0,8:16:0"]);
        control_train(&router, &alice, &bob, &src, &dst, id + 2);
        assert_eq!(
            reassembly(&bob.ns).0,
            reqds + 1 + 3,
            "only the overlapped first fragment and the control train reached bob ({dst})"
        );
    }
    // Per family: the tiny first fragment is malformed, its second an
    // orphan; the overlapping fragment is refused.
    assert_eq!(router.dropped("alice", "malformed"), 2.0);
    assert_fragment_drops(&router, "alice", 4.0);
}
