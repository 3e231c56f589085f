//! The flow state file a starting router reads (untrusted: another
//! process's memory, possibly torn, truncated or planted): decoded with
//! `flow_store::decode` and restored into a small table as the daemon does
//! (`state::restore`). Must hold: no panic; every slot accepted re-encodes
//! to exactly its bytes (nothing is accepted that the writer could not
//! have written); every entry is accounted for once (loaded, invalid,
//! expired or over the bound); the table holds exactly the loaded ones and
//! never exceeds `flows.max_total` or `flows.max_per_project`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vassal_router::config::Config;
use vassal_router::state::flow_store;
use vassal_router::state::flows::FlowTable;
use vassal_router::state::registry::Registry;
use vassal_router::state::restore;
use vassal_router::wire::flow_file::{self, SLOT};

/// The boot id the seeds carry.
const BOOT: [u8; flow_file::BOOT_ID] = *b"00000000-0000-0000-0000-000000000000";
const MAX_TOTAL: usize = 8;
const MAX_PER_PROJECT: usize = 3;

fuzz_target!(|data: &[u8]| {
    let config = Config::parse(
        &format!(
            "gateway = \"10.9.0.1/24\"\ngateway6 = \"fd00:9::1/64\"\n\
             [flows]\nmax_total = {MAX_TOTAL}\nmax_per_project = {MAX_PER_PROJECT}\n\
             [[project]]\nname = \"fixed\"\naddress = \"10.9.0.60\"\n"
        ),
        "fuzz",
    )
    .expect("the fuzz target's config parses");
    let found = flow_store::decode(data, &BOOT);
    if found.refused.is_none() {
        let header = flow_file::decode_header(data).expect("accepted header");
        let mut entries = found.entries.iter();
        for slot in flow_file::slots(data, &header) {
            if let Ok(Some(e)) = flow_file::decode_slot(slot) {
                let mut again = [0u8; SLOT];
                flow_file::encode_slot(&e, &mut again);
                assert_eq!(&again, slot, "an accepted slot re-encodes to its bytes");
                assert_eq!(entries.next(), Some(&e));
            }
        }
        assert!(entries.next().is_none());
    } else {
        assert!(found.entries.is_empty() && found.invalid == 0);
    }
    let registry = Registry::new(16);
    let flows = FlowTable::new(config.flows.clone());
    // Around the seeds' times, so some entries are live and some expired.
    let now = 1000;
    flows.tick(now);
    let r = restore::restore(&found, &config, now, &registry, &flows);
    assert_eq!(
        r.loaded + r.invalid + r.expired + r.over_bound,
        found.entries.len() + found.invalid
    );
    assert_eq!(flows.len(), r.loaded);
    assert!(flows.len() <= MAX_TOTAL);
    let mut sum = 0;
    for p in registry.projects() {
        assert!(flows.count(p.slot) <= MAX_PER_PROJECT);
        sum += flows.count(p.slot);
    }
    assert_eq!(sum, flows.len());
});
