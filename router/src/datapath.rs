//! The packet path: per-vassal readers, the host tun reader, anti-spoofing,
//! both firewall chains, the flow table and switching.
//!
//! Every reader is a tokio task owning one reused buffer; it drains its fd
//! until EAGAIN (at most [`BATCH`] packets, then yields for fairness) and
//! handles each packet synchronously: parse, check, look the destination
//! up, and write it with one non-blocking `write(2)` straight into the
//! destination's tun (or compat queue). A full destination drops the packet
//! (`queue_full`) instead of blocking the reader, so one slow vassal never
//! stalls another. Nothing here allocates per packet.

use crate::config::{Config, MAX_MTU};
use crate::firewall::{ActiveRules, Firewall};
use crate::flows::FlowTable;
use crate::metrics::{DropReason, HostCounters};
use crate::packet::{self, PacketInfo};
use crate::tun::{self, Io};
use crate::vassals::{Port, Registry, Vassal};
use firewall_rules::{Action, Chain, PacketKey, ProjectId};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Packets handled per wake-up before a reader yields to the others.
pub const BATCH: usize = 64;

/// State shared by every task of a running router.
pub struct Router {
    /// The configuration it was started with.
    pub config: Config,
    /// Attached vassals and projects.
    pub registry: Registry,
    /// Stateful flows.
    pub flows: FlowTable,
    /// Rules in force.
    pub firewall: Firewall,
    /// Router-wide counters.
    pub host: HostCounters,
    /// The host tun device.
    pub host_tun: OwnedFd,
}

/// What happened to a packet written toward a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written (or queued, for a compat peer).
    Sent,
    /// The destination's queue is full.
    Full,
    /// The destination is gone or refused the packet.
    Gone,
}

/// Writes `pkt` to `vassal`'s port.
pub fn deliver(vassal: &Vassal, pkt: &[u8]) -> Delivery {
    match &vassal.port {
        Port::Tun(fd) => match tun::write(fd.as_fd(), pkt) {
            Io::Done(_) => Delivery::Sent,
            Io::WouldBlock => Delivery::Full,
            Io::Closed | Io::Failed(_) => Delivery::Gone,
        },
        Port::Compat(out) => out.push(pkt),
    }
}

/// The rules snapshot a reader uses for one batch, with its own project's
/// id resolved against them.
pub struct Snapshot {
    rules: Arc<ActiveRules>,
    own: ProjectId,
}

impl Snapshot {
    /// Takes the rules in force now for a reader of project `project`
    /// (`None` for the host reader).
    pub fn take(firewall: &Firewall, project: Option<&str>) -> Snapshot {
        let rules = firewall.current();
        let own = project.map_or(ProjectId::UNKNOWN, |p| rules.classifier.project_id(p));
        Snapshot { rules, own }
    }

    /// Re-takes the snapshot only when the rules changed (one read lock).
    pub fn refresh(&mut self, firewall: &Firewall, project: Option<&str>) {
        let rules = firewall.current();
        if rules.generation != self.rules.generation {
            *self = Snapshot::take(firewall, project);
        }
    }
}

impl Router {
    fn allowed(
        &self,
        snap: &Snapshot,
        chain: Chain,
        project: ProjectId,
        name: &str,
        p: &PacketInfo,
    ) -> bool {
        let ports = p.proto == packet::proto::TCP || p.proto == packet::proto::UDP;
        let key = PacketKey {
            project,
            src: p.src,
            dst: p.dst,
            proto: p.proto,
            src_port: if ports { p.src_port } else { 0 },
            dst_port: if ports { p.dst_port } else { 0 },
        };
        let verdict = snap.rules.classifier.classify(chain, &key);
        if verdict.log && log_budget() {
            tracing::info!(
                project = name,
                chain = chain.as_str(),
                rule = ?verdict.rule,
                action = verdict.action.as_str(),
                src = %p.src,
                dst = %p.dst,
                proto = p.proto,
                src_port = key.src_port,
                dst_port = key.dst_port,
                "rule match"
            );
        }
        verdict.action == Action::Allow
    }

    fn in_own_subnet(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(a) => self.config.gateway.contains(&a) && a != self.config.gateway.addr(),
            IpAddr::V6(a) => self
                .config
                .gateway6
                .is_some_and(|g| g.contains(&a) && a != g.addr()),
        }
    }

    /// Handles one packet read from vassal `v`.
    pub fn from_vassal(&self, v: &Vassal, snap: &Snapshot, pkt: &[u8]) {
        let counters = &v.project.counters;
        let Ok(info) = packet::parse(pkt) else {
            return counters.drop(DropReason::Malformed);
        };
        if !v.owns(info.src) {
            return counters.drop(DropReason::Spoofed);
        }
        let established = snap.rules.classifier.defaults().established;
        let reply = established && self.flows.is_reply(&info);
        if !reply && !self.allowed(snap, Chain::Out, snap.own, &v.project.name, &info) {
            return counters.drop(DropReason::Firewall);
        }
        match self.registry.lookup(info.dst) {
            Some(w) => {
                if !reply {
                    let theirs = snap.rules.classifier.project_id(&w.project.name);
                    if !self.allowed(snap, Chain::In, theirs, &w.project.name, &info) {
                        return w.project.counters.drop(DropReason::Firewall);
                    }
                    if established && self.flows.open(&info, v.project.slot).is_err() {
                        return counters.drop(DropReason::FlowTableFull);
                    }
                }
                match deliver(&w, pkt) {
                    Delivery::Sent => {
                        counters.tx(pkt.len());
                        w.project.counters.rx(pkt.len());
                    }
                    Delivery::Full => w.project.counters.drop(DropReason::QueueFull),
                    Delivery::Gone => counters.drop(DropReason::NoRoute),
                }
            }
            None if self.in_own_subnet(info.dst) => counters.drop(DropReason::NoRoute),
            None => {
                if !reply && established && self.flows.open(&info, v.project.slot).is_err() {
                    return counters.drop(DropReason::FlowTableFull);
                }
                match tun::write(self.host_tun.as_fd(), pkt) {
                    Io::Done(_) => counters.tx(pkt.len()),
                    Io::WouldBlock => counters.drop(DropReason::QueueFull),
                    Io::Closed | Io::Failed(_) => counters.drop(DropReason::NoRoute),
                }
            }
        }
    }

    /// Handles one packet read from the host tun.
    pub fn from_host(&self, snap: &Snapshot, pkt: &[u8]) {
        let Ok(info) = packet::parse(pkt) else {
            return self.host.drop(DropReason::Malformed);
        };
        let Some(w) = self.registry.lookup(info.dst) else {
            if log_budget() {
                tracing::debug!(src = %info.src, dst = %info.dst, proto = info.proto, "host packet to no vassal dropped");
            }
            return self.host.drop(DropReason::NoRoute);
        };
        let counters = &w.project.counters;
        let established = snap.rules.classifier.defaults().established;
        let reply = established && self.flows.is_reply(&info);
        if !reply {
            let theirs = snap.rules.classifier.project_id(&w.project.name);
            if !self.allowed(snap, Chain::In, theirs, &w.project.name, &info) {
                return counters.drop(DropReason::Firewall);
            }
            if established && self.flows.open(&info, w.project.slot).is_err() {
                return counters.drop(DropReason::FlowTableFull);
            }
        }
        match deliver(&w, pkt) {
            Delivery::Sent => counters.rx(pkt.len()),
            Delivery::Full => counters.drop(DropReason::QueueFull),
            Delivery::Gone => counters.drop(DropReason::NoRoute),
        }
    }
}

/// A raw fd kept open by someone else (the `Arc<Vassal>` or the router),
/// registered with tokio's reactor.
struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Reads a vassal's tun until it closes. The caller keeps `vassal` (and so
/// the fd) alive for at least as long as this task.
pub async fn vassal_reader(router: Arc<Router>, vassal: Arc<Vassal>) {
    let Port::Tun(fd) = &vassal.port else {
        return;
    };
    let name = vassal.project.name.as_str();
    let end = read_loop(fd.as_fd(), &router.firewall, Some(name), |snap, pkt| {
        router.from_vassal(&vassal, snap, pkt)
    })
    .await;
    tracing::debug!(project = name, address = %vassal.ipv4, ?end, "vassal tun reader stopped");
}

/// Reads the host tun until the router stops.
pub async fn host_reader(router: Arc<Router>) {
    let end = read_loop(
        router.host_tun.as_fd(),
        &router.firewall,
        None,
        |snap, pkt| router.from_host(snap, pkt),
    )
    .await;
    tracing::error!(?end, "host tun reader stopped");
}

/// The drain loop shared by every tun reader; returns why it stopped.
async fn read_loop(
    fd: BorrowedFd<'_>,
    firewall: &Firewall,
    project: Option<&str>,
    mut handle: impl FnMut(&Snapshot, &[u8]),
) -> Io {
    // SAFETY: `fd` is borrowed for this whole function, so it stays open
    // (and the same description) for the AsyncFd's lifetime.
    let afd = match unsafe {
        AsyncFd::register_with_interest(Watched(fd.as_raw_fd()), Interest::READABLE)
    } {
        Ok(afd) => afd,
        Err(e) => return Io::Failed(std::io::Error::from(e).raw_os_error().unwrap_or(0)),
    };
    let mut buf = vec![0u8; MAX_MTU];
    let mut snap = Snapshot::take(firewall, project);
    loop {
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => return Io::Failed(e.raw_os_error().unwrap_or(0)),
        };
        snap.refresh(firewall, project);
        let mut drained = false;
        for _ in 0..BATCH {
            match tun::read(fd, &mut buf) {
                Io::Done(n) => handle(&snap, &buf[..n]),
                Io::WouldBlock => {
                    guard.clear_ready();
                    drained = true;
                    break;
                }
                end => return end,
            }
        }
        drop(guard);
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// Counts the log lines allowed this second (at most 20 per second).
fn log_budget() -> bool {
    static SECOND: AtomicU32 = AtomicU32::new(0);
    static USED: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    if SECOND.swap(now, Ordering::Relaxed) != now {
        USED.store(0, Ordering::Relaxed);
    }
    USED.fetch_add(1, Ordering::Relaxed) < 20
}
