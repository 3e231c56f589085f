//! The cluster core's membership (`crate::cluster`) seen as the datapath
//! half wants it ([`cluster_routes::Membership`]): an adapter, so that the
//! core knows nothing of routes and the datapath nothing of etcd.

use super::cluster_routes::{self, ClusterView, NodeView};
use crate::cluster::Membership;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The core's membership behind the datapath's trait, with the etcd
/// endpoints' addresses (resolved at start) that vassals never reach.
pub struct Core {
    /// The membership.
    pub membership: Arc<Membership>,
    /// The etcd endpoints' addresses and this node's underlay.
    pub infra: Vec<IpAddr>,
}

/// The addresses of `endpoints` (`http://HOST:PORT`): literal addresses
/// as they are, names resolved now (one that does not resolve is logged
/// and left out: the router cannot reach it either).
pub async fn endpoint_addresses(endpoints: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for e in endpoints {
        let Some(rest) = e.strip_prefix("http://") else {
            continue;
        };
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(a) = host.parse::<IpAddr>() {
            out.push(a);
            continue;
        }
        match tokio::net::lookup_host(rest).await {
            Ok(found) => out.extend(found.map(|s| s.ip())),
            Err(err) => tracing::warn!(endpoint = e.as_str(), "resolving an etcd endpoint: {err}"),
        }
    }
    out
}

impl cluster_routes::Membership for Core {
    fn view(&self) -> ClusterView {
        let m = &self.membership;
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
            infra: self.infra.clone(),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.membership.subscribe()
    }
}
