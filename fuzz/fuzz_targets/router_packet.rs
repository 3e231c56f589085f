//! The router's view of what a tun hands it, on arbitrary bytes: a
//! virtio-net header (the first 10 bytes) and an IP packet. Parsing and the
//! offload plan never panic; what they accept is consistent with the
//! buffer; a later fragment yields no transport fields; and cutting an
//! accepted super-packet yields exactly the packets and bytes the plan
//! counted, each a well-formed packet of its own.
//!
//! ICMP errors (issue 11): the IP bytes are also quoted, whole or cut
//! short, inside an ICMP error and an ICMPv6 error, which must parse; the
//! related-error check, the hop decrement and the router's own time
//! exceeded never panic, the decrement keeps an IPv4 header checksum
//! right, and a time exceeded is well formed and never answered in turn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use vassal_router::icmp;
use vassal_router::offload::{self, VnetHdr, HDR_LEN};
use vassal_router::packet::{self, proto, PacketInfo};

/// `quote` inside an ICMP destination unreachable (IPv4) or ICMPv6
/// destination unreachable, from 203.0.113.1 / 2001:db8::1.
fn error_around(quote: &[u8], v6: bool) -> Vec<u8> {
    let quote = &quote[..quote.len().min(1200)];
    let mut p = Vec::with_capacity(48 + quote.len());
    if v6 {
        let payload = (8 + quote.len()) as u16;
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&payload.to_be_bytes());
        p.extend_from_slice(&[proto::ICMPV6, 64]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    } else {
        let total = (28 + quote.len()) as u16;
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, proto::ICMP, 0, 0]);
        p.extend_from_slice(&[203, 0, 113, 1, 10, 9, 0, 2]);
        p.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    }
    p.extend_from_slice(quote);
    p
}

fn header_sum(h: &[u8]) -> u32 {
    let mut s: u32 = h
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

fn check_icmp(ip: &[u8], info: &PacketInfo) {
    if info.quoted.is_some() {
        assert!(info.proto == proto::ICMP || info.proto == proto::ICMPV6);
    }
    for from_host in [false, true] {
        for dst_is_vassal in [false, true] {
            let _ = icmp::may_relate(info, from_host, dst_is_vassal);
        }
    }
    let _ = icmp::is_link_local(info);
    let from: IpAddr = if info.src.is_ipv4() {
        [10, 9, 0, 1].into()
    } else {
        [0xfd00, 0, 0, 0, 0, 0, 0, 1].into()
    };
    let mut out = [0u8; icmp::ERROR_MAX];
    if let Some(n) = icmp::time_exceeded(ip, info, from, &mut out) {
        let te = packet::parse(&out[..n]).expect("a time exceeded is well formed");
        assert_eq!((te.src, te.dst), (from, info.src));
        let copy = out;
        assert_eq!(icmp::time_exceeded(&copy[..n], &te, from, &mut out), None);
    }
    if icmp::hop_limit(ip) >= 2 {
        let mut head = [0u8; icmp::HOP_HEAD];
        let len = icmp::decrement(ip, &mut head);
        let mut hopped = ip.to_vec();
        hopped[..len].copy_from_slice(&head[..len]);
        assert_eq!(icmp::hop_limit(&hopped), icmp::hop_limit(ip) - 1);
        let hopped_info = packet::parse(&hopped).expect("a hop keeps the packet well formed");
        assert_eq!(hopped_info, *info);
        if info.src.is_ipv4() {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if header_sum(&ip[..ihl]) == 0xffff {
                assert_eq!(header_sum(&hopped[..ihl]), 0xffff, "checksum broken");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((hdr, ip)) = data.split_first_chunk::<HDR_LEN>() else {
        return;
    };
    for v6 in [false, true] {
        for cut in [ip.len(), ip.len() / 2, 27.min(ip.len())] {
            let err = error_around(&ip[..cut], v6);
            let info = packet::parse(&err).expect("an ICMP error around any quote parses");
            check_icmp(&err, &info);
        }
    }
    let Ok(info) = packet::parse(ip) else {
        return;
    };
    assert_eq!(info.src.is_ipv4(), info.dst.is_ipv4(), "mixed families");
    assert_eq!(info.src.is_ipv4(), ip[0] >> 4 == 4);
    check_icmp(ip, &info);
    if let Some(f) = info.fragment {
        assert!(f.more || f.offset != 0, "a whole datagram is no fragment");
        assert!(f.len as usize <= ip.len());
        if !f.is_first() {
            // Its transport header is in another fragment: nothing of it
            // may be read from this one.
            assert_eq!((info.src_port, info.dst_port, info.transport), (0, 0, 0));
        }
    }
    let hdr = VnetHdr::read(hdr);
    let Ok(plan) = offload::plan(&hdr, ip, &info) else {
        return;
    };
    assert!(plan.wire.bytes >= ip.len() as u64);
    assert!(
        info.fragment.is_none() || plan.is_plain(),
        "a fragment is never a super-packet nor checksummed here"
    );
    let mut scratch = vec![0u8; 65_535];
    let mut emitted = 0u64;
    let sent = offload::segments(ip, &plan, &mut scratch, |segment| {
        let seg = packet::parse(segment).expect("a segment is a well-formed packet");
        assert_eq!(
            (seg.src, seg.dst, seg.proto),
            (info.src, info.dst, info.proto)
        );
        emitted += segment.len() as u64;
        true
    });
    assert_eq!(sent, plan.wire, "the plan counts what is emitted");
    assert_eq!(emitted, plan.wire.bytes);
});
