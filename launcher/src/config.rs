//! The vassal file (TOML): what one vassal runs, as whom, on which network,
//! with which limits. Unknown keys are refused; every problem is reported
//! with `file:line:column: field: ...`, all of them at once where the TOML
//! itself parses.

use crate::seccomp::Filter;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Default control socket of vassal-router.
pub const DEFAULT_ROUTER_SOCKET: &str = "/run/vassal/router.sock";

/// Memory limit when the file sets none: a vassal without a limit could
/// push the whole host into OOM.
pub const DEFAULT_MEMORY: u64 = 1 << 30;

/// Process limit when the file sets none: enough for any web app, too few
/// for a fork bomb to starve the host.
pub const DEFAULT_PIDS: u64 = 1024;

/// At most this many ranges in a uid or gid map (the kernel's limit before
/// 4.15, and plenty for a vassal).
pub const MAX_ID_MAP_RANGES: usize = 5;

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

/// A contiguous id range of a user namespace map: ids `inside..inside+count`
/// in the vassal are `outside..outside+count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the vassal.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
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

// The file as written: every value spanned so validation can point at it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    uid: Option<Spanned<u32>>,
    gid: Option<Spanned<u32>>,
    rootfs: Option<Spanned<PathBuf>>,
    hostname: Option<Spanned<String>>,
    workdir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    network: Option<RawNetwork>,
    #[serde(default)]
    mount: Vec<RawMount>,
    mask: Option<Vec<Spanned<PathBuf>>>,
    #[serde(default)]
    limits: RawLimits,
    user_namespace: Option<RawUserNs>,
    seccomp: Option<RawSeccomp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    router: Option<Spanned<PathBuf>>,
    address: Option<Spanned<String>>,
    address6: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: Spanned<PathBuf>,
    target: Spanned<PathBuf>,
    #[serde(default)]
    writable: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<SizeOrInt>>,
    cpu: Option<Spanned<f64>>,
    pids: Option<Spanned<u64>>,
    nofile: Option<Spanned<u64>>,
    tmp_size: Option<Spanned<SizeOrInt>>,
    wall_clock: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeOrInt {
    Int(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserNs {
    uid_map: Spanned<String>,
    gid_map: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeccomp {
    profile: Spanned<String>,
}

/// Collects problems with positions computed from byte spans.
struct Problems<'a> {
    text: &'a str,
    list: Vec<ConfigProblem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.list.push(ConfigProblem {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    fn missing(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Why `path` cannot be masked in the root filesystem `rootfs`: it must be
/// absolute, without `..`, outside the vassal's own scratch filesystems,
/// exist (under /proc: in ours), and be reached without a symlink (the
/// launcher does not follow them where it mounts; see rootfs.rs).
fn mask_problem(rootfs: &Path, path: &Path) -> Result<(), String> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{} must be an absolute path without '..'",
            path.display()
        ));
    }
    if let Some(own) = ["/tmp", "/run", "/dev"]
        .iter()
        .find(|own| path.starts_with(own))
    {
        return Err(format!(
            "{} is in the vassal's own {own}, which holds nothing of the host to hide",
            path.display()
        ));
    }
    // /proc is the vassal's own too, but of the same kernel: look at ours.
    let base = if path.starts_with("/proc") {
        Path::new("/")
    } else {
        rootfs
    };
    let mut at = base.to_path_buf();
    for part in path.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        at.push(name);
        match at.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} passes through the symlink {}; name the real path",
                    path.display(),
                    at.display()
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if base == rootfs {
                    format!(
                        "{} does not exist in the root filesystem {}",
                        path.display(),
                        rootfs.display()
                    )
                } else {
                    format!("{} does not exist in this kernel's /proc", path.display())
                })
            }
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Parses a size: an integer of bytes or a number with a K, M, G or T
/// suffix (powers of 1024), like `256M`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "{text:?} is not a size; expected bytes or a number with K, M, G or T, like \"256M\""
        )
    })?;
    let mult: u64 = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; expected K, M, G or T"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with ms, s, m, h or d, like `1h` or `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration; expected a number with ms, s, m, h or d, like \"1h\"")
    })?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{text:?} has no unit; expected ms, s, m, h or d")),
    };
    let ms = ms.ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_millis(ms))
}

/// Parses `guest:host:count[,guest:host:count...]`, at most
/// [`MAX_ID_MAP_RANGES`] ranges that do not overlap on either side.
pub fn parse_id_map(text: &str) -> Result<Vec<IdRange>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let fields: Vec<&str> = part.trim().split(':').collect();
        let [inside, outside, count] = fields.as_slice() else {
            return Err(format!("{part:?} is not guest:host:count"));
        };
        let num = |s: &str, what: &str| {
            s.trim().parse::<u32>().map_err(|_| {
                format!("{what} {s:?} in {part:?} is not a number from 0 to 4294967295")
            })
        };
        let r = IdRange {
            inside: num(inside, "guest id")?,
            outside: num(outside, "host id")?,
            count: num(count, "count")?,
        };
        if r.count == 0 {
            return Err(format!("{part:?} maps zero ids"));
        }
        if r.inside.checked_add(r.count).is_none() || r.outside.checked_add(r.count).is_none() {
            return Err(format!("{part:?} runs past the largest id"));
        }
        ranges.push(r);
    }
    if ranges.len() > MAX_ID_MAP_RANGES {
        return Err(format!(
            "{} ranges; at most {MAX_ID_MAP_RANGES} are allowed",
            ranges.len()
        ));
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let overlap =
                |x: u32, y: u32, n: u32, m: u32| x < y.saturating_add(m) && y < x.saturating_add(n);
            if overlap(a.inside, b.inside, a.count, b.count)
                || overlap(a.outside, b.outside, a.count, b.count)
            {
                return Err("ranges overlap".into());
            }
        }
    }
    Ok(ranges)
}

/// Maps an id inside the namespace to the host, when the map covers it.
pub fn map_to_host(map: &[IdRange], id: u32) -> Option<u32> {
    map.iter()
        .find(|r| id >= r.inside && id - r.inside < r.count)
        .map(|r| r.outside + (id - r.inside))
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
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            invalid(vec![ConfigProblem {
                line,
                column,
                field: "syntax".into(),
                message: e.message().trim().to_string(),
            }])
        })?;
        let mut p = Problems {
            text,
            list: Vec::new(),
        };
        let config = validate(raw, overrides, &mut p);
        if p.list.is_empty() {
            config.ok_or_else(|| invalid(vec![]))
        } else {
            Err(invalid(p.list))
        }
    }
}

fn validate(raw: RawFile, o: &Overrides, p: &mut Problems<'_>) -> Option<VassalConfig> {
    let name = match (&o.name, &raw.name) {
        (Some(n), _) => {
            if let Err(why) = vassal_attach::validate_project_name(n) {
                p.missing("--name", format!("{n:?} {why}"));
            }
            n.clone()
        }
        (None, Some(n)) => {
            if let Err(why) = vassal_attach::validate_project_name(n.get_ref()) {
                p.at(n.span(), "name", format!("{:?} {why}", n.get_ref()));
            }
            n.get_ref().clone()
        }
        (None, None) => {
            p.missing(
                "name",
                "required: the project name (lowercase letters, digits, - and _)",
            );
            String::new()
        }
    };

    let command = if !o.command.is_empty() {
        o.command.clone()
    } else if let Some(c) = &raw.command {
        if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
            p.at(c.span(), "command", "must name a program to run");
        }
        c.get_ref().clone()
    } else {
        p.missing(
            "command",
            "required: in the file, or after `--` on the command line",
        );
        Vec::new()
    };

    let mut map = |field: &str, value: &Option<Spanned<String>>| -> Option<Vec<IdRange>> {
        let v = value.as_ref()?;
        match parse_id_map(v.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                p.at(v.span(), field, e);
                None
            }
        }
    };
    let (uid_map, gid_map) = match &raw.user_namespace {
        Some(u) => (
            map("user_namespace.uid_map", &Some(u.uid_map.clone())),
            map("user_namespace.gid_map", &Some(u.gid_map.clone())),
        ),
        None => (None, None),
    };
    let userns = raw.user_namespace.is_some();

    let uid = o.uid.or(raw.uid.as_ref().map(|u| *u.get_ref()));
    let gid = o.gid.or(raw.gid.as_ref().map(|g| *g.get_ref()));
    let uid = match uid {
        Some(u) => u,
        None if userns => 0,
        None => {
            p.missing("uid", "required unless a [user_namespace] maps root (the command never runs as host root)");
            0
        }
    };
    let gid = gid.unwrap_or(if userns { 0 } else { uid });
    if !userns && (uid == 0 || gid == 0) {
        let span = raw.uid.as_ref().map(|u| u.span());
        match span {
            Some(s) if o.uid.is_none() => p.at(
                s,
                "uid",
                "0 is the host's root; use a project uid, or a [user_namespace]",
            ),
            _ => p.missing(
                "uid/gid",
                "0 is the host's root; use a project uid, or a [user_namespace]",
            ),
        }
    }
    if let (Some(um), Some(gm)) = (&uid_map, &gid_map) {
        if map_to_host(um, uid).is_none() {
            p.missing(
                "uid",
                format!("{uid} is not covered by user_namespace.uid_map"),
            );
        }
        if map_to_host(gm, gid).is_none() {
            p.missing(
                "gid",
                format!("{gid} is not covered by user_namespace.gid_map"),
            );
        }
    }

    let rootfs = o
        .rootfs
        .clone()
        .or(raw.rootfs.as_ref().map(|r| r.get_ref().clone()))
        .unwrap_or_else(|| PathBuf::from("/"));
    if !rootfs.is_absolute() {
        match &raw.rootfs {
            Some(r) if o.rootfs.is_none() => p.at(r.span(), "rootfs", "must be an absolute path"),
            _ => p.missing("rootfs", "must be an absolute path"),
        }
    }

    let hostname = match &raw.hostname {
        Some(h) => {
            let ok = !h.get_ref().is_empty()
                && h.get_ref().len() <= 64
                && h.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                p.at(
                    h.span(),
                    "hostname",
                    "expected 1 to 64 letters, digits, '-' or '.'",
                );
            }
            h.get_ref().clone()
        }
        None => name.clone(),
    };

    let workdir = raw.workdir.as_ref().map_or_else(
        || PathBuf::from("/"),
        |w| {
            if !w.get_ref().is_absolute() {
                p.at(w.span(), "workdir", "must be an absolute path");
            }
            w.get_ref().clone()
        },
    );

    let mut env = BTreeMap::new();
    for (k, v) in &raw.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.get_ref().contains('\0') {
            p.at(
                v.span(),
                &format!("env.{k}"),
                "names may not be empty or hold '=' or NUL; values may not hold NUL",
            );
        }
        env.insert(k.clone(), v.get_ref().clone());
    }

    let network = network(raw.network.as_ref(), o, p);

    let mut mounts = Vec::new();
    for (i, m) in raw.mount.iter().enumerate() {
        for (what, path) in [("source", &m.source), ("target", &m.target)] {
            let ok = path.get_ref().is_absolute()
                && !path
                    .get_ref()
                    .components()
                    .any(|c| c == std::path::Component::ParentDir);
            if !ok {
                p.at(
                    path.span(),
                    &format!("mount[{i}].{what}"),
                    "must be an absolute path without '..'",
                );
            }
        }
        mounts.push(Mount {
            source: m.source.get_ref().clone(),
            target: m.target.get_ref().clone(),
            writable: m.writable,
        });
    }

    let mask = match &raw.mask {
        Some(list) => {
            for (i, m) in list.iter().enumerate() {
                if let Err(why) = mask_problem(&rootfs, m.get_ref()) {
                    p.at(m.span(), &format!("mask[{i}]"), why);
                }
            }
            list.iter().map(|m| m.get_ref().clone()).collect()
        }
        // The default hides the host's /root, when the root filesystem has one.
        None => ["/root"]
            .iter()
            .map(PathBuf::from)
            .filter(|m| mask_problem(&rootfs, m).is_ok())
            .collect(),
    };

    let limits = limits(&raw.limits, p);

    let seccomp = match &raw.seccomp {
        None => SeccompProfile::Default,
        Some(s) => match s.profile.get_ref().as_str() {
            "default" => SeccompProfile::Default,
            "none" => SeccompProfile::None,
            f if f.starts_with('/') => SeccompProfile::File(PathBuf::from(f)),
            other => {
                p.at(
                    s.profile.span(),
                    "seccomp.profile",
                    format!("{other:?}: expected \"default\", \"none\" or an absolute path to a JSON file"),
                );
                SeccompProfile::Default
            }
        },
    };
    let profile_span = raw.seccomp.as_ref().map_or(0..0, |s| s.profile.span());
    let compiled = match &seccomp {
        SeccompProfile::None => Ok(None),
        SeccompProfile::Default => Filter::compile(&[]).map(Some),
        SeccompProfile::File(f) => Filter::from_profile(f).map(Some),
    };
    let filter = compiled.unwrap_or_else(|e| {
        p.at(profile_span, "seccomp.profile", e.to_string());
        None
    });

    Some(VassalConfig {
        name,
        command,
        uid,
        gid,
        rootfs,
        hostname,
        workdir,
        env,
        network,
        mounts,
        mask,
        limits,
        uid_map,
        gid_map,
        seccomp,
        filter,
    })
}

fn network(raw: Option<&RawNetwork>, o: &Overrides, p: &mut Problems<'_>) -> Option<Network> {
    if raw.is_none() && o.address.is_none() {
        return None;
    }
    let address = match (o.address, raw.and_then(|n| n.address.as_ref())) {
        (Some(a), _) => a,
        (None, Some(a)) => a.get_ref().parse().unwrap_or_else(|_| {
            p.at(
                a.span(),
                "network.address",
                format!("{:?} is neither an IPv4 address nor \"auto\"", a.get_ref()),
            );
            AddressChoice::Fixed(Ipv4Addr::UNSPECIFIED)
        }),
        (None, None) => {
            p.missing(
                "network.address",
                "required when [network] is present (or pass --address)",
            );
            AddressChoice::Fixed(Ipv4Addr::UNSPECIFIED)
        }
    };
    let auto = address == AddressChoice::Auto;
    let address = match address {
        AddressChoice::Auto => Ipv4Addr::UNSPECIFIED,
        AddressChoice::Fixed(a) => a,
    };
    let raw6 = raw.and_then(|n| n.address6.as_ref());
    let auto6 = raw6.is_some_and(|a| a.get_ref() == "auto");
    if let Some(a) = raw6 {
        if auto6 && !auto {
            p.at(
                a.span(),
                "network.address6",
                "\"auto\" only with an automatic IPv4 address (network.address = \"auto\")"
                    .to_owned(),
            );
        } else if auto && !auto6 {
            p.at(
                a.span(),
                "network.address6",
                "with an automatic IPv4 address the IPv6 one is automatic too: write \"auto\" or leave it out".to_owned(),
            );
        }
    }
    let address6 = raw6
        .filter(|_| !auto6)
        .and_then(|a| match a.get_ref().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                p.at(
                    a.span(),
                    "network.address6",
                    format!("{:?} is not an IPv6 address", a.get_ref()),
                );
                None
            }
        });
    let gateway = raw
        .and_then(|n| n.gateway.as_ref())
        .and_then(|a| match a.get_ref().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                p.at(
                    a.span(),
                    "network.gateway",
                    format!("{:?} is not an IPv4 address", a.get_ref()),
                );
                None
            }
        });
    let mtu = match raw.and_then(|n| n.mtu.as_ref()) {
        Some(m) if !(576..=65535).contains(m.get_ref()) => {
            p.at(
                m.span(),
                "network.mtu",
                format!("{} is out of range; expected 576 to 65535", m.get_ref()),
            );
            1500
        }
        Some(m) => *m.get_ref() as u16,
        None => 1500,
    };
    let router = o
        .router
        .clone()
        .or(raw
            .and_then(|n| n.router.as_ref())
            .map(|r| r.get_ref().clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROUTER_SOCKET));
    Some(Network {
        router,
        address,
        address6: if auto { None } else { address6 },
        auto,
        auto6,
        gateway,
        mtu,
    })
}

fn limits(raw: &RawLimits, p: &mut Problems<'_>) -> Limits {
    let size = |p: &mut Problems<'_>, field: &str, v: &Option<Spanned<SizeOrInt>>| -> Option<u64> {
        let v = v.as_ref()?;
        let parsed = match v.get_ref() {
            SizeOrInt::Int(n) => Ok(*n),
            SizeOrInt::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(0) => {
                p.at(v.span(), field, "must be larger than zero");
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                p.at(v.span(), field, e);
                None
            }
        }
    };
    let memory = size(p, "limits.memory", &raw.memory);
    if memory.is_some_and(|m| m < 4 << 20) {
        if let Some(v) = &raw.memory {
            p.at(
                v.span(),
                "limits.memory",
                "below 4M no program starts; expected at least \"4M\"",
            );
        }
    }
    let tmp_size = size(p, "limits.tmp_size", &raw.tmp_size).unwrap_or(64 << 20);
    let cpu = raw.cpu.as_ref().and_then(|c| {
        let v = *c.get_ref();
        if !(0.01..=1024.0).contains(&v) || !v.is_finite() {
            p.at(
                c.span(),
                "limits.cpu",
                format!("{v} cores is out of range; expected 0.01 to 1024"),
            );
            None
        } else {
            Some(v)
        }
    });
    let pids = raw.pids.as_ref().and_then(|v| {
        if *v.get_ref() == 0 {
            p.at(v.span(), "limits.pids", "must be at least 1");
            None
        } else {
            Some(*v.get_ref())
        }
    });
    let nofile = match &raw.nofile {
        Some(v) if *v.get_ref() < 16 || *v.get_ref() > 1 << 20 => {
            p.at(
                v.span(),
                "limits.nofile",
                format!("{} is out of range; expected 16 to 1048576", v.get_ref()),
            );
            1024
        }
        Some(v) => *v.get_ref(),
        None => 1024,
    };
    let wall_clock = raw
        .wall_clock
        .as_ref()
        .and_then(|w| match parse_duration(w.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                p.at(w.span(), "limits.wall_clock", e);
                None
            }
        });
    Limits {
        memory: memory.or(Some(DEFAULT_MEMORY)),
        cpu,
        pids: pids.or(Some(DEFAULT_PIDS)),
        nofile,
        tmp_size,
        wall_clock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VassalConfig, ConfigError> {
        VassalConfig::parse(text, "v.toml", &Overrides::default())
    }

    fn errors(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const FULL: &str = r#"
name = "alice"
command = ["/usr/bin/python3", "-m", "http.server", "8000"]
uid = 10001
gid = 10001
rootfs = "/"
hostname = "alice"
workdir = "/"
env = { LANG = "C.UTF-8" }
[network]
router = "/run/vassal/router.sock"
address = "10.200.0.2"
address6 = "fd00:200::2"
gateway = "10.200.0.1"
mtu = 1500
[[mount]]
source = "/cust/alice"
target = "/app"
writable = false
[limits]
memory = "256M"
cpu = 0.5
pids = 128
nofile = 1024
tmp_size = "64M"
wall_clock = "1h"
[seccomp]
profile = "default"
"#;

    #[test]
    fn the_issue_example_parses_with_its_values() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.name, "alice");
        assert_eq!(c.uid, 10001);
        assert_eq!(c.limits.memory, Some(256 << 20));
        assert_eq!(c.limits.cpu, Some(0.5));
        assert_eq!(c.limits.wall_clock, Some(Duration::from_secs(3600)));
        let n = c.network.unwrap();
        assert_eq!(n.address, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(n.address6, Some("fd00:200::2".parse().unwrap()));
        assert_eq!(c.mounts[0].target, PathBuf::from("/app"));
        assert_eq!(c.env["LANG"], "C.UTF-8");
        assert_eq!(c.seccomp, SeccompProfile::Default);
    }

    #[test]
    fn defaults_fill_what_is_absent() {
        let c = parse("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n").unwrap();
        assert_eq!(c.gid, 5000);
        assert_eq!(c.hostname, "bob");
        assert_eq!(c.rootfs, PathBuf::from("/"));
        assert_eq!(c.network, None);
        assert_eq!(c.limits.nofile, 1024);
        assert_eq!(c.limits.tmp_size, 64 << 20);
        assert_eq!(c.limits.memory, Some(DEFAULT_MEMORY));
        assert_eq!(c.limits.pids, Some(DEFAULT_PIDS));
        assert_eq!(c.limits.cpu, None);
        assert_eq!(c.limits.wall_clock, None);
        assert_eq!(c.mask, vec![PathBuf::from("/root")]);
        assert!(c.env.is_empty());
    }

    #[test]
    fn automatic_addresses() {
        let base = "name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"auto\"\n";
        let n = parse(base).unwrap().network.unwrap();
        assert!(n.auto && !n.auto6);
        assert_eq!(n.address, Ipv4Addr::UNSPECIFIED);
        let n = parse(&format!("{base}address6 = \"auto\"\n"))
            .unwrap()
            .network
            .unwrap();
        assert!(n.auto && n.auto6 && n.address6.is_none());
        let e = errors(&format!("{base}address6 = \"fd00::2\"\n"));
        assert!(
            e.contains("network.address6") && e.contains("automatic"),
            "{e}"
        );
        let e = errors("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"10.0.0.2\"\naddress6 = \"auto\"\n");
        assert!(e.contains("network.address6"), "{e}");
        let e = errors("name = \"bob\"\ncommand = [\"/bin/true\"]\nuid = 5000\n[network]\naddress = \"automatic\"\n");
        assert!(e.contains("network.address") && e.contains("auto"), "{e}");
        assert_eq!("auto".parse(), Ok(AddressChoice::Auto));
        assert_eq!(
            "10.0.0.2".parse(),
            Ok(AddressChoice::Fixed(Ipv4Addr::new(10, 0, 0, 2)))
        );
        assert!("10.0.0.300".parse::<AddressChoice>().is_err());
        let o = Overrides {
            name: Some("carol".into()),
            address: Some(AddressChoice::Auto),
            uid: Some(7),
            command: vec!["/bin/true".into()],
            ..Overrides::default()
        };
        assert!(
            VassalConfig::from_overrides(&o)
                .unwrap()
                .network
                .unwrap()
                .auto
        );
    }

    #[test]
    fn flags_override_the_file() {
        let o = Overrides {
            name: Some("carol".into()),
            address: Some(AddressChoice::Fixed(Ipv4Addr::new(10, 200, 0, 9))),
            uid: Some(7),
            command: vec!["/bin/echo".into(), "hi".into()],
            ..Default::default()
        };
        let c = VassalConfig::parse(FULL, "v.toml", &o).unwrap();
        assert_eq!(c.name, "carol");
        assert_eq!(c.uid, 7);
        assert_eq!(c.command, ["/bin/echo", "hi"]);
        assert_eq!(c.network.unwrap().address, Ipv4Addr::new(10, 200, 0, 9));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let e =
            errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[limits]\nmemroy = \"1G\"\n");
        assert!(
            e.starts_with("v.toml:5:1: syntax: unknown field `memroy`"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_named_with_line_column_and_field() {
        let e = errors(
            "name = \"Alice\"\ncommand = [\"/bin/true\"]\nuid = 1\n[limits]\nmemory = \"12Q\"\ncpu = 0.0\nwall_clock = \"5\"\n[network]\naddress = \"10.0.0.300\"\n",
        );
        assert!(
            e.contains("v.toml:1:8: name: \"Alice\" must start with a lowercase letter or a digit"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:5:10: limits.memory: \"12Q\" has an unknown unit"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:6:7: limits.cpu: 0 cores is out of range"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:7:14: limits.wall_clock: \"5\" has no unit"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:9:11: network.address: \"10.0.0.300\" is neither an IPv4 address nor \"auto\""),
            "{e}"
        );
        assert_eq!(e.lines().count(), 5, "{e}");
    }

    #[test]
    fn a_seccomp_profile_is_read_and_compiled_with_the_file() {
        let e = errors(
            "name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[seccomp]\nprofile = \"/no/such/profile.json\"\n",
        );
        assert!(
            e.contains(
                "v.toml:5:11: seccomp.profile: reading the seccomp profile /no/such/profile.json"
            ),
            "{e}"
        );
        let c = parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n").unwrap();
        assert!(c.filter.is_some_and(|f| !f.is_empty()));
        let c = parse(
            "name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[seccomp]\nprofile = \"none\"\n",
        )
        .unwrap();
        assert!(c.filter.is_none());
    }

    #[test]
    fn root_without_a_user_namespace_is_refused() {
        let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 0\n");
        assert!(e.contains("v.toml:3:7: uid: 0 is the host's root"), "{e}");
        let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\n");
        assert!(e.contains("v.toml: uid: required"), "{e}");
    }

    #[test]
    fn user_namespace_maps_are_checked() {
        let ok = parse(
            "name = \"a\"\ncommand = [\"/bin/true\"]\n[user_namespace]\nuid_map = \"0:100000:65536\"\ngid_map = \"0:100000:65536\"\n",
        )
        .unwrap();
        assert_eq!(ok.uid, 0);
        assert_eq!(
            ok.uid_map.as_deref(),
            Some(
                &[IdRange {
                    inside: 0,
                    outside: 100000,
                    count: 65536
                }][..]
            )
        );
        let e = errors(
            "name = \"a\"\ncommand = [\"/bin/true\"]\n[user_namespace]\nuid_map = \"0:100000\"\ngid_map = \"0:1:1,0:5:1\"\n",
        );
        assert!(
            e.contains("v.toml:4:11: user_namespace.uid_map: \"0:100000\" is not guest:host:count"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:5:11: user_namespace.gid_map: ranges overlap"),
            "{e}"
        );
        assert!(parse_id_map("0:1:1,1:2:1,2:3:1,3:4:1,4:5:1,5:6:1")
            .unwrap_err()
            .contains("at most 5"));
        assert!(parse_id_map("0:4294967295:2").is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2Gi"), Ok(2 << 30));
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn masks_must_exist_in_the_root_filesystem_without_symlinks() {
        let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\nmask = [\"/etc/passwd\", \"/no/such/path\",\n  \"rel\", \"/proc/self\", \"/tmp/x\", \"/proc/sys\"]\n");
        assert!(
            e.contains(
                "v.toml:4:24: mask[1]: /no/such/path does not exist in the root filesystem /"
            ),
            "{e}"
        );
        assert!(
            e.contains("v.toml:5:3: mask[2]: rel must be an absolute path"),
            "{e}"
        );
        assert!(
            e.contains("v.toml:5:10: mask[3]: /proc/self passes through the symlink /proc/self"),
            "{e}"
        );
        assert!(
            e.contains("mask[4]: /tmp/x is in the vassal's own /tmp"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 4, "{e}");
        let c = parse("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\nrootfs = \"/proc\"\n")
            .unwrap();
        assert!(
            c.mask.is_empty(),
            "no /root in this root filesystem: {:?}",
            c.mask
        );
    }

    #[test]
    fn mounts_must_be_absolute_without_dotdot() {
        let e = errors("name = \"a\"\ncommand = [\"/bin/true\"]\nuid = 1\n[[mount]]\nsource = \"rel\"\ntarget = \"/x/../etc\"\n");
        assert!(e.contains("v.toml:5:10: mount[0].source"), "{e}");
        assert!(e.contains("v.toml:6:10: mount[0].target"), "{e}");
    }
}
