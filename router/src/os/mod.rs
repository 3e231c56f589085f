//! OS resources: tun devices (the vassals' and the host's), unix sockets,
//! the router's nftables table, and the event sink.

pub mod events;
pub mod host_tun;
pub mod nat;
pub mod routes;
pub mod socket;
pub mod tun;
