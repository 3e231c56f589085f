//! Shared helpers for the root integration tests: real network namespaces,
//! veth pairs, processes and the workspace's built binaries.
//!
//! Every resource a test creates is named from [`unique`] and owned by a
//! guard that removes it on drop, so tests run in parallel and a failing
//! test leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster_harness;
pub mod launcher_harness;
pub mod pki;
pub mod router_harness;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Panics unless the test runs as root: the integration suite is privileged
/// by design and must fail loudly, never skip, when it cannot be.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the integration tests need root: run them through tests/run-all.sh as root"
    );
}

/// A short name unique to this test process and call, usable as an interface
/// or namespace name (at most 15 bytes with a 3-byte prefix).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n:x}", std::process::id() & 0xffff);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}

/// Path of a binary of this workspace (`vassal-router`, `vassal-launch`),
/// built by `cargo build` in the same profile as the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (tests/run-all.sh does)",
        path.display()
    );
    path
}

/// Runs a command to completion and panics, with its output, when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to completion, stdin closed: Ok when it exits 0, else
/// what it wrote to stderr.
pub fn try_run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `ip ARGS...`, panicking on failure.
pub fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The TCP sockets in LISTEN state, from the kernel's own tables: those of
/// process `pid` (matched by socket inode, in its network namespace), or
/// every listener of the test's network namespace for `None`. Lets a test
/// wait for a server to listen, and learn the port a process bound to port
/// 0, instead of sleeping or guessing a free port.
pub fn tcp_listeners(pid: Option<u32>) -> Vec<SocketAddr> {
    let base = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let inodes: Option<std::collections::HashSet<u64>> = pid.map(|_| {
        std::fs::read_dir(format!("{base}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect()
    });
    // The kernel prints each 32-bit word of the address in host order.
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let mut found = Vec::new();
    for (table, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        let text = std::fs::read_to_string(format!("{base}/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            if inodes.as_ref().is_some_and(|set| !set.contains(&inode)) {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            let Ok(port) = u16::from_str_radix(port, 16) else {
                continue;
            };
            let ip = if v6 {
                let words: Option<Vec<[u8; 4]>> = (0..4)
                    .map(|i| addr.get(i * 8..i * 8 + 8).and_then(word))
                    .collect();
                let Some(words) = words else { continue };
                let mut bytes = [0u8; 16];
                for (chunk, w) in bytes.chunks_mut(4).zip(words) {
                    chunk.copy_from_slice(&w);
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                let Some(w) = word(addr) else { continue };
                IpAddr::V4(Ipv4Addr::from(w))
            };
            found.push(SocketAddr::new(ip, port));
        }
    }
    found
}

/// Whether anything in the test's network namespace listens on TCP `port`.
pub fn tcp_listening(port: u16) -> bool {
    tcp_listeners(None).iter().any(|a| a.port() == port)
}

/// A network namespace made with `ip netns add`, deleted on drop.
pub struct Netns {
    /// Its name, usable with `ip netns exec`.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `argv` inside the namespace, panicking on failure.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..]);
        run(&mut cmd)
    }

    /// Runs `argv` inside the namespace and returns whether it succeeded.
    pub fn try_exec(&self, argv: &[&str]) -> bool {
        let mut cmd = self.command(argv[0]);
        cmd.args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    /// Path of the namespace's handle, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair with one end in the host namespace and the other in `ns`,
/// addressed as given; removed on drop (deleting one end removes both).
pub struct Veth {
    /// The host-side interface name.
    pub host: String,
    /// The name of the end in the namespace.
    pub peer: String,
}

impl Veth {
    /// Creates `host_if` (address `host_cidr`) in the host and `ns_if`
    /// (address `ns_cidr`) in `ns`, both up.
    pub fn new(ns: &Netns, host_cidr: &str, ns_cidr: &str) -> Veth {
        let host = unique("vh");
        let peer = unique("vp");
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns.name,
        ]);
        let veth = Veth { host, peer };
        ip(&["addr", "add", host_cidr, "dev", &veth.host]);
        ip(&["link", "set", &veth.host, "up"]);
        ns.exec(&["ip", "addr", "add", ns_cidr, "dev", &veth.peer]);
        ns.exec(&["ip", "link", "set", &veth.peer, "up"]);
        veth
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Spawns `cmd`, panicking when it cannot start.
    pub fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        )
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fetches `http://<addr>/metrics` with a minimal HTTP/1.0 client over
/// loopback (no extra dependency, no proxy surprises).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

/// The value of the sample `name{labels}` in Prometheus text, where
/// `labels` is the exact label set as it prints (for example
/// `project="alice"`), or None when absent.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == want).then(|| value.parse().ok()).flatten()
    })
}
