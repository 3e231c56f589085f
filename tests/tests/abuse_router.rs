//! Faults of the router itself under tenants' traffic: killed with SIGKILL
//! and restarted while many vassals run (every one re-attaches, NAT state
//! is replaced, never duplicated), and rule reloads in a stream of
//! allowed traffic (not one allowed packet lost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_tests::router_harness::{echo_server, RouterSpec, TestRouter, TestVassal, PYTHON};
use vassal_tests::{binary, wait_until, KillOnDrop, Netns, Veth};

/// The vassal table of the router's device as `nft` lists it, without the
/// handle numbers (which a replaced table renumbers); `None` when absent.
fn nat_table(router: &TestRouter) -> Option<String> {
    let table = format!("vassal_{}", router.device);
    let out = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).replace(char::is_numeric, "#"))
}

/// How many vassal tables of this device exist.
fn nat_tables(router: &TestRouter) -> usize {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let name = format!("table inet vassal_{}", router.device);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == name)
        .count()
}

/// The pid of a launched vassal's supervisor, from its state file.
fn supervisor_pid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/run/vassal/launch/{name}.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["pid"].as_u64().filter(|&p| p > 0).map(|p| p as u32)
}

/// A TCP round trip of `len` bytes from inside the network namespace of
/// process `pid` to `dst:port`.
fn echo_from(pid: u32, dst: &str, port: u16, len: usize) -> bool {
    let script = format!(
        "import socket, sys\ns = socket.create_connection(({dst:?}, {port}), timeout=3)\n\
         data = bytes(i % 251 for i in range({len}))\ns.sendall(data); got = b''\n\
         while len(got) < len(data):\n    d = s.recv(65536)\n    if not d: break\n    got += d\n\
         sys.exit(0 if got == data else 1)\n"
    );
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", PYTHON, "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn abuse_router_sigkill_restart_reattaches_every_vassal_with_no_stale_nat() {
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
    // The embedded rules: the internet allowed out, replies established.
    let mut router = TestRouter::start(&RouterSpec {
        nat: Some(Some(veth.host.clone())),
        ..Default::default()
    });
    let log = router.dir.join("internet.log");
    let _server = echo_server(&internet, "0.0.0.0", 8080, &log);

    const VASSALS: u8 = 8;
    let names: Vec<String> = (0..VASSALS)
        .map(|i| vassal_tests::launcher_harness::name(&format!("rk{i}")))
        .collect();
    let _launchers: Vec<KillOnDrop> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            KillOnDrop::spawn(
                Command::new(binary("vassal-launch"))
                    .args(["run", "--name", n, "--uid", "47001", "--address"])
                    .arg(router.addr(10 + i as u8).to_string())
                    .arg("--router")
                    .arg(&router.socket)
                    .args(["--", "/bin/sleep", "600"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null()),
            )
        })
        .collect();
    let all_attached = |router: &TestRouter| {
        let m = router.scrape();
        names.iter().all(|n| {
            vassal_tests::metric(&m, "vassal_attached", &format!("project=\"{n}\"")) == Some(1.0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || all_attached(&router)),
        "{}",
        router.log_text()
    );
    let pids: Vec<u32> = names.iter().map(|n| supervisor_pid(n).unwrap()).collect();
    for (n, pid) in names.iter().zip(&pids) {
        assert!(
            echo_from(*pid, &server, 8080, 100_000),
            "{n} before the kill"
        );
    }
    let table = nat_table(&router).expect("the NAT table");
    assert_eq!(nat_tables(&router), 1);

    router.stop(Signal::SIGKILL);
    // Dead, the router leaves its table behind (it cannot clean up after
    // SIGKILL); its device is gone, so nothing flows through it.
    assert_eq!(nat_tables(&router), 1);
    router.spawn();
    assert!(
        wait_until(Duration::from_secs(15), || all_attached(&router)),
        "not every vassal re-attached:\n{}",
        router.log_text()
    );
    // The restart replaced the table: one, with the same content.
    assert_eq!(nat_tables(&router), 1, "a stale table was duplicated");
    assert_eq!(nat_table(&router).as_deref(), Some(table.as_str()));
    for (n, pid) in names.iter().zip(&pids) {
        assert!(
            echo_from(*pid, &server, 8080, 100_000),
            "{n} after the restart"
        );
    }

    // A clean stop removes exactly its table.
    assert!(router.stop(Signal::SIGTERM), "{}", router.log_text());
    assert_eq!(nat_tables(&router), 0);
}

#[test]
fn abuse_rule_reloads_under_load_drop_no_allowed_traffic() {
    let allow = "[default]\nout = \"allow\"\nin = \"deny\"\n";
    let router = TestRouter::start(&RouterSpec {
        rules: Some(allow.into()),
        ..Default::default()
    });
    let v = TestVassal::attach(&router, "alice", 2);
    let gw = router.gateway().to_string();
    // Two valid files that both allow the stream (UDP to 7400) but differ
    // elsewhere, and an invalid one.
    let files = [
        allow.to_owned(),
        format!("{allow}[[out]]\naction = \"deny\"\nproto = \"tcp\"\ndst_port = \"25\"\n"),
        "[default]\nout = \"maybe\"\n".to_owned(),
    ];

    // The sink counts sequence numbers; the source sends 6000 datagrams,
    // one every 0.5 ms, while the rules are reloaded 60 times.
    const COUNT: usize = 6000;
    let sink_log = router.dir.join("sink.log");
    let sink = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)\ns.bind(({gw:?}, 7400))\n\
         s.settimeout(5)\nseen = set()\nprint('ready', flush=True)\n\
         try:\n    while len(seen) < {COUNT}:\n        seen.add(int(s.recv(64)))\nexcept OSError: pass\n\
         print(len(seen), flush=True)\n"
    );
    let _sink = KillOnDrop::spawn(
        Command::new(PYTHON)
            .args(["-c", &sink])
            .stdout(std::fs::File::create(&sink_log).unwrap()),
    );
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&sink_log).is_ok_and(|t| t.contains("ready"))
    }));
    let source = format!(
        "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range({COUNT}):\n    s.sendto(str(i).encode(), ({gw:?}, 7400))\n    time.sleep(0.0005)\n"
    );
    let mut sender = KillOnDrop::spawn(v.ns.command(PYTHON).args(["-c", &source]));
    let socket = router.socket.to_str().unwrap().to_owned();
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..60 {
        let file = &files[i % 3];
        std::fs::write(&router.rules_path, file).unwrap();
        let ok = router
            .cli(&["reload", "--socket", &socket])
            .status
            .success();
        assert_eq!(ok, i % 3 != 2, "reload {i}");
        if ok {
            valid += 1;
        } else {
            invalid += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sender.0.wait().unwrap().success());
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&sink_log).is_ok_and(|t| t.lines().count() >= 2)
    }));
    let received = std::fs::read_to_string(&sink_log).unwrap();
    assert_eq!(
        received.lines().nth(1),
        Some(COUNT.to_string().as_str()),
        "allowed datagrams lost during reloads"
    );
    assert_eq!(router.dropped("alice", "firewall"), 0.0);
    assert_eq!(
        router.metric("vassal_rules_reloads_total", ""),
        valid as f64
    );
    assert_eq!(
        router.metric("vassal_rules_reload_failures_total", ""),
        invalid as f64
    );
    // The last valid file (the one denying port 25) is in force.
    let probe = format!(
        "import socket\ns = socket.socket(); s.settimeout(0.5)\ntry: s.connect(({gw:?}, 25))\nexcept OSError: pass\n"
    );
    v.ns.command(PYTHON).args(["-c", &probe]).status().unwrap();
    assert!(wait_until(Duration::from_secs(3), || router
        .dropped("alice", "firewall")
        >= 1.0));
}
