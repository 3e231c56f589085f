//! Many hosts as one network (docs/cluster.md): each router leases a block
//! of the cluster prefix in etcd, hands out automatic addresses from it,
//! registers its vassals' identities under its lease, and keeps a local
//! cache of every host's blocks and identities for the datapath.
//!
//! Without `[cluster]` only the address allocator is used (over the
//! configured subnet); nothing talks to etcd.

pub mod alloc;
pub mod persist;
mod session;

use crate::config::blocks::Block;
use crate::config::Config;
use alloc::Allocator;
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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const GOOD: &str = r#"
[cluster]
etcd = ["http://198.51.100.1:2379", "http://etcd-b:2379"]
node = "host-a"
underlay = "198.51.100.11"
prefix = "10.200.0.0/16"
prefix6 = "fd00:200::/48"
block = 24
mode = "vxlan"
lease_ttl = 5
key_prefix = "/vassal-test"
state_file = "/tmp/x.json"
vxlan_device = "vx-cl"
vxlan_vni = 42
vxlan_port = 8472
"#;

    fn error_of(text: &str) -> String {
        Config::parse(text, "r.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_full_cluster_table_parses() {
        let c = Config::parse(GOOD, "r.toml").unwrap();
        let k = c.cluster.unwrap();
        assert_eq!(k.node, "host-a");
        assert_eq!(k.etcd.len(), 2);
        assert_eq!(k.blocks.count(), 256);
        assert_eq!(k.mode, crate::config::cluster::Mode::Vxlan);
        assert_eq!(k.lease_ttl, 5);
        assert_eq!(k.key_prefix, "/vassal-test");
        assert_eq!(
            (k.vxlan_device.as_str(), k.vxlan_vni, k.vxlan_port),
            ("vx-cl", 42, 8472)
        );
        assert!(Config::parse("", "r").unwrap().cluster.is_none());
    }

    #[test]
    fn defaults_and_hostname() {
        let c = Config::parse(
            "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"n1\"\nunderlay = \"198.51.100.2\"\nprefix = \"10.1.0.0/16\"\nblock = 26\n",
            "r",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.mode, crate::config::cluster::Mode::Direct);
        assert_eq!(c.lease_ttl, 15);
        assert_eq!(c.key_prefix, "/vassal");
        assert_eq!(c.vxlan_device, "vassal-vx");
        assert_eq!(c.vxlan_vni, 1);
        assert_eq!(c.vxlan_port, 4789);
        assert!(c.blocks.prefix6().is_none());
    }

    #[test]
    fn bad_cluster_values_are_located_with_their_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("block = 24", "block = 16", "r.toml:8:9: cluster.block"),
            ("block = 24", "block = 31", "cluster.block"),
            (
                "prefix = \"10.200.0.0/16\"",
                "prefix = \"10.200.1.0/16\"",
                "r.toml:6:10: cluster.prefix",
            ),
            (
                "prefix6 = \"fd00:200::/48\"",
                "prefix6 = \"fd00:200::/120\"",
                "r.toml:7:11: cluster.block",
            ),
            (
                "mode = \"vxlan\"",
                "mode = \"gre\"",
                "r.toml:9:8: cluster.mode",
            ),
            (
                "lease_ttl = 5",
                "lease_ttl = 1",
                "r.toml:10:13: cluster.lease_ttl",
            ),
            (
                "node = \"host-a\"",
                "node = \"Host/A\"",
                "r.toml:4:8: cluster.node",
            ),
            (
                "underlay = \"198.51.100.11\"",
                "underlay = \"127.0.0.1\"",
                "r.toml:5:12: cluster.underlay",
            ),
            (
                "\"http://etcd-b:2379\"",
                "\"https://etcd-b:2379\"",
                "r.toml:3:37: cluster.etcd",
            ),
            (
                "\"http://etcd-b:2379\"",
                "\"http://etcd-b\"",
                "cluster.etcd",
            ),
            (
                "key_prefix = \"/vassal-test\"",
                "key_prefix = \"vassal\"",
                "r.toml:11:14: cluster.key_prefix",
            ),
            ("mode = \"vxlan\"", "mode = \"vxlan\"\nextra = 1", "extra"),
            (
                "vxlan_device = \"vx-cl\"",
                "vxlan_device = \"vx/cl\"",
                "r.toml:13:16: cluster.vxlan_device",
            ),
            (
                "vxlan_device = \"vx-cl\"",
                "vxlan_device = \"a-name-far-too-long\"",
                "r.toml:13:16: cluster.vxlan_device",
            ),
            (
                "vxlan_device = \"vx-cl\"",
                "vxlan_device = \"vr0\"",
                "r.toml:13:16: cluster.vxlan_device: \"vr0\" is the router's device",
            ),
            (
                "vxlan_vni = 42",
                "vxlan_vni = 0",
                "r.toml:14:13: cluster.vxlan_vni: must be between 1 and 16777215",
            ),
            (
                "vxlan_vni = 42",
                "vxlan_vni = 16777216",
                "r.toml:14:13: cluster.vxlan_vni",
            ),
            ("vxlan_vni = 42", "vxlan_vni = -1", "r.toml:14:13"),
            (
                "vxlan_port = 8472",
                "vxlan_port = 0",
                "r.toml:15:14: cluster.vxlan_port",
            ),
            ("vxlan_port = 8472", "vxlan_port = 65536", "r.toml:15:14"),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{from}");
            let e = error_of(&text);
            assert!(e.contains(want), "{to}: {e}");
        }
        let e = error_of(&GOOD.replace(
            "etcd = [\"http://198.51.100.1:2379\", \"http://etcd-b:2379\"]",
            "etcd = []",
        ));
        assert!(
            e.starts_with("r.toml:3:8:") && e.contains("cluster.etcd"),
            "{e}"
        );
    }

    #[test]
    fn gateway_is_derived_not_given() {
        let e = error_of(&format!("gateway = \"10.200.0.1/24\"\n{GOOD}"));
        assert!(
            e.starts_with("r.toml:1:11:") && e.contains("gateway: not with [cluster]"),
            "{e}"
        );
        let e = error_of(&format!("gateway6 = \"fd00:200::1/64\"\n{GOOD}"));
        assert!(
            e.starts_with("r.toml:1:12:") && e.contains("gateway6"),
            "{e}"
        );
        let e = error_of(&format!(
            "{GOOD}[[project]]\nname = \"a\"\naddress = \"10.9.0.2\"\n"
        ));
        assert!(
            e.contains("project.address") && e.contains("cluster.prefix"),
            "{e}"
        );
        assert!(Config::parse(
            &format!("{GOOD}[[project]]\nname = \"a\"\naddress = \"10.200.9.2\"\n"),
            "r"
        )
        .is_ok());
    }

    #[test]
    fn persisted_state_is_validated() {
        use super::alloc::Reservation;
        use super::persist::{validate, State};
        let c = Config::parse(GOOD, "r").unwrap().cluster.unwrap();
        let ok = State {
            node: "host-a".into(),
            block: "10.200.7.0/24".parse().unwrap(),
            reservations: vec![Reservation {
                project: "p".into(),
                name: "web".into(),
                ipv4: "10.200.7.9".parse().unwrap(),
            }],
        };
        assert_eq!(validate(&c, &ok), Ok(7));
        let mut bad = ok.clone();
        bad.node = "host-b".into();
        assert!(validate(&c, &bad).is_err());
        let mut bad = ok.clone();
        bad.block = "10.200.7.0/25".parse().unwrap();
        assert!(validate(&c, &bad).is_err());
        let mut bad = ok.clone();
        bad.block = "10.201.7.0/24".parse().unwrap();
        assert!(validate(&c, &bad).is_err());
        let mut bad = ok.clone();
        bad.reservations[0].ipv4 = "10.200.8.9".parse().unwrap();
        assert!(validate(&c, &bad).is_err());
        let mut bad = ok.clone();
        bad.reservations[0].ipv4 = "10.200.7.1".parse().unwrap();
        assert!(validate(&c, &bad).is_err(), "the gateway is no reservation");
        let mut bad = ok.clone();
        bad.reservations.push(bad.reservations[0].clone());
        bad.reservations[1].name = "db".into();
        assert!(validate(&c, &bad).is_err());
        let mut bad = ok;
        bad.reservations[0].project = "../x".into();
        assert!(validate(&c, &bad).is_err());
    }
}
