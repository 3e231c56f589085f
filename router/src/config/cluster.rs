//! The `[cluster]` table of the router configuration: parsed here from its
//! raw TOML form, every error located by the caller's `at` with the field.
//!
//! Imports nothing of the crate but the block arithmetic and interface
//! names (files of their own), so that `config.rs` can use it without an
//! import cycle.

use super::blocks::Blocks;
use super::bounds::bounded;
use super::etcd_security::{self, EtcdSecurity, RawSecurity};
use super::iface::validate_interface_name;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

/// How packets reach another host's block (the datapath's business; kept
/// here so the configuration is complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kernel routes via the peer's underlay address (one L2 network).
    Direct,
    /// The kernel's VXLAN device (hosts on different networks).
    Vxlan,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client endpoints (`http://host:port`, or all `https://`).
    pub etcd: Vec<String>,
    /// TLS, client certificate and etcd user (docs/cluster.md,
    /// "Protecting etcd"); empty with `http://` endpoints.
    pub security: EtcdSecurity,
    /// This host's name in the cluster (default: the hostname).
    pub node: String,
    /// The address other hosts reach this one at.
    pub underlay: IpAddr,
    /// The cluster's vassal range and its division into blocks.
    pub blocks: Blocks,
    /// direct or vxlan.
    pub mode: Mode,
    /// Seconds the etcd lease of this host's block and identities lives
    /// without a keep-alive: how long a dead host stays visible.
    pub lease_ttl: u64,
    /// Prefix of every key vassal writes in etcd.
    pub key_prefix: String,
    /// File remembering the last block held, for a start without etcd.
    pub state_file: PathBuf,
    /// The VXLAN device's name (VXLAN mode).
    pub vxlan_device: String,
    /// Its VXLAN network identifier, the same on every host.
    pub vxlan_vni: u32,
    /// Its UDP port, the same on every host.
    pub vxlan_port: u16,
}

/// The VXLAN device's default name.
pub const VXLAN_DEVICE: &str = "vassal-vx";
/// The default VXLAN network identifier.
pub const VXLAN_VNI: u32 = 1;
/// The default VXLAN UDP port (IANA's).
pub const VXLAN_PORT: u16 = 4789;
/// The largest VXLAN network identifier (24 bits).
pub const VXLAN_VNI_MAX: u32 = (1 << 24) - 1;

/// `[cluster]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    etcd: Spanned<Vec<Spanned<String>>>,
    etcd_ca: Option<Spanned<PathBuf>>,
    etcd_cert: Option<Spanned<PathBuf>>,
    etcd_key: Option<Spanned<PathBuf>>,
    etcd_user: Option<Spanned<String>>,
    etcd_password_file: Option<Spanned<PathBuf>>,
    node: Option<Spanned<String>>,
    underlay: Spanned<IpAddr>,
    prefix: Spanned<Ipv4Net>,
    prefix6: Option<Spanned<Ipv6Net>>,
    block: Spanned<u8>,
    mode: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<u64>>,
    key_prefix: Option<Spanned<String>>,
    state_file: Option<PathBuf>,
    vxlan_device: Option<Spanned<String>>,
    vxlan_vni: Option<Spanned<u32>>,
    vxlan_port: Option<Spanned<u16>>,
}

/// Longest node name: it is part of etcd keys and event lines.
pub const MAX_NODE_LEN: usize = 63;

/// Checks a node name: 1 to 63 bytes of `a-z`, `0-9`, `-`, `.`, `_`,
/// starting with a letter or digit (so it is one key segment).
pub fn validate_node(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NODE_LEN {
        return Err("must be 1 to 63 bytes long");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err("may only contain a-z, 0-9, '-', '.' and '_'");
    }
    Ok(())
}

/// Checks an endpoint; `Ok(true)` for `https://`.
fn validate_endpoint(e: &str) -> Result<bool, String> {
    let (https, rest) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(format!(
            "{e:?} must start with http:// or https:// (see docs/cluster.md, \"Protecting etcd\")"
        ))
        }
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{e:?} must be http(s)://HOST:PORT"))?;
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(format!("{e:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(https),
        _ => Err(format!("{e:?}: {port:?} is not a port")),
    }
}

fn validate_key_prefix(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.len() > 128 {
        return Err("must start with '/', not end with '/', and be 2 to 128 bytes long");
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may only contain printable ASCII without spaces");
    }
    Ok(())
}

impl RawCluster {
    /// Validates the table; `at` turns a span and a message into the
    /// caller's located error; `hostname` is the default node name;
    /// `table` is the span of the whole table (for a missing node name);
    /// `device` is the router's host tun (the VXLAN device must differ).
    pub fn validate<E>(
        self,
        hostname: impl FnOnce() -> Option<String>,
        table: Range<usize>,
        device: &str,
        at: impl Fn(Option<Range<usize>>, String) -> E,
    ) -> Result<ClusterConfig, E> {
        let span = self.etcd.span();
        let endpoints = self.etcd.into_inner();
        if endpoints.is_empty() {
            return Err(at(Some(span), "cluster.etcd: at least one endpoint".into()));
        }
        let mut etcd = Vec::new();
        let mut scheme = None;
        for e in endpoints {
            let https = validate_endpoint(e.get_ref())
                .map_err(|why| at(Some(e.span()), format!("cluster.etcd: {why}")))?;
            // One scheme for all: a plain endpoint beside TLS ones would
            // take the cluster's traffic and credentials around the TLS.
            if *scheme.get_or_insert(https) != https {
                return Err(at(
                    Some(e.span()),
                    format!(
                        "cluster.etcd: {:?} mixes http:// and https:// endpoints: use https:// for all",
                        e.get_ref()
                    ),
                ));
            }
            etcd.push(e.into_inner());
        }
        let security = etcd_security::validate(
            RawSecurity {
                ca: self.etcd_ca,
                cert: self.etcd_cert,
                key: self.etcd_key,
                user: self.etcd_user,
                password_file: self.etcd_password_file,
            },
            scheme == Some(true),
            span,
            &at,
        )?;
        let node = match self.node {
            Some(n) => {
                validate_node(n.get_ref()).map_err(|why| {
                    at(
                        Some(n.span()),
                        format!("cluster.node: {:?} {why}", n.get_ref()),
                    )
                })?;
                n.into_inner()
            }
            None => {
                let h = hostname().unwrap_or_default().to_ascii_lowercase();
                validate_node(&h).map_err(|why| {
                    at(
                        Some(table.clone()),
                        format!("cluster.node: unset, and the hostname {h:?} is no node name: it {why}; set cluster.node"),
                    )
                })?;
                h
            }
        };
        let underlay = *self.underlay.get_ref();
        if underlay.is_unspecified() || underlay.is_multicast() || underlay.is_loopback() {
            return Err(at(
                Some(self.underlay.span()),
                format!("cluster.underlay: {underlay} is not an address other hosts can reach"),
            ));
        }
        if underlay.is_ipv6() {
            return Err(at(
                Some(self.underlay.span()),
                format!("cluster.underlay: {underlay}: the routes between hosts need an IPv4 underlay (docs/cluster.md, \"Open\")"),
            ));
        }
        let prefix = *self.prefix.get_ref();
        if prefix.addr() != prefix.network() {
            return Err(at(
                Some(self.prefix.span()),
                format!(
                    "cluster.prefix: {prefix} has host bits set (write {})",
                    prefix.trunc()
                ),
            ));
        }
        let block = *self.block.get_ref();
        let prefix6 = match &self.prefix6 {
            Some(p) => {
                let p6 = *p.get_ref();
                if p6.addr() != p6.network() {
                    return Err(at(
                        Some(p.span()),
                        format!(
                            "cluster.prefix6: {p6} has host bits set (write {})",
                            p6.trunc()
                        ),
                    ));
                }
                Some((p6, p.span()))
            }
            None => None,
        };
        let blocks = Blocks::new(prefix, prefix6.as_ref().map(|p| p.0), block).map_err(|e| {
            let span = match e {
                super::blocks::BlockError::Prefix6(_) => prefix6.as_ref().map(|p| p.1.clone()),
                _ => Some(self.block.span()),
            };
            at(span, format!("cluster.block: {e}"))
        })?;
        let mode = match &self.mode {
            None => Mode::Direct,
            Some(m) => match m.get_ref().as_str() {
                "direct" => Mode::Direct,
                "vxlan" => Mode::Vxlan,
                other => {
                    return Err(at(
                        Some(m.span()),
                        format!("cluster.mode: {other:?} is not \"direct\" or \"vxlan\""),
                    ))
                }
            },
        };
        let lease_ttl = bounded(
            self.lease_ttl.as_ref(),
            "cluster.lease_ttl",
            2..=3600,
            " seconds",
            15,
            &at,
        )?;
        let key_prefix = match self.key_prefix {
            Some(k) => {
                validate_key_prefix(k.get_ref()).map_err(|why| {
                    at(
                        Some(k.span()),
                        format!("cluster.key_prefix: {:?} {why}", k.get_ref()),
                    )
                })?;
                k.into_inner()
            }
            None => "/vassal".to_owned(),
        };
        let vxlan_device = match self.vxlan_device {
            Some(d) => {
                let name = d.get_ref();
                if let Err(why) = validate_interface_name(name) {
                    return Err(at(
                        Some(d.span()),
                        format!("cluster.vxlan_device: {name:?} is not a valid interface name: it {why}"),
                    ));
                }
                if name == device {
                    return Err(at(
                        Some(d.span()),
                        format!("cluster.vxlan_device: {name:?} is the router's device"),
                    ));
                }
                d.into_inner()
            }
            None => VXLAN_DEVICE.to_owned(),
        };
        let vxlan_vni = bounded(
            self.vxlan_vni.as_ref(),
            "cluster.vxlan_vni",
            1..=VXLAN_VNI_MAX,
            "",
            VXLAN_VNI,
            &at,
        )?;
        let vxlan_port = bounded(
            self.vxlan_port.as_ref(),
            "cluster.vxlan_port",
            1..=u16::MAX,
            "",
            VXLAN_PORT,
            &at,
        )?;
        Ok(ClusterConfig {
            etcd,
            security,
            node,
            underlay,
            blocks,
            mode,
            lease_ttl,
            key_prefix,
            state_file: self
                .state_file
                .unwrap_or_else(|| PathBuf::from("/var/lib/vassal/cluster-state.json")),
            vxlan_device,
            vxlan_vni,
            vxlan_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        cluster: Spanned<RawCluster>,
    }

    fn validate(
        text: &str,
        host: Option<&str>,
    ) -> Result<ClusterConfig, (Option<Range<usize>>, String)> {
        let w: Wrap = toml::from_str(text).unwrap();
        let table = w.cluster.span();
        w.cluster
            .into_inner()
            .validate(|| host.map(str::to_owned), table, "vr0", |s, m| (s, m))
    }

    const NO_NODE: &str = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nunderlay = \"198.51.100.2\"\nprefix = \"10.1.0.0/16\"\nblock = 24\n";

    #[test]
    fn the_node_defaults_to_the_hostname_lowercased() {
        assert_eq!(validate(NO_NODE, Some("Host-A")).unwrap().node, "host-a");
    }

    #[test]
    fn a_hostname_that_is_no_node_name_points_at_the_table() {
        for bad in [None, Some("a b"), Some("")] {
            let (span, message) = validate(NO_NODE, bad).unwrap_err();
            assert!(span.is_some(), "{message}");
            assert!(message.starts_with("cluster.node: unset"), "{message}");
        }
    }

    #[test]
    fn node_names() {
        for ok in ["a", "host-1", "h.example_2", &"x".repeat(63)] {
            assert_eq!(validate_node(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", ".a", "A", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_node(bad).is_err(), "{bad}");
        }
    }
}
