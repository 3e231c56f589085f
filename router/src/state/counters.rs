//! Per-project and router-wide counters. Counter handles are registered once per project
//! (the `counter!` macro with labels allocates) and kept for the router's
//! lifetime, so counters outlive a vassal's reconnects and the datapath only
//! does atomic adds. Each counter is mirrored in a plain atomic so that
//! `vassal-router stats` can read it back without parsing the exposition.

use crate::wire::offload::Wire;
use crossbeam_utils::CachePadded;
use metrics::{counter, gauge, Counter, Gauge};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A firewall chain denied it.
    Firewall,
    /// Its source was not the sending vassal's address.
    Spoofed,
    /// It could not be parsed.
    Malformed,
    /// The destination queue (tun or compat buffer) was full.
    QueueFull,
    /// No vassal holds the destination.
    NoRoute,
    /// The project's flow table is full.
    FlowTableFull,
    /// Its TTL or hop limit ran out at the router (between two vassals).
    TtlExceeded,
    /// IPv6 link-local traffic (link-local or unspecified source, link
    /// scope destination): the kernel's own, never forwarded.
    LinkLocal,
    /// A fragment refused by the fragment table: a later fragment of a
    /// datagram whose first fragment did not pass (or expired), out of
    /// order or overlapping, or a first fragment the table had no room for.
    Fragment,
    /// The destination vassal's `net_in` bucket was empty (ingress is
    /// policed; egress is shaped and never dropped for its limit).
    RateLimit,
    /// With `[cluster]`: sent to the cluster's own infrastructure (an etcd
    /// endpoint, a host's underlay address, another host's gateway),
    /// which no rule can open (docs/cluster.md, "Protecting etcd").
    ClusterInfra,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 11] = [
        DropReason::Firewall,
        DropReason::Spoofed,
        DropReason::Malformed,
        DropReason::QueueFull,
        DropReason::NoRoute,
        DropReason::FlowTableFull,
        DropReason::TtlExceeded,
        DropReason::LinkLocal,
        DropReason::Fragment,
        DropReason::RateLimit,
        DropReason::ClusterInfra,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Firewall => "firewall",
            DropReason::Spoofed => "spoofed",
            DropReason::Malformed => "malformed",
            DropReason::QueueFull => "queue_full",
            DropReason::NoRoute => "no_route",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::LinkLocal => "link_local",
            DropReason::Fragment => "fragment",
            DropReason::RateLimit => "rate_limit",
            DropReason::ClusterInfra => "cluster_infra",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A Prometheus counter with a readable mirror. The mirror has a cache
/// line of its own: a project's counters are written by its own reader
/// (tx) and by whoever delivers to it (rx: the host readers, other
/// vassals), and no two counters should bounce one line between them.
pub struct Count {
    handle: Counter,
    value: CachePadded<AtomicU64>,
}

impl Count {
    fn new(handle: Counter) -> Count {
        Count {
            handle,
            value: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.handle.increment(n);
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `us` microseconds to a counter exported in seconds: the
    /// exporter's counters are integers, so the series gains each whole
    /// second as the mirror (in microseconds) passes it.
    pub fn add_micros(&self, us: u64) {
        let before = self.value.fetch_add(us, Ordering::Relaxed);
        let whole = before.saturating_add(us) / 1_000_000 - before / 1_000_000;
        if whole > 0 {
            self.handle.increment(whole);
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every counter and gauge of one project.
pub struct ProjectCounters {
    /// IP bytes leaving the vassal (forwarded).
    pub tx_bytes: Count,
    /// IP packets leaving the vassal (forwarded).
    pub tx_packets: Count,
    /// IP bytes delivered to the vassal.
    pub rx_bytes: Count,
    /// IP packets delivered to the vassal.
    pub rx_packets: Count,
    dropped: [Count; DropReason::ALL.len()],
    /// Rule blocks (uWSGI modifier2 = 1) refused from its compat peers.
    pub compat_rule_blocks: Count,
    /// `vassal_attached{project}`.
    pub attached: Gauge,
    /// `vassal_flows{project}`.
    pub flows: Gauge,
    /// `vassal_rate_limited_seconds_total{project}`: time its reader
    /// held off its tun, waiting for its `net_out` bucket.
    pub shaped_us: Count,
    /// `vassal_limit_net_out_bytes_per_second{project}`: the `net_out` of
    /// its latest attached vassal, 0 when unlimited.
    pub limit_net_out: Gauge,
    /// `vassal_limit_net_in_bytes_per_second{project}`.
    pub limit_net_in: Gauge,
}

impl ProjectCounters {
    /// Registers the project's series (call once per project).
    pub fn register(project: &str) -> ProjectCounters {
        let p = project.to_owned();
        ProjectCounters {
            tx_bytes: Count::new(counter!("vassal_tx_bytes_total", "project" => p.clone())),
            tx_packets: Count::new(counter!("vassal_tx_packets_total", "project" => p.clone())),
            rx_bytes: Count::new(counter!("vassal_rx_bytes_total", "project" => p.clone())),
            rx_packets: Count::new(counter!("vassal_rx_packets_total", "project" => p.clone())),
            dropped: DropReason::ALL.map(|r| {
                Count::new(counter!("vassal_dropped_packets_total", "project" => p.clone(), "reason" => r.as_str()))
            }),
            compat_rule_blocks: Count::new(counter!("vassal_compat_rule_blocks_total", "project" => p.clone())),
            attached: gauge!("vassal_attached", "project" => p.clone()),
            flows: gauge!("vassal_flows", "project" => p.clone()),
            shaped_us: Count::new(counter!("vassal_rate_limited_seconds_total", "project" => p.clone())),
            limit_net_out: gauge!("vassal_limit_net_out_bytes_per_second", "project" => p.clone()),
            limit_net_in: gauge!("vassal_limit_net_in_bytes_per_second", "project" => p),
        }
    }

    /// Counts `packets` dropped packets (a super-packet counts as its
    /// segments).
    pub fn drop(&self, reason: DropReason, packets: u64) {
        self.dropped[reason.index()].add(packets);
    }

    /// Dropped packets of `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].get()
    }

    /// Counts packets leaving the vassal.
    pub fn tx(&self, sent: Wire) {
        if sent.packets > 0 {
            self.tx_bytes.add(sent.bytes);
            self.tx_packets.add(sent.packets);
        }
    }

    /// Counts packets delivered to the vassal.
    pub fn rx(&self, sent: Wire) {
        if sent.packets > 0 {
            self.rx_bytes.add(sent.bytes);
            self.rx_packets.add(sent.packets);
        }
    }
}

/// Router-wide series, not tied to a project.
pub struct HostCounters {
    dropped: [Count; DropReason::ALL.len()],
    /// `vassal_rules_reload_failures_total`.
    pub reload_failures: Count,
    /// `vassal_rules_reloads_total`.
    pub reloads: Count,
    /// `vassal_flow_table_size`: flows of every project.
    pub flows_total: Gauge,
    /// `vassal_fragment_table_size`: fragmented datagrams in flight.
    pub fragments_total: Gauge,
    /// `vassal_offloaded_packets_total`: super-packets moved whole.
    pub offloaded: Count,
    /// `vassal_segmented_packets_total`: super-packets cut by the router.
    pub segmented: Count,
}

impl HostCounters {
    /// Registers the router-wide series.
    pub fn register() -> HostCounters {
        HostCounters {
            dropped: DropReason::ALL.map(|r| {
                Count::new(counter!("vassal_host_dropped_packets_total", "reason" => r.as_str()))
            }),
            reload_failures: Count::new(counter!("vassal_rules_reload_failures_total")),
            reloads: Count::new(counter!("vassal_rules_reloads_total")),
            flows_total: gauge!("vassal_flow_table_size"),
            fragments_total: gauge!("vassal_fragment_table_size"),
            offloaded: Count::new(counter!("vassal_offloaded_packets_total")),
            segmented: Count::new(counter!("vassal_segmented_packets_total")),
        }
    }

    /// Counts `packets` dropped before a project was known.
    pub fn drop(&self, reason: DropReason, packets: u64) {
        self.dropped[reason.index()].add(packets);
    }

    /// Project-less drops of `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].get()
    }
}

/// Counts a refused attach (rare: the macro's allocation is fine here).
pub fn attach_refused(reason: &'static str) {
    counter!("vassal_attach_refusals_total", "reason" => reason).increment(1);
}
