//! `vassal-launch enter NAME`: a command (a shell by default) inside a
//! running vassal's namespaces and cgroup, as the project's user with the
//! same drops as the vassal's command, on a pseudo-terminal from the
//! vassal's own devpts. This process relays the caller's terminal.

use crate::cgroup;
use crate::launch::MOUNTINFO;
use crate::privileges;
use crate::state;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use nix::sys::termios;
use nix::sys::wait::{waitpid, WaitStatus};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An enter step that failed.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The vassal is not running.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The state file's pid is no longer the vassal's supervisor (its
    /// launcher was killed and the pid went to another process).
    #[error("pid {pid} of the state file is not the supervisor of launcher {launcher} (parent {parent}): the vassal is gone")]
    NotSupervisor {
        /// The recorded supervisor pid.
        pid: i32,
        /// The recorded launcher pid.
        launcher: i32,
        /// That process's actual parent.
        parent: i32,
    },
    /// A step failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done, naming the path.
        step: String,
        /// The cause.
        source: std::io::Error,
    },
}

fn step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnterError {
    let step = step.into();
    move |source| EnterError::Step { step, source }
}

/// Enters vassal `name` and runs `command`; returns its exit status.
pub fn enter(name: &str, command: &[String]) -> Result<i32, EnterError> {
    let record = state::lookup(name)?;
    let supervisor = supervisor_dir(&record)?;
    // Join the cgroup while the host's cgroupfs is still visible.
    if let Ok(h) = cgroup::detect(Path::new(MOUNTINFO)) {
        for dir in cgroup::existing_dirs(&h, name) {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .map_err(step(format!("joining {}", procs.display())))?;
        }
    }
    let mut kinds = Vec::new();
    if record.user_namespace {
        kinds.push(("user", libc::CLONE_NEWUSER));
    }
    kinds.extend([
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
    ]);
    if record.user_namespace {
        kinds.push(("cgroup", libc::CLONE_NEWCGROUP));
    }
    kinds.push(("mnt", libc::CLONE_NEWNS));
    // Open them all first: after entering the mount namespace, the host's
    // /proc is gone.
    let mut handles = Vec::new();
    for (kind, flag) in kinds {
        let path = format!("/proc/{}/ns/{kind}", record.pid);
        let f = nix::fcntl::openat(
            &supervisor,
            format!("ns/{kind}").as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| EnterError::Step {
            step: format!("opening {path}"),
            source: e.into(),
        })?;
        handles.push((path, File::from(f), flag));
    }
    drop(supervisor);
    for (path, f, flag) in &handles {
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::from_bits_truncate(*flag)).map_err(
            |e| EnterError::Step {
                step: format!("entering {path}"),
                source: e.into(),
            },
        )?;
    }
    drop(handles);
    if record.user_namespace {
        nix::unistd::setresgid(0.into(), 0.into(), 0.into()).map_err(|e| EnterError::Step {
            step: "becoming root of the user namespace".into(),
            source: e.into(),
        })?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into()).map_err(|e| EnterError::Step {
            step: "becoming root of the user namespace".into(),
            source: e.into(),
        })?;
    }
    // SAFETY: prctl with integer arguments; the relay must not be traced
    // or read by the vassal's processes.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .map_err(|e| EnterError::Step {
            step: "opening the vassal's /dev/ptmx".into(),
            source: e.into(),
        })?;
    nix::pty::grantpt(&master).map_err(|e| EnterError::Step {
        step: "grantpt".into(),
        source: e.into(),
    })?;
    nix::pty::unlockpt(&master).map_err(|e| EnterError::Step {
        step: "unlockpt".into(),
        source: e.into(),
    })?;
    let slave_name = nix::pty::ptsname_r(&master).map_err(|e| EnterError::Step {
        step: "ptsname".into(),
        source: e.into(),
    })?;
    let slave = nix::fcntl::open(
        slave_name.as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| EnterError::Step {
        step: format!("opening {slave_name}"),
        source: e.into(),
    })?;
    // The slave belongs to the project's user, who owns the session.
    let _ = nix::unistd::fchown(&slave, Some(record.uid.into()), Some(record.gid.into()));

    let stdin_tty = termios::tcgetattr(std::io::stdin()).ok();
    if stdin_tty.is_some() {
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ/TIOCSWINSZ read and write a winsize we own.
        unsafe {
            libc::ioctl(0, libc::TIOCGWINSZ, &mut ws);
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }

    let exec = prepare(command)?;
    // SAFETY: single-threaded; the child execs or exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(EnterError::Step {
            step: "fork".into(),
            source: e.into(),
        }),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(master);
            child(slave, &record, &exec)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(slave);
            let restore = stdin_tty.clone();
            if let Some(mut raw) = stdin_tty {
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw);
            }
            relay(master, restore.is_some());
            if let Some(t) = restore {
                let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &t);
            }
            Ok(match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => c,
                Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            })
        }
    }
}

/// Opens `/proc/<pid>` of the recorded supervisor and checks that its
/// parent is the recorded launcher: a state file left by a killed launcher
/// names a pid the kernel may since have given to any process (a
/// customer's, in namespaces it made). The namespaces are then opened
/// through this directory, which stays bound to the process it was opened
/// for: if that pid is reused in between, the opens fail.
fn supervisor_dir(record: &state::Record) -> Result<OwnedFd, EnterError> {
    let path = format!("/proc/{}", record.pid);
    let dir = nix::fcntl::open(
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| EnterError::Step {
        step: format!("opening {path}"),
        source: e.into(),
    })?;
    let status = nix::fcntl::openat(
        &dir,
        "status",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .and_then(|fd| std::io::read_to_string(File::from(fd)))
    .map_err(step(format!("reading {path}/status")))?;
    let parent = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if parent != record.launcher_pid {
        return Err(EnterError::NotSupervisor {
            pid: record.pid,
            launcher: record.launcher_pid,
            parent,
        });
    }
    Ok(dir)
}

struct Exec {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn prepare(command: &[String]) -> Result<Exec, EnterError> {
    let bad = |what: &str| EnterError::Step {
        step: format!("{what} holds a NUL byte"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    };
    let name = command.first().cloned().unwrap_or_else(|| "/bin/sh".into());
    let path = "/usr/local/bin:/usr/bin:/bin";
    let program = if name.contains('/') {
        name
    } else {
        path.split(':')
            .map(|d| format!("{d}/{name}"))
            .find(|p| Path::new(p).is_file())
            .unwrap_or(name)
    };
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
    Ok(Exec {
        program: CString::new(program).map_err(|_| bad("the command"))?,
        argv: command
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| bad("an argument")))
            .collect::<Result<_, _>>()?,
        envp: [
            format!("PATH={path}"),
            format!("TERM={term}"),
            "HOME=/".into(),
        ]
        .into_iter()
        .map(|e| CString::new(e).map_err(|_| bad("the environment")))
        .collect::<Result<_, _>>()?,
    })
}

fn child(slave: OwnedFd, record: &state::Record, exec: &Exec) -> ! {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        eprintln!("vassal-launch enter: {what}: {e}");
        // SAFETY: leaving the forked child.
        unsafe { libc::_exit(126) }
    };
    if let Err(e) = nix::unistd::setsid() {
        fail("setsid", &e);
    }
    // SAFETY: TIOCSCTTY makes the slave our controlling terminal.
    unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe { libc::dup2(slave.as_raw_fd(), target) };
    }
    drop(slave);
    if let Err(e) = privileges::drop_to(
        record.uid,
        record.gid,
        record.nofile,
        record.file_size,
        record.user_namespace,
    ) {
        fail("dropping privileges", &e);
    }
    let _ = std::env::set_current_dir("/");
    // The vassal's own filter, as `run` compiled it (see state::Record).
    if let Some(filter) = &record.seccomp {
        if let Err(e) = filter.install() {
            fail("installing seccomp", &e);
        }
    }
    let e = nix::unistd::execve(&exec.program, &exec.argv, &exec.envp).unwrap_err();
    fail(&format!("starting {}", exec.program.to_string_lossy()), &e)
}

/// Copies stdin to the pty and the pty to stdout until the pty closes.
fn relay(mut master: nix::pty::PtyMaster, tty: bool) {
    // SAFETY: fds 0 and 1 stay open for the life of the process; ManuallyDrop
    // keeps these handles from closing them.
    let mut stdin = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    // SAFETY: as above.
    let mut stdout = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let m = fds[0].revents().unwrap_or(PollFlags::empty());
        let i = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        drop(fds);
        if !m.is_empty() {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break, // EIO: the last slave fd closed
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                }
            }
        }
        if !i.is_empty() {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    if !tty {
                        // End of input: the terminal's EOF character.
                        let _ = master.write_all(b"\x04");
                    }
                }
                Ok(n) => {
                    let _ = master.write_all(&buf[..n]);
                }
            }
        }
    }
}
