//! The vassal's pid 1: sets the vassal up from the inside (mounts,
//! hostname, network), starts the command with every privilege dropped,
//! then acts as init: reaps orphans, forwards SIGTERM, SIGINT and SIGHUP,
//! and enforces the wall-clock limit.

use crate::config::VassalConfig;
use crate::sync::{self, Message};
use crate::terminal::{self, Stdio};
use crate::{network, privileges, rootfs};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Time between the wall-clock SIGTERM and the SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Signals pid 1 handles: forwarded ones, and SIGCHLD for reaping.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

extern "C" fn ignore(_: libc::c_int) {}

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Runs pid 1 and never returns: the process exits with the command's
/// status. Any failure before the command starts is sent to the outer
/// launcher as [`Message::Failed`] naming the step.
pub fn run(config: &VassalConfig, sync_fd: OwnedFd) -> ! {
    hide_host_argv();
    let code = match setup(config, &sync_fd) {
        Ok(pty) => supervise(config, &sync_fd, pty),
        Err(error) => {
            let _ = sync::send(sync_fd.as_fd(), &Message::Failed { error });
            1
        }
    };
    // SAFETY: _exit ends the process without running the parent's atexit
    // handlers or flushing its stdio buffers, which this fork shares.
    unsafe { libc::_exit(code) }
}

/// The slave of the vassal's pty, and which of fds 0-2 it replaces in the
/// command (see `terminal.rs`); `None` when none of them is a terminal.
type CommandTty = Option<(OwnedFd, Stdio)>;

fn setup(config: &VassalConfig, sync_fd: &OwnedFd) -> Result<CommandTty, String> {
    // A vassal never outlives its launcher: without it nobody supervises,
    // accounts or cleans up. Killing pid 1 ends the whole pid namespace.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // Leave the operator's session: pid 1 has no controlling terminal.
    nix::unistd::setsid().map_err(|e| format!("leaving the operator's session (setsid): {e}"))?;
    match sync::recv(sync_fd.as_fd()).map_err(|e| e.to_string())? {
        Message::Go => {}
        Message::Failed { error } => return Err(error),
        other => return Err(format!("expected go from the launcher, got {other:?}")),
    }
    if config.uid_map.is_some() {
        // Become root of the user namespace (its creator has every
        // capability in it but an unmapped uid until now), then take a
        // cgroup namespace rooted at the vassal's cgroup, joined by now.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("becoming root of the user namespace (setresgid): {e}"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("becoming root of the user namespace (setresuid): {e}"))?;
        // A change of the effective uid clears the parent-death signal:
        // set it again (a launcher already dead is seen at the next recv).
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("creating the cgroup namespace: {e}"))?;
    }
    rootfs::build(config).map_err(|e| e.to_string())?;
    nix::unistd::sethostname(&config.hostname)
        .map_err(|e| format!("setting the hostname {}: {e}", config.hostname))?;
    network::configure(config.network.as_ref()).map_err(|e| e.to_string())?;
    // Customers' processes may not read or trace pid 1.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // The operator's terminal stays out of the vassal: the command gets a
    // pty of the vassal's devpts, whose master the launcher relays.
    let stdio = Stdio::detect();
    let pty = if stdio.any() {
        Some(terminal::open_pty(config.uid, config.gid).map_err(|e| e.to_string())?)
    } else {
        None
    };
    sync::send_with_fd(
        sync_fd.as_fd(),
        &Message::Ready,
        pty.as_ref().map(|p| p.master.as_fd()),
    )
    .map_err(|e| e.to_string())?;
    let tty = pty.map(|p| (p.slave, stdio));
    match sync::recv(sync_fd.as_fd()).map_err(|e| e.to_string())? {
        Message::Start => Ok(tty),
        Message::Failed { error } => Err(error),
        other => Err(format!("expected start from the launcher, got {other:?}")),
    }
}

fn supervise(config: &VassalConfig, sync_fd: &OwnedFd, tty: CommandTty) -> i32 {
    let handled = handled_set();
    let action = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in handled.iter() {
        // SAFETY: installing a handler that does nothing; pid 1 of a pid
        // namespace only receives signals it has a handler for.
        let _ = unsafe { signal::sigaction(s, &action) };
    }
    let _ = handled.thread_block();

    let command = match prepare_exec(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vassal-launch: {e}");
            return report(sync_fd, Some(127), None, false);
        }
    };
    // SAFETY: the supervisor is single-threaded; the child only calls
    // async-signal-safe functions and exec (see `exec_command`).
    let child = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => exec_command(config, &command, tty.as_ref()),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // Only the command holds the slave: the launcher's master sees
            // the pty close when the vassal's processes are gone.
            drop(tty);
            child
        }
        Err(e) => {
            eprintln!("vassal-launch: starting the command (fork): {e}");
            return report(sync_fd, Some(126), None, false);
        }
    };

    let started = Instant::now();
    let deadline = config.limits.wall_clock.map(|d| started + d);
    let mut kill_at: Option<Instant> = None;
    let mut wall_clock = false;
    let mut status: Option<(Option<i32>, Option<i32>)> = None;
    loop {
        // Reap everything that has ended; note the command's status.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    status = Some((Some(code), None))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    status = Some((None, Some(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Some((code, sig)) = status {
            // The vassal ends with its command: nothing may outlive it.
            let _ = signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
            while waitpid(Pid::from_raw(-1), None).is_ok() {}
            return report(sync_fd, code, sig, wall_clock);
        }
        let now = Instant::now();
        if let Some(at) = kill_at {
            if now >= at {
                let _ = signal::kill(Pid::from_raw(-1), Signal::SIGCONT);
                let _ = signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
                kill_at = None;
            }
        } else if deadline.is_some_and(|d| now >= d) && !wall_clock {
            wall_clock = true;
            let _ = signal::kill(Pid::from_raw(-1), Signal::SIGTERM);
            kill_at = Some(now + GRACE);
        }
        let next = kill_at.or(if wall_clock { None } else { deadline });
        let timeout = next.map_or(Duration::from_secs(1), |t| {
            t.saturating_duration_since(Instant::now())
        });
        if let Some(sig) = wait_signal(&handled, timeout.min(Duration::from_secs(1))) {
            if FORWARDED.contains(&sig) {
                let _ = signal::kill(child, sig);
            }
        }
    }
}

/// What `/proc/1/cmdline` shows inside the vassal.
pub const TITLE: &[u8] = b"vassal-launch: supervisor";

/// The supervisor is a clone of the launcher, never exec'd: the memory
/// `/proc/1/cmdline` and `/proc/1/environ` are read from still holds the
/// launcher's host argv (the vassal file's host path) and the operator's
/// environment. Overwrite both in place (`PR_SET_MM_ARG_START` would need
/// CAP_SYS_RESOURCE of the host, which a supervisor in a user namespace
/// lacks): argv becomes [`TITLE`] then NULs, with its last byte non-NUL so
/// that the kernel reads it as a title and stops at the first NUL (showing
/// neither the old length nor the environment); the environment becomes NULs.
fn hide_host_argv() {
    let Some([arg_start, arg_end, env_start, env_end]) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| argv_and_env_bounds(&stat))
    else {
        return;
    };
    let sane = |start: usize, end: usize| start > 0 && start < end && end - start < (1 << 20);
    if sane(arg_start, arg_end) {
        let len = arg_end - arg_start;
        let title = &TITLE[..TITLE.len().min(len - 1)];
        // SAFETY: [arg_start, arg_end) is this process's argv area on its
        // initial stack, mapped and writable; the process is single-
        // threaded and nothing reads argv while we write. The strings
        // argv[] points into stay NUL-terminated (past the last byte, made
        // non-NUL, come the environment strings, which end in a NUL).
        unsafe {
            let p = arg_start as *mut u8;
            std::ptr::write_bytes(p, 0, len);
            std::ptr::copy_nonoverlapping(title.as_ptr(), p, title.len());
            if len > title.len() + 1 {
                *p.add(len - 1) = b' ';
            }
        }
    }
    if sane(env_start, env_end) {
        // SAFETY: as above, for the environment strings; getenv then finds
        // only empty entries.
        unsafe { std::ptr::write_bytes(env_start as *mut u8, 0, env_end - env_start) };
    }
}

/// Fields 48-51 of a `/proc/PID/stat` line: arg_start, arg_end, env_start,
/// env_end. The name in parentheses may hold spaces and parentheses, so
/// fields are counted after the last `)`, where field 3 starts.
fn argv_and_env_bounds(stat: &str) -> Option<[usize; 4]> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(45).map(|f| f.parse().ok());
    Some([
        fields.next()??,
        fields.next()??,
        fields.next()??,
        fields.next()??,
    ])
}

fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: set and ts are valid for the call; info may be null.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(sig).ok()
}

fn report(sync_fd: &OwnedFd, code: Option<i32>, signal: Option<i32>, wall_clock: bool) -> i32 {
    let _ = sync::send(
        sync_fd.as_fd(),
        &Message::Ended {
            code,
            signal,
            wall_clock,
        },
    );
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 1,
    }
}

/// Everything exec needs, built before the fork so the child allocates
/// nothing: argv, envp, the program path. (The seccomp filter was
/// compiled with the configuration, in the outer launcher.)
struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
}

fn prepare_exec(config: &VassalConfig) -> Result<Exec, String> {
    let cstr =
        |s: &str, what: &str| CString::new(s).map_err(|_| format!("{what} {s:?} holds a NUL byte"));
    let name = config.command.first().ok_or("no command to run")?;
    let path_var = config
        .env
        .get("PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", String::as_str);
    let program = if name.contains('/') {
        name.clone()
    } else {
        path_var
            .split(':')
            .map(|d| format!("{d}/{name}"))
            .find(|p| std::path::Path::new(p).is_file())
            .ok_or_else(|| {
                format!("starting the command: {name} is not found in PATH {path_var}")
            })?
    };
    Ok(Exec {
        program: cstr(&program, "command")?,
        argv: config
            .command
            .iter()
            .map(|a| cstr(a, "argument"))
            .collect::<Result<_, _>>()?,
        envp: config
            .env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}"), "environment entry"))
            .collect::<Result<_, _>>()?,
        workdir: cstr(&config.workdir.to_string_lossy(), "workdir")?,
    })
}

/// In the forked child: drop everything, install seccomp, exec. Never returns.
fn exec_command(config: &VassalConfig, exec: &Exec, tty: Option<&(OwnedFd, Stdio)>) -> ! {
    let fail = |step: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("vassal-launch: {step}: {e}");
        // SAFETY: leaving the forked child without running shared atexit state.
        unsafe { libc::_exit(126) }
    };
    // Back to a plain signal state for the customer's program.
    let _ = SigSet::all().thread_unblock();
    for s in handled_set().iter() {
        // SAFETY: restoring default dispositions.
        let _ = unsafe { signal::signal(s, SigHandler::SigDfl) };
    }
    // A session of its own: no terminal of the operator's to push
    // keystrokes into (TIOCSTI), its pty's slave on the fds that were one.
    let (slave, stdio) = tty.map_or((None, Stdio::default()), |(s, io)| (Some(s.as_fd()), *io));
    if let Err((step, e)) = terminal::take_session(slave, stdio) {
        fail(step, &e);
    }
    if let Err(e) = privileges::drop_to(
        config.uid,
        config.gid,
        config.limits.nofile,
        config.limits.file_size,
        config.uid_map.is_some(),
    ) {
        fail("dropping privileges", &e);
    }
    // SAFETY: workdir is a valid C string.
    if unsafe { libc::chdir(exec.workdir.as_ptr()) } != 0 {
        fail(
            &format!("entering the workdir {}", config.workdir.display()),
            &std::io::Error::last_os_error(),
        );
    }
    if let Some(filter) = &config.filter {
        if let Err(e) = filter.install() {
            fail("installing seccomp", &e);
        }
    }
    let e = nix::unistd::execve(&exec.program, &exec.argv, &exec.envp).unwrap_err();
    eprintln!(
        "vassal-launch: starting the command {}: {e}",
        exec.program.to_string_lossy()
    );
    // SAFETY: as above.
    unsafe { libc::_exit(if e == nix::Error::ENOENT { 127 } else { 126 }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_bounds_are_counted_after_the_name() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let stat = format!("7 (a) b (c) {}\n", fields.join(" "));
        assert_eq!(argv_and_env_bounds(&stat), Some([48, 49, 50, 51]));
        assert_eq!(argv_and_env_bounds("7 (short) S 1 2"), None);
        assert_eq!(argv_and_env_bounds("no name"), None);
    }
}
