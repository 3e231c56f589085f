//! vassal-router: the host side of vassal's network. A host tun device as
//! the vassals' gateway, the attach protocol on a unix control socket, a
//! datapath switching packets between vassals and the host with
//! anti-spoofing, a stateful firewall and per-project accounting, NAT
//! egress through nftables, and uWSGI tuntap compatibility. See
//! docs/design.md, section "Router datapath".
//!
//! # Layers
//!
//! Each folder is a layer; a file imports only from layers below its own
//! (or from files of its own folder that do not import it back), never up:
//!
//! 1. [`config`]: the configuration, read by every layer; imports nothing
//!    of the router.
//! 2. [`wire`]: packet, offload header and ICMP views, pure (no I/O).
//! 3. [`os`]: OS resources: tun devices, the host tun, unix sockets, the
//!    nftables table, the event sink.
//! 4. [`port`]: what a packet can be written to (a vassal tun, a compat
//!    peer's output queue, the host tun) and what became of the write.
//! 5. [`cluster`]: state fed by etcd (docs/cluster.md): the block this
//!    host holds, automatic addresses, the cache of every host's blocks and
//!    identities. Imports `config` and `os` only, never the datapath or a
//!    front-end (the `[cluster]` table and the block arithmetic are in
//!    [`config::cluster`] and [`config::blocks`]).
//! 6. [`state`]: the registry (projects, attached vassals and their ports),
//!    flows, fragments, rules in force, counters, evidence, budgets.
//! 7. [`datapath`]: the packet path ([`datapath::router`]) and the tun
//!    readers that feed it ([`datapath::reader`]).
//! 8. Front-ends: [`control`] (attach protocol server), [`compat`] (uWSGI
//!    peers), [`metrics`] (Prometheus exporter), [`client`] (the CLI's side
//!    of the control socket).
//! 9. [`daemon`]: start order, signals, the sweeper and the event watch;
//!    the cluster routes and the datapath's view of other hosts, fed by
//!    the cluster core's membership through an adapter.
//!
//! The items re-exported below keep the paths other crates of the
//! workspace (tests, fuzz targets) use.

pub mod client;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod metrics;
pub mod os;
pub mod port;
pub mod state;
pub mod wire;

pub use os::nat;
pub use state::fragments;
pub use wire::{icmp, offload, packet};
