//! What the datapath knows of the vassals on other hosts (docs/cluster.md):
//! the cluster prefix, every other host's block, the identity cache
//! (address -> project), and the cluster's infrastructure addresses that
//! vassals never reach. The cluster membership publishes a new
//! [`RemoteView`] on every change; readers load it without a lock.
//! Without `[cluster]` the view stays empty and nothing is remote.

use arc_swap::{ArcSwap, Guard};
use firewall_rules::{Classifier, Peer};
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// One snapshot of the other hosts.
#[derive(Debug, Clone, Default)]
pub struct RemoteView {
    /// The cluster's vassal ranges (IPv4 and, optionally, IPv6).
    pub prefixes: Vec<IpNet>,
    /// Other hosts' blocks.
    blocks: HashSet<IpNet>,
    /// The distinct prefix lengths of `blocks` (one per family in a
    /// cluster), so a lookup is a truncation and a hash probe per length.
    lens: Vec<u8>,
    /// Remote vassal address -> project name.
    pub identities: HashMap<IpAddr, Arc<str>>,
    /// etcd endpoints, every host's underlay address and the other
    /// hosts' gateways: closed to vassals whatever the rules say.
    infra: HashSet<IpAddr>,
}

impl RemoteView {
    /// A view of `prefixes`, the other hosts' `blocks` and the
    /// `identities` of their vassals.
    pub fn new(
        prefixes: Vec<IpNet>,
        blocks: impl IntoIterator<Item = IpNet>,
        identities: HashMap<IpAddr, Arc<str>>,
    ) -> RemoteView {
        let blocks: HashSet<IpNet> = blocks.into_iter().map(|b| b.trunc()).collect();
        let mut lens: Vec<u8> = blocks.iter().map(IpNet::prefix_len).collect();
        lens.sort_unstable();
        lens.dedup();
        RemoteView {
            prefixes,
            blocks,
            lens,
            identities,
            infra: HashSet::new(),
        }
    }

    /// The view with `infra` as the cluster's infrastructure addresses.
    pub fn with_infra(mut self, infra: impl IntoIterator<Item = IpAddr>) -> RemoteView {
        self.infra = infra.into_iter().collect();
        self
    }

    /// Whether `addr` is part of the cluster's infrastructure (an etcd
    /// endpoint, an underlay address, another host's gateway).
    pub fn is_infra(&self, addr: IpAddr) -> bool {
        !self.infra.is_empty() && self.infra.contains(&addr)
    }

    /// Whether `addr` is in the cluster's vassal range.
    pub fn in_prefix(&self, addr: IpAddr) -> bool {
        self.prefixes.iter().any(|p| p.contains(&addr))
    }

    /// Whether `addr` is in another host's block: a packet for it leaves
    /// through the host tun, one from it is accepted from the host tun.
    pub fn in_remote_block(&self, addr: IpAddr) -> bool {
        self.lens
            .iter()
            .any(|&len| IpNet::new(addr, len).is_ok_and(|net| self.blocks.contains(&net.trunc())))
    }

    /// The other end `addr` as the rules see it, for a vassal of project
    /// `own` (`None` for no vassal: the host side): a remote vassal from
    /// the cache, an unknown address of the prefix, or outside.
    pub fn peer(&self, classifier: &Classifier, own: Option<&str>, addr: IpAddr) -> Peer {
        match self.identities.get(&addr) {
            Some(project) => Peer::Vassal {
                project: classifier.project_id(project),
                same: own == Some(&**project),
            },
            None if self.in_prefix(addr) => Peer::Unknown,
            None => Peer::Outside,
        }
    }
}

/// The published view.
#[derive(Debug, Default)]
pub struct Remote {
    view: ArcSwap<RemoteView>,
}

impl Remote {
    /// The view now (one atomic load, no reference count taken: for one
    /// packet).
    pub fn load(&self) -> Guard<Arc<RemoteView>> {
        self.view.load()
    }

    /// The view now, to keep.
    pub fn view(&self) -> Arc<RemoteView> {
        self.view.load_full()
    }

    /// Replaces the view (the cluster watch, on every change of blocks or
    /// identities).
    pub fn publish(&self, view: RemoteView) {
        self.view.store(Arc::new(view));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firewall_rules::RuleSet;
    use std::path::Path;

    #[test]
    fn peers_come_from_the_cache_and_unknown_addresses_of_the_prefix_are_unknown() {
        let rules = RuleSet::parse(
            "[[in]]\naction = \"allow\"\nproject = \"web\"\n",
            Path::new("r"),
        )
        .unwrap()
        .compile();
        let remote = Remote::default();
        let mut view = RemoteView::new(
            vec!["10.44.0.0/16".parse().unwrap()],
            [
                "10.44.2.0/24".parse().unwrap(),
                "fd44:0:2::/48".parse().unwrap(),
            ],
            HashMap::new(),
        );
        view.identities
            .insert("10.44.2.5".parse().unwrap(), Arc::from("web"));
        remote.publish(view);
        let v = remote.view();
        let web = rules.project_id("web");
        assert_eq!(
            v.peer(&rules, Some("web"), "10.44.2.5".parse().unwrap()),
            Peer::Vassal {
                project: web,
                same: true
            }
        );
        assert_eq!(
            v.peer(&rules, Some("db"), "10.44.2.5".parse().unwrap()),
            Peer::Vassal {
                project: web,
                same: false
            }
        );
        assert_eq!(
            v.peer(&rules, Some("web"), "10.44.2.6".parse().unwrap()),
            Peer::Unknown
        );
        assert_eq!(
            v.peer(&rules, Some("web"), "192.0.2.1".parse().unwrap()),
            Peer::Outside
        );
        assert!(v.in_remote_block("10.44.2.200".parse().unwrap()));
        assert!(!v.in_remote_block("10.44.3.1".parse().unwrap()));
        assert!(v.in_remote_block("fd44:0:2::9".parse().unwrap()));
        assert!(!v.in_remote_block("fd44:0:3::9".parse().unwrap()));
    }
}
