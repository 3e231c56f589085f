//! The rules in force: a compiled classifier swapped whole on reload
//! (`arc-swap`). Each reader keeps its own snapshot and re-takes it only
//! when the published generation moved (one plain load per batch, of a
//! word written only by reloads), so a reload takes effect between batches
//! and never drops a packet. Compiling is the caller's to keep off the
//! runtime's workers (the daemon runs [`Firewall::reload`] on a blocking
//! thread).

use arc_swap::ArcSwap;
use firewall_rules::{Chain, Classifier, RuleErrors, RuleSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The embedded default rules (see `default-rules.toml`).
pub const DEFAULT_RULES: &str = include_str!("default-rules.toml");

/// The rule file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The file is unreadable or invalid; one line per problem.
    #[error("rule file refused:\n{0}")]
    Invalid(RuleErrors),
}

/// A compiled rule set and where it came from.
pub struct ActiveRules {
    /// The classifier.
    pub classifier: Classifier,
    /// Bumped on every successful reload: project ids must be re-resolved.
    pub generation: u64,
    /// Rules in the out chain.
    pub out_rules: usize,
    /// Rules in the in chain.
    pub in_rules: usize,
    /// Line of each rule in the rule file, per chain (out, in), for logs.
    lines: [Vec<usize>; 2],
}

impl ActiveRules {
    /// The rule-file line of rule `index` of `chain` (a verdict's `rule`).
    pub fn line(&self, chain: Chain, index: Option<u32>) -> Option<usize> {
        let lines = match chain {
            Chain::Out => &self.lines[0],
            Chain::In => &self.lines[1],
        };
        lines.get(index? as usize).copied()
    }
}

/// Loads the rule file at `path`, or the embedded defaults when `None`.
pub fn load_rule_set(path: Option<&Path>) -> Result<RuleSet, FirewallError> {
    match path {
        Some(p) => RuleSet::load(p).map_err(FirewallError::Invalid),
        None => RuleSet::parse(DEFAULT_RULES, Path::new("<embedded default rules>"))
            .map_err(FirewallError::Invalid),
    }
}

/// The swappable rules of a running router.
pub struct Firewall {
    path: Option<PathBuf>,
    current: ArcSwap<ActiveRules>,
    /// The generation of `current`, published after it.
    generation: AtomicU64,
    /// Serialises reloads, so generations are published in order.
    reloading: Mutex<()>,
}

impl Firewall {
    /// Loads the initial rules.
    pub fn load(path: Option<PathBuf>) -> Result<Firewall, FirewallError> {
        let set = load_rule_set(path.as_deref())?;
        Ok(Firewall::with_rules(&set, path))
    }

    /// Starts from an already parsed rule set; `path` is what reloads read.
    pub fn with_rules(set: &RuleSet, path: Option<PathBuf>) -> Firewall {
        Firewall {
            current: ArcSwap::from_pointee(active(set, 0)),
            path,
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<ActiveRules> {
        self.current.load_full()
    }

    /// The generation of the rules in force: a snapshot of an older one
    /// is stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-reads the rule file; on error the old rules stay.
    pub fn reload(&self) -> Result<Arc<ActiveRules>, FirewallError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let set = load_rule_set(self.path.as_deref())?;
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let new = Arc::new(active(&set, generation));
        self.current.store(Arc::clone(&new));
        self.generation.store(generation, Ordering::Release);
        Ok(new)
    }
}

fn active(set: &RuleSet, generation: u64) -> ActiveRules {
    ActiveRules {
        classifier: set.compile(),
        generation,
        out_rules: set.rule_count(Chain::Out),
        in_rules: set.rule_count(Chain::In),
        lines: [Chain::Out, Chain::In].map(|c| set.rules(c).iter().map(|r| r.line).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall_rules::{Action, PacketKey};

    #[test]
    fn default_rules_parse_and_mean_what_they_say() {
        let set = load_rule_set(None).unwrap();
        let c = set.compile();
        let d = c.defaults();
        assert_eq!(
            (d.out, d.inbound, d.established),
            (Action::Allow, Action::Deny, true)
        );
        let p = c.project_id("alice");
        let key = |dst: &str| PacketKey {
            project: p,
            src: "10.200.0.2".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            src_port: 40000,
            dst_port: 443,
            peer: firewall_rules::Peer::Outside,
        };
        for denied in [
            "10.200.0.1",
            "10.200.0.3",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.1",
            "100.64.0.1",
            "172.20.0.1",
        ] {
            assert_eq!(
                c.classify(Chain::Out, &key(denied)).action,
                Action::Deny,
                "{denied}"
            );
        }
        assert_eq!(
            c.classify(Chain::Out, &key("203.0.113.9")).action,
            Action::Allow
        );
        assert_eq!(
            c.classify(Chain::In, &key("10.200.0.2")).action,
            Action::Deny
        );
        let v6 = PacketKey {
            src: "fd00:200::2".parse().unwrap(),
            dst: "fd00:200::1".parse().unwrap(),
            ..key("203.0.113.9")
        };
        assert_eq!(c.classify(Chain::Out, &v6).action, Action::Deny);
        let v6_public = PacketKey {
            dst: "2001:db8::1".parse().unwrap(),
            ..v6
        };
        assert_eq!(c.classify(Chain::Out, &v6_public).action, Action::Allow);
    }

    #[test]
    fn failed_reload_keeps_the_old_rules() {
        let dir = std::env::temp_dir().join(format!("vr-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.toml");
        std::fs::write(&file, "[default]\nout = \"deny\"\n").unwrap();
        let fw = Firewall::load(Some(file.clone())).unwrap();
        assert_eq!(fw.current().classifier.defaults().out, Action::Deny);
        std::fs::write(&file, "[default]\nout = \"maybe\"\n").unwrap();
        assert!(fw.reload().is_err());
        assert_eq!(fw.current().generation, 0);
        std::fs::write(
            &file,
            "[default]\nout = \"allow\"\n[[out]]\naction = \"deny\"\n",
        )
        .unwrap();
        let new = fw.reload().unwrap();
        assert_eq!((new.generation, new.out_rules), (1, 1));
        assert_eq!(new.line(Chain::Out, Some(0)), Some(3));
        assert_eq!(new.line(Chain::Out, None), None);
        assert_eq!(fw.current().classifier.defaults().out, Action::Allow);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
