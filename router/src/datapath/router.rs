//! The packet path: anti-spoofing, both firewall chains, the flow table and
//! switching, for one packet at a time. [`Router`] is the state every task
//! shares; the readers (`datapath::reader`) call [`Router::from_vassal`] and
//! [`Router::from_host`] on each packet they read, synchronously: parse,
//! check the offload header, check, look the destination up, and write it
//! through the destination's port with one non-blocking write. A full
//! destination drops the packet (`queue_full`) instead of blocking the
//! reader, so one slow vassal never stalls another. Nothing here allocates
//! per packet.
//!
//! With offloads (`limits.offload`, docs/design.md) a packet may be a TCP
//! super-packet of up to 64 KiB: it is checked once, moved whole, and
//! counted as the segments it stands for (see `wire::offload`).

use crate::config::Config;
use crate::datapath::cores;
use crate::os::host_tun::HostTun;
use crate::port::delivery::{Delivered, Delivery};
use crate::port::write_tun;
use crate::state::budget;
use crate::state::counters::{DropReason, HostCounters};
use crate::state::evidence::Logged;
use crate::state::firewall::{ActiveRules, Firewall};
use crate::state::flows::{FlowTable, Seen};
use crate::state::fragments::FragmentTable;
use crate::state::rate;
use crate::state::registry::{AddrMap, Project, Registry, Vassal};
use crate::state::remote::{Remote, RemoteView};
use crate::wire::frame::Frame;
use crate::wire::icmp;
use crate::wire::offload::{self, Plan};
use crate::wire::packet::{self, PacketInfo};
use firewall_rules::{Action, Chain, PacketKey, Peer, ProjectId};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// State shared by every task of a running router.
pub struct Router {
    /// The configuration it was started with.
    pub config: Config,
    /// Attached vassals and projects.
    pub registry: Registry,
    /// Stateful flows.
    pub flows: FlowTable,
    /// Fragmented datagrams whose first fragment passed.
    pub fragments: FragmentTable,
    /// Rules in force.
    pub firewall: Firewall,
    /// Router-wide counters.
    pub host: HostCounters,
    /// The host tun device.
    pub host_tun: HostTun,
    /// Other hosts' blocks and vassals (empty without `[cluster]`).
    pub remote: Remote,
    /// Automatic addresses, and with `[cluster]` the membership: blocks of
    /// every host and the identity cache (`crate::cluster`).
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// The rules snapshot a reader uses for one batch, with its own project's
/// id resolved against them.
pub struct Snapshot {
    rules: Arc<ActiveRules>,
    own: ProjectId,
    /// The batch's instant for the rate limits (the clock is read once per
    /// batch, see [`rate::now_ns`]).
    pub now: u64,
}

impl Snapshot {
    /// Takes the rules in force now for a reader of project `project`
    /// (`None` for the host reader).
    pub fn take(firewall: &Firewall, project: Option<&str>) -> Snapshot {
        let rules = firewall.current();
        let own = project.map_or(ProjectId::UNKNOWN, |p| rules.classifier.project_id(p));
        Snapshot {
            rules,
            own,
            now: rate::now_ns(),
        }
    }

    /// Re-takes the snapshot only when the rules changed (one load of the
    /// published generation, a word only reloads write).
    pub fn refresh(&mut self, firewall: &Firewall, project: Option<&str>) {
        if firewall.generation() != self.rules.generation {
            *self = Snapshot::take(firewall, project);
        } else {
            self.now = rate::now_ns();
        }
    }
}

/// Parses a frame and checks its offload header against it.
fn inspect(frame: &Frame<'_>) -> Option<(PacketInfo, Plan)> {
    let info = packet::parse(frame.ip).ok()?;
    let plan = offload::plan(&frame.hdr, frame.ip, &info).ok()?;
    Some((info, plan))
}

impl Router {
    /// Classifies `p` on `chain` for the project `project` (`id` in the
    /// snapshot), whose other end is `peer`; a denial by a rule with
    /// `log = true` is left as evidence for the event watch.
    fn allowed(
        &self,
        snap: &Snapshot,
        chain: Chain,
        (id, project): (ProjectId, &Project),
        peer: Peer,
        p: &PacketInfo,
    ) -> bool {
        let ports = p.proto == packet::proto::TCP || p.proto == packet::proto::UDP;
        let key = PacketKey {
            project: id,
            src: p.src,
            dst: p.dst,
            proto: p.proto,
            src_port: if ports { p.src_port } else { 0 },
            dst_port: if ports { p.dst_port } else { 0 },
            peer,
        };
        let verdict = snap.rules.classifier.classify(chain, &key);
        if verdict.log && verdict.action == Action::Deny {
            project.evidence.logged(Logged {
                chain: chain.as_str(),
                rule_line: snap.rules.line(chain, verdict.rule),
                src: p.src,
                dst: p.dst,
                proto: p.proto,
                dst_port: key.dst_port,
            });
        }
        if verdict.log && log_budget() {
            tracing::info!(
                project = project.name.as_str(),
                chain = chain.as_str(),
                rule_line = ?snap.rules.line(chain, verdict.rule),
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

    /// Whether `addr` is the gateway (the host's address in the subnet).
    fn is_gateway(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => a == self.config.gateway.addr(),
            IpAddr::V6(a) => self.config.gateway6.is_some_and(|g| g.addr() == a),
        }
    }

    /// Whether `addr` lies in the cluster prefix where no host's block is:
    /// neither this host's (gateway included) nor another's.
    fn in_no_block(&self, remote: &RemoteView, addr: IpAddr) -> bool {
        remote.in_prefix(addr)
            && !remote.in_remote_block(addr)
            && !self.in_own_subnet(addr)
            && !self.is_gateway(addr)
    }

    /// The other end `addr`, not attached here, as the rules see it for a
    /// vassal of project `own`: the gateway is the host (outside), the rest
    /// of this host's block an unknown vassal address, and beyond it the
    /// remote view decides (another host's vassal, an unknown address of
    /// the prefix, or outside).
    fn peer_of(
        &self,
        remote: &RemoteView,
        classifier: &firewall_rules::Classifier,
        own: &str,
        addr: IpAddr,
    ) -> Peer {
        if self.is_gateway(addr) {
            Peer::Outside
        } else if self.in_own_subnet(addr) {
            Peer::Unknown
        } else {
            remote.peer(classifier, Some(own), addr)
        }
    }

    /// Counts a super-packet that crossed (or was cut) on its way.
    fn count_offload(&self, plan: &Plan, d: &Delivered, cut: bool) {
        if plan.is_segmented() && d.sent.packets > 0 {
            if cut {
                self.host.segmented.add(1);
            } else {
                self.host.offloaded.add(1);
            }
        }
    }

    /// Whether `dst` is a vassal's address (attached or not).
    fn is_vassal_address(&self, vassals: &AddrMap, dst: IpAddr) -> bool {
        self.in_own_subnet(dst) || vassals.contains_key(&dst)
    }

    /// Answers `pkt` from vassal `v`, whose TTL or hop limit ran out at the
    /// router, with a time exceeded from the gateway (within the budget).
    fn time_exceeded(&self, v: &Vassal, info: &PacketInfo, pkt: &[u8]) {
        let from = match info.src {
            IpAddr::V4(_) => IpAddr::V4(self.config.gateway.addr()),
            IpAddr::V6(_) => match self.config.gateway6 {
                Some(g) => IpAddr::V6(g.addr()),
                None => return,
            },
        };
        if !budget::TIME_EXCEEDED.take() {
            return;
        }
        let mut out = [0u8; icmp::ERROR_MAX];
        if let Some(len) = icmp::time_exceeded(pkt, info, from, &mut out) {
            let d = v.port.write(&Frame::plain(&out[..len]), &Plan::plain(len));
            v.project.counters.rx(d.sent);
        }
    }

    /// Handles one packet read from vassal `v`; `vassals` is the reader's
    /// view of the registry for this batch.
    pub fn from_vassal(&self, v: &Vassal, snap: &Snapshot, vassals: &AddrMap, frame: Frame<'_>) {
        let counters = &v.project.counters;
        // Whatever becomes of it, what the vassal sent counts against its
        // `net_out` (its reader waits on the bucket before reading more).
        let Some((info, plan)) = inspect(&frame) else {
            v.egress.charge(snap.now, frame.ip.len() as u64);
            return counters.drop(DropReason::Malformed, 1);
        };
        v.egress.charge(snap.now, plan.wire.bytes);
        let n = plan.wire.packets;
        if icmp::is_link_local(&info) {
            return counters.drop(DropReason::LinkLocal, n);
        }
        if !v.owns(info.src) {
            return counters.drop(DropReason::Spoofed, n);
        }
        let dest = vassals.get(&info.dst);
        let remote = self.remote.load();
        // etcd, the underlay and the other hosts themselves are closed to
        // vassals whatever the rules say (docs/cluster.md, "Protecting
        // etcd"); fragments included.
        if dest.is_none() && remote.is_infra(info.dst) {
            return counters.drop(DropReason::ClusterInfra, n);
        }
        // A later fragment follows its first fragment's verdict.
        let Ok(follows) = self.fragments.follows(&info, false) else {
            return counters.drop(DropReason::Fragment, n);
        };
        // No vassal to deliver to: this host's block (or subnet) without
        // the address attached, or a part of the cluster prefix that no
        // host holds. Another host's block leaves through the host tun.
        let own_subnet =
            dest.is_none() && (self.in_own_subnet(info.dst) || self.in_no_block(&remote, info.dst));
        let classifier = &snap.rules.classifier;
        // The other end of the out chain: the destination.
        let receiver = match dest {
            Some(w) => Peer::Vassal {
                project: classifier.project_id(&w.project.name),
                same: w.project.name == v.project.name,
            },
            None => self.peer_of(&remote, classifier, &v.project.name, info.dst),
        };
        // Both chains, and whether the packet would open its flow: not
        // when it is to be dropped for its TTL or for want of a vassal.
        let decide = || {
            if !self.allowed(snap, Chain::Out, (snap.own, &v.project), receiver, &info) {
                return (Verdict::DeniedOut, false);
            }
            match dest {
                Some(w) => {
                    let theirs = classifier.project_id(&w.project.name);
                    let sender = Peer::Vassal {
                        project: snap.own,
                        same: w.project.name == v.project.name,
                    };
                    if !self.allowed(snap, Chain::In, (theirs, &w.project), sender, &info) {
                        return (Verdict::DeniedIn, false);
                    }
                    (Verdict::Pass, icmp::hop_limit(frame.ip) > 1)
                }
                None => (Verdict::Pass, !own_subnet),
            }
        };
        let established = snap.rules.classifier.defaults().established;
        let seen = if follows {
            Seen::Reply
        } else if established {
            let relate = icmp::may_relate(&info, false, false);
            self.flows.track(&info, relate, v.project.slot, decide)
        } else {
            Seen::Decided(decide().0)
        };
        if seen != Seen::Reply && !(seen == Seen::Decided(Verdict::Pass) && own_subnet) {
            note_port(&v.project, &info);
        }
        match seen {
            Seen::Reply | Seen::Decided(Verdict::Pass) => {}
            Seen::Decided(Verdict::DeniedOut) => return counters.drop(DropReason::Firewall, n),
            Seen::Decided(Verdict::DeniedIn) => {
                if let Some(w) = dest {
                    w.project.counters.drop(DropReason::Firewall, n);
                }
                return;
            }
            Seen::Full => return counters.drop(DropReason::FlowTableFull, n),
        }
        match dest {
            Some(w) => {
                // Between vassals the router is the only hop (docs/design.md).
                if icmp::hop_limit(frame.ip) <= 1 {
                    self.time_exceeded(v, &info, frame.ip);
                    return counters.drop(DropReason::TtlExceeded, n);
                }
                if self
                    .fragments
                    .passing(&info, v.project.slot, false)
                    .is_err()
                {
                    return counters.drop(DropReason::Fragment, n);
                }
                if !w.ingress.admit(snap.now, plan.wire.bytes) {
                    return w.project.counters.drop(DropReason::RateLimit, n);
                }
                let d = w.port.write_hop(&frame, &plan);
                self.count_offload(&plan, &d, !w.port_has_offloads());
                counters.tx(d.sent);
                w.project.counters.rx(d.sent);
                match d.outcome {
                    Delivery::Sent => {}
                    Delivery::Full => w
                        .project
                        .counters
                        .drop(DropReason::QueueFull, d.unsent(&plan)),
                    Delivery::Gone => counters.drop(DropReason::NoRoute, d.unsent(&plan)),
                }
            }
            None if own_subnet => counters.drop(DropReason::NoRoute, n),
            None => {
                if self
                    .fragments
                    .passing(&info, v.project.slot, false)
                    .is_err()
                {
                    return counters.drop(DropReason::Fragment, n);
                }
                let vnet = self.host_tun.vnet();
                let d = write_tun(
                    self.host_tun.writer_for(cores::current()),
                    vnet,
                    &frame,
                    &plan,
                );
                self.count_offload(&plan, &d, !vnet);
                counters.tx(d.sent);
                match d.outcome {
                    Delivery::Sent => {}
                    Delivery::Full => counters.drop(DropReason::QueueFull, d.unsent(&plan)),
                    Delivery::Gone => counters.drop(DropReason::NoRoute, d.unsent(&plan)),
                }
            }
        }
    }

    /// Handles one packet read from the host tun; `vassals` is the
    /// reader's view of the registry for this batch.
    pub fn from_host(&self, snap: &Snapshot, vassals: &AddrMap, frame: Frame<'_>) {
        let Some((info, plan)) = inspect(&frame) else {
            return self.host.drop(DropReason::Malformed, 1);
        };
        let n = plan.wire.packets;
        // Vassal sources never come from the host (vassal-to-vassal is
        // switched here): such a packet was forged outside. The gateway is
        // the host's own address. Behind the nft forward/output rules.
        // With [cluster], a source in the prefix comes only from another
        // host's block (which host: the nftables table and the kernel's
        // reverse path, docs/cluster.md).
        let remote = self.remote.load();
        if self.in_own_subnet(info.src) || self.in_no_block(&remote, info.src) {
            return self.host.drop(DropReason::Spoofed, n);
        }
        let Some(w) = vassals.get(&info.dst) else {
            // Checked first so that these drops never eat the budget of
            // the rule-match log lines when debug logging is off.
            if tracing::enabled!(tracing::Level::DEBUG) && log_budget() {
                tracing::debug!(src = %info.src, dst = %info.dst, proto = info.proto, "host packet to no vassal dropped");
            }
            return self.host.drop(DropReason::NoRoute, n);
        };
        let counters = &w.project.counters;
        let Ok(follows) = self.fragments.follows(&info, true) else {
            return counters.drop(DropReason::Fragment, n);
        };
        let decide = || {
            let classifier = &snap.rules.classifier;
            let theirs = classifier.project_id(&w.project.name);
            // The other end of the in chain: the source, from the identity
            // cache when it is a remote vassal.
            let sender = self.peer_of(&remote, classifier, &w.project.name, info.src);
            let pass = self.allowed(snap, Chain::In, (theirs, &w.project), sender, &info);
            (pass, pass)
        };
        let established = snap.rules.classifier.defaults().established;
        let seen = if follows {
            Seen::Reply
        } else if established {
            let relate = icmp::may_relate(
                &info,
                true,
                info.quoted
                    .is_some_and(|q| self.is_vassal_address(vassals, q.dst)),
            );
            self.flows.track(&info, relate, w.project.slot, decide)
        } else {
            Seen::Decided(decide().0)
        };
        match seen {
            Seen::Reply | Seen::Decided(true) => {}
            Seen::Decided(false) => return counters.drop(DropReason::Firewall, n),
            Seen::Full => return counters.drop(DropReason::FlowTableFull, n),
        }
        if self.fragments.passing(&info, w.project.slot, true).is_err() {
            return counters.drop(DropReason::Fragment, n);
        }
        // Ingress polices: holding the packet would hold every vassal
        // behind it on this shared reader (docs/design.md).
        if !w.ingress.admit(snap.now, plan.wire.bytes) {
            return counters.drop(DropReason::RateLimit, n);
        }
        let d = w.port.write(&frame, &plan);
        self.count_offload(&plan, &d, !w.port_has_offloads());
        counters.rx(d.sent);
        match d.outcome {
            Delivery::Sent => {}
            Delivery::Full => counters.drop(DropReason::QueueFull, d.unsent(&plan)),
            Delivery::Gone => counters.drop(DropReason::NoRoute, d.unsent(&plan)),
        }
    }
}

/// The rules' verdict on a packet from a vassal that is not a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Both chains allow it.
    Pass,
    /// The out chain (its sender's) denied it.
    DeniedOut,
    /// The in chain (its recipient vassal's) denied it.
    DeniedIn,
}

/// Notes the destination port of a packet that opens a flow or is denied:
/// the watch reports a project reaching for many ports at once (a scan).
fn note_port(project: &Project, info: &PacketInfo) {
    if info.proto == packet::proto::TCP || info.proto == packet::proto::UDP {
        project.evidence.port(info.dst_port);
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

#[cfg(test)]
mod tests {
    //! The packet path without privileges: datagram socketpairs stand in for
    //! tun devices (one packet per read or write, EAGAIN when full).
    use super::*;
    use crate::os::tun::{self, Io};
    use crate::port::Port;
    use crate::wire::offload::VnetHdr;
    use firewall_rules::RuleSet;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::net::Ipv4Addr;
    use std::os::fd::AsFd;
    use std::os::fd::OwnedFd;
    use std::path::Path;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    struct Bench {
        router: Router,
        host_peer: OwnedFd,
    }

    fn bench(rules: &str, extra_config: &str) -> Bench {
        bench_with(rules, extra_config, false)
    }

    fn bench_with(rules: &str, extra_config: &str, host_vnet: bool) -> Bench {
        let config =
            Config::parse(&format!("gateway = \"10.9.0.1/24\"\n{extra_config}"), "t").unwrap();
        let set = RuleSet::parse(rules, Path::new("rules.toml")).unwrap();
        let (host_tun, host_peer) = pair();
        Bench {
            router: Router {
                registry: Registry::new(config.limits.max_vassals),
                flows: FlowTable::new(config.flows.clone()),
                fragments: FragmentTable::new(config.fragments.clone()),
                firewall: Firewall::with_rules(&set, None),
                host: HostCounters::register(),
                host_tun: HostTun::from_queues(host_tun, Vec::new(), host_vnet),
                remote: Remote::default(),
                cluster: Arc::new(crate::cluster::Cluster::standalone(&config)),
                config,
            },
            host_peer,
        }
    }

    impl Bench {
        /// Attaches `project` at 10.9.0.`host`; returns it and the fd the
        /// test reads its deliveries from.
        fn vassal(&self, project: &str, host: u8) -> (Arc<Vassal>, OwnedFd) {
            self.vassal_with(project, host, false)
        }

        fn vassal_with(&self, project: &str, host: u8, vnet: bool) -> (Arc<Vassal>, OwnedFd) {
            let (ours, theirs) = pair();
            let p = self.router.registry.project(project);
            self.router.flows.ensure_slot(p.slot, &p.name);
            self.router.fragments.ensure_slot(p.slot);
            let v = self
                .router
                .registry
                .attach(
                    p,
                    Ipv4Addr::new(10, 9, 0, host),
                    None,
                    Port::Tun { fd: ours, vnet },
                )
                .unwrap();
            (v, theirs)
        }

        fn send(&self, v: &Vassal, pkt: &[u8]) {
            let snap = Snapshot::take(&self.router.firewall, Some(&v.project.name));
            self.router
                .from_vassal(v, &snap, &self.router.registry.view(), Frame::plain(pkt));
        }

        fn host_sends(&self, pkt: &[u8]) {
            let snap = Snapshot::take(&self.router.firewall, None);
            self.router
                .from_host(&snap, &self.router.registry.view(), Frame::plain(pkt));
        }
    }

    /// The next packet waiting on `fd`, if any.
    fn received(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match tun::read(fd.as_fd(), &mut buf) {
            Io::Done(n) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 16, 0, 0]);
        p.extend_from_slice(b"payload!");
        p
    }

    const OPEN_OUT: &str = "[default]\nout = \"allow\"\nin = \"deny\"\n";

    /// An IPv4 fragment of UDP datagram `id`: `data` at byte `offset` of
    /// the datagram (the UDP header included in the first).
    fn fragment(
        src: [u8; 4],
        dst: [u8; 4],
        id: u16,
        offset: u16,
        more: bool,
        data: &[u8],
    ) -> Vec<u8> {
        let total = (20 + data.len()) as u16;
        let flags = (offset / 8) | if more { 0x2000 } else { 0 };
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[64, 17, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(data);
        p
    }

    /// The three fragments of a 40-byte UDP datagram `sport` -> `dport`.
    fn train(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, id: u16) -> [Vec<u8>; 3] {
        let mut first = sport.to_be_bytes().to_vec();
        first.extend_from_slice(&dport.to_be_bytes());
        first.extend_from_slice(&[0, 40, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        [
            fragment(src, dst, id, 0, true, &first),
            fragment(src, dst, id, 16, true, &[7; 16]),
            fragment(src, dst, id, 32, false, &[8; 8]),
        ]
    }

    #[test]
    fn fragments_follow_the_verdict_of_their_first_fragment() {
        let rules = "[default]\nout = \"allow\"\nin = \"deny\"\n[[out]]\naction = \"deny\"\nproto = \"udp\"\ndst_port = 9\n";
        let b = bench(rules, "");
        let (v, v_peer) = b.vassal("alice", 2);
        let c = &v.project.counters;
        let (me, net) = ([10, 9, 0, 2], [203, 0, 113, 1]);
        // Allowed: all three pass, one flow (the first's), nothing left.
        for f in train(me, 4000, net, 53, 1) {
            b.send(&v, &f);
            assert_eq!(received(&b.host_peer), Some(f));
        }
        assert_eq!((b.router.flows.len(), b.router.fragments.len()), (1, 0));
        // The reply, fragmented too, follows its first fragment (a reply).
        for f in train(net, 53, me, 4000, 1) {
            b.host_sends(&f);
            assert_eq!(received(&v_peer), Some(f));
        }
        // Denied first fragment: its followers never pass.
        for f in train(me, 4000, net, 9, 2) {
            b.send(&v, &f);
        }
        assert_eq!(received(&b.host_peer), None);
        assert_eq!(
            (
                c.dropped(DropReason::Firewall),
                c.dropped(DropReason::Fragment)
            ),
            (1, 2)
        );
        // A later fragment alone, and one overlapping an allowed first.
        b.send(&v, &train(me, 4000, net, 53, 3)[2]);
        let [first, ..] = train(me, 4000, net, 53, 4);
        b.send(&v, &first);
        assert_eq!(received(&b.host_peer), Some(first));
        b.send(&v, &fragment(me, net, 4, 8, false, &[0; 16]));
        assert_eq!(received(&b.host_peer), None);
        assert_eq!(c.dropped(DropReason::Fragment), 4);
        // An unsolicited train from the host: the first is denied by the
        // in chain, the rest dropped as fragments, all charged to alice.
        for f in train(net, 53, me, 5000, 5) {
            b.host_sends(&f);
        }
        assert_eq!(received(&v_peer), None);
        assert_eq!(
            (
                c.dropped(DropReason::Firewall),
                c.dropped(DropReason::Fragment)
            ),
            (2, 6)
        );
        assert_eq!(b.router.flows.len(), 1, "no port-0 flows");
    }

    /// The cluster recipe of docs/rules.md: a project's vassals reach each
    /// other, nobody else reaches them; the same rules hold for a peer on
    /// this host and one on another (from the identity cache).
    const SAME_PROJECT: &str = "[default]\nout = \"deny\"\nin = \"deny\"\n\
        [[out]]\naction = \"allow\"\npeer = \"same\"\n\
        [[in]]\naction = \"allow\"\npeer = \"same\"\n";

    /// 10.44.0.0/16 is the cluster prefix, 10.44.2.0/24 another host's
    /// block with alice's 10.44.2.5 and bob's 10.44.2.6 in the cache.
    fn with_remote(b: &Bench) {
        let mut view = crate::state::remote::RemoteView::new(
            vec!["10.44.0.0/16".parse().unwrap()],
            ["10.44.2.0/24".parse().unwrap()],
            Default::default(),
        );
        view.identities
            .insert("10.44.2.5".parse().unwrap(), Arc::from("alice"));
        view.identities
            .insert("10.44.2.6".parse().unwrap(), Arc::from("bob"));
        b.router.remote.publish(view);
    }

    #[test]
    fn peer_rules_see_the_other_ends_project_on_this_host() {
        let b = bench(SAME_PROJECT, "");
        let (a1, _) = b.vassal("alice", 2);
        let (_a2, a2_peer) = b.vassal("alice", 3);
        let (_b1, b1_peer) = b.vassal("bob", 4);
        b.send(&a1, &udp([10, 9, 0, 2], 4000, [10, 9, 0, 3], 53));
        assert!(received(&a2_peer).is_some());
        b.send(&a1, &udp([10, 9, 0, 2], 4000, [10, 9, 0, 4], 53));
        assert_eq!(received(&b1_peer), None);
        assert_eq!(a1.project.counters.dropped(DropReason::Firewall), 1);
        // Outside is not "same": the internet stays shut by this file.
        b.send(&a1, &udp([10, 9, 0, 2], 4000, [203, 0, 113, 1], 53));
        assert_eq!(received(&b.host_peer), None);
    }

    #[test]
    fn remote_blocks_leave_through_the_host_and_their_sources_are_judged_by_the_cache() {
        let b = bench(SAME_PROJECT, "");
        with_remote(&b);
        let (a, a_peer) = b.vassal("alice", 2);
        let c = &a.project.counters;
        // To alice on the other host: out through the host tun.
        let out = udp([10, 9, 0, 2], 4000, [10, 44, 2, 5], 53);
        b.send(&a, &out);
        assert_eq!(received(&b.host_peer), Some(out));
        // To bob there: denied by peer = "same".
        b.send(&a, &udp([10, 9, 0, 2], 4000, [10, 44, 2, 6], 53));
        assert_eq!(received(&b.host_peer), None);
        assert_eq!(c.dropped(DropReason::Firewall), 1);
        // From the other host: alice's remote vassal passes the in chain
        // (project from the cache), bob's and an unknown address do not.
        let from_alice = udp([10, 44, 2, 5], 5000, [10, 9, 0, 2], 7);
        b.host_sends(&from_alice);
        assert_eq!(received(&a_peer), Some(from_alice));
        b.host_sends(&udp([10, 44, 2, 6], 5000, [10, 9, 0, 2], 7));
        b.host_sends(&udp([10, 44, 2, 7], 5000, [10, 9, 0, 2], 7));
        assert_eq!(received(&a_peer), None);
        assert_eq!(c.dropped(DropReason::Firewall), 3);
        // To an address of the prefix in no host's block: no route (never
        // the host's default route), whatever the rules allow.
        let open = bench(OPEN_OUT, "");
        with_remote(&open);
        let (o, _) = open.vassal("alice", 2);
        open.send(&o, &udp([10, 9, 0, 2], 4000, [10, 44, 9, 1], 53));
        assert_eq!(received(&open.host_peer), None);
        assert_eq!(o.project.counters.dropped(DropReason::NoRoute), 1);
        // The gateway (inside the prefix) is the host: outside, not an
        // unknown vassal address.
        let gw = bench(
            "[default]\nout = \"deny\"\nin = \"deny\"\n[[in]]\naction = \"allow\"\npeer = \"outside\"\n",
            "",
        );
        let mut view = crate::state::remote::RemoteView::new(
            vec!["10.9.0.0/16".parse().unwrap()],
            ["10.9.1.0/24".parse().unwrap()],
            Default::default(),
        );
        view.identities.clear();
        gw.router.remote.publish(view);
        let (g, g_peer) = gw.vassal("alice", 2);
        let from_gateway = udp([10, 9, 0, 1], 5000, [10, 9, 0, 2], 7);
        gw.host_sends(&from_gateway);
        assert_eq!(received(&g_peer), Some(from_gateway));
        assert_eq!(g.project.counters.dropped(DropReason::Firewall), 0);
        // And a vassal's packet to the gateway goes to the host, not to
        // no_route.
        let open = bench(OPEN_OUT, "");
        open.router
            .remote
            .publish(crate::state::remote::RemoteView::new(
                vec!["10.9.0.0/16".parse().unwrap()],
                ["10.9.1.0/24".parse().unwrap()],
                Default::default(),
            ));
        let (o, _) = open.vassal("alice", 2);
        let to_gateway = udp([10, 9, 0, 2], 4000, [10, 9, 0, 1], 53);
        open.send(&o, &to_gateway);
        assert_eq!(received(&open.host_peer), Some(to_gateway));
        // A source of the prefix that no host holds is forged.
        b.host_sends(&udp([10, 44, 9, 1], 5000, [10, 9, 0, 2], 7));
        assert_eq!(received(&a_peer), None);
        assert_eq!(b.router.host.dropped(DropReason::Spoofed), 1);
    }

    #[test]
    fn the_clusters_infrastructure_is_closed_to_vassals_whatever_the_rules() {
        let b = bench(OPEN_OUT, "");
        b.router.remote.publish(
            crate::state::remote::RemoteView::new(
                vec!["10.44.0.0/16".parse().unwrap()],
                ["10.44.2.0/24".parse().unwrap()],
                Default::default(),
            )
            .with_infra([
                "198.51.100.11".parse().unwrap(),
                "10.44.2.1".parse().unwrap(),
            ]),
        );
        let (v, _) = b.vassal("alice", 2);
        b.send(&v, &udp([10, 9, 0, 2], 4000, [198, 51, 100, 11], 2379));
        b.send(&v, &udp([10, 9, 0, 2], 4000, [10, 44, 2, 1], 22));
        assert_eq!(received(&b.host_peer), None);
        assert_eq!(v.project.counters.dropped(DropReason::ClusterInfra), 2);
        assert_eq!(v.project.counters.dropped(DropReason::Firewall), 0);
        // Elsewhere the open rules apply.
        let out = udp([10, 9, 0, 2], 4000, [198, 51, 100, 12], 2379);
        b.send(&v, &out);
        assert_eq!(received(&b.host_peer), Some(out));
    }

    #[test]
    fn spoofed_and_malformed_packets_are_dropped_and_counted() {
        let b = bench(OPEN_OUT, "");
        let (v, _) = b.vassal("alice", 2);
        b.send(&v, &udp([10, 9, 0, 3], 1, [203, 0, 113, 1], 53));
        b.send(&v, &[0x45, 0, 0]);
        let c = &v.project.counters;
        assert_eq!(c.dropped(DropReason::Spoofed), 1);
        assert_eq!(c.dropped(DropReason::Malformed), 1);
        assert_eq!(received(&b.host_peer), None);
    }

    #[test]
    fn allowed_packets_reach_the_host_unchanged_and_replies_come_back() {
        let b = bench(OPEN_OUT, "");
        let (v, v_peer) = b.vassal("alice", 2);
        let out = udp([10, 9, 0, 2], 4000, [203, 0, 113, 1], 53);
        b.send(&v, &out);
        assert_eq!(received(&b.host_peer), Some(out.clone()));
        assert_eq!(
            (
                v.project.counters.tx_packets.get(),
                v.project.counters.tx_bytes.get()
            ),
            (1, 36)
        );
        // The reply passes the in chain (default deny) as established...
        let reply = udp([203, 0, 113, 1], 53, [10, 9, 0, 2], 4000);
        b.host_sends(&reply);
        assert_eq!(received(&v_peer), Some(reply));
        assert_eq!(v.project.counters.rx_bytes.get(), 36);
        // ...an unsolicited packet does not.
        b.host_sends(&udp([203, 0, 113, 1], 53, [10, 9, 0, 2], 4001));
        assert_eq!(received(&v_peer), None);
        assert_eq!(v.project.counters.dropped(DropReason::Firewall), 1);
        // Nobody at .77: a host drop; a vassal sending there: its no_route.
        b.host_sends(&udp([203, 0, 113, 1], 53, [10, 9, 0, 77], 1));
        assert_eq!(b.router.host.dropped(DropReason::NoRoute), 1);
        b.send(&v, &udp([10, 9, 0, 2], 1, [10, 9, 0, 77], 1));
        assert_eq!(v.project.counters.dropped(DropReason::NoRoute), 1);
    }

    #[test]
    fn without_established_replies_need_their_own_rule() {
        let b = bench(
            "[default]\nout = \"allow\"\nin = \"deny\"\nestablished = false\n",
            "",
        );
        let (v, v_peer) = b.vassal("alice", 2);
        b.send(&v, &udp([10, 9, 0, 2], 4000, [203, 0, 113, 1], 53));
        assert!(received(&b.host_peer).is_some());
        b.host_sends(&udp([203, 0, 113, 1], 53, [10, 9, 0, 2], 4000));
        assert_eq!(received(&v_peer), None);
        assert_eq!(v.project.counters.dropped(DropReason::Firewall), 1);
        assert_eq!(b.router.flows.len(), 0, "no flows are tracked");
    }

    #[test]
    fn vassals_are_switched_directly_through_both_chains() {
        let rules = "[default]\nout = \"allow\"\nin = \"deny\"\n[[in]]\naction = \"allow\"\nproject = \"bob\"\n";
        let b = bench(rules, "");
        let (alice, alice_peer) = b.vassal("alice", 2);
        let (bob, bob_peer) = b.vassal("bob", 3);
        let to_bob = udp([10, 9, 0, 2], 5000, [10, 9, 0, 3], 7);
        b.send(&alice, &to_bob);
        assert_eq!(received(&bob_peer), Some(hopped(&to_bob)));
        assert_eq!(received(&b.host_peer), None, "never through the host tun");
        // bob's reply passes alice's in chain as established.
        let back = udp([10, 9, 0, 3], 7, [10, 9, 0, 2], 5000);
        b.send(&bob, &back);
        assert_eq!(received(&alice_peer), Some(hopped(&back)));
        // bob opening toward alice: alice's in chain denies, charged to alice.
        b.send(&bob, &udp([10, 9, 0, 3], 9, [10, 9, 0, 2], 9));
        assert_eq!(received(&alice_peer), None);
        assert_eq!(alice.project.counters.dropped(DropReason::Firewall), 1);
    }

    /// `p` one hop further: TTL one less, checksum updated.
    fn hopped(p: &[u8]) -> Vec<u8> {
        let mut head = [0u8; icmp::HOP_HEAD];
        let len = icmp::decrement(p, &mut head);
        let mut q = p.to_vec();
        q[..len].copy_from_slice(&head[..len]);
        q
    }

    const BETWEEN_VASSALS: &str = "[default]\nout = \"allow\"\nin = \"allow\"\n";

    #[test]
    fn the_router_is_a_hop_between_vassals() {
        let b = bench(BETWEEN_VASSALS, "");
        let (alice, alice_peer) = b.vassal("alice", 2);
        let (_bob, bob_peer) = b.vassal("bob", 3);
        let mut p = udp([10, 9, 0, 2], 5000, [10, 9, 0, 3], 7);
        p[8] = 2;
        b.send(&alice, &p);
        let got = received(&bob_peer).unwrap();
        assert_eq!(icmp::hop_limit(&got), 1);
        for ttl in [1, 0] {
            p[8] = ttl;
            b.send(&alice, &p);
            assert_eq!(received(&bob_peer), None, "ttl {ttl} never arrives");
            let te = received(&alice_peer).expect("time exceeded");
            let info = packet::parse(&te).unwrap();
            assert_eq!(info.src, IpAddr::from([10, 9, 0, 1]), "from the gateway");
            assert_eq!((info.proto, te[20]), (packet::proto::ICMP, 11));
            // A time exceeded that itself runs out gets no answer.
            let mut te_out = te.clone();
            te_out[12..20].copy_from_slice(&[10, 9, 0, 2, 10, 9, 0, 3]);
            te_out[8] = 1;
            b.send(&alice, &te_out);
            assert_eq!(received(&alice_peer), None);
        }
        assert_eq!(alice.project.counters.dropped(DropReason::TtlExceeded), 4);
        // Toward the host the kernel is the next hop: unchanged.
        p[8] = 1;
        p[16..20].copy_from_slice(&[203, 0, 113, 1]);
        b.send(&alice, &p);
        assert_eq!(received(&b.host_peer), Some(p));
    }

    /// A port unreachable from `src` to `dst` quoting `quoted`.
    fn unreachable(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + quoted.len();
        let mut p = vec![0x45, 0, 0, total as u8, 0, 0, 0, 0, 64, 1, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(quoted);
        p
    }

    #[test]
    fn only_who_may_speak_for_a_flow_sends_its_errors() {
        let b = bench(OPEN_OUT, "");
        let (alice, alice_peer) = b.vassal("alice", 2);
        let (mallory, _) = b.vassal("mallory", 3);
        let out = udp([10, 9, 0, 2], 4000, [203, 0, 113, 1], 53);
        b.send(&alice, &out);
        assert!(received(&b.host_peer).is_some());
        // Another vassal quoting alice's flow: an ordinary packet, denied
        // by alice's in chain.
        b.send(&mallory, &unreachable([10, 9, 0, 3], [10, 9, 0, 2], &out));
        assert_eq!(received(&alice_peer), None);
        assert_eq!(alice.project.counters.dropped(DropReason::Firewall), 1);
        // A hop beyond the host tun may.
        let real = unreachable([198, 51, 100, 7], [10, 9, 0, 2], &out);
        b.host_sends(&real);
        assert_eq!(received(&alice_peer), Some(real));
        // The host about a flow between vassals may not.
        let to_mallory = udp([10, 9, 0, 2], 4000, [10, 9, 0, 3], 53);
        b.host_sends(&unreachable([198, 51, 100, 7], [10, 9, 0, 2], &to_mallory));
        assert_eq!(received(&alice_peer), None);
        assert_eq!(alice.project.counters.dropped(DropReason::Firewall), 2);
    }

    #[test]
    fn link_local_traffic_is_not_spoofing() {
        let b = bench(OPEN_OUT, "");
        let (v, _) = b.vassal("alice", 2);
        // A router solicitation: fe80::1 -> ff02::2, ICMPv6 133.
        let mut rs = vec![0x60, 0, 0, 0, 0, 8, 58, 255];
        rs.extend_from_slice(&"fe80::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        rs.extend_from_slice(&"ff02::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        rs.extend_from_slice(&[133, 0, 0, 0, 0, 0, 0, 0]);
        b.send(&v, &rs);
        let c = &v.project.counters;
        assert_eq!(
            (
                c.dropped(DropReason::LinkLocal),
                c.dropped(DropReason::Spoofed)
            ),
            (1, 0)
        );
        assert_eq!(received(&b.host_peer), None);
    }

    #[test]
    fn full_flow_table_and_full_queues_drop_without_blocking() {
        let b = bench(OPEN_OUT, "[flows]\nmax_per_project = 2\n");
        let (alice, _) = b.vassal("alice", 2);
        let (bob, _) = b.vassal("bob", 3);
        for port in 1..=3 {
            b.send(&alice, &udp([10, 9, 0, 2], port, [203, 0, 113, 1], 53));
        }
        assert_eq!(alice.project.counters.dropped(DropReason::FlowTableFull), 1);
        b.send(&bob, &udp([10, 9, 0, 3], 1, [203, 0, 113, 1], 53));
        assert_eq!(bob.project.counters.dropped(DropReason::FlowTableFull), 0);
        // Nobody reads the host side: the socket buffer fills, the router
        // counts queue_full instead of blocking.
        for _ in 0..10_000 {
            b.send(&alice, &udp([10, 9, 0, 2], 1, [203, 0, 113, 1], 53));
            if alice.project.counters.dropped(DropReason::QueueFull) > 0 {
                break;
            }
        }
        assert!(alice.project.counters.dropped(DropReason::QueueFull) > 0);
    }

    #[test]
    fn a_reload_applies_to_the_next_batch() {
        let dir = std::env::temp_dir().join(format!("vr-dp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rules.toml");
        std::fs::write(&file, OPEN_OUT).unwrap();
        let mut b = bench(OPEN_OUT, "");
        b.router.firewall = Firewall::load(Some(file.clone())).unwrap();
        let (v, _) = b.vassal("alice", 2);
        let mut snap = Snapshot::take(&b.router.firewall, Some("alice"));
        std::fs::write(&file, "[default]\nout = \"deny\"\n").unwrap();
        b.router.firewall.reload().unwrap();
        snap.refresh(&b.router.firewall, Some("alice"));
        b.router.from_vassal(
            &v,
            &snap,
            &b.router.registry.view(),
            Frame::plain(&udp([10, 9, 0, 2], 1, [203, 0, 113, 1], 53)),
        );
        assert_eq!(v.project.counters.dropped(DropReason::Firewall), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A TCP super-packet of `segments` full 1000-byte segments (plus a
    /// short one) from `src` to `dst`, with its vnet header.
    fn super_packet(src: [u8; 4], dst: [u8; 4]) -> (VnetHdr, Vec<u8>) {
        let data = 3 * 1000 + 10;
        let total = 20 + 20 + data;
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[
            0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 1, 0, 0, 0, 0, 0,
        ]);
        p.resize(total, 7);
        let hdr = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 40,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        };
        (hdr, p)
    }

    #[test]
    fn super_packets_cross_whole_and_count_as_their_segments() {
        let b = bench_with(OPEN_OUT, "", true);
        let (v, _) = b.vassal_with("alice", 2, true);
        let (hdr, pkt) = super_packet([10, 9, 0, 2], [203, 0, 113, 1]);
        let snap = Snapshot::take(&b.router.firewall, Some("alice"));
        b.router.from_vassal(
            &v,
            &snap,
            &b.router.registry.view(),
            Frame { hdr, ip: &pkt },
        );
        let mut expected = hdr.bytes().to_vec();
        expected.extend_from_slice(&pkt);
        let mut buf = vec![0u8; 70_000];
        let got = match tun::read(b.host_peer.as_fd(), &mut buf) {
            Io::Done(n) => &buf[..n],
            other => panic!("nothing reached the host: {other:?}"),
        };
        assert_eq!(got, &expected[..], "header and packet, whole");
        let c = &v.project.counters;
        assert_eq!((c.tx_packets.get(), c.tx_bytes.get()), (4, 3 * 1040 + 50));
        assert_eq!(b.router.host.offloaded.get(), 1);
    }

    #[test]
    fn super_packets_are_cut_for_plain_destinations() {
        let b = bench_with("[default]\nout = \"allow\"\nin = \"allow\"\n", "", true);
        let (v, v_peer) = b.vassal("alice", 2);
        let (hdr, pkt) = super_packet([203, 0, 113, 1], [10, 9, 0, 2]);
        let snap = Snapshot::take(&b.router.firewall, None);
        b.router
            .from_host(&snap, &b.router.registry.view(), Frame { hdr, ip: &pkt });
        let sizes: Vec<usize> = std::iter::from_fn(|| received(&v_peer).map(|p| p.len())).collect();
        assert_eq!(sizes, vec![1040, 1040, 1040, 50]);
        let c = &v.project.counters;
        assert_eq!((c.rx_packets.get(), c.rx_bytes.get()), (4, 3 * 1040 + 50));
        assert_eq!(b.router.host.segmented.get(), 1);
    }
}
