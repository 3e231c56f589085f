//! The documented uWSGI Emperor switch-over (docs/operations/emperor/,
//! docs/operations.md), done for real: an Emperor with uWSGI's own tuntap
//! router runs the example vassal; it is replaced by vassal-router on the
//! same socket and subnet, the Emperor restarted without its router, and the
//! same vassal file attaches, reaches the "internet" through NAT, and is
//! held by the documented firewall.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_tests::launcher_harness::in_netns_of;
use vassal_tests::router_harness::{echo_server, RouterSpec, TestRouter, PYTHON};
use vassal_tests::{unique, wait_until, KillOnDrop, Netns, Veth};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations/emperor/");
/// The uid the test runs the vassal as (the example's 10001 may be taken).
const UID: &str = "47101";

fn example(file: &str) -> String {
    std::fs::read_to_string(format!("{EXAMPLE}{file}")).unwrap()
}

/// The example's values, and what this test puts in their place.
struct Place<'a> {
    dir: &'a Path,
    socket: &'a Path,
    gateway: String,
    address: String,
    subnet: String,
    device: String,
}

impl Place<'_> {
    /// An example file with only its host-specific values replaced.
    fn localise(&self, text: &str) -> String {
        text.replace(
            "/etc/uwsgi/vassals",
            &self.dir.join("vassals").display().to_string(),
        )
        .replace(
            "/run/uwsgi/tuntap.socket",
            &self.socket.display().to_string(),
        )
        .replace("192.168.0.0/16", &self.subnet)
        .replace("192.168.0.1", &self.gateway)
        .replace("192.168.0.2", &self.address)
        .replace("emperor0", &self.device)
        .replace("10001", UID)
    }
}

/// An Emperor in its own process group; on drop the group and every
/// process started from its directory are killed.
struct Emperor {
    child: KillOnDrop,
    dir: PathBuf,
    log: PathBuf,
}

impl Emperor {
    fn start(place: &Place<'_>, ini: &str, phase: &str) -> Emperor {
        let dir = place.dir.to_owned();
        std::fs::create_dir_all(dir.join("vassals")).unwrap();
        std::fs::write(
            dir.join("vassals/app1.ini"),
            place.localise(&example("vassals/app1.ini")),
        )
        .unwrap();
        let ini_path = dir.join(format!("emperor-{phase}.ini"));
        std::fs::write(&ini_path, place.localise(ini)).unwrap();
        let log = dir.join(format!("emperor-{phase}.log"));
        let child = KillOnDrop::spawn(
            Command::new("uwsgi")
                .arg("--ini")
                .arg(&ini_path)
                .current_dir(&dir)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        Emperor { child, dir, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of a process of the vassal (in its own network namespace).
    fn vassal_pid(&self) -> Option<u32> {
        let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
        let vassals = self.dir.join("vassals");
        self.processes().into_iter().find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == vassals)
                && std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != ours)
        })
    }

    /// Every process working in this Emperor's directory (the Emperor runs
    /// its vassals from their directory).
    fn processes(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|d| d.starts_with(&self.dir))
            })
            .collect()
    }
}

impl Drop for Emperor {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.pid() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        // Vassals the Emperor spawned may have left its group.
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // uWSGI's tuntap router holds its device until it is gone.
        let _ = wait_until(Duration::from_secs(3), || self.processes().is_empty());
    }
}

#[test]
fn ops_uwsgi_emperor_switches_over_to_vassal_router() {
    // The "internet" the vassal reaches after the switch, through NAT.
    let base = (std::process::id() % 60) as u8 * 4;
    let (host_addr, server) = (
        format!("198.51.100.{}", base + 1),
        format!("198.51.100.{}", base + 2),
    );
    let internet = Netns::new("in");
    let veth = Veth::new(
        &internet,
        &format!("{host_addr}/30"),
        &format!("{server}/30"),
    );
    // The router's subnet and directory first, then it steps aside: before
    // the switch, uWSGI owns the socket and the subnet.
    let mut router = TestRouter::start(&RouterSpec {
        compat: true,
        nat: Some(Some(veth.host.clone())),
        ..Default::default()
    });
    router.stop(nix::sys::signal::Signal::SIGTERM);
    let net = router.gateway().octets();
    let (emperor_dir, socket) = (router.dir.join("emperor"), router.compat_socket.clone());
    let place = Place {
        dir: &emperor_dir,
        socket: &socket,
        gateway: router.gateway().to_string(),
        address: router.addr(2).to_string(),
        subnet: format!("{}.{}.{}.0/24", net[0], net[1], net[2]),
        device: unique("emp"),
    };
    let _ = std::fs::remove_file(place.socket);

    // Before: uWSGI's tuntap router in the Emperor.
    let before = Emperor::start(&place, &example("before/emperor.ini"), "before");
    assert!(
        wait_until(Duration::from_secs(15), || before.vassal_pid().is_some_and(
            |p| {
                in_netns_of(
                    p,
                    &["ping", "-n", "-q", "-c", "1", "-W", "1", &place.gateway],
                )
            }
        )),
        "the vassal never reached uWSGI's router:\n{}",
        before.log_text()
    );
    drop(before);

    // The switch: vassal-router on the same socket, the documented rules
    // and project table, then the Emperor without its router.
    std::fs::write(
        &router.rules_path,
        place.localise(&example("after/firewall.toml")),
    )
    .unwrap();
    let documented = example("after/router.toml");
    let project = &documented[documented.find("\n[[project]]").unwrap()..];
    let mut config = std::fs::read_to_string(&router.config_path).unwrap();
    config = config.replacen(
        "[nat]",
        &format!("rules = \"{}\"\n[nat]", router.rules_path.display()),
        1,
    );
    config.push('\n');
    config.push_str(&place.localise(project));
    std::fs::write(&router.config_path, config).unwrap();
    let _ = std::fs::remove_file(place.socket);
    router.spawn();
    let after = Emperor::start(&place, &example("after/emperor.ini"), "after");
    assert!(
        wait_until(Duration::from_secs(15), || router
            .metric("vassal_attached", "project=\"app1\"")
            == 1.0),
        "app1 never attached:\n{}\n{}",
        after.log_text(),
        router.log_text()
    );
    let pid = after.vassal_pid().expect("the vassal's process");

    // Out to the internet through NAT, held by the documented firewall.
    let log = router.dir.join("internet.log");
    let _server = echo_server(&internet, "0.0.0.0", 8080, &log);
    let script = format!(
        "import socket\ns = socket.create_connection(({server:?}, 8080), timeout=3)\n\
         s.sendall(b'switched'); assert s.recv(8) == b'switched'\n"
    );
    assert!(
        in_netns_of(pid, &[PYTHON, "-c", &script]),
        "{}",
        router.log_text()
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("tcp {host_addr}")));
    assert!(!in_netns_of(
        pid,
        &["ping", "-n", "-q", "-c", "1", "-W", "1", &place.gateway]
    ));
    assert!(router.dropped("app1", "firewall") >= 1.0);
    assert!(router.metric("vassal_tx_bytes_total", "project=\"app1\"") > 0.0);
    assert_eq!(router.dropped("app1", "spoofed"), 0.0);
    let out = router.cli(&["stats", "--socket", router.socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("app1"));
}
