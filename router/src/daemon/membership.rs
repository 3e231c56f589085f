//! The cluster core's membership (`crate::cluster`) seen as the datapath
//! half wants it ([`cluster_routes::Membership`]): an adapter, so that the
//! core knows nothing of routes and the datapath nothing of etcd.

use super::cluster_routes::{self, ClusterView, NodeView};
use crate::cluster::Membership;
use ipnet::IpNet;
use std::sync::Arc;
use tokio::sync::watch;

/// The core's membership behind the datapath's trait.
pub struct Core(pub Arc<Membership>);

impl cluster_routes::Membership for Core {
    fn view(&self) -> ClusterView {
        let m = &self.0;
        let blocks = &m.config.blocks;
        let mut prefixes = vec![IpNet::V4(blocks.prefix())];
        prefixes.extend(blocks.prefix6().map(IpNet::V6));
        let nodes = m
            .nodes()
            .iter()
            .map(|n| NodeView {
                node: n.node.clone(),
                block: n.block.net,
                block6: n.block.net6,
                underlay: n.underlay,
            })
            .collect();
        // Sorted: two snapshots of the same cache compare equal, so the
        // follower republishes only on a real change.
        let mut identities: Vec<_> = m
            .identities()
            .iter()
            .map(|(addr, id)| (*addr, id.project.clone(), id.node.clone()))
            .collect();
        identities.sort();
        ClusterView {
            node: m.config.node.clone(),
            prefixes,
            nodes,
            identities,
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
