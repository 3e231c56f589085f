//! The vassal's network: its tun device (created inside its network
//! namespace, on a /dev/net/tun fd the outer launcher opened), addresses and
//! route; and the attachment of that device to vassal-router, kept alive
//! across router restarts by the outer launcher.

use crate::config::{Limits, Network};
use crate::netlink::{Netlink, NetlinkError};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;
use vassal_attach::{
    transport, Hello, LeaseRequest, RateLimit, Request, Response, PROTOCOL_VERSION,
};

/// Name of the tun device inside every vassal.
pub const DEVICE: &str = "vx0";

/// A network step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Opening /dev/net/tun failed.
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] std::io::Error),
    /// TUNSETIFF failed.
    #[error("creating tun device {DEVICE} (TUNSETIFF): {0}")]
    CreateTun(#[source] std::io::Error),
    /// Configuring an interface failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Writing an IPv6 setting of the device failed.
    #[error("setting {path} to {value}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: String,
        /// What was written.
        value: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// The router could not be reached.
    #[error("attaching to the router at {path}: {source}")]
    Connect {
        /// The control socket.
        path: PathBuf,
        /// The cause.
        source: transport::TransportError,
    },
    /// The router said no.
    #[error("the router at {path} refused the vassal ({reason}): {message}")]
    Refused {
        /// The control socket.
        path: PathBuf,
        /// Its reason code.
        reason: &'static str,
        /// Its explanation.
        message: String,
    },
    /// The router's gateway is not the one the vassal file names.
    #[error("the router at {path} has gateway {actual}, but the vassal file says network.gateway = {expected}")]
    WrongRouter {
        /// The control socket.
        path: PathBuf,
        /// The configured gateway.
        expected: std::net::Ipv4Addr,
        /// The router's.
        actual: std::net::Ipv4Addr,
    },
    /// The router answered something else.
    #[error("the router at {path} answered a hello with {answer}")]
    Unexpected {
        /// The control socket.
        path: PathBuf,
        /// What it sent.
        answer: String,
    },
}

/// Outer side: creates the vassal's tun device inside the network
/// namespace of process `pid` and returns its fd. A tun device is created in
/// the namespace of the task that opened /dev/net/tun, so the outer launcher
/// steps into the vassal's namespace for the open and the TUNSETIFF, then
/// back: the supervisor (perhaps in a user namespace, unable to open the
/// host's 0600 node) never needs the device node, and the outer launcher
/// holds the only fd, which it can hand to a restarted router.
pub fn create_tun_in(pid: i32) -> Result<OwnedFd, NetworkError> {
    let host = std::fs::File::open("/proc/self/ns/net").map_err(NetworkError::OpenTun)?;
    let vassal =
        std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(NetworkError::OpenTun)?;
    let setns = |f: &std::fs::File| {
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetworkError::OpenTun(e.into()))
    };
    setns(&vassal)?;
    let created = open_and_create();
    // Back to the host's namespace whatever happened: the launcher must
    // not go on inside the vassal's network.
    setns(&host)?;
    created
}

fn open_and_create() -> Result<OwnedFd, NetworkError> {
    let tun: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(OwnedFd::from)
        .map_err(NetworkError::OpenTun)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(DEVICE.bytes()) {
        *dst = src as libc::c_char;
    }
    // With a virtio-net header the router can ask for TCP segmentation
    // offload: packets of up to 64 KiB cross it whole (docs/design.md).
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq; ifr lives across the call.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
    if rc < 0 {
        return Err(NetworkError::CreateTun(std::io::Error::last_os_error()));
    }
    Ok(tun)
}

/// Supervisor side: configures loopback and, with a network, the tun
/// device the outer launcher created: its addresses, MTU and default
/// routes.
pub fn configure(net: Option<&Network>) -> Result<(), NetworkError> {
    let mut nl = Netlink::open()?;
    nl.link_up("lo", None)?;
    let Some(net) = net else { return Ok(()) };
    if net.address6.is_none() {
        // Without an IPv6 address the kernel would still send link-local
        // chatter the router must drop as spoofed; keep the device quiet.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{DEVICE}/disable_ipv6"),
            "1",
        );
    }
    if net.address6.is_some() {
        quiet_ipv6()?;
    }
    nl.link_up(DEVICE, Some(u32::from(net.mtu)))?;
    nl.add_address(DEVICE, IpAddr::V4(net.address))?;
    nl.add_default_route(DEVICE, false)?;
    if let Some(a6) = net.address6 {
        nl.add_address(DEVICE, IpAddr::V6(a6))?;
        nl.add_default_route(DEVICE, true)?;
    }
    Ok(())
}

/// IPv6 settings of the device, written before link up so that the kernel
/// never speaks on its own: the router forwards no link-local traffic and
/// counts what arrives (`link_local`), so an idle vassal should send none.
/// No link-local address at all (`addr_gen_mode` none: router
/// solicitations, MLD and DAD would use it), no router solicitations, no
/// router advertisements taken, no duplicate address detection (the
/// router guarantees the address is the vassal's alone).
const QUIET_IPV6: [(&str, &str); 4] = [
    ("addr_gen_mode", "1"),
    ("router_solicitations", "0"),
    ("accept_ra", "0"),
    ("accept_dad", "0"),
];

fn quiet_ipv6() -> Result<(), NetworkError> {
    for (key, value) in QUIET_IPV6 {
        let path = format!("/proc/sys/net/ipv6/conf/{DEVICE}/{key}");
        std::fs::write(&path, value).map_err(|source| NetworkError::Sysctl {
            path,
            value,
            source,
        })?;
    }
    Ok(())
}

/// Outer side: one attachment to the router. Dropping it detaches.
pub struct Attachment {
    /// The control connection; the router detaches when it closes.
    pub socket: OwnedFd,
}

/// How long a launch waits for the router's answer to its hello.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a re-attach from the watch loop may block it: while it waits,
/// signals are not forwarded to the vassal, so a wedged router must not
/// hold it longer than this.
pub const REATTACH_TIMEOUT: Duration = Duration::from_secs(1);

/// What to tell the operator when the router's limit in force is not the
/// one the file asked (the project's tier capped or set it).
fn limit_note(field: &str, asked: Option<RateLimit>, given: Option<RateLimit>) -> Option<String> {
    let show = |l: Option<RateLimit>| {
        l.map_or("unlimited".to_owned(), |l| {
            format!("{} bit/s, burst {} bytes", l.rate, l.burst)
        })
    };
    (asked != given).then(|| {
        format!(
            "limits.{field}: the router's project tier holds it to {} (the file asks {})",
            show(given),
            show(asked)
        )
    })
}

/// `address = "auto"`: asks the router for the vassal's address (a lease
/// request, protocol version 2) and returns `net` with it filled in. Runs
/// before any namespace exists, so the supervisor is cloned with the
/// address and configures it before *ready*.
/// Bounded by [`ATTACH_TIMEOUT`]: it runs under the launch lock.
pub fn lease(project: &str, net: &Network) -> Result<Network, NetworkError> {
    let path = net.router.clone();
    let connect_error = |source| NetworkError::Connect {
        path: path.clone(),
        source,
    };
    let socket = transport::connect_within(&path, Some(ATTACH_TIMEOUT)).map_err(connect_error)?;
    let request = Request::Lease(LeaseRequest {
        version: PROTOCOL_VERSION,
        project: project.to_string(),
        // One vassal per name on a host (the launcher's state claim): the
        // name is the project's.
        name: project.to_string(),
        ipv6: net.auto6,
    });
    match transport::call(socket.as_fd(), &request, None).map_err(connect_error)? {
        Response::Leased {
            ipv4,
            ipv6,
            gateway,
            ..
        } => {
            same_router(net, path, gateway)?;
            let mut leased = net.clone();
            leased.address = ipv4;
            leased.address6 = ipv6;
            Ok(leased)
        }
        other => Err(not_granted(path, other)),
    }
}

/// A configured gateway is the operator's statement of which router this
/// vassal belongs to: a router with another one is the wrong one.
fn same_router(
    net: &Network,
    path: PathBuf,
    gateway: std::net::Ipv4Addr,
) -> Result<(), NetworkError> {
    match net.gateway {
        Some(expected) if expected != gateway => Err(NetworkError::WrongRouter {
            path,
            expected,
            actual: gateway,
        }),
        _ => Ok(()),
    }
}

/// The error for a router's answer that grants nothing: a refusal, or an
/// answer of the wrong kind.
fn not_granted(path: PathBuf, answer: Response) -> NetworkError {
    match answer {
        Response::Refused { reason, message } => NetworkError::Refused {
            path,
            reason: reason.as_str(),
            message,
        },
        other => NetworkError::Unexpected {
            path,
            answer: format!("{other:?}"),
        },
    }
}

/// Sends the hello with the tun fd and waits for the answer, every step
/// bounded by `timeout` (which also bounds later sends on the attachment).
pub fn attach(
    project: &str,
    net: &Network,
    limits: &Limits,
    tun: BorrowedFd<'_>,
    timeout: Duration,
) -> Result<Attachment, NetworkError> {
    let path = net.router.clone();
    let socket = transport::connect_within(&path, Some(timeout)).map_err(|source| {
        NetworkError::Connect {
            path: path.clone(),
            source,
        }
    })?;
    let hello = Request::Hello(Hello {
        version: PROTOCOL_VERSION,
        project: project.to_string(),
        ipv4: net.address,
        ipv6: net.address6,
        net_out: limits.net_out,
        net_in: limits.net_in,
    });
    let answer = transport::call(socket.as_fd(), &hello, Some(tun)).map_err(|source| {
        NetworkError::Connect {
            path: path.clone(),
            source,
        }
    })?;
    match answer {
        Response::Accepted {
            gateway,
            net_out,
            net_in,
            ..
        } => {
            same_router(net, path, gateway)?;
            for (field, asked, given) in [
                ("net_out", limits.net_out, net_out),
                ("net_in", limits.net_in, net_in),
            ] {
                if let Some(note) = limit_note(field, asked, given) {
                    eprintln!("vassal-launch: {project}: {note}");
                }
            }
            Ok(Attachment { socket })
        }
        other => Err(not_granted(path, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_other_than_asked_is_noted() {
        let l = |rate| {
            Some(RateLimit {
                rate,
                burst: 131_072,
            })
        };
        assert_eq!(limit_note("net_out", l(50_000_000), l(50_000_000)), None);
        assert_eq!(limit_note("net_in", None, None), None);
        assert_eq!(
            limit_note("net_out", l(50_000_000), l(10_000_000)).unwrap(),
            "limits.net_out: the router's project tier holds it to 10000000 bit/s, burst 131072 bytes (the file asks 50000000 bit/s, burst 131072 bytes)"
        );
        assert!(limit_note("net_in", None, l(8000))
            .unwrap()
            .ends_with("(the file asks unlimited)"));
    }
}
