//! The compiled classifier the router consults for every packet: per chain
//! one decision tree for IPv4 and one for IPv6 (see [`crate::tree`]).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::peer;
use crate::project::{ProjectId, ProjectTable};
use crate::rules::{Action, Chain, Defaults, Rule, RuleSet};
use crate::tree::{self, BoxRule, FieldValue, Region, Tree, TreeStats, FIELDS};
use crate::{PacketKey, Verdict};

/// Immutable compiled rule set; share it as `Arc<Classifier>` and swap the
/// `Arc` on reload.
#[derive(Debug, Clone)]
pub struct Classifier {
    projects: ProjectTable,
    defaults: Defaults,
    /// Per chain, per rule: action and log flag.
    outcomes: [Vec<(Action, bool)>; 2],
    v4: [Tree<u32>; 2],
    v6: [Tree<u128>; 2],
}

/// Size of a compiled classifier, summed over its trees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassifierStats {
    /// Tree nodes.
    pub nodes: usize,
    /// Rule references held in leaves.
    pub leaf_entries: usize,
    /// Deepest root-to-leaf path of any tree.
    pub depth: usize,
    /// Largest leaf of any tree.
    pub max_leaf: usize,
    /// Heap bytes held by the trees.
    pub bytes: usize,
}

impl RuleSet {
    /// Builds the fast classifier.
    pub fn compile(&self) -> Classifier {
        Classifier::new(self)
    }
}

impl Classifier {
    pub(crate) fn new(rules: &RuleSet) -> Classifier {
        let projects = ProjectTable::new(rules);
        let outcomes = [Chain::Out, Chain::In].map(|chain| {
            rules
                .rules(chain)
                .iter()
                .map(|r| (r.action, r.log))
                .collect()
        });
        let v4 = [Chain::Out, Chain::In].map(|chain| {
            let full = full_region(u32::MAX, u32::from);
            let boxes: Vec<BoxRule<u32>> = indexed(rules.rules(chain))
                .filter(|(_, r)| r.is_ipv6() != Some(true))
                .map(|(i, r)| box_rule(r, i, &projects, &full, v4_range, u32::from))
                .collect();
            Tree::build(&boxes, full)
        });
        let v6 = [Chain::Out, Chain::In].map(|chain| {
            let full = full_region(u128::MAX, u128::from);
            let boxes: Vec<BoxRule<u128>> = indexed(rules.rules(chain))
                .filter(|(_, r)| r.is_ipv6() != Some(false))
                .map(|(i, r)| box_rule(r, i, &projects, &full, v6_range, u128::from))
                .collect();
            Tree::build(&boxes, full)
        });
        Classifier {
            projects,
            defaults: rules.defaults(),
            outcomes,
            v4,
            v6,
        }
    }

    /// The id packets of project `name` carry; names no rule mentions get
    /// [`ProjectId::UNKNOWN`].
    pub fn project_id(&self, name: &str) -> ProjectId {
        self.projects.id(name)
    }

    /// First-match verdict of `chain` for a packet. Never allocates.
    pub fn classify(&self, chain: Chain, key: &PacketKey) -> Verdict {
        let c = chain.index();
        let found = match (key.src, key.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => self.v4[c].lookup(&[
                u32::from(src),
                u32::from(dst),
                u32::from(key.proto),
                u32::from(key.src_port),
                u32::from(key.dst_port),
                key.project.raw(),
                key.peer.code(),
            ]),
            (IpAddr::V6(src), IpAddr::V6(dst)) => self.v6[c].lookup(&[
                u128::from(src),
                u128::from(dst),
                u128::from(key.proto),
                u128::from(key.src_port),
                u128::from(key.dst_port),
                u128::from(key.project.raw()),
                u128::from(key.peer.code()),
            ]),
            // Not a real packet: no rule is written for mixed families.
            _ => None,
        };
        match found.and_then(|i| self.outcomes[c].get(i as usize).map(|o| (i, o))) {
            Some((index, &(action, log))) => Verdict {
                action,
                rule: Some(index),
                log,
            },
            None => Verdict {
                action: self.defaults.policy(chain),
                rule: None,
                log: false,
            },
        }
    }

    /// Policies and the established flag.
    pub fn defaults(&self) -> Defaults {
        self.defaults
    }

    /// Size of the compiled trees (for the benchmark and capacity planning).
    pub fn stats(&self) -> ClassifierStats {
        let all: Vec<TreeStats> = self
            .v4
            .iter()
            .map(Tree::stats)
            .chain(self.v6.iter().map(Tree::stats))
            .collect();
        ClassifierStats {
            nodes: all.iter().map(|s| s.nodes).sum(),
            leaf_entries: all.iter().map(|s| s.leaf_entries).sum(),
            depth: all.iter().map(|s| s.depth).max().unwrap_or(0),
            max_leaf: all.iter().map(|s| s.max_leaf).max().unwrap_or(0),
            bytes: all.iter().map(|s| s.bytes).sum(),
        }
    }
}

fn indexed(rules: &[Rule]) -> impl Iterator<Item = (u32, &Rule)> {
    (0u32..).zip(rules)
}

fn full_region<K: FieldValue>(addr_max: K, widen: fn(u32) -> K) -> Region<K> {
    let mut region = [(widen(0), widen(0)); FIELDS];
    region[tree::SRC].1 = addr_max;
    region[tree::DST].1 = addr_max;
    region[tree::PROTO].1 = widen(255);
    region[tree::SRC_PORT].1 = widen(65535);
    region[tree::DST_PORT].1 = widen(65535);
    region[tree::PROJECT].1 = widen(u32::MAX);
    region[tree::PEER].1 = widen(u32::MAX);
    region
}

fn v4_range(net: &IpNet) -> Option<(u32, u32)> {
    match net {
        IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.broadcast()))),
        IpNet::V6(_) => None,
    }
}

fn v6_range(net: &IpNet) -> Option<(u128, u128)> {
    match net {
        IpNet::V6(n) => Some((u128::from(n.network()), u128::from(n.broadcast()))),
        IpNet::V4(_) => None,
    }
}

/// A rule as one box per field: absent fields span the whole field.
fn box_rule<K: FieldValue>(
    rule: &Rule,
    index: u32,
    projects: &ProjectTable,
    full: &Region<K>,
    addr: fn(&IpNet) -> Option<(K, K)>,
    widen: fn(u32) -> K,
) -> BoxRule<K> {
    let mut ranges: [Vec<(K, K)>; FIELDS] = full.map(|r| vec![r]);
    // The caller filtered the rule to this tree's family, so `addr` succeeds.
    if let Some(r) = rule.src.as_ref().and_then(addr) {
        ranges[tree::SRC] = vec![r];
    }
    if let Some(r) = rule.dst.as_ref().and_then(addr) {
        ranges[tree::DST] = vec![r];
    }
    if let Some(protocols) = rule.protocols() {
        let mut p: Vec<u8> = protocols.to_vec();
        p.sort_unstable();
        ranges[tree::PROTO] = p
            .into_iter()
            .map(|p| (widen(u32::from(p)), widen(u32::from(p))))
            .collect();
    }
    for (field, ports) in [
        (tree::SRC_PORT, &rule.src_port),
        (tree::DST_PORT, &rule.dst_port),
    ] {
        if let Some(ports) = ports {
            ranges[field] = ports
                .ranges()
                .iter()
                .map(|&(lo, hi)| (widen(u32::from(lo)), widen(u32::from(hi))))
                .collect();
        }
    }
    if let Some(names) = &rule.projects {
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for id in projects.ids_of(names) {
            let id = id.raw();
            match merged.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(id) => last.1 = id,
                _ => merged.push((id, id)),
            }
        }
        ranges[tree::PROJECT] = merged
            .into_iter()
            .map(|(lo, hi)| (widen(lo), widen(hi)))
            .collect();
    }
    if rule.peer.is_some() || rule.peer_projects.is_some() {
        let ids = rule.peer_projects.as_deref().map(|n| projects.ids_of(n));
        ranges[tree::PEER] = peer::ranges(rule.peer, ids.as_deref())
            .into_iter()
            .map(|(lo, hi)| (widen(lo), widen(hi)))
            .collect();
    }
    BoxRule { ranges, index }
}
