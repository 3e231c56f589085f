//! A launched vassal on the real router: it reaches the host, keeps its
//! network across a router restart, and `enter` gives a real pty inside.

use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::Duration;
use vassal_tests::launcher_harness::{
    code, name, network_run_args, network_table, stderr, stdout, supervisor_pid, vassal_file,
    Launched, TempDir,
};
use vassal_tests::router_harness::{TestRouter, PYTHON};
use vassal_tests::{binary, wait_until, KillOnDrop};

const OPEN_RULES: &str = "[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n";

/// A TCP server in the host namespace on the router's gateway address that
/// answers every connection with "pong".
fn host_server(router: &TestRouter, port: u16) -> KillOnDrop {
    let script = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{}', {port}))\ns.listen(64)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'pong')\n    c.close()\n",
        router.gateway()
    );
    let server = KillOnDrop::spawn(Command::new(PYTHON).args(["-c", &script]));
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect((router.gateway(), port)).is_ok()
    }));
    server
}

fn launch_args(router: &TestRouter, n: &str, host: u8) -> Vec<String> {
    network_run_args(n, &router.socket, router.addr(host))
}

#[test]
fn launcher_vassal_reaches_the_host_through_the_router() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let _server = host_server(&router, 7101);
    let n = name("ln");
    let mut args = launch_args(&router, &n, 2);
    let script = format!(
        "import socket\nc = socket.create_connection(('{}', 7101), timeout=5)\nprint(c.recv(4).decode())\nimport subprocess\nprint(open('/proc/net/route').read().splitlines()[1].split()[0])",
        router.gateway()
    );
    args.extend(["--".into(), PYTHON.into(), "-c".into(), script]);
    let out = Command::new(binary("vassal-launch"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), router.log_text());
    assert_eq!(stdout(&out), "pong\nvx0\n");
    // The router counted it for this project.
    assert!(router.metric("vassal_tx_packets_total", &format!("project=\"{n}\"")) >= 3.0);
    assert!(router.metric("vassal_rx_bytes_total", &format!("project=\"{n}\"")) > 0.0);
    assert_eq!(
        router.dropped(&n, "spoofed"),
        0.0,
        "IPv6 chatter must not count as spoofing"
    );
}

#[test]
fn launcher_vassal_survives_a_router_restart() {
    let mut router = TestRouter::with_rules(OPEN_RULES);
    let _server = host_server(&router, 7102);
    let n = name("ln");
    let mut args = launch_args(&router, &n, 3);
    // Connects every 0.2 s for 12 s and sums up: ok before the outage,
    // failures, ok after it.
    let script = format!(
        "import socket, time\nseen = []\nend = time.time() + 12\nwhile time.time() < end:\n    try:\n        socket.create_connection(('{}', 7102), timeout=0.3).recv(4)\n        seen.append('ok')\n    except OSError:\n        seen.append('fail')\n    time.sleep(0.2)\nfirst = seen.index('fail') if 'fail' in seen else len(seen)\nprint(first, seen.count('fail'), seen[first:].count('ok'))\n",
        router.gateway()
    );
    args.extend(["--".into(), PYTHON.into(), "-c".into(), script]);
    let vassal = Command::new(binary("vassal-launch"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let attached = format!("project=\"{n}\"");
    assert!(wait_until(Duration::from_secs(10), || router
        .metric("vassal_attached", &attached)
        == 1.0));
    // Its first connection done (SYN-ACK, pong, FIN, ACK: 4 packets in),
    // the second begun.
    assert!(wait_until(Duration::from_secs(10), || router
        .metric("vassal_rx_packets_total", &attached)
        >= 5.0));
    router.stop(Signal::SIGKILL);
    // The outage itself: long enough for an attempt (0.3 s timeout, 0.2 s
    // apart) to fail. A scenario's length, not a wait for readiness.
    std::thread::sleep(Duration::from_millis(500));
    router.spawn();
    assert!(
        wait_until(Duration::from_secs(8), || router
            .metric("vassal_attached", &attached)
            == 1.0),
        "not re-attached; router log:\n{}",
        router.log_text()
    );
    let out = vassal.wait_with_output().unwrap();
    let text = stdout(&out);
    let nums: Vec<u32> = text
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{text}{}", stderr(&out));
    assert!(nums[0] > 0, "no traffic before the restart: {text}");
    assert!(nums[1] > 0, "the restart went unnoticed: {text}");
    assert!(
        nums[2] > 0,
        "no traffic after the restart: {text}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("re-attached"), "{}", stderr(&out));
}

#[test]
fn launcher_enter_gives_a_shell_on_a_pty_inside_the_vassal() {
    let n = name("lx");
    let dir = TempDir::new();
    // Stopped with SIGTERM on drop: it cleans up its cgroup and state file.
    let _vassal = Launched::spawn(
        &n,
        &[
            "run",
            "--name",
            &n,
            "--uid",
            "47001",
            "--",
            "/bin/sleep",
            "60",
        ]
        .map(String::from),
        dir.0.join("stderr"),
    );
    assert!(wait_until(Duration::from_secs(5), || supervisor_pid(&n).is_some()));

    // Without a terminal: a command, its output relayed.
    let out = Command::new(binary("vassal-launch"))
        .args([
            "enter",
            &n,
            "--",
            "/bin/sh",
            "-c",
            "hostname; id -u; tty; ps -e -o pid=,comm= | head -3",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out).replace('\r', "");
    assert!(
        text.starts_with(&format!("{n}\n47001\n/dev/pts/")),
        "{text}"
    );
    assert!(
        text.contains("1 vassal-launch"),
        "pid 1 of the vassal is its supervisor: {text}"
    );

    // With a real terminal (tmux): an interactive shell.
    let session = name("tm");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let enter = format!("{} enter {n}", binary("vassal-launch").display());
    assert!(tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "20",
        &enter
    ])
    .status
    .success());
    // Keys typed before the shell reads its terminal can be flushed: wait
    // for its prompt.
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !pane().trim().is_empty()),
        "no prompt from the entered shell"
    );
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "echo inside-$(hostname)-$(id -u)",
        "Enter",
    ]);
    let seen = wait_until(Duration::from_secs(5), || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
            .contains(&format!("inside-{n}-47001"))
    });
    let screen =
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
    tmux(&["kill-server"]);
    assert!(seen, "{screen}");
}

#[test]
fn launcher_refusals_by_the_router_are_clear_and_leave_nothing() {
    let router = TestRouter::with_rules(OPEN_RULES);
    // Outside the router's subnet.
    let n = name("lr");
    let mut args = network_run_args(&n, &router.socket, "192.0.2.7".parse().unwrap());
    args.extend(["--".into(), "/bin/true".into()]);
    let out = Command::new(binary("vassal-launch"))
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("refused the vassal (address_outside_subnet)"),
        "{}",
        stderr(&out)
    );
    assert!(vassal_tests::launcher_harness::leftovers(&n).is_empty());
    // A vassal file naming another gateway: the wrong router.
    let dir = TempDir::new();
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/true"],
        &format!(
            "{}gateway = \"192.0.2.1\"\n",
            network_table(&router.socket, router.addr(9))
        ),
    );
    let out = Command::new(binary("vassal-launch"))
        .args(["run", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "has gateway {}, but the vassal file says network.gateway = 192.0.2.1",
            router.gateway()
        )),
        "{err}"
    );
}

#[test]
fn launcher_events_reach_the_router_promptly_as_counters() {
    let router = TestRouter::with_rules(OPEN_RULES);
    let dir = TempDir::new();
    let n = name("le");
    // A worker killed for memory while the vassal goes on, forks refused by
    // the pids limit, then (after a pause that outlasts the once-a-second
    // check) the command itself killed by seccomp.
    let script = "/usr/bin/python3 -c 'bytearray(512 << 20)'; \
                  (for i in $(seq 20); do sleep 30 & done) 2>/dev/null; \
                  sleep 6; \
                  exec /usr/bin/python3 -c 'import ctypes; ctypes.CDLL(None).syscall(250, 0, 0, 0, 0, 0)'";
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/sh", "-c", script],
        &format!(
            "{}[limits]\nmemory = \"64M\"\npids = 10\n",
            network_table(&router.socket, router.addr(2))
        ),
    );
    let mut vassal = Command::new(binary("vassal-launch"))
        .args(["run", "--config", file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let counted = |event: &str| router.metric("vassal_events_total", &format!("event=\"{event}\""));
    // Promptly: while the vassal still runs.
    assert!(
        wait_until(Duration::from_secs(5), || counted("oom_kill") >= 1.0
            && counted("pids_limit") >= 1.0),
        "{}",
        router.log_text()
    );
    assert!(
        vassal.try_wait().unwrap().is_none(),
        "reported only at the end"
    );
    let out = vassal.wait_with_output().unwrap();
    assert_eq!(code(&out), 128 + libc::SIGSYS, "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(3), || counted(
        "seccomp_kill"
    ) >= 1.0));
    // The router's sink names the project; the launcher's stderr has them too.
    let log = router.log_text();
    for event in ["oom_kill", "pids_limit", "seccomp_kill"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"event\":\"{event}\""))
                    && l.contains(&format!("\"project\":\"{n}\""))
                    && l.contains("\"source\":\"vassal-launch\"")),
            "{event} missing from the router's sink:\n{log}"
        );
        assert!(stderr(&out).contains(&format!("\"event\":\"{event}\"")));
    }
}

/// A router that accepts the re-attach but never answers (wedged, or a
/// stale process holding the socket) must not hold the launcher: while it
/// waits for the hello's answer it forwards no signal, so the wait is
/// bounded and an operator's SIGTERM still stops the vassal promptly.
#[test]
fn launcher_forwards_signals_while_the_router_is_wedged() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let mut router = TestRouter::with_rules(OPEN_RULES);
    let n = name("lw");
    let mut args = launch_args(&router, &n, 4);
    args.extend(["--".into(), "/bin/sleep".into(), "1000".into()]);
    let mut vassal = Launched::spawn(&n, &args, router.dir.join("wedged.stderr"));
    let attached = format!("project=\"{n}\"");
    assert!(wait_until(Duration::from_secs(10), || router
        .metric("vassal_attached", &attached)
        == 1.0));
    router.stop(Signal::SIGKILL);
    // The wedged "router": listens, never accepts, never answers.
    let _ = std::fs::remove_file(&router.socket);
    let wedged = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&wedged),
        &nix::sys::socket::UnixAddr::new(&router.socket).unwrap(),
    )
    .unwrap();
    listen(&wedged, Backlog::new(16).unwrap()).unwrap();
    // A pending connection makes the listener readable: the launcher is
    // now waiting for an answer that never comes.
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&wedged),
        PollFlags::POLLIN,
    )];
    assert_eq!(
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap(),
        1,
        "the launcher never tried to re-attach:\n{}",
        vassal.stderr()
    );
    let status = vassal.stop(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "SIGTERM was not forwarded within 5 s while the router was wedged:\n{}",
        vassal.stderr()
    );
    assert!(
        vassal.stderr().contains("re-attaching"),
        "{}",
        vassal.stderr()
    );
}
