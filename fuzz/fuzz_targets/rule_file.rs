//! Rule files: parsing never panics; an accepted file compiles to a
//! classifier that agrees with the naive first-match scan on packets made
//! from the input's own bytes.
#![no_main]

use firewall_rules::naive::Naive;
use firewall_rules::{Chain, PacketKey, Peer, RuleSet};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = RuleSet::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let compiled = rules.compile();
    let naive = Naive::new(&rules);
    for (i, w) in data.windows(8).step_by(3).take(64).enumerate() {
        let v4 = |o: usize| IpAddr::V4(Ipv4Addr::new(10, w[o % 8], w[(o + 1) % 8], w[(o + 2) % 8]));
        let v6 = |o: usize| {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from(w[o % 8]),
                u16::from(w[(o + 1) % 8]),
            ))
        };
        let (src, dst) = if i % 2 == 0 {
            (v4(0), v4(3))
        } else {
            (v6(0), v6(3))
        };
        let proto = [6u8, 17, 1, 58, w[7]][i % 5];
        let port = |o: usize| u16::from_le_bytes([w[o % 8], w[(o + 1) % 8]]);
        let key = |project| PacketKey {
            project,
            src,
            dst,
            proto,
            src_port: port(4),
            dst_port: port(6),
            // The fuzzer's bytes pick the other end too.
            peer: match w[5] % 4 {
                0 => Peer::Outside,
                1 => Peer::Unknown,
                n => Peer::Vassal {
                    project,
                    same: n == 2,
                },
            },
        };
        for chain in [Chain::Out, Chain::In] {
            let name = ["alice", "bob", "mallory"][i % 3];
            let a = compiled.classify(chain, &key(compiled.project_id(name)));
            let b = naive.classify(chain, &key(naive.project_id(name)));
            assert_eq!(a, b, "compiled and naive disagree");
        }
    }
});
