//! `Classifier::classify` must never allocate: counted with a global
//! allocator wrapper while classifying packets of every kind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

use firewall_rules::{Chain, PacketKey, Peer, RuleSet};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// wrapper only bumps a thread-local counter, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn classify_never_allocates() {
    let mut text = String::new();
    for i in 0..250u32 {
        text.push_str(&format!(
            "[[out]]\naction = \"deny\"\ndst = \"10.{}.{}.0/24\"\ndst_port = \"{},{}-{}\"\nproject = [\"p{}\", \"q\"]\n",
            i % 7,
            i,
            i + 1,
            i + 100,
            i + 200,
            i % 5
        ));
        text.push_str(&format!(
            "[[in]]\naction = \"allow\"\nsrc = \"2001:db8:{i:x}::/48\"\nproto = \"udp\"\n"
        ));
    }
    let rules = RuleSet::parse(&text, Path::new("gen.toml")).unwrap_or_else(|e| panic!("{e}"));
    let classifier = rules.compile();
    let project = classifier.project_id("p3");
    let packets: Vec<PacketKey> = (0..2000u32)
        .map(|i| {
            let six = i % 2 == 0;
            let (src, dst): (IpAddr, IpAddr) = if six {
                (
                    format!("2001:db8:{:x}::1", i % 400).parse().expect("v6"),
                    "fd00::1".parse().expect("v6"),
                )
            } else {
                (
                    "10.200.0.2".parse().expect("v4"),
                    format!("10.{}.{}.9", i % 7, i % 250).parse().expect("v4"),
                )
            };
            PacketKey {
                project,
                src,
                dst,
                proto: if i % 3 == 0 { 17 } else { 6 },
                src_port: 40000,
                dst_port: (i % 500) as u16 + 1,
                peer: Peer::Outside,
            }
        })
        .collect();
    let mut verdicts = [0usize; 2];
    let before = ALLOCATIONS.with(Cell::get);
    for key in &packets {
        for chain in [Chain::Out, Chain::In] {
            let v = classifier.classify(chain, key);
            verdicts[usize::from(v.rule.is_some())] += 1;
        }
    }
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(after - before, 0, "classify allocated");
    assert!(
        verdicts[0] > 0 && verdicts[1] > 0,
        "both rule and default verdicts exercised: {verdicts:?}"
    );
    // The counter works: a Vec allocates.
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(16));
    drop(v);
    assert!(ALLOCATIONS.with(Cell::get) > after);
}
