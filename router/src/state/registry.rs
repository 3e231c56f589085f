//! Attached vassals and the projects they belong to: the address map the
//! datapath looks destinations up in, and per-project state that outlives
//! attachments (counters, flow-table slot).
//!
//! The address map is copied on write (attach and detach are rare) and
//! published with `arc-swap`: a reader borrows the current map for a batch
//! of packets ([`Registry::view`]) through a slot of its own thread, so the
//! packet path neither locks nor touches a reference count shared with the
//! other readers.

use crate::port::Port;
use crate::state::budget::{Budget, TIME_EXCEEDED_PER_SECOND};
use crate::state::counters::ProjectCounters;
use crate::state::evidence::Evidence;
use crate::state::rate::TokenBucket;
use crate::state::usage::ProjectUsage;
use arc_swap::{ArcSwap, Guard};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vassal_attach::{RateLimit, RefuseReason};

/// A project the router has seen since it started.
pub struct Project {
    /// Its name.
    pub name: String,
    /// Small dense index, used by the flow table.
    pub slot: u32,
    /// Its counters.
    pub counters: ProjectCounters,
    /// What its launchers report of their vassals' usage.
    pub usage: ProjectUsage,
    /// What the datapath notes for the event watch.
    pub evidence: Evidence,
    /// Time exceeded messages the router may still build for it this second.
    pub time_exceeded: Budget,
    attached: AtomicI64,
}

impl Project {
    /// Vassals of this project attached now.
    pub fn attached(&self) -> i64 {
        self.attached.load(Ordering::Relaxed)
    }

    /// Counts a vassal of this project attached (`delta` 1) or detached
    /// (-1), in the `vassal_attached` gauge too.
    fn count_attached(&self, delta: i64) {
        self.attached.fetch_add(delta, Ordering::Relaxed);
        self.counters.attached.set(self.attached() as f64);
    }
}

/// One attached vassal.
pub struct Vassal {
    /// Unique per attachment, so a late detach never removes a successor.
    pub id: u64,
    /// Its project.
    pub project: Arc<Project>,
    /// Its IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// Where to write its packets.
    pub port: Port,
    /// Its `net_out` bucket, charged by its own reader (which waits on it).
    pub egress: TokenBucket,
    /// Its `net_in` bucket, shared by every reader delivering to it.
    pub ingress: TokenBucket,
}

impl std::fmt::Debug for Vassal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vassal")
            .field("id", &self.id)
            .field("project", &self.project.name)
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .finish_non_exhaustive()
    }
}

impl Vassal {
    /// Whether its port takes super-packets whole (a tun with a vnet header).
    pub fn port_has_offloads(&self) -> bool {
        self.port.has_offloads()
    }

    /// Whether `src` is this vassal's own address.
    pub fn owns(&self, src: IpAddr) -> bool {
        match src {
            IpAddr::V4(a) => a == self.ipv4,
            IpAddr::V6(a) => Some(a) == self.ipv6,
        }
    }
}

/// Attached vassals by address (IPv4 and IPv6).
pub type AddrMap = HashMap<IpAddr, Arc<Vassal>>;

/// How a new vassal's rate buckets start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Burst {
    /// Full: a vassal attached by its launcher, once per launch.
    Full,
    /// Empty, the burst earned while attached: a peer that can reconnect
    /// at will (a uWSGI compat peer) gains nothing by reconnecting.
    Earned,
}

/// Address map and project table.
pub struct Registry {
    by_addr: ArcSwap<AddrMap>,
    /// Serialises writers of `by_addr` (copy, change, publish).
    writer: Mutex<()>,
    projects: Mutex<Vec<Arc<Project>>>,
    next_id: AtomicU64,
    max_vassals: usize,
}

impl Registry {
    /// An empty registry admitting at most `max_vassals` vassals.
    pub fn new(max_vassals: usize) -> Registry {
        Registry {
            by_addr: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
            projects: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            max_vassals,
        }
    }

    /// The project named `name`, registering its counters the first time.
    pub fn project(&self, name: &str) -> Arc<Project> {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = projects.iter().find(|p| p.name == name) {
            return Arc::clone(p);
        }
        let p = Arc::new(Project {
            name: name.to_owned(),
            slot: projects.len() as u32,
            counters: ProjectCounters::register(name),
            usage: ProjectUsage::register(name),
            evidence: Evidence::default(),
            time_exceeded: Budget::new(TIME_EXCEEDED_PER_SECOND),
            attached: AtomicI64::new(0),
        });
        projects.push(Arc::clone(&p));
        p
    }

    /// Every project seen so far, in first-seen order.
    pub fn projects(&self) -> Vec<Arc<Project>> {
        self.projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The vassal holding `addr` (a clone: for the control paths).
    pub fn lookup(&self, addr: IpAddr) -> Option<Arc<Vassal>> {
        self.by_addr.load().get(&addr).cloned()
    }

    /// The address map as it is now, for a batch of packets. Drop it
    /// before awaiting: it keeps detached vassals (and their fds) alive.
    pub fn view(&self) -> Guard<Arc<AddrMap>> {
        self.by_addr.load()
    }

    /// Attaches a vassal: refused when an address is held by a live vassal
    /// (the holder keeps it) or the vassal limit is reached.
    pub fn attach(
        &self,
        project: Arc<Project>,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        port: Port,
    ) -> Result<Arc<Vassal>, (RefuseReason, String)> {
        let unlimited = [TokenBucket::unlimited(), TokenBucket::unlimited()];
        self.attach_limited(project, ipv4, ipv6, port, unlimited)
    }

    /// [`Registry::attach`] limited to `[net_out, net_in]`, which the
    /// project's limit gauges show from now on (0: unlimited). `burst`
    /// says whether the buckets start full.
    pub fn attach_with_limits(
        &self,
        project: Arc<Project>,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        port: Port,
        [out, inn]: [Option<RateLimit>; 2],
        burst: Burst,
    ) -> Result<Arc<Vassal>, (RefuseReason, String)> {
        // In bytes per second (Prometheus' base unit; promtool's lint
        // refuses bits), to compare with rate(vassal_tx_bytes_total).
        let bytes = |l: Option<RateLimit>| l.map_or(0.0, |l| l.rate as f64 / 8.0);
        project.counters.limit_net_out.set(bytes(out));
        project.counters.limit_net_in.set(bytes(inn));
        let bucket = |l| match burst {
            Burst::Full => TokenBucket::new(l),
            Burst::Earned => TokenBucket::empty(l, crate::state::rate::now_ns()),
        };
        self.attach_limited(project, ipv4, ipv6, port, [bucket(out), bucket(inn)])
    }

    /// [`Registry::attach`] with the vassal's `[egress, ingress]` buckets.
    pub fn attach_limited(
        &self,
        project: Arc<Project>,
        ipv4: Ipv4Addr,
        ipv6: Option<Ipv6Addr>,
        port: Port,
        [egress, ingress]: [TokenBucket; 2],
    ) -> Result<Arc<Vassal>, (RefuseReason, String)> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = AddrMap::clone(&self.by_addr.load());
        for addr in std::iter::once(IpAddr::V4(ipv4)).chain(ipv6.map(IpAddr::V6)) {
            if let Some(holder) = map.get(&addr) {
                return Err((
                    RefuseReason::AddressInUse,
                    format!(
                        "{addr} is held by a live vassal of project {}",
                        holder.project.name
                    ),
                ));
            }
        }
        let live = map.keys().filter(|a| a.is_ipv4()).count();
        if live >= self.max_vassals {
            return Err((
                RefuseReason::TooManyVassals,
                format!("the router already has {live} vassals attached (limits.max_vassals)"),
            ));
        }
        let vassal = Arc::new(Vassal {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            project,
            ipv4,
            ipv6,
            port,
            egress,
            ingress,
        });
        map.insert(IpAddr::V4(ipv4), Arc::clone(&vassal));
        if let Some(a) = ipv6 {
            map.insert(IpAddr::V6(a), Arc::clone(&vassal));
        }
        self.by_addr.store(Arc::new(map));
        vassal.project.count_attached(1);
        Ok(vassal)
    }

    /// Detaches exactly this attachment (no-op when already gone).
    pub fn detach(&self, vassal: &Vassal) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = AddrMap::clone(&self.by_addr.load());
        let mut removed = false;
        for addr in std::iter::once(IpAddr::V4(vassal.ipv4)).chain(vassal.ipv6.map(IpAddr::V6)) {
            if map.get(&addr).is_some_and(|v| v.id == vassal.id) {
                map.remove(&addr);
                removed = true;
            }
        }
        if removed {
            self.by_addr.store(Arc::new(map));
            vassal.project.count_attached(-1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn port() -> Port {
        let (a, _b) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        Port::Tun { fd: a, vnet: false }
    }

    #[test]
    fn addresses_are_exclusive_and_the_vassal_count_bounded() {
        let r = Registry::new(2);
        let alice = r.project("alice");
        let a = r
            .attach(
                Arc::clone(&alice),
                Ipv4Addr::new(10, 0, 0, 2),
                Some("fd00::2".parse().unwrap()),
                port(),
            )
            .unwrap();
        // Either address held: refused, the holder keeps both.
        let (reason, _) = r
            .attach(
                r.project("bob"),
                Ipv4Addr::new(10, 0, 0, 3),
                Some("fd00::2".parse().unwrap()),
                port(),
            )
            .unwrap_err();
        assert_eq!(reason, RefuseReason::AddressInUse);
        assert!(r.lookup("10.0.0.3".parse().unwrap()).is_none());
        assert_eq!(r.lookup("fd00::2".parse().unwrap()).unwrap().id, a.id);
        r.attach(r.project("bob"), Ipv4Addr::new(10, 0, 0, 3), None, port())
            .unwrap();
        let (reason, _) = r
            .attach(r.project("carol"), Ipv4Addr::new(10, 0, 0, 4), None, port())
            .unwrap_err();
        assert_eq!(reason, RefuseReason::TooManyVassals);
        // Detach frees the addresses; a stale detach of an old attachment
        // never removes its successor.
        r.detach(&a);
        assert_eq!(alice.attached(), 0);
        let again = r
            .attach(Arc::clone(&alice), Ipv4Addr::new(10, 0, 0, 2), None, port())
            .unwrap();
        r.detach(&a);
        assert_eq!(r.lookup("10.0.0.2".parse().unwrap()).unwrap().id, again.id);
        // Projects keep their slot (and counters) across attachments.
        assert_eq!(r.project("alice").slot, alice.slot);
        assert_eq!(r.projects().len(), 3);
    }

    #[test]
    fn a_view_is_the_map_of_its_moment() {
        let r = Registry::new(4);
        let a = r
            .attach(r.project("alice"), Ipv4Addr::new(10, 0, 0, 2), None, port())
            .unwrap();
        let before = r.view();
        r.detach(&a);
        let b = r
            .attach(r.project("bob"), Ipv4Addr::new(10, 0, 0, 3), None, port())
            .unwrap();
        // A batch keeps the map it started with; the next one sees both
        // changes, and no view is ever half-updated.
        assert_eq!(before.len(), 1);
        assert_eq!(before[&IpAddr::from([10, 0, 0, 2])].id, a.id);
        let after = r.view();
        assert_eq!(after.len(), 1);
        assert_eq!(after[&IpAddr::from([10, 0, 0, 3])].id, b.id);
    }
}
