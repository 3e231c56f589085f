//! The events an operator must hear about promptly (OOM kills, pids limit
//! hits, seccomp, memory and wall-clock kills): one JSON line each on
//! stderr, and the same reported to the router over the vassal's attach
//! connection, which counts them in `vassal_events_total` and writes them to
//! its event sink beside its own.
//!
//! The cgroup's counters are read once a second while the vassal runs, so a
//! worker killed for memory in a long-lived vassal is reported within a
//! second or two (see [`Events::check`]), not when the vassal ends. A vassal without a network, or whose
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
    /// OOM kills reported as `oom_kill`.
    oom_kills: u64,
    /// OOM kills seen by the last check, reported by the next one.
    oom_seen: u64,
    pids_limit_hits: u64,
}

impl Events {
    /// Nothing reported yet for vassal `name`.
    pub fn new(name: &str) -> Events {
        Events {
            name: name.to_owned(),
            oom_kills: 0,
            oom_seen: 0,
            pids_limit_hits: 0,
        }
    }

    /// Reports what the counters gained since the last check.
    pub fn check(&mut self, usage: &Usage, router: Option<&Attachment>) {
        for (kind, count) in self.gains(usage) {
            self.report(kind, count, router);
        }
    }

    /// The events of a periodic check. An OOM kill is reported one check
    /// after it is first seen: if it was the command's own, the command's
    /// end arrives in between and [`Events::finish`] reports it as a
    /// `memory_kill` only. (Reporting it at once raced with that end.)
    fn gains(&mut self, usage: &Usage) -> Vec<(VassalEventKind, u64)> {
        let confirmed = self.oom_seen.min(usage.oom_kills);
        self.oom_seen = self.oom_seen.max(usage.oom_kills);
        let mut events = Vec::new();
        events.extend(self.oom_gain(confirmed));
        events.extend(self.pids_gain(usage.pids_limit_hits));
        events
    }

    fn oom_gain(&mut self, total: u64) -> Option<(VassalEventKind, u64)> {
        let gain = total.saturating_sub(self.oom_kills);
        self.oom_kills = self.oom_kills.max(total);
        (gain > 0).then_some((VassalEventKind::OomKill, gain))
    }

    fn pids_gain(&mut self, total: u64) -> Option<(VassalEventKind, u64)> {
        let gain = total.saturating_sub(self.pids_limit_hits);
        self.pids_limit_hits = self.pids_limit_hits.max(total);
        (gain > 0).then_some((VassalEventKind::PidsLimit, gain))
    }

    /// Reports the end: the counters' last gains and what killed the
    /// command, if anything did. (An OOM kill of the command itself is a
    /// `memory_kill`, not also an `oom_kill`.)
    pub fn finish(&mut self, report: &Report, router: Option<&Attachment>) {
        for (kind, count) in self.end(report) {
            self.report(kind, count, router);
        }
    }

    fn end(&mut self, report: &Report) -> Vec<(VassalEventKind, u64)> {
        let killed = match report.killed_by {
            Some("wall_clock") => Some(VassalEventKind::WallClockKill),
            Some("seccomp") => Some(VassalEventKind::SeccompKill),
            Some("memory") => Some(VassalEventKind::MemoryKill),
            _ => None,
        };
        let mut oom_kills = report.oom_kills;
        if killed == Some(VassalEventKind::MemoryKill) {
            // The command's own OOM kill: not an oom_kill as well.
            oom_kills = oom_kills.saturating_sub(1);
        }
        let mut events = Vec::new();
        events.extend(self.oom_gain(oom_kills));
        events.extend(self.pids_gain(report.pids_limit_hits));
        events.extend(killed.map(|kind| (kind, 1)));
        events
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

#[cfg(test)]
mod tests {
    use super::*;
    use VassalEventKind::{MemoryKill, OomKill, PidsLimit};

    fn usage(oom_kills: u64, pids_limit_hits: u64) -> Usage {
        Usage {
            oom_kills,
            pids_limit_hits,
            ..Usage::default()
        }
    }

    fn report(oom_kills: u64, killed_by: Option<&'static str>) -> Report {
        Report {
            name: "t".into(),
            exit_code: None,
            signal: Some(9),
            wall_time_ms: 1,
            cpu_time_ms: None,
            peak_memory_bytes: None,
            oom_kills,
            pids_limit_hits: 0,
            killed_by,
        }
    }

    #[test]
    fn the_commands_own_oom_kill_is_a_memory_kill_only() {
        let mut e = Events::new("t");
        // Seen by a check just before the command's end arrived.
        assert_eq!(e.gains(&usage(1, 0)), vec![]);
        assert_eq!(e.end(&report(1, Some("memory"))), vec![(MemoryKill, 1)]);
        // Not seen by any check.
        let mut e = Events::new("t");
        assert_eq!(e.end(&report(1, Some("memory"))), vec![(MemoryKill, 1)]);
    }

    #[test]
    fn a_workers_oom_kill_is_reported_by_the_next_check_once() {
        let mut e = Events::new("t");
        assert_eq!(e.gains(&usage(1, 2)), vec![(PidsLimit, 2)]);
        assert_eq!(e.gains(&usage(1, 2)), vec![(OomKill, 1)]);
        assert_eq!(e.gains(&usage(1, 2)), vec![]);
        // Then the command is killed too: one more, a memory_kill.
        assert_eq!(e.end(&report(2, Some("memory"))), vec![(MemoryKill, 1)]);
        // A worker killed just before a normal end is still reported.
        let mut e = Events::new("t");
        assert_eq!(e.gains(&usage(1, 0)), vec![]);
        assert_eq!(e.end(&report(3, None)), vec![(OomKill, 3)]);
    }
}
