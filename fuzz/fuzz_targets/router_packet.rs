//! The router's view of what a tun hands it, on arbitrary bytes: a
//! virtio-net header (the first 10 bytes) and an IP packet. Parsing and the
//! offload plan never panic; what they accept is consistent with the
//! buffer; a later fragment yields no transport fields; and cutting an
//! accepted super-packet yields exactly the packets and bytes the plan
//! counted, each a well-formed packet of its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vassal_router::offload::{self, VnetHdr, HDR_LEN};
use vassal_router::packet;

fuzz_target!(|data: &[u8]| {
    let Some((hdr, ip)) = data.split_first_chunk::<HDR_LEN>() else {
        return;
    };
    let Ok(info) = packet::parse(ip) else {
        return;
    };
    assert_eq!(info.src.is_ipv4(), info.dst.is_ipv4(), "mixed families");
    assert_eq!(info.src.is_ipv4(), ip[0] >> 4 == 4);
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
