//! The event watch: compares the per-project counters and evidence once a
//! second and turns their movement into events (spoofed packets, floods of
//! denied packets, packets denied by rules with `log = true`, many distinct
//! destination ports: a scan, a full flow table).

use crate::os::events::emit;
use crate::state::counters::DropReason;
use crate::state::registry::Project;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default, Clone, Copy)]
struct Seen {
    spoofed: u64,
    firewall: u64,
    flow_table_full: u64,
}

/// Turns counter movement into events, once per tick.
pub struct Watch {
    last: HashMap<u32, Seen>,
    denied_per_second: u64,
    ports_per_second: u64,
}

impl Watch {
    /// A watch that reports a flood above `denied_per_second` firewall
    /// drops per second for one project, and a scan above
    /// `ports_per_second` distinct destination ports per second.
    pub fn new(denied_per_second: u64, ports_per_second: u64) -> Watch {
        Watch {
            last: HashMap::new(),
            denied_per_second,
            ports_per_second,
        }
    }

    /// Compares every project's counters with the last tick (`seconds`
    /// ago) and emits what moved.
    pub fn tick(&mut self, projects: &[Arc<Project>], seconds: u64) {
        let seconds = seconds.max(1);
        for p in projects {
            let c = &p.counters;
            let now = Seen {
                spoofed: c.dropped(DropReason::Spoofed),
                firewall: c.dropped(DropReason::Firewall),
                flow_table_full: c.dropped(DropReason::FlowTableFull),
            };
            // A project seen for the first time starts from zero: what it
            // did before this tick is news too.
            let before = self.last.insert(p.slot, now).unwrap_or_default();
            let spoofed = now.spoofed.saturating_sub(before.spoofed);
            if spoofed > 0 {
                emit(
                    "spoofed",
                    json!({ "project": p.name, "packets": spoofed, "seconds": seconds }),
                );
            }
            let denied = now.firewall.saturating_sub(before.firewall);
            if denied / seconds > self.denied_per_second {
                emit(
                    "denied_flood",
                    json!({ "project": p.name, "packets": denied, "seconds": seconds, "threshold_per_second": self.denied_per_second }),
                );
            }
            let full = now.flow_table_full.saturating_sub(before.flow_table_full);
            if full > 0 {
                emit(
                    "flow_table_full",
                    json!({ "project": p.name, "refused_packets": full, "seconds": seconds }),
                );
            }
            let ports = p.evidence.take_ports();
            if ports / seconds > self.ports_per_second {
                emit(
                    "port_scan",
                    json!({ "project": p.name, "distinct_ports": ports, "seconds": seconds, "threshold_per_second": self.ports_per_second }),
                );
            }
            if let (n, Some(last)) = p.evidence.take_logged() {
                emit(
                    "denied_logged",
                    json!({
                        "project": p.name, "packets": n, "seconds": seconds,
                        "last": {
                            "chain": last.chain, "rule_line": last.rule_line, "src": last.src,
                            "dst": last.dst, "proto": last.proto, "dst_port": last.dst_port,
                        },
                    }),
                );
            }
        }
    }
}
