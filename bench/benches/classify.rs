//! Rule classification: lookups per second of the compiled classifier and
//! of the naive first-match scan at 10, 1 000 and 10 000 rules, and the
//! compile time. `cargo bench -p vassal-bench --bench classify`

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use firewall_rules::naive::Naive;
use firewall_rules::{Chain, RuleSet};
use vassal_bench::rulegen;

const SEED: u64 = 0x7661_7373_616c;
const PACKETS: usize = 3000;

fn rule_set(n: usize) -> RuleSet {
    let text = rulegen::rules_toml(n, SEED);
    match RuleSet::parse(&text, Path::new("generated.toml")) {
        Ok(rules) => rules,
        Err(e) => panic!("generated rules refused:\n{e}"),
    }
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(PACKETS as u64));
    for n in [10usize, 1_000, 10_000] {
        let rules = rule_set(n);
        let compiled = rules.compile();
        let naive = Naive::new(&rules);
        let packets = rulegen::packets(&rules, &compiled, PACKETS, SEED);
        group.measurement_time(Duration::from_secs(3));
        group.bench_with_input(BenchmarkId::new("compiled", n), &packets, |b, packets| {
            b.iter(|| {
                for key in packets {
                    black_box(compiled.classify(Chain::Out, black_box(key)));
                }
            })
        });
        if n >= 10_000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("naive", n), &packets, |b, packets| {
            b.iter(|| {
                for key in packets {
                    black_box(naive.classify(Chain::Out, black_box(key)));
                }
            })
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        let rules = rule_set(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &rules, |b, rules| {
            b.iter(|| black_box(rules.compile()))
        });
    }
    group.finish();
}

criterion_group!(benches, lookups, compile);
criterion_main!(benches);
