//! Network limits (`net_out`, `net_in`): measured with TCP through a real
//! router, a limited vassal beside an unlimited one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_attach::{transport, Hello, RateLimit, Request, Response};
use vassal_tests::launcher_harness::{code, name, network_table, stderr, vassal_file, TempDir};
use vassal_tests::router_harness::{RouterSpec, TestRouter, TestVassal, COMPAT_PY};
use vassal_tests::{binary, KillOnDrop};

const RULES: &str = "[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n";

/// 50 Mbit/s with the burst the launcher gives it by default.
fn fifty_m() -> RateLimit {
    RateLimit {
        rate: 50_000_000,
        burst: vassal_attach::default_burst(50_000_000),
    }
}

/// An iperf3 server on the router's gateway (the host side).
fn server(router: &TestRouter, port: u16) -> KillOnDrop {
    let s = KillOnDrop::spawn(
        Command::new("iperf3")
            .args([
                "-s",
                "-B",
                &router.gateway().to_string(),
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(vassal_tests::wait_until(Duration::from_secs(5), || {
        vassal_tests::tcp_listening(port)
    }));
    s
}

/// Starts an iperf3 client in `v` (`-R`: the host sends) for `secs`.
fn client(v: &TestVassal, router: &TestRouter, port: u16, secs: u32, reverse: bool) -> KillOnDrop {
    let gw = router.gateway().to_string();
    let (p, t) = (port.to_string(), secs.to_string());
    let mut args = vec!["-c", &gw, "-p", &p, "-t", &t, "-J"];
    if reverse {
        args.push("-R");
    }
    KillOnDrop::spawn(
        v.ns.command("iperf3")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
}

/// What one iperf3 run measured: bits per second received, retransmits
/// and segments sent (by the vassal when it sent).
struct Run {
    bps: f64,
    retransmits: f64,
    segments: f64,
}

/// What `c` printed, once it has exited.
fn output(mut c: KillOnDrop) -> String {
    let mut text = String::new();
    c.0.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    c.0.wait().unwrap();
    text
}

fn finish(c: KillOnDrop) -> Run {
    let text = output(c);
    let j: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(j.get("error").is_none(), "iperf3: {text}");
    let end = &j["end"];
    let mss = j["start"]["tcp_mss_default"].as_f64().unwrap_or(1448.0);
    Run {
        bps: end["sum_received"]["bits_per_second"].as_f64().unwrap(),
        retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
        segments: end["sum_sent"]["bytes"].as_f64().unwrap() / mss,
    }
}

fn limited(router: &TestRouter, project: &str, host: u8, limit: RateLimit) -> TestVassal {
    let mut v = TestVassal::create(router, project, host, false);
    v.net_out = Some(limit);
    v.net_in = Some(limit);
    match v.hello(router) {
        Response::Accepted {
            net_out, net_in, ..
        } => assert_eq!((net_out, net_in), (Some(limit), Some(limit))),
        other => panic!("refused: {other:?}"),
    }
    v
}

#[test]
fn router_net_limit_holds_a_vassal_to_its_rate_both_ways_and_spares_its_neighbour() {
    let router = TestRouter::with_rules(RULES);
    let slow = limited(&router, "slow", 2, fifty_m());
    let fast = TestVassal::attach(&router, "fast", 3);
    let _servers = [server(&router, 5201), server(&router, 5202)];

    // The neighbour alone, for reference.
    let alone = finish(client(&fast, &router, 5202, 3, false)).bps;

    // Egress: shaped, so TCP keeps the rate with (almost) no loss.
    let neighbour = client(&fast, &router, 5202, 8, false);
    let out = finish(client(&slow, &router, 5201, 8, false));
    let beside = finish(neighbour).bps;
    eprintln!(
        "egress: {:.1} Mbit/s, {} retransmits of {:.0} segments; neighbour {:.0} Mbit/s beside, {:.0} alone",
        out.bps / 1e6,
        out.retransmits,
        out.segments,
        beside / 1e6,
        alone / 1e6
    );
    assert!(
        (45e6..=52e6).contains(&out.bps),
        "egress at {:.1} Mbit/s",
        out.bps / 1e6
    );
    assert!(
        out.retransmits < out.segments / 100.0,
        "{} retransmits of {:.0} segments",
        out.retransmits,
        out.segments
    );
    assert!(
        beside > alone / 2.0 && beside > 4.0 * 50e6,
        "the neighbour fell from {:.0} to {:.0} Mbit/s",
        alone / 1e6,
        beside / 1e6
    );

    // Ingress: policed.
    let neighbour = client(&fast, &router, 5202, 8, true);
    let inn = finish(client(&slow, &router, 5201, 8, true));
    let beside = finish(neighbour).bps;
    eprintln!(
        "ingress: {:.1} Mbit/s; neighbour {:.0} Mbit/s beside",
        inn.bps / 1e6,
        beside / 1e6
    );
    assert!(
        (45e6..=52e6).contains(&inn.bps),
        "ingress at {:.1} Mbit/s",
        inn.bps / 1e6
    );
    assert!(
        beside > alone / 2.0 && beside > 4.0 * 50e6,
        "the neighbour fell from {:.0} to {:.0} Mbit/s",
        alone / 1e6,
        beside / 1e6
    );
    // Both limits left their trace, on the limited project only.
    assert!(router.dropped("slow", "rate_limit") > 0.0);
    assert!(router.metric("vassal_rate_limited_seconds_total", "project=\"slow\"") >= 1.0);
    assert_eq!(router.dropped("fast", "rate_limit"), 0.0);
    assert_eq!(
        router.metric("vassal_rate_limited_seconds_total", "project=\"fast\""),
        0.0
    );
}

/// Sends a hello of `version` asking `net_out` for `v`, keeping the
/// connection in `v`.
fn hello(
    v: &mut TestVassal,
    router: &TestRouter,
    version: u32,
    net_out: Option<RateLimit>,
) -> Response {
    let conn = transport::connect(&router.socket).unwrap();
    let hello = Request::Hello(Hello {
        version,
        project: v.project.clone(),
        ipv4: v.addr,
        ipv6: None,
        net_out,
        net_in: None,
    });
    let answer = transport::call(conn.as_fd(), &hello, Some(v.tun.as_fd())).unwrap();
    v.control = Some(conn);
    answer
}

#[test]
fn router_net_limit_a_version_1_hello_attaches_unlimited_and_tiers_cap_the_rest() {
    let mut router = TestRouter::with_rules(RULES);
    // The tier names the vassal's address, known once the router has its
    // subnet: write it and restart.
    assert!(router.stop(nix::sys::signal::Signal::SIGTERM));
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config.push_str(&format!(
        "[[project]]\nname = \"tier\"\naddress = \"{}\"\nnet_out_ceiling = \"10M\"\nnet_in_default = \"20M\"\n",
        router.addr(2)
    ));
    std::fs::write(&router.config_path, config).unwrap();
    router.spawn();

    // A version-1 launcher knows nothing of limits: attached, told none,
    // and unlimited.
    let mut old = TestVassal::create(&router, "old", 3, false);
    match hello(&mut old, &router, 1, None) {
        Response::Accepted {
            version,
            net_out: None,
            net_in: None,
            ..
        } => assert_eq!(version, vassal_attach::PROTOCOL_VERSION),
        other => panic!("a version-1 hello: {other:?}"),
    }
    let _server = server(&router, 5203);
    let run = finish(client(&old, &router, 5203, 2, false));
    assert!(
        run.bps > 200e6,
        "a version-1 vassal moved only {:.0} Mbit/s",
        run.bps / 1e6
    );
    assert_eq!(router.dropped("old", "rate_limit"), 0.0);
    assert_eq!(
        router.metric("vassal_rate_limited_seconds_total", "project=\"old\""),
        0.0
    );
    assert_eq!(
        router.metric("vassal_limit_net_out_bytes_per_second", "project=\"old\""),
        0.0
    );

    // Its hello may not carry version-2 fields.
    let mut sneaky = TestVassal::create(&router, "sneaky", 4, false);
    match hello(&mut sneaky, &router, 1, Some(fifty_m())) {
        Response::Refused { reason, .. } => {
            assert_eq!(reason, vassal_attach::RefuseReason::Malformed)
        }
        other => panic!("{other:?}"),
    }

    // A tier: what the vassal asks, capped by the ceiling; the default
    // where it asks none.
    let mut tiered = TestVassal::create(&router, "tier", 2, false);
    match hello(&mut tiered, &router, 2, Some(fifty_m())) {
        Response::Accepted {
            net_out, net_in, ..
        } => {
            assert_eq!(
                net_out,
                Some(RateLimit {
                    rate: 10_000_000,
                    burst: 312_500
                })
            );
            assert_eq!(
                net_in,
                Some(RateLimit {
                    rate: 20_000_000,
                    burst: 625_000
                })
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        router.metric("vassal_limit_net_out_bytes_per_second", "project=\"tier\""),
        10e6 / 8.0
    );
    assert_eq!(
        router.metric("vassal_limit_net_in_bytes_per_second", "project=\"tier\""),
        20e6 / 8.0
    );
    let run = finish(client(&tiered, &router, 5203, 3, false));
    assert!(
        (8e6..=11e6).contains(&run.bps),
        "the ceiling let {:.1} Mbit/s through",
        run.bps / 1e6
    );
}

#[test]
fn router_net_limit_holds_a_launched_vassal_flooding_past_its_file_limit() {
    let router = TestRouter::with_rules(RULES);
    let _server = server(&router, 5204);
    let dir = TempDir::new();
    let n = name("nl");
    // The tenant asks 20 Mbit/s in its file, then sends UDP as fast as
    // it can for 3 s.
    let file = vassal_file(
        &dir,
        &n,
        &[
            "iperf3",
            "-c",
            &router.gateway().to_string(),
            "-p",
            "5204",
            "-u",
            "-b",
            "2G",
            "-l",
            "1400",
            "-t",
            "3",
        ],
        &format!(
            "{}[limits]\nnet_out = \"20M\"\nnet_in = \"30M\"\n",
            network_table(&router.socket, router.addr(2))
        ),
    );
    let out = Command::new(binary("vassal-launch"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), router.log_text());
    let project = format!("project=\"{n}\"");
    assert_eq!(
        router.metric("vassal_limit_net_out_bytes_per_second", &project),
        20e6 / 8.0
    );
    assert_eq!(
        router.metric("vassal_limit_net_in_bytes_per_second", &project),
        30e6 / 8.0
    );
    // What the router forwarded: 3 s at 20 Mbit/s plus the burst, not the
    // flood (the rest waited in, and overflowed, the vassal's own queue).
    let sent = router.metric("vassal_tx_bytes_total", &project);
    let most = 20e6 / 8.0 * 3.5 + vassal_attach::default_burst(20_000_000) as f64;
    assert!(
        sent > 20e6 / 8.0 * 2.0 && sent < most,
        "forwarded {sent} bytes in 3 s at 20 Mbit/s"
    );
    let shaped = router.metric("vassal_rate_limited_seconds_total", &project);
    assert!(shaped >= 1.0, "shaped {shaped} s\n{}", router.scrape());
}

/// The uWSGI compat peer of these tests: connects to `sock` as root (uid 0,
/// project "legacy" at `src`) and for [`COMPAT_SECS`], by `mode`:
/// `send` floods `dst:port` with 1400-byte UDP datagrams in frames;
/// `reconnect` does the same over a new connection every 50 ms (each new
/// attachment a new pair of buckets); `count` sends one datagram from
/// port 40001 to `dst:port` (so the host's answers belong to a flow) and
/// counts the UDP payload bytes framed back to it. Prints what it wrote
/// (or counted), in bytes.
fn compat_peer(sock: &str, src: Ipv4Addr, dst: Ipv4Addr, port: u16, mode: &str) -> KillOnDrop {
    let script = format!(
        r#"{COMPAT_PY}
src = socket.inet_aton("{src}"); dst = socket.inet_aton("{dst}")
def udp(sport, payload):
    u = struct.pack("!HHHH", sport, {port}, 8 + len(payload), 0) + payload
    return frame(ipv4(17, src, dst, u, flags=0x4000))
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("{sock}")
    return s
s = connect()
end = time.time() + {secs}
count = 0
f = udp(40000, b"x" * 1400) * 16
if "{mode}" == "send":
    s.settimeout(0.2)
    while time.time() < end:
        try:
            s.sendall(f)
            count += 16 * 1400
        except socket.timeout:
            pass
elif "{mode}" == "reconnect":
    while time.time() < end:
        s.settimeout(0.05)
        try:
            while True:
                s.sendall(f)
                count += 16 * 1400
        except socket.timeout:
            pass
        s.close()
        s = connect()
else:
    s.sendall(udp(40001, b"hello"))
    s.settimeout({secs})
    try:
        for p in packets(s):
            if p[9] == 17 and p[16:20] == src:
                count += len(p) - 28
            if time.time() > end:
                break
    except socket.timeout:
        pass
print(count, flush=True)
"#,
        secs = COMPAT_SECS,
    );
    KillOnDrop::spawn(
        Command::new(vassal_tests::router_harness::PYTHON)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
}

/// How long each direction of the compat test runs, in seconds.
const COMPAT_SECS: u64 = 3;

/// The compat peer in `mode` (`send` or `reconnect`) against a UDP sink
/// on the gateway: the bytes the host got, and those the peer wrote.
fn flood_out(router: &TestRouter, addr: Ipv4Addr, mode: &str) -> (f64, f64) {
    let rx = UdpSocket::bind((router.gateway(), 0)).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = rx.local_addr().unwrap().port();
    let sock = router.compat_socket.display().to_string();
    let peer = compat_peer(&sock, addr, router.gateway(), port, mode);
    let mut got = 0f64;
    let mut buf = [0u8; 2048];
    while let Ok(n) = rx.recv(&mut buf) {
        got += n as f64;
    }
    (got, printed_count(peer))
}

fn printed_count(c: KillOnDrop) -> f64 {
    let text = output(c);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

/// A uWSGI compat peer cannot ask for limits: its project's tier holds it
/// (the ceilings here, 8 Mbit/s each way) as it holds a launched vassal.
/// The peer floods UDP to a host port, then the host floods UDP back to
/// the peer; in each 3 s no more than the ceiling's 3 MB and its burst
/// pass. Without tiers for compat peers both ran at memory speed.
#[test]
fn router_net_limit_holds_a_compat_peer_to_its_projects_tier() {
    let mut router = TestRouter::start(&RouterSpec {
        rules: Some(RULES.into()),
        compat: true,
        ..Default::default()
    });
    assert!(router.stop(nix::sys::signal::Signal::SIGTERM));
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    let addr = router.addr(20);
    config.push_str(&format!(
        "\n[[project]]\nname = \"legacy\"\naddress = \"{addr}\"\nuid = 0\nnet_out_ceiling = \"8M\"\nnet_in_ceiling = \"8M\"\n"
    ));
    std::fs::write(&router.config_path, config).unwrap();
    router.spawn();
    let sock = router.compat_socket.display().to_string();
    // 8 Mbit/s in bytes; around it, the burst (250 ms at the rate) and
    // what queues in the buffers on the way.
    let ceiling = 1e6 * COMPAT_SECS as f64;
    let (least, most) = (ceiling / 3.0, ceiling * 1.5);

    // Out: what the host receives of the peer's flood.
    let (got, offered) = flood_out(&router, addr, "send");
    assert!(
        (least..=most).contains(&got),
        "out: the host got {got} bytes in {COMPAT_SECS} s (ceiling {ceiling}), the peer wrote {offered}"
    );
    assert!(
        router.metric("vassal_rate_limited_seconds_total", "project=\"legacy\"") > 1.0,
        "out: the peer was not held off"
    );
    assert_eq!(
        router.metric(
            "vassal_limit_net_out_bytes_per_second",
            "project=\"legacy\""
        ),
        1e6
    );

    // Out again, over a new connection every 50 ms: a new attachment's
    // buckets start empty, so reconnecting buys no burst.
    let (got, offered) = flood_out(&router, addr, "reconnect");
    assert!(
        got <= most,
        "reconnecting: the host got {got} bytes in {COMPAT_SECS} s (ceiling {ceiling}), the peer wrote {offered}"
    );

    // In: the host floods the peer's flow; the router polices it.
    let tx = UdpSocket::bind((router.gateway(), 0)).unwrap();
    tx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = tx.local_addr().unwrap().port();
    let peer = compat_peer(&sock, addr, router.gateway(), port, "count");
    let mut buf = [0u8; 64];
    let (_, from) = tx.recv_from(&mut buf).expect("the peer's opening datagram");
    let payload = [7u8; 1400];
    let end = std::time::Instant::now() + Duration::from_secs(COMPAT_SECS - 1);
    let mut sent = 0f64;
    while std::time::Instant::now() < end {
        if tx.send_to(&payload, from).is_ok() {
            sent += payload.len() as f64;
        }
    }
    let received = printed_count(peer);
    let window = ceiling * (COMPAT_SECS - 1) as f64 / COMPAT_SECS as f64;
    assert!(
        sent > 4.0 * window,
        "in: the host sent only {sent} bytes, not a flood"
    );
    assert!(
        (window / 3.0..=window * 1.5).contains(&received),
        "in: the peer got {received} of {sent} bytes in {} s (ceiling {window})",
        COMPAT_SECS - 1
    );
    assert!(router.dropped("legacy", "rate_limit") > 0.0);
}
