//! Hostile tenants: what one vassal does stays its own problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_attach::{RefuseReason, Response};
use vassal_tests::launcher_harness::{
    code, launch, leftovers, name, pids_limit_hits, report, stderr, stdout, vassal_file, TempDir,
};
use vassal_tests::router_harness::{RouterSpec, TestRouter, TestVassal, PYTHON};
use vassal_tests::KillOnDrop;

fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Attaches, then detaches; retries while the router has not yet seen the
/// previous connection close (the holder keeps an address until then).
fn cycle(v: &mut TestVassal, router: &TestRouter) {
    loop {
        match v.hello(router) {
            Response::Accepted { .. } => break,
            Response::Refused {
                reason: RefuseReason::AddressInUse,
                ..
            } => std::thread::sleep(Duration::from_micros(200)),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    v.detach();
}

#[test]
fn abuse_ten_thousand_attach_detach_cycles_leak_nothing() {
    let router = TestRouter::start(&RouterSpec::default());
    let pid = router.child.as_ref().unwrap().pid();
    let mut v = TestVassal::create(&router, "churn", 2, false);
    // The idle router's descriptors: every attachment's are gone once its
    // detach has landed.
    let fds = fds_of(pid);
    for _ in 0..500 {
        cycle(&mut v, &router);
    }
    assert!(
        vassal_tests::wait_until(Duration::from_secs(5), || fds_of(pid) <= fds),
        "file descriptors leaked over the first 500 cycles"
    );
    let rss = rss_kib(pid);
    for _ in 0..10_000 {
        cycle(&mut v, &router);
    }
    // Let the last detach land.
    assert!(vassal_tests::wait_until(Duration::from_secs(5), || fds_of(
        pid
    )
        <= fds));
    assert_eq!(fds_of(pid), fds, "file descriptors leaked");
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 4096,
        "router RSS grew by {grown} KiB over 10 000 cycles"
    );
    // And it still works.
    let v = TestVassal::attach(&router, "after", 3);
    assert!(v.ns.try_exec(&["true"]));
    assert_eq!(router.metric("vassal_attached", "project=\"churn\""), 0.0);
}

#[test]
fn abuse_fork_bomb_stays_inside_its_vassal() {
    let dir = TempDir::new();
    let bomb = name("ab");
    let file = vassal_file(
        &dir,
        &bomb,
        &["/bin/sh", "-c", "b() { b | b & }; b; sleep 10"],
        "[limits]\npids = 64\nwall_clock = \"3s\"\n",
    );
    let rep = dir.0.join("bomb.json");
    let bombing = KillOnDrop::spawn(
        Command::new(vassal_tests::binary("vassal-launch"))
            .args([
                "run",
                "--config",
                file.to_str().unwrap(),
                "--report",
                rep.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // Once the bomb hits its limit, a neighbour starts, forks and finishes
    // normally.
    assert!(
        vassal_tests::wait_until(Duration::from_secs(10), || pids_limit_hits(&bomb) > 0),
        "the fork bomb never reached its pids limit"
    );
    let out = launch(&[
        "run",
        "--name",
        &name("an"),
        "--uid",
        "47002",
        "--",
        "/bin/sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do /bin/true & done; wait; echo calm",
    ]);
    assert_eq!(stdout(&out), "calm\n", "{}", stderr(&out));
    let mut bombing = bombing;
    let status = bombing.0.wait().unwrap();
    assert!(!status.success());
    let r = report(&rep);
    assert!(r["pids_limit_hits"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["killed_by"], "wall_clock", "{r}");
    assert!(leftovers(&bomb).is_empty(), "{:?}", leftovers(&bomb));
}

#[test]
fn abuse_fd_exhaustion_stops_at_the_vassals_own_limit() {
    let dir = TempDir::new();
    let file = vassal_file(
        &dir,
        &name("af"),
        &[
            PYTHON,
            "-c",
            "import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', 0))\nexcept OSError as e: print(len(fds), e.errno)",
        ],
        "[limits]\nnofile = 64\n",
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let nums: Vec<u32> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert!(nums[0] <= 64 && nums[0] > 50, "{text}");
    assert_eq!(nums[1], libc::EMFILE as u32);
}

#[test]
fn abuse_a_flooding_vassal_does_not_starve_its_neighbour() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n".into()),
        ..Default::default()
    });
    let flooder = TestVassal::attach(&router, "flood", 2);
    let neighbour = TestVassal::attach(&router, "calm", 3);
    let gw = router.gateway().to_string();
    let _server = KillOnDrop::spawn(
        Command::new("iperf3")
            .args(["-s", "-B", &gw, "-p", "5299"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    assert!(vassal_tests::wait_until(Duration::from_secs(5), || {
        vassal_tests::tcp_listening(5299)
    }));
    let flood = KillOnDrop::spawn(
        flooder
            .ns
            .command("iperf3")
            .args([
                "-c", &gw, "-p", "5299", "-u", "-b", "0", "-l", "1400", "-t", "6",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // 20 pings at 0.1 s during the flood (once it is under way): nearly all
    // must come back.
    assert!(vassal_tests::wait_until(Duration::from_secs(5), || {
        router.metric("vassal_tx_packets_total", "project=\"flood\"") > 5_000.0
    }));
    let out = neighbour
        .ns
        .command("ping")
        .args(["-n", "-q", "-c", "20", "-i", "0.1", "-W", "1", &gw])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received: u32 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" received"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    drop(flood);
    assert!(
        received >= 18,
        "the neighbour got {received}/20 pings through:\n{text}"
    );
    // The flood did reach the router: it is not the neighbour's luck.
    assert!(router.metric("vassal_tx_packets_total", "project=\"flood\"") > 10_000.0);
}

#[test]
fn abuse_two_vassals_streaming_at_full_speed_share_the_router() {
    let router = TestRouter::start(&RouterSpec {
        rules: Some("[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n".into()),
        ..Default::default()
    });
    let a = TestVassal::attach(&router, "greedy", 2);
    let b = TestVassal::attach(&router, "other", 3);
    let gw = router.gateway().to_string();
    let _servers: Vec<KillOnDrop> = ["5297", "5298"]
        .iter()
        .map(|port| {
            KillOnDrop::spawn(
                Command::new("iperf3")
                    .args(["-s", "-B", &gw, "-p", port])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    assert!(vassal_tests::wait_until(Duration::from_secs(5), || {
        vassal_tests::tcp_listening(5297) && vassal_tests::tcp_listening(5298)
    }));
    // Both send TCP as fast as they can, at the same time, for 4 s.
    let clients: Vec<KillOnDrop> = [(&a, "5297"), (&b, "5298")]
        .iter()
        .map(|(v, port)| {
            KillOnDrop::spawn(
                v.ns.command("iperf3")
                    .args(["-c", &gw, "-p", port, "-t", "4"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        })
        .collect();
    for mut c in clients {
        assert!(c.0.wait().unwrap().success(), "an iperf3 client failed");
    }
    let sent = |p: &str| router.metric("vassal_tx_bytes_total", &format!("project=\"{p}\""));
    let (x, y) = (sent("greedy"), sent("other"));
    assert!(x > 10e6 && y > 10e6, "both moved data: {x} and {y} bytes");
    let share = x.min(y) / (x + y);
    eprintln!("fair share: {x} and {y} bytes ({:.0}%)", 100.0 * share);
    assert!(
        share >= 0.25,
        "one vassal took {:.0}% of the router",
        100.0 * (1.0 - share)
    );
}
