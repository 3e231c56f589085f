//! Events the operator must hear about promptly, as one JSON object per
//! line on a sink (stderr, or a unix datagram socket), each also counted in
//! `vassal_events_total{event}`.
//!
//! The datapath never emits: it only counts drops, as it always does. A
//! [`Watch`] compares the per-project counters once a second and turns
//! their movement into events (spoofed packets, floods of denied packets,
//! a full flow table), so suspicion costs the packet path nothing. Rare
//! events (a refused attach) are emitted where they happen.

use crate::metrics::DropReason;
use crate::vassals::Project;
use metrics::counter;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

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
}

impl Watch {
    /// A watch that reports a flood above `denied_per_second` firewall
    /// drops per second for one project.
    pub fn new(denied_per_second: u64) -> Watch {
        Watch {
            last: HashMap::new(),
            denied_per_second,
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
