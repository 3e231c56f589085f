//! Per-second budgets of what the router builds or logs itself, so a
//! vassal sending in a loop makes it build a bounded amount, then only
//! drop.

use std::sync::atomic::{AtomicU32, Ordering};

/// A per-second budget of messages the router builds itself.
pub struct Budget {
    per_second: u32,
    second: AtomicU32,
    used: AtomicU32,
}

impl Budget {
    /// A budget of `per_second` messages each second.
    pub const fn new(per_second: u32) -> Budget {
        Budget {
            per_second,
            second: AtomicU32::new(0),
            used: AtomicU32::new(0),
        }
    }

    /// Takes one message from this second's budget; false when spent.
    pub fn take(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        self.used.fetch_add(1, Ordering::Relaxed) < self.per_second
    }
}

/// Time exceeded messages the router sends per second to one project's
/// vassals: a vassal sending TTL-1 packets in a loop makes the router build
/// at most this many, then only drop. Per project, so that loop never
/// spends another tenant's answers (its traceroute keeps working).
pub const TIME_EXCEEDED_PER_SECOND: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_messages_per_second() {
        let b = Budget::new(10);
        let start = std::time::Instant::now();
        let taken = (0..1000).filter(|_| b.take()).count();
        // At most two seconds' worth, should the loop cross a second.
        assert!((10..=20).contains(&taken), "{taken}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
