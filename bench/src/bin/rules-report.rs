//! Prints, per rule count, compile time, tree size and a quick lookup rate
//! of the compiled and naive classifiers on the benchmark's workload:
//! `cargo run --release -p vassal-bench --bin rules-report`.
//! With `LOOKUP_ONLY=<rules>` it only times compiled lookups at that size
//! (for profiling with perf).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use firewall_rules::naive::Naive;
use firewall_rules::{Chain, RuleSet};
use vassal_bench::rulegen;

fn main() {
    let seed = 0x7661_7373_616c;
    if let Ok(n) = std::env::var("LOOKUP_ONLY") {
        let n: usize = n.parse().unwrap_or(10_000);
        let text = rulegen::rules_toml(n, seed);
        let Ok(rules) = RuleSet::parse(&text, Path::new("generated.toml")) else {
            return;
        };
        let compiled = rules.compile();
        let packets = rulegen::packets(&rules, &compiled, 30_000, seed);
        let start = Instant::now();
        for _ in 0..200 {
            for k in &packets {
                black_box(compiled.classify(Chain::Out, black_box(k)));
            }
        }
        let rate = 200.0 * packets.len() as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!("{n} rules: {rate:.2} M lookups/s");
        return;
    }
    println!("rules  compile_ms  nodes  leaf_entries  depth  max_leaf  tree_KiB  compiled_Mlps  naive_Mlps  speedup  agree");
    for n in [10usize, 1_000, 10_000, 50_000] {
        let text = rulegen::rules_toml(n, seed);
        let rules = match RuleSet::parse(&text, Path::new("generated.toml")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("generated rules refused:\n{e}");
                std::process::exit(1);
            }
        };
        let start = Instant::now();
        let compiled = rules.compile();
        let compile_ms = start.elapsed().as_secs_f64() * 1e3;
        let stats = compiled.stats();
        let naive = Naive::new(&rules);
        let packets = rulegen::packets(&rules, &compiled, 30_000, seed);
        let agree = packets
            .iter()
            .all(|k| compiled.classify(Chain::Out, k) == naive.classify(Chain::Out, k));
        let rate = |f: &dyn Fn()| {
            let rounds = 5;
            let start = Instant::now();
            for _ in 0..rounds {
                f();
            }
            (rounds * packets.len()) as f64 / start.elapsed().as_secs_f64() / 1e6
        };
        let fast = rate(&|| {
            for k in &packets {
                black_box(compiled.classify(Chain::Out, black_box(k)));
            }
        });
        let slow = rate(&|| {
            for k in &packets[..3000] {
                black_box(naive.classify(Chain::Out, black_box(k)));
            }
        }) / 10.0;
        println!(
            "{n:>5}  {compile_ms:>10.1}  {:>5}  {:>12}  {:>5}  {:>8}  {:>8}  {fast:>13.2}  {slow:>10.3}  {:>7.0}  {agree}",
            stats.nodes,
            stats.leaf_entries,
            stats.depth,
            stats.max_leaf,
            stats.bytes / 1024,
            fast / slow
        );
    }
}
