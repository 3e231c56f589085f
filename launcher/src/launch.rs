//! The outer launcher: everything done from the host's namespaces, in the
//! order of docs/design.md ("Launch order"). [`run`] is that order.

use crate::accounting::Meter;
use crate::cgroup::{self, Cgroup, CgroupError, Usage};
use crate::config::{map_to_host, IdRange, VassalConfig};
use crate::disk::{self, DiskError};
use crate::events::{self, Events};
use crate::gc;
use crate::network::{self, Attachment, NetworkError};
use crate::report::Report;
use crate::rootfs::{self, RootfsError};
use crate::state::{self, State, StateError};
use crate::supervisor;
use crate::sync::{self, Message, SyncError};
use crate::terminal::{Relay, Stdio};
use crate::userns::{self, UsernsError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the host's mount table is read to find the cgroup hierarchies.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A launch step that failed. Nothing it created is left behind.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The vassal's state file says it is running, or cannot be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// Creating or limiting the cgroup failed.
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    /// The io limits' devices or a mount's quota could not be set.
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
    /// Opening the tun device or attaching it failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// clone(2) of the supervisor failed.
    #[error("creating the vassal's namespaces (clone): {0}")]
    Clone(#[source] std::io::Error),
    /// Creating the user namespace as the vassal's host uid failed.
    #[error("creating the user namespace as its owner: {0}")]
    Owner(#[from] UsernsError),
    /// Writing the user namespace maps failed.
    #[error("writing {path}: {source}")]
    IdMap {
        /// The /proc file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The supervisor reported a failed step.
    #[error("inside the vassal: {0}")]
    Inside(String),
    /// The mount points under /run/vassal could not be made.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// The sync socket failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Signal handling could not be set up.
    #[error("setting up signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// Writing the report failed (the vassal itself ran).
    #[error("writing the report {path}: {source}")]
    Report {
        /// The report file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the vassal ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit status vassal-launch returns: the command's, or 128 + signal.
    pub status: i32,
    /// What the report holds.
    pub report: Report,
}

/// Kills and reaps the supervisor unless the launch got to its end.
/// (The cgroup and the state file remove themselves when dropped.)
struct ChildGuard(Option<Pid>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Runs a vassal to its end. The order of steps is the one documented.
pub fn run(config: &VassalConfig, report_path: Option<&Path>) -> Result<Outcome, LaunchError> {
    let started = Instant::now();
    // 1. Under the state directory's lock: reap what dead launchers left
    //    (best effort: a launch does not fail for it), claim the name (one
    //    running vassal per name), with an automatic address lease it now
    //    (the supervisor is cloned with it), and
    let lock = state::lock()?;
    let _ = gc::reap_locked(Path::new(MOUNTINFO));
    let state = State::claim(config)?;
    let leased;
    let config = match &config.network {
        Some(net) if net.auto => {
            let mut c = config.clone();
            c.network = Some(network::lease(&config.name, net)?);
            leased = c;
            &leased
        }
        _ => config,
    };

    // 2. the cgroup, with its limits, before any process exists to escape it.
    let hierarchy = cgroup::detect(Path::new(MOUNTINFO))?;
    let cg = Cgroup::create(&hierarchy, &config.name, &config.limits)?;
    rootfs::create_host_dirs()?;
    drop(lock);
    warn_shared_uid(config);
    //    The io limits on the disks under the vassal's filesystems (without
    //    limits, on cgroup v1, the io accounting there), and the project
    //    quotas of its writable mounts (disk.rs); outside the lock, as
    //    tagging a large tree takes a while.
    if config.limits.io.any() {
        let devices = disk::io_devices(config, Path::new(disk::SYSFS))?;
        cg.throttle_io(&devices, &config.limits.io)?;
    } else if let Err(e) = cg.account_io(&disk::accounted_devices(config, Path::new(disk::SYSFS))) {
        // Accounting only: the vassal runs, its io figures read low.
        eprintln!(
            "vassal-launch: {}: {e}; its io usage is not counted",
            config.name
        );
    }
    disk::apply_quotas(config)?;

    // 3. The sync socket; signals go to a signalfd.
    let (outer_end, inner_end) = sync::pair()?;
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
        Signal::SIGWINCH,
    ] {
        signals.add(s);
    }
    signals.thread_block().map_err(LaunchError::Signals)?;
    let sigfd =
        SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC).map_err(LaunchError::Signals)?;

    // 4. The supervisor, in new namespaces, with no supplementary groups to
    //    inherit (a user namespace cannot drop them later).
    nix::unistd::setgroups(&[]).map_err(|e| LaunchError::Clone(e.into()))?;
    let child = clone_supervisor(config, inner_end)?;
    let mut guard = ChildGuard(Some(child));

    // 5. User namespace maps, then the cgroup, then go.
    if let (Some(uid_map), Some(gid_map)) = (&config.uid_map, &config.gid_map) {
        write_id_maps(child, uid_map, gid_map)?;
    }
    cg.add(child.as_raw())?;
    // The tun device, made in the vassal's network namespace (see
    // network::create_tun_in); only this process holds its fd.
    let tun = match &config.network {
        Some(_) => Some(network::create_tun_in(child.as_raw())?),
        None => None,
    };
    sync::send(outer_end.as_fd(), &Message::Go)?;
    // With the operator's terminal on fds 0-2, *ready* brings the master of
    // the vassal's pty (terminal.rs); the relay restores the terminal when
    // dropped, on every path out.
    let stdio = Stdio::detect();
    let master = match sync::recv_with_fd(outer_end.as_fd())? {
        (Message::Ready, master) => master,
        (Message::Failed { error }, _) => return Err(LaunchError::Inside(error)),
        (other, _) => return Err(LaunchError::Inside(format!("unexpected message {other:?}"))),
    };

    // 6. Attach the tun device to the router; then the command may start.
    let mut attachment = match (&config.network, &tun) {
        (Some(net), Some(tun)) => {
            match network::attach(
                &config.name,
                net,
                &config.limits,
                tun.as_fd(),
                network::ATTACH_TIMEOUT,
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    let _ = sync::send(
                        outer_end.as_fd(),
                        &Message::Failed {
                            error: e.to_string(),
                        },
                    );
                    return Err(e.into());
                }
            }
        }
        _ => None,
    };
    sync::send(outer_end.as_fd(), &Message::Start)?;
    // Only now the pid goes on record: `enter` must never join a vassal
    // whose mounts, hostname and devpts are still being set up.
    state.record(child.as_raw())?;
    let mut relay = master.map(|m| Relay::new(m, stdio));

    // 7. Supervise from outside: forward signals, keep the attachment,
    //    report events as they happen.
    let mut events = Events::new(&config.name);
    let mut meter = Meter::new(&config.limits);
    let (code, sig, wall_clock) = watch(
        config,
        child,
        &outer_end,
        &sigfd,
        tun.as_ref(),
        &mut attachment,
        (&cg, &mut events, &mut meter, relay.as_mut()),
    );
    guard.0 = None;
    if let Some(r) = relay.as_mut() {
        r.drain();
    }
    drop(relay);

    // 8. Account and report the end, then detach and remove everything.
    let usage: Usage = cg.usage();
    let report = Report::new(config, code, sig, wall_clock, started.elapsed(), usage);
    events.finish(&report, attachment.as_ref());
    // The last usage, so the seconds since the last periodic report are
    // billed too.
    meter.report(&usage, attachment.as_ref());
    drop(attachment);
    if let Some(path) = report_path {
        report.write(path).map_err(|source| LaunchError::Report {
            path: path.to_owned(),
            source,
        })?;
    }
    drop(cg);
    drop(state);
    Ok(Outcome {
        status: report.status(),
        report,
    })
}

fn clone_supervisor(config: &VassalConfig, sync_fd: OwnedFd) -> Result<Pid, LaunchError> {
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    if config.uid_map.is_some() {
        flags |= libc::CLONE_NEWUSER;
    }
    let clone = |limits: Option<&userns::Limits>| {
        // SAFETY: a raw clone with no new stack behaves like fork: the
        // child runs on a copy of our stack. The launcher is
        // single-threaded, so the child inherits no locks held by other
        // threads.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if rc == 0 {
            // The child, first process of its user namespace (if any):
            // set the namespace's own limits while it holds every
            // capability in it, then become the supervisor.
            if let Some(Err(e)) = limits.map(userns::Limits::apply) {
                let error = e.to_string();
                let _ = sync::send(sync_fd.as_fd(), &Message::Failed { error });
                // SAFETY: _exit ends this fork without running the
                // parent's atexit handlers or flushing shared buffers.
                unsafe { libc::_exit(1) };
            }
            supervisor::run(config, sync_fd);
        }
        // The error now, before anything else can overwrite errno.
        (rc >= 0)
            .then_some(rc)
            .ok_or_else(std::io::Error::last_os_error)
    };
    let rc = match (&config.uid_map, &config.gid_map) {
        (Some(uid_map), Some(gid_map)) => {
            // The user namespace's owner is the vassal's host uid and gid:
            // the kernel's per-user counts (inotify, mqueue bytes, ...) of
            // everything inside are charged to them, not to root.
            let uid = map_to_host(uid_map, config.uid).unwrap_or(config.uid);
            let gid = map_to_host(gid_map, config.gid).unwrap_or(config.gid);
            let limits = userns::Limits::of_host();
            userns::as_owner(uid, gid, || clone(Some(&limits)))?
        }
        _ => clone(None),
    };
    let pid = rc.map_err(LaunchError::Clone)?;
    Ok(Pid::from_raw(pid as i32))
}

/// Warns (stderr) when another live vassal runs as the same host uid:
/// without a user namespace of its own the kernel's per-user counts
/// (processes, inotify, message queues, pipe pages, keys) are per uid, so
/// the two share them and one can use up the other's.
fn warn_shared_uid(config: &VassalConfig) {
    for other in state::sharing_uid(config) {
        eprintln!(
            "vassal-launch: {}: warning: host uid {} is also the uid of running vassal {} (launcher pid {}); \
             the kernel's per-user counts (processes, inotify, message queues, pipe pages, keys) are shared \
             between them: give each project a uid of its own",
            config.name,
            state::host_uid(config),
            other.name,
            other.launcher_pid
        );
    }
}

fn write_id_maps(child: Pid, uid_map: &[IdRange], gid_map: &[IdRange]) -> Result<(), LaunchError> {
    let render = |m: &[IdRange]| {
        m.iter()
            .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
            .collect::<String>()
    };
    let proc = PathBuf::from(format!("/proc/{child}"));
    for (file, text) in [
        ("setgroups", "deny".to_string()),
        ("gid_map", render(gid_map)),
        ("uid_map", render(uid_map)),
    ] {
        let path = proc.join(file);
        std::fs::write(&path, text).map_err(|source| LaunchError::IdMap { path, source })?;
    }
    Ok(())
}

/// Waits for the vassal to end while forwarding signals, keeping it
/// attached, reporting its cgroup's events every second and its usage every
/// `accounting::REPORT_EVERY`. Returns (exit
/// code, signal, stopped for wall clock).
fn watch(
    config: &VassalConfig,
    child: Pid,
    sync_fd: &OwnedFd,
    sigfd: &SignalFd,
    tun: Option<&OwnedFd>,
    attachment: &mut Option<Attachment>,
    (cg, events, meter, mut relay): (&Cgroup, &mut Events, &mut Meter, Option<&mut Relay>),
) -> (Option<i32>, Option<i32>, bool) {
    let mut ended: Option<(Option<i32>, Option<i32>, bool)> = None;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at: Option<Instant> = None;
    let mut check_at = Instant::now() + events::CHECK_EVERY;
    loop {
        let tick = Instant::now() >= check_at;
        if tick || meter.due() {
            let usage = cg.usage();
            // Events only on the one-second tick: an OOM kill is confirmed
            // by the check after the one that saw it (events.rs).
            if tick {
                events.check(&usage, attachment.as_ref());
                check_at = Instant::now() + events::CHECK_EVERY;
            }
            if meter.due() {
                meter.report(&usage, attachment.as_ref());
            }
        }
        let mut fds = vec![
            PollFd::new(sync_fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
        ];
        let router_at = slot(
            &mut fds,
            attachment
                .as_ref()
                .map(|a| (a.socket.as_fd(), PollFlags::POLLIN)),
        );
        let stdin = std::io::stdin();
        let (master_at, stdin_at) = match relay.as_ref() {
            Some(r) => (
                slot(&mut fds, r.master_interest()),
                slot(
                    &mut fds,
                    r.wants_input().then(|| (stdin.as_fd(), PollFlags::POLLIN)),
                ),
            ),
            None => (None, None),
        };
        let wake = retry_at.map_or(check_at, |t| t.min(check_at));
        let timeout = PollTimeout::try_from(wake.saturating_duration_since(Instant::now()))
            .unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, timeout);
        let revents = |i: Option<usize>| {
            i.and_then(|i| fds.get(i))
                .and_then(|f| f.revents())
                .unwrap_or(PollFlags::empty())
        };
        let ready = |i: usize| !revents(Some(i)).is_empty();
        let (sync_ready, sig_ready) = (ready(0), ready(1));
        let router_ready = !revents(router_at).is_empty();
        let (master_events, stdin_events) = (revents(master_at), revents(stdin_at));
        drop(fds);
        if let Some(r) = relay.as_mut() {
            r.service(master_events, stdin_events);
        }

        if sync_ready {
            match sync::recv(sync_fd.as_fd()) {
                Ok(Message::Ended {
                    code,
                    signal,
                    wall_clock,
                }) => ended = Some((code, signal, wall_clock)),
                Ok(_) => {}
                Err(_) => {
                    // The supervisor is gone without a word: take its status.
                    return reap(child, ended);
                }
            }
        }
        if sig_ready {
            if let Ok(Some(info)) = sigfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if let Ok(status) =
                            waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                        {
                            if !matches!(status, WaitStatus::StillAlive) {
                                return finish(status, ended);
                            }
                        }
                    }
                    Ok(Signal::SIGWINCH) => {
                        if let Some(r) = relay.as_ref() {
                            r.resize();
                        }
                    }
                    Ok(s) => {
                        let _ = signal::kill(child, s);
                    }
                    Err(_) => {}
                }
            }
        }
        if router_ready {
            eprintln!(
                "vassal-launch: {}: the router closed the attachment; re-attaching",
                config.name
            );
            *attachment = None;
            retry_at = Some(Instant::now());
            backoff = Duration::from_millis(100);
        }
        if let (Some(at), Some(net), Some(tun)) = (retry_at, &config.network, tun) {
            if Instant::now() >= at {
                match network::attach(
                    &config.name,
                    net,
                    &config.limits,
                    tun.as_fd(),
                    network::REATTACH_TIMEOUT,
                ) {
                    Ok(a) => {
                        eprintln!(
                            "vassal-launch: {}: re-attached to {}",
                            config.name,
                            net.router.display()
                        );
                        *attachment = Some(a);
                        retry_at = None;
                        meter.reattached();
                    }
                    Err(_) => {
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }
}

/// Adds `fd` to the poll set; returns its index.
fn slot<'a>(fds: &mut Vec<PollFd<'a>>, fd: Option<(BorrowedFd<'a>, PollFlags)>) -> Option<usize> {
    fd.map(|(fd, flags)| {
        fds.push(PollFd::new(fd, flags));
        fds.len() - 1
    })
}

fn reap(
    child: Pid,
    ended: Option<(Option<i32>, Option<i32>, bool)>,
) -> (Option<i32>, Option<i32>, bool) {
    match waitpid(child, None) {
        Ok(status) => finish(status, ended),
        Err(_) => ended.unwrap_or((None, None, false)),
    }
}

fn finish(
    status: WaitStatus,
    ended: Option<(Option<i32>, Option<i32>, bool)>,
) -> (Option<i32>, Option<i32>, bool) {
    if let Some(e) = ended {
        return e;
    }
    match status {
        WaitStatus::Exited(_, code) => (Some(code), None, false),
        WaitStatus::Signaled(_, sig, _) => (None, Some(sig as i32), false),
        _ => (None, None, false),
    }
}
