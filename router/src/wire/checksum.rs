//! The Internet checksum (RFC 1071), shared by the messages the router
//! builds (`icmp`) and the segments it cuts (`offload`).

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd last
/// byte padded with zero), added to `acc`; [`fold`] makes it 16 bits.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits, not complemented: a checksum field takes its
/// complement, and a packet whose checksum is right folds to 0xffff.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}
