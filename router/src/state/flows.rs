//! The stateful flow table: which flows an allowed packet opened, so that
//! their replies pass the opposite chain when `established = true`.
//!
//! One table for the whole router behind one mutex (two cores; a lookup is
//! a hash probe), bounded in total and per project. The map is allocated at
//! its full capacity up front, so inserting never allocates on the
//! datapath. Time is a coarse seconds counter ticked by the sweeper, so the
//! datapath makes no clock syscall.

use crate::config::FlowConfig;
use crate::wire::packet::{proto, PacketInfo, TCP_FIN, TCP_RST};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Identity of a flow in its opening direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Protocol.
    pub proto: u8,
    /// Source address of the opening packet.
    pub src: IpAddr,
    /// Destination address of the opening packet.
    pub dst: IpAddr,
    /// Source port (echo id for ICMP).
    pub src_port: u16,
    /// Destination port (echo id for ICMP).
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of `p` as seen in its own direction.
    pub fn of(p: &PacketInfo) -> FlowKey {
        FlowKey {
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            src_port: p.src_port,
            dst_port: p.dst_port,
        }
    }

    /// The key of the flow a reply to this packet would belong to.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    slot: u32,
    last_seen: u32,
    tcp_closing: bool,
}

/// A new flow could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The project's (or the whole table's) bound is reached.
    #[error("flow table full (flows.max_per_project or flows.max_total reached)")]
    Full,
}

struct Inner {
    map: HashMap<FlowKey, Flow>,
    per_slot: Vec<u32>,
}

/// The flow table.
pub struct FlowTable {
    inner: Mutex<Inner>,
    config: FlowConfig,
    now: AtomicU32,
}

impl FlowTable {
    /// An empty table with room for `config.max_total` flows.
    pub fn new(config: FlowConfig) -> FlowTable {
        FlowTable {
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
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert/remove), so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances the coarse clock to `secs` since start.
    pub fn tick(&self, secs: u32) {
        self.now.store(secs, Ordering::Relaxed);
    }

    /// Whether `p` is a reply of a known flow; refreshes that flow. ICMP
    /// echo requests are never replies.
    pub fn is_reply(&self, p: &PacketInfo) -> bool {
        if let Some(q) = p.quoted {
            // An ICMP error about a packet of a known flow, in either
            // direction, is related to it (path MTU discovery needs this).
            // It must quote a packet its recipient sent: nobody may use a
            // third party's flow to slip errors past the rules.
            if q.src != p.dst {
                return false;
            }
            let key = FlowKey {
                proto: q.proto,
                src: q.src,
                dst: q.dst,
                src_port: q.src_port,
                dst_port: q.dst_port,
            };
            let inner = self.lock();
            return inner.map.contains_key(&key) || inner.map.contains_key(&key.reversed());
        }
        // Of ICMP messages only echo replies answer a flow (an echo
        // request's); the identifier, 0 included, is the port.
        if is_icmp(p.proto) && !p.icmp_echo_reply {
            return false;
        }
        let key = FlowKey::of(p).reversed();
        let now = self.now.load(Ordering::Relaxed);
        let mut inner = self.lock();
        match inner.map.get_mut(&key) {
            Some(flow) => {
                flow.last_seen = now;
                if p.proto == proto::TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                    flow.tcp_closing = true;
                }
                true
            }
            None => false,
        }
    }

    /// Opens (or refreshes) the flow `p` starts, charged to project `slot`.
    pub fn open(&self, p: &PacketInfo, slot: u32) -> Result<(), OpenError> {
        // Only echo requests open ICMP flows; other ICMP messages are not
        // tracked (their replies, if any, go through the rules).
        if is_icmp(p.proto) && !p.icmp_echo_request {
            return Ok(());
        }
        let key = FlowKey::of(p);
        let now = self.now.load(Ordering::Relaxed);
        let closing = p.proto == proto::TCP && p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
        let mut inner = self.lock();
        if let Some(flow) = inner.map.get_mut(&key) {
            flow.last_seen = now;
            flow.tcp_closing |= closing;
            return Ok(());
        }
        let used = inner
            .per_slot
            .get(slot as usize)
            .copied()
            .ok_or(OpenError::Full)?;
        if used as usize >= self.config.max_per_project || inner.map.len() >= self.config.max_total
        {
            return Err(OpenError::Full);
        }
        inner.map.insert(
            key,
            Flow {
                slot,
                last_seen: now,
                tcp_closing: closing,
            },
        );
        if let Some(n) = inner.per_slot.get_mut(slot as usize) {
            *n += 1;
        }
        Ok(())
    }

    /// Removes idle flows; returns the table size.
    pub fn sweep(&self) -> usize {
        let now = self.now.load(Ordering::Relaxed);
        let c = &self.config;
        let mut inner = self.lock();
        let Inner { map, per_slot } = &mut *inner;
        map.retain(|key, flow| {
            let timeout = match key.proto {
                proto::TCP if flow.tcp_closing => c.tcp_closed_timeout,
                proto::TCP => c.tcp_timeout,
                proto::ICMP | proto::ICMPV6 => c.icmp_timeout,
                _ => c.udp_timeout,
            };
            let keep = u64::from(now.saturating_sub(flow.last_seen)) < timeout;
            if !keep {
                if let Some(n) = per_slot.get_mut(flow.slot as usize) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        map.len()
    }

    /// Flows charged to `slot`.
    pub fn count(&self, slot: u32) -> usize {
        self.lock()
            .per_slot
            .get(slot as usize)
            .copied()
            .unwrap_or(0) as usize
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.lock().map.len()
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
        PacketInfo {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: proto::UDP,
            src_port: sp,
            dst_port: dp,
            tcp_flags: 0,
            icmp_echo_request: false,
            icmp_echo_reply: false,
            quoted: None,
            transport: 20,
            fragment: None,
        }
    }

    #[test]
    fn replies_of_open_flows_are_recognised() {
        let t = FlowTable::new(cfg(5));
        t.ensure_slot(0);
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
        t.ensure_slot(1);
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
        t.ensure_slot(0);
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
        t.ensure_slot(0);
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
        t.ensure_slot(0);
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
}
