//! Kernel routes to the other hosts' blocks (docs/cluster.md), over
//! rtnetlink with the `netlink-packet-route` crate (docs/design.md says
//! why).
//!
//! `direct`: one route per peer block, `<block> via <peer underlay>`. IPv6
//! blocks are not routed in this mode: Linux refuses an IPv6 route with an
//! IPv4 next hop ("IPv6 routes can not use an IPv4 nexthop", 6.18 too), and
//! the underlay's IPv6 addresses are not in etcd.
//! `vxlan`: one VXLAN device created by the router (`nolearning`, its MAC
//! derived from this host's block, its MTU the underlay interface's less
//! [`VXLAN_OVERHEAD`]), and per peer a forwarding entry (the
//! peer's MAC -> its underlay address), a permanent neighbour entry (the
//! peer block's gateway -> the peer's MAC) and a route `<block> via
//! <gateway> dev <vxlan> onlink` (likewise for the IPv6 block and gateway). MACs are derived from the block
//! (`02:76` + the block's network address), so nothing but the blocks and
//! underlay addresses already in etcd is needed, and a frame reaches a
//! peer's device only with that peer's MAC as destination.
//!
//! Beside the routes, an nftables table `inet vassal_cluster` refuses a
//! packet claiming a remote block's source unless it came the way that
//! block's host sends (rebuilt whole at every sync, see [`guard_script`]).
//!
//! Routes are installed with the router's own protocol number
//! ([`PROTOCOL`]), so `ip route show proto 118` lists exactly them, and a
//! restarted router replaces rather than duplicates them.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The nftables table guarding remote sources.
pub const GUARD_TABLE: &str = "vassal_cluster";

/// The routes' protocol number (`ip route ... proto 118`): 'v'.
pub const PROTOCOL: u8 = 118;

/// What VXLAN over IPv4 adds to each packet: outer IPv4 (20), UDP (8),
/// VXLAN (8) and inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The smallest VXLAN device MTU the router accepts: IPv6's minimum link
/// MTU, and `limits.mtu`'s lowest value.
pub const MIN_VXLAN_MTU: u32 = 1280;

/// How packets reach another host's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A route via the peer's underlay address (hosts on one network).
    Direct,
    /// Through a VXLAN device the router creates.
    Vxlan {
        /// The device's name.
        device: String,
        /// VXLAN network identifier.
        vni: u32,
        /// UDP port, on both ends.
        port: u16,
    },
}

/// Another host's block as the routes need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerBlock {
    /// The block.
    pub block: Ipv4Net,
    /// Its gateway (the neighbour of the route in VXLAN mode).
    pub gateway: Ipv4Addr,
    /// The peer host's underlay address.
    pub underlay: Ipv4Addr,
    /// Its paired IPv6 block, when the cluster has `prefix6`.
    pub v6: Option<Block6>,
}

/// A peer's IPv6 block and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block6 {
    /// The block.
    pub block: Ipv6Net,
    /// Its gateway (the neighbour of the route in VXLAN mode).
    pub gateway: Ipv6Addr,
}

/// A route operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The netlink socket could not be opened.
    #[error("opening an rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    /// The kernel refused (or the socket failed) one request.
    #[error("{step} ({what}): {source}")]
    Request {
        /// What was asked.
        step: &'static str,
        /// The block, device or address.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The guard table could not be installed or removed.
    #[error("nft ({step} table inet {GUARD_TABLE}): {message}")]
    Guard {
        /// install or delete.
        step: &'static str,
        /// nft's stderr or the spawn error.
        message: String,
    },
    /// An interface of the VXLAN device's name exists and is not a VXLAN
    /// device: it is someone else's, and is left alone.
    #[error("creating the VXLAN device {device}: an interface of that name exists and is not a VXLAN device (choose another cluster.vxlan_device)")]
    NotVxlan {
        /// Its name.
        device: String,
    },
    /// No interface holds the underlay address: VXLAN would send from an
    /// address the host does not have, and its device could not be sized.
    #[error("cluster.underlay {address}: no interface of this host has this address (VXLAN mode sends from it and takes its MTU from that interface)")]
    NoUnderlay {
        /// `cluster.underlay`.
        address: Ipv4Addr,
    },
    /// The underlay interface's MTU leaves too little once VXLAN's headers
    /// are added.
    #[error("the underlay interface {interface} (cluster.underlay {address}) has MTU {mtu}: less {VXLAN_OVERHEAD} for VXLAN leaves below {MIN_VXLAN_MTU} (raise the interface's MTU)")]
    UnderlayMtu {
        /// The interface holding the underlay address.
        interface: String,
        /// `cluster.underlay`.
        address: Ipv4Addr,
        /// Its MTU.
        mtu: u32,
    },
    /// The VXLAN device has no index after its creation.
    #[error("looking up the VXLAN device {device}: {source}")]
    Device {
        /// Its name.
        device: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// The MAC of the VXLAN device of the host holding `block`.
pub fn mac_of(block: Ipv4Net) -> [u8; 6] {
    let [a, b, c, d] = block.network().octets();
    [0x02, 0x76, a, b, c, d]
}

/// The routes this router installed, kept equal to the peer blocks it is
/// given.
pub struct Routes {
    socket: Socket,
    sequence: u32,
    mode: Mode,
    /// The VXLAN device's index (VXLAN mode).
    device: Option<u32>,
    installed: BTreeMap<Ipv4Net, PeerBlock>,
}

/// The guard table's script for `peers` (each one's block, underlay and,
/// in VXLAN mode, MAC), replacing any table of the same name:
///
/// - both modes: a source in a peer block must arrive on the interface
///   the route to that block leaves by (`fib saddr . iif oif`: the
///   underlay in direct mode, the VXLAN device in VXLAN mode);
/// - VXLAN: UDP to the VXLAN port only from the peers' underlay
///   addresses; from each, only frames whose inner source MAC is that
///   peer's (the UDP payload's bytes 22-27); and out of the device, a
///   source of a peer block only with that peer's MAC. So a packet with
///   block B's source is accepted only when B's host sent it.
pub fn guard_script(mode: &Mode, peers: &[PeerBlock]) -> String {
    let mut s = format!(
        "table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\ntable inet {GUARD_TABLE} {{\n  chain prerouting {{\n    type filter hook prerouting priority -300; policy accept;\n"
    );
    if !peers.is_empty() {
        let blocks: Vec<String> = peers.iter().map(|p| p.block.to_string()).collect();
        let _ = writeln!(
            s,
            "    ip saddr {{ {} }} fib saddr . iif oif missing drop",
            blocks.join(", ")
        );
    }
    let blocks6: Vec<String> = peers
        .iter()
        .filter_map(|p| p.v6.map(|b| b.block.to_string()))
        .collect();
    if !blocks6.is_empty() {
        // Direct mode routes no IPv6 block: a source of one never comes
        // from its host, whatever the host's own routes would say.
        let check = match mode {
            Mode::Direct => "",
            Mode::Vxlan { .. } => " fib saddr . iif oif missing",
        };
        let _ = writeln!(s, "    ip6 saddr {{ {} }}{check} drop", blocks6.join(", "));
    }
    if let Mode::Vxlan { device, port, .. } = mode {
        let underlays: Vec<String> = peers.iter().map(|p| p.underlay.to_string()).collect();
        if underlays.is_empty() {
            let _ = writeln!(s, "    udp dport {port} drop");
        } else {
            let _ = writeln!(
                s,
                "    udp dport {port} ip saddr != {{ {} }} drop",
                underlays.join(", ")
            );
        }
        for p in peers {
            let mac = mac_of(p.block);
            let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
            let colons: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(
                s,
                "    ip saddr {} udp dport {port} @th,176,48 != 0x{hex} drop",
                p.underlay
            );
            let _ = writeln!(
                s,
                "    iifname \"{device}\" ip saddr {} ether saddr != {} drop",
                p.block,
                colons.join(":")
            );
            if let Some(b6) = p.v6 {
                let _ = writeln!(
                    s,
                    "    iifname \"{device}\" ip6 saddr {} ether saddr != {} drop",
                    b6.block,
                    colons.join(":")
                );
            }
        }
    }
    s.push_str("  }\n}\n");
    s
}

fn nft(step: &'static str, script: &str) -> Result<(), RouteError> {
    super::nft::run(script).map_err(|message| RouteError::Guard { step, message })
}

impl Routes {
    /// Opens the socket, removes the routes of the router's protocol a
    /// predecessor left (a SIGKILLed router: the first [`Routes::sync`]
    /// puts back those still wanted), and in VXLAN mode (re)creates the
    /// device, bound to `underlay`, with the MAC of `own` (this host's
    /// block), sized by the underlay interface (see
    /// [`Routes::underlay_interface`]), and up.
    pub fn new(mode: Mode, own: Ipv4Net, underlay: Ipv4Addr) -> Result<Routes, RouteError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RouteError::Socket)?;
        socket.bind_auto().map_err(RouteError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RouteError::Socket)?;
        let mut routes = Routes {
            socket,
            sequence: 0,
            mode,
            device: None,
            installed: BTreeMap::new(),
        };
        if let Mode::Vxlan { device, .. } = routes.mode.clone() {
            // A device left by a router that died keeps stale entries.
            routes.delete_stale_device(&device)?;
        }
        routes.flush_stale()?;
        if let Mode::Vxlan { device, vni, port } = routes.mode.clone() {
            let (interface, underlay_mtu) = routes.underlay_interface(underlay)?;
            let mtu = underlay_mtu.saturating_sub(VXLAN_OVERHEAD);
            if mtu < MIN_VXLAN_MTU {
                return Err(RouteError::UnderlayMtu {
                    interface,
                    address: underlay,
                    mtu: underlay_mtu,
                });
            }
            tracing::info!(
                device = device.as_str(),
                mtu,
                underlay = interface.as_str(),
                "VXLAN device sized by the underlay interface"
            );
            let mut link = LinkMessage::default();
            link.header.flags = LinkFlags::Up;
            link.header.change_mask = LinkFlags::Up;
            link.attributes = vec![
                LinkAttribute::IfName(device.clone()),
                LinkAttribute::Address(mac_of(own).to_vec()),
                LinkAttribute::Mtu(mtu),
                LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Vxlan),
                    LinkInfo::Data(InfoData::Vxlan(vec![
                        InfoVxlan::Id(vni),
                        InfoVxlan::Local(underlay),
                        InfoVxlan::Port(port),
                        InfoVxlan::Learning(false),
                    ])),
                ]),
            ];
            routes.request(
                RouteNetlinkMessage::NewLink(link),
                NLM_F_CREATE | NLM_F_EXCL,
                "creating the VXLAN device",
                &device,
            )?;
            let index = nix::net::if_::if_nametoindex(device.as_str()).map_err(|source| {
                RouteError::Device {
                    device: device.clone(),
                    source,
                }
            })?;
            routes.device = Some(index);
        }
        nft("install", &guard_script(&routes.mode, &[]))?;
        Ok(routes)
    }

    /// Whether peers' IPv6 blocks are routed (VXLAN mode; see the
    /// module's comment for direct mode).
    pub fn routes_ipv6(&self) -> bool {
        matches!(self.mode, Mode::Vxlan { .. })
    }

    /// The peer blocks routed now.
    pub fn installed(&self) -> Vec<PeerBlock> {
        self.installed.values().copied().collect()
    }

    /// Makes the kernel's routes match `peers`: adds the new ones,
    /// replaces the changed ones, removes the gone ones. Stops at the
    /// first refusal (the next sync tries again).
    pub fn sync(&mut self, peers: &[PeerBlock]) -> Result<(), RouteError> {
        let wanted: BTreeMap<Ipv4Net, PeerBlock> = peers.iter().map(|p| (p.block, *p)).collect();
        let gone: Vec<PeerBlock> = self
            .installed
            .values()
            .filter(|p| wanted.get(&p.block) != Some(p))
            .copied()
            .collect();
        for peer in gone {
            self.remove(&peer)?;
        }
        for peer in wanted.values() {
            if self.installed.get(&peer.block) != Some(peer) {
                self.add(peer)?;
            }
        }
        nft("install", &guard_script(&self.mode, &self.installed()))
    }

    /// Removes every route (and the VXLAN device) this router installed.
    pub fn clear(&mut self) {
        for peer in self.installed() {
            if let Err(e) = self.remove(&peer) {
                tracing::warn!("{e}");
            }
        }
        if let Mode::Vxlan { device, .. } = self.mode.clone() {
            self.delete_device(&device);
            self.device = None;
        }
        let delete = format!("table inet {GUARD_TABLE}\ndelete table inet {GUARD_TABLE}\n");
        if let Err(e) = nft("delete", &delete) {
            tracing::warn!("{e}");
        }
    }

    fn add(&mut self, peer: &PeerBlock) -> Result<(), RouteError> {
        let what = format!("{} via {}", peer.block, peer.underlay);
        if let Some(index) = self.device {
            let mac = mac_of(peer.block).to_vec();
            self.request(
                RouteNetlinkMessage::NewNeighbour(fdb(index, &mac, peer.underlay)),
                NLM_F_CREATE | NLM_F_REPLACE,
                "adding the VXLAN forwarding entry",
                &what,
            )?;
            for gateway in gateways(peer) {
                self.request(
                    RouteNetlinkMessage::NewNeighbour(neighbour(index, &mac, gateway)),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    "adding the VXLAN neighbour entry",
                    &what,
                )?;
            }
        }
        for message in routes(peer, self.device) {
            self.request(
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_CREATE | NLM_F_REPLACE,
                "adding the route to a peer block",
                &what,
            )?;
        }
        self.installed.insert(peer.block, *peer);
        Ok(())
    }

    fn remove(&mut self, peer: &PeerBlock) -> Result<(), RouteError> {
        let what = format!("{} via {}", peer.block, peer.underlay);
        // Already gone (someone else removed it) counts as removed.
        for message in routes(peer, self.device) {
            self.request_absent(
                RouteNetlinkMessage::DelRoute(message),
                "removing the route to a peer block",
                &what,
            )?;
        }
        if let Some(index) = self.device {
            let mac = mac_of(peer.block).to_vec();
            for gateway in gateways(peer) {
                self.request_absent(
                    RouteNetlinkMessage::DelNeighbour(neighbour(index, &mac, gateway)),
                    "removing the VXLAN neighbour entry",
                    &what,
                )?;
            }
            self.request_absent(
                RouteNetlinkMessage::DelNeighbour(fdb(index, &mac, peer.underlay)),
                "removing the VXLAN forwarding entry",
                &what,
            )?;
        }
        self.installed.remove(&peer.block);
        Ok(())
    }

    /// The name and MTU of the interface holding `underlay`. A full-size
    /// vassal packet plus VXLAN's headers must fit it, or the kernel
    /// fragments every such packet on the underlay (a tenth of the
    /// throughput, docs/benchmarks.md); with the device that much smaller,
    /// the kernel answers an oversized packet with "fragmentation needed"
    /// and the vassal's TCP lowers its segment size once.
    fn underlay_interface(&mut self, underlay: Ipv4Addr) -> Result<(String, u32), RouteError> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let what = underlay.to_string();
        let all = self.exchange(
            RouteNetlinkMessage::GetAddress(query),
            NLM_F_DUMP,
            "listing addresses",
            &what,
        )?;
        let index = all
            .iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.attributes.iter().any(
                        |at| matches!(at, AddressAttribute::Local(IpAddr::V4(l)) if *l == underlay),
                    ) =>
                {
                    Some(a.header.index)
                }
                _ => None,
            })
            .ok_or(RouteError::NoUnderlay { address: underlay })?;
        let attributes = self.link_attributes(index, "reading the underlay interface", &what)?;
        let mut name = format!("index {index}");
        let mut mtu = None;
        for a in &attributes {
            match a {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                _ => {}
            }
        }
        let mtu = mtu.ok_or_else(|| RouteError::Request {
            step: "reading the underlay interface's MTU",
            what: name.clone(),
            source: std::io::Error::other("the kernel's answer carries no MTU"),
        })?;
        Ok((name, mtu))
    }

    /// The attributes of the interface of index `index`, as the kernel
    /// reports them.
    fn link_attributes(
        &mut self,
        index: u32,
        step: &'static str,
        what: &str,
    ) -> Result<Vec<LinkAttribute>, RouteError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        let got = self.exchange(RouteNetlinkMessage::GetLink(link), NLM_F_ACK, step, what)?;
        Ok(got
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.attributes),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Deletes a VXLAN device named `device` left by a predecessor; an
    /// interface of that name of any other kind is not ours: refused.
    fn delete_stale_device(&mut self, device: &str) -> Result<(), RouteError> {
        let Ok(index) = nix::net::if_::if_nametoindex(device) else {
            return Ok(());
        };
        let vxlan = self
            .link_attributes(index, "reading the interface", device)?
            .iter()
            .any(|a| {
                matches!(a, LinkAttribute::LinkInfo(info)
                    if info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan))))
            });
        if !vxlan {
            return Err(RouteError::NotVxlan {
                device: device.to_owned(),
            });
        }
        self.delete_device(device);
        Ok(())
    }

    /// Removes every IPv4 route of the main table with the router's
    /// protocol number: left by a predecessor that could not clean up.
    fn flush_stale(&mut self) -> Result<(), RouteError> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let all = self.exchange(
            RouteNetlinkMessage::GetRoute(query),
            NLM_F_DUMP,
            "listing routes",
            "IPv4",
        )?;
        for m in all {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if r.header.protocol != RouteProtocol::Other(PROTOCOL)
                || table != u32::from(RouteHeader::RT_TABLE_MAIN)
            {
                continue;
            }
            let what = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                        Some(format!("{d}/{}", r.header.destination_prefix_length))
                    }
                    _ => None,
                })
                .unwrap_or_default();
            tracing::info!(
                route = what.as_str(),
                "removing a route left by a previous router"
            );
            self.request_absent(
                RouteNetlinkMessage::DelRoute(r),
                "removing a stale route",
                &what,
            )?;
        }
        Ok(())
    }

    fn delete_device(&mut self, device: &str) {
        let Ok(index) = nix::net::if_::if_nametoindex(device) else {
            return;
        };
        let mut link = LinkMessage::default();
        link.header.index = index;
        if let Err(e) = self.request(RouteNetlinkMessage::DelLink(link), 0, "deleting", device) {
            tracing::warn!("{e}");
        }
    }

    /// Like [`Routes::request`], but "no such entry" is success.
    fn request_absent(
        &mut self,
        message: RouteNetlinkMessage,
        step: &'static str,
        what: &str,
    ) -> Result<(), RouteError> {
        match self.request(message, 0, step, what) {
            Err(RouteError::Request { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        step: &'static str,
        what: &str,
    ) -> Result<(), RouteError> {
        self.exchange(message, NLM_F_ACK | flags, step, what)
            .map(drop)
    }

    /// Sends one request with `flags` and collects the kernel's answers
    /// until its acknowledgement (or the end of a dump).
    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        step: &'static str,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, RouteError> {
        let fail = |source: std::io::Error| RouteError::Request {
            step,
            what: what.to_owned(),
            source,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(fail)?;
        // A dump answers in datagrams of up to a page or so each.
        let mut answer = vec![0u8; 65536];
        let mut got = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut answer[..], 0).map_err(fail)?;
            if n == 0 {
                return Err(fail(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer[offset..n])
                    .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(got),
                                Some(_) => Err(fail(e.to_io())),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(got),
                        NetlinkPayload::InnerMessage(m) => got.push(m),
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// The peer's block gateways: the IPv4 one, and the IPv6 one if any.
fn gateways(peer: &PeerBlock) -> impl Iterator<Item = IpAddr> {
    std::iter::once(IpAddr::V4(peer.gateway)).chain(peer.v6.map(|b| IpAddr::V6(b.gateway)))
}

/// The routes to `peer`'s blocks: through the VXLAN device `device`
/// (onlink, via each block's gateway, IPv6 included), or via the peer's
/// underlay address (IPv4 only, see the module's comment).
fn routes(peer: &PeerBlock, device: Option<u32>) -> Vec<RouteMessage> {
    let mut out = vec![route(
        IpNet::V4(peer.block),
        peer,
        IpAddr::V4(peer.gateway),
        device,
    )];
    if let (Some(b6), Some(_)) = (peer.v6, device) {
        out.push(route(
            IpNet::V6(b6.block),
            peer,
            IpAddr::V6(b6.gateway),
            device,
        ));
    }
    out
}

fn route(dst: IpNet, peer: &PeerBlock, gateway: IpAddr, device: Option<u32>) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: match dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        },
        destination_prefix_length: dst.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Other(PROTOCOL),
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    m.attributes = vec![RouteAttribute::Destination(address(dst.network()))];
    match device {
        None => m
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(peer.underlay))),
        Some(index) => {
            m.header.flags = RouteFlags::Onlink;
            m.attributes.push(RouteAttribute::Gateway(address(gateway)));
            m.attributes.push(RouteAttribute::Oif(index));
        }
    }
    m
}

fn address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// `bridge fdb append <mac> dev <vxlan> dst <underlay> self permanent`.
fn fdb(index: u32, mac: &[u8], underlay: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(underlay)),
    ];
    m
}

/// `ip neigh replace <gateway> lladdr <mac> dev <vxlan> nud permanent`.
fn neighbour(index: u32, mac: &[u8], gateway: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    let (family, destination) = match gateway {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes = vec![
        NeighbourAttribute::Destination(destination),
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
    ];
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(k: u8) -> PeerBlock {
        PeerBlock {
            block: format!("10.44.{k}.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, 44, k, 1),
            underlay: Ipv4Addr::new(198, 51, 100, k),
            v6: Some(Block6 {
                block: format!("fd00:44:{k}::/64").parse().unwrap(),
                gateway: format!("fd00:44:{k}::1").parse().unwrap(),
            }),
        }
    }

    #[test]
    fn the_guard_pairs_each_block_with_its_hosts_path() {
        let direct = guard_script(&Mode::Direct, &[peer(2), peer(3)]);
        assert!(direct.starts_with("table inet vassal_cluster\ndelete table inet vassal_cluster\n"));
        assert!(direct
            .contains("ip saddr { 10.44.2.0/24, 10.44.3.0/24 } fib saddr . iif oif missing drop"));
        assert!(direct.contains("ip6 saddr { fd00:44:2::/64, fd00:44:3::/64 } drop"));
        assert!(!direct.contains("udp dport"));
        let vxlan = Mode::Vxlan {
            device: "vassal-vx".into(),
            vni: 1,
            port: 4789,
        };
        let script = guard_script(&vxlan, &[peer(2)]);
        assert!(script.contains("udp dport 4789 ip saddr != { 198.51.100.2 } drop"));
        assert!(script
            .contains("ip saddr 198.51.100.2 udp dport 4789 @th,176,48 != 0x02760a2c0200 drop"));
        assert!(script.contains(
            "iifname \"vassal-vx\" ip saddr 10.44.2.0/24 ether saddr != 02:76:0a:2c:02:00 drop"
        ));
        assert!(script.contains(
            "iifname \"vassal-vx\" ip6 saddr fd00:44:2::/64 ether saddr != 02:76:0a:2c:02:00 drop"
        ));
        assert!(script.contains("ip6 saddr { fd00:44:2::/64 } fib saddr . iif oif missing drop"));
        // No peer yet: nobody may send VXLAN to this host.
        assert!(guard_script(&vxlan, &[]).contains("udp dport 4789 drop"));
    }

    #[test]
    fn macs_follow_the_block() {
        assert_eq!(
            mac_of("10.44.1.0/24".parse().unwrap()),
            [0x02, 0x76, 10, 44, 1, 0]
        );
    }
}
