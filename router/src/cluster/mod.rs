//! Many hosts as one network (docs/cluster.md): each router leases a block
//! of the cluster prefix in etcd, hands out automatic addresses from it,
//! registers its vassals' identities under its lease, and keeps a local
//! cache of every host's blocks and identities for the datapath.
//!
//! Without `[cluster]` only the address allocator is used (over the
//! configured subnet); nothing talks to etcd.

pub mod alloc;
pub mod block;
pub mod persist;
mod session;
pub mod settings;

use crate::config::Config;
use alloc::Allocator;
use block::Block;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

pub use session::{Identity, Membership, NodeBlock};

/// The cluster could not be joined at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer and no block was persisted.
    #[error("joining the cluster: etcd ({endpoints}) did not answer ({cause}) and {state} holds no block of this node: a first start needs etcd")]
    NoBlock {
        /// The endpoints tried.
        endpoints: String,
        /// Why etcd failed.
        cause: String,
        /// The state file.
        state: String,
    },
    /// The prefix has no free block.
    #[error("claiming a block of {prefix}: every block is held by another node")]
    Exhausted {
        /// The prefix.
        prefix: String,
    },
    /// The persisted state is unusable.
    #[error(transparent)]
    State(#[from] persist::PersistError),
}

/// Address allocation and, with `[cluster]`, membership.
pub struct Cluster {
    alloc: Mutex<Allocator>,
    membership: Option<Arc<Membership>>,
}

impl Cluster {
    /// Joins the cluster when configured (claims or recovers the block and
    /// rewrites `config.gateway`/`gateway6` from it), and sets up the
    /// address pool. Must run inside the tokio runtime, before the host tun
    /// is created.
    pub async fn start(config: &mut Config) -> Result<Arc<Cluster>, ClusterError> {
        let Some(settings) = config.cluster.clone() else {
            return Ok(Arc::new(Cluster::standalone(config)));
        };
        let (membership, reservations) = Membership::start(settings).await?;
        let block = membership.block;
        config.gateway = block.gateway();
        config.gateway6 = block.gateway6();
        let mut alloc = Allocator::new(block.hosts().collect());
        alloc.restore(&reservations);
        Ok(Arc::new(Cluster {
            alloc: Mutex::new(alloc),
            membership: Some(membership),
        }))
    }

    /// Without `[cluster]`: automatic addresses from the configured subnet.
    pub fn standalone(config: &Config) -> Cluster {
        let g = config.gateway;
        let pool = (u32::from(g.network()) + 1..u32::from(g.broadcast()))
            .map(Ipv4Addr::from)
            .filter(|a| *a != g.addr())
            .collect();
        Cluster {
            alloc: Mutex::new(Allocator::new(pool)),
            membership: None,
        }
    }

    /// The membership, with `[cluster]`.
    pub fn membership(&self) -> Option<&Arc<Membership>> {
        self.membership.as_ref()
    }

    /// This router's block, with `[cluster]`.
    pub fn block(&self) -> Option<Block> {
        self.membership.as_ref().map(|m| m.block)
    }

    /// Leases an address to `project`/`name` (see [`Allocator::lease`]);
    /// `busy` says which addresses are taken otherwise (attached vassals,
    /// the `[[project]]` table). Persisted with the block.
    pub fn lease(
        &self,
        project: &str,
        name: &str,
        busy: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let mut alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let addr = alloc.lease(project, name, busy)?;
        if let Some(m) = &self.membership {
            m.persist(alloc.reservations());
        }
        Some(addr)
    }

    /// The project an automatic reservation holds `addr` for.
    pub fn reserved_by(&self, addr: Ipv4Addr) -> Option<String> {
        let alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        alloc.reserved_by(addr).map(str::to_owned)
    }

    /// The IPv6 address paired with `v4` in the block (cluster), or `None`.
    pub fn pair6(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        self.membership.as_ref().and_then(|m| m.block.pair6(v4))
    }

    /// Registers an attached vassal's identity (written to etcd when it
    /// answers; kept and written later when not).
    pub fn register(&self, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>, project: &str) {
        if let Some(m) = &self.membership {
            m.register(IpAddr::V4(ipv4), project);
            if let Some(a) = ipv6 {
                m.register(IpAddr::V6(a), project);
            }
        }
    }

    /// Removes a detached vassal's identity.
    pub fn unregister(&self, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) {
        if let Some(m) = &self.membership {
            m.unregister(IpAddr::V4(ipv4));
            if let Some(a) = ipv6 {
                m.unregister(IpAddr::V6(a));
            }
        }
    }
}
