//! The reference classifier: a first-match scan over the rules exactly as
//! written. It is the specification the compiled [`crate::Classifier`] is
//! tested against, and the baseline of the benchmark.

use std::net::IpAddr;

use crate::project::{ProjectId, ProjectTable};
use crate::rules::{Chain, Defaults, Rule, RuleSet};
use crate::{PacketKey, Verdict};

/// First-match list scan.
#[derive(Debug, Clone)]
pub struct Naive {
    chains: [Vec<(Rule, Resolved)>; 2],
    projects: ProjectTable,
    defaults: Defaults,
}

impl Naive {
    /// Prepares the scan (project names resolved to ids).
    pub fn new(rules: &RuleSet) -> Naive {
        let projects = ProjectTable::new(rules);
        let resolve = |chain: Chain| {
            rules
                .rules(chain)
                .iter()
                .map(|r| {
                    let resolved = Resolved {
                        projects: r.projects.as_deref().map(|p| projects.ids_of(p)),
                        peer_projects: r.peer_projects.as_deref().map(|p| projects.ids_of(p)),
                    };
                    (r.clone(), resolved)
                })
                .collect()
        };
        Naive {
            chains: [resolve(Chain::Out), resolve(Chain::In)],
            defaults: rules.defaults(),
            projects,
        }
    }

    /// The id packets of project `name` carry.
    pub fn project_id(&self, name: &str) -> ProjectId {
        self.projects.id(name)
    }

    /// The first rule of `chain` that matches, or the chain's policy.
    pub fn classify(&self, chain: Chain, key: &PacketKey) -> Verdict {
        for (index, (rule, ids)) in self.chains[chain.index()].iter().enumerate() {
            if rule_matches(rule, ids.projects.as_deref(), key)
                && peer_matches(rule, ids.peer_projects.as_deref(), key)
            {
                return Verdict {
                    action: rule.action,
                    rule: u32::try_from(index).ok(),
                    log: rule.log,
                };
            }
        }
        Verdict {
            action: self.defaults.policy(chain),
            rule: None,
            log: false,
        }
    }
}

/// A rule's project names resolved to ids.
#[derive(Debug, Clone)]
struct Resolved {
    projects: Option<Vec<ProjectId>>,
    peer_projects: Option<Vec<ProjectId>>,
}

/// Whether a rule's `peer` and `peer_project` hold for the packet's other
/// end; `peer_projects` are the rule's `peer_project` ids.
pub fn peer_matches(rule: &Rule, peer_projects: Option<&[ProjectId]>, key: &PacketKey) -> bool {
    rule.peer.is_none_or(|kind| key.peer.is(kind))
        && peer_projects.is_none_or(|p| key.peer.in_projects(p))
}

/// Whether one rule matches a packet on every field but the peer (see
/// [`peer_matches`]); `projects` are the rule's project ids.
pub fn rule_matches(rule: &Rule, projects: Option<&[ProjectId]>, key: &PacketKey) -> bool {
    let same_family = matches!(
        (key.src, key.dst),
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
    );
    same_family
        && rule.src.is_none_or(|net| net.contains(&key.src))
        && rule.dst.is_none_or(|net| net.contains(&key.dst))
        && rule.protocols().is_none_or(|p| p.contains(&key.proto))
        && rule
            .src_port
            .as_ref()
            .is_none_or(|p| p.contains(key.src_port))
        && rule
            .dst_port
            .as_ref()
            .is_none_or(|p| p.contains(key.dst_port))
        && projects.is_none_or(|p| p.contains(&key.project))
}
