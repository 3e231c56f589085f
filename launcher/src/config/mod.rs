//! The vassal file (TOML): what one vassal runs, as whom, on which network,
//! with which limits. Unknown keys are refused; every problem is reported
//! with `file:line:column: field: ...`, all of them at once where the TOML
//! itself parses.
//!
//! Three layers, imports pointing down: `raw` is the file as serde reads
//! it (every value spanned), `units` parses sizes, durations and id maps,
//! and `validate` turns the raw file and the command line's overrides into
//! a [`VassalConfig`] or every problem at once.

mod raw;
#[cfg(test)]
mod tests;
mod units;
mod validate;

use crate::seccomp::Filter;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use units::{
    map_to_host, parse_duration, parse_id_map, parse_size, IdRange, MAX_ID_MAP_RANGES,
};
pub use vassal_attach::{default_burst, parse_rate, RateLimit};

/// Default control socket of vassal-router.
pub const DEFAULT_ROUTER_SOCKET: &str = "/run/vassal/router.sock";

/// Memory limit when the file sets none: a vassal without a limit could
/// push the whole host into OOM.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// Process limit when the file sets none: enough for any web app, too few
/// for a fork bomb to starve the host.
pub const DEFAULT_PIDS: u64 = 1024;

/// One problem in a vassal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line, 0 when the problem has no position (a missing key).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The field, as a TOML path (`limits.memory`).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Why a vassal file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the vassal file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// One or more problems, each on its own line.
    #[error("{}", render(origin, problems))]
    Invalid {
        /// The file (or `<command line>`).
        origin: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

fn render(origin: &str, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| {
            if p.line == 0 {
                format!("{origin}: {}: {}", p.field, p.message)
            } else {
                format!(
                    "{origin}:{}:{}: {}: {}",
                    p.line, p.column, p.field, p.message
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which seccomp filter the command runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompProfile {
    /// The built-in deny list (see `seccomp.rs`).
    Default,
    /// No filter (operators' escape hatch; logged).
    None,
    /// The built-in list plus the syscall names in this JSON file.
    File(PathBuf),
}

/// The vassal's network, when it has one beyond loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The router's control socket.
    pub router: PathBuf,
    /// The vassal's IPv4 address (unspecified until leased with `auto`).
    pub address: Ipv4Addr,
    /// The vassal's IPv6 address.
    pub address6: Option<Ipv6Addr>,
    /// `address = "auto"`: the router leases the address before the
    /// namespaces exist (docs/design.md, "Launch order", step 1).
    pub auto: bool,
    /// `address6 = "auto"` (only with `auto`): lease an IPv6 address too.
    pub auto6: bool,
    /// The router's gateway, when the file names it: the attach is refused
    /// if the router answers with another one. Routes need no next hop (the
    /// tun is point-to-point), so absent is fine.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of the vassal's tun device.
    pub mtu: u16,
}

/// One bind mount from the host into the vassal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the vassal; must exist in its root filesystem.
    pub target: PathBuf,
    /// Read-write when true.
    pub writable: bool,
    /// Space quota in bytes (project quota; writable mounts only).
    pub quota: Option<u64>,
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (cgroup); [`DEFAULT_MEMORY`] when unset.
    pub memory: Option<u64>,
    /// CPU limit in cores (cgroup quota).
    pub cpu: Option<f64>,
    /// Process and thread limit (cgroup pids); [`DEFAULT_PIDS`] when unset.
    pub pids: Option<u64>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// Size of the private /tmp.
    pub tmp_size: u64,
    /// Wall-clock limit of the command.
    pub wall_clock: Option<Duration>,
    /// What the vassal may send, asked of the router in the hello; `None`
    /// leaves it to the router's project default.
    pub net_out: Option<RateLimit>,
    /// What the vassal may receive.
    pub net_in: Option<RateLimit>,
    /// RLIMIT_FSIZE: the largest file the command may write, in bytes.
    pub file_size: Option<u64>,
    /// IO limits of the cgroup on the vassal's block devices.
    pub io: IoLimits,
}

/// IO throttling of the vassal's cgroup, per block device under its
/// filesystems (see `disk.rs`); `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoLimits {
    /// Bytes read per second.
    pub read_bps: Option<u64>,
    /// Bytes written per second.
    pub write_bps: Option<u64>,
    /// Read operations per second.
    pub read_iops: Option<u64>,
    /// Write operations per second.
    pub write_iops: Option<u64>,
}

impl IoLimits {
    /// Whether any of the four is set.
    pub fn any(&self) -> bool {
        self.read_bps.is_some()
            || self.write_bps.is_some()
            || self.read_iops.is_some()
            || self.write_iops.is_some()
    }
}

/// A validated vassal description.
#[derive(Debug, Clone, PartialEq)]
pub struct VassalConfig {
    /// Project name: hostname by default, cgroup and state file name.
    pub name: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The user the command runs as (inside the user namespace, if any).
    pub uid: u32,
    /// The group the command runs as.
    pub gid: u32,
    /// Root filesystem, bound read-only.
    pub rootfs: PathBuf,
    /// UTS hostname.
    pub hostname: String,
    /// Working directory of the command.
    pub workdir: PathBuf,
    /// The command's whole environment.
    pub env: BTreeMap<String, String>,
    /// Network; `None` = loopback only.
    pub network: Option<Network>,
    /// Extra binds.
    pub mounts: Vec<Mount>,
    /// Host paths hidden under an empty read-only tmpfs.
    pub mask: Vec<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// uid map of the user namespace; `None` = no user namespace.
    pub uid_map: Option<Vec<IdRange>>,
    /// gid map of the user namespace.
    pub gid_map: Option<Vec<IdRange>>,
    /// Seccomp profile, as the file names it.
    pub seccomp: SeccompProfile,
    /// The profile's compiled filter (`None` for "none"), read and compiled
    /// here, from the host's view of the profile path, so that `check`,
    /// `run` and `enter` share one result.
    pub filter: Option<Filter>,
}

/// `--address`: a fixed address, or `auto` (leased from the router).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressChoice {
    /// Leased from the router at launch.
    Auto,
    /// This address.
    Fixed(Ipv4Addr),
}

impl std::str::FromStr for AddressChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<AddressChoice, String> {
        if s == "auto" {
            return Ok(AddressChoice::Auto);
        }
        s.parse()
            .map(AddressChoice::Fixed)
            .map_err(|_| format!("{s:?} is neither an IPv4 address nor \"auto\""))
    }
}

/// Values given on the command line; each overrides the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--address` (an address or `auto`).
    pub address: Option<AddressChoice>,
    /// `--uid`.
    pub uid: Option<u32>,
    /// `--gid`.
    pub gid: Option<u32>,
    /// `--rootfs`.
    pub rootfs: Option<PathBuf>,
    /// `--router`.
    pub router: Option<PathBuf>,
    /// The command after `--`.
    pub command: Vec<String>,
}

impl VassalConfig {
    /// Reads and validates a vassal file, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<VassalConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Builds a configuration from the command line alone.
    pub fn from_overrides(overrides: &Overrides) -> Result<VassalConfig, ConfigError> {
        Self::parse("", "<command line>", overrides)
    }

    /// Validates vassal-file `text` (named `origin` in errors) with
    /// `overrides` applied on top.
    pub fn parse(
        text: &str,
        origin: &str,
        overrides: &Overrides,
    ) -> Result<VassalConfig, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            origin: origin.to_string(),
            problems,
        };
        let raw: raw::RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |s| validate::line_col(text, s.start));
            invalid(vec![ConfigProblem {
                line,
                column,
                field: "syntax".into(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut p = validate::Problems::new(text);
        let config = validate::validate(raw, overrides, &mut p);
        if p.list.is_empty() {
            config.ok_or_else(|| invalid(vec![]))
        } else {
            Err(invalid(p.list))
        }
    }
}
