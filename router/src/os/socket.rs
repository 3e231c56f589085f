//! Unix listening sockets shared by the control and compat servers:
//! creating them safely, accepting without blocking, and who the peer is.

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Creating the parent directory failed.
    #[error("creating the socket directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotSocket {
        /// The path.
        path: PathBuf,
    },
    /// A live process accepts connections on the socket.
    #[error("{path} is in use by a running process (another router?); refusing to replace it")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// Removing a stale socket failed.
    #[error("removing the stale socket {path}: {source}")]
    Stale {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A socket system call failed.
    #[error("{step} on {path}: {errno}")]
    Sys {
        /// socket, bind, listen, chmod.
        step: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The cause.
        errno: Errno,
    },
}

/// Creates a non-blocking listening unix socket of `kind` at `path`, mode
/// 0660; the parent directory is created 0755 when missing; a stale socket
/// file left by a previous run is replaced.
pub fn listen(path: &Path, kind: SockType) -> Result<OwnedFd, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
                path: dir.to_owned(),
                source,
            })?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| SocketError::Dir {
                    path: dir.to_owned(),
                    source,
                },
            )?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() && answers(path, kind) => {
            return Err(SocketError::InUse {
                path: path.to_owned(),
            })
        }
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| SocketError::Stale {
                path: path.to_owned(),
                source,
            })?
        }
        Ok(_) => {
            return Err(SocketError::NotSocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    let sys = |step| {
        move |errno| SocketError::Sys {
            step,
            path: path.to_owned(),
            errno,
        }
    };
    let fd = socket::socket(
        AddressFamily::Unix,
        kind,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket"))?;
    let addr = UnixAddr::new(path).map_err(sys("address"))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(sys("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| sys("chmod")(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    socket::listen(
        &fd,
        socket::Backlog::new(128).unwrap_or(socket::Backlog::MAXCONN),
    )
    .map_err(sys("listen"))?;
    Ok(fd)
}

/// Fails when a live process accepts connections on `path`: checked at
/// start, before the router touches any device, so a second router with
/// the same socket leaves the running one's network alone.
pub fn ensure_free(path: &Path, kind: SockType) -> Result<(), SocketError> {
    if answers(path, kind) {
        return Err(SocketError::InUse {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Whether something accepts connections on the socket at `path`.
fn answers(path: &Path, kind: SockType) -> bool {
    let Ok(fd) = socket::socket(AddressFamily::Unix, kind, SockFlag::SOCK_CLOEXEC, None) else {
        return false;
    };
    UnixAddr::new(path).is_ok_and(|addr| socket::connect(fd.as_raw_fd(), &addr).is_ok())
}

/// Accepts one connection, non-blocking and close-on-exec; `None` when no
/// connection is pending (or the pending one vanished).
pub fn accept(listener: RawFd) -> Result<Option<OwnedFd>, Errno> {
    loop {
        match socket::accept4(listener, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 just returned this descriptor; we are its only owner.
            Ok(fd) => return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN | Errno::ECONNABORTED) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Accepts connections on `listener` until the reactor goes away, handing
/// each to `each` (which spawns what serves it). An accept error (EMFILE
/// and friends) is logged and waited out for 100 ms instead of spinning.
/// `name` names the socket in the log.
pub async fn accept_loop(name: &str, listener: OwnedFd, mut each: impl FnMut(OwnedFd)) {
    // SAFETY: `listener` is an open socket owned by the AsyncFd for its
    // whole lifetime.
    let afd = match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    } {
        Ok(a) => a,
        Err(e) => return tracing::error!("{name}: registering with the reactor: {e}"),
    };
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        loop {
            match accept(afd.get_ref().as_raw_fd()) {
                Ok(Some(fd)) => each(fd),
                Ok(None) => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    tracing::warn!("{name}: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    break;
                }
            }
        }
    }
}

/// The uid of the process that connected `fd` (SO_PEERCRED).
pub fn peer_uid(fd: &impl AsFd) -> Result<u32, Errno> {
    socket::getsockopt(fd, sockopt::PeerCredentials).map(|c| c.uid())
}
