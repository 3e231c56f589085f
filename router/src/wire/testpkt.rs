//! Packets for the router's unit tests, built in one place. Headers,
//! lengths and checksums come from etherparse, an implementation
//! independent of the parser, the checksum code and the segmentation under
//! test; a test chooses only the fields it varies.

use std::net::IpAddr;

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Header,
    Ipv6FlowLabel, Ipv6Header, TcpHeader, UdpHeader,
};

/// The IP header of a test packet, IPv4 or IPv6 by its addresses.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (of the same family).
    pub dst: IpAddr,
    /// TTL, or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification.
    pub id: u16,
    /// IPv4 don't-fragment flag.
    pub df: bool,
    /// IPv4 fragment offset, bytes (a multiple of 8).
    pub offset: u16,
    /// IPv4 more-fragments flag.
    pub more: bool,
    /// IPv6 flow label.
    pub flow_label: u32,
}

/// One header of either family, lengths and checksum filled in.
enum Header {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl Ip {
    /// A header from `src` to `dst` as Linux sends one: TTL 64, don't
    /// fragment, identification 0.
    pub fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Ip {
        Ip {
            src: src.into(),
            dst: dst.into(),
            ttl: 64,
            id: 0,
            df: true,
            offset: 0,
            more: false,
            flow_label: 0,
        }
    }

    /// This header on the IPv4 fragment of datagram `id` that starts
    /// `offset` bytes into it.
    pub fn fragment(self, id: u16, offset: u16, more: bool) -> Ip {
        Ip {
            id,
            df: false,
            offset,
            more,
            ..self
        }
    }

    /// The header followed by `payload` as it is: protocol `proto` (the
    /// IPv6 next header), no transport header or checksum added.
    pub fn raw(&self, proto: u8, payload: &[u8]) -> Vec<u8> {
        let head = match self.header(proto, payload.len()) {
            Header::V4(h) => h.to_bytes().to_vec(),
            Header::V6(h) => h.to_bytes().to_vec(),
        };
        [&head[..], payload].concat()
    }

    /// A UDP datagram `sport` -> `dport` carrying `data`, length and
    /// checksum filled in.
    pub fn udp(&self, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let udp = match self.header(IpNumber::UDP.0, 8 + data.len()) {
            Header::V4(h) => UdpHeader::with_ipv4_checksum(sport, dport, &h, data),
            Header::V6(h) => UdpHeader::with_ipv6_checksum(sport, dport, &h, data),
        }
        .expect("a UDP datagram of test size");
        self.raw(IpNumber::UDP.0, &[&udp.to_bytes()[..], data].concat())
    }

    /// A TCP segment with header `tcp` (options included) carrying `data`;
    /// the checksum filled in.
    pub fn tcp(&self, mut tcp: TcpHeader, data: &[u8]) -> Vec<u8> {
        let len = tcp.header_len() + data.len();
        tcp.checksum = match self.header(IpNumber::TCP.0, len) {
            Header::V4(h) => tcp.calc_checksum_ipv4(&h, data),
            Header::V6(h) => tcp.calc_checksum_ipv6(&h, data),
        }
        .expect("a TCP segment of test size");
        self.raw(IpNumber::TCP.0, &[&tcp.to_bytes()[..], data].concat())
    }

    /// An ICMP (or, between IPv6 addresses, ICMPv6) message of type `kind`
    /// and `code`, `rest` its bytes 5 to 8 (echo identifier and sequence,
    /// or unused), then `data` (an error's quote); checksum filled in.
    pub fn icmp(&self, kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let kind = Icmpv6Type::Unknown {
                    type_u8: kind,
                    code_u8: code,
                    bytes5to8: rest,
                };
                let h = Icmpv6Header::with_checksum(kind, src.octets(), dst.octets(), data)
                    .expect("an ICMPv6 message of test size");
                self.raw(IpNumber::IPV6_ICMP.0, &[&h.to_bytes()[..], data].concat())
            }
            _ => {
                let kind = Icmpv4Type::Unknown {
                    type_u8: kind,
                    code_u8: code,
                    bytes5to8: rest,
                };
                let h = Icmpv4Header::with_checksum(kind, data);
                self.raw(IpNumber::ICMP.0, &[&h.to_bytes()[..], data].concat())
            }
        }
    }

    fn header(&self, proto: u8, payload_len: usize) -> Header {
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let len = u16::try_from(payload_len).expect("an IPv4 packet of test size");
                let mut h =
                    Ipv4Header::new(len, self.ttl, IpNumber(proto), src.octets(), dst.octets())
                        .expect("an IPv4 packet of test size");
                h.identification = self.id;
                h.dont_fragment = self.df;
                h.more_fragments = self.more;
                h.fragment_offset =
                    IpFragOffset::try_new(self.offset / 8).expect("a fragment offset");
                h.header_checksum = h.calc_header_checksum();
                Header::V4(h)
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => Header::V6(Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(self.flow_label).expect("a flow label"),
                payload_length: u16::try_from(payload_len).expect("an IPv6 packet of test size"),
                next_header: IpNumber(proto),
                hop_limit: self.ttl,
                source: src.octets(),
                destination: dst.octets(),
            }),
            _ => panic!("test packet mixes address families"),
        }
    }
}
