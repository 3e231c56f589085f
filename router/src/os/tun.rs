//! Raw tun device handling: creating one (`TUNSETIFF`) and checking that a
//! descriptor handed over by a launcher really is one (`TUNGETIFF`).
//!
//! Our own ioctls rather than the tun-tap crate: the router needs the fd
//! opened `O_NONBLOCK | O_CLOEXEC` from the start, and needs `TUNGETIFF` on
//! foreign descriptors, which tun-tap does not offer.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A tun operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// `/dev/net/tun` could not be opened.
    #[error("opening /dev/net/tun for device {device}: {source}")]
    Open {
        /// The device being created.
        device: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `TUNSETIFF` refused the device.
    #[error("creating tun device {device} (TUNSETIFF): {source}")]
    SetIff {
        /// The device.
        device: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The descriptor is not a tun device at all.
    #[error("the passed descriptor is not a tun device (TUNGETIFF: {0})")]
    NotTun(std::io::Error),
    /// The device is a tun but not in IFF_TUN|IFF_NO_PI mode.
    #[error("tun device {device} has flags {flags:#x}, expected IFF_TUN|IFF_NO_PI (IFF_VNET_HDR optional)")]
    WrongMode {
        /// The device name.
        device: String,
        /// Its flags.
        flags: i32,
    },
    /// `TUNSETVNETHDRSZ` or `TUNSETOFFLOAD` failed.
    #[error("setting offloads {offloads:#x} on tun device {device}: {source}")]
    Offload {
        /// The device.
        device: String,
        /// The `TUN_F_*` bits asked for.
        offloads: libc::c_uint,
        /// The cause.
        source: std::io::Error,
    },
    /// `fcntl` could not make the descriptor non-blocking.
    #[error("making the tun descriptor non-blocking: {0}")]
    NonBlocking(std::io::Error),
}

/// `struct ifreq` as the tun ioctls use it: name and flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn zeroed() -> IfReq {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Creates (or attaches to) the tun device `name`, IFF_TUN|IFF_NO_PI (and
/// IFF_VNET_HDR with `vnet`), non-blocking and close-on-exec. The device
/// lives while the fd is open.
/// With `multi_queue`, each call on the same name adds one queue
/// (IFF_MULTI_QUEUE): the kernel spreads received flows over the queues.
/// With `exclusive` (IFF_TUN_EXCL) it fails with EBUSY when the device
/// already exists: a router never joins another's device.
pub fn create(
    name: &str,
    multi_queue: bool,
    exclusive: bool,
    vnet: bool,
) -> Result<OwnedFd, TunError> {
    // SAFETY: a constant NUL-terminated path and plain flags; the result is
    // checked before use.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(TunError::Open {
            device: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` was just returned by open() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq::zeroed();
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(TunError::SetIff {
            device: name.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    let mq = if multi_queue {
        libc::IFF_MULTI_QUEUE
    } else {
        0
    };
    let excl = if exclusive { libc::IFF_TUN_EXCL } else { 0 };
    let vnet = if vnet { libc::IFF_VNET_HDR } else { 0 };
    req.flags = (libc::IFF_TUN | libc::IFF_NO_PI | mq | excl | vnet) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req`
    // is (same layout and size), and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(TunError::SetIff {
            device: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

/// A tun device as [`check`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunInfo {
    /// Its interface name.
    pub name: String,
    /// Whether packets on it carry a `virtio_net_hdr` (IFF_VNET_HDR).
    pub vnet: bool,
}

/// Checks that `fd` is a tun device in IFF_TUN|IFF_NO_PI mode, with or
/// without IFF_VNET_HDR.
pub fn check(fd: BorrowedFd<'_>) -> Result<TunInfo, TunError> {
    let mut req = IfReq::zeroed();
    // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`; on a non-tun
    // descriptor it fails with EBADFD/ENOTTY/EINVAL and writes nothing.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(TunError::NotTun(std::io::Error::last_os_error()));
    }
    let flags = i32::from(req.flags);
    let mode = libc::IFF_TUN | libc::IFF_TAP | libc::IFF_NO_PI;
    if flags & mode != libc::IFF_TUN | libc::IFF_NO_PI {
        return Err(TunError::WrongMode {
            device: req.name(),
            flags,
        });
    }
    Ok(TunInfo {
        name: req.name(),
        vnet: flags & libc::IFF_VNET_HDR != 0,
    })
}

/// On a tun opened with IFF_VNET_HDR: sets the header to the 10-byte
/// `virtio_net_hdr` and lets the kernel hand over what `offloads`
/// (`TUN_F_*`) names: 0 asks for plain, complete packets (the header then
/// only ever says so). Device-wide: every queue and holder of it sees them.
pub fn set_offloads(
    fd: BorrowedFd<'_>,
    device: &str,
    offloads: libc::c_uint,
) -> Result<(), TunError> {
    let err = |source| TunError::Offload {
        device: device.to_owned(),
        offloads,
        source,
    };
    let size: libc::c_int = crate::wire::offload::HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
    // points at `size`, alive across the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &size as *const libc::c_int,
        )
    } < 0
    {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long).
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads),
        )
    } < 0
    {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets `O_NONBLOCK` on `fd`. A passed tun fd shares its file description
/// with the launcher's copy; the launcher only holds it, so this is harmless.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), TunError> {
    // SAFETY: F_GETFL/F_SETFL on a valid descriptor only change its flags.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(TunError::NonBlocking(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Outcome of one non-blocking read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// This many bytes moved.
    Done(usize),
    /// EAGAIN (or ENOBUFS on write): nothing moved, try later or drop.
    WouldBlock,
    /// The device is gone (EOF, EBADFD, EIO on a detached tun).
    Closed,
    /// Any other error (for a write: the packet was refused, e.g. EINVAL).
    Failed(i32),
}

/// One `read(2)` of a packet into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Io::Done(n as usize);
        }
        if n == 0 {
            return Io::Closed;
        }
        match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
            libc::EINTR => continue,
            libc::EAGAIN => return Io::WouldBlock,
            libc::EBADFD | libc::EIO | libc::EBADF => return Io::Closed,
            e => return Io::Failed(e),
        }
    }
}

/// One `writev(2)` of a vnet header and its packet.
pub fn write_with_header(fd: BorrowedFd<'_>, header: &[u8], packet: &[u8]) -> Io {
    let iov = [
        libc::iovec {
            iov_base: header.as_ptr() as *mut libc::c_void,
            iov_len: header.len(),
        },
        libc::iovec {
            iov_base: packet.as_ptr() as *mut libc::c_void,
            iov_len: packet.len(),
        },
    ];
    loop {
        // SAFETY: both iovecs describe live slices the kernel only reads.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n >= 0 {
            return Io::Done(n as usize);
        }
        match write_error() {
            Some(io) => return io,
            None => continue,
        }
    }
}

/// One `writev(2)` of a packet given in up to three parts (a vnet header,
/// a rewritten head, the rest), so a packet whose head the router changes
/// is not copied.
pub fn write_parts(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> Io {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; 3];
    let count = parts.len().min(iov.len());
    for (v, part) in iov.iter_mut().zip(parts) {
        *v = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        };
    }
    loop {
        // SAFETY: the first `count` iovecs describe live slices the kernel
        // only reads.
        let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count as libc::c_int) };
        if n >= 0 {
            return Io::Done(n as usize);
        }
        if let Some(io) = write_error() {
            return io;
        }
    }
}

/// What a failed write's errno means; `None` for EINTR (try again).
fn write_error() -> Option<Io> {
    match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::EINTR => None,
        libc::EAGAIN | libc::ENOBUFS => Some(Io::WouldBlock),
        libc::EBADFD | libc::EIO | libc::EBADF => Some(Io::Closed),
        e => Some(Io::Failed(e)),
    }
}

/// One `write(2)` of a whole packet.
pub fn write(fd: BorrowedFd<'_>, packet: &[u8]) -> Io {
    loop {
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n >= 0 {
            return Io::Done(n as usize);
        }
        if let Some(io) = write_error() {
            return io;
        }
    }
}
