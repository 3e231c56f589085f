//! The sending half of a uWSGI compat peer: a bounded output queue on the
//! peer's stream socket, written by the datapath, flushed by the peer's
//! task in `compat`.

use crate::port::delivery::Delivery;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Bytes waiting to be written to one compat peer.
struct OutQueue {
    buf: Vec<u8>,
    start: usize,
    /// `limits.compat_buffer`: the most it ever holds. Allocated (once, in
    /// full) only when the socket first backs up, so held, replaced and
    /// unidentified connections cost no queue.
    limit: usize,
    dead: bool,
}

impl OutQueue {
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends without growing the buffer beyond its limit.
    fn append(&mut self, parts: [&[u8]; 2]) -> bool {
        let need = parts[0].len() + parts[1].len();
        if self.pending() + need > self.limit {
            return false;
        }
        if self.buf.len() + need > self.limit {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.pending());
            self.start = 0;
        }
        if self.buf.capacity() < self.limit {
            self.buf.reserve_exact(self.limit - self.buf.len());
        }
        self.buf.extend_from_slice(parts[0]);
        self.buf.extend_from_slice(parts[1]);
        true
    }
}

/// The sending half of a compat peer, shared with the datapath.
pub struct CompatOut {
    fd: OwnedFd,
    queue: Mutex<OutQueue>,
    /// Woken when bytes are queued: the peer's writer task flushes them.
    pub wake: Notify,
    /// Woken when the peer's vassal is displaced by a successor.
    pub evicted: Notify,
}

impl CompatOut {
    /// A queue for `fd` holding at most `capacity` bytes.
    pub fn new(fd: OwnedFd, capacity: usize) -> CompatOut {
        CompatOut {
            fd,
            queue: Mutex::new(OutQueue {
                buf: Vec::new(),
                start: 0,
                limit: capacity,
                dead: false,
            }),
            wake: Notify::new(),
            evicted: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frames `pkt` and writes it, or queues what the socket did not take.
    pub fn push(&self, pkt: &[u8]) -> Delivery {
        let Ok(len) = u16::try_from(pkt.len()) else {
            return Delivery::Gone;
        };
        let [lo, hi] = len.to_le_bytes();
        let header = [0u8, lo, hi, 0];
        let mut q = self.lock();
        if q.dead {
            return Delivery::Gone;
        }
        if q.pending() > 0 {
            if !q.append([&header, pkt]) {
                return Delivery::Full;
            }
            self.wake.notify_one();
            return Delivery::Sent;
        }
        match send(self.fd.as_raw_fd(), &header, pkt) {
            Ok(n) if n == header.len() + pkt.len() => Delivery::Sent,
            Ok(n) => {
                // Partial write: the rest of this frame must go out before
                // any other frame, so it heads the queue.
                let (h, p) = if n < header.len() {
                    (&header[n..], pkt)
                } else {
                    (&header[..0], &pkt[n - header.len()..])
                };
                q.append([h, p]);
                self.wake.notify_one();
                Delivery::Sent
            }
            Err(libc::EAGAIN) => {
                q.append([&header, pkt]);
                self.wake.notify_one();
                Delivery::Sent
            }
            Err(_) => {
                q.dead = true;
                Delivery::Gone
            }
        }
    }

    /// Whether a write failed for good: the peer is gone.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Whether bytes wait to be written.
    pub fn has_pending(&self) -> bool {
        self.lock().pending() > 0
    }

    /// Writes queued bytes; Ok(true) when the queue is now empty.
    pub fn flush(&self) -> Result<bool, i32> {
        let mut q = self.lock();
        while q.pending() > 0 {
            let start = q.start;
            match send(self.fd.as_raw_fd(), &q.buf[start..], &[]) {
                Ok(n) => q.start += n,
                Err(libc::EAGAIN) => return Ok(false),
                Err(e) => {
                    q.dead = true;
                    return Err(e);
                }
            }
        }
        q.buf.clear();
        q.start = 0;
        Ok(true)
    }
}

/// One non-blocking `sendmsg` of two slices, without SIGPIPE.
fn send(fd: RawFd, a: &[u8], b: &[u8]) -> Result<usize, i32> {
    let iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    loop {
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = if b.is_empty() { 1 } else { 2 };
        // SAFETY: `msg` points at `iov`, whose slices outlive the call and
        // are only read.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_compacts_without_growing() {
        let mut q = OutQueue {
            buf: Vec::new(),
            start: 0,
            limit: 10,
            dead: false,
        };
        assert!(q.append([b"abcd", b"ef"]));
        q.start = 4;
        assert!(q.append([b"gh", b"ijkl"]));
        assert_eq!(&q.buf[q.start..], b"efghijkl");
        assert!(!q.append([b"xyz", b""]));
        assert_eq!(q.buf.capacity(), 10);
        // Nothing is allocated before the first append.
        let empty = CompatOut::new(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::empty(),
            )
            .unwrap()
            .0,
            1 << 20,
        );
        assert_eq!(empty.lock().buf.capacity(), 0);
    }
}
