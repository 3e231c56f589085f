//! A real `vassal-router` for integration tests, and test vassals: network
//! namespaces whose tun device is attached to it with the attach protocol.
//!
//! Each router gets a unique device, /24 subnet (and IPv6 /64), control
//! socket and metrics port, so tests run in parallel.

use crate::{binary, ip, run, try_run, unique, wait_until, KillOnDrop, Netns, Veth};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use vassal_attach::{transport, Hello, RateLimit, Request, Response, PROTOCOL_VERSION};

/// The python3 the tests run inside namespaces (the system one).
pub const PYTHON: &str = "/usr/bin/python3";

/// Python for tests that speak uWSGI's tuntap framing to the compat
/// socket themselves (prepend it to a script): `csum`, `ipv4` (a packet
/// with its header checksum), `frame` (a packet in a uWSGI frame) and
/// `packets` (every packet framed to a socket; exit 3 when it closes).
pub const COMPAT_PY: &str = r#"
import socket, struct, sys, time
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b)//2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return (~t) & 0xffff
def ipv4(proto, src, dst, payload, flags=0):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, flags, 64, proto, 0, src, dst)
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + payload
def frame(pkt):
    return bytes([0]) + struct.pack("<H", len(pkt)) + bytes([0]) + pkt
def packets(s):
    buf = b""
    while True:
        d = s.recv(65536)
        if not d: sys.exit(3)
        buf += d
        while len(buf) >= 4:
            n = struct.unpack("<H", buf[1:3])[0]
            if len(buf) < 4 + n: break
            p = buf[4:4+n]; buf = buf[4+n:]
            yield p
"#;

/// How a test wants its router.
#[derive(Default, Clone)]
pub struct RouterSpec {
    /// Rule file text; `None` = the embedded default rules.
    pub rules: Option<String>,
    /// Install NAT (`nat.masquerade`), with this egress interface when set.
    pub nat: Option<Option<String>>,
    /// Give the router an IPv6 subnet.
    pub ipv6: bool,
    /// Enable the uWSGI compat socket.
    pub compat: bool,
    /// Extra TOML appended verbatim (tables like `[[project]]`, `[flows]`).
    pub extra: String,
    /// Top-level keys (before any table), e.g. `launcher_uids = [4242]`.
    pub top: String,
}

/// A running router, killed on drop.
pub struct TestRouter {
    /// Its working directory (config, rules, sockets).
    pub dir: PathBuf,
    /// Host tun device name.
    pub device: String,
    /// Third octet of the vassal subnet `10.<b>.<c>.0/24`.
    pub net: (u8, u8),
    /// Control socket path.
    pub socket: PathBuf,
    /// Compat socket path (when enabled).
    pub compat_socket: PathBuf,
    /// `127.0.0.1:<port>` of /metrics: the router binds port 0 and the
    /// harness reads the port the kernel gave it (no free port guessed
    /// beforehand, which another process could take first); set again at
    /// every (re)start.
    pub metrics: String,
    /// The rule file path (written even for the defaults, for reloads).
    pub rules_path: PathBuf,
    /// Config file path.
    pub config_path: PathBuf,
    /// The process; `None` once stopped.
    pub child: Option<KillOnDrop>,
    /// Its stderr log file.
    pub log: PathBuf,
}

fn next_subnet() -> (u8, u8) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 10.150-199.x.0/24 (clear of the default 10.200.0.0/16): the pid
    // spreads concurrent test processes apart.
    let b = 150 + (std::process::id() % 50) as u8;
    (b, (n % 250) as u8 + 1)
}

impl TestRouter {
    /// A router on the defaults with the rule file `rules`.
    pub fn with_rules(rules: &str) -> TestRouter {
        TestRouter::start(&RouterSpec {
            rules: Some(rules.into()),
            ..Default::default()
        })
    }

    /// Writes a config for `spec` and starts the router; waits until ready.
    pub fn start(spec: &RouterSpec) -> TestRouter {
        crate::require_root();
        let device = unique("vr");
        let net = next_subnet();
        let dir = std::env::temp_dir().join(format!("vassal-test-{device}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules_path = dir.join("rules.toml");
        let mut config = format!(
            "device = \"{device}\"\ngateway = \"10.{}.{}.1/24\"\ncontrol_socket = \"{}\"\nstate_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n",
            net.0,
            net.1,
            dir.join("run/router.sock").display(),
            dir.join("state").display(),
        );
        if let Some(rules) = &spec.rules {
            std::fs::write(&rules_path, rules).unwrap();
            config.push_str(&format!("rules = \"{}\"\n", rules_path.display()));
        }
        if spec.ipv6 {
            config.push_str(&format!(
                "gateway6 = \"fd00:{:x}:{:x}::1/64\"\n",
                net.0, net.1
            ));
        }
        if spec.compat {
            config.push_str(&format!(
                "compat_socket = \"{}\"\n",
                dir.join("run/tuntap.sock").display()
            ));
        }
        config.push_str(&spec.top);
        config.push('\n');
        match &spec.nat {
            None => config.push_str("[nat]\nmasquerade = false\n"),
            Some(None) => config.push_str("[nat]\nmasquerade = true\n"),
            Some(Some(egress)) => config.push_str(&format!(
                "[nat]\nmasquerade = true\negress_interface = \"{egress}\"\n"
            )),
        }
        config.push_str(&spec.extra);
        let config_path = dir.join("router.toml");
        std::fs::write(&config_path, &config).unwrap();
        let mut router = TestRouter {
            socket: dir.join("run/router.sock"),
            compat_socket: dir.join("run/tuntap.sock"),
            log: dir.join("router.log"),
            dir,
            device,
            net,
            metrics: String::new(),
            rules_path,
            config_path,
            child: None,
        };
        router.spawn();
        router
    }

    /// (Re)starts the process with the same config and waits until ready.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = KillOnDrop::spawn(
            Command::new(binary("vassal-router"))
                .args(["run", "--config"])
                .arg(&self.config_path)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(log),
        );
        let pid = child.pid();
        self.child = Some(child);
        let mut metrics = None;
        let ready = wait_until(Duration::from_secs(10), || {
            // The exporter listens before the control socket does.
            metrics = crate::tcp_listeners(Some(pid))
                .into_iter()
                .find(|a| a.ip() == std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
            // Connect, not just exists: a killed router leaves its socket file.
            metrics.is_some() && transport::connect(&self.socket).is_ok()
        });
        assert!(
            ready,
            "router did not become ready; log:\n{}",
            self.log_text()
        );
        if let Some(addr) = metrics {
            self.metrics = addr.to_string();
        }
    }

    /// The flow state file (`state_dir` is the test's own `state/`).
    pub fn state_file(&self) -> PathBuf {
        self.dir
            .join("state")
            .join(format!("flows-{}", self.device))
    }

    /// The router's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net.0, self.net.1, 1)
    }

    /// Vassal address `.host` of the subnet.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net.0, self.net.1, host)
    }

    /// The IPv6 gateway.
    pub fn gateway6(&self) -> String {
        format!("fd00:{:x}:{:x}::1", self.net.0, self.net.1)
    }

    /// Vassal IPv6 address `::host`.
    pub fn addr6(&self, host: u8) -> String {
        format!("fd00:{:x}:{:x}::{host:x}", self.net.0, self.net.1)
    }

    /// The /metrics text.
    pub fn scrape(&self) -> String {
        crate::scrape(&self.metrics)
    }

    /// A sample's value, 0 when absent.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        crate::metric(&self.scrape(), name, labels).unwrap_or(0.0)
    }

    /// `vassal_dropped_packets_total{project, reason}`.
    pub fn dropped(&self, project: &str, reason: &str) -> f64 {
        self.metric(
            "vassal_dropped_packets_total",
            &format!("project=\"{project}\",reason=\"{reason}\""),
        )
    }

    /// `vassal-router stats --json`: one object a project.
    pub fn stats(&self) -> Vec<serde_json::Value> {
        let socket = self.socket.to_str().expect("a UTF-8 socket path");
        let out = self.cli(&["stats", "--json", "--socket", socket]);
        assert!(out.status.success(), "stats: {out:?}");
        serde_json::from_slice(&out.stdout).expect("stats --json prints a list")
    }

    /// The stats object of `project`.
    pub fn stats_of(&self, project: &str) -> serde_json::Value {
        self.stats()
            .into_iter()
            .find(|p| p["project"] == project)
            .unwrap_or_else(|| panic!("{project} not in stats"))
    }

    /// Runs `vassal-router ARGS` (a CLI subcommand) and returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("vassal-router"))
            .args(args)
            .output()
            .expect("running vassal-router")
    }

    /// Sends `signal` and waits for the process to exit; true if it exited 0.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.pid() as i32), signal).unwrap();
        let status = child.0.wait().unwrap();
        status.success()
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            drop(child);
        }
        // A killed router leaves its nftables table (by design a restart
        // replaces it); remove it so a failed test leaves nothing behind.
        let table = vassal_router::nat::table_name(&self.device);
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .stderr(Stdio::null())
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("router log ({}):\n{}", self.log.display(), self.log_text());
        }
    }
}

/// `struct ifreq` for TUNSETIFF.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a tun device `name` (IFF_TUN|IFF_NO_PI, plus `extra_flags`;
/// IFF_TAP in them makes it a tap instead) inside `ns`, from a short-lived
/// thread that enters the namespace.
pub fn create_tun_in(ns: &Netns, name: &str, extra_flags: i32) -> OwnedFd {
    let path = ns.path();
    let name = name.to_owned();
    std::thread::spawn(move || {
        let nsfd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(nsfd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = IfReq {
            name: [0; 16],
            flags: (if extra_flags & libc::IFF_TAP != 0 {
                libc::IFF_NO_PI | extra_flags
            } else {
                libc::IFF_TUN | libc::IFF_NO_PI | extra_flags
            }) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads/writes one ifreq, which `req` is.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        assert_eq!(
            rc,
            0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        OwnedFd::from(tun)
    })
    .join()
    .expect("tun thread")
}

/// A vassal: its own netns with a tun device `vt0` attached to a router.
pub struct TestVassal {
    /// The namespace.
    pub ns: Netns,
    /// Project name.
    pub project: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
    /// Its IPv6 address, when given.
    pub addr6: Option<String>,
    /// Our copy of the tun fd (as a launcher keeps it).
    pub tun: OwnedFd,
    /// The control connection; dropping it detaches the vassal.
    pub control: Option<OwnedFd>,
    /// The `net_out` limit its hello asks (none by default).
    pub net_out: Option<RateLimit>,
    /// The `net_in` limit its hello asks.
    pub net_in: Option<RateLimit>,
}

impl TestVassal {
    /// Creates the namespace and tun (with a vnet header, as vassal-launch
    /// opens it), configures it, and attaches it; panics unless the router
    /// accepts.
    pub fn attach(router: &TestRouter, project: &str, host: u8) -> TestVassal {
        let v = TestVassal::create(router, project, host, false);
        v.attached(router)
    }

    /// Like [`TestVassal::attach`] with a plain tun, no vnet header (as
    /// other or older launchers open it): no offloads on that side.
    pub fn attach_plain(router: &TestRouter, project: &str, host: u8) -> TestVassal {
        let v = TestVassal::create_with(router, project, host, false, false);
        v.attached(router)
    }

    /// Like [`TestVassal::attach`], with an IPv6 address too.
    pub fn attach6(router: &TestRouter, project: &str, host: u8) -> TestVassal {
        let v = TestVassal::create(router, project, host, true);
        v.attached(router)
    }

    fn attached(mut self, router: &TestRouter) -> TestVassal {
        match self.hello(router) {
            Response::Accepted { gateway, .. } => assert_eq!(gateway, router.gateway()),
            other => panic!("attach of {} refused: {other:?}", self.project),
        }
        self
    }

    /// Creates and configures the namespace and tun without attaching.
    pub fn create(router: &TestRouter, project: &str, host: u8, ipv6: bool) -> TestVassal {
        TestVassal::create_with(router, project, host, ipv6, true)
    }

    /// [`TestVassal::create`], with or without a vnet header on the tun.
    pub fn create_with(
        router: &TestRouter,
        project: &str,
        host: u8,
        ipv6: bool,
        vnet: bool,
    ) -> TestVassal {
        let ns = Netns::new("vn");
        if !ipv6 {
            // No link-local chatter (router solicitations) in IPv4 tests.
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        let tun = create_tun_in(&ns, "vt0", if vnet { libc::IFF_VNET_HDR } else { 0 });
        let addr = router.addr(host);
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "vt0"]);
        let addr6 = ipv6.then(|| router.addr6(host));
        if let Some(a6) = &addr6 {
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{a6}/64"),
                "dev",
                "vt0",
                "nodad",
            ]);
        }
        ns.exec(&["ip", "link", "set", "vt0", "up"]);
        ns.exec(&["ip", "route", "add", "default", "dev", "vt0"]);
        if ipv6 {
            ns.exec(&["ip", "-6", "route", "add", "default", "dev", "vt0"]);
        }
        TestVassal {
            ns,
            project: project.to_owned(),
            addr,
            addr6,
            tun,
            control: None,
            net_out: None,
            net_in: None,
        }
    }

    /// Sends the hello for this vassal (keeping the connection) and returns
    /// the answer.
    pub fn hello(&mut self, router: &TestRouter) -> Response {
        let conn = transport::connect(&router.socket).expect("connect to the control socket");
        let hello = Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            project: self.project.clone(),
            ipv4: self.addr,
            ipv6: self.addr6.as_ref().map(|a| a.parse().unwrap()),
            net_out: self.net_out,
            net_in: self.net_in,
        });
        let answer =
            transport::call(conn.as_fd(), &hello, Some(self.tun.as_fd())).expect("hello exchange");
        self.control = Some(conn);
        answer
    }

    /// Closes the control connection (the router detaches the vassal).
    pub fn detach(&mut self) {
        self.control = None;
    }

    /// Pings `dst` `count` times with `size` bytes of payload; true when
    /// every reply came back.
    pub fn ping(&self, dst: &str, count: u32, size: u32) -> bool {
        let c = count.to_string();
        let s = size.to_string();
        self.ns.try_exec(&[
            "ping", "-n", "-q", "-c", &c, "-s", &s, "-i", "0.2", "-W", "1", dst,
        ])
    }

    /// One ping that must fail fast (no reply within a second).
    pub fn ping_fails(&self, dst: &str) -> bool {
        !self
            .ns
            .try_exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", dst])
    }
}

/// The python source of an echo server (TCP and UDP on `port`) that prints
/// `ready` and then the address of every peer it serves into `log`.
pub fn echo_server_cmd(bind: &str, port: u16, log: &std::path::Path) -> String {
    format!(
        r#"
import socket, threading, sys
log = open({log:?}, "a", buffering=1)
fam = socket.AF_INET6 if ":" in {bind:?} else socket.AF_INET
def serve(c, a):
    log.write("tcp " + a[0] + "\n")
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
def tcp():
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(({bind:?}, {port})); s.listen(16)
    while True:
        c, a = s.accept()
        threading.Thread(target=serve, args=(c, a), daemon=True).start()
def udp():
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind(({bind:?}, {port}))
    while True:
        d, a = s.recvfrom(65536)
        log.write("udp " + a[0] + "\n")
        s.sendto(d, a)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
log.write("ready\n")
threading.Event().wait()
"#,
        log = log.display().to_string()
    )
}

/// Runs [`echo_server_cmd`] in `ns` and waits until it is ready.
pub fn echo_server(ns: &Netns, bind: &str, port: u16, log: &std::path::Path) -> KillOnDrop {
    let script = echo_server_cmd(bind, port, log);
    let child = KillOnDrop::spawn(
        ns.command(PYTHON)
            .args(["-c", &script])
            .stdin(Stdio::null()),
    );
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(log)
            .is_ok_and(|t| t.contains("ready"))),
        "echo server did not start"
    );
    child
}

/// Sends `payload` over TCP to `dst:port` from inside `ns` and returns
/// whether the same bytes came back.
pub fn tcp_echo(ns: &Netns, dst: &str, port: u16, payload_len: usize) -> bool {
    let script = format!(
        r#"
import socket, sys
fam = socket.AF_INET6 if ":" in {dst:?} else socket.AF_INET
s = socket.socket(fam); s.settimeout(3)
s.connect(({dst:?}, {port}))
data = bytes(i % 251 for i in range({payload_len}))
s.sendall(data); got = b""
while len(got) < len(data):
    d = s.recv(65536)
    if not d: break
    got += d
sys.exit(0 if got == data else 1)
"#
    );
    try_run(ns.command(PYTHON).args(["-c", &script])).is_ok()
}

/// Sends one UDP datagram of `payload_len` bytes to `dst:port` from `ns`
/// and returns whether the echo came back.
pub fn udp_echo(ns: &Netns, dst: &str, port: u16, payload_len: usize) -> bool {
    let script = format!(
        r#"
import socket, sys
fam = socket.AF_INET6 if ":" in {dst:?} else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2)
data = bytes(i % 251 for i in range({payload_len}))
s.sendto(data, ({dst:?}, {port}))
try:
    got, _ = s.recvfrom(65536)
except socket.timeout:
    sys.exit(1)
sys.exit(0 if got == data else 1)
"#
    );
    try_run(ns.command(PYTHON).args(["-c", &script])).is_ok()
}

/// Runs `f` as `uid` (gid `uid`, no supplementary groups) and returns its
/// value, or 100 when the switch failed. `f` runs on a thread of its own
/// whose credentials alone change: the raw syscalls are per thread (libc's
/// `setuid` would switch every thread of the test process). No fork: in a
/// forked child of this multi-threaded process only async-signal-safe
/// calls are allowed, and `f` allocates.
pub fn as_uid(uid: u32, f: impl FnOnce() -> i32 + Send + 'static) -> i32 {
    std::thread::spawn(move || {
        let id = libc::c_long::from(uid);
        // SAFETY: setgroups with an empty list and a null pointer, then
        // setresgid/setresuid with integer ids: no memory is passed, and
        // the raw syscalls change only this thread, which ends with `f`.
        let switched = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, id, id, id) == 0
                && libc::syscall(libc::SYS_setresuid, id, id, id) == 0
        };
        if switched {
            f()
        } else {
            100
        }
    })
    .join()
    .expect("the as_uid thread panicked")
}

/// Makes the "internet" behind `veth` dual-stack: `host6` on the host's
/// end, `far6` on the end in `ns` (each with its prefix length), usable at
/// once (no duplicate address detection).
pub fn add_ipv6(ns: &Netns, veth: &Veth, host6: &str, far6: &str) {
    ip(&["-6", "addr", "add", host6, "dev", &veth.host, "nodad"]);
    ns.exec(&["ip", "-6", "addr", "add", far6, "dev", &veth.peer, "nodad"]);
}

/// Raw `ip` in the host, ignoring failure (cleanup).
pub fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
}

/// Runs a command, panicking on failure, returning stdout as text.
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Takes ownership of a raw fd (for tests passing odd descriptors).
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned(fd: i32) -> OwnedFd {
    // SAFETY: upheld by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads events from `sink` until `want` matches one or `timeout` passes.
pub fn wait_event(
    sink: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
    want: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < deadline {
        sink.set_read_timeout(Some(
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(10)),
        ))
        .unwrap();
        let Ok(n) = sink.recv(&mut buf) else { continue };
        let event: serde_json::Value =
            serde_json::from_slice(&buf[..n]).expect("an event is one JSON object");
        if want(&event) {
            return Some(event);
        }
    }
    None
}
