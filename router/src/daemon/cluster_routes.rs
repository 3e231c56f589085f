//! The datapath half of the cluster (docs/cluster.md): follows the
//! membership (other nodes' blocks and the identity cache kept from etcd)
//! and keeps two things equal to it: the view the datapath reads per
//! packet (`Router::remote`) and the kernel routes to the other blocks
//! ([`Routes`]).
//!
//! The membership is seen through [`Membership`], a small adapter: the
//! cluster core (`crate::cluster`) implements it over its cache. Routes
//! and the view are left as they are when etcd is away (fail static): only
//! a change the membership reports changes them.

use crate::config::cluster::{ClusterConfig, Mode as ConfigMode};
use crate::datapath::router::Router;
use crate::os::routes::{Mode, PeerBlock, Routes};
use crate::state::remote::RemoteView;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// One node's block as the membership reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node's name.
    pub node: String,
    /// Its IPv4 block.
    pub block: Ipv4Net,
    /// Its IPv6 block, when the cluster has an IPv6 prefix.
    pub block6: Option<Ipv6Net>,
    /// Where to reach it.
    pub underlay: IpAddr,
}

/// A snapshot of the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    /// The cluster's prefixes (IPv4 and optionally IPv6).
    pub prefixes: Vec<IpNet>,
    /// Every node's block, this one's included.
    pub nodes: Vec<NodeView>,
    /// Every registered vassal address: (address, project, node).
    pub identities: Vec<(IpAddr, String, String)>,
    /// Addresses of the cluster's infrastructure beyond the nodes'
    /// underlays: the etcd endpoints, and this node's own underlay.
    pub infra: Vec<IpAddr>,
}

/// What the datapath half needs of the cluster membership.
pub trait Membership: Send + Sync + 'static {
    /// The membership now (from the local cache: never waits on etcd).
    fn view(&self) -> ClusterView;
    /// Changes whenever blocks or identities may have changed.
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The routes' mode for `[cluster]`.
pub fn mode(settings: &ClusterConfig) -> Mode {
    if settings.mode == ConfigMode::Vxlan {
        Mode::Vxlan {
            device: settings.vxlan_device.clone(),
            vni: settings.vxlan_vni,
            port: settings.vxlan_port,
        }
    } else {
        Mode::Direct
    }
}

/// The block's gateway: its first address (as the cluster core assigns).
fn gateway(block: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block.network()).saturating_add(1))
}

/// The other nodes' blocks the routes lead to (IPv4 underlays; a node
/// with an IPv6 underlay is skipped with a warning: the routes module
/// speaks IPv4 underlays only).
pub fn peer_blocks(view: &ClusterView) -> Vec<PeerBlock> {
    view.nodes
        .iter()
        .filter(|n| n.node != view.node)
        .filter_map(|n| match n.underlay {
            IpAddr::V4(underlay) => Some(PeerBlock {
                block: n.block,
                gateway: gateway(n.block),
                underlay,
            }),
            IpAddr::V6(a) => {
                tracing::warn!(node = n.node.as_str(), underlay = %a, "IPv6 underlay not routed");
                None
            }
        })
        .collect()
}

/// The IPv6 block's gateway: its first address.
fn gateway6(block: Ipv6Net) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from(u128::from(block.network()).saturating_add(1))
}

/// The datapath's view: other nodes' blocks, the identities of vassals
/// attached to other nodes that lie inside those nodes' blocks (an
/// identity claiming an address outside its node's block is ignored: the
/// packet from it would be refused as spoofed anyway), and the
/// infrastructure vassals never reach: the etcd endpoints, every node's
/// underlay address and every other node's gateways.
pub fn remote_view(view: &ClusterView) -> RemoteView {
    let mut blocks: HashMap<&str, Vec<IpNet>> = HashMap::new();
    for n in view.nodes.iter().filter(|n| n.node != view.node) {
        let list = blocks.entry(n.node.as_str()).or_default();
        list.push(IpNet::V4(n.block));
        if let Some(b6) = n.block6 {
            list.push(IpNet::V6(b6));
        }
    }
    let identities = view
        .identities
        .iter()
        .filter(|(addr, _, node)| {
            blocks
                .get(node.as_str())
                .is_some_and(|b| b.iter().any(|net| net.contains(addr)))
        })
        .map(|(addr, project, _)| (*addr, Arc::from(project.as_str())))
        .collect();
    let mut infra: Vec<IpAddr> = view.infra.clone();
    for n in &view.nodes {
        infra.push(n.underlay);
        if n.node != view.node {
            infra.push(IpAddr::V4(gateway(n.block)));
            infra.extend(n.block6.map(|b| IpAddr::V6(gateway6(b))));
        }
    }
    RemoteView::new(
        view.prefixes.clone(),
        blocks.into_values().flatten(),
        identities,
    )
    .with_infra(infra)
}

/// How often the routes are re-applied after a failed sync.
const RETRY: Duration = Duration::from_secs(2);

/// Follows `membership` until `stop` completes or the membership goes
/// away: publishes the datapath's view with `publish` on every change of
/// blocks or identities, and syncs `routes` when the other nodes' blocks
/// changed. Returns the routes so the caller removes them on exit.
pub async fn follow(
    membership: Arc<dyn Membership>,
    publish: impl Fn(RemoteView) + Send + 'static,
    mut routes: Routes,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Routes {
    let mut changes = membership.changes();
    let mut published: Option<ClusterView> = None;
    // The peer set the kernel holds; `None` until a sync succeeded.
    let mut synced: Option<Vec<PeerBlock>> = None;
    tokio::pin!(stop);
    loop {
        let view = membership.view();
        let peers = peer_blocks(&view);
        if published.as_ref() != Some(&view) {
            publish(remote_view(&view));
            published = Some(view);
        }
        if synced.as_ref() != Some(&peers) {
            let wanted = peers.clone();
            let (r, result) = tokio::task::spawn_blocking(move || {
                let result = routes.sync(&wanted);
                (routes, result)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            routes = r;
            match result {
                Ok(()) => synced = Some(peers),
                Err(e) => {
                    synced = None;
                    tracing::error!("cluster routes: {e}");
                }
            }
        }
        // A failed sync is tried again soon; otherwise only a change wakes.
        let wait = if synced.is_some() { IDLE } else { RETRY };
        tokio::select! {
            () = &mut stop => break,
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(wait) => {}
        }
    }
    routes
}

/// The running follower: [`Follower::stop`] ends it and removes its
/// routes, guard table and VXLAN device.
pub struct Follower {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Routes>,
}

impl Follower {
    /// Stops following and removes everything the routes installed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(mut routes) => {
                let _ = tokio::task::spawn_blocking(move || routes.clear()).await;
            }
            Err(e) => tracing::error!("cluster routes: the follower failed ({e}); routes left"),
        }
    }
}

/// Creates the routes (and, in VXLAN mode, the device) for this host's
/// block `own` reached at `underlay`, publishes the datapath's view of the
/// membership now (so the first attach already sees it), and follows
/// `membership` on a task. The daemon calls this once the block is
/// known, before the control socket exists, and [`Follower::stop`] on
/// exit. Routes a predecessor left (a SIGKILLed router) are replaced by
/// the first sync (see [`Routes::new`]).
pub fn start(
    router: &Arc<Router>,
    membership: Arc<dyn Membership>,
    mode: Mode,
    own: Ipv4Net,
    underlay: Ipv4Addr,
) -> Result<Follower, crate::os::routes::RouteError> {
    let routes = Routes::new(mode, own, underlay)?;
    router.remote.publish(remote_view(&membership.view()));
    let router = Arc::clone(router);
    let publish = move |view| router.remote.publish(view);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        let _ = stopped.await;
    };
    let task = tokio::spawn(follow(membership, publish, routes, stopped));
    Ok(Follower { stop, task })
}

/// The longest sleep between checks without a change.
const IDLE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        let node = |name: &str, k: u8| NodeView {
            node: name.into(),
            block: format!("10.44.{k}.0/24").parse().unwrap(),
            block6: None,
            underlay: IpAddr::V4(Ipv4Addr::new(198, 51, 100, k)),
        };
        ClusterView {
            node: "a".into(),
            prefixes: vec!["10.44.0.0/16".parse().unwrap()],
            nodes: vec![node("a", 1), node("b", 2), node("c", 3)],
            identities: vec![
                ("10.44.1.5".parse().unwrap(), "web".into(), "a".into()),
                ("10.44.2.5".parse().unwrap(), "web".into(), "b".into()),
                // b claiming an address of c's block: ignored.
                ("10.44.3.9".parse().unwrap(), "evil".into(), "b".into()),
                ("10.44.3.5".parse().unwrap(), "db".into(), "c".into()),
            ],
            infra: vec!["198.51.100.200".parse().unwrap()],
        }
    }

    #[test]
    fn infrastructure_is_etcd_every_underlay_and_other_gateways() {
        let v = remote_view(&view());
        for infra in [
            "198.51.100.200",
            "198.51.100.1",
            "198.51.100.2",
            "10.44.2.1",
            "10.44.3.1",
        ] {
            assert!(v.is_infra(infra.parse().unwrap()), "{infra}");
        }
        // This host's gateway is the host's own (its rules and [host]
        // govern it); vassal addresses are vassals.
        for not in ["10.44.1.1", "10.44.2.5", "198.51.100.9"] {
            assert!(!v.is_infra(not.parse().unwrap()), "{not}");
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_their_gateways() {
        let peers = peer_blocks(&view());
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].gateway, Ipv4Addr::new(10, 44, 2, 1));
        assert_eq!(peers[1].underlay, Ipv4Addr::new(198, 51, 100, 3));
    }

    #[test]
    fn the_view_holds_other_nodes_identities_inside_their_own_blocks() {
        let v = remote_view(&view());
        assert!(v.in_remote_block("10.44.2.200".parse().unwrap()));
        assert!(!v.in_remote_block("10.44.1.200".parse().unwrap()));
        let ids: Vec<&str> = {
            let mut keys: Vec<_> = v.identities.iter().collect();
            keys.sort();
            keys.into_iter().map(|(_, p)| &**p).collect()
        };
        assert_eq!(ids, vec!["web", "db"]);
        assert!(!v
            .identities
            .contains_key(&"10.44.3.9".parse::<IpAddr>().unwrap()));
        assert!(!v
            .identities
            .contains_key(&"10.44.1.5".parse::<IpAddr>().unwrap()));
    }
}
