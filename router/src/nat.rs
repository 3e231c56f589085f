//! NAT egress: one nftables table of the router's own, `inet vassal_<device>`,
//! with masquerade for the vassal subnets and forward accept for the
//! router's device. Installed in one `nft -f -` transaction that first
//! deletes a stale table of the same name (left by a crash), so it is
//! replaced, never duplicated; removed on clean exit.

use crate::config::Config;
use std::io::Write;
use std::process::{Command, Stdio};

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

/// The table name for `device`: `vassal_` + the device name, with anything
/// but letters, digits and `_` replaced by `_`.
pub fn table_name(device: &str) -> String {
    let clean: String = device
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("vassal_{clean}")
}

/// The nft script installing the table (after deleting a stale one).
pub fn script(config: &Config) -> String {
    let table = table_name(&config.device);
    let dev = &config.device;
    let out = match &config.nat.egress_interface {
        Some(egress) => format!("oifname \"{egress}\""),
        None => format!("oifname != \"{dev}\""),
    };
    let mut s = String::new();
    // `add` then `delete` makes the delete succeed whether or not a stale
    // table exists; all of it is one atomic transaction.
    s.push_str(&format!(
        "add table inet {table}\ndelete table inet {table}\n"
    ));
    s.push_str(&format!("table inet {table} {{\n"));
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    s.push_str(&format!(
        "    ip saddr {} {out} masquerade\n",
        config.gateway.trunc()
    ));
    if let Some(g6) = config.gateway6 {
        s.push_str(&format!("    ip6 saddr {} {out} masquerade\n", g6.trunc()));
    }
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    s.push_str(&format!(
        "    iifname \"{dev}\" accept\n    oifname \"{dev}\" accept\n  }}\n}}\n"
    ));
    s
}

/// The installed table; [`Nat::remove`] deletes it.
pub struct Nat {
    table: String,
}

impl Nat {
    /// Installs the table and enables forwarding.
    pub fn install(config: &Config) -> Result<Nat, NatError> {
        let table = table_name(&config.device);
        nft("install", &table, &script(config))?;
        sysctl("/proc/sys/net/ipv4/ip_forward")?;
        if config.gateway6.is_some() {
            sysctl("/proc/sys/net/ipv6/conf/all/forwarding")?;
        }
        Ok(Nat { table })
    }

    /// With NAT off: deletes the table a router of this device left when it
    /// was killed with NAT on (in one transaction that creates it first, so
    /// it works whether or not one is there). Safe: the device is this
    /// router's alone (IFF_TUN_EXCL), so the table can be no one else's.
    pub fn remove_stale(config: &Config) -> Result<(), NatError> {
        let table = table_name(&config.device);
        nft(
            "remove stale",
            &table,
            &format!("add table inet {table}\ndelete table inet {table}\n"),
        )
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
    let err = |message: String| NatError::Nft {
        step,
        table: table.to_owned(),
        message,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_names_its_own_table_and_subnets() {
        let mut c = Config::parse(
            "device = \"vr-a.1\"\ngateway = \"10.9.0.1/24\"\ngateway6 = \"fd00:9::1/64\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(table_name(&c.device), "vassal_vr_a_1");
        let s = script(&c);
        assert!(
            s.starts_with("add table inet vassal_vr_a_1\ndelete table inet vassal_vr_a_1\n"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr 10.9.0.0/24 oifname != \"vr-a.1\" masquerade"),
            "{s}"
        );
        assert!(
            s.contains("ip6 saddr fd00:9::/64 oifname != \"vr-a.1\" masquerade"),
            "{s}"
        );
        assert!(s.contains("iifname \"vr-a.1\" accept"), "{s}");
        c.nat.egress_interface = Some("eth0".into());
        assert!(script(&c).contains("oifname \"eth0\" masquerade"));
    }
}
