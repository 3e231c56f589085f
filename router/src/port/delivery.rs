//! What became of a packet written to a port.

use crate::os::tun::Io;
use crate::wire::offload::{Plan, Wire};

/// What happened to a packet written toward a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written (or queued, for a compat peer).
    Sent,
    /// The destination's queue is full.
    Full,
    /// The destination is gone or refused the packet.
    Gone,
}

impl From<Io> for Delivery {
    fn from(io: Io) -> Delivery {
        match io {
            Io::Done(_) => Delivery::Sent,
            Io::WouldBlock => Delivery::Full,
            Io::Closed | Io::Failed(_) => Delivery::Gone,
        }
    }
}

/// The outcome of a write and what of the packet went through (all of it
/// but for a super-packet cut into segments and refused part way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// How it ended.
    pub outcome: Delivery,
    /// Packets and bytes written.
    pub sent: Wire,
}

impl Delivered {
    /// A packet of `plan` written whole (all its segments) or not at all.
    pub fn whole(outcome: Delivery, plan: &Plan) -> Delivered {
        let sent = if outcome == Delivery::Sent {
            plan.wire
        } else {
            Wire::default()
        };
        Delivered { outcome, sent }
    }

    /// Segments of `plan` that did not go through.
    pub fn unsent(&self, plan: &Plan) -> u64 {
        plan.wire.packets.saturating_sub(self.sent.packets)
    }
}
