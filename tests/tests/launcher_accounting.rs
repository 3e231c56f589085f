//! The launcher's usage reports, read straight off its attach connection by
//! a stand-in router in the test (no vassal-router, no traffic), so that
//! the same test checks the cgroup readings on this host's cgroup v1 and in
//! the cgroup v2 guest (tests/vm/run.sh). The router's side is
//! tests/tests/router_accounting.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;
use vassal_attach::{transport, Request, Response, VassalUsage, MAX_MESSAGE_LEN};
use vassal_tests::launcher_harness::{name, network_table, vassal_file, Launched, LoopFs, TempDir};

const MIB: u64 = 1 << 20;

/// Listens on `path` as a router would, accepts one launcher, answers its
/// hello, and passes on every usage report it sends.
fn stand_in_router(path: &Path) -> mpsc::Receiver<VassalUsage> {
    let listener: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::bind(listener.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    socket::listen(&listener, socket::Backlog::new(4).unwrap()).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let raw = socket::accept(listener.as_raw_fd()).unwrap();
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let (len, _tun) = transport::recv_datagram(conn.as_fd(), &mut buf).unwrap();
        assert!(matches!(
            vassal_attach::decode_request(&buf[..len]),
            Ok(Request::Hello(_))
        ));
        let accepted = Response::Accepted {
            version: vassal_attach::PROTOCOL_VERSION,
            gateway: Ipv4Addr::new(10, 231, 0, 1),
            gateway6: None,
            net_out: None,
            net_in: None,
        };
        transport::send_datagram(conn.as_fd(), &vassal_attach::encode(&accepted), None).unwrap();
        while let Ok((len, _)) = transport::recv_datagram(conn.as_fd(), &mut buf) {
            if let Ok(Request::Usage(u)) = vassal_attach::decode_request(&buf[..len]) {
                if tx.send(u).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// The first report that satisfies `want`, within `timeout`.
fn report(
    rx: &mpsc::Receiver<VassalUsage>,
    timeout: Duration,
    want: impl Fn(&VassalUsage) -> bool,
) -> Option<VassalUsage> {
    let deadline = std::time::Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(u) if want(&u) => return Some(u),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn launcher_accounting_reports_cpu_memory_pids_io_and_limits() {
    let n = name("la");
    let dir = TempDir::new();
    // A filesystem on a block device for the IO (the guest's root is in
    // memory), writable by the vassal's uid.
    let data = LoopFs::new();
    let socket_path = dir.0.join("router.sock");
    let rx = stand_in_router(&socket_path);
    let script = "dd if=/dev/zero of=/srv/f bs=1M count=8 oflag=direct 2>/dev/null || exit 3; \
                  sleep 1000 & sleep 1000 & \
                  exec python3 -c 'b = bytearray(b\"\\x01\") * (64 << 20)\nwhile True: pass'";
    let f = vassal_file(
        &dir,
        &n,
        &["/bin/sh", "-c", script],
        &format!(
            "{}[limits]\nmemory = \"256M\"\ncpu = 1.5\npids = 64\n\
             [[mount]]\nsource = \"{}\"\ntarget = \"/srv\"\nwritable = true\n",
            network_table(&socket_path, Ipv4Addr::new(10, 231, 0, 2)),
            data.mount.display()
        ),
    );
    let mut vassal = Launched::spawn(
        &n,
        &["run".into(), "--config".into(), f.display().to_string()],
        dir.0.join("stderr"),
    );
    // Generous windows: under an emulated CPU (the guest) python takes
    // seconds to start. The report period itself is checked by
    // router_accounting.
    let first = report(&rx, Duration::from_secs(30), |_| true)
        .unwrap_or_else(|| panic!("no usage report: {}", vassal.stderr()));
    assert!(!first.resumed);
    assert_eq!(first.limits.memory_bytes, Some(256 * MIB));
    assert_eq!(first.limits.cpu_millicores, Some(1500));
    assert_eq!(first.limits.pids, Some(64));
    // Supervisor, two sleepers, python; 64 MiB held; the 8 MiB written.
    let settled = report(&rx, Duration::from_secs(60), |u| {
        u.pids == 4 && u.memory_bytes >= 64 * MIB && u.io_write_bytes >= 8 * MIB
    })
    .unwrap_or_else(|| {
        panic!(
            "reports never showed the vassal settled: {}",
            vassal.stderr()
        )
    });
    assert!(settled.memory_bytes < 160 * MIB, "{settled:?}");
    assert!(
        settled.memory_peak_bytes >= settled.memory_bytes,
        "{settled:?}"
    );
    assert!(settled.io_write_bytes <= 9 * MIB, "{settled:?}");
    // CPU keeps rising while it burns.
    let later = report(&rx, Duration::from_secs(30), |u| {
        u.cpu_usec >= settled.cpu_usec + 1_000_000
    });
    assert!(later.is_some(), "cpu stayed near {}", settled.cpu_usec);
    vassal
        .stop(Duration::from_secs(10))
        .expect("the launcher ends");
}
