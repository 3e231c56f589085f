//! One packet as a reader gets it: an optional `virtio_net_hdr` and the IP
//! bytes behind it.

use crate::wire::offload::{VnetHdr, HDR_LEN};

/// One packet as read: its offload header ([`VnetHdr::NONE`] when its
/// source has none) and its IP bytes.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The `virtio_net_hdr` it came with.
    pub hdr: VnetHdr,
    /// The IP packet.
    pub ip: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A complete packet with no offload header.
    pub fn plain(ip: &'a [u8]) -> Frame<'a> {
        Frame {
            hdr: VnetHdr::NONE,
            ip,
        }
    }
}

/// Splits what a read returned into its frame: a vnet header first when
/// the tun carries one. `None` when too short to hold that header.
pub fn frame_of(read: &[u8], vnet: bool) -> Option<Frame<'_>> {
    if !vnet {
        return Some(Frame::plain(read));
    }
    let (hdr, ip) = read.split_first_chunk::<HDR_LEN>()?;
    Some(Frame {
        hdr: VnetHdr::read(hdr),
        ip,
    })
}
