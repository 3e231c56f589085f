//! The fragment table: every fragment of a datagram follows the verdict of
//! its first fragment.
//!
//! Only the first fragment holds the transport header, so only it goes
//! through anti-spoofing, both chains and the flow table like any packet.
//! When it passes, the datapath records its datagram here, keyed by
//! (source, destination, protocol, identification) and charged to the
//! sender's project (the recipient's for packets from the host tun, as the
//! flow table does). A later fragment passes only when it continues a
//! recorded datagram from the same side, exactly where the fragments
//! before it ended; the last fragment (no "more fragments" flag) removes
//! the entry. Everything else is dropped and counted `fragment`: a later
//! fragment whose first fragment was denied, lost, never sent or expired;
//! one that overlaps or leaves a gap; a first fragment for which the table
//! has no room.
//!
//! Out of order means dropped, nothing is held: each tun is read by one
//! reader in the order its kernel queued the packets, Linux emits the
//! fragments of a datagram in order (`ip_do_fragment`,
//! `ip6_fragment`), the host tun's queue is chosen by a hash that is the
//! same for every fragment of a datagram (no ports), and the host's
//! conntrack reassembles and re-fragments in order when NAT is on. Holding
//! would cost a copy and buffers a tenant could fill, for a case that loses
//! one datagram the transport already has to resend. The strict order also
//! refuses overlapping fragments outright, the other way to rewrite a
//! header the first fragment was judged on.
//!
//! Unfragmented traffic never touches this table (the datapath checks the
//! parsed fragment fields first); the table has its own lock, is allocated
//! at full capacity up front, and reads a coarse clock the sweeper ticks.

use crate::config::FragmentConfig;
use crate::wire::packet::{Fragment, PacketInfo};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Identity of a fragmented datagram (RFC 791 / RFC 8200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

impl Key {
    fn of(p: &PacketInfo, f: &Fragment) -> Key {
        Key {
            src: p.src,
            dst: p.dst,
            proto: f.proto,
            id: f.id,
        }
    }
}

/// A datagram whose first fragment passed.
#[derive(Debug, Clone, Copy)]
struct Train {
    slot: u32,
    from_host: bool,
    /// Offset the next fragment must start at.
    next: u32,
    last_seen: u32,
}

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The project's (or the whole table's) bound is reached.
    #[error("fragment table full (fragments.max_per_project or fragments.max_total reached)")]
    Full,
    /// No first fragment of this datagram passed from this side (denied,
    /// lost, never sent, or expired).
    #[error("no passed first fragment")]
    Orphan,
    /// It does not start where the fragments before it ended: out of
    /// order, overlapping or after a gap.
    #[error("fragment out of order or overlapping")]
    OutOfOrder,
}

struct Inner {
    map: HashMap<Key, Train>,
    per_slot: Vec<u32>,
}

/// The fragment table.
pub struct FragmentTable {
    inner: Mutex<Inner>,
    config: FragmentConfig,
    now: AtomicU32,
}

impl FragmentTable {
    /// An empty table with room for `config.max_total` datagrams.
    pub fn new(config: FragmentConfig) -> FragmentTable {
        FragmentTable {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(config.max_total),
                per_slot: Vec::new(),
            }),
            config,
            now: AtomicU32::new(0),
        }
    }

    /// Makes room for the per-project counter of `slot` (done at attach,
    /// never on the datapath).
    pub fn ensure_slot(&self, slot: u32) {
        let mut inner = self.lock();
        let want = slot as usize + 1;
        if inner.per_slot.len() < want {
            inner.per_slot.resize(want, 0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a single insert, remove or field write: a panic
        // elsewhere cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the coarse clock to `secs` since start.
    pub fn tick(&self, secs: u32) {
        self.now.store(secs, Ordering::Relaxed);
    }

    /// Whether `p` is a later fragment that follows a first fragment that
    /// passed (`Ok(true)`: it skips the rules like its first fragment
    /// did); `Ok(false)` without a lock for every other packet.
    #[inline]
    pub fn follows(&self, p: &PacketInfo, from_host: bool) -> Result<bool, Refused> {
        match &p.fragment {
            Some(f) if !f.is_first() => self.follow(p, f, from_host).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Records `p` when it is a first fragment about to pass, charged to
    /// project `slot`; nothing (and no lock) for every other packet.
    #[inline]
    pub fn passing(&self, p: &PacketInfo, slot: u32, from_host: bool) -> Result<(), Refused> {
        match &p.fragment {
            Some(f) if f.is_first() => self.admit(p, f, slot, from_host),
            _ => Ok(()),
        }
    }

    /// Records that the first fragment `f` of `p` passed, so that the rest
    /// of its datagram may follow; charged to project `slot`. A first
    /// fragment of a datagram already recorded restarts it (it passed the
    /// rules itself).
    pub fn admit(
        &self,
        p: &PacketInfo,
        f: &Fragment,
        slot: u32,
        from_host: bool,
    ) -> Result<(), Refused> {
        let key = Key::of(p, f);
        let train = Train {
            slot,
            from_host,
            next: f.len,
            last_seen: self.now.load(Ordering::Relaxed),
        };
        let mut inner = self.lock();
        let Inner { map, per_slot } = &mut *inner;
        if let Some(old) = map.remove(&key) {
            uncharge(per_slot, old.slot);
        }
        if map.len() >= self.config.max_total {
            return Err(Refused::Full);
        }
        let used = per_slot.get_mut(slot as usize).ok_or(Refused::Full)?;
        if *used as usize >= self.config.max_per_project {
            return Err(Refused::Full);
        }
        *used += 1;
        map.insert(key, train);
        Ok(())
    }

    /// Whether the later fragment `f` of `p`, read from the host tun when
    /// `from_host`, continues a datagram whose first fragment passed. The
    /// last fragment ends the datagram's entry.
    pub fn follow(&self, p: &PacketInfo, f: &Fragment, from_host: bool) -> Result<(), Refused> {
        let key = Key::of(p, f);
        let now = self.now.load(Ordering::Relaxed);
        let mut inner = self.lock();
        let Inner { map, per_slot } = &mut *inner;
        let train = match map.get_mut(&key) {
            Some(t) if t.from_host == from_host => t,
            _ => return Err(Refused::Orphan),
        };
        if f.offset != train.next {
            return Err(Refused::OutOfOrder);
        }
        if f.more {
            train.next = train.next.saturating_add(f.len);
            train.last_seen = now;
        } else {
            let slot = train.slot;
            map.remove(&key);
            uncharge(per_slot, slot);
        }
        Ok(())
    }

    /// Removes datagrams idle for `fragments.timeout`; returns the table
    /// size.
    pub fn sweep(&self) -> usize {
        let now = self.now.load(Ordering::Relaxed);
        let timeout = self.config.timeout;
        let mut inner = self.lock();
        let Inner { map, per_slot } = &mut *inner;
        map.retain(|_, t| {
            let keep = u64::from(now.saturating_sub(t.last_seen)) < timeout;
            if !keep {
                uncharge(per_slot, t.slot);
            }
            keep
        });
        map.len()
    }

    /// Datagrams charged to `slot`.
    pub fn count(&self, slot: u32) -> usize {
        self.lock()
            .per_slot
            .get(slot as usize)
            .copied()
            .unwrap_or(0) as usize
    }

    /// Datagrams in the table.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn uncharge(per_slot: &mut [u32], slot: u32) {
    if let Some(n) = per_slot.get_mut(slot as usize) {
        *n = n.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::proto;

    fn cfg(per_project: usize, total: usize) -> FragmentConfig {
        FragmentConfig {
            max_total: total,
            max_per_project: per_project,
            timeout: 5,
        }
    }

    fn table(per_project: usize, total: usize) -> FragmentTable {
        let t = FragmentTable::new(cfg(per_project, total));
        t.ensure_slot(0);
        t.ensure_slot(1);
        t
    }

    /// Fragment `offset..offset + len` of datagram `id` from `src`.
    fn frag(src: &str, id: u32, offset: u32, len: u32, more: bool) -> (PacketInfo, Fragment) {
        let f = Fragment {
            id,
            proto: proto::UDP,
            offset,
            len,
            more,
        };
        let p = PacketInfo {
            fragment: Some(f),
            ..PacketInfo::new(
                src.parse().unwrap(),
                "203.0.113.1".parse().unwrap(),
                proto::UDP,
                0,
                0,
            )
        };
        (p, f)
    }

    fn admit(t: &FragmentTable, src: &str, id: u32, slot: u32) -> Result<(), Refused> {
        let (p, f) = frag(src, id, 0, 1480, true);
        t.admit(&p, &f, slot, false)
    }

    fn follow(
        t: &FragmentTable,
        src: &str,
        id: u32,
        offset: u32,
        more: bool,
    ) -> Result<(), Refused> {
        let (p, f) = frag(src, id, offset, 1480, more);
        t.follow(&p, &f, false)
    }

    #[test]
    fn fragments_follow_a_passed_first_in_order_and_the_last_ends_it() {
        let t = table(4, 8);
        assert_eq!(follow(&t, "10.0.0.2", 7, 1480, true), Err(Refused::Orphan));
        admit(&t, "10.0.0.2", 7, 0).unwrap();
        assert_eq!(t.count(0), 1);
        follow(&t, "10.0.0.2", 7, 1480, true).unwrap();
        follow(&t, "10.0.0.2", 7, 2960, false).unwrap();
        assert_eq!((t.len(), t.count(0)), (0, 0), "the last fragment ends it");
        assert_eq!(follow(&t, "10.0.0.2", 7, 4440, false), Err(Refused::Orphan));
    }

    #[test]
    fn another_datagram_or_side_is_not_followed() {
        let t = table(4, 8);
        admit(&t, "10.0.0.2", 7, 0).unwrap();
        assert_eq!(follow(&t, "10.0.0.2", 8, 1480, false), Err(Refused::Orphan));
        assert_eq!(follow(&t, "10.0.0.3", 7, 1480, false), Err(Refused::Orphan));
        let (mut p, mut f) = frag("10.0.0.2", 7, 1480, 8, false);
        f.proto = proto::TCP;
        assert_eq!(t.follow(&p, &f, false), Err(Refused::Orphan));
        f.proto = proto::UDP;
        assert_eq!(t.follow(&p, &f, true), Err(Refused::Orphan), "other side");
        p.dst = "203.0.113.2".parse().unwrap();
        assert_eq!(t.follow(&p, &f, false), Err(Refused::Orphan));
    }

    #[test]
    fn out_of_order_overlapping_and_gaps_are_refused() {
        let t = table(4, 8);
        admit(&t, "10.0.0.2", 7, 0).unwrap();
        // overlaps the first fragment's transport header (RFC 1858)
        assert_eq!(follow(&t, "10.0.0.2", 7, 8, true), Err(Refused::OutOfOrder));
        // the last one before the middle one
        assert_eq!(
            follow(&t, "10.0.0.2", 7, 2960, false),
            Err(Refused::OutOfOrder)
        );
        follow(&t, "10.0.0.2", 7, 1480, true).unwrap();
        // a duplicate of the middle one
        assert_eq!(
            follow(&t, "10.0.0.2", 7, 1480, true),
            Err(Refused::OutOfOrder)
        );
        follow(&t, "10.0.0.2", 7, 2960, false).unwrap();
    }

    #[test]
    fn bounds_are_per_project_and_total() {
        let t = table(2, 3);
        admit(&t, "10.0.0.2", 1, 0).unwrap();
        admit(&t, "10.0.0.2", 2, 0).unwrap();
        // project 0 is full: its flood does not reach project 1's share
        assert_eq!(admit(&t, "10.0.0.2", 3, 0), Err(Refused::Full));
        admit(&t, "10.0.0.3", 1, 1).unwrap();
        // the total is full
        assert_eq!(admit(&t, "10.0.0.3", 2, 1), Err(Refused::Full));
        // a first fragment of a recorded datagram restarts it, no new room
        admit(&t, "10.0.0.2", 1, 0).unwrap();
        assert_eq!((t.len(), t.count(0), t.count(1)), (3, 2, 1));
        // an unregistered project opens nothing
        assert_eq!(admit(&t, "10.0.0.9", 1, 9), Err(Refused::Full));
        // completing a datagram frees its room
        follow(&t, "10.0.0.2", 1, 1480, false).unwrap();
        admit(&t, "10.0.0.2", 3, 0).unwrap();
    }

    #[test]
    fn idle_datagrams_expire() {
        let t = table(4, 8);
        admit(&t, "10.0.0.2", 1, 0).unwrap();
        t.tick(3);
        admit(&t, "10.0.0.2", 2, 0).unwrap();
        t.tick(4);
        assert_eq!(t.sweep(), 2);
        follow(&t, "10.0.0.2", 1, 1480, true).unwrap();
        t.tick(8);
        assert_eq!(t.sweep(), 1, "datagram 2 idle for 5 s");
        assert_eq!(follow(&t, "10.0.0.2", 2, 1480, false), Err(Refused::Orphan));
        t.tick(9);
        assert_eq!((t.sweep(), t.count(0)), (0, 0));
    }
}
