//! virtio-net headers on tun devices (`IFF_VNET_HDR`): how TCP
//! segmentation offload lets packets of up to 64 KiB cross the router whole.
//!
//! With offloads on, a tun hands the router one TCP "super-packet" of up to
//! 64 KiB led by a 10-byte `virtio_net_hdr` that says how to cut it into
//! segments (`gso_size`) and where its checksum is still to be finished.
//! The router checks the IP and TCP headers once, counts the segments the
//! packet stands for (so that counters match the bytes a wire would carry),
//! and writes it whole, header included, into the destination tun: that
//! kernel segments it only if it must (local delivery never does). Only a
//! destination that cannot take the header, a uWSGI compat peer or a tun
//! opened without `IFF_VNET_HDR`, gets the packet cut and checksummed here,
//! in a scratch buffer reused by every packet.
//!
//! The header comes from a kernel stack a customer drives, so every field
//! is checked against the packet before anything trusts it, and what the
//! router writes on is a header it builds from the checked [`Plan`], never
//! the one it read: a checksum is only ever finished in the TCP or UDP
//! checksum field, never in the addresses the anti-spoofing check read.

use crate::wire::checksum::{fold, sum};
use crate::wire::packet::{proto, PacketInfo};

/// Length of `struct virtio_net_hdr`, the header size the router sets
/// (`TUNSETVNETHDRSZ`) on every tun it uses with `IFF_VNET_HDR`.
pub const HDR_LEN: usize = 10;

/// What the router lets the kernel hand it (`TUNSETOFFLOAD`): partial
/// checksums and TCP segmentation over IPv4 and IPv6, ECN included. UDP
/// segmentation is left off: the kernel then segments UDP before the tun.
pub const TUN_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// `virtio_net_hdr.flags`: the checksum from `csum_start` on is partial.
const F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type` values.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// Smallest segment size accepted: the kernel's floor for a TCP MSS
/// (`net.ipv4.tcp_min_snd_mss` cannot go lower). It also bounds the work a
/// forged header could ask of the software segmentation.
pub const MIN_GSO_SIZE: u16 = 48;

/// TCP flags the segmentation splits: FIN and PSH stay on the last
/// segment, CWR on the first.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A `struct virtio_net_hdr`, in the host's byte order (the tun default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Header length hint (not trusted: the router computes its own).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksum computation starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A packet that is complete as it is: no segmentation, full checksums.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a header.
    pub fn read(b: &[u8; HDR_LEN]) -> VnetHdr {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Its wire form.
    pub fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a header does not fit its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// A segmentation type the router never enables (UDP, unknown bits).
    #[error("unsupported gso_type {0:#x}")]
    GsoType(u8),
    /// TCP segmentation on a packet that is not TCP of that IP version,
    /// or is a fragment.
    #[error(
        "gso_type {0:#x} on a packet that is not an unfragmented TCP packet of that IP version"
    )]
    NotTcp(u8),
    /// The TCP data offset points outside the packet.
    #[error("TCP header length outside the packet")]
    TcpHeader,
    /// `gso_size` below [`MIN_GSO_SIZE`].
    #[error("gso_size {0} below {MIN_GSO_SIZE}")]
    GsoSize(u16),
    /// `csum_start`/`csum_offset` are not the TCP or UDP checksum field
    /// of this packet.
    #[error("partial checksum not at the packet's TCP or UDP checksum field")]
    Checksum,
    /// A segmented packet without a partial checksum (the kernel always
    /// sets one).
    #[error("segmented packet without a partial checksum")]
    NoChecksum,
}

/// Packets and IP bytes as a wire would carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wire {
    /// Packets (segments).
    pub packets: u64,
    /// Their IP bytes, every segment's headers included.
    pub bytes: u64,
}

/// What one packet with its header asks of the router, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The packets and bytes it stands for.
    pub wire: Wire,
    /// Offset of the TCP header (0 without segmentation).
    transport: usize,
    /// IP plus TCP header length, repeated in every segment (0 without
    /// segmentation).
    header_end: usize,
    /// Payload bytes per segment (0 without segmentation).
    gso_size: usize,
    /// Partial checksum to finish: where the sum starts and where it goes.
    partial: Option<(usize, usize)>,
    /// `gso_type` (ECN bit included), [`GSO_NONE`] without segmentation.
    gso_type: u8,
}

impl Plan {
    /// A packet without a header (or with [`VnetHdr::NONE`]).
    pub fn plain(len: usize) -> Plan {
        Plan {
            wire: Wire {
                packets: 1,
                bytes: len as u64,
            },
            transport: 0,
            header_end: 0,
            gso_size: 0,
            partial: None,
            gso_type: GSO_NONE,
        }
    }

    /// The header to write with the packet to a tun that takes one: built
    /// from what was checked, not copied from what was read.
    pub fn header(&self) -> VnetHdr {
        let (flags, csum_start, csum_offset) = match self.partial {
            Some((start, at)) => (F_NEEDS_CSUM, start as u16, (at - start) as u16),
            None => (0, 0, 0),
        };
        VnetHdr {
            flags,
            gso_type: self.gso_type,
            hdr_len: self.header_end as u16,
            gso_size: self.gso_size as u16,
            csum_start,
            csum_offset,
        }
    }

    /// Whether a destination without a vnet header can take the packet
    /// as it is.
    pub fn is_plain(&self) -> bool {
        self.gso_size == 0 && self.partial.is_none()
    }

    /// Whether the packet is a super-packet of several segments.
    pub fn is_segmented(&self) -> bool {
        self.gso_size != 0
    }
}

/// Checks `hdr` against the parsed packet `pkt` and works out what it
/// stands for.
pub fn plan(hdr: &VnetHdr, pkt: &[u8], info: &PacketInfo) -> Result<Plan, OffloadError> {
    let partial = if hdr.flags & F_NEEDS_CSUM != 0 {
        // Only where a kernel puts it: the transport header of an
        // unfragmented TCP or UDP packet, at that protocol's checksum.
        let field = match info.proto {
            proto::TCP => 16,
            proto::UDP => 6,
            _ => return Err(OffloadError::Checksum),
        };
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        if info.transport == 0
            || info.fragment.is_some()
            || start != info.transport
            || at != start + field
            || at + 2 > pkt.len()
        {
            return Err(OffloadError::Checksum);
        }
        Some((start, at))
    } else {
        None
    };
    let version = pkt.first().map_or(0, |b| b >> 4);
    let expected_version = match hdr.gso_type & !GSO_ECN {
        GSO_NONE if hdr.gso_type == GSO_NONE => {
            let mut plan = Plan::plain(pkt.len());
            plan.partial = partial;
            return Ok(plan);
        }
        GSO_TCPV4 => 4,
        GSO_TCPV6 => 6,
        _ => return Err(OffloadError::GsoType(hdr.gso_type)),
    };
    // Any fragment, first or not, IPv4 or IPv6, is refused.
    if version != expected_version
        || info.proto != proto::TCP
        || info.transport == 0
        || info.fragment.is_some()
    {
        return Err(OffloadError::NotTcp(hdr.gso_type));
    }
    let data_offset = pkt
        .get(info.transport + 12)
        .map(|b| usize::from(b >> 4) * 4)
        .ok_or(OffloadError::TcpHeader)?;
    let header_end = info.transport + data_offset;
    if data_offset < 20 || header_end > pkt.len() {
        return Err(OffloadError::TcpHeader);
    }
    if hdr.gso_size < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSize(hdr.gso_size));
    }
    if partial.is_none() {
        return Err(OffloadError::NoChecksum);
    }
    let gso_size = usize::from(hdr.gso_size);
    let payload = pkt.len() - header_end;
    let segments = payload.div_ceil(gso_size).max(1);
    Ok(Plan {
        wire: Wire {
            packets: segments as u64,
            bytes: (pkt.len() + (segments - 1) * header_end) as u64,
        },
        transport: info.transport,
        header_end,
        gso_size,
        partial,
        gso_type: hdr.gso_type,
    })
}

/// Cuts a super-packet into its segments, each with fixed IP lengths,
/// IPv4 id and checksum, TCP sequence number, flags and checksum, built in
/// `scratch` one after another and handed to `emit` until it returns
/// false. For a packet that is not segmented but has a partial checksum,
/// emits one copy with the checksum finished. Returns the wire packets
/// and bytes emitted (and accepted: the one refused is not counted).
///
/// `scratch` must hold the largest segment (at most `limits.mtu`, or the
/// whole packet for a lone partial checksum).
pub fn segments(
    pkt: &[u8],
    plan: &Plan,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]) -> bool,
) -> Wire {
    let mut sent = Wire::default();
    if plan.gso_size == 0 {
        let Some(out) = scratch.get_mut(..pkt.len()) else {
            return sent;
        };
        out.copy_from_slice(pkt);
        if let Some((start, at)) = plan.partial {
            finish_partial(out, start, at);
        }
        if emit(out) {
            sent.packets = 1;
            sent.bytes = pkt.len() as u64;
        }
        return sent;
    }
    let h = plan.header_end;
    let transport = plan.transport;
    let is_v4 = pkt[0] >> 4 == 4;
    let seq = u32::from_be_bytes([
        pkt[transport + 4],
        pkt[transport + 5],
        pkt[transport + 6],
        pkt[transport + 7],
    ]);
    let flags = pkt[transport + 13];
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let payload = &pkt[h..];
    let count = payload.len().div_ceil(plan.gso_size).max(1);
    for (i, chunk) in payload
        .chunks(plan.gso_size)
        .chain(payload.is_empty().then_some(&payload[..0]))
        .enumerate()
    {
        let len = h + chunk.len();
        let Some(out) = scratch.get_mut(..len) else {
            return sent;
        };
        out[..h].copy_from_slice(&pkt[..h]);
        out[h..].copy_from_slice(chunk);
        if is_v4 {
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            out[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&out[..transport], 0));
            out[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            out[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        let t = &mut out[transport..];
        let seq_i = seq.wrapping_add((i * plan.gso_size) as u32);
        t[4..8].copy_from_slice(&seq_i.to_be_bytes());
        let mut f = flags;
        if i + 1 < count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        t[13] = f;
        t[16..18].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&out[transport..], pseudo_header(out, transport)));
        out[transport + 16..transport + 18].copy_from_slice(&c.to_be_bytes());
        if !emit(out) {
            return sent;
        }
        sent.packets += 1;
        sent.bytes += len as u64;
    }
    sent
}

/// Finishes a partial checksum: the field holds the pseudo-header sum, so
/// summing from `start` over it and complementing gives the full one.
fn finish_partial(out: &mut [u8], start: usize, at: usize) {
    let Some(from) = out.get(start..) else {
        return;
    };
    let mut c = !fold(sum(from, 0));
    // A UDP checksum of 0 means "none" (and is invalid over IPv6).
    if c == 0 && at == start + 6 {
        c = 0xffff;
    }
    out[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The TCP pseudo-header sum of the packet in `out` (transport at `t`).
fn pseudo_header(out: &[u8], t: usize) -> u64 {
    let tcp_len = (out.len() - t) as u64;
    if out[0] >> 4 == 4 {
        sum(&out[12..20], 0) + u64::from(proto::TCP) + tcp_len
    } else {
        sum(&out[8..40], 0) + u64::from(proto::TCP) + tcp_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet;
    use crate::wire::testpkt::Ip;
    use etherparse::{TcpHeader, TcpOptionElement};
    use std::net::Ipv6Addr;

    /// TCP header fields a test varies.
    #[derive(Clone, Copy)]
    struct Tcp {
        seq: u32,
        fin: bool,
        psh: bool,
        cwr: bool,
    }

    /// Sequence number 1, no flag a segmentation changes.
    const PLAIN: Tcp = Tcp {
        seq: 1,
        fin: false,
        psh: false,
        cwr: false,
    };

    fn tcp_header(t: Tcp) -> TcpHeader {
        let mut h = TcpHeader::new(40000, 5201, t.seq, 502);
        h.ack = true;
        h.acknowledgment_number = 7;
        (h.fin, h.psh, h.cwr) = (t.fin, t.psh, t.cwr);
        h.set_options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(1, 2),
        ])
        .unwrap();
        h
    }

    /// An IPv4 TCP packet, checksums complete.
    fn v4(id: u16, t: Tcp, payload: &[u8]) -> Vec<u8> {
        let ip = Ip {
            id,
            ..Ip::new([10, 9, 0, 2], [10, 9, 0, 1])
        };
        ip.tcp(tcp_header(t), payload)
    }

    /// The same over IPv6.
    fn v6(t: Tcp, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:200::2".parse().unwrap(),
            "fd00:200::1".parse().unwrap(),
        );
        let ip = Ip {
            flow_label: 5,
            ..Ip::new(src, dst)
        };
        ip.tcp(tcp_header(t), payload)
    }

    fn gso(gso_type: u8, gso_size: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    fn cut_all(pkt: &[u8], hdr: &VnetHdr) -> (Plan, Vec<Vec<u8>>, Wire) {
        let info = packet::parse(pkt).unwrap();
        let plan = plan(hdr, pkt, &info).unwrap();
        let mut scratch = vec![0u8; 65535];
        let mut out = Vec::new();
        let wire = segments(pkt, &plan, &mut scratch, |s| {
            out.push(s.to_vec());
            true
        });
        (plan, out, wire)
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn header_round_trips() {
        let h = gso(GSO_TCPV6 | GSO_ECN, 1400);
        assert_eq!(VnetHdr::read(&h.bytes()), h);
        assert_eq!(VnetHdr::NONE.bytes(), [0; HDR_LEN]);
    }

    #[test]
    fn ipv4_super_packets_become_the_segments_a_kernel_would_send() {
        let data = payload(3 * 1448 + 100);
        let all = Tcp {
            seq: 0xffff_f000,
            fin: true,
            psh: true,
            cwr: true,
        };
        let pkt = v4(0xfffe, all, &data);
        let hdr = VnetHdr {
            flags: 0x07,
            hdr_len: 9999,
            ..gso(GSO_TCPV4 | GSO_ECN, 1448)
        };
        let (plan, segs, wire) = cut_all(&pkt, &hdr);
        // What goes on is rebuilt: unknown flags and the hint dropped.
        assert_eq!(
            plan.header(),
            VnetHdr {
                flags: F_NEEDS_CSUM,
                hdr_len: 52,
                ..gso(GSO_TCPV4 | GSO_ECN, 1448)
            }
        );
        assert_eq!(segs.len(), 4);
        assert_eq!(wire, plan.wire, "the plan counts exactly what is emitted");
        assert_eq!(wire.bytes, segs.iter().map(|s| s.len() as u64).sum::<u64>());
        for (i, seg) in segs.iter().enumerate() {
            let chunk = &data[i * 1448..((i + 1) * 1448).min(data.len())];
            let last = i == 3;
            let t = Tcp {
                seq: all.seq.wrapping_add((i * 1448) as u32),
                fin: last,
                psh: last,
                cwr: i == 0,
            };
            let expected = v4(0xfffe_u16.wrapping_add(i as u16), t, chunk);
            assert_eq!(seg, &expected, "segment {i}");
        }
    }

    #[test]
    fn ipv6_super_packets_are_cut_too() {
        let data = payload(2 * 1428 + 1);
        let all = Tcp {
            seq: 9,
            psh: true,
            ..PLAIN
        };
        let pkt = v6(all, &data);
        let hdr = VnetHdr {
            csum_start: 40,
            ..gso(GSO_TCPV6, 1428)
        };
        let (_, segs, wire) = cut_all(&pkt, &hdr);
        assert_eq!(wire.packets, 3);
        for (i, seg) in segs.iter().enumerate() {
            let chunk = &data[i * 1428..((i + 1) * 1428).min(data.len())];
            let t = Tcp {
                seq: 9 + (i * 1428) as u32,
                psh: i == 2,
                ..all
            };
            assert_eq!(seg, &v6(t, chunk), "segment {i}");
        }
    }

    #[test]
    fn wire_counts_match_the_segments_for_any_size() {
        for size in [48u16, 500, 1448, 9000] {
            for len in [0usize, 1, 47, 48, 1448, 1449, 20_000, 65_000] {
                let pkt = v4(1, PLAIN, &payload(len));
                let (plan, segs, wire) = cut_all(&pkt, &gso(GSO_TCPV4, size));
                assert_eq!(plan.wire, wire, "size {size} len {len}");
                assert_eq!(wire.packets as usize, segs.len());
                let body: Vec<u8> = segs.iter().flat_map(|s| s[52..].to_vec()).collect();
                assert_eq!(
                    body,
                    payload(len),
                    "payload survives, size {size} len {len}"
                );
            }
        }
    }

    #[test]
    fn partial_checksums_are_finished_for_plain_destinations() {
        let data = payload(333);
        let full = v4(
            3,
            Tcp {
                seq: 5,
                psh: true,
                ..PLAIN
            },
            &data,
        );
        // What a kernel hands over with TUN_F_CSUM: the pseudo-header sum
        // (not complemented) where the checksum goes.
        let mut partial = full.clone();
        let pseudo = fold(pseudo_header(&partial, 20));
        partial[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            gso_type: GSO_NONE,
            ..gso(GSO_NONE, 0)
        };
        let (plan, segs, _) = cut_all(&partial, &hdr);
        assert!(!plan.is_plain() && !plan.is_segmented());
        assert_eq!(segs, vec![full]);
    }

    #[test]
    fn headers_that_do_not_fit_their_packet_are_refused() {
        let tcp4 = v4(1, PLAIN, &payload(3000));
        let tcp6 = v6(PLAIN, &payload(3000));
        let check = |hdr: VnetHdr, pkt: &[u8]| plan(&hdr, pkt, &packet::parse(pkt).unwrap());
        assert_eq!(
            check(gso(GSO_TCPV6, 1400), &tcp4),
            Err(OffloadError::NotTcp(GSO_TCPV6))
        );
        let at_40 = VnetHdr {
            csum_start: 40,
            ..gso(GSO_TCPV4, 1400)
        };
        assert_eq!(check(at_40, &tcp6), Err(OffloadError::NotTcp(GSO_TCPV4)));
        assert_eq!(check(gso(3, 1400), &tcp4), Err(OffloadError::GsoType(3)));
        assert_eq!(
            check(gso(0x41, 1400), &tcp4),
            Err(OffloadError::GsoType(0x41))
        );
        assert_eq!(
            check(gso(GSO_TCPV4, 47), &tcp4),
            Err(OffloadError::GsoSize(47))
        );
        let far = VnetHdr {
            csum_start: 3040,
            ..gso(GSO_NONE, 0)
        };
        assert_eq!(check(far, &tcp4), Err(OffloadError::Checksum));
        // A checksum "finished" over the source address would spoof it
        // after the anti-spoofing check: only the TCP/UDP field will do.
        let into_source = VnetHdr {
            csum_start: 0,
            csum_offset: 12,
            ..gso(GSO_NONE, 0)
        };
        assert_eq!(check(into_source, &tcp4), Err(OffloadError::Checksum));
        let no_csum = VnetHdr {
            flags: 0,
            ..gso(GSO_TCPV4, 1400)
        };
        assert_eq!(check(no_csum, &tcp4), Err(OffloadError::NoChecksum));
        // A data offset past the end of a header-only packet.
        let mut short = v4(1, PLAIN, &[]);
        short[32] = 0xf0;
        assert_eq!(
            check(gso(GSO_TCPV4, 1400), &short),
            Err(OffloadError::TcpHeader)
        );
        // UDP with TCP segmentation.
        let udp = Ip::new([10, 9, 0, 2], [10, 9, 0, 1]).udp(1, 2, &[]);
        let on_udp = VnetHdr {
            csum_offset: 6,
            ..gso(GSO_TCPV4, 1400)
        };
        assert_eq!(check(on_udp, &udp), Err(OffloadError::NotTcp(GSO_TCPV4)));
    }
}
