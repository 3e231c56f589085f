//! The vassal rule-file language: parsing and validation of the operator's
//! TOML rule file, a compiled first-match classifier whose lookup cost stays
//! nearly flat as rules grow, and import of uWSGI tuntap firewall rules.
//!
//! The operator's reference is `docs/rules.md`.

mod classifier;
mod error;
pub mod naive;
mod parse;
mod peer;
mod project;
mod rules;
mod tree;
pub mod uwsgi;

use std::net::IpAddr;

pub use classifier::{Classifier, ClassifierStats};
pub use error::{RuleError, RuleErrorKind, RuleErrors};
pub use peer::Peer;
pub use project::ProjectId;
pub use rules::{proto, Action, Chain, Defaults, PeerKind, PortSet, Rule, RuleSet};

/// What the classifier looks at in a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketKey {
    /// The vassal's project (the sender's on out, the receiver's on in).
    pub project: ProjectId,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (IPv6: the upper-layer next header).
    pub proto: u8,
    /// Source port; 0 for protocols other than tcp and udp.
    pub src_port: u16,
    /// Destination port; 0 for protocols other than tcp and udp.
    pub dst_port: u16,
    /// The other end (the destination on out, the source on in): outside
    /// the vassal range, an unknown address of it, or a vassal and its
    /// project. Rules with `peer`/`peer_project` look at it.
    pub peer: Peer,
}

/// The outcome of classifying one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Allow or deny.
    pub action: Action,
    /// Index of the matching rule in its chain; `None` = the chain's policy.
    pub rule: Option<u32>,
    /// The matching rule asked for the match to be reported.
    pub log: bool,
}
