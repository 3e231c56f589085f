//! Events the operator must hear about promptly, as one JSON object per
//! line on a sink (stderr, or a unix datagram socket), each also counted in
//! `vassal_events_total{event}`.
//!
//! The datapath never emits: it counts drops, as it always does, and leaves
//! lock-free [`Evidence`] on the slow path of new flows and denied packets.
//! A [`Watch`] compares the per-project counters once a second and turns
//! their movement into events (spoofed packets, floods of denied packets,
//! packets denied by rules with `log = true`, many distinct destination
//! ports: a scan, a full flow table), so suspicion costs the established
//! packet path nothing. Rare events (a refused attach, a launcher's report)
//! are emitted where they happen.

use crate::metrics::DropReason;
use crate::vassals::Project;
use metrics::counter;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Bits of the distinct-port sketch (linear counting: accurate to a few
/// percent up to several thousand distinct ports a tick).
const PORT_BITS: usize = 1024;

/// A packet denied by a rule with `log = true`, as the event shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// `out` or `in`.
    pub chain: &'static str,
    /// The rule's line in the rule file.
    pub rule_line: Option<usize>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: u8,
    /// Destination port (TCP/UDP), else 0.
    pub dst_port: u16,
}

/// What the datapath notes about one project between two ticks of the
/// [`Watch`]: atomics only, written on new flows and denied packets.
pub struct Evidence {
    ports: [AtomicU64; PORT_BITS / 64],
    logged: AtomicU64,
    last_logged: Mutex<Option<Logged>>,
}

impl Default for Evidence {
    fn default() -> Evidence {
        Evidence {
            ports: std::array::from_fn(|_| AtomicU64::new(0)),
            logged: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        }
    }
}

impl Evidence {
    /// Notes a destination port the project opened a flow to or was
    /// denied (a scan shows as many of them).
    pub fn port(&self, port: u16) {
        // A full mix (splitmix64's finaliser): linear counting assumes the
        // bits fall as if at random, which neighbouring ports under a
        // plain multiplicative hash do not.
        let mut z = u64::from(port).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let bit = ((z ^ (z >> 31)) >> 54) as usize;
        self.ports[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }

    /// Notes a packet denied by a rule with `log = true`. Never waits: a
    /// contended sample is simply not replaced.
    pub fn logged(&self, packet: Logged) {
        self.logged.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_logged.try_lock() {
            *last = Some(packet);
        }
    }

    /// Distinct ports noted since the last call (an estimate), and resets.
    fn take_ports(&self) -> u64 {
        let set: u32 = self
            .ports
            .iter()
            .map(|w| w.swap(0, Ordering::Relaxed).count_ones())
            .sum();
        distinct_estimate(set as usize)
    }

    /// Logged denials since the last call and the last of them; resets.
    fn take_logged(&self) -> (u64, Option<Logged>) {
        let n = self.logged.swap(0, Ordering::Relaxed);
        let last = self
            .last_logged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        (n, last)
    }
}

/// Linear counting: with `set` of [`PORT_BITS`] bits set, the number of
/// distinct values hashed in is about `m ln(m / zeros)`.
fn distinct_estimate(set: usize) -> u64 {
    let m = PORT_BITS as f64;
    let zeros = (PORT_BITS - set).max(1) as f64;
    (m * (m / zeros).ln()).round() as u64
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// One line each on the router's stderr (the default).
    Stderr,
    /// One datagram each to this unix socket (a log shipper listens there).
    Unix(PathBuf),
}

impl Sink {
    /// Parses `"stderr"` or `"unix:/path"`.
    pub fn parse(text: &str) -> Result<Sink, String> {
        match text {
            "stderr" => Ok(Sink::Stderr),
            t => match t.strip_prefix("unix:") {
                Some(p) if p.starts_with('/') => Ok(Sink::Unix(PathBuf::from(p))),
                _ => Err(format!(
                    "{t:?}: expected \"stderr\" or \"unix:/absolute/path\""
                )),
            },
        }
    }
}

enum Emitter {
    Stderr,
    Unix { socket: UnixDatagram, path: PathBuf },
}

static EMITTER: OnceLock<Emitter> = OnceLock::new();

/// Chooses the sink; events before this go to stderr. Unix datagrams are
/// sent without blocking: a shipper that is not there or not reading loses
/// events (counted in `vassal_events_lost_total`), never stalls the router.
pub fn init(sink: &Sink) -> std::io::Result<()> {
    let emitter = match sink {
        Sink::Stderr => Emitter::Stderr,
        Sink::Unix(path) => {
            let socket = UnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Emitter::Unix {
                socket,
                path: path.clone(),
            }
        }
    };
    let _ = EMITTER.set(emitter);
    Ok(())
}

/// Emits event `kind` with `fields` (a JSON object) and counts it.
pub fn emit(kind: &'static str, fields: Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut event = json!({ "event": kind, "ts": (ts * 1000.0).round() / 1000.0 });
    if let (Some(map), Value::Object(extra)) = (event.as_object_mut(), fields) {
        map.extend(extra);
    }
    let line = event.to_string();
    counter!("vassal_events_total", "event" => kind).increment(1);
    match EMITTER.get().unwrap_or(&Emitter::Stderr) {
        Emitter::Stderr => {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        Emitter::Unix { socket, path } => {
            if socket.send_to(line.as_bytes(), path).is_err() {
                counter!("vassal_events_lost_total").increment(1);
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ports_are_estimated_closely() {
        for n in [0u64, 1, 10, 100, 500, 2000] {
            let e = Evidence::default();
            for port in 0..n {
                // Repeats do not count twice.
                e.port(1000 + port as u16);
                e.port(1000 + port as u16);
            }
            let est = e.take_ports();
            let err = (est as f64 - n as f64).abs();
            assert!(
                err <= 2.0 + n as f64 * 0.1,
                "{n} distinct ports estimated as {est}"
            );
            assert_eq!(e.take_ports(), 0, "taking resets");
        }
    }

    #[test]
    fn sinks_parse() {
        assert_eq!(Sink::parse("stderr"), Ok(Sink::Stderr));
        assert_eq!(
            Sink::parse("unix:/run/vassal/events.sock"),
            Ok(Sink::Unix("/run/vassal/events.sock".into()))
        );
        assert!(Sink::parse("unix:relative").is_err());
        assert!(Sink::parse("syslog").is_err());
    }
}
