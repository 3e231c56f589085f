//! Moving protocol datagrams, and the tun fd with the hello, over a unix
//! `SOCK_SEQPACKET` socket.
//!
//! These functions work on blocking and non-blocking sockets alike: on a
//! non-blocking one they return [`TransportError::WouldBlock`] so that an
//! event loop can wait for readiness and call again.

use crate::{ProtocolError, Request, Response, MAX_MESSAGE_LEN};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// A failure to move a message.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Creating the client socket failed.
    #[error("creating a seqpacket socket: {0}")]
    Socket(#[source] Errno),
    /// `connect` to the control socket failed.
    #[error("connecting to the router's control socket {path}: {errno}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        errno: Errno,
    },
    /// `sendmsg` failed.
    #[error("sending on the control socket: {0}")]
    Send(#[source] Errno),
    /// `recvmsg` failed.
    #[error("receiving on the control socket: {0}")]
    Receive(#[source] Errno),
    /// A non-blocking socket has nothing to read, or no room to write.
    #[error("the control socket would block")]
    WouldBlock,
    /// The peer closed the connection.
    #[error("the peer closed the control connection")]
    Closed,
    /// The datagram or its ancillary data was larger than the protocol allows.
    #[error(
        "datagram truncated: larger than {MAX_MESSAGE_LEN} bytes or carrying more than one fd"
    )]
    Truncated,
    /// The datagram does not follow the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Connects a new blocking, close-on-exec seqpacket socket to `path`.
pub fn connect(path: &Path) -> Result<OwnedFd, TransportError> {
    connect_within(path, None)
}

/// [`connect`], with every blocking step on the socket (the connect
/// itself, each send and each receive) bounded by `timeout`: a wedged
/// peer then answers [`TransportError::WouldBlock`] instead of holding
/// the caller forever.
pub fn connect_within(
    path: &Path,
    timeout: Option<std::time::Duration>,
) -> Result<OwnedFd, TransportError> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(TransportError::Socket)?;
    if let Some(t) = timeout {
        let tv = nix::sys::time::TimeVal::new(
            t.as_secs() as libc::time_t,
            t.subsec_micros() as libc::suseconds_t,
        );
        // A unix connect waits on the send timeout when the listener's
        // backlog is full; sends and receives on their own timeouts.
        socket::setsockopt(&fd, socket::sockopt::SendTimeout, &tv)
            .map_err(TransportError::Socket)?;
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv)
            .map_err(TransportError::Socket)?;
    }
    let addr = UnixAddr::new(path).map_err(|errno| TransportError::Connect {
        path: path.to_owned(),
        errno,
    })?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(|errno| TransportError::Connect {
        path: path.to_owned(),
        errno,
    })?;
    Ok(fd)
}

/// Sends one datagram, with `pass_fd` as `SCM_RIGHTS` when given.
pub fn send_datagram(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    pass_fd: Option<BorrowedFd<'_>>,
) -> Result<(), TransportError> {
    let iov = [IoSlice::new(bytes)];
    let fds: [RawFd; 1];
    let cmsgs: &[ControlMessage<'_>] = match pass_fd {
        Some(fd) => {
            fds = [fd.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    loop {
        match socket::sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(TransportError::WouldBlock),
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(errno) => return Err(TransportError::Send(errno)),
        }
    }
}

/// Receives one datagram into `buf` and returns its length and the fd that
/// came with it, if any. A datagram carrying more than one fd, or longer than
/// `buf`, is refused (the extra fds are closed).
pub fn recv_datagram(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, Option<OwnedFd>), TransportError> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Err(TransportError::WouldBlock),
            Err(Errno::ECONNRESET) => return Err(TransportError::Closed),
            Err(errno) => return Err(TransportError::Receive(errno)),
        };
        let mut received: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    for fd in fds {
                        // SAFETY: the kernel just installed this descriptor
                        // in our table for us (SCM_RIGHTS); nothing else owns
                        // it, so taking ownership here closes it exactly once.
                        received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let len = msg.bytes;
        if truncated || received.len() > 1 {
            return Err(TransportError::Truncated);
        }
        if len == 0 && received.is_empty() {
            return Err(TransportError::Closed);
        }
        return Ok((len, received.pop()));
    }
}

/// Sends a request, with the tun fd for a hello.
pub fn send_request(
    socket: BorrowedFd<'_>,
    request: &Request,
    tun: Option<BorrowedFd<'_>>,
) -> Result<(), TransportError> {
    send_datagram(socket, &crate::encode(request), tun)
}

/// Receives one response datagram. A response never carries an fd; one that
/// does is closed.
pub fn recv_response(socket: BorrowedFd<'_>) -> Result<Response, TransportError> {
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let (len, _fd) = recv_datagram(socket, &mut buf)?;
    Ok(crate::decode_response(&buf[..len])?)
}

/// Sends `request` and collects the answer: for stats, every datagram up to
/// the one with `more = false`, merged into one `Response::Stats`.
pub fn call(
    socket: BorrowedFd<'_>,
    request: &Request,
    tun: Option<BorrowedFd<'_>>,
) -> Result<Response, TransportError> {
    send_request(socket, request, tun)?;
    let mut first = recv_response(socket)?;
    if let Response::Stats { projects, more } = &mut first {
        while *more {
            match recv_response(socket)? {
                Response::Stats {
                    projects: next,
                    more: next_more,
                } => {
                    projects.extend(next);
                    *more = next_more;
                }
                other => return Ok(other),
            }
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, PROTOCOL_VERSION};
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn hello_travels_with_its_fd() {
        let (a, b) = pair();
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        let hello = Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            project: "alice".into(),
            ipv4: "10.200.0.2".parse().unwrap(),
            ipv6: None,
            net_out: None,
            net_in: None,
        });
        send_request(a.as_fd(), &hello, Some(pipe_r.as_fd())).unwrap();
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let (len, fd) = recv_datagram(b.as_fd(), &mut buf).unwrap();
        assert_eq!(crate::decode_request(&buf[..len]).unwrap(), hello);
        let fd = fd.expect("fd passed");
        assert_ne!(fd.as_raw_fd(), pipe_r.as_raw_fd());
    }

    #[test]
    fn oversized_datagram_is_truncated_error() {
        let (a, b) = pair();
        send_datagram(a.as_fd(), &[b'x'; 100], None).unwrap();
        let mut small = [0u8; 10];
        assert!(matches!(
            recv_datagram(b.as_fd(), &mut small),
            Err(TransportError::Truncated)
        ));
    }

    #[test]
    fn closed_peer_is_reported() {
        let (a, b) = pair();
        drop(a);
        let mut buf = [0u8; 16];
        assert!(matches!(
            recv_datagram(b.as_fd(), &mut buf),
            Err(TransportError::Closed)
        ));
    }
}
