//! A hostile tenant against the seccomp filter, from inside real vassals:
//! terminal ioctls, socket families, the kernel surface a web app does not
//! need, namespaces through clone, and the vassal's own profile under
//! `enter` and `check` (docs/security.md, "Seccomp: syscalls and socket
//! families" and "`enter`").
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use vassal_tests::launcher_harness::{
    code, launch, name, run_reported, stderr, stdout, supervisor_pid, vassal_file, Launched,
    TempDir, PROJECT_UID,
};
use vassal_tests::router_harness::PYTHON;
use vassal_tests::{binary, wait_until};

/// SIGSYS, as `vassal-launch` reports a command killed by seccomp.
const KILLED: i32 = 128 + libc::SIGSYS;

/// Runs `script` with python3 inside a fresh vassal (default profile).
fn python(prefix: &str, script: &str) -> Output {
    let n = name(prefix);
    let uid = PROJECT_UID.to_string();
    launch(&[
        "run", "--name", &n, "--uid", &uid, "--", PYTHON, "-c", script,
    ])
}

/// The `key value` lines a probe script printed, as a map.
fn answers(out: &Output) -> BTreeMap<String, String> {
    assert_eq!(code(out), 0, "{}{}", stdout(out), stderr(out));
    stdout(out)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Python prelude: `call(nr, *args)` makes a raw syscall and answers "ok"
/// or the errno's name.
const PRELUDE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
def say(key, value):
    print(key, value, flush=True)
"#;

#[test]
fn hostile_tiocsti_and_tioclinux_are_refused_on_the_vassals_own_terminal() {
    // A terminal of the vassal's own devpts, made the controlling terminal
    // of a new session: the kernel itself would let this process push
    // input into it (legacy_tiocsti = 1 here); the filter refuses, also
    // with the ioctl number's high 32 bits set (CVE-2019-10063).
    let script = format!(
        "{PRELUDE}
import fcntl, termios
TIOCSTI, TIOCLINUX, TIOCSETD = 0x5412, 0x541C, 0x5423
pid = os.fork()
if pid == 0:
    os.setsid()
    m, s = os.openpty()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    c = ctypes.c_char(b'x')
    say('tty', os.ttyname(s))
    say('tiocsti', call(16, s, TIOCSTI, ctypes.byref(c)))
    say('tiocsti_high', call(16, s, TIOCSTI | 1 << 32, ctypes.byref(c)))
    say('tiocsti_master', call(16, m, TIOCSTI, ctypes.byref(c)))
    sub = ctypes.c_char(b'\\x06')
    say('tioclinux', call(16, s, TIOCLINUX, ctypes.byref(sub)))
    say('tioclinux_high', call(16, s, TIOCLINUX | 1 << 32, ctypes.byref(sub)))
    ldisc = ctypes.c_int(0)
    say('tiocsetd', call(16, s, TIOCSETD, ctypes.byref(ldisc)))
    ws = ctypes.create_string_buffer(8)
    say('tiocgwinsz', call(16, s, termios.TIOCGWINSZ, ws))
    os._exit(0)
os.waitpid(pid, 0)
"
    );
    let a = answers(&python("st", &script));
    assert!(a["tty"].starts_with("/dev/pts/"), "{a:?}");
    for key in [
        "tiocsti",
        "tiocsti_high",
        "tiocsti_master",
        "tioclinux",
        "tioclinux_high",
        "tiocsetd",
    ] {
        assert_eq!(a[key], "EPERM", "{key}: {a:?}");
    }
    // Other terminal ioctls work.
    assert_eq!(a["tiocgwinsz"], "ok", "{a:?}");
}

#[test]
fn hostile_socket_families_beyond_what_an_app_needs_get_eafnosupport() {
    let script = format!(
        "{PRELUDE}
import socket
def sock(f, t, p=0):
    try:
        socket.socket(f, t, p).close()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def pair(f, t):
    try:
        a, b = socket.socketpair(f, t)
        a.close(); b.close()
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
R, D = socket.SOCK_RAW, socket.SOCK_DGRAM
for key, f, t, p in [
    ('unix', 1, 1, 0), ('tcp', 2, 1, 0), ('udp', 2, 2, 0), ('tcp6', 10, 1, 0), ('udp6', 10, 2, 0),
    ('netlink_route', 16, R, 0),
    ('vsock', 40, 1, 0), ('packet', 17, R, 0), ('alg', 38, 5, 0), ('key', 15, 3, 2),
    ('bluetooth', 31, R, 0), ('rds', 21, 5, 0), ('tipc', 30, 2, 0), ('can', 29, R, 1), ('xdp', 44, R, 0),
    ('netlink_audit', 16, R, 9), ('netlink_uevent', 16, R, 15), ('netlink_generic', 16, R, 16),
    ('netlink_sock_diag', 16, R, 4), ('netlink_netfilter', 16, R, 12), ('netlink_xfrm', 16, R, 6),
]:
    say(key, sock(f, t, p))
say('pair_unix', pair(1, 1))
say('pair_vsock', call(53, 40, 1, 0, ctypes.byref((ctypes.c_int * 2)())))
say('vsock_high', call(41, 40 | 1 << 32, 1, 0))
say('netlink_audit_high', call(41, 16, 3, 9 | 1 << 32))
say('getaddrinfo', 'ok' if socket.getaddrinfo('localhost', 80) else 'empty')
say('if_nameindex', 'ok' if any(n == 'lo' for _, n in socket.if_nameindex()) else 'no lo')
"
    );
    let a = answers(&python("sf", &script));
    for key in [
        "unix",
        "tcp",
        "udp",
        "tcp6",
        "udp6",
        "netlink_route",
        "pair_unix",
        "getaddrinfo",
        "if_nameindex",
    ] {
        assert_eq!(a[key], "ok", "{key}: {a:?}");
    }
    for key in [
        "vsock",
        "packet",
        "alg",
        "key",
        "bluetooth",
        "rds",
        "tipc",
        "can",
        "xdp",
        "netlink_audit",
        "netlink_uevent",
        "netlink_generic",
        "netlink_sock_diag",
        "netlink_netfilter",
        "netlink_xfrm",
        "pair_vsock",
        "vsock_high",
        "netlink_audit_high",
    ] {
        assert_eq!(a[key], "EAFNOSUPPORT", "{key}: {a:?}");
    }
}

#[test]
fn hostile_kernel_surface_calls_kill_the_caller() {
    // Each call in a child of its own: the child dies of SIGSYS (the kill
    // is per process), the script reports how each one ended.
    let script = format!(
        "{PRELUDE}
import signal
X32 = 0x40000000
NEWUSER, NEWNS, NEWNET, NEWPID = 0x10000000, 0x20000, 0x40000000, 0x20000000
probes = [
    ('bpf', 321, 0, 0, 0), ('perf_event_open', 298, 0, 0, 0), ('userfaultfd', 323, 0),
    ('keyctl', 250, 0, 0), ('add_key', 248, 0, 0, 0, 0, 0), ('request_key', 249, 0, 0, 0, 0),
    ('name_to_handle_at', 303, -100, 0, 0, 0, 0), ('open_by_handle_at', 304, 0, 0, 0),
    ('ioperm', 173, 0x80, 1, 1), ('iopl', 172, 3), ('modify_ldt', 154, 0, 0, 0),
    ('quotactl_fd', 443, 0, 0, 0, 0), ('kcmp', 312, 1, 1, 0, 0, 0), ('ptrace', 101, 0, 1, 0, 0),
    ('process_vm_readv', 310, 1, 0, 0, 0, 0, 0), ('pidfd_getfd', 438, 0, 0, 0),
    ('mount', 165, 0, 0, 0, 0, 0), ('unshare', 272, NEWUSER), ('setns', 308, 0, 0),
    ('fsopen', 430, 0, 0), ('open_tree', 428, 0, 0, 0), ('mount_setattr', 442, 0, 0, 0, 0, 0),
    ('init_module', 175, 0, 0, 0), ('finit_module', 313, 0, 0, 0), ('kexec_load', 246, 0, 0, 0, 0),
    ('syslog', 103, 3, 0, 0), ('acct', 163, 0), ('swapon', 167, 0, 0), ('lookup_dcookie', 212, 0, 0, 0),
    ('fanotify_init', 300, 0, 0), ('uselib', 134, 0), ('clock_settime', 227, 0, 0),
    ('clone_newuser', 56, NEWUSER | signal.SIGCHLD, 0, 0, 0, 0),
    ('clone_newuser_high', 56, NEWUSER | signal.SIGCHLD | 1 << 32, 0, 0, 0, 0),
    ('clone_newns', 56, NEWNS | signal.SIGCHLD, 0, 0, 0, 0),
    ('clone_newnet', 56, NEWNET | signal.SIGCHLD, 0, 0, 0, 0),
    ('clone_newpid', 56, NEWPID | signal.SIGCHLD, 0, 0, 0, 0),
    ('x32_getpid', X32 | 39), ('x32_mount', X32 | 165, 0, 0, 0, 0, 0),
]
for key, nr, *args in probes:
    pid = os.fork()
    if pid == 0:
        r = call(nr, *args)
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    say(key, 'sig%d' % os.WTERMSIG(st) if os.WIFSIGNALED(st) else 'survived')
# getpid of the i386 ABI (int 0x80), from machine code of our own.
import mmap
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')  # mov eax, 20; int 0x80; ret
i386_getpid = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
pid = os.fork()
if pid == 0:
    i386_getpid()
    os._exit(0)
_, st = os.waitpid(pid, 0)
say('i386_getpid', 'sig%d' % os.WTERMSIG(st) if os.WIFSIGNALED(st) else 'survived')
# A plain fork through clone still works.
pid = os.fork()
if pid == 0:
    os._exit(7)
say('fork', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"
    );
    let a = answers(&python("sk", &script));
    let killed = format!("sig{}", libc::SIGSYS);
    let mut survived: Vec<&String> = a
        .iter()
        .filter(|(k, v)| k.as_str() != "fork" && **v != killed)
        .map(|(k, _)| k)
        .collect();
    survived.sort();
    assert!(survived.is_empty(), "not killed: {survived:?} in {a:?}");
    assert_eq!(a.len(), 41, "every probe answered: {a:?}");
    assert_eq!(a["fork"], "7", "{a:?}");
}

#[test]
fn hostile_io_uring_clone3_new_syscalls_and_personality_are_refused_with_an_errno() {
    let script = format!(
        "{PRELUDE}
say('io_uring_setup', call(425, 8, ctypes.byref(ctypes.create_string_buffer(120))))
say('io_uring_enter', call(426, 0, 0, 0, 0, 0, 0))
say('io_uring_register', call(427, 0, 0, 0, 0))
say('clone3', call(435, 0, 0))
# Newer than the reviewed list (mseal, 462): open_tree_attr, setxattrat.
say('open_tree_attr', call(467, -100, 0, 0, 0, 0))
say('setxattrat', call(463, -100, 0, 0, 0, 0, 0))
say('personality_no_randomize', call(135, 0x0040000))
say('personality_exec', call(135, 0x0400000))
say('personality_query', call(135, 0xffffffff))
say('personality_linux', call(135, 0))
"
    );
    let a = answers(&python("se", &script));
    for key in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "clone3",
        "open_tree_attr",
        "setxattrat",
    ] {
        assert_eq!(a[key], "ENOSYS", "{key}: {a:?}");
    }
    for key in ["personality_no_randomize", "personality_exec"] {
        assert_eq!(a[key], "EPERM", "{key}: {a:?}");
    }
    for key in ["personality_query", "personality_linux"] {
        assert_eq!(a[key], "ok", "{key}: {a:?}");
    }
}

/// A directory under /var/tmp: on the host's root, so a vassal on the
/// host's root sees it (read-only), unlike /tmp (private inside).
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(prefix: &str) -> SharedDir {
        let dir = PathBuf::from("/var/tmp").join(format!("vassal-test-{}", name(prefix)));
        std::fs::create_dir_all(&dir).unwrap();
        SharedDir(dir)
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Python calling getpid(2) directly, and saying so.
const GETPID: &str = "import ctypes; print('pid', ctypes.CDLL(None).syscall(39))";

/// `vassal-launch enter NAME -- ARGV...`, stdin closed.
fn enter(n: &str, argv: &[&str]) -> Output {
    Command::new(binary("vassal-launch"))
        .args(["enter", n, "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn hostile_enter_runs_under_the_vassals_own_profile() {
    // The profile is visible inside and out, so that the old `run` (which
    // read it after pivot_root) applies it too: the question is only what
    // `enter` does. getpid: a call no program here makes on its own.
    let shared = SharedDir::new("ep");
    let profile = shared.0.join("profile.json");
    std::fs::write(&profile, r#"["getpid"]"#).unwrap();
    let dir = TempDir::new();
    let n = name("ep");
    let file = vassal_file(
        &dir,
        &n,
        &["/bin/sleep", "60"],
        &format!("[seccomp]\nprofile = \"{}\"\n", profile.display()),
    );
    let _vassal = Launched::spawn(
        &n,
        &["run".into(), "--config".into(), file.display().to_string()],
        dir.0.join("stderr"),
    );
    assert!(wait_until(Duration::from_secs(5), || supervisor_pid(&n).is_some()));
    let out = enter(&n, &["/bin/true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = enter(&n, &[PYTHON, "-c", GETPID]);
    assert_eq!(code(&out), KILLED, "{}{}", stdout(&out), stderr(&out));
    // The built-in list holds under enter too.
    let out = enter(&n, &["/usr/bin/unshare", "-U", "true"]);
    assert_eq!(code(&out), KILLED, "{}{}", stdout(&out), stderr(&out));

    // A vassal whose profile is "none" is entered without a filter.
    let m = name("en");
    let file = vassal_file(
        &dir,
        &m,
        &["/bin/sleep", "60"],
        "[seccomp]\nprofile = \"none\"\n",
    );
    let _other = Launched::spawn(
        &m,
        &["run".into(), "--config".into(), file.display().to_string()],
        dir.0.join("stderr-none"),
    );
    assert!(wait_until(Duration::from_secs(5), || supervisor_pid(&m).is_some()));
    let out = enter(&m, &[PYTHON, "-c", GETPID]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn hostile_profile_check_and_run_agree_on_a_host_only_path() {
    // /tmp of the host is not the vassal's /tmp: the profile is readable
    // from the host only. `check` accepts it and `run` applies it.
    let dir = TempDir::new();
    let profile = dir.write("profile.json", r#"["uname"]"#);
    let n = name("pc");
    let with = |profile: &str| {
        vassal_file(
            &dir,
            &n,
            &["/bin/uname"],
            &format!("[seccomp]\nprofile = \"{profile}\"\n"),
        )
    };
    let file = with(profile.to_str().unwrap());
    let out = launch(&["check", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (out, r) = run_reported(&dir, &file);
    assert_eq!(code(&out), KILLED, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(r["killed_by"], "seccomp");

    // A profile `run` could not use: `check` refuses it, naming the vassal
    // file, the line and the field, and the profile; `run` refuses the same
    // way before starting anything.
    let missing = dir.0.join("absent.json");
    let bad = dir.write("bad.json", r#"["uname", "no_such_call"]"#);
    for (profile, what) in [
        (missing.to_str().unwrap(), "absent.json"),
        (bad.to_str().unwrap(), "no_such_call"),
    ] {
        let file = with(profile);
        let where_ = format!("{}:5:", file.display());
        for cmd in ["check", "run"] {
            let out = match cmd {
                "check" => launch(&["check", file.to_str().unwrap()]),
                _ => launch(&["run", "--config", file.to_str().unwrap()]),
            };
            assert_eq!(code(&out), 2, "{cmd} {what}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains(&where_) && err.contains("seccomp.profile") && err.contains(what),
                "{cmd} {what}: {err}"
            );
        }
    }
}
