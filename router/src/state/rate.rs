//! Token buckets of the network limits (`net_out`, `net_in`): one per
//! direction per vassal, charged with the bytes the wire carries (a TCP
//! super-packet as its segments, see [`crate::wire::offload`]).
//!
//! A bucket is a GCRA (virtual scheduling) in one atomic: `tat`, the
//! instant at which the bucket will be full again had nothing more been
//! sent. A packet of `n` bytes costs `n * 8e9 / rate` ns of it. The bucket
//! holds tokens while `tat < now + tau` (`tau` = the burst in ns): a packet
//! then passes and pushes `tat` by its cost, even past the burst (a
//! 64 KiB super-packet through a smaller bucket leaves a debt the next
//! packets wait or are dropped for, so no packet is too large to ever
//! pass). No lock, no allocation: the hot path is one load and, for
//! ingress, which several host readers share, one compare-exchange.
//!
//! Egress shapes ([`TokenBucket::wait`]: the vassal's reader sleeps until
//! the debt is paid, and the vassal's own queue holds what it sends);
//! ingress polices ([`TokenBucket::admit`]: a packet finding the bucket
//! empty is dropped). docs/design.md, "Network limits", says why.

use crate::config::NetTier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vassal_attach::RateLimit;

const NS_PER_S: u128 = 1_000_000_000;

/// One direction's bucket. [`TokenBucket::unlimited`] passes everything
/// without touching its atomic.
#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    /// The burst, in ns at `rate`.
    tau: u64,
    /// Theoretical arrival time, in ns of [`now_ns`]'s clock.
    tat: AtomicU64,
}

impl TokenBucket {
    /// A bucket that never limits.
    pub const fn unlimited() -> TokenBucket {
        TokenBucket {
            rate: 0,
            tau: 0,
            tat: AtomicU64::new(0),
        }
    }

    /// A full bucket for `limit` (`None`: unlimited).
    pub fn new(limit: Option<RateLimit>) -> TokenBucket {
        match limit {
            None => TokenBucket::unlimited(),
            Some(l) => {
                // At least 1 byte per second: a zero rate would mean unlimited.
                let rate = (l.rate / 8).max(1);
                TokenBucket {
                    rate,
                    tau: ns_for(l.burst, rate),
                    tat: AtomicU64::new(0),
                }
            }
        }
    }

    /// A bucket for `limit` that is empty at `now`: its burst is earned
    /// from then on, at the rate. For a peer that can reconnect at will (a
    /// uWSGI compat peer), whose every new connection would otherwise
    /// bring a full burst.
    pub fn empty(limit: Option<RateLimit>, now: u64) -> TokenBucket {
        let bucket = TokenBucket::new(limit);
        if bucket.limited() {
            bucket
                .tat
                .store(now.saturating_add(bucket.tau), Ordering::Relaxed);
        }
        bucket
    }

    /// Whether this bucket limits anything.
    pub fn limited(&self) -> bool {
        self.rate != 0
    }

    /// Bytes per second (0 when unlimited).
    pub fn bytes_per_second(&self) -> u64 {
        self.rate
    }

    /// Whether a packet may pass at `now`: the bucket holds some tokens.
    pub fn ready(&self, now: u64) -> bool {
        self.rate == 0 || self.tat.load(Ordering::Relaxed) < now.saturating_add(self.tau)
    }

    /// How long until [`TokenBucket::ready`] at `now`; zero when ready.
    pub fn wait(&self, now: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let tat = self.tat.load(Ordering::Relaxed);
        let ready_at = tat.saturating_sub(self.tau);
        // One ns past: ready needs tat strictly below now + tau.
        Duration::from_nanos((ready_at + 1).saturating_sub(now))
    }

    /// Charges `bytes` sent at `now`, whatever the bucket holds (egress:
    /// the reader checked [`TokenBucket::ready`] before reading).
    pub fn charge(&self, now: u64, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let cost = ns_for(bytes, self.rate);
        // Single writer (the vassal's reader): a load and a store suffice,
        // but fetch_update keeps it right should that ever change.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }

    /// Takes `bytes` at `now` if the bucket holds tokens (ingress); false
    /// means drop.
    pub fn admit(&self, now: u64, bytes: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let cost = ns_for(bytes, self.rate);
        let limit = now.saturating_add(self.tau);
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                (tat < limit).then(|| tat.max(now).saturating_add(cost))
            })
            .is_ok()
    }
}

/// Time `bytes` take at `rate` bytes per second, in ns.
fn ns_for(bytes: u64, rate: u64) -> u64 {
    let ns = u128::from(bytes) * NS_PER_S / u128::from(rate.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The monotonic clock buckets run on, in ns. Read once per batch of
/// packets, not per packet.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives across the
    // call; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The limit in force for one direction: what the vassal asked (or the
/// project's `default` when it asked none), never above the project's
/// `ceiling`, whose burst caps the burst too (else a vassal could ask a
/// small rate with a huge burst).
pub fn effective(
    asked: Option<RateLimit>,
    default: Option<RateLimit>,
    ceiling: Option<RateLimit>,
) -> Option<RateLimit> {
    match (asked.or(default), ceiling) {
        (None, c) => c,
        (Some(a), None) => Some(a),
        (Some(a), Some(c)) => Some(RateLimit {
            rate: a.rate.min(c.rate),
            burst: a.burst.min(c.burst),
        }),
    }
}

/// The `[net_out, net_in]` limits in force for a vassal of a project of
/// `tier` that asks `asked` (docs/operations.md, "Network tiers"). A peer
/// that cannot ask (a version-1 launcher, a uWSGI compat peer) asks
/// `[None, None]`: the defaults, else the ceilings.
pub fn in_force(tier: &NetTier, asked: [Option<RateLimit>; 2]) -> [Option<RateLimit>; 2] {
    [
        effective(asked[0], tier.out_default, tier.out_ceiling),
        effective(asked[1], tier.in_default, tier.in_ceiling),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn limit(bits: u64, burst: u64) -> Option<RateLimit> {
        Some(RateLimit { rate: bits, burst })
    }

    #[test]
    fn an_empty_bucket_passes_the_rate_and_no_burst() {
        let now = 10 * S;
        // 1 byte per microsecond, a burst of 10 000 bytes.
        let b = TokenBucket::empty(limit(8_000_000, 10_000), now);
        assert!(!b.ready(now));
        let mut passed = 0u64;
        let mut t = now;
        // A second of 1000-byte packets offered every 100 us.
        while t < now + S {
            t += 100_000;
            if b.admit(t, 1000) {
                passed += 1000;
            }
        }
        // The rate (1 000 000 bytes) and not the burst on top of it.
        assert!((990_000..=1_001_000).contains(&passed), "{passed}");
        assert!(!TokenBucket::empty(None, now).limited());
    }

    #[test]
    fn unlimited_passes_everything_and_never_waits() {
        let b = TokenBucket::new(None);
        assert!(!b.limited());
        for i in 0..1000 {
            assert!(b.admit(i, 65536));
            b.charge(i, 65536);
        }
        assert!(b.ready(0));
        assert_eq!(b.wait(0), Duration::ZERO);
    }

    #[test]
    fn policing_passes_the_burst_then_the_rate() {
        // 8 Mbit/s = 1 MB/s, 10 KB burst.
        let b = TokenBucket::new(limit(8_000_000, 10_000));
        let now = 100 * S;
        let passed = (0..100).filter(|_| b.admit(now, 1000)).count();
        // The burst (a packet passes while a token is left: one more
        // would have passed had the burst not been a whole number of them).
        assert_eq!(passed, 10);
        // Over the next second, at most a second's worth passes.
        let mut passed = 0u64;
        for ms in 1..=1000 {
            for _ in 0..5 {
                if b.admit(now + ms * 1_000_000, 1000) {
                    passed += 1000;
                }
            }
        }
        assert!((990_000..=1_010_000).contains(&passed), "{passed}");
    }

    #[test]
    fn an_idle_bucket_refills_to_its_burst_only() {
        let b = TokenBucket::new(limit(8_000_000, 10_000));
        assert!(b.admit(S, 1_000_000)); // a debt of almost a second
        assert!(!b.admit(S + S / 2, 1));
        // An hour later: the burst again, not an hour's worth.
        let later = 3600 * S;
        let passed = (0..100).filter(|_| b.admit(later, 1000)).count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn shaping_waits_exactly_for_the_debt() {
        let b = TokenBucket::new(limit(8_000_000, 10_000)); // 1 B/us
        let now = 10 * S;
        assert!(b.ready(now));
        b.charge(now, 65_536); // a super-packet larger than the burst
        assert!(!b.ready(now));
        // Tokens return at 1 byte per us: ready after 65 536 - 10 000 us.
        let wait = b.wait(now);
        assert_eq!(wait, Duration::from_nanos(55_536_000 + 1));
        let then = now + wait.as_nanos() as u64;
        assert!(b.ready(then));
        assert!(!b.ready(then - 2));
    }

    #[test]
    fn shaped_throughput_is_the_rate() {
        // A reader that sleeps exactly as told and sends 64 KiB packets
        // moves the rate plus at most one burst and one packet.
        let b = TokenBucket::new(limit(50_000_000, 625_000));
        let start = S;
        let mut now = start;
        let mut sent = 0u64;
        while now < start + 8 * S {
            if b.ready(now) {
                b.charge(now, 65_536);
                sent += 65_536;
            } else {
                now += b.wait(now).as_nanos() as u64;
            }
        }
        let ideal = 50_000_000 / 8 * 8;
        assert!(sent >= ideal && sent <= ideal + 625_000 + 65_536, "{sent}");
    }

    #[test]
    fn concurrent_admits_never_pass_more_than_the_rate() {
        let b = std::sync::Arc::new(TokenBucket::new(limit(8_000_000, 10_000)));
        let now = 5 * S;
        let passed: usize = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&b);
                std::thread::spawn(move || (0..1000).filter(|_| b.admit(now, 1000)).count())
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(passed, 10);
    }

    #[test]
    fn the_ceiling_caps_what_is_asked_and_the_default_fills_in() {
        let ask = limit(100_000_000, 2_000_000);
        let default = limit(10_000_000, 125_000);
        let ceiling = limit(50_000_000, 625_000);
        assert_eq!(effective(ask, default, ceiling), limit(50_000_000, 625_000));
        assert_eq!(effective(None, default, ceiling), default);
        assert_eq!(effective(None, None, ceiling), ceiling);
        assert_eq!(effective(ask, None, None), ask);
        assert_eq!(effective(None, None, None), None);
        assert_eq!(
            effective(limit(1_000_000, 131_072), default, ceiling),
            limit(1_000_000, 131_072)
        );
    }
}
