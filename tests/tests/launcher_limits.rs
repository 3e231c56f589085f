//! Limits hold, are reported, and failures leave nothing behind.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use vassal_tests::launcher_harness::{
    code, launch, leftovers, name, report, spawn_until_line, stderr, stdout, vassal_file, TempDir,
};

/// A vassal file running `sh -c command` under `[limits]` `limits`.
fn vassal(dir: &TempDir, name: &str, command: &str, limits: &str) -> std::path::PathBuf {
    vassal_file(
        dir,
        name,
        &["/bin/sh", "-c", command],
        &format!("[limits]\n{limits}\n"),
    )
}

/// Runs the vassal file with `--report` and returns the output and report.
fn run_reported(
    dir: &TempDir,
    file: &std::path::Path,
) -> (std::process::Output, serde_json::Value) {
    let rep = dir.0.join("report.json");
    let out = launch(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    let r = report(&rep);
    (out, r)
}

#[test]
fn launcher_memory_limit_kills_and_is_reported() {
    let dir = TempDir::new();
    let n = name("lm");
    let file = vassal(
        &dir,
        &n,
        "exec /usr/bin/python3 -c 'x = bytearray(512 << 20); print(len(x))'",
        "memory = \"64M\"",
    );
    let (out, r) = run_reported(&dir, &file);
    assert_eq!(code(&out), 128 + 9, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "memory", "{r}");
    assert!(r["oom_kills"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 64 << 20, "{r}");
    assert!(
        stderr(&out).contains(r#""event":"memory_kill""#),
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn launcher_pids_limit_refuses_forks_and_counts_the_hits() {
    let dir = TempDir::new();
    let n = name("lp");
    // The shell gives up at the first refused fork ("Cannot fork").
    let file = vassal(
        &dir,
        &n,
        "for i in $(seq 40); do sleep 2 & done; wait",
        "pids = 10",
    );
    let (out, r) = run_reported(&dir, &file);
    assert_ne!(
        code(&out),
        0,
        "40 processes fit under pids = 10: {}",
        stderr(&out)
    );
    assert!(r["pids_limit_hits"].as_u64().unwrap() > 0, "{r}");
    assert!(stderr(&out).contains(r#""event":"pids_limit""#));
}

#[test]
fn launcher_wall_clock_limit_stops_the_vassal() {
    let dir = TempDir::new();
    let n = name("lc");
    let file = vassal(&dir, &n, "sleep 60", "wall_clock = \"1s\"");
    let (out, r) = run_reported(&dir, &file);
    assert_eq!(code(&out), 128 + 15, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "wall_clock", "{r}");
    assert!(r["wall_time_ms"].as_u64().unwrap() >= 1000, "{r}");
}

#[test]
fn launcher_wall_clock_kills_what_ignores_sigterm() {
    let dir = TempDir::new();
    let n = name("lc");
    let file = vassal(
        &dir,
        &n,
        "trap '' TERM; while :; do sleep 1; done",
        "wall_clock = \"1s\"",
    );
    let (out, r) = run_reported(&dir, &file);
    assert_eq!(code(&out), 128 + 9, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "wall_clock");
}

#[test]
fn launcher_seccomp_kills_a_denied_call() {
    let dir = TempDir::new();
    let rep = dir.0.join("report.json");
    let n = name("lk");
    let out = launch(&[
        "run",
        "--name",
        &n,
        "--uid",
        "47001",
        "--report",
        rep.to_str().unwrap(),
        "--",
        "/usr/bin/unshare",
        "-U",
        "true",
    ]);
    assert_eq!(code(&out), 128 + libc::SIGSYS, "{}", stderr(&out));
    assert_eq!(report(&rep)["killed_by"], "seccomp");
    // keyctl, through python: killed too.
    let out = launch(&[
        "run",
        "--name",
        &n,
        "--uid",
        "47001",
        "--",
        "/usr/bin/python3",
        "-c",
        "import ctypes; ctypes.CDLL(None).syscall(250, 0, 0, 0, 0, 0); print('survived')",
    ]);
    assert_eq!(
        code(&out),
        128 + libc::SIGSYS,
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // With the profile off the same call is merely refused by the kernel.
    let file = vassal_file(
        &dir,
        &n,
        &["/usr/bin/unshare", "-U", "true"],
        "[seccomp]\nprofile = \"none\"\n",
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert_ne!(code(&out), 128 + libc::SIGSYS);
}

#[test]
fn launcher_tmp_is_limited_to_its_size() {
    let dir = TempDir::new();
    let n = name("lt");
    let file = vassal(
        &dir,
        &n,
        "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>&1; ls -l /tmp/fill",
        "tmp_size = \"2M\"",
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        stdout(&out).contains("No space left on device"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn launcher_failure_before_exec_names_the_step_and_leaves_nothing() {
    let dir = TempDir::new();
    let n = name("lf");
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/true"],
        "[limits]\nmemory = \"64M\"\n[[mount]]\nsource = \"/no/such/dir\"\ntarget = \"/mnt\"\n",
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("binding a [[mount]] source: /no/such/dir does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
    // A refused network attach (no router there) leaves nothing either.
    let out = launch(&[
        "run",
        "--name",
        &n,
        "--uid",
        "47001",
        "--address",
        "10.200.0.2",
        "--router",
        "/nonexistent/router.sock",
        "--",
        "/bin/true",
    ]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("/nonexistent/router.sock"),
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
    assert!(!std::process::Command::new("ip")
        .args(["link", "show", "vx0"])
        .output()
        .unwrap()
        .status
        .success());
}

#[test]
fn launcher_check_names_line_column_and_field() {
    let dir = TempDir::new();
    let good = dir.write(
        "good.toml",
        "name = \"alice\"\ncommand = [\"/bin/true\"]\nuid = 10001\n[limits]\nmemory = \"256M\"\n",
    );
    let out = launch(&["check", good.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));
    let bad = dir.write("bad.toml", "name = \"alice\"\ncommand = [\"/bin/true\"]\nuid = 10001\n[limits]\nmemory = \"lots\"\npids = 0\n");
    let out = launch(&["check", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(err.contains("bad.toml:5:10: limits.memory"), "{err}");
    assert!(
        err.contains("bad.toml:6:8: limits.pids: must be at least 1"),
        "{err}"
    );
    let typo = dir.write("typo.toml", "name = \"alice\"\ncomand = [\"/bin/true\"]\n");
    let err = stderr(&launch(&["check", typo.to_str().unwrap()]));
    assert!(
        err.contains("typo.toml:2:1: syntax: unknown field `comand`"),
        "{err}"
    );
}

#[test]
fn launcher_refuses_a_second_vassal_of_the_same_name() {
    let n = name("ld");
    let (mut first, line, _) = spawn_until_line(&[
        "run",
        "--name",
        &n,
        "--uid",
        "47001",
        "--",
        "/bin/sh",
        "-c",
        "echo up; sleep 30",
    ]);
    assert_eq!(line, "up\n");
    let out = launch(&["run", "--name", &n, "--uid", "47001", "--", "/bin/true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    // Stopped as an operator would, the first leaves nothing behind.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    first.0.wait().unwrap();
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}
