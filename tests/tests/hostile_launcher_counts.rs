//! A hostile tenant against what the kernel counts and charges outside the
//! vassal: per-user counts (inotify, POSIX message queues) charged to the
//! owner of its user namespace, a uid shared by two projects, socket
//! buffers no cgroup pays for, and what a killed launcher leaves behind.
//! Each attack runs from inside a real vassal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;
use vassal_tests::launcher_harness::{
    code, launch, leftovers, name, sh, spawn_until_line, stderr, stdout, supervisor_pid,
    vassal_file, TempDir, PROJECT_UID,
};
use vassal_tests::wait_until;

/// The tests of this file run one at a time: every launch reaps dead
/// launchers' leftovers, so a launch in one test would reap what the gc
/// test is about to show `gc` removing.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens inotify instances and POSIX message queues until the kernel says
/// no, prints how many it holds, then keeps them.
const HOARD: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while n < 100000 and libc.inotify_init1(0) >= 0:
    n += 1
m = 0
while m < 10000 and libc.mq_open(b"/hoard%d" % m, os.O_CREAT | os.O_RDWR, 0o600, None) >= 0:
    m += 1
print("held", n, m, flush=True)
time.sleep(600)
"#;

/// Opens one inotify instance and one message queue; prints whether each
/// worked.
const ONE_EACH: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
i = libc.inotify_init1(0)
ie = ctypes.get_errno()
q = libc.mq_open(b"/one", os.O_CREAT | os.O_RDWR, 0o600, None)
qe = ctypes.get_errno()
print("inotify", i >= 0, os.strerror(ie) if i < 0 else "", "mqueue", q >= 0, os.strerror(qe) if q < 0 else "")
"#;

fn userns_file(dir: &TempDir, n: &str, host_base: u32, script: &str) -> PathBuf {
    vassal_file(
        dir,
        n,
        &["/usr/bin/python3", "-c", script],
        &format!(
            "[limits]\nnofile = 4096\n[user_namespace]\nuid_map = \"0:{host_base}:65536\"\ngid_map = \"0:{host_base}:65536\"\n"
        ),
    )
}

/// Host root opens an inotify instance and a message queue, as the test
/// process (root in the host's namespaces); the errors when it cannot.
fn host_root_probe() -> Result<(), String> {
    // SAFETY: inotify_init1 with no flags; the fd is closed below.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "host root's inotify_init1: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
    let qname = std::ffi::CString::new(format!("/vassal-probe-{}", std::process::id())).unwrap();
    // SAFETY: a NUL-terminated name, default attributes (NULL).
    let q = unsafe {
        libc::mq_open(
            qname.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600 as libc::mode_t,
            std::ptr::null_mut::<libc::mq_attr>(),
        )
    };
    if q < 0 {
        return Err(format!(
            "host root's mq_open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: closing and unlinking the queue just made.
    unsafe {
        libc::mq_close(q);
        libc::mq_unlink(qname.as_ptr());
    }
    Ok(())
}

#[test]
fn counts_a_user_namespace_charges_its_own_host_uid_not_root() {
    let _serial = serial();
    let dir = TempDir::new();
    let hoarder = name("kc");
    let file = userns_file(&dir, &hoarder, 3_100_000, HOARD);
    let config = file.display().to_string();
    let (_running, line, _rest) = spawn_until_line(&["run", "--config", &config]);
    let held: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    let max_instances: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // It got what one user may have, no more.
    assert!(
        line.starts_with("held") && held[0] > 0 && held[0] <= max_instances && held[1] > 0,
        "{line}"
    );

    // While it holds them, host root still opens its own...
    host_root_probe().unwrap_or_else(|e| panic!("{e} while vassal {hoarder} holds {line}"));
    // ...and so does a vassal of another project (another host uid).
    let dir2 = TempDir::new();
    let other = name("kc");
    let file2 = userns_file(&dir2, &other, 3_200_000, ONE_EACH);
    let out = launch(&["run", "--config", &file2.display().to_string()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "inotify True  mqueue True",
        "vassal {other} while {hoarder} holds {line}"
    );

    // The namespace is owned by the vassal's host uid (base + its uid),
    // and its own limits are the host's, not unlimited.
    let pid = supervisor_pid(&hoarder).unwrap();
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/user")).unwrap();
    let mut owner: libc::uid_t = u32::MAX;
    const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t to the pointer given.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&ns),
            NS_GET_OWNER_UID,
            &mut owner as *mut libc::uid_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(owner, 3_100_000 + PROJECT_UID);
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-U", "--preserve-credentials", "--"])
        .args(["cat", "/proc/sys/user/max_inotify_instances"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        max_instances.to_string(),
        "{out:?}"
    );
}

#[test]
fn counts_a_uid_shared_with_a_live_vassal_of_another_name_is_warned_about() {
    let _serial = serial();
    let first = name("ku");
    let uid = (PROJECT_UID + 11).to_string();
    let (_running, line, _rest) = spawn_until_line(&[
        "run",
        "--name",
        &first,
        "--uid",
        &uid,
        "--",
        "/bin/sh",
        "-c",
        "echo up; exec sleep 600",
    ]);
    assert_eq!(line.trim(), "up");

    let second = name("ku");
    let out = launch(&["run", "--name", &second, "--uid", &uid, "--", "/bin/true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{second}: warning: host uid {uid} is also the uid of running vassal {first}"
        )) && err.contains("give each project a uid of its own"),
        "{err}"
    );

    // Another uid: no warning.
    let third = name("ku");
    let other_uid = (PROJECT_UID + 12).to_string();
    let out = launch(&[
        "run",
        "--name",
        &third,
        "--uid",
        &other_uid,
        "--",
        "/bin/true",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

/// The memory cgroup directory of vassal `n` (cgroup v1 on this machine,
/// the unified one otherwise).
fn memory_cgroup(n: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory/vassal").join(n);
    if Path::new("/sys/fs/cgroup/memory").exists() {
        v1
    } else {
        Path::new("/sys/fs/cgroup/vassal").join(n)
    }
}

/// Starts a vassal that stays up (with a user namespace when `userns`).
fn stays_up(n: &str, userns: bool) -> vassal_tests::KillOnDrop {
    let dir = TempDir::new();
    let rest = if userns {
        "[user_namespace]\nuid_map = \"0:3300000:65536\"\ngid_map = \"0:3300000:65536\"\n"
    } else {
        ""
    };
    let file = vassal_file(&dir, n, &["/bin/sh", "-c", "echo up; exec sleep 600"], rest);
    let (running, line, _rest) =
        spawn_until_line(&["run", "--config", &file.display().to_string()]);
    assert_eq!(line.trim(), "up");
    running
}

/// SIGKILLs a vassal's launcher and waits for the vassal to die with it
/// (PDEATHSIG) and its cgroup to empty; returns the leftovers (canonical
/// paths), which the kill leaves.
fn kill_launcher(mut running: vassal_tests::KillOnDrop, n: &str) -> Vec<PathBuf> {
    running.0.kill().unwrap();
    running.0.wait().unwrap();
    let procs = memory_cgroup(n).join("cgroup.procs");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&procs)
            .is_ok_and(|p| p.trim().is_empty())),
        "vassal {n} outlived its SIGKILLed launcher: {procs:?} holds {:?}",
        std::fs::read_to_string(&procs)
    );
    let mut left: Vec<PathBuf> = leftovers(n)
        .iter()
        .map(|p| p.canonicalize().unwrap())
        .collect();
    left.sort();
    left.dedup();
    assert!(
        left.iter()
            .any(|p| p.extension().is_some_and(|e| e == "json"))
            && left.len() > 1,
        "{left:?}"
    );
    left
}

/// A live vassal's state file and cgroup, to check nothing of it is reaped.
fn live_vassal() -> (vassal_tests::KillOnDrop, String, String, Vec<PathBuf>) {
    let n = name("kl");
    let (running, line, _rest) = spawn_until_line(&[
        "run",
        "--name",
        &n,
        "--uid",
        &(PROJECT_UID + 13).to_string(),
        "--",
        "/bin/sh",
        "-c",
        "echo up; exec sleep 600",
    ]);
    assert_eq!(line.trim(), "up");
    assert!(wait_until(Duration::from_secs(5), || supervisor_pid(&n).is_some()));
    let state = std::fs::read_to_string(format!("/run/vassal/launch/{n}.json")).unwrap();
    let left = leftovers(&n);
    (running, n, state, left)
}

fn assert_untouched(n: &str, state: &str, dirs: &[PathBuf]) {
    assert_eq!(
        std::fs::read_to_string(format!("/run/vassal/launch/{n}.json")).unwrap(),
        state
    );
    assert_eq!(leftovers(n), dirs);
    let procs = std::fs::read_to_string(memory_cgroup(n).join("cgroup.procs")).unwrap();
    assert!(!procs.trim().is_empty(), "live vassal {n} has no processes");
}

#[test]
fn gc_a_later_launch_of_another_name_reaps_a_killed_launchers_leftovers() {
    let _serial = serial();
    let (_live, live, live_state, live_dirs) = live_vassal();
    let dead = name("kk");
    kill_launcher(stays_up(&dead, false), &dead);
    let out = sh(&name("kk"), &[], "true");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(leftovers(&dead), Vec::<PathBuf>::new());
    assert_untouched(&live, &live_state, &live_dirs);
}

#[test]
fn gc_reaps_exactly_what_killed_launchers_left_and_says_so() {
    let _serial = serial();
    let (_live, live, live_state, live_dirs) = live_vassal();
    // One without a user namespace, one with (whose supervisor changes
    // its uid after setting its parent-death signal).
    let dead = [name("kg"), name("kg")];
    // Both up before either is killed: a launch reaps what is dead.
    let running = [stays_up(&dead[0], false), stays_up(&dead[1], true)];
    let mut expected = Vec::new();
    for (r, n) in running.into_iter().zip(&dead) {
        expected.extend(kill_launcher(r, n));
    }

    // A state file whose launcher pid runs but is another process (the pid
    // reused: a different start time) is dead too...
    let reused = name("kg");
    let reused_path = PathBuf::from(format!("/run/vassal/launch/{reused}.json"));
    let me = std::process::id();
    let record = |start: u64| {
        serde_json::json!({"name": reused, "pid": 0, "launcher_pid": me, "uid": PROJECT_UID,
            "gid": PROJECT_UID, "user_namespace": false, "nofile": 1024, "launcher_start": start, "seccomp": null})
        .to_string()
    };
    std::fs::write(&reused_path, record(1)).unwrap();
    expected.push(reused_path.clone());
    // ...while one whose pid and start time match a running process stays.
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let my_start: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let kept = name("kg");
    let kept_path = PathBuf::from(format!("/run/vassal/launch/{kept}.json"));
    std::fs::write(
        &kept_path,
        record(my_start).replace(&format!("\"{reused}\""), &format!("\"{kept}\"")),
    )
    .unwrap();

    // A record its launcher never finished writing (killed between the
    // write and the rename) goes too.
    let unfinished = name("kg");
    let unfinished_path = PathBuf::from(format!("/run/vassal/launch/{unfinished}.tmp"));
    std::fs::write(&unfinished_path, "{").unwrap();
    expected.push(unfinished_path.clone());

    let out = launch(&["gc"]);
    let _ = std::fs::remove_file(&kept_path);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut removed: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.strip_prefix("removed "))
        .filter_map(|l| l.split(' ').next())
        .map(PathBuf::from)
        .filter(|p| {
            [&dead[0], &dead[1], &reused, &kept, &live, &unfinished]
                .iter()
                .any(|n| p.file_stem().is_some_and(|s| s == n.as_str()))
        })
        .collect();
    removed.sort();
    expected.sort();
    assert_eq!(removed, expected, "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("gc: removed "),
        "{text}"
    );
    for n in &dead {
        assert_eq!(leftovers(n), Vec::<PathBuf>::new());
    }
    assert!(!reused_path.exists() && !unfinished_path.exists());
    assert_untouched(&live, &live_state, &live_dirs);
}

#[test]
fn counts_tcp_buffers_are_charged_to_the_vassals_memory_limit() {
    let _serial = serial();
    // Socket pairs on the vassal's own loopback, written to and never
    // read: the queued bytes are kernel memory. Under cgroup v1 they are
    // charged only once the launcher sets the cgroup's TCP limit (without
    // it this vassal queued 740 MiB); with it they stay within the limit,
    // plus what the kernel lets each socket force past it (about one send
    // buffer each), and beside the limit of the rest (v1 keeps TCP memory
    // in a counter of its own): under twice the limit.
    let script = r#"
import socket
total = 0
keep = []
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
for i in range(200):
    try:
        c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
    except OSError:
        break
    c.setblocking(False)
    keep += [c, a]
    while True:
        try:
            total += c.send(b"x" * 65536)
        except OSError:
            break
print(total // (1 << 20), flush=True)
"#;
    let dir = TempDir::new();
    let n = name("kt");
    let file = vassal_file(
        &dir,
        &n,
        &["/usr/bin/python3", "-c", script],
        "[limits]\nmemory = \"48M\"\nnofile = 4096\n",
    );
    let out = launch(&["run", "--config", &file.display().to_string()]);
    let queued: u64 = stdout(&out).trim().parse().unwrap_or_else(|_| {
        panic!("{}\n{}", stdout(&out), stderr(&out));
    });
    assert!(
        queued <= 96,
        "the vassal queued {queued} MiB in TCP buffers with a 48 MiB memory limit"
    );
}

#[test]
fn counts_filling_tmp_is_stopped_by_the_vassals_own_memory_limit() {
    let _serial = serial();
    // /tmp is a tmpfs: its pages are charged to the writer's memory cgroup,
    // so a /tmp larger than the memory limit fills only up to the limit
    // (the writer is refused or OOM-killed), not into the host's memory.
    let dir = TempDir::new();
    let n = name("kf");
    let file = vassal_file(
        &dir,
        &n,
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 160 ]; do dd if=/dev/zero of=/tmp/f$i bs=1M count=1 2>/dev/null || break; i=$((i+1)); echo $i; done",
        ],
        "[limits]\nmemory = \"32M\"\ntmp_size = \"512M\"\n",
    );
    let report_path = dir.0.join("report.json");
    let out = launch(&[
        "run",
        "--config",
        &file.display().to_string(),
        "--report",
        &report_path.display().to_string(),
    ]);
    // The MiB written so far, one line per MiB, until the writer stops.
    let text = stdout(&out);
    let filled: u64 = text
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(filled <= 32, "/tmp took {filled} MiB past a 32 MiB limit");
    let report = vassal_tests::launcher_harness::report(&report_path);
    assert!(
        report["killed_by"] == "memory" || report["oom_kills"].as_u64().unwrap_or(0) > 0,
        "the vassal was not stopped by its memory limit: {report}\n{}",
        stderr(&out)
    );
}

/// `/run/vassal` is also the router's default `state_dir`, and a router
/// that starts first (as its unit does at boot) makes it; made 0700, a
/// vassal in a user namespace (a host uid that is not root) could not
/// pass through it to its staging directory, and every such launch
/// failed. The launcher adds search permission for others, and nothing
/// else.
#[test]
fn a_user_namespace_vassal_launches_when_run_vassal_is_private() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _serial = serial();
    let run = Path::new("/run/vassal");
    std::fs::create_dir_all(run).unwrap();
    let before = std::fs::metadata(run).unwrap().mode() & 0o7777;
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _up = stays_up(&name("kp"), true);
    let after = std::fs::metadata(run).unwrap().mode() & 0o7777;
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(before | 0o011)).unwrap();
    assert_eq!(after, 0o711, "search added, nothing else");
}
