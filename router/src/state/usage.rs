//! Per-project accounting of what the launchers report about their
//! vassals (`usage` requests): CPU, memory, IO and pids, and the limits in
//! force, exported beside the network counters for billing and alerts
//! (docs/operations.md, "Billing").
//!
//! A launcher sends counters cumulative since it started its vassal. Each
//! attachment keeps the last values it reported; the project's counters
//! grow by what they gained on that attachment, never by a value that went
//! down. So a relaunched vassal (a new launcher, a new connection, counters
//! from 0) adds to the project's totals instead of subtracting, and a
//! launcher's report never moves any other project's series: the project is
//! the attachment's, never the message's. A report marked `resumed` on a
//! new attachment (the launcher re-attached, usually to a restarted router)
//! is a baseline: only what follows is counted, so the vassal's past is not
//! counted twice. A router restart starts every counter at 0 again, which
//! Prometheus' `increase()` and `rate()` take as a counter reset.
//!
//! The gauges (memory, pids, limits) are sums over the project's attached
//! vassals; a limit gauge is 0 when some attached vassal has no such limit
//! (or none is attached): 0 means "no limit to compare with". The network
//! limits are not here: the router enforces those itself and exports them
//! with the network counters (`vassal_limit_net_{out,in}_bytes_per_second`).

use metrics::{counter, gauge, Counter, Gauge};
use std::collections::BTreeMap;
use std::sync::Mutex;
use vassal_attach::VassalUsage;

/// What one attachment reported last.
#[derive(Debug, Clone, Copy, Default)]
struct Attachment {
    cpu_usec: u64,
    io_read_bytes: u64,
    io_write_bytes: u64,
    memory_bytes: u64,
    memory_peak_bytes: u64,
    pids: u64,
    limit_memory_bytes: Option<u64>,
    limit_cpu_millicores: Option<u64>,
    limit_pids: Option<u64>,
}

/// The project's totals and the attachments that feed them.
#[derive(Debug, Default)]
struct Totals {
    /// Microseconds of CPU counted; whole seconds go to the counter.
    cpu_usec: u64,
    io_read_bytes: u64,
    io_write_bytes: u64,
    attachments: BTreeMap<u64, Attachment>,
}

/// What a project's vassals used, as the router exports it.
pub struct ProjectUsage {
    cpu_seconds: Counter,
    io_read_bytes: Counter,
    io_write_bytes: Counter,
    memory_bytes: Gauge,
    memory_peak_bytes: Gauge,
    pids: Gauge,
    limit_memory_bytes: Gauge,
    limit_cpu_cores: Gauge,
    limit_pids: Gauge,
    totals: Mutex<Totals>,
}

/// A project's totals as `stats` and the tests read them back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// CPU time counted, in microseconds.
    pub cpu_usec: u64,
    /// Bytes read counted.
    pub io_read_bytes: u64,
    /// Bytes written counted.
    pub io_write_bytes: u64,
}

impl ProjectUsage {
    /// Registers the project's series (call once per project).
    pub fn register(project: &str) -> ProjectUsage {
        let p = project.to_owned();
        ProjectUsage {
            cpu_seconds: counter!("vassal_cpu_seconds_total", "project" => p.clone()),
            io_read_bytes: counter!("vassal_io_read_bytes_total", "project" => p.clone()),
            io_write_bytes: counter!("vassal_io_write_bytes_total", "project" => p.clone()),
            memory_bytes: gauge!("vassal_memory_bytes", "project" => p.clone()),
            memory_peak_bytes: gauge!("vassal_memory_peak_bytes", "project" => p.clone()),
            pids: gauge!("vassal_pids", "project" => p.clone()),
            limit_memory_bytes: gauge!("vassal_limit_memory_bytes", "project" => p.clone()),
            limit_cpu_cores: gauge!("vassal_limit_cpu_cores", "project" => p.clone()),
            limit_pids: gauge!("vassal_limit_pids", "project" => p),
            totals: Mutex::new(Totals::default()),
        }
    }

    /// Counts a `usage` report of attachment `attachment` (a vassal of this
    /// project).
    pub fn report(&self, attachment: u64, usage: &VassalUsage) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let (cpu, read, written) = match totals.attachments.get(&attachment) {
            Some(last) => (
                usage.cpu_usec.saturating_sub(last.cpu_usec),
                usage.io_read_bytes.saturating_sub(last.io_read_bytes),
                usage.io_write_bytes.saturating_sub(last.io_write_bytes),
            ),
            None if usage.resumed => (0, 0, 0),
            None => (usage.cpu_usec, usage.io_read_bytes, usage.io_write_bytes),
        };
        let last = totals.attachments.entry(attachment).or_default();
        // Cumulative values only go up: one that went down (impossible
        // from a cgroup) is ignored, and counted again only past its high.
        last.cpu_usec = last.cpu_usec.max(usage.cpu_usec);
        last.io_read_bytes = last.io_read_bytes.max(usage.io_read_bytes);
        last.io_write_bytes = last.io_write_bytes.max(usage.io_write_bytes);
        last.memory_bytes = usage.memory_bytes;
        last.memory_peak_bytes = usage.memory_peak_bytes;
        last.pids = usage.pids;
        last.limit_memory_bytes = usage.limits.memory_bytes;
        last.limit_cpu_millicores = usage.limits.cpu_millicores;
        last.limit_pids = usage.limits.pids;
        let seconds_before = totals.cpu_usec / 1_000_000;
        totals.cpu_usec = totals.cpu_usec.saturating_add(cpu);
        totals.io_read_bytes = totals.io_read_bytes.saturating_add(read);
        totals.io_write_bytes = totals.io_write_bytes.saturating_add(written);
        // The exporter's counters are integers: whole seconds, the
        // fraction carried in `cpu_usec` to the next report.
        self.cpu_seconds
            .increment(totals.cpu_usec / 1_000_000 - seconds_before);
        self.io_read_bytes.increment(read);
        self.io_write_bytes.increment(written);
        self.publish(&totals);
    }

    /// The attachment is gone: its vassal no longer holds memory or pids.
    pub fn detach(&self, attachment: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.attachments.remove(&attachment);
        self.publish(&totals);
    }

    /// The counters so far.
    pub fn totals(&self) -> UsageTotals {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        UsageTotals {
            cpu_usec: t.cpu_usec,
            io_read_bytes: t.io_read_bytes,
            io_write_bytes: t.io_write_bytes,
        }
    }

    fn publish(&self, totals: &Totals) {
        let live = || totals.attachments.values();
        let sum = |f: fn(&Attachment) -> u64| live().map(f).fold(0u64, u64::saturating_add) as f64;
        // A limit only when every attached vassal has one.
        let limit = |f: fn(&Attachment) -> Option<u64>| {
            live()
                .map(f)
                .try_fold(0u64, |acc, l| l.map(|l| acc.saturating_add(l)))
                .unwrap_or(0) as f64
        };
        self.memory_bytes.set(sum(|a| a.memory_bytes));
        self.memory_peak_bytes.set(sum(|a| a.memory_peak_bytes));
        self.pids.set(sum(|a| a.pids));
        self.limit_memory_bytes.set(limit(|a| a.limit_memory_bytes));
        self.limit_cpu_cores
            .set(limit(|a| a.limit_cpu_millicores) / 1000.0);
        self.limit_pids.set(limit(|a| a.limit_pids));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_usec: u64, io: u64, resumed: bool) -> VassalUsage {
        VassalUsage {
            cpu_usec,
            io_read_bytes: io,
            io_write_bytes: io,
            resumed,
            ..VassalUsage::default()
        }
    }

    #[test]
    fn deltas_per_attachment_never_subtract_and_a_resume_is_a_baseline() {
        let p = ProjectUsage::register("t");
        p.report(1, &usage(1_500_000, 10, false));
        p.report(1, &usage(2_000_000, 30, false));
        assert_eq!(p.totals().cpu_usec, 2_000_000);
        // A value going down (a forged or buggy report) subtracts nothing
        // and is not counted again until it passes its high.
        p.report(1, &usage(0, 0, false));
        p.report(1, &usage(2_100_000, 30, false));
        assert_eq!(p.totals().cpu_usec, 2_100_000);
        // A relaunch: a new attachment starting from 0 adds.
        p.detach(1);
        p.report(2, &usage(400_000, 5, false));
        assert_eq!(p.totals().cpu_usec, 2_500_000);
        assert_eq!(p.totals().io_write_bytes, 35);
        // A resumed attachment: its first report is only a baseline.
        p.report(3, &usage(9_000_000, 1000, true));
        assert_eq!(p.totals().cpu_usec, 2_500_000);
        p.report(3, &usage(9_250_000, 1001, true));
        assert_eq!(
            p.totals(),
            UsageTotals {
                cpu_usec: 2_750_000,
                io_read_bytes: 36,
                io_write_bytes: 36
            }
        );
    }
}
