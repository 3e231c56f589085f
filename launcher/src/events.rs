//! The events an operator must hear about promptly (OOM kills, pids limit
//! hits, seccomp, memory and wall-clock kills): one JSON line each on
//! stderr, and the same reported to the router over the vassal's attach
//! connection, which counts them in `vassal_events_total` and writes them to
//! its event sink beside its own.
//!
//! The cgroup's counters are read once a second while the vassal runs, so a
//! worker killed for memory in a long-lived vassal is reported within a
//! second, not when the vassal ends. A vassal without a network, or whose
//! router is away, has its events on stderr only.

use crate::cgroup::Usage;
use crate::network::Attachment;
use crate::report::Report;
use std::os::fd::AsFd;
use std::time::Duration;
use vassal_attach::{transport, Request, VassalEvent, VassalEventKind};

/// How often the cgroup's counters are read while the vassal runs.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The counters already reported, so that each increase is reported once.
#[derive(Debug)]
pub struct Events {
    name: String,
    oom_kills: u64,
    pids_limit_hits: u64,
}

impl Events {
    /// Nothing reported yet for vassal `name`.
    pub fn new(name: &str) -> Events {
        Events {
            name: name.to_owned(),
            oom_kills: 0,
            pids_limit_hits: 0,
        }
    }

    /// Reports what the counters gained since the last check.
    pub fn check(&mut self, usage: &Usage, router: Option<&Attachment>) {
        let oom = usage.oom_kills.saturating_sub(self.oom_kills);
        let pids = usage.pids_limit_hits.saturating_sub(self.pids_limit_hits);
        self.oom_kills = self.oom_kills.max(usage.oom_kills);
        self.pids_limit_hits = self.pids_limit_hits.max(usage.pids_limit_hits);
        if oom > 0 {
            self.report(VassalEventKind::OomKill, oom, router);
        }
        if pids > 0 {
            self.report(VassalEventKind::PidsLimit, pids, router);
        }
    }

    /// Reports the end: the counters' last gains and what killed the
    /// command, if anything did. (An OOM kill of the command itself is a
    /// `memory_kill`, not also an `oom_kill`.)
    pub fn finish(&mut self, report: &Report, router: Option<&Attachment>) {
        let usage = Usage {
            oom_kills: report.oom_kills,
            pids_limit_hits: report.pids_limit_hits,
            ..Usage::default()
        };
        let killed = match report.killed_by {
            Some("wall_clock") => Some(VassalEventKind::WallClockKill),
            Some("seccomp") => Some(VassalEventKind::SeccompKill),
            Some("memory") => Some(VassalEventKind::MemoryKill),
            _ => None,
        };
        if killed == Some(VassalEventKind::MemoryKill) {
            // The command's own OOM kill: not an oom_kill as well.
            self.oom_kills = self.oom_kills.max(usage.oom_kills.saturating_sub(1));
        }
        self.check(&usage, router);
        if let Some(kind) = killed {
            self.report(kind, 1, router);
        }
    }

    fn report(&self, kind: VassalEventKind, count: u64, router: Option<&Attachment>) {
        eprintln!(
            "{}",
            serde_json::json!({"event": kind.as_str(), "vassal": self.name, "count": count})
        );
        if let Some(a) = router {
            let message =
                vassal_attach::encode(&Request::Event(VassalEvent { event: kind, count }));
            // Best effort: a router that is away has the line on stderr.
            let _ = transport::send_datagram(a.socket.as_fd(), &message, None);
        }
    }
}
