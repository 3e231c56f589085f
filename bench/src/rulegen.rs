//! A seeded generator of realistic rule files and packet mixes.
//!
//! Rule mix (per 100 rules, out chain; the in chain gets a tenth as many):
//! 45 tcp/udp service rules toward destination prefixes /16-/32 with one
//! port, a short list or a range; 15 that also pin a vassal source /24-/32;
//! 10 limited to 1-3 of 200 projects; 10 IPv6 destination /32-/128 with
//! ports; 8 address-only denies /8-/24; 5 icmp; 4 port-only tcp rules (no
//! address: they span the whole address space); 3 protocol-only rules.
//!
//! Packet mix: a third aimed at one of the first tenth of the rules (an
//! early match), a third at one of the last tenth (a late match), a third
//! at addresses no rule mentions (no match: the default policy).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use firewall_rules::{Chain, Classifier, PacketKey, Peer, RuleSet};

/// splitmix64: small, seedable, good enough for workload generation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// Ports services commonly use.
const PORTS: [u16; 16] = [
    22, 25, 53, 80, 110, 143, 443, 465, 587, 993, 3306, 5432, 6379, 8000, 8080, 9200,
];
/// Destination supernets rules point into (documentation and private space).
const V4_SUPERNETS: [u32; 6] = [
    0x0a00_0000, // 10.0.0.0/8
    0xac10_0000, // 172.16.0.0/12
    0xc0a8_0000, // 192.168.0.0/16
    0xc633_6400, // 198.51.100.0/24
    0xcb00_7100, // 203.0.113.0/24
    0x6440_0000, // 100.64.0.0/10
];
/// The vassal subnet sources come from.
const VASSALS: u32 = 0x0ac8_0000; // 10.200.0.0/16

fn v4_prefix(rng: &mut Rng, min: u32, max: u32) -> (u32, u32) {
    let len = rng.range(u64::from(min), u64::from(max)) as u32;
    let base = rng.pick(&V4_SUPERNETS) | (rng.next_u64() as u32 & 0x00ff_ffff);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (base & mask, len)
}

fn ports_text(rng: &mut Rng) -> String {
    match rng.range(0, 9) {
        0..=5 => rng.pick(&PORTS).to_string(),
        6..=7 => {
            let n = rng.range(2, 4);
            let list: Vec<String> = (0..n).map(|_| rng.pick(&PORTS).to_string()).collect();
            list.join(",")
        }
        _ => {
            let lo = rng.range(1024, 60000);
            format!("{lo}-{}", lo + rng.range(0, 2000))
        }
    }
}

fn project_name(i: u64) -> String {
    format!("project-{i}")
}

fn write_rule(rng: &mut Rng, t: &mut String, chain: &str) {
    let _ = writeln!(t, "[[{chain}]]");
    let action = if rng.range(0, 2) == 0 {
        "deny"
    } else {
        "allow"
    };
    let _ = writeln!(t, "action = \"{action}\"");
    let proto = if rng.range(0, 3) == 0 { "udp" } else { "tcp" };
    match rng.range(0, 99) {
        0..=44 => {
            let (net, len) = v4_prefix(rng, 16, 32);
            let _ = writeln!(t, "dst = \"{}/{len}\"", Ipv4Addr::from(net));
            let _ = writeln!(t, "proto = \"{proto}\"\ndst_port = \"{}\"", ports_text(rng));
        }
        45..=59 => {
            let len = rng.range(24, 32) as u32;
            let src = (VASSALS | (rng.next_u64() as u32 & 0xffff)) & (u32::MAX << (32 - len));
            let (net, dlen) = v4_prefix(rng, 16, 32);
            let _ = writeln!(t, "src = \"{}/{len}\"", Ipv4Addr::from(src));
            let _ = writeln!(t, "dst = \"{}/{dlen}\"", Ipv4Addr::from(net));
            let _ = writeln!(t, "proto = \"{proto}\"\ndst_port = \"{}\"", ports_text(rng));
        }
        60..=69 => {
            let n = rng.range(1, 3);
            let names: Vec<String> = (0..n)
                .map(|_| format!("\"{}\"", project_name(rng.range(0, 199))))
                .collect();
            let (net, len) = v4_prefix(rng, 16, 32);
            let _ = writeln!(t, "project = [{}]", names.join(", "));
            let _ = writeln!(t, "dst = \"{}/{len}\"", Ipv4Addr::from(net));
            let _ = writeln!(t, "dst_port = \"{}\"", ports_text(rng));
        }
        70..=79 => {
            let len = rng.range(32, 128) as u32;
            let addr = (0x2001_0db8u128 << 96) | u128::from(rng.next_u64()) << 32;
            let net = addr & (u128::MAX << (128 - len));
            let _ = writeln!(t, "dst = \"{}/{len}\"", Ipv6Addr::from(net));
            let _ = writeln!(t, "proto = \"{proto}\"\ndst_port = \"{}\"", ports_text(rng));
        }
        80..=87 => {
            let (net, len) = v4_prefix(rng, 8, 24);
            let _ = writeln!(t, "dst = \"{}/{len}\"", Ipv4Addr::from(net));
        }
        88..=92 => {
            let (net, len) = v4_prefix(rng, 16, 32);
            let _ = writeln!(
                t,
                "dst = \"{}/{len}\"\nproto = \"icmp\"",
                Ipv4Addr::from(net)
            );
        }
        93..=96 => {
            let _ = writeln!(t, "proto = \"tcp\"\ndst_port = \"{}\"", ports_text(rng));
        }
        _ => {
            let _ = writeln!(t, "proto = {}", rng.pick(&[47u8, 50, 132, 41]));
        }
    }
    if rng.range(0, 19) == 0 {
        let _ = writeln!(t, "log = true");
    }
}

/// A rule file with `out_rules` rules in the out chain (and a tenth as many
/// in the in chain), deterministic for a seed.
pub fn rules_toml(out_rules: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut t = String::from("[default]\nout = \"allow\"\nin = \"deny\"\nestablished = true\n");
    for _ in 0..out_rules {
        write_rule(&mut rng, &mut t, "out");
    }
    for _ in 0..out_rules / 10 {
        write_rule(&mut rng, &mut t, "in");
    }
    t
}

/// A random value of the set a rule field allows.
fn inside_v4(net: ipnet::Ipv4Net, rng: &mut Rng) -> u32 {
    let lo = u32::from(net.network());
    let hi = u32::from(net.broadcast());
    lo + (rng.next_u64() % (u64::from(hi - lo) + 1)) as u32
}

fn inside_v6(net: ipnet::Ipv6Net, rng: &mut Rng) -> u128 {
    let lo = u128::from(net.network());
    let span = u128::from(net.broadcast()) - lo;
    let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
    lo + if span == u128::MAX { r } else { r % (span + 1) }
}

/// A packet the rule at `index` of the out chain matches (an earlier rule
/// may match it first, as in real traffic).
fn aimed_at(rules: &RuleSet, index: usize, classifier: &Classifier, rng: &mut Rng) -> PacketKey {
    let rule = &rules.rules(Chain::Out)[index];
    let six = rule.is_ipv6() == Some(true);
    let addr = |net: Option<ipnet::IpNet>, rng: &mut Rng, default: IpAddr| match net {
        Some(ipnet::IpNet::V4(n)) => IpAddr::V4(Ipv4Addr::from(inside_v4(n, rng))),
        Some(ipnet::IpNet::V6(n)) => IpAddr::V6(Ipv6Addr::from(inside_v6(n, rng))),
        None => default,
    };
    let (src_default, dst_default) = if six {
        (
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                rng.range(2, 999) as u16,
            )),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(VASSALS | rng.range(2, 60000) as u32)),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.range(1, 254) as u8)),
        )
    };
    let src = addr(rule.src, rng, src_default);
    let dst = addr(rule.dst, rng, dst_default);
    let proto = match rule.protocols() {
        Some(p) => rng.pick(p),
        None => 6,
    };
    let port = |set: &Option<firewall_rules::PortSet>, rng: &mut Rng| match set {
        Some(s) => {
            let (lo, hi) = rng.pick(s.ranges());
            rng.range(u64::from(lo), u64::from(hi)) as u16
        }
        None => rng.range(1024, 65535) as u16,
    };
    let (src_port, dst_port) = if proto == 6 || proto == 17 {
        (port(&rule.src_port, rng), port(&rule.dst_port, rng))
    } else {
        (0, 0)
    };
    let project = match &rule.projects {
        Some(p) => classifier.project_id(&p[(rng.next_u64() % p.len() as u64) as usize]),
        None => classifier.project_id(&project_name(rng.range(0, 299))),
    };
    PacketKey {
        project,
        src,
        dst,
        proto,
        src_port,
        dst_port,
        peer: Peer::Outside,
    }
}

/// `count` packets: a third early matches, a third late, a third none.
pub fn packets(
    rules: &RuleSet,
    classifier: &Classifier,
    count: usize,
    seed: u64,
) -> Vec<PacketKey> {
    let mut rng = Rng::new(seed ^ 0x5eed);
    let n = rules.rule_count(Chain::Out);
    let tenth = (n / 10).max(1);
    (0..count)
        .map(|i| match (i % 3, n) {
            (0, 1..) => aimed_at(
                rules,
                rng.range(0, tenth as u64 - 1) as usize,
                classifier,
                &mut rng,
            ),
            (1, 1..) => aimed_at(
                rules,
                n - 1 - rng.range(0, tenth as u64 - 1) as usize,
                classifier,
                &mut rng,
            ),
            _ => PacketKey {
                // 192.0.2.0/24 and 100.127/16-ish space no generated rule targets
                // directly (only broad or port-only rules can match).
                project: classifier.project_id("project-none"),
                src: IpAddr::V4(Ipv4Addr::from(VASSALS | rng.range(2, 60000) as u32)),
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, rng.range(1, 254) as u8)),
                proto: rng.pick(&[6u8, 17]),
                src_port: rng.range(1024, 65535) as u16,
                dst_port: rng.range(10000, 20000) as u16,
                peer: Peer::Outside,
            },
        })
        .collect()
}
