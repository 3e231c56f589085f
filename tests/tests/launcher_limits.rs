//! Limits hold, are reported, and failures leave nothing behind.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use vassal_tests::launcher_harness::{
    code, launch, leftovers, name, report, run_reported, sh, spawn_until_line, stderr, stdout,
    vassal_file, TempDir, PROJECT_UID,
};
use vassal_tests::KillOnDrop;

/// Runs a vassal named from `prefix` with `--report`: `sh -c command`
/// under `[limits]` `limits` (and whatever tables follow). Returns its
/// name, the output and the report.
fn run_limited(
    prefix: &str,
    command: &str,
    limits: &str,
) -> (String, std::process::Output, serde_json::Value) {
    let dir = TempDir::new();
    let n = name(prefix);
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/sh", "-c", command],
        &format!("[limits]\n{limits}\n"),
    );
    let (out, r) = run_reported(&dir, &file);
    (n, out, r)
}

/// Runs a vassal that allocates 512 MiB under `memory = "64M"` and
/// `rest` (more tables): it is killed for memory and reported exactly so.
fn check_killed_for_memory(prefix: &str, rest: &str) {
    let (n, out, r) = run_limited(
        prefix,
        "exec /usr/bin/python3 -c 'x = bytearray(512 << 20); print(len(x))'",
        &format!("memory = \"64M\"\n{rest}"),
    );
    assert_eq!(code(&out), 128 + 9, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "memory", "{r}");
    assert_eq!(r["oom_kills"], 1, "{r}");
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 64 << 20, "{r}");
    // The command's own kill is a memory_kill, not also an oom_kill.
    assert_eq!(
        events(&out),
        [("memory_kill".into(), 1)],
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn launcher_memory_limit_kills_and_is_reported() {
    check_killed_for_memory("lm", "");
}

#[test]
fn launcher_worker_killed_for_memory_is_an_oom_kill_only() {
    let (n, out, r) = run_limited(
        "lo",
        "/usr/bin/python3 -c 'x = bytearray(512 << 20)'; echo $?",
        "memory = \"64M\"",
    );
    // The worker died; the command went on and ended well.
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "137\n");
    assert_eq!(r["killed_by"], serde_json::Value::Null, "{r}");
    assert_eq!(r["oom_kills"], 1, "{r}");
    assert_eq!(events(&out), [("oom_kill".into(), 1)], "{}", stderr(&out));
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

/// The event lines (`{"event":..,"count":..}`) on the launcher's stderr.
fn events(out: &std::process::Output) -> Vec<(String, u64)> {
    stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["event"].as_str()?.to_owned(), v["count"].as_u64()?)))
        .collect()
}

/// The vassal's cgroup files on this host's hierarchy: (`memory`, `pids`,
/// `cpu` limit files) under cgroup v2 or v1. `VASSAL_EXPECT_CGROUP=v2` (set
/// by the cgroup v2 guest, tests/vm/) makes anything but v2 a failure.
fn limit_files(name: &str) -> [std::path::PathBuf; 3] {
    let v2 = std::path::Path::new("/sys/fs/cgroup/vassal").join(name);
    if v2.join("cgroup.controllers").exists() {
        return [
            v2.join("memory.max"),
            v2.join("pids.max"),
            v2.join("cpu.max"),
        ];
    }
    assert_ne!(
        std::env::var("VASSAL_EXPECT_CGROUP").as_deref(),
        Ok("v2"),
        "{} is not a cgroup v2 directory",
        v2.display()
    );
    let v1 = |controller: &str, file: &str| {
        std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("vassal")
            .join(name)
            .join(file)
    };
    [
        v1("memory", "memory.limit_in_bytes"),
        v1("pids", "pids.max"),
        v1("cpu", "cpu.cfs_quota_us"),
    ]
}

/// Starts a vassal file that prints "up" and sleeps, then checks its
/// cgroup holds `limits` (memory 64M, pids 32, cpu 0.5) and is removed
/// when the vassal is stopped.
fn check_limits_written(rest: &str) {
    let dir = TempDir::new();
    let n = name("lw");
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/sh", "-c", "echo up; exec sleep 60"],
        &format!("[limits]\nmemory = \"64M\"\npids = 32\ncpu = 0.5\n{rest}"),
    );
    let (vassal, line, _) = spawn_until_line(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(line, "up\n");
    let [memory, pids, cpu] = limit_files(&n);
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_owned()
    };
    assert_eq!(read(&memory), (64u64 << 20).to_string());
    assert_eq!(read(&pids), "32");
    let cpu = read(&cpu);
    assert!(cpu == "50000 100000" || cpu == "50000", "cpu limit {cpu}");
    stop_and_check_leftovers(vassal, &n);
}

/// The launch was refused before the command ran (exit 125), saying `says`.
fn assert_refused(out: &std::process::Output, says: &str) {
    assert_eq!(code(out), 125, "{}", stderr(out));
    assert!(stderr(out).contains(says), "{}", stderr(out));
}

/// Stops a running vassal as an operator would (SIGTERM), which leaves
/// nothing behind.
fn stop_and_check_leftovers(mut vassal: KillOnDrop, name: &str) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vassal.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    vassal.0.wait().unwrap();
    assert!(leftovers(name).is_empty(), "{:?}", leftovers(name));
}

#[test]
fn launcher_limits_are_written_to_the_cgroup_and_removed_after() {
    check_limits_written("");
}

#[test]
fn launcher_user_namespace_vassal_is_limited_too() {
    let userns = "[user_namespace]\nuid_map = \"0:200000:65536\"\ngid_map = \"0:200000:65536\"\n";
    check_limits_written(userns);
    // And its limits hold: killed for memory, reported exactly.
    check_killed_for_memory("lu", userns);
}

#[test]
fn launcher_cpu_limit_throttles_to_its_share() {
    // Two busy loops for 3 s: up to 2 CPU-seconds a second unlimited.
    let (n, out, r) = run_limited(
        "lq",
        "busy() { while :; do :; done; }; \
         busy & a=$!; busy & b=$!; sleep 3; kill $a $b; wait",
        "cpu = 0.5",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let cpu_ms = r["cpu_time_ms"].as_u64().unwrap() as f64;
    let wall_ms = r["wall_time_ms"].as_u64().unwrap() as f64;
    // About half a CPU over the vassal's life (a little slack for the last
    // period), and enough to show the loops ran (the wall time includes the
    // launch, slow in an emulated guest).
    assert!((0.1..=0.6).contains(&(cpu_ms / wall_ms)), "{r}");
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn launcher_pids_limit_refuses_forks_and_counts_the_hits() {
    // The shell gives up at the first refused fork ("Cannot fork").
    let (n, out, r) = run_limited(
        "lp",
        "for i in $(seq 40); do sleep 2 & done; wait",
        "pids = 10",
    );
    assert_ne!(
        code(&out),
        0,
        "40 processes fit under pids = 10: {}",
        stderr(&out)
    );
    let hits = r["pids_limit_hits"].as_u64().unwrap();
    assert!(hits > 0, "{r}");
    assert_eq!(
        events(&out),
        [("pids_limit".into(), hits)],
        "{}",
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn launcher_wall_clock_limit_stops_the_vassal() {
    let (_, out, r) = run_limited("lc", "sleep 60", "wall_clock = \"1s\"");
    assert_eq!(code(&out), 128 + 15, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "wall_clock", "{r}");
    assert!(r["wall_time_ms"].as_u64().unwrap() >= 1000, "{r}");
}

#[test]
fn launcher_wall_clock_kills_what_ignores_sigterm() {
    let (_, out, r) = run_limited(
        "lc",
        "trap '' TERM; while :; do sleep 1; done",
        "wall_clock = \"1s\"",
    );
    assert_eq!(code(&out), 128 + 9, "{}", stderr(&out));
    assert_eq!(r["killed_by"], "wall_clock");
}

#[test]
fn launcher_seccomp_kills_a_denied_call() {
    let dir = TempDir::new();
    let rep = dir.0.join("report.json");
    let n = name("lk");
    let out = sh(
        &n,
        &["--report", rep.to_str().unwrap()],
        "exec /usr/bin/unshare -U true",
    );
    assert_eq!(code(&out), 128 + libc::SIGSYS, "{}", stderr(&out));
    assert_eq!(report(&rep)["killed_by"], "seccomp");
    // keyctl, through python: killed too.
    let out = sh(
        &n,
        &[],
        "exec /usr/bin/python3 -c \
         \"import ctypes; ctypes.CDLL(None).syscall(250, 0, 0, 0, 0, 0); print('survived')\"",
    );
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
    let (_, out, _) = run_limited(
        "lt",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>&1; ls -l /tmp/fill",
        "tmp_size = \"2M\"",
    );
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
    assert_refused(
        &out,
        "binding a [[mount]] source: /no/such/dir does not exist",
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
    // A refused network attach (no router there) leaves nothing either.
    let no_router = [
        "--address",
        "10.200.0.2",
        "--router",
        "/nonexistent/router.sock",
    ];
    assert_refused(&sh(&n, &no_router, "true"), "/nonexistent/router.sock");
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
    let uid = PROJECT_UID.to_string();
    let (first, line, _) = spawn_until_line(&[
        "run",
        "--name",
        &n,
        "--uid",
        &uid,
        "--",
        "/bin/sh",
        "-c",
        "echo up; sleep 30",
    ]);
    assert_eq!(line, "up\n");
    assert_refused(&sh(&n, &[], "true"), "already running");
    stop_and_check_leftovers(first, &n);
}
