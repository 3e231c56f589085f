//! OS resources: tun devices (the vassals' and the host's), unix sockets,
//! the router's nftables table, the event sink, and the memory-mapped
//! state file with its trusted read.

pub mod clock;
pub mod events;
pub mod host_tun;
pub mod mapped;
pub mod nat;
pub mod nft;
pub mod routes;
pub mod socket;
pub mod tun;
