//! Compilation stays bounded in time and memory on the classic worst case
//! for decision trees: interleaved rules that constrain different fields,
//! whose regions form a cross product.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use firewall_rules::naive::Naive;
use firewall_rules::{Chain, PacketKey, Peer, ProjectId, RuleSet};

fn cross_product(n: u32) -> String {
    let mut t = String::new();
    for i in 0..n {
        let _ = writeln!(
            t,
            "[[out]]\naction = \"deny\"\nsrc = \"10.200.{}.{}\"",
            i / 250,
            i % 250 + 1
        );
        let _ = writeln!(
            t,
            "[[out]]\naction = \"allow\"\ndst = \"198.51.{}.{}\"",
            i / 250,
            i % 250 + 1
        );
    }
    t
}

#[test]
fn cross_product_rules_compile_within_bounds() {
    let n = 3000u32;
    let rules =
        RuleSet::parse(&cross_product(n), Path::new("x.toml")).unwrap_or_else(|e| panic!("{e}"));
    let classifier = rules.compile();
    let stats = classifier.stats();
    let count = 2 * n as usize;
    println!("{count} cross-product rules: {stats:?}");
    assert!(
        stats.leaf_entries <= 40 * count,
        "{} leaf entries for {count} rules: {stats:?}",
        stats.leaf_entries
    );
    let naive = Naive::new(&rules);
    for i in (0..n).step_by(37) {
        for j in (0..n).step_by(41) {
            let key = PacketKey {
                project: ProjectId::UNKNOWN,
                src: IpAddr::V4(Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8)),
                dst: IpAddr::V4(Ipv4Addr::new(198, 51, (j / 250) as u8, (j % 250 + 1) as u8)),
                proto: 6,
                src_port: 1,
                dst_port: 2,
                peer: Peer::Outside,
            };
            assert_eq!(
                classifier.classify(Chain::Out, &key),
                naive.classify(Chain::Out, &key)
            );
        }
    }
}
