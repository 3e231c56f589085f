//! The compiled classifier the router consults for every packet.

use crate::naive::Naive;
use crate::project::ProjectId;
use crate::rules::{Chain, Defaults, RuleSet};
use crate::{PacketKey, Verdict};

/// Immutable compiled rule set; share it as `Arc<Classifier>` and swap the
/// `Arc` on reload.
#[derive(Debug, Clone)]
pub struct Classifier {
    inner: Naive,
    defaults: Defaults,
}

impl Classifier {
    pub(crate) fn new(rules: &RuleSet) -> Classifier {
        Classifier {
            inner: Naive::new(rules),
            defaults: rules.defaults(),
        }
    }

    /// The id packets of project `name` carry; names no rule mentions get
    /// [`ProjectId::UNKNOWN`].
    pub fn project_id(&self, name: &str) -> ProjectId {
        self.inner.project_id(name)
    }

    /// First-match verdict of `chain` for a packet. Never allocates.
    pub fn classify(&self, chain: Chain, key: &PacketKey) -> Verdict {
        self.inner.classify(chain, key)
    }

    /// Policies and the established flag.
    pub fn defaults(&self) -> Defaults {
        self.defaults
    }
}
