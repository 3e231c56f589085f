//! What the datapath notes about a project for the event watch: lock-free
//! [`Evidence`] written on the slow path of new flows and denied packets,
//! read and reset once a second by the daemon's watch, so suspicion costs
//! the established packet path nothing.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
    pub fn take_ports(&self) -> u64 {
        let set: u32 = self
            .ports
            .iter()
            .map(|w| w.swap(0, Ordering::Relaxed).count_ones())
            .sum();
        distinct_estimate(set as usize)
    }

    /// Logged denials since the last call and the last of them; resets.
    pub fn take_logged(&self) -> (u64, Option<Logged>) {
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
}
