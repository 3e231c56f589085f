//! The operator's terminal and the vassal's own. A customer's command never
//! holds a descriptor of a host terminal nor shares a session with one: from
//! a shared controlling terminal, `ioctl(TIOCSTI)` pushes keystrokes into the
//! operator's shell (bubblewrap CVE-2017-5226). When any of the launcher's
//! fds 0-2 is a terminal, the supervisor opens a pty on the vassal's own
//! devpts ([`open_pty`]); the command gets its slave, as its controlling
//! terminal, in place of each of those fds ([`take_session`]); the outer
//! launcher relays the operator's terminal to the master ([`Relay`]), as
//! `ssh -t` or `docker run -t` do.

use nix::poll::PollFlags;
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The devpts instance mounted on the vassal's `/dev/pts` (rootfs.rs).
const PTMX: &str = "/dev/pts/ptmx";

/// A step of opening the vassal's pty that failed.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// open, unlock or peer open of the pty failed.
    #[error("opening the vassal's pty ({step} {path}): {source}")]
    Pty {
        /// The call.
        step: &'static str,
        /// The ptmx node.
        path: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Which of the descriptors 0, 1 and 2 are terminals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio(pub [bool; 3]);

impl Stdio {
    /// Looks at this process's fds 0-2.
    pub fn detect() -> Stdio {
        let mut s = Stdio::default();
        for (fd, t) in s.0.iter_mut().enumerate() {
            // SAFETY: isatty on a descriptor number; a closed one is false.
            *t = unsafe { libc::isatty(fd as RawFd) } == 1;
        }
        s
    }

    /// Whether any of them is a terminal.
    pub fn any(self) -> bool {
        self.0.iter().any(|t| *t)
    }
}

/// A pty of the vassal's devpts: the master goes to the outer launcher, the
/// slave to the command.
pub struct Pty {
    /// The master side.
    pub master: OwnedFd,
    /// The slave side, owned by the command's uid and gid.
    pub slave: OwnedFd,
}

fn pty_error(step: &'static str) -> TerminalError {
    TerminalError::Pty {
        step,
        path: PTMX,
        source: std::io::Error::last_os_error(),
    }
}

/// Opens a pty on the vassal's own devpts (after pivot_root: the path is
/// the vassal's, built by the supervisor, before any customer code runs).
/// The slave is opened from the master (`TIOCGPTPEER`), not by name.
pub fn open_pty(uid: u32, gid: u32) -> Result<Pty, TerminalError> {
    let path = c"/dev/pts/ptmx";
    // SAFETY: open of a NUL-terminated path; the result is checked.
    let m = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if m < 0 {
        return Err(pty_error("open"));
    }
    // SAFETY: m is a descriptor we just opened and own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(pty_error("unlock (TIOCSPTLCK)"));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let s = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(pty_error("slave (TIOCGPTPEER)"));
    }
    // SAFETY: s is a descriptor the kernel just gave us.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    // The slave belongs to the command's user, who owns the session.
    nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into())).map_err(|e| {
        TerminalError::Pty {
            step: "chown of the slave of",
            path: PTMX,
            source: e.into(),
        }
    })?;
    Ok(Pty { master, slave })
}

/// In the command's forked child, before the privileges drop: a session of
/// its own (no controlling terminal of the operator's), then, with a pty,
/// its slave as the controlling terminal and on each of fds 0-2 that was a
/// terminal. Only async-signal-safe calls. Returns the failed step.
pub fn take_session(
    slave: Option<BorrowedFd<'_>>,
    stdio: Stdio,
) -> Result<(), (&'static str, nix::Error)> {
    nix::unistd::setsid().map_err(|e| ("setsid", e))?;
    if let Some(slave) = slave {
        // SAFETY: TIOCSCTTY with 0 on a descriptor we hold.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
            return Err((
                "making the vassal's pty the controlling terminal",
                nix::Error::last(),
            ));
        }
        for (fd, tty) in stdio.0.iter().enumerate() {
            if *tty {
                // SAFETY: dup2 onto a standard descriptor; the slave stays open.
                if unsafe { libc::dup2(slave.as_raw_fd(), fd as RawFd) } < 0 {
                    return Err((
                        "putting the vassal's pty on the standard descriptors",
                        nix::Error::last(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The outer launcher's side: copies the operator's terminal to the master
/// and the master to the operator's terminal, with the operator's terminal
/// in raw mode (the vassal's pty does the line discipline; ^C reaches the
/// command through it). Restores the operator's settings when dropped.
pub struct Relay {
    master: OwnedFd,
    master_open: bool,
    /// fd 0 is relayed: a terminal whose foreground the launcher is (in
    /// the background, reading it would stop the launcher).
    input: bool,
    /// Where the pty's output goes: fd 1 if a terminal, else fd 2 if one,
    /// else nowhere (only fd 0 is a terminal: the output is its echo).
    output: Option<RawFd>,
    /// Input the pty did not take yet (a command that does not read).
    pending: Vec<u8>,
    saved: Option<Termios>,
    stdio: Stdio,
}

/// At most this much of the operator's typing waits for a command that
/// does not read; more is dropped.
const PENDING_MAX: usize = 64 * 1024;

impl Relay {
    /// Starts relaying `stdio`'s terminals to `master`.
    pub fn new(master: OwnedFd, stdio: Stdio) -> Relay {
        let _ = nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        let stdin = std::io::stdin();
        let foreground = stdio.0[0]
            && nix::unistd::tcgetpgrp(stdin.as_fd()).is_ok_and(|g| g == nix::unistd::getpgrp());
        let output = [1, 2].into_iter().find(|&fd| stdio.0[fd as usize]);
        let mut relay = Relay {
            master,
            master_open: true,
            input: foreground,
            output,
            pending: Vec::new(),
            saved: None,
            stdio,
        };
        relay.resize();
        if foreground {
            if let Ok(saved) = termios::tcgetattr(stdin.as_fd()) {
                let mut raw = saved.clone();
                termios::cfmakeraw(&mut raw);
                if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_ok() {
                    relay.saved = Some(saved);
                }
            }
        }
        relay
    }

    /// Copies the operator's window size to the vassal's pty (at start and
    /// on SIGWINCH); the kernel then signals the command's foreground.
    pub fn resize(&self) {
        let Some(fd) = self.stdio.0.iter().position(|t| *t) else {
            return;
        };
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ/TIOCSWINSZ write and read a winsize we own.
        unsafe {
            if libc::ioctl(fd as RawFd, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// The master and what to wait for on it.
    pub fn master_interest(&self) -> Option<(BorrowedFd<'_>, PollFlags)> {
        let mut flags = PollFlags::empty();
        if self.master_open {
            flags |= PollFlags::POLLIN;
            if !self.pending.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
        }
        (!flags.is_empty()).then(|| (self.master.as_fd(), flags))
    }

    /// Whether fd 0 is to be polled now.
    pub fn wants_input(&self) -> bool {
        self.input && self.master_open && self.pending.len() < PENDING_MAX
    }

    /// Moves what is ready: `master` and `stdin` are the poll results.
    pub fn service(&mut self, master: PollFlags, stdin: PollFlags) {
        if !master.is_empty() {
            if master.intersects(PollFlags::POLLOUT) {
                self.flush_input();
            }
            if master.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.copy_output(16);
            }
        }
        if !stdin.is_empty() {
            let mut buf = [0u8; 4096];
            match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
                Ok(0) | Err(_) => self.input = false,
                Ok(n) => {
                    let room = PENDING_MAX.saturating_sub(self.pending.len());
                    self.pending.extend_from_slice(&buf[..n.min(room)]);
                    self.flush_input();
                }
            }
        }
    }

    fn flush_input(&mut self) {
        while !self.pending.is_empty() {
            match nix::unistd::write(&self.master, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::Error::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Copies what the pty has for the operator, at most `rounds` reads
    /// (a flood must not starve the launcher's other duties); on EIO (no
    /// slave left open) or end, stops watching the master.
    fn copy_output(&mut self, rounds: usize) {
        let mut buf = [0u8; 4096];
        for _ in 0..rounds {
            match nix::unistd::read(&self.master, &mut buf) {
                Ok(0) => {
                    self.master_open = false;
                    return;
                }
                Ok(n) => {
                    if let Some(fd) = self.output {
                        // SAFETY: fd 1 or 2 stays open for the launcher's life.
                        write_all(unsafe { BorrowedFd::borrow_raw(fd) }, &buf[..n]);
                    }
                }
                Err(nix::Error::EAGAIN) => return,
                Err(nix::Error::EINTR) => {}
                Err(_) => {
                    self.master_open = false;
                    return;
                }
            }
        }
    }

    /// After the vassal ended: what is left in the pty, to the operator.
    pub fn drain(&mut self) {
        if self.master_open {
            self.copy_output(usize::MAX);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                let mut pfd = [nix::poll::PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(1000u16));
            }
            Err(_) => return,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}
