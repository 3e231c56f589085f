//! Events the operator must hear about promptly, as one JSON object per
//! line on a sink (stderr, or a unix datagram socket), each also counted in
//! `vassal_events_total{event}`. The sink is opened here; what is worth an
//! event is decided above (the daemon's watch, the control server).

use crate::config::Sink;
use metrics::counter;
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::OnceLock;

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
