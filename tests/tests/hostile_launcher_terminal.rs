//! A hostile customer against what its command inherits from the operator
//! and the launcher: the operator's terminal (TIOCSTI, bubblewrap
//! CVE-2017-5226), the launcher's argv and environment on pid 1, file
//! descriptors and environment (runc CVE-2024-21626), pid 1 as a path to
//! the host binary (runc CVE-2019-5736), `enter` into a pid that is no
//! longer the vassal's, and what `/proc` and `/sys` show. Every attack runs
//! from inside a vassal started by `vassal-launch run`, most with
//! `seccomp = "none"` so that the defence under test holds on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nix::pty::openpty;
use nix::sys::termios::{self, SetArg};
use std::io::{BufRead, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vassal_tests::launcher_harness::{
    code, launch, name, stderr, stdout, supervisor_pid, vassal_file, Launched, TempDir, PROJECT_UID,
};
use vassal_tests::{binary, require_root, wait_until, KillOnDrop};

/// The `[seccomp]` table that turns the filter off, and a user namespace.
const NO_SECCOMP: &str = "[seccomp]\nprofile = \"none\"\n";
const USERNS: &str =
    "[user_namespace]\nuid_map = \"0:200000:65536\"\ngid_map = \"0:200000:65536\"\n";

/// What the customer pushes into every terminal it can reach.
const INJECTED: &str = "touch /tmp/vassal-pwned\n";

/// The customer's attack: TIOCSTI of [`INJECTED`] on fds 0-2 and on
/// `/dev/tty`, each outcome printed, then "READY", then sleep.
const INJECT_PY: &str = r#"
import errno, fcntl, os, sys, termios, time
def push(what, fd):
    try:
        for c in INJECTED.encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        print(what, "pushed", flush=True)
    except OSError as e:
        print(what, "refused", errno.errorcode.get(e.errno), flush=True)
for fd in (0, 1, 2):
    push("fd%d" % fd, fd)
try:
    t = os.open("/dev/tty", os.O_RDWR)
    push("devtty", t)
except OSError as e:
    print("devtty", "unopenable", errno.errorcode.get(e.errno), flush=True)
print("READY", flush=True)
time.sleep(60)
"#;

fn inject_script() -> String {
    INJECT_PY.replace("INJECTED", &format!("{INJECTED:?}"))
}

/// A pty standing for the operator's terminal; its slave in raw mode, so
/// that any byte pushed into its input can be read back at once.
struct OperatorTty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl OperatorTty {
    fn new() -> OperatorTty {
        let pty = openpty(None, None).unwrap();
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        let mut t = termios::tcgetattr(&pty.slave).unwrap();
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
        OperatorTty {
            master: pty.master,
            slave: pty.slave,
        }
    }

    /// What waits in the terminal's input queue: what the operator's shell
    /// would read and run once the launcher ends.
    fn pending_input(&self) -> Vec<u8> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int we own.
        let rc = unsafe { libc::ioctl(self.slave.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0);
        let mut buf = vec![0u8; n as usize];
        if n > 0 {
            let got = nix::unistd::read(&self.slave, &mut buf).unwrap();
            buf.truncate(got);
        }
        buf
    }

    /// Collects what is written to the terminal (its screen) in a thread.
    fn screen(&self) -> Arc<Mutex<Vec<u8>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(self.master.try_clone().unwrap());
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        seen
    }

    /// `vassal-launch ARGS` in a session whose controlling terminal is this
    /// one, as from an operator's shell; with `stdio`, on fds 0-2 too.
    fn spawn(&self, args: &[&str], stdio: bool) -> Child {
        require_root();
        let mut cmd = Command::new(binary("vassal-launch"));
        cmd.args(args);
        if stdio {
            cmd.stdin(self.slave.try_clone().unwrap())
                .stdout(self.slave.try_clone().unwrap())
                .stderr(self.slave.try_clone().unwrap());
        } else {
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let slave = self.slave.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawning vassal-launch")
    }
}

/// The host pids of the supervisor's children (the command).
fn command_pid(vassal: &str) -> Option<u32> {
    let sup = supervisor_pid(vassal)?;
    std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`.
fn stat_field(pid: u32, n: usize) -> i64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "vassal-launch did not end"
    );
    status.unwrap()
}

#[test]
fn hostile_tiocsti_never_reaches_the_operators_terminal() {
    let n = name("ht");
    let dir = TempDir::new();
    let script = inject_script();
    let file = vassal_file(&dir, &n, &["/usr/bin/python3", "-c", &script], NO_SECCOMP);
    let tty = OperatorTty::new();
    let screen = tty.screen();
    let mut launcher = tty.spawn(&["run", "-c", file.to_str().unwrap()], true);
    let text = || String::from_utf8_lossy(&screen.lock().unwrap()).replace('\r', "");
    let ready = wait_until(Duration::from_secs(10), || text().contains("READY"));

    // While it runs: the command's session and terminal, seen from the host.
    let operator = tty.slave.as_fd();
    let operator_id = {
        let m = nix::sys::stat::fstat(operator).unwrap();
        (m.st_dev, m.st_rdev)
    };
    let cmd = command_pid(&n);
    let launcher_sid = stat_field(launcher.id(), 6);
    let facts = cmd.map(|pid| {
        let sid = stat_field(pid, 6);
        let on_operator_tty: Vec<u32> = (0..3)
            .filter(|fd| {
                std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|m| (m.dev(), m.rdev()) == operator_id)
            })
            .collect();
        (sid, on_operator_tty)
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    wait_exit(&mut launcher);
    let pending = tty.pending_input();
    let seen = text();

    assert!(ready, "the attack did not run: {seen}");
    assert!(
        !String::from_utf8_lossy(&pending).contains("vassal-pwned"),
        "the customer pushed {:?} into the operator's terminal (outcomes: {seen})",
        String::from_utf8_lossy(&pending)
    );
    let (sid, on_operator_tty) = facts.expect("the command's pid");
    assert_eq!(launcher_sid, launcher.id() as i64);
    assert_ne!(
        sid, launcher_sid,
        "the command shares the operator's session"
    );
    assert!(
        on_operator_tty.is_empty(),
        "the command holds the operator's terminal on fds {on_operator_tty:?}"
    );
}

#[test]
fn hostile_command_without_a_terminal_has_no_controlling_terminal() {
    let n = name("ht");
    let dir = TempDir::new();
    let script = inject_script().replace("time.sleep(60)", "");
    let file = vassal_file(&dir, &n, &["/usr/bin/python3", "-c", &script], NO_SECCOMP);
    let tty = OperatorTty::new();
    let mut launcher = tty.spawn(&["run", "-c", file.to_str().unwrap()], false);
    let mut out = String::new();
    launcher
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = wait_exit(&mut launcher);
    let pending = tty.pending_input();
    assert!(status.success(), "{out}");
    assert!(
        pending.is_empty(),
        "the customer pushed {:?} into the operator's terminal ({out})",
        String::from_utf8_lossy(&pending)
    );
    // ENXIO: no controlling terminal (ENOENT if /dev/tty ever leaves /dev).
    assert!(
        out.contains("devtty unopenable ENXIO") || out.contains("devtty unopenable ENOENT"),
        "{out}"
    );
}

/// What the customer can learn of, or do to, pid 1 (a clone of the host's
/// launcher binary): one line per probe.
const PID1_PY: &str = r#"
import ctypes, errno, os
def probe(what, f):
    try:
        r = f()
        print(what, "OPEN", repr(r)[:80])
    except OSError as e:
        print(what, "denied", errno.errorcode.get(e.errno))
print("cmdline", repr(open("/proc/1/cmdline", "rb").read()))
probe("environ", lambda: open("/proc/1/environ", "rb").read())
for f in ("maps", "mem", "stack", "syscall", "auxv"):
    probe(f, lambda: open("/proc/1/" + f, "rb").read(64))
for l in ("exe", "cwd", "root", "fd/0", "fd/3"):
    probe("readlink-" + l, lambda: os.readlink("/proc/1/" + l))
probe("write-exe", lambda: open("/proc/1/exe", "r+b"))
probe("read-exe", lambda: open("/proc/1/exe", "rb").read(4))
probe("list-root", lambda: os.listdir("/proc/1/root/"))
probe("list-fd", lambda: os.listdir("/proc/1/fd"))
probe("chdir-root", lambda: os.chdir("/proc/1/root"))
libc = ctypes.CDLL(None, use_errno=True)
for req, what in ((16, "attach"), (0x4206, "seize")):
    rc = libc.ptrace(req, 1, 0, 0)
    print("ptrace-" + what, "OPEN" if rc == 0 else "denied", errno.errorcode.get(ctypes.get_errno()))
"#;

#[test]
fn hostile_pid_1_shows_no_host_path_and_keeps_its_secrets() {
    for userns in [false, true] {
        let n = name("hp");
        let dir = TempDir::new();
        let rest = format!("{NO_SECCOMP}{}", if userns { USERNS } else { "" });
        let file = vassal_file(&dir, &n, &["/usr/bin/python3", "-c", PID1_PY], &rest);
        let out = Command::new(binary("vassal-launch"))
            .args(["run", "--config", file.to_str().unwrap()])
            .env("VASSAL_OPERATOR_SECRET", "hunter2")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
        let cmdline = text.lines().next().unwrap();
        assert_eq!(
            cmdline, "cmdline b'vassal-launch: supervisor\\x00'",
            "user namespace {userns}: {text}"
        );
        assert!(!text.contains(dir.0.to_str().unwrap()), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let probes: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(probes.len(), 18, "{text}");
        for line in probes {
            assert!(
                line.contains(" denied "),
                "user namespace {userns}: {line}\n{text}"
            );
        }
    }
}

/// Reads lines of a running vassal's stdout up to "END".
fn lines_until_end(reader: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if line == "END" {
            return lines;
        }
        lines.push(line);
    }
    panic!("no END: {lines:?}");
}

const FDS_AND_ENV: &str =
    "ls -1 /proc/$$/fd; readlink /proc/$$/cwd; /usr/bin/env | grep -v '^PWD=' | sort; echo END";

#[test]
fn hostile_command_and_enter_inherit_only_their_stdio_and_own_environment() {
    for userns in [false, true] {
        let n = name("hf");
        let dir = TempDir::new();
        let rest = format!(
            "workdir = \"/tmp\"\nenv = {{ LANG = \"C\", FROM_FILE = \"yes\" }}\n{}",
            if userns { USERNS } else { "" }
        );
        let script = format!("{FDS_AND_ENV}; exec sleep 60");
        let file = vassal_file(&dir, &n, &["/bin/sh", "-c", &script], &rest);
        let mut run = KillOnDrop::spawn(
            Command::new(binary("vassal-launch"))
                .args(["run", "--config", file.to_str().unwrap()])
                .env("VASSAL_OPERATOR_SECRET", "hunter2")
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let mut reader = std::io::BufReader::new(run.0.stdout.take().unwrap());
        let seen = lines_until_end(&mut reader);
        assert_eq!(
            seen,
            ["0", "1", "2", "/tmp", "FROM_FILE=yes", "LANG=C"],
            "run, user namespace {userns}"
        );

        let out = Command::new(binary("vassal-launch"))
            .args(["enter", &n, "--", "/bin/sh", "-c", FDS_AND_ENV])
            .env("VASSAL_OPERATOR_SECRET", "hunter2")
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out).replace('\r', "");
        let seen: Vec<&str> = text.lines().take_while(|l| *l != "END").collect();
        assert_eq!(
            seen,
            [
                "0",
                "1",
                "2",
                "/",
                "HOME=/",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "TERM=dumb"
            ],
            "enter, user namespace {userns}"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(run.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = run.0.wait();
    }
}

#[test]
fn hostile_enter_refuses_a_recorded_pid_that_is_no_longer_the_supervisor() {
    // A launcher killed with SIGKILL leaves its state file; its supervisor
    // dies with it and the pid may go to any process. Here the pid goes to
    // a process in the host's namespaces: entering it would run the
    // command on the host.
    let n = name("he");
    let dir = TempDir::new();
    let mut vassal = Launched::spawn(
        &n,
        &[
            "run",
            "--name",
            &n,
            "--uid",
            &PROJECT_UID.to_string(),
            "--",
            "/bin/sleep",
            "60",
        ]
        .map(String::from),
        dir.0.join("stderr"),
    );
    assert!(wait_until(Duration::from_secs(5), || supervisor_pid(&n).is_some()));
    let launcher = vassal.pid();
    let state_path = format!("/run/vassal/launch/{n}.json");
    let impostor = KillOnDrop::spawn(Command::new("/bin/sleep").arg("60"));
    let text = std::fs::read_to_string(&state_path).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["pid"] = impostor.pid().into();
    assert_eq!(record["launcher_pid"], launcher);
    std::fs::write(&state_path, record.to_string()).unwrap();

    let out = launch(&["enter", &n, "--", "/bin/sh", "-c", "echo entered; hostname"]);
    // Put the true record back so that the vassal stops cleanly.
    std::fs::write(&state_path, text).unwrap();
    vassal.stop(Duration::from_secs(5));
    assert!(!stdout(&out).contains("entered"), "{}", stdout(&out));
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not the supervisor"),
        "{}",
        stderr(&out)
    );
}

/// Kernel interfaces a customer probes: each write and read must fail,
/// `/sys` must show nothing of the host, `/proc` no host process.
const PROC_SYS_PY: &str = r#"
import errno, os
def probe(what, f):
    try:
        r = f()
        print(what, "OPEN", repr(r)[:60])
    except OSError as e:
        print(what, "denied", errno.errorcode.get(e.errno))
for p in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/vm/drop_caches",
          "/proc/sys/kernel/hostname", "/proc/sys/net/ipv4/ip_forward", "/proc/sysrq-trigger",
          "/sys/kernel/uevent_helper", "/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/vassal/cgroup.procs"):
    probe("write " + p, lambda: open(p, "w").write("1"))
for p in ("/proc/kcore", "/proc/kmsg", "/proc/timer_list", "/proc/sched_debug", "/proc/slabinfo",
          "/proc/vmallocinfo", "/proc/pagetypeinfo", "/sys/kernel/debug", "/sys/firmware",
          "/sys/fs/cgroup", "/sys/kernel/security"):
    probe("read " + p, lambda: os.listdir(p) if os.path.isdir(p) and os.listdir(p) else open(p, "rb").read(64))
addresses = set(l.split()[0] for l in open("/proc/kallsyms"))
print("kallsyms", "zero" if addresses <= {"0000000000000000"} else "ADDRESSES")
print("sys", sorted(os.listdir("/sys")))
comms = sorted(open("/proc/%s/comm" % p).read().strip() for p in os.listdir("/proc") if p.isdigit())
print("processes", comms)
"#;

#[test]
fn hostile_proc_and_sys_expose_nothing_writable_or_secret() {
    for userns in [false, true] {
        let n = name("hs");
        let dir = TempDir::new();
        let rest = format!("{NO_SECCOMP}{}", if userns { USERNS } else { "" });
        let file = vassal_file(&dir, &n, &["/usr/bin/python3", "-c", PROC_SYS_PY], &rest);
        let out = launch(&["run", "--config", file.to_str().unwrap()]);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
        for line in text.lines() {
            let (what, rest) = line.split_once(' ').unwrap();
            match what {
                "write" | "read" => {
                    assert!(
                        rest.contains(" denied "),
                        "user namespace {userns}: {line}\n{text}"
                    )
                }
                "kallsyms" => assert_eq!(rest, "zero", "{text}"),
                "sys" => assert_eq!(rest, "[]", "the host's /sys: {text}"),
                "processes" => assert_eq!(
                    rest, "['python3', 'vassal-launch']",
                    "only the vassal's processes: {text}"
                ),
                _ => panic!("{line}"),
            }
        }
        assert_eq!(text.lines().count(), 23, "{text}");
    }
}
