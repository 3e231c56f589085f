//! The compiled classifier must give exactly the naive first-match verdict
//! on random rule sets (nested prefixes, wildcards, port lists, projects)
//! and random packets biased toward the rules' boundaries.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use firewall_rules::naive::Naive;
use firewall_rules::{Chain, PacketKey, Peer, PeerKind, ProjectId, RuleSet};
use proptest::prelude::*;

const PROJECTS: [&str; 4] = ["alice", "bob", "carol", "dave"];

#[derive(Debug, Clone)]
struct Spec {
    allow: bool,
    /// None = no addresses; Some(false) IPv4, Some(true) IPv6.
    v6: Option<bool>,
    src: Option<(u8, u8)>,
    dst: Option<(u8, u8)>,
    proto: u8,
    src_port: Option<Vec<(u16, u16)>>,
    dst_port: Option<Vec<(u16, u16)>>,
    projects: Option<Vec<u8>>,
    /// Index into `PeerKind::ALL`.
    peer: Option<u8>,
    peer_projects: Option<Vec<u8>>,
    log: bool,
}

/// A few base addresses that nest and neighbour each other, so prefixes of
/// random lengths produce nested and adjacent networks.
const V4_BASES: [u32; 5] = [
    0x0a00_0000,
    0x0a01_0000,
    0x0a01_0280,
    0xc000_0200,
    0xc000_02ff,
];

fn v4_net(base: u8, len: u8) -> (u32, u32) {
    let addr = V4_BASES[usize::from(base) % V4_BASES.len()];
    let len = u32::from(len % 33);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (addr & mask, (addr & mask) | !mask)
}

fn v6_net(base: u8, len: u8) -> (u128, u128) {
    let v4 = v4_net(base, len % 33);
    let addr = (0x2001_0db8u128 << 96) | (u128::from(v4.0) << 32);
    let len = u32::from(len % 129);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (addr & mask, (addr & mask) | !mask)
}

fn ports() -> impl Strategy<Value = Option<Vec<(u16, u16)>>> {
    let boundary = prop::sample::select(vec![1u16, 2, 22, 25, 80, 443, 1000, 2000, 65534, 65535]);
    let range = (boundary.clone(), boundary).prop_map(|(a, b)| (a.min(b), a.max(b)));
    prop::option::weighted(0.4, prop::collection::vec(range, 1..4))
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        prop::sample::select(vec![None, Some(false), Some(true)]),
        prop::option::of((any::<u8>(), any::<u8>())),
        prop::option::of((any::<u8>(), any::<u8>())),
        prop::sample::select(vec![0u8, 1, 2, 3, 4, 5]),
        ports(),
        ports(),
        prop::option::weighted(0.3, prop::collection::vec(0u8..4, 1..3)),
        (
            prop::option::weighted(0.3, 0u8..5),
            prop::option::weighted(0.3, prop::collection::vec(0u8..4, 1..3)),
        ),
        any::<bool>(),
    )
        .prop_map(
            |(allow, v6, src, dst, proto, sp, dp, projects, (peer, peer_projects), log)| {
                // The parser refuses peer_project beside a peer without project.
                let peer_projects = match peer {
                    Some(k) if !PeerKind::ALL[usize::from(k)].has_project() => None,
                    _ => peer_projects,
                };
                let (src, dst) = if v6.is_some() && src.is_none() && dst.is_none() {
                    (Some((0, 8)), None)
                } else if v6.is_none() {
                    (None, None)
                } else {
                    (src, dst)
                };
                // 0 any, 1 tcp, 2 udp, 3 icmp of the family, 4 protocol 47, 5 any
                let tcp_udp = matches!(proto, 0 | 1 | 2 | 5);
                Spec {
                    allow,
                    v6,
                    src,
                    dst,
                    proto,
                    src_port: if tcp_udp { sp } else { None },
                    dst_port: if tcp_udp { dp } else { None },
                    projects,
                    peer,
                    peer_projects,
                    log,
                }
            },
        )
}

fn net_text(v6: bool, (base, len): (u8, u8)) -> String {
    if v6 {
        let (lo, _) = v6_net(base, len);
        format!("{}/{}", Ipv6Addr::from(lo), len % 129)
    } else {
        let (lo, _) = v4_net(base, len);
        format!("{}/{}", Ipv4Addr::from(lo), len % 33)
    }
}

fn ports_text(p: &[(u16, u16)]) -> String {
    p.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn toml_text(out: &[Spec], inbound: &[Spec]) -> String {
    let mut t = String::from("[default]\nout = \"allow\"\nin = \"deny\"\n");
    for (chain, specs) in [("out", out), ("in", inbound)] {
        for s in specs {
            let _ = writeln!(t, "[[{chain}]]");
            let _ = writeln!(t, "action = \"{}\"", if s.allow { "allow" } else { "deny" });
            let v6 = s.v6.unwrap_or(false);
            if let Some(n) = s.src {
                let _ = writeln!(t, "src = \"{}\"", net_text(v6, n));
            }
            if let Some(n) = s.dst {
                let _ = writeln!(t, "dst = \"{}\"", net_text(v6, n));
            }
            let proto = match (s.proto, s.v6) {
                (1, _) => Some("\"tcp\"".to_owned()),
                (2, _) => Some("17".to_owned()),
                (3, Some(true)) => Some("\"icmpv6\"".to_owned()),
                (3, _) => Some("\"icmp\"".to_owned()),
                (4, _) => Some("\"47\"".to_owned()),
                _ => None,
            };
            if let Some(p) = proto {
                let _ = writeln!(t, "proto = {p}");
            }
            if let Some(p) = &s.src_port {
                let _ = writeln!(t, "src_port = \"{}\"", ports_text(p));
            }
            if let Some(p) = &s.dst_port {
                let _ = writeln!(t, "dst_port = \"{}\"", ports_text(p));
            }
            if let Some(p) = &s.projects {
                let names: Vec<String> = p
                    .iter()
                    .map(|&i| format!("\"{}\"", PROJECTS[usize::from(i)]))
                    .collect();
                let _ = writeln!(t, "project = [{}]", names.join(", "));
            }
            if let Some(k) = s.peer {
                let _ = writeln!(t, "peer = \"{}\"", PeerKind::ALL[usize::from(k)].as_str());
            }
            if let Some(p) = &s.peer_projects {
                let names: Vec<String> = p
                    .iter()
                    .map(|&i| format!("\"{}\"", PROJECTS[usize::from(i)]))
                    .collect();
                let _ = writeln!(t, "peer_project = [{}]", names.join(", "));
            }
            if s.log {
                let _ = writeln!(t, "log = true");
            }
        }
    }
    t
}

/// splitmix64: deterministic packet choices from the proptest seed.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Addresses at and around every rule network's edges, plus random ones.
fn boundary_addrs(specs: &[Spec], v6: bool) -> Vec<u128> {
    let mut out = vec![0, 1, u128::MAX];
    for s in specs {
        for n in [s.src, s.dst].into_iter().flatten() {
            let (lo, hi) = if v6 {
                v6_net(n.0, n.1)
            } else {
                let (lo, hi) = v4_net(n.0, n.1);
                (u128::from(lo), u128::from(hi))
            };
            out.extend([
                lo,
                hi,
                lo.wrapping_sub(1),
                hi.wrapping_add(1),
                lo + (hi - lo) / 2,
            ]);
        }
    }
    out
}

fn packets(specs: &[Spec], seed: u64, count: usize, names: &[ProjectId]) -> Vec<PacketKey> {
    let mut mix = Mix(seed);
    let v4 = boundary_addrs(specs, false);
    let v6 = boundary_addrs(specs, true);
    let mut ports = vec![
        0u16, 1, 2, 21, 22, 23, 25, 79, 80, 81, 443, 999, 1000, 1500, 2000, 2001, 65534, 65535,
    ];
    for s in specs {
        for p in [&s.src_port, &s.dst_port].into_iter().flatten() {
            for &(a, b) in p {
                ports.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
            }
        }
    }
    (0..count)
        .map(|_| {
            let six = mix.next() & 1 == 0;
            let addr = |mix: &mut Mix| -> IpAddr {
                let a = if mix.next() & 7 == 0 {
                    u128::from(mix.next()) << 64 | u128::from(mix.next())
                } else if six {
                    mix.pick(&v6)
                } else {
                    mix.pick(&v4)
                };
                if six {
                    IpAddr::V6(Ipv6Addr::from(a))
                } else {
                    IpAddr::V4(Ipv4Addr::from(a as u32))
                }
            };
            let src = addr(&mut mix);
            let dst = addr(&mut mix);
            let proto = mix.pick(&[1u8, 6, 17, 58, 47, 0, 6, 17]);
            let (src_port, dst_port) = if proto == 6 || proto == 17 {
                (mix.pick(&ports), mix.pick(&ports))
            } else {
                (0, 0)
            };
            let project = mix.pick(names);
            let peer = match mix.next() % 4 {
                0 => Peer::Outside,
                1 => Peer::Unknown,
                _ => {
                    // Same project as the vassal (by name, so "zed" and an
                    // unnamed other both carry the unknown id), or another.
                    let other = mix.pick(names);
                    let same = mix.next() & 1 == 0;
                    Peer::Vassal {
                        project: if same { project } else { other },
                        same: same || (other == project && mix.next() & 1 == 0),
                    }
                }
            };
            PacketKey {
                project,
                src,
                dst,
                proto,
                src_port,
                dst_port,
                peer,
            }
        })
        .collect()
}

fn check(out: &[Spec], inbound: &[Spec], seed: u64, count: usize) -> Result<(), TestCaseError> {
    let text = toml_text(out, inbound);
    let rules = RuleSet::parse(&text, Path::new("gen.toml"))
        .map_err(|e| TestCaseError::fail(format!("generated file refused:\n{e}\n{text}")))?;
    let compiled = rules.compile();
    let naive = Naive::new(&rules);
    let mut names: Vec<ProjectId> = PROJECTS.iter().map(|n| compiled.project_id(n)).collect();
    names.push(compiled.project_id("zed"));
    for n in PROJECTS {
        prop_assert_eq!(compiled.project_id(n), naive.project_id(n));
    }
    let all: Vec<Spec> = out.iter().chain(inbound).cloned().collect();
    for key in packets(&all, seed, count, &names) {
        for chain in [Chain::Out, Chain::In] {
            let want = naive.classify(chain, &key);
            let got = compiled.classify(chain, &key);
            prop_assert_eq!(got, want, "{:?} {:?}\n{}", chain, key, text);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compiled_agrees_with_naive(
        out in prop::collection::vec(spec(), 0..80),
        inbound in prop::collection::vec(spec(), 0..40),
        seed in any::<u64>(),
    ) {
        check(&out, &inbound, seed, 400)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn compiled_agrees_with_naive_on_large_sets(
        out in prop::collection::vec(spec(), 500..1500),
        seed in any::<u64>(),
    ) {
        check(&out, &[], seed, 3000)?;
    }
}
