//! Project names interned to small integers, so packets carry a `u32`
//! instead of a string and the classifier can treat projects as ranges.

use std::collections::HashMap;

use crate::rules::RuleSet;

/// A project as the classifier knows it. Names no rule mentions all map
/// to [`ProjectId::UNKNOWN`], which matches only rules without `project`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectId(u32);

impl ProjectId {
    /// Every project no rule names.
    pub const UNKNOWN: ProjectId = ProjectId(0);

    /// The interned number (0 = unknown).
    pub fn raw(self) -> u32 {
        self.0
    }

    /// An id by number, for tests of the encoding.
    #[cfg(test)]
    pub(crate) fn from_raw(raw: u32) -> ProjectId {
        ProjectId(raw)
    }
}

/// Names to ids, numbered 1.. in sorted name order so that any two
/// classifiers built from the same rule set agree.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProjectTable {
    ids: HashMap<String, u32>,
}

impl ProjectTable {
    pub(crate) fn new(rules: &RuleSet) -> Self {
        let ids = rules
            .project_names()
            .into_iter()
            .zip(1u32..)
            .map(|(name, id)| (name.to_owned(), id))
            .collect();
        ProjectTable { ids }
    }

    pub(crate) fn id(&self, name: &str) -> ProjectId {
        self.ids
            .get(name)
            .map_or(ProjectId::UNKNOWN, |&id| ProjectId(id))
    }

    /// Ids of a rule's project list; the names come from the same rule set,
    /// so every one is present.
    pub(crate) fn ids_of(&self, names: &[String]) -> Vec<ProjectId> {
        let mut ids: Vec<ProjectId> = names.iter().map(|n| self.id(n)).collect();
        ids.sort_unstable();
        ids
    }
}
