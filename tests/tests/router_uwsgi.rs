//! uWSGI tuntap compatibility: a real uWSGI vassal (Debian's uwsgi-core
//! with its tuntap plugin) exchanging traffic through the compat socket,
//! identity from SO_PEERCRED or uWSGI's credentials message, and bad peers
//! disconnected without harming the router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_tests::router_harness::{
    as_uid, echo_server_cmd, RouterSpec, TestRouter, COMPAT_PY, PYTHON,
};
use vassal_tests::{wait_until, KillOnDrop};

const RULES: &str = r#"
[default]
out = "allow"
in = "deny"

[[in]]
action = "allow"
project = "legacy"
proto = "tcp"
dst_port = "7000"

[[in]]
action = "allow"
project = "forged"
proto = "udp"
"#;

fn start() -> TestRouter {
    // Project table filled in after start (the subnet is allocated then).
    let mut router = TestRouter::start(&RouterSpec {
        rules: Some(RULES.into()),
        compat: true,
        ..Default::default()
    });
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config.push_str(&format!(
        "\n[[project]]\nname = \"legacy\"\naddress = \"{}\"\nuid = 0\n\n[[project]]\nname = \"forged\"\naddress = \"{}\"\nuid = 4243\n",
        router.addr(20),
        router.addr(21)
    ));
    std::fs::write(&router.config_path, config).unwrap();
    router.stop(nix::sys::signal::Signal::SIGTERM);
    router.spawn();
    assert!(router.compat_socket.exists());
    router
}

/// Starts a uWSGI vassal attached through the compat socket: a master and
/// two workers in their own network namespace, the way a uWSGI Emperor
/// vassal runs. uWSGI jails itself twice (a fresh namespace, device and
/// relay connection each time), so the router sees several connections of
/// the same uid: the newest takes the address, the older ones stay open.
fn uwsgi_vassal(router: &TestRouter) -> GroupKill {
    let ini = router.dir.join("vassal.ini");
    std::fs::write(
        &ini,
        format!(
            "[uwsgi]\nmaster = true\nprocesses = 2\nunshare = net\nsocket = {app}\n\
             tuntap-device = uwsgi0 {sock}\n\
             exec-as-root = sysctl -qw net.ipv6.conf.all.disable_ipv6=1\n\
             exec-as-root = ip link set lo up\n\
             exec-as-root = ip addr add {addr}/24 dev uwsgi0\n\
             exec-as-root = ip link set uwsgi0 up\n\
             exec-as-root = ip route add default dev uwsgi0\n",
            app = router.dir.join("app.sock").display(),
            sock = router.compat_socket.display(),
            addr = router.addr(20),
        ),
    )
    .unwrap();
    let log_path = router.dir.join("uwsgi.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Its own process group, killed whole on drop (workers, exec-as-root
    // children).
    let child = GroupKill(KillOnDrop::spawn(
        Command::new("uwsgi")
            .args(["--plugin", "tuntap", "--ini"])
            .arg(&ini)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log),
    ));
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &log_path
        )
        .is_ok_and(|l| l.contains("spawned uWSGI worker 2"))),
        "uwsgi did not start: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    child
}

/// A process group leader whose whole group is killed on drop.
struct GroupKill(KillOnDrop);

impl GroupKill {
    fn pid(&self) -> u32 {
        self.0.pid()
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn in_vassal(pid: u32, argv: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid.to_string(), "-n", "--"]).args(argv);
    cmd
}

#[test]
fn router_real_uwsgi_vassal_exchanges_traffic_through_the_compat_socket() {
    let router = start();
    let uwsgi = uwsgi_vassal(&router);
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_attached", "project=\"legacy\"")
        == 1.0));
    let gw = router.gateway().to_string();

    // Vassal -> host and back (replies are established flows).
    let ok = in_vassal(
        uwsgi.pid(),
        &[
            "ping", "-n", "-q", "-c", "3", "-s", "100", "-i", "0.2", "-W", "1", &gw,
        ],
    )
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(ok.success(), "{}", router.log_text());
    assert_eq!(
        router.metric("vassal_tx_bytes_total", "project=\"legacy\""),
        384.0
    );
    assert_eq!(
        router.metric("vassal_rx_bytes_total", "project=\"legacy\""),
        384.0
    );

    // Host -> vassal TCP on the allowed port, a large transfer (many frames,
    // partial writes on the stream).
    let log = router.dir.join("echo.log");
    let _server = KillOnDrop::spawn(&mut in_vassal(
        uwsgi.pid(),
        &[PYTHON, "-c", &echo_server_cmd("0.0.0.0", 7000, &log)],
    ));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready"))
    }));
    let mut stream = std::net::TcpStream::connect((router.addr(20), 7000)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut s = stream.try_clone().unwrap();
        let d = data.clone();
        std::thread::spawn(move || s.write_all(&d).unwrap())
    };
    let mut got = vec![0u8; data.len()];
    stream.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "echoed bytes differ");

    // Spoofed source from the uWSGI vassal: dropped and counted.
    let forged = router.addr(99).to_string();
    assert!(in_vassal(
        uwsgi.pid(),
        &[
            "ip",
            "addr",
            "add",
            &format!("{forged}/32"),
            "dev",
            "uwsgi0"
        ]
    )
    .status()
    .unwrap()
    .success());
    let _ = in_vassal(
        uwsgi.pid(),
        &[
            "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", &forged, &gw,
        ],
    )
    .stdout(Stdio::null())
    .status();
    assert_eq!(router.dropped("legacy", "spoofed"), 2.0);

    // The stats command shows the compat project.
    let out = router.cli(&["stats", "--socket", router.socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("legacy"));
    // The uWSGI master and its workers are alive: no relay was cut.
    let mut uwsgi = uwsgi;
    assert!(uwsgi.0 .0.try_wait().unwrap().is_none(), "uWSGI exited");
}

/// Issue 11, item 8: root connections that prove nothing (silent, closed
/// at once, garbage, a wrong credentials message, an oversized frame)
/// arrive while a real uWSGI vassal of the `uid = 0` project "legacy" is
/// attached: none of them takes its address, so it keeps its network.
#[test]
fn router_a_root_connection_never_displaces_an_attached_uid0_peer() {
    let router = start();
    let uwsgi = uwsgi_vassal(&router);
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_attached", "project=\"legacy\"")
        == 1.0));
    let gw = router.gateway().to_string();
    let ping = || {
        in_vassal(
            uwsgi.pid(),
            &["ping", "-n", "-q", "-c", "1", "-W", "2", &gw],
        )
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    };
    assert!(
        wait_until(Duration::from_secs(10), ping),
        "{}",
        router.log_text()
    );
    // The router's verdict on a new root connection: held back (or, before
    // the fix, put in the attached peer's place).
    let handled = || {
        let log = router.log_text();
        log.matches("is held by another compat peer").count()
            + log.matches("replaces the older one").count()
    };
    let garbage: [&[u8]; 5] = [
        b"",
        &[9, 9, 9, 9],
        b"uwsgi-tuntaX",
        &[0, 0xff, 0xff, 0],
        &[0, 3, 0],
    ];
    let mut silent = Vec::new();
    for bytes in garbage {
        let before = handled();
        let mut s = UnixStream::connect(&router.compat_socket).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || handled() > before),
            "{}",
            router.log_text()
        );
        s.write_all(bytes).unwrap();
        if bytes.is_empty() || bytes.len() == 3 {
            // Silent, or a frame cut short: kept open, it proves nothing.
            silent.push(s);
        } else {
            // Bad bytes: the router disconnects it.
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 16];
            assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
        }
        assert!(ping(), "after {bytes:?}: {}", router.log_text());
    }
    // Closing the silent ones changes nothing either.
    drop(silent);
    assert!(ping(), "{}", router.log_text());
    assert_eq!(router.metric("vassal_attached", "project=\"legacy\""), 1.0);
    let mut uwsgi = uwsgi;
    assert!(uwsgi.0 .0.try_wait().unwrap().is_none(), "uWSGI exited");
}

/// A held connection (a newer root connection of the uid-0 project while
/// an older one holds the address) takes the address, without proving
/// anything, once the holder disconnects: a relay restarting after its old
/// process died gets its network back.
#[test]
fn router_a_held_compat_connection_attaches_when_the_holder_leaves() {
    let router = start();
    let attached = || router.log_text().matches("compat peer attached").count();
    let holder = UnixStream::connect(&router.compat_socket).unwrap();
    assert!(wait_until(Duration::from_secs(5), || attached() == 1));
    let script = format!(
        r#"{COMPAT_PY}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect({sock:?})
print("connected", flush=True)
for p in packets(s):
    if p[0] >> 4 == 4 and p[9] == 6 and struct.unpack("!H", p[22:24])[0] == 7000:
        sys.exit(0)
"#,
        sock = router.compat_socket.display().to_string()
    );
    let mut newer = KillOnDrop::spawn(
        Command::new(PYTHON)
            .args(["-c", &script])
            .stdout(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(newer.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || router
        .log_text()
        .contains("is held by another compat peer")));
    assert_eq!(
        attached(),
        1,
        "the silent newer connection took the address"
    );
    drop(holder);
    assert!(
        wait_until(Duration::from_secs(5), || attached() == 2),
        "{}",
        router.log_text()
    );
    // A SYN from the host to the project's port 7000 reaches the newer one.
    let dst = std::net::SocketAddr::from((router.addr(20), 7000));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let _ = std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(200));
            newer.0.try_wait().unwrap().is_some()
        }),
        "{}",
        router.log_text()
    );
    assert!(newer.0.wait().unwrap().success());
}

/// Opens `n` compat connections as `uid` (python under setpriv), prints
/// `opened`, then for each line it reads prints one letter per connection:
/// `o` open, `c` closed by the router.
fn hold_connections(
    router: &TestRouter,
    uid: u32,
    n: usize,
) -> (
    KillOnDrop,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let script = format!(
        r#"
import socket, sys
conns = []
for _ in range({n}):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect({sock:?}); conns.append(s)
print("opened", flush=True)
for _ in sys.stdin:
    out = ""
    for s in conns:
        try:
            out += "c" if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"" else "o"
        except BlockingIOError:
            out += "o"
        except ConnectionResetError:
            out += "c"
    print(out, flush=True)
"#,
        sock = router.compat_socket.display().to_string()
    );
    let mut child = KillOnDrop::spawn(
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                PYTHON,
                "-c",
                &script,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let stdin = child.0.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "opened");
    (child, stdin, stdout)
}

fn states(
    held: &mut (
        KillOnDrop,
        std::process::ChildStdin,
        std::io::BufReader<std::process::ChildStdout>,
    ),
) -> String {
    held.1.write_all(b"?\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut held.2, &mut line).unwrap();
    line.trim().to_owned()
}

/// State exhaustion: compat connections are bounded per peer uid and in
/// all. A tenant uid ("forged", 4243) opens 6 connections against a bound
/// of 4 per uid: the last 2 are closed at once; root then opens 3 against
/// a total bound of 6: the last one is closed; when the tenant's go, root
/// gets places again.
#[test]
fn router_compat_connections_are_bounded_per_uid_and_in_all() {
    let mut router = start();
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config.push_str("\n[limits]\nmax_compat_connections = 6\nmax_compat_connections_per_uid = 4\n");
    std::fs::write(&router.config_path, config).unwrap();
    router.stop(nix::sys::signal::Signal::SIGTERM);
    router.spawn();
    std::fs::set_permissions(
        &router.compat_socket,
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let refused = || {
        router.metric(
            "vassal_attach_refusals_total",
            "reason=\"too_many_connections\"",
        )
    };

    let mut tenant = hold_connections(&router, 4243, 6);
    assert!(
        wait_until(Duration::from_secs(5), || refused() == 2.0),
        "refusals: {}\n{}",
        refused(),
        router.log_text()
    );
    assert_eq!(states(&mut tenant), "oooocc");
    let mut root = hold_connections(&router, 0, 3);
    assert!(wait_until(Duration::from_secs(5), || refused() == 3.0));
    assert_eq!(states(&mut root), "ooc");
    assert_eq!(states(&mut tenant), "oooocc");
    assert_eq!(router.metric("vassal_compat_connections", ""), 6.0);
    // The tenant's places are given back when its connections close.
    drop(tenant);
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_compat_connections", "")
        == 2.0));
    let mut again = hold_connections(&router, 0, 2);
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_compat_connections", "")
        == 4.0));
    assert_eq!(states(&mut again), "oo");
    assert_eq!(refused(), 3.0);
}

#[test]
fn router_credentials_message_identifies_the_peer_and_bad_peers_are_disconnected() {
    let router = start();
    std::fs::set_permissions(
        &router.compat_socket,
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();

    // Root may send credentials naming another uid (as uWSGI does once it
    // has dropped privileges): uid 4243 is project "forged" at .21. Then an
    // ICMP echo to the gateway in a frame; the reply must come back framed.
    let script = format!(
        r#"{COMPAT_PY}
import os
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock:?}); s.settimeout(5)
s.sendmsg([b"uwsgi-tuntap"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", os.getpid(), 4243, 4243))])
src = socket.inet_aton({src:?}); dst = socket.inet_aton({dst:?})
icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"x" * 32
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
s.sendall(frame(ipv4(1, src, dst, icmp)))
for p in packets(s):
    if p[9] == 1 and p[20] == 0 and p[12:16] == dst and p[16:20] == src:
        sys.exit(0)
"#,
        sock = router.compat_socket.display().to_string(),
        src = router.addr(21).to_string(),
        dst = router.gateway().to_string(),
    );
    let ok = Command::new(PYTHON).args(["-c", &script]).status().unwrap();
    assert!(ok.success(), "{}", router.log_text());
    assert_eq!(
        router.metric("vassal_rx_packets_total", "project=\"forged\""),
        1.0
    );

    // Peers the router must disconnect: unknown uid, a bad header, a frame
    // longer than the MTU, a truncated frame followed by silence is kept
    // (it may complete) but the others are cut.
    let sock = router.compat_socket.clone();
    let closed_after = move |bytes: &'static [u8]| {
        let sock = sock.clone();
        move || {
            let Ok(mut s) = UnixStream::connect(&sock) else {
                return 10;
            };
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            let _ = s.write_all(bytes);
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                _ => 12,
            }
        }
    };
    // uid 65534 has no [[project]] entry (and sends no credentials).
    assert_eq!(as_uid(65534, closed_after(b"")), 0);
    // uid 4243 is "forged": a header with modifier1 != 0.
    assert_eq!(as_uid(4243, closed_after(&[7, 4, 0, 0, 1, 2, 3, 4])), 0);
    // A length above the MTU (1500): 0xffff.
    assert_eq!(as_uid(4243, closed_after(&[0, 0xff, 0xff, 0])), 0);
    // A rule block (modifier2 = 1) is skipped and counted, the peer stays:
    // then a bad header closes it.
    assert_eq!(
        as_uid(
            4243,
            closed_after(&[0, 3, 0, 1, b'a', b'b', b'c', 9, 9, 9, 9])
        ),
        0
    );
    assert_eq!(
        router.metric("vassal_compat_rule_blocks_total", "project=\"forged\""),
        1.0
    );
    // The router is still serving.
    assert!(std::net::TcpStream::connect(&router.metrics).is_ok());
    assert!(router.child.is_some());
}

#[test]
fn router_a_compat_peer_that_never_reads_costs_a_bounded_queue() {
    let router = start();
    // A peer identified by credentials (uid 4243, "forged"), that never reads.
    let script = format!(
        r#"
import socket, struct, os, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock:?})
s.sendmsg([b"uwsgi-tuntap"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", os.getpid(), 4243, 4243))])
print("attached", flush=True)
time.sleep(60)
"#,
        sock = router.compat_socket.display().to_string()
    );
    let _peer = KillOnDrop::spawn(
        Command::new(PYTHON)
            .args(["-c", &script])
            .stdout(Stdio::null()),
    );
    assert!(wait_until(Duration::from_secs(5), || router
        .metric("vassal_attached", "project=\"forged\"")
        == 1.0));
    // 4 MB toward it from the host: more than the socket buffer and the
    // router's bounded queue together.
    let flood = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let payload = [7u8; 1000];
    for _ in 0..4000 {
        let _ = flood.send_to(&payload, (router.addr(21), 5000));
    }
    assert!(wait_until(Duration::from_secs(5), || router
        .dropped("forged", "queue_full")
        > 0.0));
    let delivered = router.metric("vassal_rx_bytes_total", "project=\"forged\"");
    assert!(
        delivered > 0.0 && delivered < 4000.0 * 1028.0,
        "{delivered}"
    );
    // The router is unharmed and still switches other traffic.
    let uwsgi = uwsgi_vassal(&router);
    let ok = in_vassal(
        uwsgi.pid(),
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "2",
            &router.gateway().to_string(),
        ],
    )
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(ok.success());
}
