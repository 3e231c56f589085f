//! The flow state file's format, pure (no I/O): a header, then a fixed
//! array of [`SLOT`]-byte slots, each one flow or free. The running router
//! writes a slot with plain stores when its flow opens, changes (once a
//! second at most: the clock is coarse) or expires (`state::flow_store`);
//! a router starting after it reads them back. A slot is self-validating
//! (a checksum over all its bytes), so a slot torn by a SIGKILL in the
//! middle of its write, or corrupted in any other way, is skipped on its
//! own; the header names the format and the boot the times belong to.
//!
//! The reader of a file treats it as untrusted input: [`decode_header`]
//! and [`decode_slot`] check every field the format constrains (sizes,
//! flags, family, reserved bytes, a valid project name); what depends on
//! the running router (its subnets, its clock, its bounds) is checked by
//! the caller.
//!
//! Layout (little endian). Header, [`HEADER`] bytes: magic `VSLFLOW1`,
//! version `u32`, slot size `u32`, slot count `u32`, boot id (36 bytes,
//! `/proc/sys/kernel/random/boot_id`), FNV-1a checksum of the bytes before
//! it (`u64`), zeros. Slot: checksum (`u64`, FNV-1a of bytes 8..),
//! `in_use` (1; 0 = free), protocol, family (4 or 6), flags (bit 0: the
//! opener is endpoint a, bit 1: TCP closing), endpoint a (16 bytes, IPv4
//! in the first four), endpoint b, a's port, b's port, last seen (`u32`
//! seconds of `CLOCK_BOOTTIME`), project name length, name (32 bytes,
//! zero padded), zeros.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes of one slot.
pub const SLOT: usize = 96;
/// Bytes of the header (a slot's worth, so slots stay aligned).
pub const HEADER: usize = SLOT;
/// The format's magic.
pub const MAGIC: [u8; 8] = *b"VSLFLOW1";
/// The format's version.
pub const VERSION: u32 = 1;
/// Bytes of a boot id.
pub const BOOT_ID: usize = 36;
/// Longest project name (as the attach protocol's).
pub const NAME_MAX: usize = vassal_attach::MAX_PROJECT_NAME_LEN;

const NAME_AT: usize = 57;
const RESERVED_AT: usize = NAME_AT + NAME_MAX;
const HEADER_SUM_AT: usize = 20 + BOOT_ID;

/// A project's name as stored in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl Name {
    /// `name` if it is a valid project name.
    pub fn new(name: &str) -> Option<Name> {
        vassal_attach::validate_project_name(name).ok()?;
        let mut bytes = [0u8; NAME_MAX];
        bytes
            .get_mut(..name.len())?
            .copy_from_slice(name.as_bytes());
        Some(Name {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Built only from a validated (ASCII) name.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// One flow as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// IP protocol.
    pub proto: u8,
    /// First endpoint (the key's order: see `state::flows`).
    pub a: IpAddr,
    /// Second endpoint.
    pub b: IpAddr,
    /// First endpoint's port (ICMP echo: the identifier).
    pub a_port: u16,
    /// Second endpoint's port.
    pub b_port: u16,
    /// Whether the opening packet came from `a`.
    pub opener_is_a: bool,
    /// TCP: a FIN or RST was seen.
    pub tcp_closing: bool,
    /// When a packet of the flow was last seen (`CLOCK_BOOTTIME` seconds).
    pub last_seen: u32,
    /// The project the flow is charged to.
    pub project: Name,
}

/// A file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Slots the writer laid out.
    pub slots: u32,
    /// The boot its times belong to.
    pub boot_id: [u8; BOOT_ID],
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than a header.
    #[error("shorter than its header ({len} bytes)")]
    Short {
        /// The file's length.
        len: usize,
    },
    /// Not this format, or a version this router does not read.
    #[error("not a flow state file of version {VERSION} (magic, version or slot size)")]
    Format,
    /// The header's checksum does not match.
    #[error("header checksum mismatch")]
    Checksum,
}

/// Why a slot is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Its checksum does not match (torn or corrupted).
    #[error("checksum mismatch")]
    Checksum,
    /// A field holds a value the format does not allow.
    #[error("invalid field: {0}")]
    Field(&'static str),
}

/// FNV-1a, 64 bits: cheap, and any torn or random slot fails it but for
/// a chance of 2^-64.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes the header of a file of `slots` slots.
pub fn encode_header(h: &Header, out: &mut [u8; HEADER]) {
    *out = [0; HEADER];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(SLOT as u32).to_le_bytes());
    out[16..20].copy_from_slice(&h.slots.to_le_bytes());
    out[20..HEADER_SUM_AT].copy_from_slice(&h.boot_id);
    let sum = checksum(&out[..HEADER_SUM_AT]);
    out[HEADER_SUM_AT..HEADER_SUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Reads the header at the start of `file`.
pub fn decode_header(file: &[u8]) -> Result<Header, HeaderError> {
    let Some(h) = file.get(..HEADER) else {
        return Err(HeaderError::Short { len: file.len() });
    };
    if h[..8] != MAGIC || le32(&h[8..12]) != VERSION || le32(&h[12..16]) != SLOT as u32 {
        return Err(HeaderError::Format);
    }
    if le64(&h[HEADER_SUM_AT..HEADER_SUM_AT + 8]) != checksum(&h[..HEADER_SUM_AT]) {
        return Err(HeaderError::Checksum);
    }
    let mut boot_id = [0u8; BOOT_ID];
    boot_id.copy_from_slice(&h[20..HEADER_SUM_AT]);
    Ok(Header {
        slots: le32(&h[16..20]),
        boot_id,
    })
}

/// Writes `e` as an in-use slot.
pub fn encode_slot(e: &Entry, out: &mut [u8; SLOT]) {
    *out = [0; SLOT];
    out[8] = 1;
    out[9] = e.proto;
    let (a, b, family) = match (e.a, e.b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (v4(a), v4(b), 4),
        (a, b) => (v6(a), v6(b), 6),
    };
    out[10] = family;
    out[11] = u8::from(e.opener_is_a) | u8::from(e.tcp_closing) << 1;
    out[12..28].copy_from_slice(&a);
    out[28..44].copy_from_slice(&b);
    out[44..46].copy_from_slice(&e.a_port.to_le_bytes());
    out[46..48].copy_from_slice(&e.b_port.to_le_bytes());
    out[48..52].copy_from_slice(&e.last_seen.to_le_bytes());
    out[56] = e.project.len;
    out[NAME_AT..RESERVED_AT].copy_from_slice(&e.project.bytes);
    let sum = checksum(&out[8..]);
    out[..8].copy_from_slice(&sum.to_le_bytes());
}

/// The byte that marks a slot free when zero (one store frees a slot).
pub const IN_USE_AT: usize = 8;

/// Reads one slot: `Ok(None)` when free.
pub fn decode_slot(s: &[u8; SLOT]) -> Result<Option<Entry>, SlotError> {
    match s[IN_USE_AT] {
        0 => return Ok(None),
        1 => {}
        _ => return Err(SlotError::Field("in_use")),
    }
    if le64(&s[..8]) != checksum(&s[8..]) {
        return Err(SlotError::Checksum);
    }
    if s[11] & !3 != 0 {
        return Err(SlotError::Field("flags"));
    }
    if s[52..56].iter().chain(&s[RESERVED_AT..]).any(|&b| b != 0) {
        return Err(SlotError::Field("reserved"));
    }
    let (a, b) = match s[10] {
        4 => {
            if s[16..28].iter().chain(&s[32..44]).any(|&b| b != 0) {
                return Err(SlotError::Field("IPv4 address padding"));
            }
            (from_v4(&s[12..16]), from_v4(&s[28..32]))
        }
        6 => (from_v6(&s[12..28]), from_v6(&s[28..44])),
        _ => return Err(SlotError::Field("family")),
    };
    let len = usize::from(s[56]);
    let name = s
        .get(NAME_AT..NAME_AT + len)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(Name::new)
        .ok_or(SlotError::Field("project name"))?;
    if s[NAME_AT + len..RESERVED_AT].iter().any(|&b| b != 0) {
        return Err(SlotError::Field("project name padding"));
    }
    Ok(Some(Entry {
        proto: s[9],
        a,
        b,
        a_port: u16::from_le_bytes([s[44], s[45]]),
        b_port: u16::from_le_bytes([s[46], s[47]]),
        opener_is_a: s[11] & 1 != 0,
        tcp_closing: s[11] & 2 != 0,
        last_seen: le32(&s[48..52]),
        project: name,
    }))
}

/// The slots of `file` after its header: as many whole slots as both the
/// header and the length allow (a truncated file yields the ones it
/// still holds).
pub fn slots<'a>(file: &'a [u8], header: &Header) -> impl Iterator<Item = &'a [u8; SLOT]> + 'a {
    file.get(HEADER..)
        .unwrap_or(&[])
        .chunks_exact(SLOT)
        .take(header.slots as usize)
        .filter_map(|c| c.try_into().ok())
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a.octets());
    o
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        // Mixed families never make a key; stored as mapped, refused on load.
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn from_v4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn from_v6(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            proto: 6,
            a: "10.9.0.2".parse().unwrap(),
            b: "203.0.113.1".parse().unwrap(),
            a_port: 40000,
            b_port: 80,
            opener_is_a: true,
            tcp_closing: false,
            last_seen: 1234,
            project: Name::new("alice").unwrap(),
        }
    }

    #[test]
    fn slots_round_trip_for_both_families() {
        let mut e = entry();
        let mut s = [0u8; SLOT];
        encode_slot(&e, &mut s);
        assert_eq!(decode_slot(&s), Ok(Some(e)));
        e.a = "fd00::2".parse().unwrap();
        e.b = "2001:db8::1".parse().unwrap();
        e.tcp_closing = true;
        e.project = Name::new("a-very-long-project-name_0123456").unwrap();
        encode_slot(&e, &mut s);
        assert_eq!(decode_slot(&s), Ok(Some(e)));
    }

    #[test]
    fn any_flipped_bit_or_torn_write_is_refused() {
        let mut s = [0u8; SLOT];
        encode_slot(&entry(), &mut s);
        for i in 0..SLOT * 8 {
            let mut t = s;
            t[i / 8] ^= 1 << (i % 8);
            // Clearing in_use frees the slot: that is the one valid change.
            if t[IN_USE_AT] != 0 {
                assert!(decode_slot(&t).is_err(), "bit {i}");
            }
        }
        // A torn write: the first half of a new entry over an old one.
        let mut other = [0u8; SLOT];
        let mut e = entry();
        e.b_port = 443;
        encode_slot(&e, &mut other);
        let mut torn = s;
        torn[..46].copy_from_slice(&other[..46]);
        assert_eq!(decode_slot(&torn), Err(SlotError::Checksum));
        assert_eq!(decode_slot(&[0; SLOT]), Ok(None));
    }

    #[test]
    fn invalid_names_are_refused_even_with_a_good_checksum() {
        let mut s = [0u8; SLOT];
        encode_slot(&entry(), &mut s);
        s[NAME_AT] = b'A';
        let sum = checksum(&s[8..]);
        s[..8].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode_slot(&s), Err(SlotError::Field("project name")));
        assert!(Name::new("").is_none() && Name::new(&"a".repeat(33)).is_none());
    }

    #[test]
    fn headers_round_trip_and_truncated_files_keep_their_whole_slots() {
        let h = Header {
            slots: 3,
            boot_id: [b'x'; BOOT_ID],
        };
        let mut file = vec![0u8; HEADER + 3 * SLOT];
        let mut head = [0u8; HEADER];
        encode_header(&h, &mut head);
        file[..HEADER].copy_from_slice(&head);
        assert_eq!(decode_header(&file), Ok(h));
        assert_eq!(slots(&file, &h).count(), 3);
        assert_eq!(slots(&file[..HEADER + 2 * SLOT + 5], &h).count(), 2);
        // A file longer than its header says: only the header's slots.
        file.extend_from_slice(&[0; SLOT]);
        assert_eq!(slots(&file, &h).count(), 3);
        assert_eq!(
            decode_header(&file[..10]),
            Err(HeaderError::Short { len: 10 })
        );
        file[20] ^= 1;
        assert_eq!(decode_header(&file), Err(HeaderError::Checksum));
        file[8] = 2;
        assert_eq!(decode_header(&file), Err(HeaderError::Format));
    }
}
