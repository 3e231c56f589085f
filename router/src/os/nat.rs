//! The router's own nftables table, `inet vassal_<device>`: installed at
//! every start (NAT on or off), in one `nft -f -` transaction that first
//! deletes a stale table of the same name (left by a crash), so it is
//! replaced, never duplicated; removed on clean exit. It holds what only
//! the host's kernel can enforce:
//!
//! - `forward` and `output`: no packet with a source in the vassal subnets
//!   (the gateway aside, for the host's own replies) is sent into the
//!   device. Such a packet was forged outside: vassal-to-vassal traffic is
//!   switched inside the router and never crosses the host.
//! - `input`: vassals open nothing on the host's own addresses but the
//!   gateway (which the router's rules govern) and the `[host] allow`
//!   ports; replies to the host's own connections pass (conntrack).
//! - `postrouting`, with NAT on: masquerade for the vassal subnets, but
//!   with `[cluster]` not toward the cluster prefix: traffic between
//!   blocks keeps its vassal source, which the receiving router judges
//!   by (docs/cluster.md).

use crate::config::{Config, HostProto};

/// An nftables or sysctl step failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// `nft` failed or could not run.
    #[error("nft ({step} table {table}): {message}")]
    Nft {
        /// install or delete.
        step: &'static str,
        /// The table name.
        table: String,
        /// nft's stderr or the spawn error.
        message: String,
    },
    /// Enabling forwarding failed.
    #[error("enabling forwarding ({path}): {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// The table name for `device`: `vassal_` + the device name with every
/// byte but ASCII letters and digits escaped (`_` as `__`, any other as `_`
/// and two lowercase hex digits). The escape is injective, so distinct
/// devices (`vr-a`, `vr_a`, `vr.a`) never share a table, and the result is
/// an nft identifier (letters, digits, `_`) of at most 7 + 3 * 15 bytes.
pub fn table_name(device: &str) -> String {
    let mut name = String::from("vassal_");
    for b in device.bytes() {
        match b {
            b'_' => name.push_str("__"),
            b if b.is_ascii_alphanumeric() => name.push(char::from(b)),
            b => name.push_str(&format!("_{b:02x}")),
        }
    }
    name
}

/// The nft script installing the table (after deleting a stale one).
/// `config.device` and `config.nat.egress_interface` were checked by
/// [`crate::config::validate_interface_name`], so they quote safely.
pub fn script(config: &Config) -> String {
    let table = table_name(&config.device);
    let dev = &config.device;
    let v4 = config.gateway.trunc();
    let gw = config.gateway.addr();
    let mut s = String::new();
    // `add` then `delete` makes the delete succeed whether or not a stale
    // table exists; all of it is one atomic transaction.
    s.push_str(&format!(
        "add table inet {table}\ndelete table inet {table}\n"
    ));
    s.push_str(&format!("table inet {table} {{\n"));

    // Anti-spoofing toward the device: forwarded packets never carry a
    // vassal source, and the host's own only the gateway's.
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str(&format!("    oifname \"{dev}\" ip saddr {v4} drop\n"));
    if let Some(g6) = config.gateway6 {
        s.push_str(&format!(
            "    oifname \"{dev}\" ip6 saddr {} drop\n",
            g6.trunc()
        ));
    }
    if config.nat.masquerade {
        s.push_str(&format!(
            "    iifname \"{dev}\" accept\n    oifname \"{dev}\" accept\n"
        ));
    }
    s.push_str("  }\n");
    s.push_str("  chain output {\n    type filter hook output priority filter; policy accept;\n");
    s.push_str(&format!(
        "    oifname \"{dev}\" ip saddr {v4} ip saddr != {gw} drop\n"
    ));
    if let Some(g6) = config.gateway6 {
        s.push_str(&format!(
            "    oifname \"{dev}\" ip6 saddr {} ip6 saddr != {} drop\n",
            g6.trunc(),
            g6.addr()
        ));
    }
    s.push_str("  }\n");

    // The host's own addresses: closed to vassals but for replies, the
    // gateway and the allowed ports.
    s.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    s.push_str(&format!(
        "    iifname \"{dev}\" ct state established,related accept\n"
    ));
    s.push_str(&format!("    iifname \"{dev}\" ip daddr {gw} accept\n"));
    if let Some(g6) = config.gateway6 {
        s.push_str(&format!(
            "    iifname \"{dev}\" ip6 daddr {} accept\n",
            g6.addr()
        ));
    }
    for proto in [HostProto::Tcp, HostProto::Udp] {
        let ports: Vec<String> = config
            .host
            .allow
            .iter()
            .filter(|p| p.proto == proto)
            .map(|p| {
                if p.first == p.last {
                    p.first.to_string()
                } else {
                    format!("{}-{}", p.first, p.last)
                }
            })
            .collect();
        if !ports.is_empty() {
            s.push_str(&format!(
                "    iifname \"{dev}\" {p} dport {{ {} }} accept\n",
                ports.join(", "),
                p = proto.as_str()
            ));
        }
    }
    s.push_str(&format!("    iifname \"{dev}\" drop\n  }}\n"));

    if config.nat.masquerade {
        let out = match &config.nat.egress_interface {
            Some(egress) => format!("oifname \"{egress}\""),
            None => format!("oifname != \"{dev}\""),
        };
        // Another host's block is reached with the vassal's own source.
        let (keep4, keep6) = match &config.cluster {
            Some(c) => (
                format!("ip daddr != {} ", c.blocks.prefix()),
                c.blocks
                    .prefix6()
                    .map(|p| format!("ip6 daddr != {p} "))
                    .unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        };
        s.push_str(
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
        );
        s.push_str(&format!("    ip saddr {v4} {keep4}{out} masquerade\n"));
        if let Some(g6) = config.gateway6 {
            s.push_str(&format!(
                "    ip6 saddr {} {keep6}{out} masquerade\n",
                g6.trunc()
            ));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The installed table; [`Table::remove`] deletes it.
pub struct Table {
    table: String,
}

impl Table {
    /// Installs the table (replacing a stale one of the same device) and,
    /// with NAT on or `[cluster]`, enables forwarding. Safe to replace: the device is this
    /// router's alone (IFF_TUN_EXCL) and the name is injective in it, so
    /// the table can be no one else's.
    pub fn install(config: &Config) -> Result<Table, NatError> {
        let table = table_name(&config.device);
        nft("install", &table, &script(config))?;
        // Forwarding: NAT sends vassal traffic out of the host, and a
        // cluster between the host tun and the underlay (or VXLAN device).
        if config.nat.masquerade || config.cluster.is_some() {
            sysctl("/proc/sys/net/ipv4/ip_forward")?;
            if config.gateway6.is_some() {
                sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;
            }
        }
        Ok(Table { table })
    }

    /// Deletes exactly the table this router installed. Forwarding stays
    /// enabled: other services of the host may rely on it.
    pub fn remove(self) -> Result<(), NatError> {
        nft(
            "delete",
            &self.table,
            &format!("delete table inet {}\n", self.table),
        )
    }
}

fn sysctl(path: &'static str) -> Result<(), NatError> {
    std::fs::write(path, "1").map_err(|source| NatError::Sysctl { path, source })
}

fn nft(step: &'static str, table: &str, script: &str) -> Result<(), NatError> {
    super::nft::run(script).map_err(|message| NatError::Nft {
        step,
        table: table.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate_interface_name;

    #[test]
    fn table_names_are_injective_nft_identifiers() {
        assert_eq!(table_name("vr0"), "vassal_vr0");
        assert_eq!(table_name("vr-a.1"), "vassal_vr_2da_2e1");
        let names = [
            "vr-a", "vr_a", "vr.a", "vr_2da", "vr__a", "vr_", "vr", "vr+a", "vr@a",
        ];
        let tables: std::collections::BTreeSet<String> =
            names.iter().map(|d| table_name(d)).collect();
        assert_eq!(tables.len(), names.len(), "{tables:?}");
        // Every printable name of up to two bytes: no collision, and the
        // name stays an nft identifier within nft's length limit.
        let mut seen = std::collections::BTreeMap::new();
        let alphabet: Vec<char> = (0x21u8..0x7f).map(char::from).collect();
        let mut check = |d: String| {
            if validate_interface_name(&d).is_err() {
                return;
            }
            let t = table_name(&d);
            assert!(t.len() <= 7 + 3 * 15);
            assert!(
                t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{t}"
            );
            if let Some(other) = seen.insert(t.clone(), d.clone()) {
                panic!("{d:?} and {other:?} share {t}");
            }
        };
        for a in &alphabet {
            check(a.to_string());
            for b in &alphabet {
                check(format!("{a}{b}"));
            }
        }
        assert_eq!(table_name("123456789012345").len(), 22);
    }

    #[test]
    fn script_names_its_own_table_and_subnets() {
        let mut c = Config::parse(
            "device = \"vr-a.1\"\ngateway = \"10.9.0.1/24\"\ngateway6 = \"fd00:9::1/64\"\n[host]\nallow = [\"udp/53\", \"tcp/53\", \"tcp/8000-8080\"]\n",
            "t",
        )
        .unwrap();
        let t = "vassal_vr_2da_2e1";
        let s = script(&c);
        assert!(
            s.starts_with(&format!("add table inet {t}\ndelete table inet {t}\n")),
            "{s}"
        );
        for line in [
            "oifname \"vr-a.1\" ip saddr 10.9.0.0/24 drop",
            "oifname \"vr-a.1\" ip6 saddr fd00:9::/64 drop",
            "oifname \"vr-a.1\" ip saddr 10.9.0.0/24 ip saddr != 10.9.0.1 drop",
            "iifname \"vr-a.1\" ct state established,related accept",
            "iifname \"vr-a.1\" ip daddr 10.9.0.1 accept",
            "iifname \"vr-a.1\" tcp dport { 53, 8000-8080 } accept",
            "iifname \"vr-a.1\" udp dport { 53 } accept",
            "iifname \"vr-a.1\" drop",
            "ip saddr 10.9.0.0/24 oifname != \"vr-a.1\" masquerade",
            "ip6 saddr fd00:9::/64 oifname != \"vr-a.1\" masquerade",
            "iifname \"vr-a.1\" accept",
        ] {
            assert!(s.contains(line), "{line} missing from\n{s}");
        }
        c.nat.egress_interface = Some("eth0".into());
        assert!(script(&c).contains("oifname \"eth0\" masquerade"));
        // NAT off: the same protections, no masquerade.
        c.nat.masquerade = false;
        let s = script(&c);
        assert!(
            !s.contains("masquerade") && !s.contains("iifname \"vr-a.1\" accept"),
            "{s}"
        );
        assert!(s.contains("iifname \"vr-a.1\" drop"), "{s}");
    }

    #[test]
    fn with_a_cluster_the_prefix_is_not_masqueraded() {
        let mut c = Config::parse(
            "[nat]\nmasquerade = true\n[cluster]\netcd = [\"http://198.51.100.1:2379\"]\nnode = \"a\"\nunderlay = \"198.51.100.11\"\nprefix = \"10.240.0.0/16\"\nprefix6 = \"fd00:240::/48\"\nblock = 24\n",
            "t",
        )
        .unwrap();
        // The daemon sets the gateways from the block it holds.
        c.gateway = "10.240.3.1/24".parse().unwrap();
        c.gateway6 = Some("fd00:240:0:300::1/56".parse().unwrap());
        let s = script(&c);
        assert!(
            s.contains(
                "ip saddr 10.240.3.0/24 ip daddr != 10.240.0.0/16 oifname != \"vr0\" masquerade"
            ),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr fd00:240:0:300::/56 ip6 daddr != fd00:240::/48 oifname != \"vr0\" masquerade"),
            "{s}"
        );
        // Without [cluster] nothing is exempt.
        c.cluster = None;
        assert!(!script(&c).contains("daddr !="));
    }
}
