//! Zero-copy, bounds-checked view of the IP header fields the router needs:
//! addresses, protocol, ports (or the ICMP echo identifier) and TCP flags.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a packet could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Empty, or version nibble neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    Version,
    /// Shorter than its headers claim.
    #[error("truncated header")]
    Truncated,
    /// The IP length field disagrees with the bytes read.
    #[error("IP length field does not match the packet")]
    Length,
    /// An IPv6 packet with a second fragment header in its chain.
    #[error("more than one IPv6 fragment header")]
    Fragment,
}

/// IP protocol numbers the datapath looks into.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;

/// What the router needs to know of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (after IPv6 extension headers; for an IPv6 later
    /// fragment, the next header its fragment header names).
    pub proto: u8,
    /// Source port (TCP/UDP), the echo identifier for ICMP echo, else 0.
    pub src_port: u16,
    /// Destination port (TCP/UDP), the echo identifier for ICMP echo, else 0.
    pub dst_port: u16,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// Whether this is an ICMP(v6) echo request (opens a flow) or another
    /// ICMP message; unused for other protocols.
    pub icmp_echo_request: bool,
    /// Whether this is an ICMP(v6) echo reply: with identifier 0 its ports
    /// read 0 like those of messages that carry no identifier, so the flow
    /// table needs to know.
    pub icmp_echo_reply: bool,
    /// For an ICMP(v6) error (unreachable, too big, time exceeded, parameter
    /// problem): the flow of the packet it quotes, so that errors about an
    /// established flow (path MTU discovery) reach the vassal.
    pub quoted: Option<Quoted>,
    /// Offset of the transport header (after IPv6 extension headers); for a
    /// non-first fragment, where the transport header is elsewhere, 0.
    pub transport: usize,
    /// Where this packet lies in a fragmented datagram; `None` for a whole
    /// datagram (IPv6 atomic fragments included).
    pub fragment: Option<Fragment>,
}

impl PacketInfo {
    /// A whole packet of `proto` between two ports (or echo identifiers)
    /// and nothing more: no flags, quote or fragment. The parser starts
    /// from it; tests and benchmarks of the flow table build their packets
    /// with it.
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, src_port: u16, dst_port: u16) -> Self {
        PacketInfo {
            src,
            dst,
            proto,
            src_port,
            dst_port,
            tcp_flags: 0,
            icmp_echo_request: false,
            icmp_echo_reply: false,
            quoted: None,
            transport: 0,
            fragment: None,
        }
    }
}

/// The fragment fields of a packet that is part of a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The identification (16 bits in IPv4, 32 in IPv6).
    pub id: u32,
    /// The protocol every fragment of the datagram names: the IPv4
    /// protocol, or the next header of the IPv6 fragment header (the first
    /// header of the fragmentable part, which may be an extension header).
    pub proto: u8,
    /// Offset of this fragment's data in the datagram, bytes.
    pub offset: u32,
    /// Bytes of the datagram this fragment carries.
    pub len: u32,
    /// Whether more fragments follow (the MF / M flag).
    pub more: bool,
}

impl Fragment {
    /// Whether this is the first fragment (it holds the transport header).
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// The header fields of the packet an ICMP error quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    /// Its source.
    pub src: IpAddr,
    /// Its destination.
    pub dst: IpAddr,
    /// Its protocol.
    pub proto: u8,
    /// Its source port (echo id for ICMP echo).
    pub src_port: u16,
    /// Its destination port (echo id for ICMP echo).
    pub dst_port: u16,
}

/// Parses an IPv4 or IPv6 packet. A first fragment must hold its whole
/// transport header (the tiny-fragment attack hides TCP flags or ports in
/// the second one); a non-first fragment carries no ports: they read as 0,
/// and the datapath makes it follow its first fragment
/// (`state::fragments`).
pub fn parse(pkt: &[u8]) -> Result<PacketInfo, Malformed> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => parse_v4(pkt),
        Some(6) => parse_v6(pkt),
        _ => Err(Malformed::Version),
    }
}

fn parse_v4(pkt: &[u8]) -> Result<PacketInfo, Malformed> {
    if pkt.len() < 20 {
        return Err(Malformed::Truncated);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || pkt.len() < ihl {
        return Err(Malformed::Truncated);
    }
    if total != pkt.len() {
        return Err(Malformed::Length);
    }
    let flags_offset = u16::from_be_bytes([pkt[6], pkt[7]]);
    let frag_offset = flags_offset & 0x1fff;
    let more = flags_offset & 0x2000 != 0;
    let fragment = (more || frag_offset != 0).then(|| Fragment {
        id: u32::from(u16::from_be_bytes([pkt[4], pkt[5]])),
        proto: pkt[9],
        offset: u32::from(frag_offset) * 8,
        len: (total - ihl) as u32,
        more,
    });
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let proto = pkt[9];
    let transport = if frag_offset == 0 {
        &pkt[ihl..]
    } else {
        &[][..]
    };
    let mut info = PacketInfo {
        transport: if frag_offset == 0 { ihl } else { 0 },
        fragment,
        ..PacketInfo::new(IpAddr::V4(src), IpAddr::V4(dst), proto, 0, 0)
    };
    transport_fields(&mut info, transport, frag_offset == 0)?;
    Ok(info)
}

fn parse_v6(pkt: &[u8]) -> Result<PacketInfo, Malformed> {
    if pkt.len() < 40 {
        return Err(Malformed::Truncated);
    }
    let payload = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
    if payload + 40 != pkt.len() {
        return Err(Malformed::Length);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&pkt[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&pkt[24..40]);
    let mut next = pkt[6];
    let mut offset = 40;
    let mut first_fragment = true;
    let mut fragment = None;
    // Walk the extension headers; bounded by the packet length since every
    // step advances by at least 8 bytes.
    loop {
        match next {
            0 | 43 | 60 => {
                let h = pkt.get(offset..offset + 2).ok_or(Malformed::Truncated)?;
                next = h[0];
                offset += (usize::from(h[1]) + 1) * 8;
            }
            44 if fragment.is_some() => return Err(Malformed::Fragment),
            44 => {
                let h = pkt.get(offset..offset + 8).ok_or(Malformed::Truncated)?;
                next = h[0];
                offset += 8;
                let off_m = u16::from_be_bytes([h[2], h[3]]);
                let more = off_m & 1 != 0;
                let frag_offset = u32::from(off_m >> 3) * 8;
                if more || frag_offset != 0 {
                    fragment = Some(Fragment {
                        id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                        proto: next,
                        offset: frag_offset,
                        len: pkt.len().saturating_sub(offset) as u32,
                        more,
                    });
                }
                if frag_offset != 0 {
                    // What follows is the middle of the datagram, not
                    // headers: `next` names the first header of the
                    // fragmentable part, which only the first fragment
                    // holds.
                    first_fragment = false;
                    break;
                }
            }
            _ => break,
        }
        if offset > pkt.len() {
            return Err(Malformed::Truncated);
        }
    }
    let (src, dst) = (Ipv6Addr::from(src).into(), Ipv6Addr::from(dst).into());
    let mut info = PacketInfo {
        transport: if first_fragment { offset } else { 0 },
        fragment,
        ..PacketInfo::new(src, dst, next, 0, 0)
    };
    let transport = if first_fragment {
        &pkt[offset..]
    } else {
        &[][..]
    };
    transport_fields(&mut info, transport, first_fragment)?;
    Ok(info)
}

fn transport_fields(info: &mut PacketInfo, t: &[u8], first: bool) -> Result<(), Malformed> {
    if !first {
        return Ok(());
    }
    match info.proto {
        proto::TCP => {
            if t.len() < 20 {
                return Err(Malformed::Truncated);
            }
            info.src_port = u16::from_be_bytes([t[0], t[1]]);
            info.dst_port = u16::from_be_bytes([t[2], t[3]]);
            info.tcp_flags = t[13];
        }
        proto::UDP => {
            if t.len() < 8 {
                return Err(Malformed::Truncated);
            }
            info.src_port = u16::from_be_bytes([t[0], t[1]]);
            info.dst_port = u16::from_be_bytes([t[2], t[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            if t.len() < 8 {
                return Err(Malformed::Truncated);
            }
            let (request, reply) = if info.proto == proto::ICMP {
                (8, 0)
            } else {
                (128, 129)
            };
            if t[0] == request || t[0] == reply {
                let id = u16::from_be_bytes([t[4], t[5]]);
                info.src_port = id;
                info.dst_port = id;
                info.icmp_echo_request = t[0] == request;
                info.icmp_echo_reply = t[0] == reply;
            }
            let error = if info.proto == proto::ICMP {
                matches!(t[0], 3 | 11 | 12)
            } else {
                matches!(t[0], 1..=4)
            };
            if error {
                // A quote we cannot read is not an error of the packet:
                // it simply relates to no flow.
                info.quoted = quoted(&t[8..]);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads the quoted header of an ICMP error (IP header plus at least the
/// first 8 transport bytes, as RFC 792/4443 require).
fn quoted(q: &[u8]) -> Option<Quoted> {
    let (src, dst, proto, rest) = match q.first()? >> 4 {
        4 => {
            let ihl = usize::from(q.first()? & 0x0f) * 4;
            let h = q.get(..ihl.max(20))?;
            let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
            (src, dst, h[9], q.get(ihl..)?)
        }
        6 => {
            let h = q.get(..40)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&h[8..24]);
            let mut b = [0u8; 16];
            b.copy_from_slice(&h[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                h[6],
                &q[40..],
            )
        }
        _ => return None,
    };
    let t = rest.get(..8)?;
    let (src_port, dst_port) = match proto {
        proto::TCP | proto::UDP => (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ),
        proto::ICMP | proto::ICMPV6 => {
            let id = u16::from_be_bytes([t[4], t[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(Quoted {
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testpkt::Ip;
    use etherparse::TcpHeader;

    /// From a vassal to the internet.
    fn v4() -> Ip {
        Ip::new([10, 200, 0, 2], [203, 0, 113, 9])
    }

    #[test]
    fn parses_v4_udp_tcp_icmp() {
        let i = parse(&v4().udp(12345, 53, &[])).unwrap();
        assert_eq!(i.src, "10.200.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(i.dst, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!((i.proto, i.src_port, i.dst_port), (17, 12345, 53));

        let mut fin = TcpHeader::new(80, 8080, 0, 0);
        fin.fin = true;
        let i = parse(&v4().tcp(fin, &[])).unwrap();
        assert_eq!((i.src_port, i.dst_port, i.tcp_flags), (80, 8080, TCP_FIN));

        let i = parse(&v4().icmp(8, 0, [0x12, 0x34, 0, 1], &[])).unwrap();
        assert_eq!(
            (i.src_port, i.dst_port, i.icmp_echo_request),
            (0x1234, 0x1234, true)
        );
        let i = parse(&v4().icmp(3, 1, [0; 4], &[])).unwrap();
        assert_eq!((i.src_port, i.icmp_echo_request), (0, false));
    }

    #[test]
    fn malformed_v4_is_refused() {
        assert_eq!(parse(&[]), Err(Malformed::Version));
        assert_eq!(parse(&[0x55; 40]), Err(Malformed::Version));
        assert_eq!(parse(&[0x45; 10]), Err(Malformed::Truncated));
        let mut short_udp = v4().raw(17, &[0, 1, 0, 2]);
        assert_eq!(parse(&short_udp), Err(Malformed::Truncated));
        short_udp.push(0);
        assert_eq!(parse(&short_udp), Err(Malformed::Length));
        let mut bad_ihl = v4().raw(17, &[0; 8]);
        bad_ihl[0] = 0x4f;
        assert_eq!(parse(&bad_ihl), Err(Malformed::Truncated));
    }

    #[test]
    fn icmp_errors_quote_their_flow() {
        // port unreachable quoting a UDP packet 10.200.0.2:5353 -> 203.0.113.9:53
        let quoted_pkt = v4().udp(5353, 53, &[]);
        let i = parse(&v4().icmp(3, 3, [0; 4], &quoted_pkt)).unwrap();
        let q = i.quoted.unwrap();
        assert_eq!((q.proto, q.src_port, q.dst_port), (17, 5353, 53));
        assert_eq!(q.src, "10.200.0.2".parse::<IpAddr>().unwrap());
        // a quote too short to hold ports relates to nothing, but parses
        let i = parse(&v4().icmp(3, 3, [0; 4], &[0x45, 0])).unwrap();
        assert_eq!(i.quoted, None);
    }

    /// From a vassal to the IPv6 internet: `payload` after the fixed
    /// header, `next` its first header.
    fn v6(next: u8, payload: &[u8]) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:200::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        );
        Ip::new(src, dst).raw(next, payload)
    }

    #[test]
    fn parses_v6_with_extension_headers() {
        let i = parse(&v6(17, &[0, 7, 0, 9, 0, 8, 0, 0])).unwrap();
        assert_eq!((i.proto, i.src_port, i.dst_port), (17, 7, 9));
        assert_eq!(i.src, "fd00:200::2".parse::<IpAddr>().unwrap());
        // hop-by-hop (8 bytes) then ICMPv6 echo request
        let mut ext = vec![58, 0, 0, 0, 0, 0, 0, 0];
        ext.extend_from_slice(&[128, 0, 0, 0, 0, 5, 0, 1]);
        let i = parse(&v6(0, &ext)).unwrap();
        assert_eq!((i.proto, i.src_port, i.icmp_echo_request), (58, 5, true));
        // a hop-by-hop header claiming more than the packet holds
        assert_eq!(
            parse(&v6(0, &[17, 4, 0, 0, 0, 0, 0, 0])),
            Err(Malformed::Truncated)
        );
        // non-first fragment: no ports, no error
        let i = parse(&v6(44, &[17, 0, 0, 0x08, 0, 0, 0, 1, 0xaa])).unwrap();
        assert_eq!((i.proto, i.src_port), (17, 0));
    }

    #[test]
    fn v4_fragments_carry_their_place_in_the_datagram() {
        let first = v4().fragment(0xbeef, 0, true).raw(
            17,
            &[0x30, 0x39, 0, 53, 0x0f, 0xa8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        let i = parse(&first).unwrap();
        assert_eq!((i.src_port, i.dst_port), (12345, 53));
        let f = i.fragment.unwrap();
        assert_eq!(
            (f.id, f.proto, f.offset, f.len, f.more),
            (0xbeef, 17, 0, 16, true)
        );
        assert!(f.is_first());
        let later = v4().fragment(0xbeef, 16, false).raw(17, &[9; 24]);
        let i = parse(&later).unwrap();
        assert_eq!((i.src_port, i.dst_port, i.transport), (0, 0, 0));
        let f = i.fragment.unwrap();
        assert_eq!(
            (f.offset, f.len, f.more, f.is_first()),
            (16, 24, false, false)
        );
        // DF alone is no fragment
        assert!(v4().df);
        assert_eq!(parse(&v4().raw(17, &[0; 8])).unwrap().fragment, None);
        // a first fragment too short for its TCP header (RFC 1858 tiny
        // fragment) is refused
        let tiny = v4()
            .fragment(0, 0, true)
            .raw(6, &[0, 80, 0, 80, 0, 0, 0, 1]);
        assert_eq!(parse(&tiny), Err(Malformed::Truncated));
    }
    #[test]
    fn v6_fragments_stop_the_header_walk_after_the_first() {
        // A non-first fragment whose fragment header names destination
        // options next: what follows is data, not a header.
        let i = parse(&v6(44, &[60, 0, 0x05, 0xa9, 0, 0, 0x12, 0x34, 0xff, 0xff])).unwrap();
        assert_eq!((i.proto, i.src_port, i.transport), (60, 0, 0));
        let f = i.fragment.unwrap();
        assert_eq!(
            (f.id, f.proto, f.offset, f.len, f.more),
            (0x1234, 60, 1448, 2, true)
        );
        // Its first fragment: destination options, then UDP with ports.
        let mut first = vec![60, 0, 0, 1, 0, 0, 0x12, 0x34];
        first.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        first.extend_from_slice(&[0, 7, 0, 9, 0x0b, 0xb8, 0, 0]);
        let i = parse(&v6(44, &first)).unwrap();
        assert_eq!(
            (i.proto, i.src_port, i.dst_port, i.transport),
            (17, 7, 9, 56)
        );
        let f = i.fragment.unwrap();
        assert_eq!((f.proto, f.offset, f.len, f.more), (60, 0, 16, true));
        // An atomic fragment (offset 0, no more) is a whole datagram.
        let i = parse(&v6(44, &[17, 0, 0, 0, 0, 0, 0, 1, 0, 7, 0, 9, 0, 8, 0, 0])).unwrap();
        assert_eq!((i.src_port, i.fragment), (7, None));
        // Two fragment headers: refused.
        let mut twice = vec![44, 0, 0, 1, 0, 0, 0, 1];
        twice.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 2]);
        twice.extend_from_slice(&[0, 7, 0, 9, 0, 8, 0, 0]);
        assert_eq!(parse(&v6(44, &twice)), Err(Malformed::Fragment));
    }
}
