//! Everything a packet can be written to: a vassal's tun, a uWSGI compat
//! peer's output queue ([`compat_queue`]), the host tun ([`write_tun`]).
//! The registry holds a [`Port`] per vassal without knowing what is behind
//! it; the datapath writes through it. A write never blocks: a full
//! destination answers [`Delivery::Full`].

pub mod compat_queue;
pub mod delivery;

use crate::config::MAX_MTU;
use crate::os::tun;
use crate::port::compat_queue::CompatOut;
use crate::port::delivery::{Delivered, Delivery};
use crate::wire::frame::Frame;
use crate::wire::icmp;
use crate::wire::offload::{self, Plan, HDR_LEN};
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

thread_local! {
    /// Where segments are built for destinations without offloads.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_MTU]);
    /// Where a packet switched between vassals is copied to have its TTL
    /// decremented, when it cannot be written in parts (see
    /// [`Port::write_hop`]); allocated on a thread's first such packet.
    static HOP: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where packets for a vassal are written.
pub enum Port {
    /// The vassal's own tun device (attach protocol).
    Tun {
        /// The device's fd, shared with the launcher.
        fd: OwnedFd,
        /// Whether packets on it carry a `virtio_net_hdr` (IFF_VNET_HDR).
        vnet: bool,
    },
    /// A uWSGI tuntap compat peer's stream.
    Compat(Arc<CompatOut>),
}

/// Writes `frame` into a tun: whole with its header when the tun takes
/// one, else as plain packets cut and checksummed here.
pub fn write_tun(fd: BorrowedFd<'_>, vnet: bool, frame: &Frame<'_>, plan: &Plan) -> Delivered {
    if vnet || plan.is_plain() {
        let io = if vnet {
            tun::write_with_header(fd, &plan.header().bytes(), frame.ip)
        } else {
            tun::write(fd, frame.ip)
        };
        return Delivered::whole(Delivery::from(io), plan);
    }
    cut(frame, plan, |segment| {
        Delivery::from(tun::write(fd, segment))
    })
}

/// Cuts `frame` into plain packets and writes each with `write` until one
/// is refused.
fn cut(frame: &Frame<'_>, plan: &Plan, mut write: impl FnMut(&[u8]) -> Delivery) -> Delivered {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut outcome = Delivery::Sent;
        let sent = offload::segments(frame.ip, plan, scratch, |segment| {
            outcome = write(segment);
            outcome == Delivery::Sent
        });
        if sent.packets < plan.wire.packets && outcome == Delivery::Sent {
            // Larger than the scratch buffer: only a forged header asks it.
            outcome = Delivery::Gone;
        }
        Delivered { outcome, sent }
    })
}

impl Port {
    /// Whether it takes super-packets whole (a tun with a vnet header).
    pub fn has_offloads(&self) -> bool {
        matches!(self, Port::Tun { vnet: true, .. })
    }

    /// Writes `frame` to this port.
    pub fn write(&self, frame: &Frame<'_>, plan: &Plan) -> Delivered {
        match self {
            Port::Tun { fd, vnet } => write_tun(fd.as_fd(), *vnet, frame, plan),
            Port::Compat(out) if plan.is_plain() => Delivered::whole(out.push(frame.ip), plan),
            Port::Compat(out) => cut(frame, plan, |segment| out.push(segment)),
        }
    }

    /// Writes `frame` as the next hop gets it: TTL or hop limit one less
    /// (the caller checked it is at least 2). A whole packet into a tun
    /// goes out with its rewritten head in front of the rest, uncopied; a
    /// packet to cut or to queue for a compat peer is copied first.
    pub fn write_hop(&self, frame: &Frame<'_>, plan: &Plan) -> Delivered {
        let mut head = [0u8; icmp::HOP_HEAD];
        let len = icmp::decrement(frame.ip, &mut head);
        if let Port::Tun { fd, vnet } = self {
            if *vnet || plan.is_plain() {
                let (head, rest) = (&head[..len], &frame.ip[len..]);
                let io = if *vnet {
                    tun::write_parts(fd.as_fd(), &[&plan.header().bytes(), head, rest])
                } else {
                    tun::write_parts(fd.as_fd(), &[head, rest])
                };
                return Delivered::whole(Delivery::from(io), plan);
            }
        }
        HOP.with_borrow_mut(|buf| {
            if buf.len() < frame.ip.len() {
                buf.resize(frame.ip.len().max(HDR_LEN + MAX_MTU + 1), 0);
            }
            let copy = &mut buf[..frame.ip.len()];
            copy.copy_from_slice(frame.ip);
            copy[..len].copy_from_slice(&head[..len]);
            let frame = Frame {
                hdr: frame.hdr,
                ip: copy,
            };
            self.write(&frame, plan)
        })
    }
}
