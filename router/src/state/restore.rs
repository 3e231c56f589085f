//! A starting router takes back the flows its predecessor left in the
//! state file (`state::flow_store`): each decoded entry is checked against
//! this router ([`flow_store::check`]), charged to its project by name
//! (registered now if no vassal of it has re-attached yet: the launchers
//! re-attach within seconds, and an entry whose vassal never comes back
//! simply times out) and inserted under the live table's bounds.

use crate::config::Config;
use crate::state::flow_store::{self, Found, Rejected};
use crate::state::flows::FlowTable;
use crate::state::registry::Registry;

/// What became of the old file's entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Back in the table.
    pub loaded: usize,
    /// Skipped: slots that did not decode, entries that do not fit this
    /// router (subnet, shape, project, clock) and duplicates.
    pub invalid: usize,
    /// Skipped: idle past their timeout.
    pub expired: usize,
    /// Skipped: over `flows.max_total` or `flows.max_per_project`.
    pub over_bound: usize,
}

/// Restores `found` into `flows` at `now` (`CLOCK_BOOTTIME` seconds).
pub fn restore(
    found: &Found,
    config: &Config,
    now: u32,
    registry: &Registry,
    flows: &FlowTable,
) -> Restored {
    let mut r = Restored {
        invalid: found.invalid,
        ..Restored::default()
    };
    for e in &found.entries {
        match flow_store::check(e, config, now) {
            Ok(()) => {}
            Err(Rejected::Expired) => {
                r.expired += 1;
                continue;
            }
            Err(_) => {
                r.invalid += 1;
                continue;
            }
        }
        // A full table registers no further project for its entries.
        if flows.len() >= config.flows.max_total {
            r.over_bound += 1;
            continue;
        }
        let project = registry.project(e.project.as_str());
        flows.ensure_slot(project.slot, &project.name);
        match flows.restore(e, project.slot) {
            Ok(()) => r.loaded += 1,
            Err(crate::state::flows::RestoreError::Duplicate) => r.invalid += 1,
            Err(crate::state::flows::RestoreError::Full) => r.over_bound += 1,
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::flow_file::{Entry, Name};
    use crate::wire::packet::{proto, PacketInfo};

    fn entry(vassal: u8, port: u16, project: &str) -> Entry {
        Entry {
            proto: proto::UDP,
            a: format!("10.9.0.{vassal}").parse().unwrap(),
            b: "203.0.113.1".parse().unwrap(),
            a_port: port,
            b_port: 53,
            opener_is_a: true,
            tcp_closing: false,
            last_seen: 100,
            project: Name::new(project).unwrap(),
        }
    }

    #[test]
    fn a_table_writes_its_flows_as_they_go_and_the_next_one_takes_them_back() {
        let dir = std::env::temp_dir().join(format!("vr-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config::parse(
            &format!(
                "gateway = \"10.9.0.1/24\"\nstate_dir = \"{}\"\n",
                dir.display()
            ),
            "t",
        )
        .unwrap();
        let boot = [b'b'; crate::wire::flow_file::BOOT_ID];
        let shards = crate::state::flows::SHARDS;
        let (store, found) = flow_store::open(&config, shards, &boot).unwrap();
        assert!(found.entries.is_empty() && found.refused.is_none());
        let flows = FlowTable::with_store(config.flows.clone(), Some(store));
        flows.publish_store().unwrap();
        flows.tick(100);
        let registry = Registry::new(10);
        let alice = registry.project("alice");
        flows.ensure_slot(alice.slot, &alice.name);
        let (vassal, server) = ("10.9.0.2".parse().unwrap(), "203.0.113.1".parse().unwrap());
        let mut out = PacketInfo::new(vassal, server, proto::UDP, 4000, 53);
        flows.open(&out, alice.slot).unwrap();
        out.src_port = 4001;
        flows.open(&out, alice.slot).unwrap();
        // On "disk" at once, no dump: what a SIGKILL now would leave.
        let read = |config: &Config| {
            let bytes = std::fs::read(flow_store::path(config)).unwrap();
            flow_store::decode(&bytes, &boot)
        };
        let now = read(&config);
        assert_eq!((now.entries.len(), now.invalid), (2, 0));
        assert!(now
            .entries
            .iter()
            .all(|e| e.last_seen == 100 && e.project.as_str() == "alice"));
        // A refresh in a later second rewrites the slot.
        flows.tick(150);
        flows.open(&out, alice.slot).unwrap();
        let mut seen: Vec<u32> = read(&config).entries.iter().map(|e| e.last_seen).collect();
        seen.sort_unstable();
        assert_eq!(seen, [100, 150]);
        // Expiry frees the slot.
        flows.tick(161);
        flows.sweep();
        assert_eq!(read(&config).entries.len(), 1);
        // The next process: reads it, restores it, replaces the file.
        let (store, found) = flow_store::open(&config, shards, &boot).unwrap();
        let next = FlowTable::with_store(config.flows.clone(), Some(store));
        let registry = Registry::new(10);
        let r = restore(&found, &config, 162, &registry, &next);
        assert_eq!((r.loaded, next.len()), (1, 1));
        next.publish_store().unwrap();
        assert_eq!(
            read(&config).entries.len(),
            1,
            "written again by the new table"
        );
        drop(flows);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn entries_come_back_under_the_bounds_charged_by_name() {
        let config = Config::parse(
            "gateway = \"10.9.0.1/24\"\n[flows]\nmax_total = 5\nmax_per_project = 3\n",
            "t",
        )
        .unwrap();
        let registry = Registry::new(10);
        let flows = FlowTable::new(config.flows.clone());
        // bob exists first, with another slot than in the old process.
        let bob = registry.project("bob");
        let mut found = Found {
            invalid: 2,
            ..Found::default()
        };
        for port in 1..=4 {
            found.entries.push(entry(2, port, "alice"));
        }
        found.entries.push(entry(3, 1, "bob"));
        found.entries.push(entry(3, 1, "bob")); // duplicate
        found.entries.push(entry(3, 2, "bob"));
        found.entries.push(entry(3, 3, "bob")); // over max_total
        let mut outside = entry(3, 4, "bob");
        outside.a = "10.8.0.3".parse().unwrap();
        found.entries.push(outside);
        let mut old = entry(3, 5, "bob");
        old.last_seen = 0;
        found.entries.push(old);
        let r = restore(&found, &config, 100 + 29, &registry, &flows);
        assert_eq!(
            r,
            Restored {
                loaded: 5,
                invalid: 4,
                expired: 1,
                over_bound: 2
            }
        );
        let alice = registry.project("alice");
        assert_eq!((flows.count(alice.slot), flows.count(bob.slot)), (3, 2));
        // A restored flow lets its reply through.
        let (server, vassal) = ("203.0.113.1".parse().unwrap(), "10.9.0.3".parse().unwrap());
        let reply = PacketInfo::new(server, vassal, proto::UDP, 53, 2);
        flows.tick(129);
        assert!(flows.is_reply(&reply));
    }
}
