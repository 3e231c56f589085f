//! The other end of a packet as the classifier sees it, and its encoding as
//! one integer field of the decision tree, so `peer` and `peer_project`
//! compile into ranges like every other field.
//!
//! Encoding (a `u32`): 0 = outside, 1 = unknown, `2 + id` = a vassal of
//! project `id` (id 0 = a project no rule names); the top bit is set when
//! that vassal is of the same project as the vassal the rule is checked
//! for. `peer = "same"` is then the upper half of the space and
//! `peer_project = ["a"]` the two single values `2 + id(a)` with and
//! without the top bit.

use crate::project::ProjectId;
use crate::rules::PeerKind;

/// The other end of a packet: the destination on the out chain, the source
/// on the in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Not a vassal address: the internet, the host.
    Outside,
    /// An address of the vassal range (this host's subnet, the cluster
    /// prefix) that no known vassal holds.
    Unknown,
    /// A vassal whose project is known.
    Vassal {
        /// Its project's id in the classifier the packet is checked against.
        project: ProjectId,
        /// Whether it is of the same project as the vassal the rule is
        /// checked for (compared by name: two projects no rule names share
        /// [`ProjectId::UNKNOWN`] yet are different projects).
        same: bool,
    },
}

/// The top bit: "same project".
const SAME: u32 = 1 << 31;
/// First code of a vassal.
const VASSAL: u32 = 2;

impl Peer {
    /// The tree's field value of this peer.
    pub(crate) fn code(self) -> u32 {
        match self {
            Peer::Outside => 0,
            Peer::Unknown => 1,
            Peer::Vassal { project, same } => {
                // Project ids are numbered from the rule set's names, far
                // below 2^31 - 2; saturate rather than wrap into "same".
                let code = project.raw().saturating_add(VASSAL).min(SAME - 1);
                if same {
                    code | SAME
                } else {
                    code
                }
            }
        }
    }

    /// Whether this peer is of kind `kind` (the specification the encoded
    /// ranges are tested against).
    pub fn is(self, kind: PeerKind) -> bool {
        match (kind, self) {
            (PeerKind::Outside, Peer::Outside) | (PeerKind::Unknown, Peer::Unknown) => true,
            (PeerKind::Vassal, Peer::Vassal { .. }) => true,
            (PeerKind::Same, Peer::Vassal { same, .. }) => same,
            (PeerKind::Other, Peer::Vassal { same, .. }) => !same,
            _ => false,
        }
    }

    /// Whether this peer is a vassal of one of `projects` (sorted ids).
    pub fn in_projects(self, projects: &[ProjectId]) -> bool {
        match self {
            Peer::Vassal { project, .. } => projects.binary_search(&project).is_ok(),
            _ => false,
        }
    }
}

/// The codes a rule's `peer` and `peer_project` admit, as sorted disjoint
/// inclusive ranges (never empty: a rule whose two keys contradict each
/// other is refused by the parser, and then matches nothing here).
pub(crate) fn ranges(kind: Option<PeerKind>, projects: Option<&[ProjectId]>) -> Vec<(u32, u32)> {
    let by_kind: Vec<(u32, u32)> = match kind {
        None => vec![(0, u32::MAX)],
        Some(PeerKind::Outside) => vec![(0, 0)],
        Some(PeerKind::Unknown) => vec![(1, 1)],
        Some(PeerKind::Vassal) => vec![(VASSAL, SAME - 1), (SAME | VASSAL, u32::MAX)],
        Some(PeerKind::Same) => vec![(SAME | VASSAL, u32::MAX)],
        Some(PeerKind::Other) => vec![(VASSAL, SAME - 1)],
    };
    let Some(projects) = projects else {
        return by_kind;
    };
    let mut codes: Vec<u32> = projects
        .iter()
        .flat_map(|&project| [false, true].map(|same| Peer::Vassal { project, same }.code()))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for code in codes {
        if !by_kind.iter().any(|&(lo, hi)| lo <= code && code <= hi) {
            continue;
        }
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(code) => last.1 = code,
            _ => merged.push((code, code)),
        }
    }
    if merged.is_empty() {
        // Matches no real peer code: 1 << 31 | 1 is never produced.
        merged.push((SAME | 1, SAME | 1));
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<Peer> {
        let mut all = vec![Peer::Outside, Peer::Unknown];
        for id in [0, 1, 2, 7] {
            for same in [false, true] {
                all.push(Peer::Vassal {
                    project: ProjectId::from_raw(id),
                    same,
                });
            }
        }
        all
    }

    #[test]
    fn encoded_ranges_agree_with_the_meaning() {
        let lists: [Option<Vec<ProjectId>>; 4] = [
            None,
            Some(vec![ProjectId::from_raw(1)]),
            Some(vec![ProjectId::from_raw(1), ProjectId::from_raw(2)]),
            Some(vec![ProjectId::from_raw(0), ProjectId::from_raw(7)]),
        ];
        for kind in PeerKind::ALL.map(Some).into_iter().chain([None]) {
            for list in &lists {
                let r = ranges(kind, list.as_deref());
                for peer in peers() {
                    let code = peer.code();
                    let encoded = r.iter().any(|&(lo, hi)| lo <= code && code <= hi);
                    let meant = kind.is_none_or(|k| peer.is(k))
                        && list.as_deref().is_none_or(|p| peer.in_projects(p));
                    assert_eq!(encoded, meant, "{kind:?} {list:?} {peer:?}");
                }
            }
        }
    }
}
