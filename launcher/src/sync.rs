//! Messages between the outer launcher (host namespaces) and the vassal's
//! supervisor (pid 1 inside), one JSON object per datagram on a
//! `SOCK_SEQPACKET` socketpair made before the clone.

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// What travels on the sync socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum Message {
    /// Outer -> supervisor: id maps written and cgroup joined; set up.
    Go,
    /// Supervisor -> outer: mounts, hostname and network are in place.
    Ready,
    /// Outer -> supervisor: the router accepted the vassal (or it has no
    /// network); start the command.
    Start,
    /// Either way: a step failed; the sender gives up.
    Failed {
        /// The step and its path or device, and the cause.
        error: String,
    },
    /// Supervisor -> outer: the command has ended.
    Ended {
        /// Exit code when it exited.
        code: Option<i32>,
        /// Signal number when it was killed.
        signal: Option<i32>,
        /// The supervisor stopped it for its wall-clock limit.
        wall_clock: bool,
    },
}

/// A failure on the sync socket.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// socketpair(2) failed.
    #[error("creating the launcher/supervisor socketpair: {0}")]
    Create(#[source] nix::Error),
    /// send failed.
    #[error("sending {what} to the other side of the launch: {source}")]
    Send {
        /// The message kind.
        what: &'static str,
        /// The cause.
        source: nix::Error,
    },
    /// recv failed.
    #[error("receiving from the other side of the launch: {0}")]
    Receive(#[source] nix::Error),
    /// The other side exited or closed the socket.
    #[error("the other side of the launch went away")]
    Closed,
    /// Not one of our messages.
    #[error("unexpected message on the sync socket: {0}")]
    Garbled(String),
}

/// Creates the close-on-exec socketpair.
pub fn pair() -> Result<(OwnedFd, OwnedFd), SyncError> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(SyncError::Create)
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Go => "go",
        Message::Ready => "ready",
        Message::Start => "start",
        Message::Failed { .. } => "failed",
        Message::Ended { .. } => "ended",
    }
}

/// Sends one message.
pub fn send(fd: BorrowedFd<'_>, message: &Message) -> Result<(), SyncError> {
    send_with_fd(fd, message, None)
}

/// Sends one message, and `passed` with it (`SCM_RIGHTS`): the supervisor
/// hands the master of the vassal's pty to the outer launcher this way.
pub fn send_with_fd(
    fd: BorrowedFd<'_>,
    message: &Message,
    passed: Option<BorrowedFd<'_>>,
) -> Result<(), SyncError> {
    let bytes = serde_json::to_vec(message).unwrap_or_default();
    let raw: Vec<RawFd> = passed.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<socket::ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![socket::ControlMessage::ScmRights(&raw)]
    };
    loop {
        match socket::sendmsg::<()>(
            fd.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EPIPE | nix::Error::ECONNRESET) => return Err(SyncError::Closed),
            Err(source) => {
                return Err(SyncError::Send {
                    what: kind(message),
                    source,
                })
            }
        }
    }
}

/// Receives one message, blocking.
pub fn recv(fd: BorrowedFd<'_>) -> Result<Message, SyncError> {
    recv_with_fd(fd).map(|(m, _)| m)
}

/// Receives one message and the descriptor sent with it, if any (close on
/// exec, like every descriptor of the launcher).
pub fn recv_with_fd(fd: BorrowedFd<'_>) -> Result<(Message, Option<OwnedFd>), SyncError> {
    let mut buf = [0u8; 8192];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (n, passed) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut passed = None;
                for c in msg.cmsgs().map_err(SyncError::Receive)? {
                    if let socket::ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed this
                            // descriptor in our table; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            passed.get_or_insert(owned);
                        }
                    }
                }
                break (msg.bytes, passed);
            }
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Err(SyncError::Closed),
            Err(e) => return Err(SyncError::Receive(e)),
        }
    };
    if n == 0 {
        return Err(SyncError::Closed);
    }
    let message =
        serde_json::from_slice(&buf[..n]).map_err(|e| SyncError::Garbled(e.to_string()))?;
    Ok((message, passed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_cross_and_close_is_seen() {
        let (a, b) = pair().unwrap();
        let ended = Message::Ended {
            code: None,
            signal: Some(9),
            wall_clock: true,
        };
        send(a.as_fd(), &ended).unwrap();
        send(
            a.as_fd(),
            &Message::Failed {
                error: "mount /proc: EPERM".into(),
            },
        )
        .unwrap();
        assert_eq!(recv(b.as_fd()).unwrap(), ended);
        assert!(matches!(recv(b.as_fd()).unwrap(), Message::Failed { .. }));
        let (x, _y) = pair().unwrap();
        send_with_fd(a.as_fd(), &Message::Ready, Some(x.as_fd())).unwrap();
        let (m, passed) = recv_with_fd(b.as_fd()).unwrap();
        assert_eq!(m, Message::Ready);
        let passed = passed.expect("the descriptor travels with the message");
        let flags = nix::fcntl::fcntl(&passed, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        drop(a);
        assert!(matches!(recv(b.as_fd()), Err(SyncError::Closed)));
    }
}
