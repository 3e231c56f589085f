//! vassal-router: the host side of vassal's network. A host tun device as
//! the vassals' gateway, the attach protocol on a unix control socket, a
//! datapath switching packets between vassals and the host with
//! anti-spoofing, a stateful firewall and per-project accounting, NAT
//! egress through nftables, and uWSGI tuntap compatibility. See
//! docs/design.md, section "Router datapath".

pub mod client;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod firewall;
pub mod flows;
pub mod fragments;
pub mod host_tun;
pub mod icmp;
pub mod metrics;
pub mod nat;
pub mod offload;
pub mod packet;
pub mod socket;
pub mod tun;
pub mod vassals;
