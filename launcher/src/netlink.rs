//! Just enough rtnetlink to configure a vassal's interfaces from inside its
//! network namespace: link up with an MTU, an address, a default route.
//! The vassal's root may hold no `ip` binary, and we want each step's error
//! code, so this speaks NETLINK_ROUTE directly and checks every ACK.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening or using the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused the request.
    #[error("{step} on {device}: {source}")]
    Refused {
        /// What was asked.
        step: &'static str,
        /// The interface.
        device: String,
        /// The kernel's errno.
        source: std::io::Error,
    },
    /// The interface does not exist.
    #[error("no interface named {0}")]
    NoDevice(String),
}

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;

/// An rtnetlink socket in the caller's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align(buf.len()), 0);
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Netlink, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends one request (`body` after the netlink header) and waits for its ACK.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        step: &'static str,
        device: &str,
    ) -> Result<(), NetlinkError> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel is
        // the default destination of a netlink socket.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Socket(e));
            }
            let n = n as usize;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let word =
                    |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
                let mlen = word(off) as usize;
                let mkind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq = word(off + 8);
                if mlen < NLMSG_HDRLEN || off + mlen > n {
                    break;
                }
                if mkind == NLMSG_ERROR && mseq == self.seq && mlen >= NLMSG_HDRLEN + 4 {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(NetlinkError::Refused {
                            step,
                            device: device.to_string(),
                            source: std::io::Error::from_raw_os_error(-code),
                        })
                    };
                }
                off += align(mlen);
            }
        }
    }

    /// Sets an interface up, with an MTU when given.
    pub fn link_up(&mut self, device: &str, mtu: Option<u32>) -> Result<(), NetlinkError> {
        let index = index_of(device)?;
        let mut body = Vec::new();
        // struct ifinfomsg: family, pad, type, index, flags, change
        body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        body.extend_from_slice(&(index as i32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        body.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        if let Some(mtu) = mtu {
            push_attr(&mut body, libc::IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(libc::RTM_NEWLINK, 0, &body, "setting the link up", device)
    }

    /// Adds a host address (/32 or /128) to an interface.
    pub fn add_address(&mut self, device: &str, address: IpAddr) -> Result<(), NetlinkError> {
        let index = index_of(device)?;
        let (family, prefix, bytes): (u8, u8, Vec<u8>) = match address {
            IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
        };
        // No duplicate address detection: the router guarantees the address
        // is the vassal's alone, and DAD would delay it by seconds.
        let flags = if address.is_ipv6() {
            libc::IFA_F_NODAD as u8
        } else {
            0
        };
        let mut body = vec![family, prefix, flags, libc::RT_SCOPE_UNIVERSE];
        body.extend_from_slice(&index.to_ne_bytes());
        push_attr(&mut body, libc::IFA_LOCAL, &bytes);
        push_attr(&mut body, libc::IFA_ADDRESS, &bytes);
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        self.request(libc::RTM_NEWADDR, flags, &body, "adding an address", device)
    }

    /// Adds a default route out of `device` (a tun needs no next hop).
    pub fn add_default_route(&mut self, device: &str, ipv6: bool) -> Result<(), NetlinkError> {
        let index = index_of(device)?;
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        let mut body = vec![
            family,
            0,
            0,
            0,
            libc::RT_TABLE_MAIN,
            libc::RTPROT_BOOT,
            libc::RT_SCOPE_LINK,
            libc::RTN_UNICAST,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut body, libc::RTA_OIF, &index.to_ne_bytes());
        let flags = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
        self.request(
            libc::RTM_NEWROUTE,
            flags,
            &body,
            "adding the default route",
            device,
        )
    }
}

/// The interface index of `device` in the caller's network namespace.
pub fn index_of(device: &str) -> Result<u32, NetlinkError> {
    let name = std::ffi::CString::new(device).map_err(|_| NetlinkError::NoDevice(device.into()))?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::NoDevice(device.into()));
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut buf = Vec::new();
        push_attr(&mut buf, 3, &[1, 2, 3, 4, 5]);
        assert_eq!(buf.len(), 12);
        assert_eq!(
            &buf[..4],
            &[9u16.to_ne_bytes(), 3u16.to_ne_bytes()].concat()[..]
        );
        assert_eq!(&buf[9..], &[0, 0, 0]);
    }

    #[test]
    fn unknown_device_is_named() {
        let e = index_of("no-such-dev0").unwrap_err();
        assert_eq!(e.to_string(), "no interface named no-such-dev0");
    }
}
