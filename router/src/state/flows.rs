//! The stateful flow table: which flows an allowed packet opened, so that
//! their replies pass the opposite chain when `established = true`.
//!
//! Sharded so that readers of different vassals do not contend: a flow
//! lives in one of [`SHARDS`] shards, each a small mutex on its own cache
//! line over a map allocated up front, chosen by a keyed hash of the flow's
//! two endpoints taken in a fixed order, so a packet and its reply land on
//! the same entry. A packet probes once ([`FlowTable::track`]): the same
//! locked look-up tells whether it answers a flow and, if not, opens or
//! refreshes the flow once the caller's rules have passed it. The bounds
//! (total and per project) are counters reserved before an insert, exact
//! under any interleaving, and touched only when a flow is created or
//! expires. Expiry is incremental: [`FlowTable::sweep_step`] visits a few
//! shards at a time. Time is a coarse seconds counter ticked by the
//! sweeper, so the datapath makes no clock syscall.
//!
//! Persistence (`state::flow_store`, marked `[persist]` below): with a
//! store, each shard owns a fixed range of the state file's slots (a free
//! list allocated up front) and writes a flow's slot under its own lock
//! when the flow opens, changes second or closes, and frees it on expiry,
//! so the flows outlive the process; [`FlowTable::restore`] takes them
//! back under the same bounds.

use crate::config::FlowConfig;
use crate::state::flow_store::{self, Store};
use crate::wire::flow_file::{Entry, Name};
use crate::wire::packet::{proto, PacketInfo, Quoted, TCP_FIN, TCP_RST};
use crossbeam_utils::CachePadded;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Shards of the table (a power of two).
pub const SHARDS: usize = 64;

/// Projects the table can charge flows to (slots `0..MAX_SLOTS`); a
/// project beyond opens no flow.
pub const MAX_SLOTS: usize = 1 << 16;

/// Per-project counters are allocated by chunks of this many slots.
const SLOT_CHUNK: usize = 64;

/// A flow's identity, its endpoints in a fixed order: for TCP, UDP and
/// other protocols the smaller (address, port) first, so both directions
/// share it; for an ICMP echo flow the requester first (the identifier as
/// both ports), so two hosts pinging each other hold two flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Canon {
    proto: u8,
    a: IpAddr,
    b: IpAddr,
    a_port: u16,
    b_port: u16,
}

/// A key with its hash computed once: the shard and the map both use it.
#[derive(Debug, Clone, Copy)]
struct Hashed {
    hash: u64,
    key: Canon,
}

impl Hash for Hashed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialEq for Hashed {
    fn eq(&self, other: &Hashed) -> bool {
        self.key == other.key
    }
}

impl Eq for Hashed {}

/// Hands a [`Hashed`] key's precomputed hash to the map unchanged.
#[derive(Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only write_u64 is used by Hashed; fold anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<Hashed, Flow, BuildHasherDefault<PassHasher>>;

/// A project slot: its flow counter and (for the state file) its name.
#[derive(Default)]
struct SlotInfo {
    count: AtomicU32,
    name: OnceLock<Name>,
}

/// The counters of [`SLOT_CHUNK`] consecutive slots.
type SlotChunk = Box<[CachePadded<SlotInfo>]>;

/// No state file slot (no store, or the shard's range is used up).
const NO_FILE: u32 = u32::MAX;

/// One shard: its flows and (`[persist]`) its free state file slots.
struct Shard {
    map: Map,
    free: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    slot: u32,
    last_seen: u32,
    /// Whether the opening packet came from endpoint `a`.
    opener_is_a: bool,
    tcp_closing: bool,
    /// `[persist]` Its slot in the state file, or [`NO_FILE`].
    file: u32,
}

/// A stored flow was not restored ([`FlowTable::restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The same flow is already in the table.
    #[error("duplicate flow")]
    Duplicate,
    /// The project's (or the whole table's) bound is reached.
    #[error("over flows.max_per_project or flows.max_total")]
    Full,
}

/// A new flow could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The project's (or the whole table's) bound is reached.
    #[error("flow table full (flows.max_per_project or flows.max_total reached)")]
    Full,
}

/// What the table made of a packet ([`FlowTable::track`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen<T> {
    /// A reply of a known flow (or an ICMP error about one): it skips the
    /// rules. The flow is refreshed.
    Reply,
    /// Not a reply: the caller's decision, and the flow it opened (or
    /// refreshed) if the decision asked for one.
    Decided(T),
    /// Not a reply, the decision asked for a flow and the project's (or
    /// the table's) bound refused it.
    Full,
}

/// Where a packet falls in the table.
struct Place {
    key: Hashed,
    /// Whether the packet's source is endpoint `a`.
    from_a: bool,
    /// Whether it may open a flow (ICMP: echo requests only).
    opens: bool,
    /// Whether it may answer a flow (ICMP: echo replies only).
    answers: bool,
}

/// The flow table.
pub struct FlowTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Flows charged to each slot, by chunks allocated at attach.
    per_slot: Box<[OnceLock<SlotChunk>]>,
    total: CachePadded<AtomicUsize>,
    hasher: RandomState,
    config: FlowConfig,
    now: AtomicU32,
    /// The next shard the incremental sweep visits.
    cursor: AtomicUsize,
    /// `[persist]` The state file, if any.
    store: Option<Store>,
}

impl FlowTable {
    /// An empty table with room for `config.max_total` flows, spread over
    /// the shards with headroom so that no insert allocates.
    pub fn new(config: FlowConfig) -> FlowTable {
        FlowTable::with_store(config, None)
    }

    /// An empty table that writes its flows to `store` as they change
    /// (`[persist]`).
    pub fn with_store(config: FlowConfig, store: Option<Store>) -> FlowTable {
        let room = flow_store::per_shard(&config, SHARDS);
        let files = store.as_ref().map_or(0, |s| s.per_shard());
        FlowTable {
            shards: (0..SHARDS)
                .map(|i| {
                    // Popped from the end: the range's first slot first.
                    let first = (i * files) as u32;
                    CachePadded::new(Mutex::new(Shard {
                        map: Map::with_capacity_and_hasher(room, BuildHasherDefault::default()),
                        free: (first..first + files as u32).rev().collect(),
                    }))
                })
                .collect(),
            per_slot: (0..MAX_SLOTS / SLOT_CHUNK)
                .map(|_| OnceLock::new())
                .collect(),
            total: CachePadded::new(AtomicUsize::new(0)),
            hasher: RandomState::new(),
            config,
            now: AtomicU32::new(0),
            cursor: AtomicUsize::new(0),
            store,
        }
    }

    /// Makes room for the per-project counter of `slot`, project `name`
    /// (done at attach, never on the datapath). A slot beyond
    /// [`MAX_SLOTS`] gets none: its project opens no flow.
    pub fn ensure_slot(&self, slot: u32, name: &str) {
        if let Some(chunk) = self.per_slot.get(slot as usize / SLOT_CHUNK) {
            let chunk = chunk.get_or_init(|| {
                (0..SLOT_CHUNK)
                    .map(|_| CachePadded::new(SlotInfo::default()))
                    .collect()
            });
            if let (Some(info), Some(name)) =
                (chunk.get(slot as usize % SLOT_CHUNK), Name::new(name))
            {
                let _ = info.name.set(name);
            }
        }
    }

    fn info(&self, slot: u32) -> Option<&SlotInfo> {
        let chunk = self.per_slot.get(slot as usize / SLOT_CHUNK)?.get()?;
        chunk.get(slot as usize % SLOT_CHUNK).map(|c| &**c)
    }

    /// The flow counter of `slot`, if made room for.
    fn quota(&self, slot: u32) -> Option<&AtomicU32> {
        self.info(slot).map(|i| &i.count)
    }

    /// `[persist]` Writes `flow` to its state file slot, if it has one.
    fn save(&self, key: &Canon, flow: &Flow) {
        let (Some(store), Some(project)) = (
            self.store.as_ref().filter(|_| flow.file != NO_FILE),
            self.info(flow.slot).and_then(|i| i.name.get()),
        ) else {
            return;
        };
        store.write(
            flow.file,
            &Entry {
                proto: key.proto,
                a: key.a,
                b: key.b,
                a_port: key.a_port,
                b_port: key.b_port,
                opener_is_a: flow.opener_is_a,
                tcp_closing: flow.tcp_closing,
                last_seen: flow.last_seen,
                project: *project,
            },
        );
    }

    /// `[persist]` Takes a state file slot for a new flow of `shard`.
    fn take_file(&self, shard: &mut Shard) -> u32 {
        if self.store.is_some() {
            shard.free.pop().unwrap_or(NO_FILE)
        } else {
            NO_FILE
        }
    }

    fn shard(&self, key: &Hashed) -> MutexGuard<'_, Shard> {
        // Bits the map uses neither for its buckets (low) nor its tags
        // (top seven).
        let i = (key.hash >> 32) as usize & (SHARDS - 1);
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert/remove), so keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hashed(&self, key: Canon) -> Hashed {
        Hashed {
            hash: self.hasher.hash_one(key),
            key,
        }
    }

    /// Where `p` (not an ICMP error) falls, `None` for ICMP messages that
    /// are neither echo requests nor replies (not tracked).
    fn place(&self, p: &PacketInfo) -> Option<Place> {
        if is_icmp(p.proto) {
            let (request, key) = if p.icmp_echo_request {
                (true, (p.src, p.dst, p.src_port, p.dst_port))
            } else if p.icmp_echo_reply {
                (false, (p.dst, p.src, p.dst_port, p.src_port))
            } else {
                return None;
            };
            let (a, b, a_port, b_port) = key;
            return Some(Place {
                key: self.hashed(Canon {
                    proto: p.proto,
                    a,
                    b,
                    a_port,
                    b_port,
                }),
                from_a: request,
                opens: request,
                answers: !request,
            });
        }
        let from_a = (p.src, p.src_port) <= (p.dst, p.dst_port);
        let (a, b, a_port, b_port) = if from_a {
            (p.src, p.dst, p.src_port, p.dst_port)
        } else {
            (p.dst, p.src, p.dst_port, p.src_port)
        };
        Some(Place {
            key: self.hashed(Canon {
                proto: p.proto,
                a,
                b,
                a_port,
                b_port,
            }),
            from_a,
            opens: true,
            answers: true,
        })
    }

    /// Whether a flow exists that the packet `q` (quoted by an ICMP error)
    /// belongs to, in either direction.
    fn knows(&self, q: &Quoted) -> bool {
        let forward = (q.src, q.dst, q.src_port, q.dst_port);
        let backward = (q.dst, q.src, q.dst_port, q.src_port);
        let keys: &[_] = if is_icmp(q.proto) {
            // An echo flow is keyed by its requester, who may be either.
            &[forward, backward]
        } else if (q.src, q.src_port) <= (q.dst, q.dst_port) {
            &[forward]
        } else {
            &[backward]
        };
        keys.iter().any(|&(a, b, a_port, b_port)| {
            let key = self.hashed(Canon {
                proto: q.proto,
                a,
                b,
                a_port,
                b_port,
            });
            self.shard(&key).map.contains_key(&key)
        })
    }

    /// Advances the coarse clock to `secs` since start.
    pub fn tick(&self, secs: u32) {
        self.now.store(secs, Ordering::Relaxed);
    }

    /// The datapath's one probe for packet `p` of project `slot`. When
    /// `relate` and `p` answers a known flow (or is an ICMP error quoting
    /// one of its packets, sent to that packet's source), it is a
    /// [`Seen::Reply`]. Otherwise `decide` runs (under the shard's lock:
    /// keep it short) and returns the caller's verdict and whether the
    /// packet should open its flow; then the flow is opened or refreshed
    /// ([`Seen::Decided`]), or the bound refuses it ([`Seen::Full`]).
    pub fn track<T>(
        &self,
        p: &PacketInfo,
        relate: bool,
        slot: u32,
        decide: impl FnOnce() -> (T, bool),
    ) -> Seen<T> {
        if let Some(q) = p.quoted {
            // An ICMP error about a packet of a known flow, in either
            // direction, is related to it (path MTU discovery needs this).
            // It must quote a packet its recipient sent: nobody may use a
            // third party's flow to slip errors past the rules. Errors
            // open no flow.
            if relate && q.src == p.dst && self.knows(&q) {
                return Seen::Reply;
            }
            return Seen::Decided(decide().0);
        }
        let Some(place) = self.place(p) else {
            return Seen::Decided(decide().0);
        };
        let now = self.now.load(Ordering::Relaxed);
        let closing = p.proto == proto::TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let mut shard = self.shard(&place.key);
        if let Some(flow) = shard.map.get_mut(&place.key) {
            if relate && place.answers && flow.opener_is_a != place.from_a {
                self.refresh(&place.key.key, flow, now, closing);
                return Seen::Reply;
            }
        }
        let (verdict, open) = decide();
        if !open || !place.opens {
            return Seen::Decided(verdict);
        }
        if let Some(flow) = shard.map.get_mut(&place.key) {
            self.refresh(&place.key.key, flow, now, closing);
            return Seen::Decided(verdict);
        }
        if !self.reserve(slot) {
            return Seen::Full;
        }
        let flow = Flow {
            slot,
            last_seen: now,
            opener_is_a: place.from_a,
            tcp_closing: closing,
            file: self.take_file(&mut shard),
        };
        self.save(&place.key.key, &flow);
        shard.map.insert(place.key, flow);
        Seen::Decided(verdict)
    }

    /// Marks `flow` seen at `now`; `[persist]` rewrites its slot when that
    /// changed anything (at most once a second: the clock is coarse).
    fn refresh(&self, key: &Canon, flow: &mut Flow, now: u32, closing: bool) {
        if flow.last_seen != now || (closing && !flow.tcp_closing) {
            flow.last_seen = now;
            flow.tcp_closing |= closing;
            self.save(key, flow);
        }
    }

    /// `[persist]` Puts the state file in place of the previous one (once
    /// the restore is done); nothing without a store.
    pub fn publish_store(&self) -> Result<(), flow_store::FlowStoreError> {
        self.store.as_ref().map_or(Ok(()), Store::publish)
    }

    /// `[persist]` Puts back a flow read from a previous process's state
    /// file (already checked: `flow_store::check`), charged to `slot`,
    /// under the same bounds as a new flow.
    pub fn restore(&self, e: &Entry, slot: u32) -> Result<(), RestoreError> {
        let key = self.hashed(Canon {
            proto: e.proto,
            a: e.a,
            b: e.b,
            a_port: e.a_port,
            b_port: e.b_port,
        });
        let mut shard = self.shard(&key);
        if shard.map.contains_key(&key) {
            return Err(RestoreError::Duplicate);
        }
        if !self.reserve(slot) {
            return Err(RestoreError::Full);
        }
        let flow = Flow {
            slot,
            last_seen: e.last_seen,
            opener_is_a: e.opener_is_a,
            tcp_closing: e.tcp_closing,
            file: self.take_file(&mut shard),
        };
        self.save(&key.key, &flow);
        shard.map.insert(key, flow);
        Ok(())
    }

    /// Takes a place for a new flow of `slot` under both bounds.
    fn reserve(&self, slot: u32) -> bool {
        let Some(quota) = self.quota(slot) else {
            return false;
        };
        let max = self.config.max_per_project;
        if quota
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                ((n as usize) < max).then_some(n + 1)
            })
            .is_err()
        {
            return false;
        }
        let max = self.config.max_total;
        if self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            quota.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether `p` is a reply of a known flow; refreshes that flow. ICMP
    /// echo requests are never replies. (The datapath uses [`Self::track`].)
    pub fn is_reply(&self, p: &PacketInfo) -> bool {
        matches!(self.track(p, true, 0, || ((), false)), Seen::Reply)
    }

    /// Opens (or refreshes) the flow `p` starts, charged to project `slot`,
    /// whether or not it answers a flow. (The datapath uses [`Self::track`].)
    pub fn open(&self, p: &PacketInfo, slot: u32) -> Result<(), OpenError> {
        match self.track(p, false, slot, || ((), true)) {
            Seen::Full => Err(OpenError::Full),
            _ => Ok(()),
        }
    }

    /// Removes idle flows from the next `shards` shards (round robin);
    /// returns the table size. Each shard is locked on its own, so a
    /// reader waits at most for one shard's pass.
    pub fn sweep_step(&self, shards: usize) -> usize {
        let now = self.now.load(Ordering::Relaxed);
        let c = &self.config;
        for _ in 0..shards.min(SHARDS) {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut guard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
            let Shard { map, free } = &mut *guard;
            let mut removed = 0;
            map.retain(|key, flow| {
                let timeout = flow_store::timeout(c, key.key.proto, flow.tcp_closing);
                let keep = u64::from(now.saturating_sub(flow.last_seen)) < timeout;
                if !keep {
                    removed += 1;
                    if let Some(n) = self.quota(flow.slot) {
                        n.fetch_sub(1, Ordering::Relaxed);
                    }
                    // [persist] Free its slot (the free list has room:
                    // it was allocated with every slot of the range).
                    if let (Some(store), true) = (&self.store, flow.file != NO_FILE) {
                        store.free(flow.file);
                        free.push(flow.file);
                    }
                }
                keep
            });
            drop(guard);
            self.total.fetch_sub(removed, Ordering::Relaxed);
        }
        self.len()
    }

    /// Removes idle flows from every shard, one shard at a time; returns
    /// the table size.
    pub fn sweep(&self) -> usize {
        self.sweep_step(SHARDS)
    }

    /// Flows charged to `slot`.
    pub fn count(&self, slot: u32) -> usize {
        self.quota(slot)
            .map_or(0, |n| n.load(Ordering::Relaxed) as usize)
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn is_icmp(p: u8) -> bool {
    p == proto::ICMP || p == proto::ICMPV6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_project: usize) -> FlowConfig {
        FlowConfig {
            max_total: 10,
            max_per_project: per_project,
            tcp_timeout: 100,
            tcp_closed_timeout: 5,
            udp_timeout: 30,
            icmp_timeout: 10,
        }
    }

    fn udp(src: &str, sp: u16, dst: &str, dp: u16) -> PacketInfo {
        PacketInfo::new(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            proto::UDP,
            sp,
            dp,
        )
    }

    #[test]
    fn replies_of_open_flows_are_recognised() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        let out = udp("10.0.0.2", 1000, "203.0.113.1", 53);
        let back = udp("203.0.113.1", 53, "10.0.0.2", 1000);
        assert!(!t.is_reply(&back));
        t.open(&out, 0).unwrap();
        assert!(t.is_reply(&back));
        assert!(!t.is_reply(&out), "the opening direction is not a reply");
        assert!(!t.is_reply(&udp("203.0.113.1", 53, "10.0.0.2", 1001)));
    }

    #[test]
    fn full_project_does_not_block_others() {
        let t = FlowTable::new(cfg(2));
        // an unregistered slot opens nothing
        t.open(&udp("10.0.0.2", 1, "203.0.113.1", 53), 0)
            .unwrap_err();
        t.ensure_slot(1, "p1");
        t.open(&udp("10.0.0.2", 1, "203.0.113.1", 53), 0).unwrap();
        t.open(&udp("10.0.0.2", 2, "203.0.113.1", 53), 0).unwrap();
        assert_eq!(
            t.open(&udp("10.0.0.2", 3, "203.0.113.1", 53), 0),
            Err(OpenError::Full)
        );
        // refreshing an existing flow still works when full
        t.open(&udp("10.0.0.2", 1, "203.0.113.1", 53), 0).unwrap();
        t.open(&udp("10.0.0.3", 3, "203.0.113.1", 53), 1).unwrap();
        assert_eq!((t.count(0), t.count(1), t.len()), (2, 1, 3));
    }

    #[test]
    fn idle_flows_expire_by_protocol() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        t.open(&udp("10.0.0.2", 1, "203.0.113.1", 53), 0).unwrap();
        let mut syn = udp("10.0.0.2", 2, "203.0.113.1", 80);
        syn.proto = proto::TCP;
        t.open(&syn, 0).unwrap();
        t.tick(29);
        assert_eq!(t.sweep(), 2);
        t.tick(30);
        assert_eq!(t.sweep(), 1);
        let mut fin = udp("203.0.113.1", 80, "10.0.0.2", 2);
        fin.proto = proto::TCP;
        fin.tcp_flags = TCP_FIN;
        assert!(t.is_reply(&fin));
        t.tick(35);
        assert_eq!(t.sweep(), 0);
        assert_eq!(t.count(0), 0);
    }

    #[test]
    fn icmp_echo_flows() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        let mut req = udp("10.0.0.2", 7, "203.0.113.1", 7);
        req.proto = proto::ICMP;
        req.icmp_echo_request = true;
        let mut rep = udp("203.0.113.1", 7, "10.0.0.2", 7);
        rep.proto = proto::ICMP;
        rep.icmp_echo_reply = true;
        assert!(!t.is_reply(&rep));
        t.open(&req, 0).unwrap();
        assert!(t.is_reply(&rep));
        assert!(!t.is_reply(&req), "a request is never a reply");
        // Identifier 0 (issue 11, item 6): the reply matches like any other,
        // but a message without identifier (ports 0 too) does not.
        let (mut req0, mut rep0) = (req, rep);
        (req0.src_port, req0.dst_port, rep0.src_port, rep0.dst_port) = (0, 0, 0, 0);
        t.open(&req0, 0).unwrap();
        assert!(t.is_reply(&rep0));
        let mut other = rep0;
        other.icmp_echo_reply = false;
        assert!(!t.is_reply(&other), "not an echo reply");
    }

    #[test]
    fn icmp_errors_about_a_flow_are_related() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        let out = udp("10.0.0.2", 1000, "203.0.113.1", 53);
        t.open(&out, 0).unwrap();
        let mut err = udp("198.51.100.7", 0, "10.0.0.2", 0);
        assert!(!t.is_reply(&err), "not an error: no quote");
        err.proto = proto::ICMP;
        err.quoted = Some(crate::wire::packet::Quoted {
            src: out.src,
            dst: out.dst,
            proto: out.proto,
            src_port: out.src_port,
            dst_port: out.dst_port,
        });
        assert!(t.is_reply(&err));
        err.quoted = err
            .quoted
            .map(|q| crate::wire::packet::Quoted { dst_port: 54, ..q });
        assert!(!t.is_reply(&err));
    }

    #[test]
    fn bounds_hold_exactly_under_concurrent_openers() {
        let t = std::sync::Arc::new(FlowTable::new(FlowConfig {
            max_total: 1000,
            ..cfg(300)
        }));
        for slot in 0..4 {
            t.ensure_slot(slot, &format!("p{slot}"));
        }
        // Four projects on four threads, each trying 500 distinct flows:
        // every project stops at exactly its bound; the total at 1000.
        let threads: Vec<_> = (0..4u32)
            .map(|slot| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || {
                    let src = format!("10.0.{slot}.2");
                    (0..500u16)
                        .filter(|&port| {
                            t.open(&udp(&src, 1000 + port, "203.0.113.1", 53), slot)
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        let opened: Vec<usize> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(opened.iter().sum::<usize>(), 1000, "{opened:?}");
        assert!(opened.iter().all(|&n| n <= 300), "{opened:?}");
        assert_eq!(t.len(), 1000);
        assert_eq!((0..4).map(|s| t.count(s)).sum::<usize>(), 1000);
        // A full table still recognises replies and refreshes flows.
        assert!(t.is_reply(&udp("203.0.113.1", 53, "10.0.0.2", 1000)));
    }

    #[test]
    fn replies_and_openers_share_one_entry_in_one_shard() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        let out = udp("10.0.0.2", 1000, "203.0.113.1", 53);
        let back = udp("203.0.113.1", 53, "10.0.0.2", 1000);
        // One probe: the opening packet is decided and opens its flow.
        let mut decided = 0;
        let seen = t.track(&out, true, 0, || {
            decided += 1;
            ("allowed", true)
        });
        assert_eq!((seen, decided), (Seen::Decided("allowed"), 1));
        // Its reply is a reply without a decision.
        assert_eq!(
            t.track(&back, true, 0, || unreachable!()),
            Seen::<()>::Reply
        );
        // Not related (an ICMP error from the wrong sender): decided.
        assert_eq!(t.track(&back, false, 0, || (1, false)), Seen::Decided(1));
        // A refused decision opens nothing.
        let other = udp("10.0.0.2", 1001, "203.0.113.1", 53);
        assert_eq!(t.track(&other, true, 0, || (0, false)), Seen::Decided(0));
        assert_eq!(t.len(), 1);
        let shards_with_flows = t
            .shards
            .iter()
            .filter(|s| !s.lock().unwrap().map.is_empty())
            .count();
        assert_eq!(shards_with_flows, 1);
    }

    #[test]
    fn the_sweep_is_incremental() {
        let t = FlowTable::new(FlowConfig {
            max_total: 4096,
            ..cfg(4096)
        });
        t.ensure_slot(0, "p0");
        for port in 0..2048u16 {
            t.open(&udp("10.0.0.2", port, "203.0.113.1", 53), 0)
                .unwrap();
        }
        t.tick(1000);
        // One shard a step: a step removes about 1/SHARDS of the table,
        // never all of it, and SHARDS steps remove everything.
        let left = t.sweep_step(1);
        assert!(left < 2048 && left > 2048 - 2048 / SHARDS * 3, "{left}");
        let mut steps = 1;
        while !t.is_empty() {
            t.sweep_step(1);
            steps += 1;
            assert!(steps <= SHARDS);
        }
        assert_eq!(t.count(0), 0);
        // Expired flows free their project's places.
        t.open(&udp("10.0.0.2", 1, "203.0.113.1", 53), 0).unwrap();
    }

    #[test]
    fn two_hosts_pinging_each_other_hold_two_flows() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0, "p0");
        let echo = |src: &str, dst: &str, request: bool| {
            let mut p = udp(src, 7, dst, 7);
            p.proto = proto::ICMP;
            p.icmp_echo_request = request;
            p.icmp_echo_reply = !request;
            p
        };
        t.open(&echo("10.0.0.2", "10.0.0.3", true), 0).unwrap();
        assert!(!t.is_reply(&echo("10.0.0.2", "10.0.0.3", false)));
        t.open(&echo("10.0.0.3", "10.0.0.2", true), 0).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.is_reply(&echo("10.0.0.3", "10.0.0.2", false)));
        assert!(t.is_reply(&echo("10.0.0.2", "10.0.0.3", false)));
    }
}
