//! The host tun device: the vassals' gateway in the host namespace.
//! Created by the router, addressed and brought up with `ip` (host side,
//! once at start), removed by the kernel when the router's fd closes.

use crate::config::Config;
use crate::os::tun::{self, TunError};
use crate::wire::offload;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Command;

/// The host tun could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostTunError {
    /// Creating the device failed.
    #[error(transparent)]
    Create(#[from] TunError),
    /// An `ip` command failed.
    #[error("configuring device {device}: `ip {args}` failed: {message}")]
    Ip {
        /// The device.
        device: String,
        /// The arguments.
        args: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
}

/// Txqueuelen of the host tun: a short queue overflows under a large TCP
/// window (see docs/design.md).
pub const TXQUEUELEN: u32 = 5000;

/// The host tun's queues: one fd per queue, each read by its own task so
/// that host-to-vassal traffic is spread over the datapath threads.
pub struct HostTun {
    first: OwnedFd,
    others: Vec<OwnedFd>,
    vnet: bool,
}

impl HostTun {
    /// Wraps already opened queues (the first one also takes the writes);
    /// `vnet` when they carry a `virtio_net_hdr`.
    pub fn from_queues(first: OwnedFd, others: Vec<OwnedFd>, vnet: bool) -> HostTun {
        HostTun {
            first,
            others,
            vnet,
        }
    }

    /// Whether packets on it carry a `virtio_net_hdr` (`limits.offload`).
    pub fn vnet(&self) -> bool {
        self.vnet
    }

    /// Queue 0's fd, for a write from outside the datapath threads. A tun
    /// write is handed to the stack whichever queue carries it; the queue
    /// only decides where the flow's answers come back (see `writer_for`).
    pub fn writer(&self) -> BorrowedFd<'_> {
        self.first.as_fd()
    }

    /// The fd of queue `queue` (modulo their number), for the packets a
    /// datapath thread writes toward the host: tun's flow steering sends a
    /// flow's answers to the queue its packets were written to, so they
    /// come back to the thread that reads that queue (`datapath::cores`).
    pub fn writer_for(&self, queue: usize) -> BorrowedFd<'_> {
        match queue % self.len() {
            0 => self.first.as_fd(),
            i => self.others[i - 1].as_fd(),
        }
    }

    /// Every queue, for the readers.
    pub fn queues(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        std::iter::once(self.first.as_fd()).chain(self.others.iter().map(|q| q.as_fd()))
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Creates the host tun with `queues` queues (one per datapath thread), with
/// offloads when `limits.offload` is on, sets its MTU, queue length and
/// addresses, and brings it up.
pub fn create(config: &Config, queues: usize) -> Result<HostTun, HostTunError> {
    let multi = queues > 1;
    let vnet = config.limits.offload;
    let first = tun::create(&config.device, multi, true, vnet)?;
    let others = (1..queues)
        .map(|_| tun::create(&config.device, true, false, vnet))
        .collect::<Result<Vec<_>, _>>()?;
    if vnet {
        // Device-wide, but the header size is per queue file: set on each.
        for q in std::iter::once(&first).chain(&others) {
            tun::set_offloads(q.as_fd(), &config.device, offload::TUN_OFFLOADS)?;
        }
    }
    let dev = config.device.as_str();
    let mtu = config.limits.mtu.to_string();
    let txq = TXQUEUELEN.to_string();
    ip(
        dev,
        &["link", "set", "dev", dev, "mtu", &mtu, "txqueuelen", &txq],
    )?;
    let gw = config.gateway.to_string();
    ip(dev, &["-4", "addr", "replace", &gw, "dev", dev])?;
    match config.gateway6 {
        Some(g6) => {
            let g6 = g6.to_string();
            ip(dev, &["-6", "addr", "replace", &g6, "dev", dev, "nodad"])?;
        }
        // Without an IPv6 subnet the kernel's link-local chatter on the
        // device (router solicitations, MLD) would only be dropped and
        // counted as host no_route noise.
        None => {
            let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "1").map_err(|e| HostTunError::Ip {
                    device: dev.to_owned(),
                    args: format!("(write 1 to {path})"),
                    message: e.to_string(),
                })?;
            }
        }
    }
    ip(dev, &["link", "set", "dev", dev, "up"])?;
    Ok(HostTun {
        first,
        others,
        vnet,
    })
}

fn ip(device: &str, args: &[&str]) -> Result<(), HostTunError> {
    let err = |message: String| HostTunError::Ip {
        device: device.to_owned(),
        args: args.join(" "),
        message,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;

    /// A datapath thread's index picks its own queue, modulo the number.
    #[test]
    fn writer_for_picks_the_queue_of_the_thread() {
        let fd = || {
            socketpair(
                AddressFamily::Unix,
                SockType::Datagram,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .unwrap()
            .0
        };
        let tun = HostTun::from_queues(fd(), vec![fd(), fd()], false);
        let raw: Vec<_> = tun.queues().map(|q| q.as_raw_fd()).collect();
        for i in 0..7 {
            assert_eq!(tun.writer_for(i).as_raw_fd(), raw[i % 3]);
        }
    }
}
