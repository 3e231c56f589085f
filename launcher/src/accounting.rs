//! Live accounting: the vassal's usage (CPU, memory, IO, pids) and the
//! limits of its file, sent to the router over the attach connection every
//! [`REPORT_EVERY`] so that it can export them per project for billing and
//! alerts (docs/operations.md, "Billing"). A vassal without a network, or
//! whose router is away, is accounted only in its `--report`.
//!
//! The counters sent are cumulative since this launcher started the
//! vassal: a lost datagram loses nothing, and the router adds only what
//! they gained per connection. After a re-attach the reports say
//! `resumed`, so a router that restarted meanwhile takes the first one as
//! its baseline instead of counting the vassal's whole past again.

use crate::cgroup::Usage;
use crate::config::Limits;
use crate::network::Attachment;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use vassal_attach::{transport, Request, UsageLimits, VassalUsage, MAX_USAGE_VALUE};

/// How often usage is sent while the vassal runs: well within the
/// protocol's [`vassal_attach::USAGE_EVERY_SECS`], so an alert or a test
/// sees CPU rise within a few seconds.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// When the next report is due, and whether one was sent on an earlier
/// connection.
#[derive(Debug)]
pub struct Meter {
    limits: UsageLimits,
    next: Instant,
    sent_any: bool,
    resumed: bool,
}

impl Meter {
    /// A meter for a vassal with `limits`; the first report is due at once.
    pub fn new(limits: &Limits) -> Meter {
        Meter {
            limits: usage_limits(limits),
            next: Instant::now(),
            sent_any: false,
            resumed: false,
        }
    }

    /// Whether a periodic report is due.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// A new connection replaced the old one: report at once, as resumed
    /// if anything was reported before.
    pub fn reattached(&mut self) {
        self.resumed = self.sent_any;
        self.next = Instant::now();
    }

    /// Sends `usage` to the router, if attached. Best effort: the next
    /// report carries the same cumulative counters.
    pub fn report(&mut self, usage: &Usage, router: Option<&Attachment>) {
        self.next = Instant::now() + REPORT_EVERY;
        let Some(a) = router else { return };
        let message = vassal_attach::encode(&Request::Usage(self.message(usage)));
        if transport::send_datagram(a.socket.as_fd(), &message, None).is_ok() {
            self.sent_any = true;
        }
    }

    fn message(&self, usage: &Usage) -> VassalUsage {
        let v = |x: Option<u64>| x.unwrap_or(0).min(MAX_USAGE_VALUE);
        VassalUsage {
            cpu_usec: v(usage.cpu_usec),
            memory_bytes: v(usage.memory_bytes),
            memory_peak_bytes: v(usage.peak_memory_bytes),
            io_read_bytes: v(usage.io_read_bytes),
            io_write_bytes: v(usage.io_write_bytes),
            pids: v(usage.pids),
            resumed: self.resumed,
            limits: self.limits,
        }
    }
}

fn usage_limits(limits: &Limits) -> UsageLimits {
    let cap = |x: u64| x.min(MAX_USAGE_VALUE);
    UsageLimits {
        memory_bytes: limits.memory.map(cap),
        cpu_millicores: limits.cpu.map(|c| cap((c * 1000.0).round() as u64)),
        pids: limits.pids.map(cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reattach_reports_at_once_and_resumed_only_after_a_report() {
        let limits = Limits {
            memory: Some(64 << 20),
            cpu: Some(0.5),
            pids: Some(32),
            nofile: 1024,
            tmp_size: 1 << 20,
            wall_clock: None,
            file_size: None,
            io: crate::config::IoLimits::default(),
            net_out: None,
            net_in: None,
        };
        let mut m = Meter::new(&limits);
        assert!(m.due());
        let usage = Usage {
            cpu_usec: Some(7),
            pids: Some(2),
            ..Usage::default()
        };
        let msg = m.message(&usage);
        assert_eq!(msg.cpu_usec, 7);
        assert_eq!(msg.io_read_bytes, 0);
        assert!(!msg.resumed);
        assert_eq!(msg.limits.cpu_millicores, Some(500));
        assert_eq!(msg.limits.memory_bytes, Some(64 << 20));
        // Not attached: nothing sent, so a later first attach is no resume.
        m.report(&usage, None);
        assert!(!m.due());
        m.reattached();
        assert!(m.due());
        assert!(!m.message(&usage).resumed);
        // Once something went out, a re-attach resumes.
        m.sent_any = true;
        m.reattached();
        assert!(m.message(&usage).resumed);
    }
}
