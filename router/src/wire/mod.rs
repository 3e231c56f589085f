//! Wire formats, pure: views of IP packets and their offload headers, the
//! ICMP messages the router builds and the checksum they share, and the
//! flow state file's format. No I/O, no state. For the unit tests,
//! `testpkt` builds the packets they feed it.

pub mod checksum;
pub mod flow_file;
pub mod frame;
pub mod icmp;
pub mod offload;
pub mod packet;
#[cfg(test)]
pub mod testpkt;
