//! ICMP and hop handling of the router (issue 11): which ICMP errors may
//! pass as related to the flow they quote, the hop the router is between
//! two vassals (TTL and hop limit, time exceeded), and IPv6 link-local
//! traffic, which never leaves a vassal's link.
//!
//! Pure functions on packet bytes and [`PacketInfo`]; the datapath decides
//! where they apply and writes what they build (within the budget of
//! `state::budget`).

use crate::wire::checksum::{fold, sum};
use crate::wire::packet::{proto, PacketInfo};
use std::net::IpAddr;

/// Whether an ICMP error may pass as related to the flow it quotes, given
/// who sent it. A quoted flow skips both chains, so only someone who may
/// speak for that flow can use it: its other endpoint, or a hop on its
/// path. From a vassal that is only the flow's other endpoint (between
/// vassals the router is the only hop, and it sends its own errors);
/// from the host tun it is anyone, but only about a flow that leaves
/// through the host tun (its quoted destination is no vassal address).
/// Anything else is an ordinary packet for the rules. Not an error: true.
pub fn may_relate(info: &PacketInfo, from_host: bool, quoted_dst_is_vassal: bool) -> bool {
    let Some(q) = info.quoted else {
        return true;
    };
    if from_host {
        !quoted_dst_is_vassal
    } else {
        info.src == q.dst
    }
}

/// Whether `info` is IPv6 traffic confined to a link: from a link-local
/// (fe80::/10) or the unspecified source (router solicitations, MLD
/// reports, DAD), or to a link-local or link-scope multicast address.
/// The router forwards none of it and counts it apart from spoofing: the
/// kernel sends it on its own, so it says nothing about the tenant.
pub fn is_link_local(info: &PacketInfo) -> bool {
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (info.src, info.dst) else {
        return false;
    };
    let link_unicast = |a: std::net::Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
    let link_multicast = |a: std::net::Ipv6Addr| a.segments()[0] & 0xff0f == 0xff02;
    link_unicast(src) || src.is_unspecified() || link_unicast(dst) || link_multicast(dst)
}

/// The TTL (IPv4) or hop limit (IPv6) of a parsed packet.
pub fn hop_limit(ip: &[u8]) -> u8 {
    let at = if ip.first().is_some_and(|b| b >> 4 == 4) {
        8
    } else {
        7
    };
    ip.get(at).copied().unwrap_or(0)
}

/// Room for the head of a packet the router rewrites as a hop: the IPv4
/// header up to its checksum, the IPv6 header up to its hop limit.
pub const HOP_HEAD: usize = 12;

/// Copies the first bytes of `ip` (a parsed packet whose TTL or hop limit
/// is at least 2) into `head` with the TTL or hop limit one less and, for
/// IPv4, the header checksum updated incrementally (RFC 1624, eqn. 3), so
/// a super-packet's header stays right for segmentation. Returns how many
/// bytes of `head` replace the packet's first bytes.
pub fn decrement(ip: &[u8], head: &mut [u8; HOP_HEAD]) -> usize {
    let v4 = ip.first().is_some_and(|b| b >> 4 == 4);
    let len = if v4 { HOP_HEAD } else { 8 };
    let Some(from) = ip.get(..len) else {
        return 0;
    };
    head[..len].copy_from_slice(from);
    if !v4 {
        head[7] = head[7].saturating_sub(1);
        return len;
    }
    let old = u16::from_be_bytes([head[8], head[9]]);
    head[8] = head[8].saturating_sub(1);
    let new = u16::from_be_bytes([head[8], head[9]]);
    let sum = u16::from_be_bytes([head[10], head[11]]);
    // HC' = ~(~HC + ~m + m')
    let c = !fold(u64::from(!sum) + u64::from(!old) + u64::from(new));
    head[10..12].copy_from_slice(&c.to_be_bytes());
    len
}

/// The largest message [`time_exceeded`] builds: IPv6's minimum MTU (and
/// more than IPv4's 576).
pub const ERROR_MAX: usize = 1280;

/// Builds in `out` the time exceeded message (ICMP type 11 or ICMPv6 type
/// 3, code 0) that answers `pkt` (parsed as `info`), sent from `from` (the
/// gateway address of `pkt`'s family) to `pkt`'s source, quoting as much
/// of `pkt` as fits in 576 bytes (IPv4, RFC 1812) or 1280 (IPv6, RFC 4443).
/// Returns its length; `None` when no error may answer `pkt`: an ICMP
/// error itself (RFC 1122, RFC 4443 2.4), a non-first fragment, or a
/// family mismatch.
pub fn time_exceeded(
    pkt: &[u8],
    info: &PacketInfo,
    from: IpAddr,
    out: &mut [u8; ERROR_MAX],
) -> Option<usize> {
    if info.transport == 0 {
        return None;
    }
    if info.proto == proto::ICMP || info.proto == proto::ICMPV6 {
        let kind = *pkt.get(info.transport)?;
        let informational = if info.proto == proto::ICMP {
            !matches!(kind, 3 | 4 | 5 | 11 | 12)
        } else {
            kind >= 128
        };
        if !informational {
            return None;
        }
    }
    match (from, info.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let quote = pkt.len().min(576 - 28);
            let total = 28 + quote;
            out[..20].copy_from_slice(&[
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                proto::ICMP,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]);
            out[12..16].copy_from_slice(&from.octets());
            out[16..20].copy_from_slice(&to.octets());
            let c = !fold(sum(&out[..20], 0));
            out[10..12].copy_from_slice(&c.to_be_bytes());
            out[20..28].copy_from_slice(&[11, 0, 0, 0, 0, 0, 0, 0]);
            out[28..total].copy_from_slice(&pkt[..quote]);
            let c = !fold(sum(&out[20..total], 0));
            out[22..24].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let quote = pkt.len().min(ERROR_MAX - 48);
            let payload = 8 + quote;
            let total = 40 + payload;
            out[..8].copy_from_slice(&[
                0x60,
                0,
                0,
                0,
                (payload >> 8) as u8,
                payload as u8,
                proto::ICMPV6,
                255,
            ]);
            out[8..24].copy_from_slice(&from.octets());
            out[24..40].copy_from_slice(&to.octets());
            out[40..48].copy_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
            out[48..total].copy_from_slice(&pkt[..quote]);
            // Pseudo-header: both addresses, the length, the next header.
            let pseudo = sum(&out[8..40], payload as u64 + u64::from(proto::ICMPV6));
            let c = !fold(sum(&out[40..total], pseudo));
            out[42..44].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::{parse, Quoted};
    use crate::wire::testpkt::Ip;
    use std::net::Ipv6Addr;

    /// Between two vassals, `ttl` hops left.
    fn udp4(ttl: u8) -> Vec<u8> {
        let ip = Ip {
            ttl,
            id: 0x1234,
            ..Ip::new([10, 9, 0, 2], [10, 9, 0, 3])
        };
        ip.udp(5000, 7, b"payload!")
    }

    #[test]
    fn decrement_keeps_the_ipv4_checksum_right() {
        for ttl in [2u8, 3, 64, 128, 255] {
            let p = udp4(ttl);
            let mut head = [0u8; HOP_HEAD];
            assert_eq!(decrement(&p, &mut head), 12);
            let mut q = p.clone();
            q[..12].copy_from_slice(&head);
            assert_eq!(hop_limit(&q), ttl - 1);
            assert_eq!(fold(sum(&q[..20], 0)), 0xffff, "ttl {ttl}");
        }
        let v6 = Ip {
            ttl: 9,
            ..Ip::new(Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED)
        }
        .raw(17, &[0; 8]);
        let mut head = [0u8; HOP_HEAD];
        assert_eq!(decrement(&v6, &mut head), 8);
        assert_eq!(head[7], 8);
    }

    #[test]
    fn time_exceeded_quotes_the_packet_and_never_answers_an_error() {
        let p = udp4(1);
        let info = parse(&p).unwrap();
        let mut out = [0u8; ERROR_MAX];
        let gw: IpAddr = "10.9.0.1".parse().unwrap();
        let n = time_exceeded(&p, &info, gw, &mut out).unwrap();
        let te = parse(&out[..n]).unwrap();
        assert_eq!((te.src, te.dst, te.proto), (gw, info.src, proto::ICMP));
        assert_eq!(fold(sum(&out[..20], 0)), 0xffff);
        assert_eq!(fold(sum(&out[20..n], 0)), 0xffff);
        assert_eq!(out[20], 11);
        let q = te.quoted.unwrap();
        assert_eq!(
            (q.src, q.dst, q.src_port, q.dst_port),
            (info.src, info.dst, 5000, 7)
        );
        // The error itself, expired in turn, gets no error back.
        let te_info = parse(&out[..n]).unwrap();
        let copy = out;
        assert_eq!(time_exceeded(&copy[..n], &te_info, gw, &mut out), None);
        // Neither does a family mismatch.
        assert_eq!(
            time_exceeded(&p, &info, "fd00::1".parse().unwrap(), &mut out),
            None
        );
    }

    #[test]
    fn errors_relate_only_when_their_sender_may_speak_for_the_flow() {
        let a: IpAddr = "10.9.0.2".parse().unwrap();
        let b: IpAddr = "10.9.0.3".parse().unwrap();
        let server: IpAddr = "203.0.113.2".parse().unwrap();
        let mut err = parse(&udp4(64)).unwrap();
        assert!(may_relate(&err, false, false), "not an error");
        err.proto = proto::ICMP;
        err.quoted = Some(Quoted {
            src: a,
            dst: server,
            proto: proto::UDP,
            src_port: 1,
            dst_port: 2,
        });
        err.dst = a;
        err.src = b;
        assert!(!may_relate(&err, false, false), "a third vassal");
        err.src = server;
        assert!(may_relate(&err, false, false), "the other endpoint");
        assert!(may_relate(&err, true, false), "a hop beyond the host");
        assert!(
            !may_relate(&err, true, true),
            "the host about a flow between vassals"
        );
    }

    #[test]
    fn link_local_traffic_is_recognised() {
        let mut i = parse(&udp4(64)).unwrap();
        assert!(!is_link_local(&i));
        i.src = "fd00::2".parse().unwrap();
        i.dst = "ff02::2".parse().unwrap();
        assert!(is_link_local(&i), "to link-scope multicast");
        i.dst = "2001:db8::1".parse().unwrap();
        assert!(!is_link_local(&i));
        for src in ["fe80::1", "febf::1", "::"] {
            i.src = src.parse().unwrap();
            assert!(is_link_local(&i), "{src}");
        }
    }
}
