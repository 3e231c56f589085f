//! Flows that outlive the process: the flow table's copy in a memory-mapped
//! file under `state_dir` (tmpfs, `/run/vassal`), written as it goes, and
//! what a starting router accepts back from the file its predecessor left.
//!
//! Like Cilium's BPF maps, which outlive their agent, the state is in the
//! file at every moment (a SIGKILL gives no chance to dump): each shard of
//! the flow table owns a fixed range of the file's slots and writes a
//! flow's slot with plain stores, under the shard's own lock, when the
//! flow opens, when its last-seen second or closing state changes (once a
//! second at most per flow) and frees it when the flow expires. No system
//! call, no allocation. A crash loses only a slot torn in the middle of
//! its write (its checksum fails; the flow is not restored).
//!
//! The file a new router reads is untrusted: read only from a directory
//! and a file of its own user that nobody else may write, bounded in size,
//! decoded slot by slot (`wire::flow_file`), each entry then checked
//! against this router ([`check`]) and inserted under the live table's
//! bounds (`state::restore`). The router then writes a fresh file and
//! renames it over the old one.

use crate::config::{Config, FlowConfig};
use crate::os::mapped::{self, Mapped, MappedError};
use crate::wire::flow_file::{self, Entry, Header, HEADER, IN_USE_AT, SLOT};
use crate::wire::packet::proto;
use std::net::IpAddr;
use std::path::PathBuf;

/// The flow state file could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FlowStoreError {
    /// The directory, the old file or the new one.
    #[error("flow state file: {0}")]
    File(#[from] MappedError),
    /// Reading the boot id.
    #[error("reading the boot id {path}: {source}")]
    BootId {
        /// The path read.
        path: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// The table's writer into the mapped file.
pub struct Store {
    map: Mapped,
    per_shard: usize,
    path: PathBuf,
    fresh: PathBuf,
}

impl Store {
    /// Slots each shard owns.
    pub fn per_shard(&self) -> usize {
        self.per_shard
    }

    /// Writes `e` into slot `index` (plain stores).
    pub fn write(&self, index: u32, e: &Entry) {
        let mut buf = [0u8; SLOT];
        flow_file::encode_slot(e, &mut buf);
        self.map.write(HEADER + index as usize * SLOT, &buf);
    }

    /// Frees slot `index` (one store).
    pub fn free(&self, index: u32) {
        self.map
            .write(HEADER + index as usize * SLOT + IN_USE_AT, &[0]);
    }

    /// Puts the new file in place of the old one (after the restore, so
    /// that a crash before it leaves the old file to the next start).
    pub fn publish(&self) -> Result<(), FlowStoreError> {
        std::fs::rename(&self.fresh, &self.path).map_err(|source| {
            FlowStoreError::File(MappedError::Io {
                step: "renaming into place",
                path: self.fresh.clone(),
                source,
            })
        })
    }
}

/// What a start found in the old file.
#[derive(Debug, Default)]
pub struct Found {
    /// Entries that decoded; still to be [`check`]ed.
    pub entries: Vec<Entry>,
    /// Slots skipped: torn, corrupted or malformed.
    pub invalid: usize,
    /// Why the file as a whole was not read, if it was not.
    pub refused: Option<String>,
}

/// The path of the flow state file of `config`.
pub fn path(config: &Config) -> PathBuf {
    config.state_dir.join(format!("flows-{}", config.device))
}

/// Slots a table of `config` lays out per shard: the shard's share of
/// `max_total` with the same headroom as its map.
pub fn per_shard(config: &FlowConfig, shards: usize) -> usize {
    let share = config.max_total.div_ceil(shards);
    share + share / 4 + 8
}

/// The kernel's id of this boot: the file's times (`CLOCK_BOOTTIME`)
/// mean nothing in another.
pub fn boot_id() -> Result<[u8; flow_file::BOOT_ID], FlowStoreError> {
    const PATH: &str = "/proc/sys/kernel/random/boot_id";
    let text =
        std::fs::read(PATH).map_err(|source| FlowStoreError::BootId { path: PATH, source })?;
    let mut id = [0u8; flow_file::BOOT_ID];
    for (o, b) in id.iter_mut().zip(text) {
        *o = b;
    }
    Ok(id)
}

/// Decodes an old file's bytes (untrusted): the header must be this
/// format and this boot's, then each slot stands on its own.
pub fn decode(bytes: &[u8], boot_id: &[u8; flow_file::BOOT_ID]) -> Found {
    let mut found = Found::default();
    let header = match flow_file::decode_header(bytes) {
        Ok(h) => h,
        Err(e) => {
            found.refused = Some(e.to_string());
            return found;
        }
    };
    if &header.boot_id != boot_id {
        found.refused = Some("written during another boot".into());
        return found;
    }
    for slot in flow_file::slots(bytes, &header) {
        match flow_file::decode_slot(slot) {
            Ok(Some(e)) => found.entries.push(e),
            Ok(None) => {}
            Err(_) => found.invalid += 1,
        }
    }
    found
}

/// Opens the state of `config`: reads what the previous process left
/// (at most four times this router's own file size: a predecessor with a
/// bigger table keeps most of its flows, a huge planted file costs a
/// bounded read) and creates the new file, mapped, beside it. An
/// untrusted old file is not read (and gets replaced).
pub fn open(
    config: &Config,
    shards: usize,
    boot_id: &[u8; flow_file::BOOT_ID],
) -> Result<(Store, Found), FlowStoreError> {
    mapped::ensure_dir(&config.state_dir)?;
    let path = path(config);
    let per_shard = per_shard(&config.flows, shards);
    let len = HEADER + per_shard * shards * SLOT;
    let found = match mapped::read_trusted(&path, len.saturating_mul(4)) {
        Ok(Some(bytes)) => decode(&bytes, boot_id),
        Ok(None) => Found::default(),
        Err(e @ MappedError::Untrusted { .. }) => Found {
            refused: Some(e.to_string()),
            ..Found::default()
        },
        Err(e) => return Err(e.into()),
    };
    let fresh = config
        .state_dir
        .join(format!("flows-{}.new", config.device));
    // A start that died before publishing left it: ours to replace.
    let _ = std::fs::remove_file(&fresh);
    let map = Mapped::create(&fresh, len)?;
    let mut head = [0u8; HEADER];
    flow_file::encode_header(
        &Header {
            slots: (per_shard * shards) as u32,
            boot_id: *boot_id,
        },
        &mut head,
    );
    map.write(0, &head);
    Ok((
        Store {
            map,
            per_shard,
            path,
            fresh,
        },
        found,
    ))
}

/// The idle timeout of a flow of `proto`, `closing` or not.
pub fn timeout(c: &FlowConfig, proto: u8, closing: bool) -> u64 {
    match proto {
        proto::TCP if closing => c.tcp_closed_timeout,
        proto::TCP => c.tcp_timeout,
        proto::ICMP | proto::ICMPV6 => c.icmp_timeout,
        _ => c.udp_timeout,
    }
}

/// Why a decoded entry is not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Neither endpoint is a vassal address of this router.
    #[error("no endpoint in the vassal subnet")]
    Outside,
    /// The endpoints are not in the order the table keys them in, ports
    /// are set where the protocol has none, or ICMP is of the wrong family.
    #[error("not a key the table makes")]
    Shape,
    /// Charged to a project of the static table, but none of its
    /// addresses is an endpoint.
    #[error("charged to a project that owns neither endpoint")]
    Project,
    /// Last seen in the future.
    #[error("last seen in the future")]
    Future,
    /// Idle past its timeout.
    #[error("expired")]
    Expired,
}

/// Checks a decoded entry against this router's subnets, project table,
/// and clock (`now`, `CLOCK_BOOTTIME` seconds).
pub fn check(e: &Entry, config: &Config, now: u32) -> Result<(), Rejected> {
    let vassal = |a: IpAddr| match a {
        IpAddr::V4(a) => config.gateway.contains(&a) && a != config.gateway.addr(),
        IpAddr::V6(a) => config
            .gateway6
            .is_some_and(|g| g.contains(&a) && a != g.addr()),
    };
    if !vassal(e.a) && !vassal(e.b) {
        return Err(Rejected::Outside);
    }
    let shape = match e.proto {
        proto::ICMP | proto::ICMPV6 => {
            e.opener_is_a
                && e.a_port == e.b_port
                && !e.tcp_closing
                && e.a.is_ipv4() == (e.proto == proto::ICMP)
        }
        proto::TCP | proto::UDP => {
            (e.a, e.a_port) <= (e.b, e.b_port) && (e.proto == proto::TCP || !e.tcp_closing)
        }
        _ => e.a <= e.b && e.a_port == 0 && e.b_port == 0 && !e.tcp_closing,
    };
    if !shape {
        return Err(Rejected::Shape);
    }
    if let Some(p) = config.project(e.project.as_str()) {
        let owns = |a: IpAddr| match a {
            IpAddr::V4(a) => a == p.address,
            IpAddr::V6(a) => Some(a) == p.address6,
        };
        if !owns(e.a) && !owns(e.b) {
            return Err(Rejected::Project);
        }
    }
    if e.last_seen > now.saturating_add(1) {
        return Err(Rejected::Future);
    }
    let idle = u64::from(now.saturating_sub(e.last_seen));
    if idle >= timeout(&config.flows, e.proto, e.tcp_closing) {
        return Err(Rejected::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::flow_file::Name;

    fn config() -> Config {
        Config::parse(
            "gateway = \"10.9.0.1/24\"\ngateway6 = \"fd00:9::1/64\"\n[[project]]\nname = \"static\"\naddress = \"10.9.0.50\"\n",
            "t",
        )
        .unwrap()
    }

    fn entry(a: &str, ap: u16, b: &str, bp: u16) -> Entry {
        Entry {
            proto: proto::TCP,
            a: a.parse().unwrap(),
            b: b.parse().unwrap(),
            a_port: ap,
            b_port: bp,
            opener_is_a: true,
            tcp_closing: false,
            last_seen: 1000,
            project: Name::new("alice").unwrap(),
        }
    }

    #[test]
    fn entries_are_checked_against_the_router() {
        let c = config();
        let ok = entry("10.9.0.2", 40000, "203.0.113.1", 80);
        assert_eq!(check(&ok, &c, 1000), Ok(()));
        // Vassal to host (the gateway) and vassal to vassal are fine.
        assert_eq!(
            check(&entry("10.9.0.1", 7700, "10.9.0.2", 40000), &c, 1000),
            Ok(())
        );
        assert_eq!(
            check(&entry("10.9.0.2", 1, "10.9.0.3", 2), &c, 1000),
            Ok(())
        );
        assert_eq!(
            check(&entry("fd00:9::2", 1, "fd00:9::3", 2), &c, 1000),
            Ok(())
        );
        // Neither endpoint a vassal of ours (the gateway alone is not).
        let outside = entry("10.8.0.2", 40000, "203.0.113.1", 80);
        assert_eq!(check(&outside, &c, 1000), Err(Rejected::Outside));
        assert_eq!(
            check(&entry("10.9.0.1", 1, "203.0.113.1", 2), &c, 1000),
            Err(Rejected::Outside)
        );
        // Out of the table's order: never found, refused.
        let backwards = entry("203.0.113.1", 80, "10.9.0.2", 40000);
        assert_eq!(check(&backwards, &c, 1000), Err(Rejected::Shape));
        let mut icmp = ok;
        icmp.proto = proto::ICMPV6;
        icmp.b_port = icmp.a_port;
        assert_eq!(check(&icmp, &c, 1000), Err(Rejected::Shape));
        icmp.proto = proto::ICMP;
        assert_eq!(check(&icmp, &c, 1000), Ok(()));
        // A static project's flow must involve its address.
        let mut stolen = ok;
        stolen.project = Name::new("static").unwrap();
        assert_eq!(check(&stolen, &c, 1000), Err(Rejected::Project));
        stolen.a = "10.9.0.50".parse().unwrap();
        assert_eq!(check(&stolen, &c, 1000), Ok(()));
        // Time: the remaining idle time decides.
        assert_eq!(check(&ok, &c, 990), Err(Rejected::Future));
        let tcp = c.flows.tcp_timeout as u32;
        assert_eq!(check(&ok, &c, 1000 + tcp - 1), Ok(()));
        assert_eq!(check(&ok, &c, 1000 + tcp), Err(Rejected::Expired));
    }

    #[test]
    fn a_file_of_another_boot_or_format_yields_nothing() {
        let id = [b'1'; flow_file::BOOT_ID];
        let mut file = vec![0u8; HEADER + 2 * SLOT];
        let mut head = [0u8; HEADER];
        flow_file::encode_header(
            &Header {
                slots: 2,
                boot_id: id,
            },
            &mut head,
        );
        file[..HEADER].copy_from_slice(&head);
        let mut slot = [0u8; SLOT];
        flow_file::encode_slot(&entry("10.9.0.2", 1, "10.9.0.3", 2), &mut slot);
        file[HEADER..HEADER + SLOT].copy_from_slice(&slot);
        file[HEADER + SLOT + IN_USE_AT] = 1; // garbage in the second
        let found = decode(&file, &id);
        assert_eq!((found.entries.len(), found.invalid), (1, 1));
        assert!(decode(&file, &[b'2'; flow_file::BOOT_ID]).refused.is_some());
        assert!(decode(&file[..50], &id).refused.is_some());
    }
}
