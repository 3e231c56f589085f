//! The vassal's pid 1: sets the vassal up from the inside (mounts,
//! hostname, network), starts the command with every privilege dropped,
//! then acts as init: reaps orphans, forwards SIGTERM, SIGINT and SIGHUP,
//! and enforces the wall-clock limit.

use crate::config::{SeccompProfile, VassalConfig};
use crate::sync::{self, Message};
use crate::{network, privileges, rootfs, seccomp};
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
    let code = match setup(config, &sync_fd) {
        Ok(()) => supervise(config, &sync_fd),
        Err(error) => {
            let _ = sync::send(sync_fd.as_fd(), &Message::Failed { error });
            1
        }
    };
    // SAFETY: _exit ends the process without running the parent's atexit
    // handlers or flushing its stdio buffers, which this fork shares.
    unsafe { libc::_exit(code) }
}

fn setup(config: &VassalConfig, sync_fd: &OwnedFd) -> Result<(), String> {
    // A vassal never outlives its launcher: without it nobody supervises,
    // accounts or cleans up. Killing pid 1 ends the whole pid namespace.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
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
    sync::send(sync_fd.as_fd(), &Message::Ready).map_err(|e| e.to_string())?;
    match sync::recv(sync_fd.as_fd()).map_err(|e| e.to_string())? {
        Message::Start => Ok(()),
        Message::Failed { error } => Err(error),
        other => Err(format!("expected start from the launcher, got {other:?}")),
    }
}

fn supervise(config: &VassalConfig, sync_fd: &OwnedFd) -> i32 {
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
        Ok(nix::unistd::ForkResult::Child) => exec_command(config, &command),
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
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
/// nothing: argv, envp, the program path, the seccomp program.
struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    workdir: CString,
    filter: Option<Vec<libc::sock_filter>>,
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
    let filter = match &config.seccomp {
        SeccompProfile::None => None,
        SeccompProfile::Default => Some(seccomp::denied_numbers(None).map_err(|e| e.to_string())?),
        SeccompProfile::File(f) => {
            Some(seccomp::denied_numbers(Some(f)).map_err(|e| e.to_string())?)
        }
    };
    let filter = match filter {
        Some(denied) => {
            let unavailable: Vec<u32> = seccomp::UNAVAILABLE
                .iter()
                .filter_map(|n| seccomp::number(n))
                .collect();
            Some(seccomp::program(&denied, &unavailable).map_err(|e| e.to_string())?)
        }
        None => None,
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
        filter,
    })
}

/// In the forked child: drop everything, install seccomp, exec. Never returns.
fn exec_command(config: &VassalConfig, exec: &Exec) -> ! {
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
    if let Err(e) = privileges::drop_to(
        config.uid,
        config.gid,
        config.limits.nofile,
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
    if let Some(filter) = &exec.filter {
        if let Err(e) = seccomp::install(filter) {
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
