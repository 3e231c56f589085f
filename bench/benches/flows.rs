//! The router's per-packet state cost under two threads: the flow table
//! (each thread a project with its own flows, packets in both directions,
//! one thread also sweeping) and the registry look-up of destinations.
//! Seconds to run: `cargo bench -p vassal-bench --bench flows -- --quick`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vassal_router::config::Config;
use vassal_router::packet::{proto, PacketInfo};
use vassal_router::port::Port;
use vassal_router::state::flows::{FlowTable, Seen};
use vassal_router::state::registry::Registry;

/// Packets each thread handles per iteration.
const PACKETS: usize = 20_000;
/// Flows each thread's project keeps open.
const FLOWS: u16 = 1000;

/// What a reader does with one packet of an established flow: answer it
/// if it is a reply, else (the rules passed it) open or refresh its flow.
fn handle(t: &FlowTable, p: &PacketInfo, slot: u32) -> bool {
    !matches!(t.track(p, true, slot, || ((), true)), Seen::Full)
}

fn flows(c: &mut Criterion) {
    let config = Config::default();
    let table = Arc::new(FlowTable::new(config.flows.clone()));
    let server: IpAddr = Ipv4Addr::new(203, 0, 113, 1).into();
    // Per thread: its vassal's packets out and the server's replies.
    let traffic: Vec<Vec<PacketInfo>> = (0..2u8)
        .map(|slot| {
            table.ensure_slot(u32::from(slot), &format!("p{slot}"));
            let vassal: IpAddr = Ipv4Addr::new(10, 200, 0, 2 + slot).into();
            (0..PACKETS)
                .map(|i| {
                    let port = 10_000 + (i as u16 % FLOWS);
                    if i % 2 == 0 {
                        PacketInfo::new(vassal, server, proto::UDP, port, 53)
                    } else {
                        PacketInfo::new(server, vassal, proto::UDP, 53, port)
                    }
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("flow_table");
    group.throughput(Throughput::Elements(2 * PACKETS as u64));
    group.bench_function("2 threads, out and reply", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for (slot, packets) in traffic.iter().enumerate() {
                    let table = &table;
                    s.spawn(move || {
                        for p in packets {
                            black_box(handle(table, black_box(p), slot as u32));
                        }
                    });
                }
            })
        })
    });
    group.bench_function("2 threads, out and reply, one sweeping", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for (slot, packets) in traffic.iter().enumerate() {
                    let table = &table;
                    s.spawn(move || {
                        for (i, p) in packets.iter().enumerate() {
                            black_box(handle(table, black_box(p), slot as u32));
                            if slot == 0 && i % 125 == 0 {
                                // A whole pass every 2000 packets, in the
                                // daemon's steps (before: one full sweep
                                // under the single lock every 2000).
                                table.sweep_step(4);
                            }
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn port() -> Port {
    let (a, _b) = UnixDatagram::pair().expect("socketpair");
    Port::Tun {
        fd: OwnedFd::from(a),
        vnet: false,
    }
}

fn registry(c: &mut Criterion) {
    let registry = Registry::new(200);
    let addrs: Vec<IpAddr> = (0..100u8)
        .map(|i| {
            let a = Ipv4Addr::new(10, 200, 1, i);
            registry
                .attach(registry.project(&format!("p{i}")), a, None, port())
                .expect("attach");
            a.into()
        })
        .collect();
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(2 * PACKETS as u64));
    group.bench_function("2 threads, look-ups in batches of 64", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (registry, addrs) = (&registry, &addrs);
                    s.spawn(move || {
                        for batch in 0..PACKETS / 64 {
                            let view = registry.view();
                            for i in 0..64 {
                                let a = addrs[(t * 7 + batch + i) % addrs.len()];
                                black_box(view.get(&a).map(|v| v.project.slot));
                            }
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, flows, registry);
criterion_main!(benches);
