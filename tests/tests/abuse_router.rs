//! Faults of the router itself under tenants' traffic: killed with SIGKILL
//! and restarted while many launched vassals run (every one re-attaches on
//! its own, NAT state is replaced, never duplicated, and removed on a clean
//! stop), and rule reloads in a stream of allowed traffic (not one allowed
//! packet lost, invalid files without effect, the last valid file in force).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vassal_tests::launcher_harness::{
    in_netns_of, leftovers, name, network_run_args, supervisor_pid, Launched,
};
use vassal_tests::router_harness::{echo_server, RouterSpec, TestRouter, TestVassal, PYTHON};
use vassal_tests::{try_run, wait_until, KillOnDrop, Netns, Veth};

/// The router's NAT table as `nft list table` prints it, line by line
/// without indentation; `None` when there is no such table.
fn nat_table(router: &TestRouter) -> Option<Vec<String>> {
    let out = Command::new("nft")
        .args([
            "list",
            "table",
            "inet",
            &vassal_router::nat::table_name(&router.device),
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// The table a router with NAT out of `egress` must hold: anti-spoofing
/// toward its device, the host closed to its vassals but for the gateway
/// and replies, masquerade for its subnet out of `egress`, forwarding
/// accepted to and from its device, and nothing else.
fn expected_nat_table(router: &TestRouter, egress: &str) -> Vec<String> {
    let (dev, (b, c)) = (&router.device, router.net);
    [
        format!("table inet {} {{", vassal_router::nat::table_name(dev)),
        "chain forward {".into(),
        "type filter hook forward priority filter; policy accept;".into(),
        format!("oifname \"{dev}\" ip saddr 10.{b}.{c}.0/24 drop"),
        format!("iifname \"{dev}\" accept"),
        format!("oifname \"{dev}\" accept"),
        "}".into(),
        "chain output {".into(),
        "type filter hook output priority filter; policy accept;".into(),
        format!("oifname \"{dev}\" ip saddr 10.{b}.{c}.0/24 ip saddr != 10.{b}.{c}.1 drop"),
        "}".into(),
        "chain input {".into(),
        "type filter hook input priority filter; policy accept;".into(),
        format!("iifname \"{dev}\" ct state established,related accept"),
        format!("iifname \"{dev}\" ip daddr 10.{b}.{c}.1 accept"),
        format!("iifname \"{dev}\" drop"),
        "}".into(),
        "chain postrouting {".into(),
        "type nat hook postrouting priority srcnat; policy accept;".into(),
        format!("ip saddr 10.{b}.{c}.0/24 oifname \"{egress}\" masquerade"),
        "}".into(),
        "}".into(),
    ]
    .into()
}

/// Every nftables table (any family) named after the router's device.
fn tables_of(router: &TestRouter) -> Vec<String> {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let name = vassal_router::nat::table_name(&router.device);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(name.as_str()))
        .map(str::to_owned)
        .collect()
}

/// How many times the whole ruleset names the router's device or subnet:
/// anything beyond its one table (a rule left in another table) shows.
fn ruleset_mentions(router: &TestRouter) -> (usize, usize) {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (b, c) = router.net;
    (
        text.matches(&format!("\"{}\"", router.device)).count(),
        text.matches(&format!("10.{b}.{c}.0/24")).count(),
    )
}

fn device_exists(device: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", device])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn process_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// The router's NAT table is its only table in the ruleset and holds
/// exactly `expected`.
fn assert_only_table(router: &TestRouter, expected: &[String]) {
    assert_eq!(
        tables_of(router),
        [format!(
            "table inet {}",
            vassal_router::nat::table_name(&router.device)
        )]
    );
    assert_eq!(nat_table(router).as_deref(), Some(expected));
    assert_eq!(ruleset_mentions(router), (7, 3));
}

/// `vassal-router stats --json`: project name to its stats object, each
/// project listed once.
fn stats(router: &TestRouter) -> BTreeMap<String, serde_json::Value> {
    let mut map = BTreeMap::new();
    for p in router.stats() {
        let name = p["project"].as_str().unwrap().to_owned();
        assert!(map.insert(name.clone(), p).is_none(), "{name} listed twice");
    }
    map
}

/// A TCP round trip of `len` bytes from the network namespace of process
/// `pid` to `dst:port`, giving up after `timeout` seconds; the error says
/// what failed.
fn echo_from(pid: u32, dst: &str, port: u16, len: usize, timeout: f32) -> Result<(), String> {
    let script = format!(
        "import socket, sys\ns = socket.create_connection(({dst:?}, {port}), timeout={timeout})\n\
         data = bytes(i % 251 for i in range({len}))\ns.sendall(data); got = b''\n\
         while len(got) < len(data):\n    d = s.recv(65536)\n    if not d: break\n    got += d\n\
         sys.exit(0 if got == data else 'echo differs: %d of %d bytes' % (len(got), len(data)))\n"
    );
    try_run(Command::new("nsenter").args(["-t", &pid.to_string(), "-n", PYTHON, "-c", &script]))
}

/// The peers the echo server logged (`tcp ADDR` lines) from line `from` on.
fn peers_since(log: &Path, from: usize) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .skip(from)
        .filter_map(|l| l.strip_prefix("tcp ").map(str::to_owned))
        .collect()
}

fn log_lines(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap().lines().count()
}

/// A test-built "internet": a namespace holding a /30 of TEST-NET-3
/// (203.0.113.0/24, one per test process and call) behind a veth, with an
/// echo server on port 8080 that logs its peers.
struct Internet {
    /// The host's end of the link (the NAT egress interface).
    veth: Veth,
    /// The host's address on it: what NAT rewrites vassals' sources to.
    host_addr: String,
    /// The server's address.
    server: String,
    /// The echo server's log (`tcp PEER` lines).
    log: std::path::PathBuf,
    _server: KillOnDrop,
    _ns: Netns,
}

impl Internet {
    fn new(dir: &Path) -> Internet {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2;
        let base = ((std::process::id() % 30) as u8 * 2 + n) * 4;
        let (host_addr, server) = (
            format!("203.0.113.{}", base + 1),
            format!("203.0.113.{}", base + 2),
        );
        let ns = Netns::new("in");
        let veth = Veth::new(&ns, &format!("{host_addr}/30"), &format!("{server}/30"));
        let log = dir.join(format!("internet-{}.log", veth.host));
        let server_proc = echo_server(&ns, "0.0.0.0", 8080, &log);
        Internet {
            veth,
            host_addr,
            server,
            log,
            _server: server_proc,
            _ns: ns,
        }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Issue #6: the router killed with SIGKILL and restarted re-attaches every
/// running vassal, with no stale nftables state.
///
/// What a SIGKILLed router leaves (checked below while it is dead): its
/// nftables table, unchanged (it cannot clean up; the next start replaces
/// it in one transaction); its control socket file, which nobody listens
/// on any more. Its tun device, the gateway address and route are gone with
/// its fds, so the stale table forwards nothing. The vassals are untouched:
/// each launcher keeps running and keeps its vassal's tun (`vx0`, up, with
/// its address), only traffic stops, and each launcher says it is
/// re-attaching.
#[test]
fn abuse_router_sigkill_restart_reattaches_every_vassal_with_no_stale_nat() {
    const VASSALS: u8 = 10;
    let internet = Internet::new(&std::env::temp_dir());
    let (host_addr, server, log) = (&internet.host_addr, &internet.server, &internet.log);
    // The embedded rules: the internet allowed out, replies established.
    let mut router = TestRouter::start(&RouterSpec {
        nat: Some(Some(internet.veth.host.clone())),
        ..Default::default()
    });

    let names: Vec<String> = (0..VASSALS).map(|i| name(&format!("rk{i}"))).collect();
    let mut vassals: Vec<Launched> = names
        .iter()
        .zip(10..)
        .map(|(n, host)| {
            let mut args = network_run_args(n, &router.socket, router.addr(host));
            args.extend(["--".into(), "/bin/sleep".into(), "600".into()]);
            Launched::spawn(n, &args, router.dir.join(format!("{n}.stderr")))
        })
        .collect();
    let attached = |router: &TestRouter| {
        let m = router.scrape();
        names.iter().all(|n| {
            vassal_tests::metric(&m, "vassal_attached", &format!("project=\"{n}\"")) == Some(1.0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || attached(&router)),
        "not every vassal attached:\n{}",
        router.log_text()
    );
    let pids: Vec<u32> = vassals
        .iter()
        .map(|v| supervisor_pid(&v.name).expect("a supervisor pid"))
        .collect();
    let launcher_pids: Vec<u32> = vassals.iter().map(Launched::pid).collect();
    for (v, pid) in vassals.iter().zip(&pids) {
        if let Err(e) = echo_from(*pid, server, 8080, 100_000, 3.0) {
            panic!("{} cannot reach the internet before the kill: {e}", v.name);
        }
    }
    // Through NAT: the server saw the host's address only.
    let peers = peers_since(log, 0);
    assert_eq!(peers.len(), VASSALS as usize, "{peers:?}");
    assert!(peers.iter().all(|p| p == host_addr), "{peers:?}");

    let expected = expected_nat_table(&router, &internet.veth.host);
    assert_only_table(&router, &expected);

    // SIGKILL: no chance to clean up.
    router.stop(Signal::SIGKILL);
    // Its device is gone at once (the last fd of a tun closed).
    assert!(
        wait_until(Duration::from_secs(3), || !device_exists(&router.device)),
        "the host tun outlived its router"
    );
    // The table stays, unchanged.
    assert_eq!(nat_table(&router).as_ref(), Some(&expected));
    assert_eq!(tables_of(&router).len(), 1);
    // The socket file stays; nobody answers on it or on the metrics port.
    assert!(router.socket.exists(), "the control socket file is gone");
    assert!(vassal_attach::transport::connect(&router.socket).is_err());
    assert!(std::net::TcpStream::connect(&router.metrics).is_err());
    // Every vassal keeps running with its network device, and notices.
    for ((v, pid), host) in vassals.iter_mut().zip(&pids).zip(10..) {
        assert!(
            v.running(),
            "{} ended with its router:\n{}",
            v.name,
            v.stderr()
        );
        assert!(process_alive(*pid), "{}'s supervisor is gone", v.name);
        let addr = router.addr(host);
        assert!(
            in_netns_of(
                *pid,
                &[
                    "sh",
                    "-c",
                    &format!("ip -o -4 addr show dev vx0 up | grep -q ' {addr}/'")
                ]
            ),
            "{}'s vx0 is gone or lost its address",
            v.name
        );
    }
    assert!(
        wait_until(Duration::from_secs(3), || vassals.iter().all(|v| v
            .stderr()
            .contains("the router closed the attachment; re-attaching"))),
        "a launcher did not notice the router's death"
    );
    // Traffic stops: nothing forwards it.
    assert!(echo_from(pids[0], server, 8080, 1000, 1.0).is_err());
    // Dead for a while: the launchers back off to their 2 s ceiling.
    std::thread::sleep(Duration::from_millis(2500));

    let lines_before_restart = log_lines(log);
    router.spawn();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let s = stats(&router);
            s.len() == names.len()
                && names
                    .iter()
                    .all(|n| s.get(n).is_some_and(|p| p["attached"] == true))
        }),
        "not every vassal re-attached: {:?}\n{}",
        stats(&router),
        router.log_text()
    );
    assert!(attached(&router), "the metrics disagree with stats");
    // The same vassals, not restarted ones; each re-attached exactly once,
    // and the router refused nobody (no stale address holder).
    for ((v, pid), lpid) in vassals.iter_mut().zip(&pids).zip(&launcher_pids) {
        assert!(v.running());
        assert_eq!(v.pid(), *lpid);
        assert_eq!(supervisor_pid(&v.name), Some(*pid), "{} restarted", v.name);
        assert_eq!(
            v.stderr().matches("re-attached to").count(),
            1,
            "{}",
            v.stderr()
        );
    }
    let metrics = router.scrape();
    let refusals: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("vassal_attach_refusals_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(refusals, 0.0, "{metrics}");

    // Traffic flows again for every one, still through NAT.
    for (v, pid) in vassals.iter().zip(&pids) {
        if let Err(e) = echo_from(*pid, server, 8080, 100_000, 3.0) {
            panic!(
                "{} cannot reach the internet after the restart: {e}",
                v.name
            );
        }
    }
    let peers = peers_since(log, lines_before_restart);
    assert_eq!(peers.len(), VASSALS as usize, "{peers:?}");
    assert!(peers.iter().all(|p| p == host_addr), "{peers:?}");
    let s = stats(&router);
    for v in &vassals {
        let p = &s[&v.name];
        assert!(p["tx_packets"].as_u64().unwrap() > 0, "{p}");
        assert!(p["rx_packets"].as_u64().unwrap() > 0, "{p}");
        assert!(
            p["dropped"].as_object().unwrap().values().all(|n| n == 0),
            "{p}"
        );
    }

    // Exactly one table for the device, exactly the expected rules: the
    // stale one was replaced, not duplicated or added to.
    assert_only_table(&router, &expected);

    // A clean stop removes the table and the device.
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
    assert_eq!(tables_of(&router), Vec::<String>::new());
    assert_eq!(ruleset_mentions(&router), (0, 0));
    assert!(!device_exists(&router.device));
    // The vassals still run without a router; stopped, they leave nothing.
    for v in &mut vassals {
        assert!(v.running(), "{}", v.stderr());
        let status = v.stop(Duration::from_secs(10));
        assert!(status.is_some(), "{} did not stop on SIGTERM", v.name);
        assert!(leftovers(&v.name).is_empty(), "{:?}", leftovers(&v.name));
    }
}

/// One step of the reload storm: the rule file's content (`None`: the file
/// is removed) and how the reload is asked for.
struct Step {
    file: Option<String>,
    by_sighup: bool,
    /// `Some((out, in))` rule counts when the file is valid.
    valid: Option<(usize, usize)>,
    /// For an invalid file: what the refusal must mention.
    refusal: &'static str,
}

/// The two valid files (and an empty, valid one) allow the vassal's two
/// streams (UDP to 7400, TCP to `tcp_port`, both to the gateway) but differ
/// elsewhere: A denies by default and allows the streams and TCP 7601 by
/// project-scoped rules; B allows by default, denies TCP 7601, and names
/// other projects first (so the project ids every reader re-resolves on a
/// new generation change). The invalid files are refused whole; the
/// second one starts with a rule that would cut the UDP stream.
fn reload_steps(gw: &str, tcp_port: u16) -> (String, Vec<Step>) {
    let a = format!(
        "[default]\nout = \"deny\"\nin = \"deny\"\nestablished = true\n\n\
         [[out]]\naction = \"allow\"\nproto = \"udp\"\ndst = \"{gw}\"\ndst_port = 7400\nproject = \"alice\"\n\n\
         [[out]]\naction = \"allow\"\nproto = \"tcp\"\ndst = \"{gw}\"\ndst_port = {tcp_port}\nproject = [\"alice\"]\n\n\
         [[out]]\naction = \"allow\"\nproto = \"tcp\"\ndst_port = \"7601\"\n"
    );
    let b = "[default]\nout = \"allow\"\nin = \"deny\"\n\n\
             [[out]]\naction = \"deny\"\nproject = [\"bob\", \"carol\"]\n\n\
             [[out]]\naction = \"deny\"\nproto = \"tcp\"\ndst_port = \"7601\"\nlog = true\n\n\
             [[out]]\naction = \"deny\"\nproto = \"udp\"\ndst_port = 7400\nproject = \"mallory\"\n\n\
             [[in]]\naction = \"allow\"\nproto = \"tcp\"\ndst_port = 8000\nproject = \"carol\"\n"
        .to_owned();
    let syntax = "[default\nout = \"deny\"\n".to_owned();
    let partial = "[default]\nout = \"deny\"\n\n[[out]]\naction = \"deny\"\nproto = \"udp\"\ndst_port = 7400\n\n\
                   [[out]]\naction = \"allow\"\ndst = \"10.0.0.1/8\"\n"
        .to_owned();
    let unknown =
        "[default]\nout = \"deny\"\n\n[[out]]\naction = \"allow\"\nproto = \"udp\"\ndport = 7400\n"
            .to_owned();
    let step = |file: Option<&String>, by_sighup, valid, refusal| Step {
        file: file.cloned(),
        by_sighup,
        valid,
        refusal,
    };
    let empty = String::new();
    let mut steps = Vec::new();
    for _ in 0..8 {
        steps.extend([
            step(Some(&b), false, Some((3, 1)), ""),
            step(Some(&syntax), false, None, "toml"),
            step(Some(&a), true, Some((3, 0)), ""),
            step(Some(&partial), false, None, "host bits set"),
            step(Some(&empty), false, Some((0, 0)), ""),
            step(Some(&unknown), true, None, "dport"),
            step(Some(&b), true, Some((3, 1)), ""),
            step(None, false, None, "cannot read"),
            step(Some(&a), false, Some((3, 0)), ""),
        ]);
    }
    (a, steps)
}

/// The value of a router-wide counter (no labels), 0 when absent.
fn counter(router: &TestRouter, name: &str) -> f64 {
    router.metric(name, "")
}

/// The kernel's IP, TCP, UDP and TCP extension counters of the network
/// namespace `ns` (`/proc/net/snmp` and `/proc/net/netstat` read from
/// inside it), as `Tcp.RetransSegs`, `TcpExt.TCPDSACKRecvSegs`, ...
fn snmp(ns: &Netns) -> BTreeMap<String, u64> {
    let text = String::from_utf8(
        ns.exec(&["cat", "/proc/net/snmp", "/proc/net/netstat"])
            .stdout,
    )
    .unwrap();
    let mut map = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let (Some((group, names)), Some((_, values))) =
            (pair[0].split_once(": "), pair[1].split_once(": "))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                map.insert(format!("{group}.{n}"), v);
            }
        }
    }
    map
}

/// Issue #6: a rule reload under load drops no allowed traffic. 72 reloads
/// (by `vassal-router reload` and by SIGHUP) of two different valid files,
/// an empty one and four kinds of invalid ones, while the vassal sends a
/// numbered UDP stream and a TCP stream to the gateway: every datagram
/// arrives, every TCP byte arrives in order with no retransmission, the
/// router drops nothing of the project, each reload is counted as done or
/// refused, and the last valid file is the one in force.
#[test]
fn abuse_rule_reloads_under_load_drop_no_allowed_traffic() {
    const TCP_PORT: u16 = 7500;
    let mut router = TestRouter::start(&RouterSpec {
        rules: Some(String::new()),
        ..Default::default()
    });
    let gw = router.gateway().to_string();
    let (file_a, steps) = reload_steps(&gw, TCP_PORT);
    std::fs::write(&router.rules_path, &file_a).unwrap();
    let socket = router.socket.to_str().unwrap().to_owned();
    assert!(router
        .cli(&["reload", "--socket", &socket])
        .status
        .success());
    let v = TestVassal::attach(&router, "alice", 2);
    let stop = router.dir.join("stop");

    // The receivers, in the host on the gateway address: a UDP sink that
    // records sequence numbers, a TCP sink that checks every byte. Both
    // finish once `stop` exists and a second has passed without data.
    let udp_log = router.dir.join("udp.log");
    let udp_sink = format!(
        "import socket, os\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)\ns.bind(({gw:?}, 7400))\n\
         s.settimeout(1)\nseen = set()\nprint('ready', flush=True)\n\
         while True:\n    try:\n        seen.add(int(s.recv(64)))\n    except socket.timeout:\n\
         \x20       if os.path.exists({stop:?}): break\n\
         top = max(seen) + 1 if seen else 0\nmissing = [i for i in range(top) if i not in seen]\n\
         print(len(seen), top, missing[:20], flush=True)\n",
        stop = stop.display().to_string()
    );
    let tcp_log = router.dir.join("tcp.log");
    let tcp_sink = format!(
        "import socket\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(({gw:?}, {TCP_PORT}))\nl.listen(1)\nprint('ready', flush=True)\n\
         c, _ = l.accept()\npattern = bytes(i % 251 for i in range(251 * 1024))\n\
         total = 0\nok = True\nwhile True:\n    d = c.recv(1 << 20)\n    if not d: break\n\
         \x20   off = total % 251\n    if d != (pattern[off:] + pattern * (len(d) // len(pattern) + 1))[:len(d)]: ok = False\n\
         \x20   total += len(d)\nprint(total, ok, flush=True)\n"
    );
    let sinks: Vec<KillOnDrop> = [(&udp_sink, &udp_log), (&tcp_sink, &tcp_log)]
        .iter()
        .map(|(script, log)| {
            let sink = KillOnDrop::spawn(
                Command::new(PYTHON)
                    .args(["-c", script])
                    .stdout(std::fs::File::create(log).unwrap()),
            );
            assert!(wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(log).is_ok_and(|t| t.starts_with("ready"))
            }));
            sink
        })
        .collect();

    // The senders, in the vassal: 2000 numbered datagrams a second, and
    // 256 KiB of the byte pattern every 20 ms (about 100 Mbit/s), until
    // `stop` exists; each prints how much it sent.
    let udp_source = format!(
        "import socket, time, os\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         i = 0\nt0 = time.monotonic()\nwhile not os.path.exists({stop:?}):\n\
         \x20   s.sendto(str(i).encode(), ({gw:?}, 7400))\n    i += 1\n\
         \x20   delay = t0 + i * 0.0005 - time.monotonic()\n    if delay > 0: time.sleep(delay)\n\
         print(i, flush=True)\n",
        stop = stop.display().to_string()
    );
    let tcp_source = format!(
        "import socket, time, os\ns = socket.create_connection(({gw:?}, {TCP_PORT}), timeout=10)\n\
         pattern = bytes(i % 251 for i in range(251 * 1100))\nchunk = 256 * 1024\nsent = 0\n\
         while not os.path.exists({stop:?}):\n    off = sent % 251\n\
         \x20   s.sendall(pattern[off:off + chunk])\n    sent += chunk\n    time.sleep(0.02)\n\
         s.shutdown(socket.SHUT_WR)\ns.recv(1)\nprint(sent, flush=True)\n",
        stop = stop.display().to_string()
    );
    let kernel_before = snmp(&v.ns);
    let mut senders: Vec<std::process::Child> = [&udp_source, &tcp_source]
        .iter()
        .map(|script| {
            v.ns.command(PYTHON)
                .args(["-c", script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Both streams flow before the first reload.
    let tx = |router: &TestRouter| router.metric("vassal_tx_packets_total", "project=\"alice\"");
    assert!(
        wait_until(Duration::from_secs(5), || tx(&router) > 2000.0),
        "the streams do not flow: {}",
        router.log_text()
    );

    let pid = nix::unistd::Pid::from_raw(router.child.as_ref().unwrap().pid() as i32);
    let (mut done, mut refused) = (counter(&router, "vassal_rules_reloads_total"), 0.0);
    let started = Instant::now();
    for (i, step) in steps.iter().enumerate() {
        match &step.file {
            Some(text) => std::fs::write(&router.rules_path, text).unwrap(),
            None => std::fs::remove_file(&router.rules_path).unwrap(),
        }
        if step.by_sighup {
            nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
            let want = (
                done + step.valid.is_some() as u8 as f64,
                refused + step.valid.is_none() as u8 as f64,
            );
            assert!(
                wait_until(Duration::from_secs(5), || (
                    counter(&router, "vassal_rules_reloads_total"),
                    counter(&router, "vassal_rules_reload_failures_total")
                ) == want),
                "reload {i} by SIGHUP not counted as expected {want:?}:\n{}",
                router.log_text()
            );
        } else {
            let out = router.cli(&["reload", "--socket", &socket]);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            match step.valid {
                Some((o, n)) => {
                    assert!(out.status.success(), "reload {i}: {stderr}");
                    assert_eq!(
                        stdout.trim(),
                        format!("reloaded: {o} out rules, {n} in rules")
                    );
                }
                None => {
                    assert!(
                        !out.status.success(),
                        "reload {i} of an invalid file: {stdout}"
                    );
                    assert!(stderr.contains(step.refusal), "reload {i}: {stderr}");
                }
            }
        }
        match step.valid {
            Some(_) => done += 1.0,
            None => refused += 1.0,
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let storm = started.elapsed();
    assert_eq!(counter(&router, "vassal_rules_reloads_total"), done);
    assert_eq!(
        counter(&router, "vassal_rules_reload_failures_total"),
        refused
    );
    // The reloads happened under load: both senders were still sending.
    for s in &mut senders {
        assert!(s.try_wait().unwrap().is_none(), "a sender ended early");
    }
    let tx_during = tx(&router);

    std::fs::write(&stop, "").unwrap();
    let sent: Vec<u64> = senders
        .into_iter()
        .map(|s| {
            let out = s.wait_with_output().unwrap();
            assert!(out.status.success(), "a sender failed: {out:?}");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    for mut sink in sinks {
        assert!(
            wait_until(Duration::from_secs(10), || sink
                .0
                .try_wait()
                .unwrap()
                .is_some()),
            "a sink did not finish"
        );
    }
    let udp = std::fs::read_to_string(&udp_log).unwrap();
    let tcp = std::fs::read_to_string(&tcp_log).unwrap();
    eprintln!(
        "{} reloads in {storm:?} during {} datagrams and {} TCP bytes; {tx_during} packets by then",
        steps.len(),
        sent[0],
        sent[1]
    );
    assert_eq!(
        udp.lines().nth(1),
        Some(format!("{} {} []", sent[0], sent[0]).as_str()),
        "allowed datagrams lost during the reloads (received, top, first missing)"
    );
    assert_eq!(
        tcp.lines().nth(1),
        Some(format!("{} True", sent[1]).as_str()),
        "the TCP stream was cut or corrupted"
    );
    let s = router.stats_of("alice");
    assert!(
        s["dropped"].as_object().unwrap().values().all(|n| n == 0),
        "the router dropped some of alice's packets: {s}"
    );
    // Every packet the vassal's kernel sent was forwarded (a TCP
    // super-packet counts as its segments on both sides; the kernel counts
    // retransmitted segments apart from OutSegs), and every one sent to it
    // (the TCP acknowledgements) delivered.
    let kernel = snmp(&v.ns);
    let sent_by = |k: &str| kernel[k] - kernel_before[k];
    let (retransmitted, duplicates) = (
        sent_by("Tcp.RetransSegs"),
        sent_by("TcpExt.TCPDSACKRecvSegs"),
    );
    assert_eq!(
        (
            s["tx_packets"].as_u64().unwrap(),
            s["rx_packets"].as_u64().unwrap()
        ),
        (
            sent_by("Tcp.OutSegs") + retransmitted + sent_by("Udp.OutDatagrams"),
            sent_by("Tcp.InSegs")
        ),
        "the router's counts (left) differ from what the vassal's kernel sent and received \
         (right): {s}"
    );
    // No TCP segment was lost: a retransmission the receiver reports as a
    // duplicate (DSACK) is a tail-loss probe fired while the machine was
    // busy, not a loss.
    assert_eq!(
        retransmitted.saturating_sub(duplicates),
        0,
        "TCP segments were lost and retransmitted during the reloads ({retransmitted} \
         retransmitted, {duplicates} reported duplicate)"
    );
    eprintln!(
        "{} packets forwarded, {} delivered, {retransmitted} spurious TCP retransmissions",
        s["tx_packets"], s["rx_packets"]
    );

    // The last valid file (A) is in force: TCP 7601 passes (B denied it),
    // TCP 7602 does not (B allowed it).
    let _listeners: Vec<KillOnDrop> = [7601, 7602]
        .iter()
        .map(|port| {
            KillOnDrop::spawn(Command::new(PYTHON).args([
                "-c",
                &format!(
                    "import socket, time\nl = socket.socket()\nl.bind(({gw:?}, {port}))\nl.listen(8)\ntime.sleep(60)\n"
                ),
            ]))
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect((router.gateway(), 7602)).is_ok()
    }));
    let connects = |port: u16| {
        v.ns.try_exec(&[
            PYTHON,
            "-c",
            &format!("import socket\nsocket.create_connection(({gw:?}, {port}), timeout=1)\n"),
        ])
    };
    assert!(connects(7601), "A's allow rule is not in force");
    assert_eq!(router.dropped("alice", "firewall"), 0.0);
    assert!(!connects(7602), "A's default deny is not in force");
    assert!(router.dropped("alice", "firewall") >= 1.0);

    // The check can fail: the stream's datagrams are counted as denied as
    // soon as a valid file denies them.
    std::fs::write(
        &router.rules_path,
        "[[out]]\naction = \"deny\"\nproto = \"udp\"\ndst_port = 7400\n",
    )
    .unwrap();
    assert!(router
        .cli(&["reload", "--socket", &socket])
        .status
        .success());
    let denied = router.dropped("alice", "firewall");
    v.ns.exec(&[
        PYTHON,
        "-c",
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             for i in range(5): s.sendto(b'0', ({gw:?}, 7400))\n"
        ),
    ]);
    assert!(wait_until(Duration::from_secs(3), || router
        .dropped("alice", "firewall")
        == denied + 5.0));
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
}

/// Rules for the restart tests: vassals may open anything, nothing may
/// open toward a vassal but bob's in chain admits alice (vassal to
/// vassal): a packet toward alice passes only as a reply of a known flow.
const RESTART_RULES: &str = "[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n\
                             [[in]]\naction = \"allow\"\nproject = \"bob\"\n";

/// A TCP server at `addr:7700`: accepts one connection, prints the
/// client's hello, then pushes `push` once the file `argv[1]` exists.
fn tcp_pusher(addr: &str) -> String {
    format!(
        "import socket, os, sys, time\nl = socket.socket()\nl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(({addr:?}, 7700))\nl.listen(1)\nprint('ready', flush=True)\nc, _ = l.accept()\n\
         print(c.recv(5).decode(), flush=True)\n\
         while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n\
         c.sendall(b'push\\n')\ntime.sleep(30)\n"
    )
}

/// The client of [`tcp_pusher`]: says hello, then only listens (8 s).
fn tcp_listener(addr: &str) -> String {
    format!(
        "import socket, sys\ns = socket.create_connection(({addr:?}, 7700), timeout=5)\n\
         s.sendall(b'hello')\ns.settimeout(8)\n\
         try:\n    print(s.recv(5).decode().strip(), flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\n"
    )
}

/// A UDP server at `addr:7701`: prints the client's hello, then answers
/// `push` once the file `argv[1]` exists.
fn udp_pusher(addr: &str) -> String {
    format!(
        "import socket, os, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(({addr:?}, 7701))\nprint('ready', flush=True)\nd, peer = s.recvfrom(100)\n\
         print(d.decode(), flush=True)\n\
         while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n\
         s.sendto(b'push', peer)\ntime.sleep(30)\n"
    )
}

/// The client of [`udp_pusher`].
fn udp_listener(addr: &str) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(8)\n\
         s.sendto(b'hello', ({addr:?}, 7701))\n\
         try:\n    print(s.recv(5).decode(), flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\n"
    )
}

const ICMP_CSUM: &str = "def csum(b):\n    if len(b) % 2: b += b'\\0'\n    s = sum(int.from_bytes(b[i:i+2], 'big') for i in range(0, len(b), 2))\n    while s >> 16: s = (s & 0xffff) + (s >> 16)\n    return (~s & 0xffff).to_bytes(2, 'big')\n";

/// An ICMP echo "server" whose kernel does not answer (run where
/// `icmp_echo_ignore_all` is set): it prints `hello` when the echo
/// request of identifier 0x4242 arrives and sends the echo reply itself
/// once the file `argv[1]` exists.
fn icmp_pusher() -> String {
    format!(
        "import socket, os, sys, time\n{ICMP_CSUM}s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         print('ready', flush=True)\n\
         while True:\n    d, peer = s.recvfrom(2000)\n    m = d[(d[0] & 15) * 4:]\n    if m[0] == 8 and m[4:6] == b'BB': break\n\
         print('hello', flush=True)\n\
         while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n\
         r = b'\\0\\0\\0\\0' + m[4:]\ns.sendto(r[:2] + csum(r) + r[4:], peer)\ntime.sleep(30)\n"
    )
}

/// The client of [`icmp_pusher`]: one echo request, then waits for its
/// reply (8 s).
fn icmp_listener(addr: &str) -> String {
    format!(
        "import socket, time\n{ICMP_CSUM}s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n\
         q = b'\\x08\\0\\0\\0BB\\0\\x01hello'\ns.sendto(q[:2] + csum(q) + q[4:], ({addr:?}, 0))\n\
         end = time.time() + 8\ngot = 'timeout'\n\
         while time.time() < end:\n    s.settimeout(max(0.01, end - time.time()))\n    try:\n        d = s.recv(2000)\n    except socket.timeout:\n        break\n\
         \x20   m = d[(d[0] & 15) * 4:]\n    if m[0] == 0 and m[4:6] == b'BB':\n        got = 'push'\n        break\n\
         print(got, flush=True)\n"
    )
}

/// A router for the restart tests: [`RESTART_RULES`], NAT through
/// `egress` when given.
fn restart_router(egress: Option<&str>) -> TestRouter {
    TestRouter::start(&RouterSpec {
        rules: Some(RESTART_RULES.into()),
        nat: egress.map(|e| Some(e.to_owned())),
        ..Default::default()
    })
}

/// A connection whose server has had its client's hello and speaks next,
/// when told to.
struct Conversation {
    trigger: PathBuf,
    client: std::process::Child,
    _server: KillOnDrop,
}

impl Conversation {
    /// Runs `server` (a python script taking the trigger path) with
    /// `runner`, then `client` in `client_ns`, and waits for the hello.
    fn start(
        router: &TestRouter,
        mut runner: Command,
        server: &str,
        client_ns: &Netns,
        client: &str,
    ) -> Conversation {
        let trigger = router.dir.join("push");
        let _ = std::fs::remove_file(&trigger);
        let server_log = router.dir.join("server.log");
        let server = KillOnDrop::spawn(
            runner
                .args(["-c", server])
                .arg(&trigger)
                .stdout(std::fs::File::create(&server_log).unwrap()),
        );
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&server_log).is_ok_and(|t| t.starts_with("ready"))
        }));
        let client = client_ns
            .command(PYTHON)
            .args(["-c", client])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || {
                std::fs::read_to_string(&server_log).is_ok_and(|t| t.contains("hello"))
            }),
            "the client's hello never reached the server"
        );
        Conversation {
            trigger,
            client,
            _server: server,
        }
    }

    /// Lets the server speak; what the client got (`push`, or `timeout`
    /// when the router denied it).
    fn push(self) -> String {
        std::fs::write(&self.trigger, "").unwrap();
        let out = self.client.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Starts a [`Conversation`] of `server` (run by `runner`) and `client`
/// (in the first of `vassals`), stops the router with `restart`, starts it
/// again and re-attaches `vassals`, then lets the server speak. Returns
/// what the client got.
fn remote_speaks_after_restart(
    router: &mut TestRouter,
    runner: Command,
    server: &str,
    client: &str,
    vassals: &mut [&mut TestVassal],
    restart: Signal,
) -> String {
    let talk = Conversation::start(router, runner, server, &vassals[0].ns, client);
    let clean = router.stop(restart);
    assert!(restart != Signal::SIGTERM || clean, "{}", router.log_text());
    router.spawn();
    for v in vassals.iter_mut() {
        match v.hello(router) {
            vassal_attach::Response::Accepted { .. } => {}
            other => panic!("re-attach refused: {other:?}"),
        }
    }
    talk.push()
}

/// Asserts that alice's client got the server's push after the restart.
fn assert_pushed(got: &str, router: &TestRouter) {
    assert_eq!(
        got,
        "push",
        "the server's push after the restart never reached the vassal; the router denied \
         {} of its packets\n{}",
        router.dropped("alice", "firewall"),
        router.log_text()
    );
}

/// alice's client (`client`, given the gateway) and a server on the host
/// (`server`, given the gateway) across a `restart`: the router, alice
/// and what her client got.
fn host_speaks_after_restart(
    server: fn(&str) -> String,
    client: fn(&str) -> String,
    restart: Signal,
) -> (TestRouter, TestVassal, String) {
    let mut router = restart_router(None);
    let gw = router.gateway().to_string();
    let mut v = TestVassal::attach(&router, "alice", 2);
    let got = remote_speaks_after_restart(
        &mut router,
        Command::new(PYTHON),
        &server(&gw),
        &client(&gw),
        &mut [&mut v],
        restart,
    );
    (router, v, got)
}

/// alice's client (`client`, given bob's address) and bob's server
/// (`server`, the same), bob `prepared` first, across a SIGKILL: alice
/// opened the flow, bob speaks next through her in chain (default deny).
fn bob_speaks_after_restart(
    server: fn(&str) -> String,
    client: fn(&str) -> String,
    prepare: fn(&TestVassal),
) -> (TestRouter, String) {
    let mut router = restart_router(None);
    let mut alice = TestVassal::attach(&router, "alice", 2);
    let mut bob = TestVassal::attach(&router, "bob", 3);
    prepare(&bob);
    let bob_addr = router.addr(3).to_string();
    let got = remote_speaks_after_restart(
        &mut router,
        bob.ns.command(PYTHON),
        &server(&bob_addr),
        &client(&bob_addr),
        &mut [&mut alice, &mut bob],
        Signal::SIGKILL,
    );
    (router, got)
}

/// Formerly a BUG (found writing issue #6's tests): a TCP connection a
/// vassal opened before the router was SIGKILLed and restarted stalled
/// when the other side spoke next: the restarted router knew no flow, so
/// the server's segment was not a reply and the in chain (default deny)
/// dropped it, charged as `firewall`, until the vassal happened to send.
/// Fixed (issue 12 part 3): the flow table lives on in a memory-mapped
/// file under `state_dir` that the datapath writes as it goes, and a
/// starting router restores it, charged to the same project.
#[test]
fn abuse_router_restart_keeps_connections_where_the_remote_side_speaks_next() {
    let (router, _alice, got) =
        host_speaks_after_restart(tcp_pusher, tcp_listener, Signal::SIGKILL);
    assert_pushed(&got, &router);
    assert!(router.log_text().contains("flows restored"));
    // Charged to the same project: the flow counts for alice.
    assert!(wait_until(Duration::from_secs(3), || router
        .metric("vassal_flows", "project=\"alice\"")
        >= 1.0));
}

/// The same across a clean stop (SIGTERM) and a start of the binary:
/// what an upgrade does.
#[test]
fn abuse_router_clean_stop_and_start_keeps_connections_where_the_remote_side_speaks_next() {
    let (router, _alice, got) =
        host_speaks_after_restart(tcp_pusher, tcp_listener, Signal::SIGTERM);
    assert_pushed(&got, &router);
}

/// A vassal's UDP "connection" to the host survives a SIGKILL: the host's
/// datagram after the restart is a reply.
#[test]
fn abuse_router_restart_keeps_udp_flows_to_the_host() {
    let (router, _alice, got) =
        host_speaks_after_restart(udp_pusher, udp_listener, Signal::SIGKILL);
    assert_pushed(&got, &router);
}

/// Vassal to internet, through NAT: alice's TCP connection to a server
/// beyond the host survives a SIGKILL; the server speaks next.
#[test]
fn abuse_router_restart_keeps_connections_to_the_internet() {
    let internet = Internet::new(&std::env::temp_dir());
    let mut router = restart_router(Some(&internet.veth.host));
    let mut v = TestVassal::attach(&router, "alice", 2);
    let got = remote_speaks_after_restart(
        &mut router,
        internet._ns.command(PYTHON),
        &tcp_pusher("0.0.0.0").replace("7700", "7702"),
        &tcp_listener(&internet.server).replace("7700", "7702"),
        &mut [&mut v],
        Signal::SIGKILL,
    );
    assert_pushed(&got, &router);
}

/// Vassal to vassal: alice's TCP connection to bob survives a SIGKILL;
/// bob speaks next, through alice's in chain (default deny).
#[test]
fn abuse_router_restart_keeps_connections_between_vassals() {
    let (router, got) = bob_speaks_after_restart(tcp_pusher, tcp_listener, |_| {});
    assert_pushed(&got, &router);
}

/// Vassal to vassal, ICMP echo: alice's echo request before a SIGKILL,
/// bob's reply (his kernel's answer turned off, sent by hand) after it.
#[test]
fn abuse_router_restart_keeps_icmp_echo_flows_between_vassals() {
    let (router, got) = bob_speaks_after_restart(
        |_| icmp_pusher(),
        icmp_listener,
        |bob| {
            bob.ns
                .exec(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]);
        },
    );
    assert_pushed(&got, &router);
}

/// A state file planted by another user (here: owned by nobody) is not
/// read: a flow in it is not restored, the server's push is denied.
#[test]
fn abuse_router_restart_does_not_trust_a_state_file_of_another_user() {
    let mut router = restart_router(None);
    let gw = router.gateway().to_string();
    let mut v = TestVassal::attach(&router, "alice", 2);
    let talk = Conversation::start(
        &router,
        Command::new(PYTHON),
        &tcp_pusher(&gw),
        &v.ns,
        &tcp_listener(&gw),
    );
    router.stop(Signal::SIGKILL);
    // The file another user could have written: same bytes, their owner.
    std::os::unix::fs::chown(router.state_file(), Some(65534), Some(65534)).unwrap();
    router.spawn();
    assert!(matches!(
        v.hello(&router),
        vassal_attach::Response::Accepted { .. }
    ));
    assert_eq!(talk.push(), "timeout");
    let log = router.log_text();
    assert!(log.contains("not trusted"), "{log}");
    assert_eq!(
        router.metric("vassal_flows_restored_total", "outcome=\"loaded\""),
        0.0
    );
    assert!(router.dropped("alice", "firewall") >= 1.0);
    // The router replaced it with its own.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(router.state_file()).unwrap().uid(), 0);
}

/// The restored counts of this start (`vassal_flows_restored_total`).
fn restored(router: &TestRouter) -> [f64; 4] {
    ["loaded", "invalid", "expired", "over_bound"]
        .map(|o| router.metric("vassal_flows_restored_total", &format!("outcome=\"{o}\"")))
}

/// A corrupted state file never keeps the router from starting, and only
/// its valid entries are restored (counted in a log line and a metric):
/// random bytes, a file shorter than its header, one of the wrong size
/// (its last slot cut), torn slots, entries outside the vassal subnet, of
/// a static project that owns neither endpoint, expired, and more than
/// `flows.max_per_project`. The valid entries work: a flow host -> alice
/// restored from the file lets the host's datagram through.
#[test]
fn abuse_router_restart_reads_a_corrupted_state_file_entry_by_entry() {
    use vassal_router::wire::flow_file::{self, Entry, Header, Name, HEADER, SLOT};
    let mut router = TestRouter::start(&RouterSpec {
        rules: Some(RESTART_RULES.into()),
        extra: "[flows]\nmax_per_project = 3\n".into(),
        ..Default::default()
    });
    // A static project at .60 (its address known only now).
    router.stop(Signal::SIGKILL);
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config.push_str(&format!(
        "[[project]]\nname = \"fixed\"\naddress = \"{}\"\n",
        router.addr(60)
    ));
    std::fs::write(&router.config_path, config).unwrap();
    let write = |router: &TestRouter, bytes: &[u8]| {
        std::fs::write(router.state_file(), bytes).unwrap();
        std::fs::set_permissions(
            router.state_file(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    };
    // Random bytes, then a file shorter than a header: started, nothing.
    let mut noise = vec![0u8; 64 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for bytes in [&noise[..], &noise[..10], &[][..]] {
        write(&router, bytes);
        router.spawn();
        assert_eq!(restored(&router)[0], 0.0);
        router.stop(Signal::SIGKILL);
    }
    // A file of crafted entries.
    let boot_id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap();
    let mut header = Header {
        slots: 0,
        boot_id: [0; flow_file::BOOT_ID],
    };
    header
        .boot_id
        .copy_from_slice(&boot_id[..flow_file::BOOT_ID]);
    let now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write to.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u32
    };
    let gw: std::net::IpAddr = router.gateway().into();
    let alice: std::net::IpAddr = router.addr(2).into();
    let udp = |port: u16, project: &str| Entry {
        proto: 17,
        a: gw,
        b: alice,
        a_port: 53,
        b_port: port,
        opener_is_a: false,
        tcp_closing: false,
        last_seen: now,
        project: Name::new(project).unwrap(),
    };
    let mut entries = vec![udp(4000, "alice"), udp(4001, "alice")];
    let mut outside = udp(4002, "alice");
    outside.b = "10.99.99.2".parse().unwrap();
    entries.push(outside);
    entries.push(udp(4003, "fixed"));
    let mut expired = udp(4004, "alice");
    expired.last_seen = now - 3600;
    entries.push(expired);
    for port in 5000..5004 {
        entries.push(udp(port, "bob"));
    }
    let mut file = vec![0u8; HEADER + (entries.len() + 2) * SLOT];
    for (i, e) in entries.iter().enumerate() {
        let mut slot = [0u8; SLOT];
        flow_file::encode_slot(e, &mut slot);
        file[HEADER + i * SLOT..HEADER + (i + 1) * SLOT].copy_from_slice(&slot);
    }
    // A torn slot (checksum off) and a last slot cut in the middle.
    let torn = HEADER + entries.len() * SLOT;
    file.copy_within(HEADER..HEADER + SLOT, torn);
    file[torn + 20] ^= 0xff;
    let cut = torn + SLOT;
    file.copy_within(HEADER..HEADER + SLOT, cut);
    file.truncate(cut + SLOT / 2);
    header.slots = (entries.len() + 2) as u32;
    let mut head = [0u8; HEADER];
    flow_file::encode_header(&header, &mut head);
    file[..HEADER].copy_from_slice(&head);
    write(&router, &file);
    router.spawn();
    // loaded: alice's two and bob's three; invalid: outside, fixed, torn;
    // expired: one; over the bound: bob's fourth.
    assert_eq!(
        restored(&router),
        [5.0, 3.0, 1.0, 1.0],
        "{}",
        router.log_text()
    );
    assert!(router
        .log_text()
        .contains("loaded=5 invalid=3 expired=1 over_bound=1"));
    // The restored flow works: the host's datagram from the gateway's
    // port 53 reaches alice's port 4000 through her in chain (deny).
    let v = TestVassal::attach(&router, "alice", 2);
    let mut listener =
        v.ns.command(PYTHON)
            .args([
                "-c",
                "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('0.0.0.0', 4000))\nprint('ready', flush=True)\ns.settimeout(8)\n\
                 try:\n    print(s.recv(10).decode(), flush=True)\nexcept socket.timeout:\n    print('timeout', flush=True)\n",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdout = listener.stdout.take().unwrap();
    let mut line = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut line).unwrap();
    let send = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(({gw:?}, 53))\n\
         s.sendto(b'restored', ({alice:?}, 4000))\n",
        gw = gw.to_string(),
        alice = alice.to_string()
    );
    assert!(Command::new(PYTHON)
        .args(["-c", &send])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    listener.wait().unwrap();
    assert_eq!(rest.trim(), "restored", "{}", router.log_text());
}

/// BUG (found writing issue #6's tests): a router SIGKILLed with NAT on and
/// restarted with `nat.masquerade = false` (the operator turned NAT off)
/// keeps the dead process's `inet vassal_<device>` table: it installs and
/// replaces the table only when NAT is on, and removes only a table it
/// installed itself, so the masquerade of the vassal subnet stays in the
/// kernel for as long as the host runs, through clean stops too. Fixed: a
/// start without NAT replaces the stale table of its device with one
/// without masquerade (the table now always exists: it guards the host).
#[test]
fn abuse_router_restart_without_nat_removes_the_stale_table() {
    let mut router = TestRouter::start(&RouterSpec {
        nat: Some(None),
        ..Default::default()
    });
    assert_eq!(tables_of(&router).len(), 1);
    router.stop(Signal::SIGKILL);
    let config = std::fs::read_to_string(&router.config_path).unwrap();
    std::fs::write(
        &router.config_path,
        config.replace("masquerade = true", "masquerade = false"),
    )
    .unwrap();
    router.spawn();
    // The table stays (it also guards the host), replaced by one without
    // masquerade.
    let during = tables_of(&router);
    let masquerade = nat_table(&router).is_some_and(|t| t.iter().any(|l| l.contains("masquerade")));
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
    let after = tables_of(&router);
    assert_eq!(
        (during.len(), masquerade, after),
        (1, false, vec![]),
        "the dead router's masquerade outlived a restart without NAT (while running), or its \
         table a clean stop"
    );
}

/// A crash loop: the router SIGKILLed six times in a row, half of the
/// restarts killed again as soon as they are ready (before the vassals are
/// back), the others once every vassal has re-attached. In the end every
/// vassal is attached once, the same processes as before, reaches the
/// internet through NAT, and there is exactly one NAT table with exactly
/// the expected rules.
#[test]
fn abuse_router_crash_loop_leaves_one_table_and_every_vassal_attached() {
    const VASSALS: u8 = 4;
    let internet = Internet::new(&std::env::temp_dir());
    let mut router = TestRouter::start(&RouterSpec {
        nat: Some(Some(internet.veth.host.clone())),
        ..Default::default()
    });
    let names: Vec<String> = (0..VASSALS).map(|i| name(&format!("rc{i}"))).collect();
    let _vassals: Vec<Launched> = names
        .iter()
        .zip(20..)
        .map(|(n, host)| {
            let mut args = network_run_args(n, &router.socket, router.addr(host));
            args.extend(["--".into(), "/bin/sleep".into(), "600".into()]);
            Launched::spawn(n, &args, router.dir.join(format!("{n}.stderr")))
        })
        .collect();
    let all_attached = |router: &TestRouter| {
        let s = stats(router);
        s.len() == names.len()
            && names
                .iter()
                .all(|n| s.get(n).is_some_and(|p| p["attached"] == true))
    };
    assert!(wait_until(Duration::from_secs(20), || all_attached(
        &router
    )));
    let pids: Vec<u32> = names.iter().map(|n| supervisor_pid(n).unwrap()).collect();
    let expected = expected_nat_table(&router, &internet.veth.host);

    for round in 0..6 {
        router.stop(Signal::SIGKILL);
        router.spawn();
        if round % 2 == 1 {
            assert!(
                wait_until(Duration::from_secs(15), || all_attached(&router)),
                "round {round}: not every vassal re-attached: {:?}",
                stats(&router)
            );
        }
        assert_eq!(
            nat_table(&router).as_ref(),
            Some(&expected),
            "round {round}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || all_attached(&router)),
        "not every vassal re-attached after the crash loop: {:?}\n{}",
        stats(&router),
        router.log_text()
    );
    for (n, pid) in names.iter().zip(&pids) {
        assert_eq!(supervisor_pid(n), Some(*pid), "{n} restarted");
        if let Err(e) = echo_from(*pid, &internet.server, 8080, 50_000, 3.0) {
            panic!("{n} cannot reach the internet after the crash loop: {e}");
        }
    }
    let peers = peers_since(&internet.log, 0);
    assert_eq!(peers.len(), VASSALS as usize, "{peers:?}");
    assert!(peers.iter().all(|p| *p == internet.host_addr), "{peers:?}");
    assert_only_table(&router, &expected);
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
    assert_eq!(tables_of(&router), Vec::<String>::new());
}
