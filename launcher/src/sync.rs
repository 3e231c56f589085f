//! Messages between the outer launcher (host namespaces) and the vassal's
//! supervisor (pid 1 inside), one JSON object per datagram on a
//! `SOCK_SEQPACKET` socketpair made before the clone.

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

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
    let bytes = serde_json::to_vec(message).unwrap_or_default();
    loop {
        match socket::send(fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
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
    let mut buf = [0u8; 8192];
    let n = loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => break n,
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::ECONNRESET) => return Err(SyncError::Closed),
            Err(e) => return Err(SyncError::Receive(e)),
        }
    };
    if n == 0 {
        return Err(SyncError::Closed);
    }
    serde_json::from_slice(&buf[..n]).map_err(|e| SyncError::Garbled(e.to_string()))
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
        drop(a);
        assert!(matches!(recv(b.as_fd()), Err(SyncError::Closed)));
    }
}
