//! The validated rule set: what a rule file means once it has been checked.
//! The model only: `RuleSet::parse`/`load` live in `parse.rs` and
//! `RuleSet::compile` in `classifier.rs`, so that the modules above the
//! model import it and it imports none of them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

impl Action {
    /// The word used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Which ordered rule list a packet is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chain {
    /// Packets leaving a vassal (`[[out]]`).
    Out,
    /// Packets arriving to a vassal (`[[in]]`).
    In,
}

impl Chain {
    /// The table name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::Out => "out",
            Chain::In => "in",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Chain::Out => 0,
            Chain::In => 1,
        }
    }
}

/// The `[default]` table: policies when no rule matches, and whether
/// replies to an allowed flow bypass the other chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// Policy of the out chain; `allow` when absent.
    pub out: Action,
    /// Policy of the in chain; `deny` when absent.
    pub inbound: Action,
    /// Replies to a flow an allowed packet opened pass; `true` when absent.
    pub established: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            out: Action::Allow,
            inbound: Action::Deny,
            established: true,
        }
    }
}

impl Defaults {
    /// The policy of `chain`.
    pub fn policy(&self, chain: Chain) -> Action {
        match chain {
            Chain::Out => self.out,
            Chain::In => self.inbound,
        }
    }
}

/// IP protocol numbers the rule language names.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;

    /// The rule-file spelling of a protocol number.
    pub fn name(number: u8) -> String {
        match number {
            ICMP => "icmp".into(),
            TCP => "tcp".into(),
            UDP => "udp".into(),
            ICMPV6 => "icmpv6".into(),
            n => n.to_string(),
        }
    }
}

/// A set of ports: sorted, non-overlapping, non-adjacent inclusive ranges
/// of ports 1-65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    /// Normalizes arbitrary ranges (each `low <= high`) into a set.
    pub fn from_ranges(mut ranges: Vec<(u16, u16)>) -> PortSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        PortSet { ranges: merged }
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Who the other end of a packet must be, as a rule's `peer` names it.
/// "The other end" is the destination on the out chain and the source on
/// the in chain; whether it is a vassal, and of which project, the router
/// knows from its registry (this host) or its identity cache (other hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A vassal of the same project as the vassal the rule is checked for.
    Same,
    /// A vassal of another project.
    Other,
    /// Any vassal whose project is known.
    Vassal,
    /// An address of the vassal range (this host's subnet or the cluster
    /// prefix) that no known vassal holds: a remote vassal not in the
    /// cache yet, or an address nobody uses.
    Unknown,
    /// Not a vassal address at all: the internet, the host.
    Outside,
}

impl PeerKind {
    /// The word used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Same => "same",
            PeerKind::Other => "other",
            PeerKind::Vassal => "vassal",
            PeerKind::Unknown => "unknown",
            PeerKind::Outside => "outside",
        }
    }

    /// Every kind, in the order the docs list them.
    pub const ALL: [PeerKind; 5] = [
        PeerKind::Same,
        PeerKind::Other,
        PeerKind::Vassal,
        PeerKind::Unknown,
        PeerKind::Outside,
    ];

    /// Whether the other end of this kind is a vassal with a project (so a
    /// `peer_project` list can also hold).
    pub fn has_project(self) -> bool {
        matches!(self, PeerKind::Same | PeerKind::Other | PeerKind::Vassal)
    }
}

/// One validated rule. Absent fields match everything; present fields
/// must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What a matching packet gets.
    pub action: Action,
    /// Source network.
    pub src: Option<IpNet>,
    /// Destination network.
    pub dst: Option<IpNet>,
    /// IP protocol number. `None` with ports means tcp or udp.
    pub proto: Option<u8>,
    /// Source ports (tcp/udp only).
    pub src_port: Option<PortSet>,
    /// Destination ports (tcp/udp only).
    pub dst_port: Option<PortSet>,
    /// Projects the rule applies to, sorted and deduplicated; `None` = all.
    pub projects: Option<Vec<String>>,
    /// Who the other end must be; `None` = anyone.
    pub peer: Option<PeerKind>,
    /// The other end must be a vassal of one of these projects, sorted and
    /// deduplicated; `None` = any (or no) project.
    pub peer_projects: Option<Vec<String>>,
    /// Whether a match is reported as an event.
    pub log: bool,
    /// 1-based line of the rule's table header in the rule file.
    pub line: usize,
}

impl Rule {
    /// The protocols this rule can match: `None` = any protocol.
    pub fn protocols(&self) -> Option<&'static [u8]> {
        /// Every protocol number, so one can be lent as a slice.
        static NUMBERS: [u8; 256] = {
            let mut all = [0u8; 256];
            let mut i = 0;
            while i < 256 {
                all[i] = i as u8;
                i += 1;
            }
            all
        };
        static TCP_UDP: [u8; 2] = [proto::TCP, proto::UDP];
        match self.proto {
            Some(p) => Some(&NUMBERS[usize::from(p)..=usize::from(p)]),
            None if self.src_port.is_some() || self.dst_port.is_some() => Some(&TCP_UDP),
            None => None,
        }
    }

    /// The IP family the rule is restricted to by its addresses:
    /// `Some(false)` IPv4, `Some(true)` IPv6, `None` both.
    pub fn is_ipv6(&self) -> Option<bool> {
        self.src.or(self.dst).map(|net| matches!(net, IpNet::V6(_)))
    }
}

/// A validated rule file: ordered rules per chain and the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub(crate) origin: PathBuf,
    pub(crate) defaults: Defaults,
    pub(crate) chains: [Vec<Rule>; 2],
}

impl RuleSet {
    /// The file this rule set came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Policies and the established flag.
    pub fn defaults(&self) -> Defaults {
        self.defaults
    }

    /// The ordered rules of `chain`; a verdict's `rule` indexes this.
    pub fn rules(&self, chain: Chain) -> &[Rule] {
        &self.chains[chain.index()]
    }

    /// Number of rules in `chain`.
    pub fn rule_count(&self, chain: Chain) -> usize {
        self.chains[chain.index()].len()
    }

    /// Every project name some rule mentions, sorted.
    pub fn project_names(&self) -> Vec<&str> {
        let names: BTreeSet<&str> = self
            .chains
            .iter()
            .flatten()
            .flat_map(|r| r.projects.iter().chain(r.peer_projects.iter()))
            .flatten()
            .map(String::as_str)
            .collect();
        names.into_iter().collect()
    }

    /// What `vassal-router check-rules` prints for a valid file.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let d = self.defaults;
        let _ = writeln!(s, "{}: ok", self.origin.display());
        for chain in [Chain::Out, Chain::In] {
            let rules = self.rules(chain);
            let allow = rules.iter().filter(|r| r.action == Action::Allow).count();
            let logged = rules.iter().filter(|r| r.log).count();
            let _ = writeln!(
                s,
                "  {:<3} {} rule{} ({} allow, {} deny, {} logged), default {}",
                chain.as_str(),
                rules.len(),
                if rules.len() == 1 { "" } else { "s" },
                allow,
                rules.len() - allow,
                logged,
                d.policy(chain).as_str()
            );
        }
        let _ = write!(
            s,
            "  established replies {}",
            if d.established {
                "pass the other chain"
            } else {
                "are checked like any packet"
            }
        );
        s
    }
}
