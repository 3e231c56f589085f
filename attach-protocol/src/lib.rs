//! The vassal attach protocol, spoken on the router's control socket.
//!
//! One message per `SOCK_SEQPACKET` datagram, each a UTF-8 JSON object of at
//! most [`MAX_MESSAGE_LEN`] bytes with a `"type"` tag. A launcher sends a
//! [`Request::Hello`] with the vassal's tun fd attached as `SCM_RIGHTS`; the
//! router answers with [`Response::Accepted`] or [`Response::Refused`] and
//! keeps the connection: when it closes, the vassal is detached. The full
//! description, meant for anyone writing another launcher, is
//! `docs/protocol.md`.
//!
//! The pure encode/decode functions ([`decode_request`], [`decode_response`],
//! [`encode`]) never touch a socket, so they are unit-tested and fuzzed
//! without privileges; [`transport`] moves the bytes and the fd.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

pub mod transport;

/// Version carried in every hello; bumped on any incompatible change.
/// Version 2 added the hello's net limits (and the accepted limits),
/// [`Request::Usage`], [`Request::Lease`] (automatic addresses),
/// [`Request::Cluster`] and the `no_address` refusal; docs/protocol.md
/// lists them.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest hello version a router still accepts: a version-1 launcher
/// attaches as it always did, and gets none of what version 2 added.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// Whether a router speaking this crate's protocol accepts a hello of
/// `version`.
pub fn version_supported(version: u32) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// Longest vassal name in a [`Request::Lease`], in bytes.
pub const MAX_VASSAL_NAME_LEN: usize = 64;

/// Largest message either side sends or accepts, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Longest project name, in bytes. Short enough to fit in an interface name
/// suffix, a cgroup directory and a Prometheus label without surprises.
pub const MAX_PROJECT_NAME_LEN: usize = 32;

/// What a client asks of the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Attach the tun device whose fd travels with this message.
    Hello(Hello),
    /// Per-project counters, as `vassal-router stats` prints them.
    Stats,
    /// Re-read the rule file (what SIGHUP does).
    Reload,
    /// Something the launcher saw happen inside its attached vassal, for the
    /// router's event sink and `vassal_events_total`. Only valid on a
    /// connection that attached a vassal (the event is that vassal's, never
    /// a name in the message); the router does not answer.
    Event(VassalEvent),
    /// Version 2: what the launcher's vassal has used, at least every
    /// [`USAGE_EVERY_SECS`] seconds, for the router's per-project
    /// accounting (`vassal_cpu_seconds_total`, ...). Like
    /// [`Request::Event`], only valid on a connection that attached a
    /// vassal, counted to that vassal's project, and not answered.
    Usage(VassalUsage),
    /// Version 2: reserve an address of the router's block (or subnet) for
    /// the vassal `name` of `project`, before its network is set up; the
    /// same name gets the same address back while the block lasts. Answered
    /// with [`Response::Leased`]; the connection then closes, and the
    /// launcher attaches with a hello carrying that address.
    Lease(LeaseRequest),
    /// Version 2: the router's view of the cluster (its block, the other
    /// hosts' blocks, the identity cache), answered with as many
    /// [`Response::Cluster`] datagrams as it takes.
    Cluster,
}

/// Longest a launcher waits between two [`Request::Usage`] reports.
pub const USAGE_EVERY_SECS: u64 = 5;

/// Largest value a [`VassalUsage`] field may carry: 2^53, so that every
/// value is exact in a Prometheus float and per-project sums of many
/// reports cannot overflow a u64.
pub const MAX_USAGE_VALUE: u64 = 1 << 53;

/// A vassal's usage, read from its cgroup. The counters (`cpu_usec`,
/// `io_*`) are cumulative since this launcher started the vassal; the
/// router adds what they gained since the previous report on the same
/// connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VassalUsage {
    /// CPU time of all its processes, in microseconds.
    pub cpu_usec: u64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
    /// Highest memory use since it started, in bytes.
    pub memory_peak_bytes: u64,
    /// Bytes read from block devices.
    pub io_read_bytes: u64,
    /// Bytes written to block devices.
    pub io_write_bytes: u64,
    /// Processes and threads now.
    pub pids: u64,
    /// True when this launcher already reported this run of its vassal on
    /// an earlier connection (it re-attached, typically to a restarted
    /// router): the router takes this report's counters as the baseline
    /// and counts only what they gain afterwards, so nothing is counted
    /// twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// The limits of the vassal's file in force, for `vassal_limit_*`.
    #[serde(default)]
    pub limits: UsageLimits,
}

/// The cgroup limits of a vassal, as its launcher set them; `None` is no
/// limit. (The network limits travel in the hello.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageLimits {
    /// `memory`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// `cpu`, in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
    /// `pids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl VassalUsage {
    /// Checks every value against [`MAX_USAGE_VALUE`].
    pub fn check(&self) -> Result<(), String> {
        let l = &self.limits;
        for (field, value) in [
            ("cpu_usec", Some(self.cpu_usec)),
            ("memory_bytes", Some(self.memory_bytes)),
            ("memory_peak_bytes", Some(self.memory_peak_bytes)),
            ("io_read_bytes", Some(self.io_read_bytes)),
            ("io_write_bytes", Some(self.io_write_bytes)),
            ("pids", Some(self.pids)),
            ("limits.memory_bytes", l.memory_bytes),
            ("limits.cpu_millicores", l.cpu_millicores),
            ("limits.pids", l.pids),
        ] {
            if value.is_some_and(|v| v > MAX_USAGE_VALUE) {
                return Err(format!("{field} is above {MAX_USAGE_VALUE}"));
            }
        }
        Ok(())
    }
}

/// An address lease request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// At least 2.
    pub version: u32,
    /// The vassal's project; see [`validate_project_name`].
    pub project: String,
    /// The vassal's name, unique on its host; see [`validate_vassal_name`].
    pub name: String,
    /// Whether the vassal wants an IPv6 address too (when the router has
    /// an IPv6 subnet).
    #[serde(default)]
    pub ipv6: bool,
}

/// One block of the cluster, as [`Response::Cluster`] carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterBlock {
    /// The node holding it.
    pub node: String,
    /// Its IPv4 network.
    pub ipv4: String,
    /// Its IPv6 network, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// The node's underlay address.
    pub underlay: String,
}

/// One entry of the identity cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterIdentity {
    /// The vassal's address.
    pub address: String,
    /// Its project.
    pub project: String,
    /// The node it is attached to.
    pub node: String,
}

/// An event a launcher reports about its vassal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VassalEvent {
    /// What happened.
    pub event: VassalEventKind,
    /// How many times since the last report (at least 1).
    pub count: u64,
}

/// The kinds of [`VassalEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VassalEventKind {
    /// The kernel killed a process of the vassal for its memory limit.
    OomKill,
    /// Forks refused by the vassal's pids limit.
    PidsLimit,
    /// The command was killed by the seccomp filter (a denied system call).
    SeccompKill,
    /// The command outlived its wall-clock limit and was stopped.
    WallClockKill,
    /// The command itself was killed for the memory limit.
    MemoryKill,
}

impl VassalEventKind {
    /// The name used in event lines and the `event` label.
    pub fn as_str(self) -> &'static str {
        match self {
            VassalEventKind::OomKill => "oom_kill",
            VassalEventKind::PidsLimit => "pids_limit",
            VassalEventKind::SeccompKill => "seccomp_kill",
            VassalEventKind::WallClockKill => "wall_clock_kill",
            VassalEventKind::MemoryKill => "memory_kill",
        }
    }
}

/// The attach request. The tun fd is not in the JSON: it is the one
/// `SCM_RIGHTS` file descriptor of the same datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The client's protocol version, from [`OLDEST_PROTOCOL_VERSION`] to
    /// [`PROTOCOL_VERSION`] (see [`version_supported`]).
    pub version: u32,
    /// The project this vassal belongs to; see [`validate_project_name`].
    pub project: String,
    /// The vassal's own IPv4 address: the only source it may send from.
    pub ipv4: Ipv4Addr,
    /// The vassal's IPv6 address, when the router has an IPv6 subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Version 2: the limit the vassal's file asks on what it sends; `None`
    /// asks none (the router's project default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_out: Option<RateLimit>,
    /// Version 2: the limit the vassal's file asks on what it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_in: Option<RateLimit>,
}

/// A token bucket asked for one direction of a vassal's traffic, counted
/// in the bytes the wire carries (a TCP super-packet as its segments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate in bits per second, [`MIN_RATE`] to [`MAX_RATE`].
    pub rate: u64,
    /// Bucket depth in bytes: how much may pass at once after a quiet
    /// spell, from [`MIN_BURST`] to [`MAX_BURST`].
    pub burst: u64,
}

/// Slowest rate a [`RateLimit`] may ask: 8 kbit/s. Below it a single
/// full-size packet waits longer than a TCP retransmission timeout.
pub const MIN_RATE: u64 = 8_000;
/// Fastest rate a [`RateLimit`] may ask: 1 Tbit/s.
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Smallest burst: one 1500-byte packet.
pub const MIN_BURST: u64 = 1500;
/// Largest burst: 1 GiB, so that rate arithmetic in nanoseconds cannot
/// overflow a u64.
pub const MAX_BURST: u64 = 1 << 30;

/// Parses a network rate in bits per second: an integer or a number with a
/// K, M, G or T suffix in powers of 1000, as links are sold (`"50M"` is
/// 50 000 000 bit/s); a trailing `bit` or `bps` is allowed.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("bps")
        .or_else(|| t.strip_suffix("bit"))
        .unwrap_or(t);
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a rate; expected bits per second or a number with K, M, G or T, like \"50M\"")
    })?;
    let mult: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; expected K, M, G or T (powers of 1000)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The burst of a rate whose burst is not given: 250 ms at the rate, at
/// least 128 KiB (two 64 KiB super-packets), at most [`MAX_BURST`]. The
/// router polices ingress, and TCP through a policer keeps its rate only
/// with room for the bursts a sender's 64 KiB super-packets make (measured:
/// 100 ms of burst holds a 50 Mbit/s TCP stream to about 27, 200 ms to 48,
/// 400 ms to 50); more than that only adds to what passes at once.
pub fn default_burst(rate: u64) -> u64 {
    (rate / 8 / 4).clamp(128 << 10, MAX_BURST)
}

impl RateLimit {
    /// Checks the bounds of [`MIN_RATE`], [`MIN_BURST`] and [`MAX_BURST`].
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            return Err(format!(
                "rate {} bit/s is outside {MIN_RATE} to {MAX_RATE}",
                self.rate
            ));
        }
        if !(MIN_BURST..=MAX_BURST).contains(&self.burst) {
            return Err(format!(
                "burst {} bytes is outside {MIN_BURST} to {MAX_BURST}",
                self.burst
            ));
        }
        Ok(())
    }
}

/// What the router answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The vassal is attached; packets flow from now on.
    Accepted {
        /// The router's protocol version.
        version: u32,
        /// The gateway address the vassal should route through.
        gateway: Ipv4Addr,
        /// The IPv6 gateway, when the router has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway6: Option<Ipv6Addr>,
        /// Version 2: the `net_out` limit in force (what was asked, or the
        /// project's default, capped by its ceiling); absent: unlimited.
        /// Never sent to a version-1 hello.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        net_out: Option<RateLimit>,
        /// Version 2: the `net_in` limit in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        net_in: Option<RateLimit>,
    },
    /// The request was refused; the router closes the connection after this.
    Refused {
        /// Machine-readable cause.
        reason: RefuseReason,
        /// Human-readable detail naming the offending value.
        message: String,
    },
    /// Answer to [`Request::Stats`], in as many datagrams as it takes: each
    /// holds whole project entries and fits in [`MAX_MESSAGE_LEN`]; all but
    /// the last have `more = true`.
    Stats {
        /// Entries of projects the router has seen since it started.
        projects: Vec<ProjectStats>,
        /// Whether another `stats` datagram follows.
        more: bool,
    },
    /// Answer to [`Request::Lease`].
    Leased {
        /// The router's protocol version.
        version: u32,
        /// The vassal's IPv4 address.
        ipv4: Ipv4Addr,
        /// Its IPv6 address, when asked for and the router has a subnet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ipv6: Option<Ipv6Addr>,
        /// The gateway.
        gateway: Ipv4Addr,
        /// The IPv4 subnet's prefix length.
        prefix_len: u8,
        /// The IPv6 gateway, with `ipv6`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway6: Option<Ipv6Addr>,
        /// The IPv6 subnet's prefix length, with `ipv6`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix6_len: Option<u8>,
    },
    /// Answer to [`Request::Cluster`], in as many datagrams as it takes
    /// (the header fields repeat in each); all but the last have
    /// `more = true`.
    Cluster {
        /// This router's node name (`None` without `[cluster]`).
        node: Option<String>,
        /// Whether etcd answers now.
        etcd_up: bool,
        /// This router's block.
        block: Option<String>,
        /// Blocks of every node, this one included.
        blocks: Vec<ClusterBlock>,
        /// The identity cache.
        identities: Vec<ClusterIdentity>,
        /// Whether another `cluster` datagram follows.
        more: bool,
    },
    /// Answer to [`Request::Reload`]: the new rule set is in force.
    Reloaded {
        /// Rules in the `out` chain.
        out_rules: usize,
        /// Rules in the `in` chain.
        in_rules: usize,
    },
    /// Answer to a request that failed for a reason other than a refusal
    /// (for example, a reload whose rule file is invalid).
    Error {
        /// What went wrong, with the file, line and field where it applies.
        message: String,
    },
}

/// Why the router refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseReason {
    /// The peer's uid is not in `launcher_uids`.
    Unauthorized,
    /// The hello's version is not one this router speaks.
    BadVersion,
    /// The message could not be parsed or broke a rule of the format.
    Malformed,
    /// A hello came without exactly one file descriptor, or it is not a tun.
    BadDevice,
    /// The address is outside the vassal subnet, or is the gateway.
    AddressOutsideSubnet,
    /// A live vassal holds the address.
    AddressInUse,
    /// The `[[project]]` table names this project with another address.
    ProjectMismatch,
    /// The router has reached its vassal limit.
    TooManyVassals,
    /// No free address is left to lease.
    NoAddress,
}

impl RefuseReason {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::Unauthorized => "unauthorized",
            RefuseReason::BadVersion => "bad_version",
            RefuseReason::Malformed => "malformed",
            RefuseReason::BadDevice => "bad_device",
            RefuseReason::AddressOutsideSubnet => "address_outside_subnet",
            RefuseReason::AddressInUse => "address_in_use",
            RefuseReason::ProjectMismatch => "project_mismatch",
            RefuseReason::TooManyVassals => "too_many_vassals",
            RefuseReason::NoAddress => "no_address",
        }
    }
}

/// Counters of one project, as carried by [`Response::Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectStats {
    /// Project name.
    pub project: String,
    /// Whether a vassal of this project is attached now.
    pub attached: bool,
    /// IP bytes leaving the vassal.
    pub tx_bytes: u64,
    /// IP packets leaving the vassal.
    pub tx_packets: u64,
    /// IP bytes delivered to the vassal.
    pub rx_bytes: u64,
    /// IP packets delivered to the vassal.
    pub rx_packets: u64,
    /// Dropped packets by reason (`firewall`, `spoofed`, ...).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// Flows in this project's flow table now.
    pub flows: u64,
    /// Version 2: CPU time its launchers reported, in microseconds (see
    /// [`Request::Usage`]).
    #[serde(default)]
    pub cpu_usec: u64,
    /// Version 2: bytes its vassals read from block devices.
    #[serde(default)]
    pub io_read_bytes: u64,
    /// Version 2: bytes its vassals wrote to block devices.
    #[serde(default)]
    pub io_write_bytes: u64,
}

/// A message that does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not a JSON object of a known type, or with unknown or missing fields.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The project name breaks [`validate_project_name`].
    #[error("invalid project name {name:?}: {why}")]
    BadProjectName {
        /// The name as sent (truncated to the limit).
        name: String,
        /// Which rule it breaks.
        why: &'static str,
    },
}

/// Checks a project name: 1 to [`MAX_PROJECT_NAME_LEN`] bytes of lowercase
/// ASCII letters, digits, `-` and `_`, starting with a letter or digit.
/// Names reach file paths, interface names and metric labels, so the
/// alphabet is deliberately small.
pub fn validate_project_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_PROJECT_NAME_LEN {
        return Err("longer than 32 bytes");
    }
    let mut bytes = name.bytes();
    if !bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err("must start with a lowercase letter or a digit");
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err("may hold only lowercase letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Checks a vassal name in a lease: 1 to [`MAX_VASSAL_NAME_LEN`] bytes of
/// ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn validate_vassal_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_VASSAL_NAME_LEN {
        return Err("must be 1 to 64 bytes long");
    }
    if name.starts_with('.') {
        return Err("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may hold only ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Splits a cluster view into datagrams of at most [`MAX_MESSAGE_LEN`]
/// bytes: blocks first, then identities, as many whole entries per
/// datagram as fit.
pub fn encode_cluster(
    node: Option<String>,
    etcd_up: bool,
    block: Option<String>,
    blocks: Vec<ClusterBlock>,
    identities: Vec<ClusterIdentity>,
) -> Vec<Vec<u8>> {
    let make = |b: Vec<ClusterBlock>, i: Vec<ClusterIdentity>, more: bool| Response::Cluster {
        node: node.clone(),
        etcd_up,
        block: block.clone(),
        blocks: b,
        identities: i,
        more,
    };
    let mut out = Vec::new();
    let (mut cb, mut ci): (Vec<ClusterBlock>, Vec<ClusterIdentity>) = (Vec::new(), Vec::new());
    for b in blocks {
        cb.push(b);
        if encode(&make(cb.clone(), Vec::new(), true)).len() > MAX_MESSAGE_LEN {
            let last = cb.pop();
            if !cb.is_empty() {
                out.push(encode(&make(std::mem::take(&mut cb), Vec::new(), true)));
            }
            cb.extend(last);
        }
    }
    for i in identities {
        ci.push(i);
        if encode(&make(cb.clone(), ci.clone(), true)).len() > MAX_MESSAGE_LEN {
            let last = ci.pop();
            out.push(encode(&make(
                std::mem::take(&mut cb),
                std::mem::take(&mut ci),
                true,
            )));
            ci.extend(last);
        }
    }
    out.push(encode(&make(cb, ci, false)));
    out
}

/// Parses one request datagram and checks the fields the format constrains.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong { len: bytes.len() });
    }
    let request: Request =
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    match &request {
        Request::Hello(hello) => {
            validate_project_name(&hello.project).map_err(|why| ProtocolError::BadProjectName {
                name: hello.project.chars().take(MAX_PROJECT_NAME_LEN).collect(),
                why,
            })?;
            for (field, limit) in [("net_out", &hello.net_out), ("net_in", &hello.net_in)] {
                let Some(limit) = limit else { continue };
                if hello.version < 2 {
                    return Err(ProtocolError::Malformed(format!(
                        "{field} is a version-2 field in a version-{} hello",
                        hello.version
                    )));
                }
                limit
                    .check()
                    .map_err(|why| ProtocolError::Malformed(format!("{field}: {why}")))?;
            }
        }
        Request::Usage(u) => u.check().map_err(ProtocolError::Malformed)?,
        Request::Lease(lease) => {
            validate_project_name(&lease.project).map_err(|why| ProtocolError::BadProjectName {
                name: lease.project.chars().take(MAX_PROJECT_NAME_LEN).collect(),
                why,
            })?;
            validate_vassal_name(&lease.name).map_err(|why| {
                ProtocolError::Malformed(format!("invalid vassal name {:?}: {why}", lease.name))
            })?;
            if lease.version < 2 {
                return Err(ProtocolError::Malformed(
                    "a lease request needs protocol version 2 or later".into(),
                ));
            }
        }
        Request::Event(e) if e.count == 0 => {
            return Err(ProtocolError::Malformed(
                "event count must be at least 1".into(),
            ));
        }
        _ => {}
    }
    Ok(request)
}

/// Parses one response datagram.
pub fn decode_response(bytes: &[u8]) -> Result<Response, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong { len: bytes.len() });
    }
    serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Serialises a message. Callers keep each message within
/// [`MAX_MESSAGE_LEN`]; stats answers are split with [`encode_stats`].
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these plain data types to a Vec cannot fail: no maps with
    // non-string keys, no I/O.
    serde_json::to_vec(message).unwrap_or_default()
}

/// Splits a stats answer into datagrams of at most [`MAX_MESSAGE_LEN`] bytes.
/// An entry too large for one datagram on its own (impossible with valid
/// project names and the fixed set of drop reasons) is left out rather than
/// breaking the limit.
pub fn encode_stats(projects: &[ProjectStats]) -> Vec<Vec<u8>> {
    let mut datagrams = Vec::new();
    let mut chunk: Vec<ProjectStats> = Vec::new();
    for entry in projects {
        chunk.push(entry.clone());
        let fits = encode(&Response::Stats {
            projects: chunk.clone(),
            more: true,
        })
        .len()
            <= MAX_MESSAGE_LEN;
        if !fits {
            chunk.pop();
            if !chunk.is_empty() {
                datagrams.push(encode(&Response::Stats {
                    projects: std::mem::take(&mut chunk),
                    more: true,
                }));
            }
            let alone = vec![entry.clone()];
            if encode(&Response::Stats {
                projects: alone.clone(),
                more: true,
            })
            .len()
                <= MAX_MESSAGE_LEN
            {
                chunk = alone;
            }
        }
    }
    datagrams.push(encode(&Response::Stats {
        projects: chunk,
        more: false,
    }));
    datagrams
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` decode to [`ProtocolError::Malformed`].
    fn assert_malformed(bytes: &[u8]) {
        assert!(
            matches!(decode_request(bytes), Err(ProtocolError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }

    fn hello(project: &str) -> Request {
        Request::Hello(Hello {
            version: PROTOCOL_VERSION,
            project: project.into(),
            ipv4: Ipv4Addr::new(10, 200, 0, 2),
            ipv6: None,
            net_out: None,
            net_in: None,
        })
    }

    #[test]
    fn rate_limits_are_version_2_fields_within_bounds() {
        let limited = Request::Hello(Hello {
            version: 2,
            project: "alice".into(),
            ipv4: Ipv4Addr::new(10, 200, 0, 2),
            ipv6: None,
            net_out: Some(RateLimit {
                rate: 50_000_000,
                burst: 125_000,
            }),
            net_in: None,
        });
        let bytes = encode(&limited);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"hello","version":2,"project":"alice","ipv4":"10.200.0.2","net_out":{"rate":50000000,"burst":125000}}"#
        );
        assert_eq!(decode_request(&bytes).unwrap(), limited);
        // A version-1 hello without them still parses (unlimited).
        let v1 = r#"{"type":"hello","version":1,"project":"alice","ipv4":"10.200.0.2"}"#;
        assert!(matches!(
            decode_request(v1.as_bytes()),
            Ok(Request::Hello(Hello {
                net_out: None,
                net_in: None,
                ..
            }))
        ));
        for bad in [
            r#"{"type":"hello","version":1,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":50000000,"burst":125000}}"#,
            r#"{"type":"hello","version":2,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":7999,"burst":125000}}"#,
            r#"{"type":"hello","version":2,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":50000000,"burst":1499}}"#,
            r#"{"type":"hello","version":2,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":50000000,"burst":1073741825}}"#,
            r#"{"type":"hello","version":2,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":50000000}}"#,
            r#"{"type":"hello","version":2,"project":"a","ipv4":"10.200.0.2","net_in":{"rate":1,"burst":2000,"x":1}}"#,
        ] {
            assert_malformed(bad.as_bytes());
        }
    }

    #[test]
    fn hello_round_trips() {
        let bytes = encode(&hello("alice"));
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"hello","version":2,"project":"alice","ipv4":"10.200.0.2"}"#
        );
        assert_eq!(decode_request(&bytes).unwrap(), hello("alice"));
    }

    #[test]
    fn leases_round_trip_and_are_checked() {
        let bytes = br#"{"type":"lease","version":2,"project":"alice","name":"web.1"}"#;
        assert_eq!(
            decode_request(bytes).unwrap(),
            Request::Lease(LeaseRequest {
                version: 2,
                project: "alice".into(),
                name: "web.1".into(),
                ipv6: false
            })
        );
        for bad in [
            r#"{"type":"lease","version":1,"project":"alice","name":"web"}"#,
            r#"{"type":"lease","version":2,"project":"Alice","name":"web"}"#,
            r#"{"type":"lease","version":2,"project":"alice","name":"../x"}"#,
            r#"{"type":"lease","version":2,"project":"alice","name":""}"#,
            r#"{"type":"lease","version":2,"project":"alice"}"#,
        ] {
            assert!(decode_request(bad.as_bytes()).is_err(), "{bad}");
        }
        let leased = Response::Leased {
            version: 2,
            ipv4: Ipv4Addr::new(10, 200, 3, 2),
            ipv6: None,
            gateway: Ipv4Addr::new(10, 200, 3, 1),
            prefix_len: 24,
            gateway6: None,
            prefix6_len: None,
        };
        assert_eq!(decode_response(&encode(&leased)).unwrap(), leased);
    }

    #[test]
    fn cluster_views_are_split_into_datagrams_that_fit() {
        let identities: Vec<ClusterIdentity> = (0..500)
            .map(|i| ClusterIdentity {
                address: format!("10.200.{}.{}", i / 250, i % 250 + 2),
                project: format!("project-{i}"),
                node: "node-a".into(),
            })
            .collect();
        let blocks = vec![ClusterBlock {
            node: "node-a".into(),
            ipv4: "10.200.0.0/24".into(),
            ipv6: None,
            underlay: "198.51.100.11".into(),
        }];
        let datagrams = encode_cluster(
            Some("node-a".into()),
            true,
            None,
            blocks,
            identities.clone(),
        );
        assert!(datagrams.len() > 1);
        let mut got = Vec::new();
        for (n, d) in datagrams.iter().enumerate() {
            assert!(d.len() <= MAX_MESSAGE_LEN);
            match decode_response(d).unwrap() {
                Response::Cluster {
                    identities, more, ..
                } => {
                    assert_eq!(more, n + 1 < datagrams.len());
                    got.extend(identities);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, identities);
    }

    #[test]
    fn events_round_trip_and_are_checked() {
        let e = Request::Event(VassalEvent {
            event: VassalEventKind::OomKill,
            count: 3,
        });
        let bytes = encode(&e);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"event","event":"oom_kill","count":3}"#
        );
        assert_eq!(decode_request(&bytes).unwrap(), e);
        for bad in [
            r#"{"type":"event","event":"oom_kill","count":0}"#,
            r#"{"type":"event","event":"reboot","count":1}"#,
            r#"{"type":"event","event":"oom_kill","count":1,"project":"bob"}"#,
        ] {
            assert_malformed(bad.as_bytes());
        }
    }

    #[test]
    fn usage_round_trips_and_is_checked() {
        let u = Request::Usage(VassalUsage {
            cpu_usec: 1_500_000,
            memory_bytes: 4096,
            memory_peak_bytes: 8192,
            io_read_bytes: 1,
            io_write_bytes: 2,
            pids: 3,
            resumed: false,
            limits: UsageLimits {
                memory_bytes: Some(64 << 20),
                cpu_millicores: None,
                pids: Some(32),
            },
        });
        let bytes = encode(&u);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"type":"usage","cpu_usec":1500000,"memory_bytes":4096,"memory_peak_bytes":8192,"io_read_bytes":1,"io_write_bytes":2,"pids":3,"limits":{"memory_bytes":67108864,"pids":32}}"#
        );
        assert_eq!(decode_request(&bytes).unwrap(), u);
        let resumed = r#"{"type":"usage","cpu_usec":0,"memory_bytes":0,"memory_peak_bytes":0,"io_read_bytes":0,"io_write_bytes":0,"pids":1,"resumed":true}"#;
        assert!(matches!(
            decode_request(resumed.as_bytes()),
            Ok(Request::Usage(VassalUsage { resumed: true, .. }))
        ));
        for bad in [
            // A project is never the message's to name.
            r#"{"type":"usage","cpu_usec":0,"memory_bytes":0,"memory_peak_bytes":0,"io_read_bytes":0,"io_write_bytes":0,"pids":1,"project":"bob"}"#,
            r#"{"type":"usage","cpu_usec":9007199254740993,"memory_bytes":0,"memory_peak_bytes":0,"io_read_bytes":0,"io_write_bytes":0,"pids":1}"#,
            r#"{"type":"usage","cpu_usec":0,"memory_bytes":0,"memory_peak_bytes":0,"io_read_bytes":0,"io_write_bytes":0,"pids":1,"limits":{"pids":18446744073709551615}}"#,
            r#"{"type":"usage","cpu_usec":-1,"memory_bytes":0,"memory_peak_bytes":0,"io_read_bytes":0,"io_write_bytes":0,"pids":1}"#,
            r#"{"type":"usage","cpu_usec":0}"#,
        ] {
            assert_malformed(bad.as_bytes());
        }
    }

    #[test]
    fn hello_with_ipv6_round_trips() {
        let req = Request::Hello(Hello {
            version: 1,
            project: "bob".into(),
            ipv4: Ipv4Addr::new(10, 200, 0, 3),
            ipv6: Some("fd00:200::3".parse().unwrap()),
            net_out: None,
            net_in: None,
        });
        assert_eq!(decode_request(&encode(&req)).unwrap(), req);
    }

    #[test]
    fn unknown_fields_and_types_are_malformed() {
        for bad in [
            &br#"{"type":"hello","version":1,"project":"a","ipv4":"10.0.0.1","extra":1}"#[..],
            br#"{"type":"shutdown"}"#,
            br#"{"type":"hello","version":1,"project":"a"}"#,
            br#"{"type":"hello","version":1,"project":"a","ipv4":"10.0.0.256"}"#,
            br#"[1,2,3]"#,
            b"\xff\xfe",
            b"",
        ] {
            assert_malformed(bad);
        }
    }

    #[test]
    fn oversized_message_is_refused_before_parsing() {
        let big = vec![b' '; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            decode_request(&big),
            Err(ProtocolError::TooLong {
                len: MAX_MESSAGE_LEN + 1
            })
        );
    }

    #[test]
    fn project_names_are_checked() {
        for good in ["a", "alice", "team-7_prod", "0day", &"x".repeat(32)] {
            assert!(validate_project_name(good).is_ok(), "{good}");
            assert!(decode_request(&encode(&hello(good))).is_ok());
        }
        for bad in [
            "",
            "Alice",
            "-lead",
            "a b",
            "a/b",
            "../x",
            "é",
            &"x".repeat(33),
        ] {
            assert!(validate_project_name(bad).is_err(), "{bad}");
            assert!(
                matches!(
                    decode_request(&encode(&hello(bad))),
                    Err(ProtocolError::BadProjectName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn responses_round_trip() {
        let answers = [
            Response::Accepted {
                version: 1,
                gateway: Ipv4Addr::new(10, 200, 0, 1),
                gateway6: None,
                net_out: None,
                net_in: None,
            },
            Response::Accepted {
                version: 2,
                gateway: Ipv4Addr::new(10, 200, 0, 1),
                gateway6: None,
                net_out: Some(RateLimit {
                    rate: 8000,
                    burst: 1500,
                }),
                net_in: None,
            },
            Response::Refused {
                reason: RefuseReason::AddressInUse,
                message: "10.200.0.2 is held by alice".into(),
            },
            Response::Reloaded {
                out_rules: 3,
                in_rules: 1,
            },
            Response::Error {
                message: "rules.toml:3:1: unknown key".into(),
            },
        ];
        for answer in answers {
            assert_eq!(decode_response(&encode(&answer)).unwrap(), answer);
        }
        let many: Vec<ProjectStats> = (0..500)
            .map(|i| ProjectStats {
                project: format!("project-{i}"),
                tx_bytes: u64::MAX,
                ..Default::default()
            })
            .collect();
        let datagrams = encode_stats(&many);
        assert!(datagrams.len() > 1);
        let mut seen = Vec::new();
        for (i, d) in datagrams.iter().enumerate() {
            assert!(d.len() <= MAX_MESSAGE_LEN);
            let Response::Stats { projects, more } = decode_response(d).unwrap() else {
                panic!()
            };
            assert_eq!(more, i + 1 < datagrams.len());
            seen.extend(projects);
        }
        assert_eq!(seen, many);
        let refused = encode(&Response::Refused {
            reason: RefuseReason::Unauthorized,
            message: String::new(),
        });
        assert!(std::str::from_utf8(&refused)
            .unwrap()
            .contains(r#""reason":"unauthorized""#));
    }
}
