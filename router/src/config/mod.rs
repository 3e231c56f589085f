//! The router's TOML configuration: every key optional, defaults built in,
//! unknown keys refused, every error located as `file:line:col` with the
//! offending field.
//!
//! The bottom layer: every other module reads it, it imports nothing of the
//! router.

pub mod blocks;
mod bounds;
pub mod cluster;
pub mod etcd_security;
mod iface;

pub use iface::validate_interface_name;

use bounds::bounded;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;
use vassal_attach::RateLimit;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is invalid, has an unknown key or a value of the wrong type.
    #[error("{origin}:{line}:{col}: {message}")]
    Syntax {
        /// The file (or `<embedded>`).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Static entry of the `[[project]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEntry {
    /// Project name (as in the attach hello).
    pub name: String,
    /// The only IPv4 address this project may claim.
    pub address: Ipv4Addr,
    /// The only IPv6 address this project may claim, when set.
    pub address6: Option<Ipv6Addr>,
    /// Unix uid identifying this project's uWSGI compat peers.
    pub uid: Option<u32>,
    /// The project's network tier: what its vassals get when they ask none,
    /// and the most they get whatever they ask.
    pub net: NetTier,
}

/// Default and ceiling of a project's network limits (`[[project]]`
/// `net_out_default`, `net_out_ceiling`, `net_in_default`,
/// `net_in_ceiling`), each with the burst [`vassal_attach::default_burst`]
/// gives its rate. `None` everywhere: what the vassal asks, unlimited when
/// it asks none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetTier {
    /// What a vassal sends when it asks no `net_out`.
    pub out_default: Option<RateLimit>,
    /// The most a vassal of the project sends.
    pub out_ceiling: Option<RateLimit>,
    /// What a vassal receives when it asks no `net_in`.
    pub in_default: Option<RateLimit>,
    /// The most a vassal of the project receives.
    pub in_ceiling: Option<RateLimit>,
}

/// `[nat]`: kernel masquerade for the vassal subnets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Install the nftables masquerade table.
    pub masquerade: bool,
    /// Masquerade only out of this interface (any but the router's device when absent).
    pub egress_interface: Option<String>,
}

/// A transport protocol of a `[host] allow` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl HostProto {
    /// The name nft and the configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            HostProto::Tcp => "tcp",
            HostProto::Udp => "udp",
        }
    }
}

/// One `[host] allow` entry: `tcp/53` or `udp/6000-6010`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// TCP or UDP.
    pub proto: HostProto,
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (= `first` for one port).
    pub last: u16,
}

impl HostPort {
    /// Parses `tcp/53` or `udp/6000-6010`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let shape = || format!("{text:?} is not `tcp/PORT`, `udp/PORT` or `tcp/FIRST-LAST`");
        let (proto, ports) = text.split_once('/').ok_or_else(shape)?;
        let proto = match proto {
            "tcp" => HostProto::Tcp,
            "udp" => HostProto::Udp,
            _ => return Err(shape()),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{text:?}: {p:?} is not a port from 1 to 65535")),
            Ok(n) => Ok(n),
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(format!("{text:?}: the range runs backwards"));
        }
        Ok(HostPort { proto, first, last })
    }
}

/// `[host]`: what vassals may open on the host's own addresses (other than
/// the gateway, which the router's rules govern). Enforced by the input
/// chain of the router's nftables table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Ports of the host vassals may open connections (or send UDP) to;
    /// empty by default: the host is closed to vassals.
    pub allow: Vec<HostPort>,
}

/// `[flows]`: bounds and idle timeouts of the stateful flow table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowConfig {
    /// Flows in the whole table.
    pub max_total: usize,
    /// Flows opened by one project.
    pub max_per_project: usize,
    /// Idle timeout of an open TCP flow, seconds.
    pub tcp_timeout: u64,
    /// Idle timeout of a TCP flow after FIN or RST, seconds.
    pub tcp_closed_timeout: u64,
    /// Idle timeout of a UDP (or other protocol) flow, seconds.
    pub udp_timeout: u64,
    /// Idle timeout of an ICMP echo flow, seconds.
    pub icmp_timeout: u64,
}

/// `[fragments]`: bounds and timeout of the fragment table
/// (`state::fragments`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentConfig {
    /// Fragmented datagrams in flight in the whole table.
    pub max_total: usize,
    /// Fragmented datagrams in flight charged to one project.
    pub max_per_project: usize,
    /// Seconds a datagram waits for its next fragment before it is
    /// forgotten.
    pub timeout: u64,
}

/// `[limits]`: bounds of the control and compat sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Attached vassals (control and compat together).
    pub max_vassals: usize,
    /// Open control connections, attached or not.
    pub max_connections: usize,
    /// Milliseconds a new control connection has to send its first request.
    pub hello_timeout_ms: u64,
    /// Largest IP packet moved, in bytes (also the host tun's MTU).
    pub mtu: usize,
    /// Bytes queued toward one uWSGI compat peer before packets are dropped.
    pub compat_buffer: usize,
    /// Open compat connections, attached or not.
    pub max_compat_connections: usize,
    /// Open compat connections of one peer uid (SO_PEERCRED).
    pub max_compat_connections_per_uid: usize,
    /// Queues of the host tun, and datapath threads; 0 = one per core (at most 8).
    pub host_queues: usize,
    /// TCP segmentation and checksum offload on the tun devices: packets of
    /// up to 64 KiB cross the router whole (docs/design.md, "Offloads").
    pub offload: bool,
}

/// Where events go: described here, opened by `os::events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// One line each on the router's stderr (the default).
    Stderr,
    /// One datagram each to this unix socket (a log shipper listens there).
    Unix(PathBuf),
}

impl Sink {
    /// Parses `"stderr"` or `"unix:/path"`.
    pub fn parse(text: &str) -> Result<Sink, String> {
        match text {
            "stderr" => Ok(Sink::Stderr),
            t => match t.strip_prefix("unix:") {
                Some(p) if p.starts_with('/') => Ok(Sink::Unix(PathBuf::from(p))),
                _ => Err(format!(
                    "{t:?}: expected \"stderr\" or \"unix:/absolute/path\""
                )),
            },
        }
    }
}

/// `[events]`: where suspicious events go and when a flood is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// The sink (`"stderr"` or `"unix:/path"`).
    pub sink: Sink,
    /// Firewall drops per second of one project above which a
    /// `denied_flood` event is emitted.
    pub denied_per_second: u64,
    /// Distinct destination ports per second (of new flows and denied
    /// packets of one project) above which a `port_scan` event is emitted.
    pub distinct_ports_per_second: u64,
}

/// The whole configuration, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Host tun device name.
    pub device: String,
    /// Gateway address; its prefix is the vassal subnet.
    pub gateway: Ipv4Net,
    /// Optional IPv6 gateway and subnet.
    pub gateway6: Option<Ipv6Net>,
    /// Path of the attach protocol socket.
    pub control_socket: PathBuf,
    /// Path of the uWSGI tuntap compat socket, when enabled.
    pub compat_socket: Option<PathBuf>,
    /// Directory of the state that outlives the process (the flow state
    /// file `flows-<device>`); root's, writable by nobody else.
    pub state_dir: PathBuf,
    /// Address of the Prometheus listener.
    pub metrics_listen: SocketAddr,
    /// Firewall rule file; the embedded default rules when absent.
    pub rules: Option<PathBuf>,
    /// Uids allowed to use the control socket.
    pub launcher_uids: Vec<u32>,
    /// NAT egress.
    pub nat: NatConfig,
    /// Flow table.
    pub flows: FlowConfig,
    /// Fragment table.
    pub fragments: FragmentConfig,
    /// Socket bounds.
    pub limits: Limits,
    /// Static project table.
    pub projects: Vec<ProjectEntry>,
    /// Event sink and thresholds.
    pub events: EventsConfig,
    /// What vassals may reach on the host's own addresses.
    pub host: HostConfig,
    /// `[cluster]`: many hosts through etcd (docs/cluster.md); `gateway`
    /// and `gateway6` then come from the block the router holds.
    pub cluster: Option<cluster::ClusterConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: Option<Spanned<String>>,
    gateway: Option<Spanned<Ipv4Net>>,
    gateway6: Option<Spanned<Ipv6Net>>,
    control_socket: Option<PathBuf>,
    compat_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    rules: Option<PathBuf>,
    launcher_uids: Option<Vec<u32>>,
    nat: Option<RawNat>,
    flows: Option<RawFlows>,
    fragments: Option<RawFragments>,
    limits: Option<RawLimits>,
    events: Option<RawEvents>,
    host: Option<RawHost>,
    cluster: Option<Spanned<cluster::RawCluster>>,
    #[serde(default)]
    project: Vec<Spanned<RawProject>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    sink: Option<Spanned<String>>,
    denied_per_second: Option<u64>,
    distinct_ports_per_second: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    masquerade: Option<bool>,
    egress_interface: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    max_total: Option<Spanned<usize>>,
    max_per_project: Option<Spanned<usize>>,
    tcp_timeout: Option<u64>,
    tcp_closed_timeout: Option<u64>,
    udp_timeout: Option<u64>,
    icmp_timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFragments {
    max_total: Option<Spanned<usize>>,
    max_per_project: Option<Spanned<usize>>,
    timeout: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_vassals: Option<usize>,
    max_connections: Option<usize>,
    hello_timeout_ms: Option<u64>,
    mtu: Option<Spanned<usize>>,
    compat_buffer: Option<Spanned<usize>>,
    max_compat_connections: Option<Spanned<usize>>,
    max_compat_connections_per_uid: Option<Spanned<usize>>,
    host_queues: Option<Spanned<usize>>,
    offload: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: Spanned<String>,
    address: Spanned<Ipv4Addr>,
    address6: Option<Spanned<Ipv6Addr>>,
    uid: Option<u32>,
    net_out_default: Option<Spanned<RawRate>>,
    net_out_ceiling: Option<Spanned<RawRate>>,
    net_in_default: Option<Spanned<RawRate>>,
    net_in_ceiling: Option<Spanned<RawRate>>,
}

/// A rate as written: bits per second, or text like `"50M"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRate {
    Int(u64),
    Text(String),
}

/// Reads a `[[project]]` rate: `Err` holds the message (field named).
fn rate_of(field: &str, raw: &RawRate) -> Result<RateLimit, String> {
    let rate = match raw {
        RawRate::Int(n) => *n,
        RawRate::Text(t) => vassal_attach::parse_rate(t).map_err(|e| format!("{field}: {e}"))?,
    };
    let limit = RateLimit {
        rate,
        burst: vassal_attach::default_burst(rate),
    };
    limit.check().map_err(|e| format!("{field}: {e}"))?;
    Ok(limit)
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are the empty file; parsing it cannot fail.
        Config::parse("", "<defaults>").unwrap_or_else(|_| unreachable!())
    }
}

/// Largest packet the datapath buffers hold; `limits.mtu` may not exceed it.
pub const MAX_MTU: usize = 65535;

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, col) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                col,
                message,
            }
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;

        let device = match raw.device {
            Some(d) => {
                let name = d.get_ref();
                if let Err(why) = validate_interface_name(name) {
                    return Err(at(
                        Some(d.span()),
                        format!("device: {name:?} is not a valid interface name: it {why}"),
                    ));
                }
                name.clone()
            }
            None => "vr0".to_owned(),
        };
        let raw_gateway_span = raw.gateway.as_ref().map(|g| g.span());
        let raw_gateway6_span = raw.gateway6.as_ref().map(|g| g.span());
        let gateway = match raw.gateway {
            Some(g) => {
                let net = *g.get_ref();
                if net.prefix_len() > 30
                    || net.addr() == net.network()
                    || net.addr() == net.broadcast()
                {
                    return Err(at(
                        Some(g.span()),
                        format!(
                            "gateway: {net} must be a host address inside a subnet of at most /30"
                        ),
                    ));
                }
                net
            }
            None => Ipv4Net::new(Ipv4Addr::new(10, 200, 0, 1), 16).unwrap_or_default(),
        };
        let gateway6 = match raw.gateway6 {
            Some(g) => {
                let net = *g.get_ref();
                if net.prefix_len() > 126 || net.addr() == net.network() {
                    return Err(at(
                        Some(g.span()),
                        format!("gateway6: {net} must be a host address inside a subnet of at most /126"),
                    ));
                }
                Some(net)
            }
            None => None,
        };
        let nat = match raw.nat {
            Some(n) => NatConfig {
                masquerade: n.masquerade.unwrap_or(true),
                egress_interface: match n.egress_interface {
                    Some(e) => {
                        if let Err(why) = validate_interface_name(e.get_ref()) {
                            return Err(at(
                                Some(e.span()),
                                format!(
                                    "nat.egress_interface: {:?} is not a valid interface name: it {why}",
                                    e.get_ref()
                                ),
                            ));
                        }
                        Some(e.into_inner())
                    }
                    None => None,
                },
            },
            None => NatConfig {
                masquerade: true,
                egress_interface: None,
            },
        };
        let rf = raw.flows;
        let positive = |v: Option<Spanned<usize>>, field: &str, default: usize| match v {
            Some(v) if *v.get_ref() == 0 => {
                Err(at(Some(v.span()), format!("{field}: must be at least 1")))
            }
            Some(v) => Ok(*v.get_ref()),
            None => Ok(default),
        };
        let flows = FlowConfig {
            max_total: positive(
                rf.as_ref().and_then(|f| f.max_total.clone()),
                "flows.max_total",
                262_144,
            )?,
            max_per_project: positive(
                rf.as_ref().and_then(|f| f.max_per_project.clone()),
                "flows.max_per_project",
                16_384,
            )?,
            tcp_timeout: rf.as_ref().and_then(|f| f.tcp_timeout).unwrap_or(3600),
            tcp_closed_timeout: rf.as_ref().and_then(|f| f.tcp_closed_timeout).unwrap_or(10),
            udp_timeout: rf.as_ref().and_then(|f| f.udp_timeout).unwrap_or(60),
            icmp_timeout: rf.as_ref().and_then(|f| f.icmp_timeout).unwrap_or(30),
        };
        let rg = raw.fragments;
        let fragments = FragmentConfig {
            max_total: positive(
                rg.as_ref().and_then(|f| f.max_total.clone()),
                "fragments.max_total",
                4096,
            )?,
            max_per_project: positive(
                rg.as_ref().and_then(|f| f.max_per_project.clone()),
                "fragments.max_per_project",
                256,
            )?,
            timeout: bounded(
                rg.as_ref().and_then(|f| f.timeout.as_ref()),
                "fragments.timeout",
                1..=60,
                " seconds",
                5,
                at,
            )?,
        };
        let rl = raw.limits;
        let mtu = bounded(
            rl.as_ref().and_then(|l| l.mtu.as_ref()),
            "limits.mtu",
            1280..=MAX_MTU,
            "",
            1500,
            at,
        )?;
        let compat_buffer = match rl.as_ref().and_then(|l| l.compat_buffer.clone()) {
            Some(b) if *b.get_ref() < MAX_MTU + 4 => {
                return Err(at(
                    Some(b.span()),
                    format!(
                        "limits.compat_buffer: must be at least {} bytes (one frame)",
                        MAX_MTU + 4
                    ),
                ))
            }
            Some(b) => *b.get_ref(),
            None => 256 * 1024,
        };
        let host_queues = match rl.as_ref().and_then(|l| l.host_queues.clone()) {
            Some(q) if *q.get_ref() > 64 => {
                return Err(at(
                    Some(q.span()),
                    "limits.host_queues: at most 64 (0 = one per worker thread)".to_owned(),
                ))
            }
            Some(q) => *q.get_ref(),
            None => 0,
        };
        let max_compat_connections = positive(
            rl.as_ref().and_then(|l| l.max_compat_connections.clone()),
            "limits.max_compat_connections",
            1024,
        )?;
        let max_compat_connections_per_uid = positive(
            rl.as_ref()
                .and_then(|l| l.max_compat_connections_per_uid.clone()),
            "limits.max_compat_connections_per_uid",
            128,
        )?;
        let limits = Limits {
            max_vassals: rl.as_ref().and_then(|l| l.max_vassals).unwrap_or(4096),
            max_connections: rl.as_ref().and_then(|l| l.max_connections).unwrap_or(8192),
            hello_timeout_ms: rl.as_ref().and_then(|l| l.hello_timeout_ms).unwrap_or(5000),
            mtu,
            compat_buffer,
            max_compat_connections,
            max_compat_connections_per_uid,
            host_queues,
            offload: rl.as_ref().and_then(|l| l.offload).unwrap_or(true),
        };

        let events = EventsConfig {
            sink: match raw.events.as_ref().and_then(|e| e.sink.as_ref()) {
                Some(s) => Sink::parse(s.get_ref())
                    .map_err(|why| at(Some(s.span()), format!("events.sink: {why}")))?,
                None => Sink::Stderr,
            },
            denied_per_second: raw
                .events
                .as_ref()
                .and_then(|e| e.denied_per_second)
                .unwrap_or(100),
            distinct_ports_per_second: raw
                .events
                .as_ref()
                .and_then(|e| e.distinct_ports_per_second)
                .unwrap_or(100),
        };

        let mut host = HostConfig::default();
        for entry in raw.host.map(|h| h.allow).unwrap_or_default() {
            let port = HostPort::parse(entry.get_ref())
                .map_err(|why| at(Some(entry.span()), format!("host.allow: {why}")))?;
            host.allow.push(port);
        }

        // With a cluster the gateway comes from the block: a gateway in the
        // file could only disagree with it (docs/cluster.md).
        let cluster = match raw.cluster {
            Some(c) => {
                if let Some(g) = &raw_gateway_span {
                    return Err(at(
                        Some(g.clone()),
                        "gateway: not with [cluster]: the gateway is the first address of the block the router holds".to_owned(),
                    ));
                }
                if let Some(g) = &raw_gateway6_span {
                    return Err(at(
                        Some(g.clone()),
                        "gateway6: not with [cluster]: the IPv6 gateway comes from the block of cluster.prefix6".to_owned(),
                    ));
                }
                let table = c.span();
                Some(c.into_inner().validate(
                    || {
                        nix::unistd::gethostname()
                            .ok()
                            .and_then(|h| h.into_string().ok())
                    },
                    table,
                    &device,
                    at,
                )?)
            }
            None => None,
        };

        let mut projects: Vec<ProjectEntry> = Vec::new();
        for p in raw.project {
            let span = p.span();
            let p = p.into_inner();
            let name = p.name.get_ref();
            if let Err(why) = vassal_attach::validate_project_name(name) {
                return Err(at(
                    Some(p.name.span()),
                    format!("project.name: {name:?} {why}"),
                ));
            }
            if projects.iter().any(|q| &q.name == name) {
                return Err(at(
                    Some(p.name.span()),
                    format!("project.name: {name:?} is listed twice"),
                ));
            }
            let address = *p.address.get_ref();
            if let Some(c) = &cluster {
                // The block is only known at start; the attach checks it.
                if !c.blocks.prefix().contains(&address) {
                    return Err(at(
                        Some(p.address.span()),
                        format!(
                            "project.address: {address} is not inside cluster.prefix {}",
                            c.blocks.prefix()
                        ),
                    ));
                }
            } else if !host_in_subnet(gateway, address) {
                return Err(at(
                    Some(p.address.span()),
                    format!("project.address: {address} is not a vassal address of {gateway}"),
                ));
            }
            if projects.iter().any(|q| q.address == address) {
                return Err(at(
                    Some(p.address.span()),
                    format!("project.address: {address} is listed twice"),
                ));
            }
            let address6 = match p.address6 {
                Some(a) => {
                    let addr = *a.get_ref();
                    let ok = match &cluster {
                        Some(c) => c.blocks.prefix6().is_some_and(|p| p.contains(&addr)),
                        None => gateway6.is_some_and(|g| host6_in_subnet(g, addr)),
                    };
                    if !ok {
                        return Err(at(
                            Some(a.span()),
                            format!("project.address6: {addr} is not a vassal address of gateway6"),
                        ));
                    }
                    Some(addr)
                }
                None => None,
            };
            if p.uid.is_some() && projects.iter().any(|q| q.uid == p.uid) {
                return Err(at(Some(span), "project.uid: listed twice".to_owned()));
            }
            let rate = |field: &str, v: &Option<Spanned<RawRate>>| match v {
                Some(v) => rate_of(field, v.get_ref())
                    .map(Some)
                    .map_err(|m| at(Some(v.span()), m)),
                None => Ok(None),
            };
            let net = NetTier {
                out_default: rate("project.net_out_default", &p.net_out_default)?,
                out_ceiling: rate("project.net_out_ceiling", &p.net_out_ceiling)?,
                in_default: rate("project.net_in_default", &p.net_in_default)?,
                in_ceiling: rate("project.net_in_ceiling", &p.net_in_ceiling)?,
            };
            for (field, default, ceiling, span) in [
                (
                    "project.net_out_default",
                    net.out_default,
                    net.out_ceiling,
                    p.net_out_default.as_ref().map(|v| v.span()),
                ),
                (
                    "project.net_in_default",
                    net.in_default,
                    net.in_ceiling,
                    p.net_in_default.as_ref().map(|v| v.span()),
                ),
            ] {
                if let (Some(d), Some(c)) = (default, ceiling) {
                    if d.rate > c.rate {
                        return Err(at(
                            span,
                            format!(
                                "{field}: {} bit/s is above the ceiling of {} bit/s",
                                d.rate, c.rate
                            ),
                        ));
                    }
                }
            }
            projects.push(ProjectEntry {
                name: name.clone(),
                address,
                address6,
                uid: p.uid,
                net,
            });
        }

        Ok(Config {
            device,
            gateway,
            gateway6,
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| PathBuf::from("/run/vassal/router.sock")),
            compat_socket: raw.compat_socket,
            state_dir: raw
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/run/vassal")),
            metrics_listen: raw
                .metrics_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9810))),
            rules: raw.rules,
            launcher_uids: raw.launcher_uids.unwrap_or_else(|| vec![0]),
            nat,
            flows,
            fragments,
            limits,
            projects,
            events,
            host,
            cluster,
        })
    }

    /// The project table entry named `name`.
    pub fn project(&self, name: &str) -> Option<&ProjectEntry> {
        self.projects.iter().find(|p| p.name == name)
    }

    /// The project table entry whose compat uid is `uid`.
    pub fn project_by_uid(&self, uid: u32) -> Option<&ProjectEntry> {
        self.projects.iter().find(|p| p.uid == Some(uid))
    }
}

/// Whether `addr` is a usable vassal address of `gateway`'s subnet: inside
/// it, and neither the gateway, the network nor the broadcast address.
pub fn host_in_subnet(gateway: Ipv4Net, addr: Ipv4Addr) -> bool {
    gateway.contains(&addr)
        && addr != gateway.addr()
        && addr != gateway.network()
        && addr != gateway.broadcast()
}

/// IPv6 version of [`host_in_subnet`] (no broadcast; the subnet-router
/// anycast address, the network address, is refused).
pub fn host6_in_subnet(gateway: Ipv6Net, addr: Ipv6Addr) -> bool {
    gateway.contains(&addr) && addr != gateway.addr() && addr != gateway.network()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_parse() {
        assert_eq!(Sink::parse("stderr"), Ok(Sink::Stderr));
        assert_eq!(
            Sink::parse("unix:/run/vassal/events.sock"),
            Ok(Sink::Unix("/run/vassal/events.sock".into()))
        );
        assert!(Sink::parse("unix:relative").is_err());
        assert!(Sink::parse("syslog").is_err());
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = Config::parse("", "x.toml").unwrap();
        assert_eq!(c.device, "vr0");
        assert_eq!(c.gateway.to_string(), "10.200.0.1/16");
        assert_eq!(c.launcher_uids, vec![0]);
        assert!(c.nat.masquerade);
        assert_eq!(c.control_socket, PathBuf::from("/run/vassal/router.sock"));
        assert!(c.compat_socket.is_none() && c.gateway6.is_none() && c.rules.is_none());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(
            r#"
device = "vr1"
gateway = "10.9.0.1/24"
gateway6 = "fd00:200::1/64"
control_socket = "/tmp/r.sock"
compat_socket = "/tmp/t.sock"
metrics_listen = "127.0.0.1:9999"
rules = "/etc/vassal/firewall.toml"
launcher_uids = [0, 1000]
[nat]
masquerade = false
egress_interface = "eth0"
[flows]
max_per_project = 10
[fragments]
max_total = 100
max_per_project = 20
timeout = 3
[limits]
mtu = 1400
[[project]]
name = "alice"
address = "10.9.0.2"
address6 = "fd00:200::2"
uid = 10001
"#,
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.device, "vr1");
        assert_eq!(c.flows.max_per_project, 10);
        assert_eq!(
            c.fragments,
            FragmentConfig {
                max_total: 100,
                max_per_project: 20,
                timeout: 3
            }
        );
        assert_eq!(c.limits.mtu, 1400);
        assert_eq!(c.project_by_uid(10001).unwrap().name, "alice");
        assert!(!c.nat.masquerade);
    }

    #[test]
    fn project_network_tiers_are_read_and_checked() {
        let c = Config::parse(
            "[[project]]\nname = \"a\"\naddress = \"10.200.0.2\"\nnet_out_default = \"10M\"\nnet_out_ceiling = \"50M\"\nnet_in_ceiling = 100000000\n",
            "r.toml",
        )
        .unwrap();
        let net = c.project("a").unwrap().net;
        assert_eq!(
            net.out_default,
            Some(RateLimit {
                rate: 10_000_000,
                burst: 312_500
            })
        );
        assert_eq!(
            net.out_ceiling.map(|l| (l.rate, l.burst)),
            Some((50_000_000, 1_562_500))
        );
        assert_eq!(net.in_ceiling.map(|l| l.rate), Some(100_000_000));
        assert_eq!(net.in_default, None);
        let base = "[[project]]\nname = \"a\"\naddress = \"10.200.0.2\"\n";
        for (extra, expected) in [
            (
                "net_out_default = \"5X\"",
                "r.toml:4:19: project.net_out_default: \"5X\" has an unknown unit",
            ),
            (
                "net_in_ceiling = 10",
                "r.toml:4:18: project.net_in_ceiling: rate 10 bit/s is outside",
            ),
            (
                "net_in_default = \"2G\"\nnet_in_ceiling = \"1G\"",
                "r.toml:4:18: project.net_in_default: 2000000000 bit/s is above the ceiling",
            ),
        ] {
            let e = error_of(&format!("{base}{extra}\n"));
            assert!(e.starts_with(expected), "{extra}: {e}");
        }
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "r.toml").unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_refused_with_location() {
        let e = error_of("device = \"vr0\"\ngatway = \"10.0.0.1/8\"\n");
        assert!(e.starts_with("r.toml:2:1:"), "{e}");
        assert!(e.contains("gatway"), "{e}");
        let e = error_of("[nat]\nmasquerade = true\nextra = 1\n");
        assert!(e.starts_with("r.toml:3:1:") && e.contains("extra"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = error_of("gateway = \"10.0.0.0/24\"\n");
        assert!(
            e.starts_with("r.toml:1:11:") && e.contains("gateway"),
            "{e}"
        );
        let e = error_of(
            "gateway = \"10.0.0.1/24\"\n[[project]]\nname = \"a\"\naddress = \"10.1.0.2\"\n",
        );
        assert!(
            e.starts_with("r.toml:4:11:") && e.contains("project.address"),
            "{e}"
        );
        let e = error_of("[[project]]\nname = \"A\"\naddress = \"10.200.0.2\"\n");
        assert!(
            e.starts_with("r.toml:2:8:") && e.contains("project.name"),
            "{e}"
        );
        let e = error_of("launcher_uids = [\"root\"]\n");
        assert!(e.starts_with("r.toml:1:"), "{e}");
        let e = error_of("device = \"a/b\"\n");
        assert!(e.contains("device"), "{e}");
        let e = error_of("[fragments]\ntimeout = 0\n");
        assert!(
            e.starts_with("r.toml:2:11:") && e.contains("fragments.timeout"),
            "{e}"
        );
        let e = error_of("[fragments]\nmax_per_project = 0\n");
        assert!(e.contains("fragments.max_per_project"), "{e}");
        let e = error_of("[flows]\nmax_total = 0\n");
        assert!(
            e.starts_with("r.toml:2:13:") && e.contains("flows.max_total"),
            "{e}"
        );
    }

    #[test]
    fn interface_names_are_checked_as_the_kernel_and_nft_need() {
        for ok in [
            "vr0",
            "vr-a.1",
            "vr_a",
            "a",
            "123456789012345",
            "eth0@x",
            "br+",
        ] {
            assert_eq!(validate_interface_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\0b",
            "a\"b",
            "a\\b",
            "vr*",
            "caf\u{e9}",
        ] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
        let e = error_of("[nat]\negress_interface = \"eth0\\\" accept }\"\n");
        assert!(
            e.starts_with("r.toml:2:20:") && e.contains("nat.egress_interface"),
            "{e}"
        );
        let e = error_of("device = \"..\"\n");
        assert!(e.starts_with("r.toml:1:10:") && e.contains("device"), "{e}");
    }

    #[test]
    fn host_allow_entries_parse_and_bad_ones_are_located() {
        let c = Config::parse("[host]\nallow = [\"udp/53\", \"tcp/8000-8080\"]\n", "r").unwrap();
        assert_eq!(
            c.host.allow,
            vec![
                HostPort {
                    proto: HostProto::Udp,
                    first: 53,
                    last: 53
                },
                HostPort {
                    proto: HostProto::Tcp,
                    first: 8000,
                    last: 8080
                }
            ]
        );
        assert!(Config::parse("", "r").unwrap().host.allow.is_empty());
        for bad in [
            "tcp",
            "icmp/1",
            "tcp/0",
            "tcp/65536",
            "udp/9-8",
            "tcp/x",
            "tcp/1-",
        ] {
            let e = error_of(&format!("[host]\nallow = [\"udp/53\", \"{bad}\"]\n"));
            assert!(
                e.starts_with("r.toml:2:20:") && e.contains("host.allow"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn subnet_membership() {
        let g: Ipv4Net = "10.0.0.1/24".parse().unwrap();
        assert!(host_in_subnet(g, "10.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.1", "10.0.0.0", "10.0.0.255", "10.0.1.2"] {
            assert!(!host_in_subnet(g, bad.parse().unwrap()), "{bad}");
        }
    }
}
