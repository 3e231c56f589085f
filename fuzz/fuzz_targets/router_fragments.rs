//! The fragment table against a model, on arbitrary packet sequences:
//! every packet that parses as a fragment is offered to the table as the
//! datapath does (a first fragment as passing, a later one as following),
//! from a project slot and side the input chooses, with the clock ticked
//! and idle datagrams swept between packets. The table must answer exactly
//! as the model (a map of datagrams with the offset each expects next),
//! never exceed its bounds, and its per-project counts must add up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::net::IpAddr;
use vassal_router::config::FragmentConfig;
use vassal_router::fragments::{FragmentTable, Refused};
use vassal_router::packet;

/// Registered project slots; slot 3 is never registered.
const SLOTS: u32 = 3;

#[derive(Clone, Copy)]
struct Datagram {
    slot: u32,
    from_host: bool,
    next: u32,
    last_seen: u32,
}

fuzz_target!(|data: &[u8]| {
    let config = FragmentConfig {
        max_total: 6,
        max_per_project: 3,
        timeout: 2,
    };
    let table = FragmentTable::new(config.clone());
    for s in 0..SLOTS {
        table.ensure_slot(s);
    }
    let mut model: HashMap<(IpAddr, IpAddr, u8, u32), Datagram> = HashMap::new();
    let mut now = 0u32;
    let mut rest = data;
    // Each step: a control byte (slot, side, clock), a length byte, then
    // that many bytes of packet.
    while let [ctl, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (pkt, after) = tail.split_at(len);
        rest = after;
        let slot = u32::from(ctl & 3);
        let from_host = ctl & 4 != 0;
        if ctl & 8 != 0 {
            now += u32::from(ctl >> 4);
            table.tick(now);
            model.retain(|_, d| u64::from(now - d.last_seen) < config.timeout);
            assert_eq!(table.sweep(), model.len());
        }
        let Ok(info) = packet::parse(pkt) else {
            continue;
        };
        let Some(f) = info.fragment else {
            assert_eq!(table.follows(&info, from_host), Ok(false));
            assert_eq!(table.passing(&info, slot, from_host), Ok(()));
            continue;
        };
        assert!(f.more || f.offset != 0, "a whole datagram is no fragment");
        let key = (info.src, info.dst, f.proto, f.id);
        if f.is_first() {
            assert_eq!(table.follows(&info, from_host), Ok(false));
            let old = model.remove(&key);
            let used = model.values().filter(|d| d.slot == slot).count();
            let expected = if model.len() >= config.max_total
                || slot >= SLOTS
                || used >= config.max_per_project
            {
                Err(Refused::Full)
            } else {
                model.insert(
                    key,
                    Datagram {
                        slot,
                        from_host,
                        next: f.len,
                        last_seen: now,
                    },
                );
                Ok(())
            };
            let _ = old;
            assert_eq!(table.passing(&info, slot, from_host), expected);
        } else {
            assert_eq!((info.src_port, info.dst_port, info.transport), (0, 0, 0));
            let expected = match model.get_mut(&key) {
                Some(d) if d.from_host == from_host => {
                    if f.offset != d.next {
                        Err(Refused::OutOfOrder)
                    } else if f.more {
                        d.next = d.next.saturating_add(f.len);
                        d.last_seen = now;
                        Ok(true)
                    } else {
                        model.remove(&key);
                        Ok(true)
                    }
                }
                _ => Err(Refused::Orphan),
            };
            assert_eq!(table.follows(&info, from_host), expected);
        }
        assert_eq!(table.len(), model.len());
        assert!(table.len() <= config.max_total);
        let mut sum = 0;
        for s in 0..SLOTS {
            let n = table.count(s);
            assert!(n <= config.max_per_project);
            assert_eq!(n, model.values().filter(|d| d.slot == s).count());
            sum += n;
        }
        assert_eq!(sum, table.len());
    }
});
