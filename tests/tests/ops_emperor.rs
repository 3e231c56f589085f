//! The documented uWSGI Emperor switch-over (docs/operations/emperor/,
//! docs/operations.md, "Moving a uWSGI Emperor to vassal-router"), done for
//! real and step by step: an Emperor with uWSGI's own tuntap router runs the
//! example vassal; the Emperor is stopped as the guide says, vassal-router
//! starts on the documented configuration (same socket path, same subnet,
//! the project table and rules), the Emperor restarts without its router,
//! and the same vassal file attaches, reaches the "internet" through NAT,
//! is held by the documented firewall and shows in `stats` and /metrics.
//! Then the documented rollback, back to uWSGI's router.
//!
//! Only host-specific values of the example files are replaced (paths, the
//! subnet, the device, the uid; see `Place::localise`); everything else is
//! the documented text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
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
/// What an Emperor running uWSGI's tuntap router logs.
const UWSGI_ROUTER: &str = "spawned uWSGI tuntap router";

fn example(file: &str) -> String {
    std::fs::read_to_string(format!("{EXAMPLE}{file}")).unwrap()
}

/// The example's host-specific values, and what this test puts in their
/// place.
struct Place<'a> {
    dir: &'a Path,
    socket: &'a Path,
    rules: &'a Path,
    gateway: String,
    address: String,
    subnet: String,
    /// uWSGI's gateway device (the example's `emperor0`).
    uwsgi_device: String,
    /// vassal-router's device (the example's `vr0`).
    router_device: String,
}

impl Place<'_> {
    /// An example file with only its host-specific values replaced.
    fn localise(&self, text: &str) -> String {
        let out = text
            .replace(
                "/etc/uwsgi/vassals",
                &self.dir.join("vassals").display().to_string(),
            )
            .replace(
                "/run/uwsgi/tuntap.socket",
                &self.socket.display().to_string(),
            )
            .replace(
                "/etc/vassal/firewall.toml",
                &self.rules.display().to_string(),
            )
            .replace("192.168.0.0/16", &self.subnet)
            .replace("192.168.0.1", &self.gateway)
            .replace("192.168.0.2", &self.address)
            .replace("emperor0", &self.uwsgi_device)
            .replace("\"vr0\"", &format!("{:?}", self.router_device))
            .replace("10001", UID);
        assert!(
            [
                "/etc/",
                "/run/uwsgi",
                "/run/vassal",
                "192.168.",
                "10001",
                "vr0"
            ]
            .iter()
            .all(|v| !out.contains(v)),
            "a host-specific value of the example is not localised:\n{out}"
        );
        out
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
    /// Starts `uwsgi --ini` on the localised Emperor file `ini` (the vassal
    /// files are already in place).
    fn start(place: &Place<'_>, ini: &str, phase: &str) -> Emperor {
        let dir = place.dir.to_owned();
        let ini_path = dir.join(format!("emperor-{phase}.ini"));
        std::fs::write(&ini_path, place.localise(&example(ini))).unwrap();
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

    /// The guide's "stop the Emperor": SIGINT to its master, which takes
    /// its vassals (and its tuntap router, if any) with it. Panics unless
    /// the Emperor and every vassal process are gone within 15 s.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.pid() as i32);
        nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
        let exited = wait_until(Duration::from_secs(15), || {
            self.child.0.try_wait().unwrap().is_some()
        });
        assert!(exited, "the Emperor ignored SIGINT:\n{}", self.log_text());
        assert!(
            wait_until(Duration::from_secs(15), || self.processes().is_empty()),
            "vassal processes outlived the Emperor: {:?}\n{}",
            self.processes(),
            self.log_text()
        );
    }
}

impl Drop for Emperor {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.pid() as i32);
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        // Vassals the Emperor spawned may have left its group.
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // uWSGI's tuntap router holds its device until it is gone.
        let _ = wait_until(Duration::from_secs(3), || self.processes().is_empty());
    }
}

fn ping(pid: u32, dst: &str) -> bool {
    in_netns_of(pid, &["ping", "-n", "-q", "-c", "1", "-W", "1", dst])
}

fn device_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The harness's own keys of a router config: where the control socket
/// and /metrics listen (the documented values are the system's).
fn test_only_keys(config: &str) -> String {
    config
        .lines()
        .filter(|l| l.starts_with("control_socket =") || l.starts_with("metrics_listen ="))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `vassal-router ARGS`, asserting success.
fn router_cli_ok(router: &TestRouter, args: &[&str]) -> String {
    let out = router.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "vassal-router {args:?}: {text}");
    text
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
    let _veth = Veth::new(
        &internet,
        &format!("{host_addr}/30"),
        &format!("{server}/30"),
    );
    // The harness picks the router's device, subnet, directory and ports,
    // then the router steps aside: before the switch, uWSGI owns the socket
    // and the subnet.
    let mut router = TestRouter::start(&RouterSpec {
        compat: true,
        ..Default::default()
    });
    assert!(router.stop(Signal::SIGTERM));
    let net = router.gateway().octets();
    let emperor_dir = router.dir.join("emperor");
    let place = Place {
        dir: &emperor_dir,
        socket: &router.compat_socket.clone(),
        rules: &router.rules_path.clone(),
        gateway: router.gateway().to_string(),
        address: router.addr(2).to_string(),
        subnet: format!("{}.{}.{}.0/24", net[0], net[1], net[2]),
        uwsgi_device: unique("emp"),
        router_device: router.device.clone(),
    };
    // The customer's vassal file: written once, the same before and after.
    std::fs::create_dir_all(emperor_dir.join("vassals")).unwrap();
    let vassal_file = emperor_dir.join("vassals/app1.ini");
    let vassal_text = place.localise(&example("vassals/app1.ini"));
    std::fs::write(&vassal_file, &vassal_text).unwrap();

    // Before: uWSGI's tuntap router in the Emperor.
    let before = Emperor::start(&place, "before/emperor.ini", "before");
    assert!(
        wait_until(Duration::from_secs(15), || before
            .vassal_pid()
            .is_some_and(|p| ping(p, &place.gateway))),
        "the vassal never reached uWSGI's router:\n{}",
        before.log_text()
    );
    assert!(device_exists(&place.uwsgi_device));
    assert!(
        before.log_text().contains(UWSGI_ROUTER),
        "{}",
        before.log_text()
    );

    // Step 1: the documented router config and rules, checked as the guide
    // says. The configuration is the example's, plus where this test's
    // control socket and /metrics listen.
    let rules_text = place.localise(&example("after/firewall.toml"));
    std::fs::write(place.rules, &rules_text).unwrap();
    let harness_config = std::fs::read_to_string(&router.config_path).unwrap();
    let config = format!(
        "{}{}",
        test_only_keys(&harness_config),
        place.localise(&example("after/router.toml"))
    );
    std::fs::write(&router.config_path, &config).unwrap();
    let config_path = router.config_path.to_str().unwrap().to_owned();
    router_cli_ok(&router, &["check-config", &config_path]);
    router_cli_ok(&router, &["check-rules", place.rules.to_str().unwrap()]);

    // Step 2: stop the Emperor; its vassal and tuntap router go with it.
    before.stop();
    assert!(
        !device_exists(&place.uwsgi_device),
        "uWSGI's gateway device outlived the Emperor"
    );

    // Step 3: start vassal-router (uWSGI may have left its socket file:
    // the router replaces it).
    router.spawn();
    assert!(router.compat_socket.exists());
    assert!(device_exists(&router.device));

    // Step 4: the Emperor alone, the vassal file untouched.
    let after = Emperor::start(&place, "after/emperor.ini", "after");
    assert!(
        wait_until(Duration::from_secs(15), || router
            .metric("vassal_attached", "project=\"app1\"")
            == 1.0),
        "app1 never attached:\n{}\n{}",
        after.log_text(),
        router.log_text()
    );
    assert_eq!(std::fs::read_to_string(&vassal_file).unwrap(), vassal_text);
    assert!(
        !after.log_text().contains(UWSGI_ROUTER),
        "{}",
        after.log_text()
    );
    let pid = after.vassal_pid().expect("the vassal's process");

    // Step 5, the checks. Out to the internet through NAT...
    let (tx0, rx0) = (
        router.metric("vassal_tx_bytes_total", "project=\"app1\""),
        router.metric("vassal_rx_bytes_total", "project=\"app1\""),
    );
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
    // ...seen from outside as the host (masquerade)...
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains(&format!("tcp {host_addr}")));
    // ...and counted for the project, both ways (a TCP exchange is at
    // least the handshake, the data and the close: several packets each
    // way of at least 40 bytes).
    let tx = router.metric("vassal_tx_bytes_total", "project=\"app1\"") - tx0;
    let rx = router.metric("vassal_rx_bytes_total", "project=\"app1\"") - rx0;
    assert!(tx >= 3.0 * 40.0 && rx >= 2.0 * 40.0, "tx {tx} rx {rx}");
    // The documented firewall is in force: the vassal may not reach the
    // host's networks (the gateway included), and that is counted.
    let denied = router.dropped("app1", "firewall");
    assert!(!ping(pid, &place.gateway));
    assert!(router.dropped("app1", "firewall") > denied);
    assert_eq!(router.dropped("app1", "spoofed"), 0.0);
    let stats = router_cli_ok(
        &router,
        &["stats", "--socket", router.socket.to_str().unwrap()],
    );
    // `stats`: app1's row says attached.
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["app1", "yes"])),
        "{stats}"
    );

    // Rollback, the same steps in reverse: stop the Emperor, stop
    // vassal-router (it removes its device and NAT table), the old
    // Emperor file, and the vassal is back on uWSGI's router.
    after.stop();
    assert!(
        wait_until(Duration::from_secs(5), || router
            .metric("vassal_attached", "project=\"app1\"")
            == 0.0),
        "app1 still attached after its Emperor stopped"
    );
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
    assert!(!device_exists(&router.device));
    let table = vassal_router::nat::table_name(&router.device);
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout)
            .lines()
            .any(|l| l.trim() == format!("table inet {table}")),
        "the router left its NAT table"
    );
    let again = Emperor::start(&place, "before/emperor.ini", "rollback");
    assert!(
        wait_until(Duration::from_secs(15), || again
            .vassal_pid()
            .is_some_and(|p| ping(p, &place.gateway))),
        "after the rollback the vassal never reached uWSGI's router:\n{}",
        again.log_text()
    );
    assert!(again.log_text().contains(UWSGI_ROUTER));
}
