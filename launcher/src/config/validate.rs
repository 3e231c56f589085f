//! Validation: the raw file and the command line's overrides to a
//! [`VassalConfig`], each problem recorded with its position and field.

use super::raw::{RawFile, RawLimits, RawMount, RawNetwork, SizeOrInt};
use super::units::{map_to_host, parse_duration, parse_id_map, parse_size, IdRange};
use super::{
    default_burst, parse_rate, AddressChoice, ConfigProblem, IoLimits, Limits, Mount, Network,
    Overrides, RateLimit, SeccompProfile, VassalConfig, DEFAULT_MEMORY, DEFAULT_PIDS,
    DEFAULT_ROUTER_SOCKET,
};
use crate::seccomp::Filter;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use toml::Spanned;
use vassal_attach::{MAX_BURST, MAX_RATE, MIN_BURST, MIN_RATE};

/// Collects problems with positions computed from byte spans.
pub(super) struct Problems<'a> {
    text: &'a str,
    pub(super) list: Vec<ConfigProblem>,
}

impl<'a> Problems<'a> {
    /// No problem yet in vassal-file `text`.
    pub(super) fn new(text: &'a str) -> Problems<'a> {
        Problems {
            text,
            list: Vec::new(),
        }
    }

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
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
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

pub(super) fn validate(raw: RawFile, o: &Overrides, p: &mut Problems<'_>) -> Option<VassalConfig> {
    let name = name(&raw, o, p);
    let command = command(&raw, o, p);
    let Identity {
        uid,
        gid,
        uid_map,
        gid_map,
    } = identity(&raw, o, p);
    let rootfs = rootfs(&raw, o, p);
    let hostname = hostname(&raw, &name, p);
    let workdir = workdir(&raw, p);
    let env = env(&raw, p);
    let network = network(raw.network.as_ref(), o, p);
    let mounts = mounts(&raw, p);
    let mask = mask(&raw, &rootfs, p);
    let limits = limits(&raw.limits, p);
    if network.is_none() {
        for (field, v) in [
            ("limits.net_out", &raw.limits.net_out),
            ("limits.net_in", &raw.limits.net_in),
        ] {
            if let Some(v) = v {
                p.at(
                    v.span(),
                    field,
                    "the vassal has no [network] (loopback only); a network limit needs one",
                );
            }
        }
    }
    let (seccomp, filter) = seccomp(&raw, p);
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

/// The project name: `--name`, else the file's.
fn name(raw: &RawFile, o: &Overrides, p: &mut Problems<'_>) -> String {
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
    name
}

/// The command: after `--`, else the file's.
fn command(raw: &RawFile, o: &Overrides, p: &mut Problems<'_>) -> Vec<String> {
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
    command
}

/// Who the command runs as, and the user namespace's maps.
struct Identity {
    uid: u32,
    gid: u32,
    uid_map: Option<Vec<IdRange>>,
    gid_map: Option<Vec<IdRange>>,
}

/// uid and gid (never the host's root outside a user namespace) and the
/// maps that must cover them.
fn identity(raw: &RawFile, o: &Overrides, p: &mut Problems<'_>) -> Identity {
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
    Identity {
        uid,
        gid,
        uid_map,
        gid_map,
    }
}

/// The root filesystem: absolute, `/` by default.
fn rootfs(raw: &RawFile, o: &Overrides, p: &mut Problems<'_>) -> PathBuf {
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
    rootfs
}

/// The hostname: the project name by default.
fn hostname(raw: &RawFile, name: &str, p: &mut Problems<'_>) -> String {
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
        None => name.to_owned(),
    };
    hostname
}

/// The working directory: absolute, `/` by default.
fn workdir(raw: &RawFile, p: &mut Problems<'_>) -> PathBuf {
    let workdir = raw.workdir.as_ref().map_or_else(
        || PathBuf::from("/"),
        |w| {
            if !w.get_ref().is_absolute() {
                p.at(w.span(), "workdir", "must be an absolute path");
            }
            w.get_ref().clone()
        },
    );
    workdir
}

/// The environment: names without `=` or NUL, values without NUL.
fn env(raw: &RawFile, p: &mut Problems<'_>) -> BTreeMap<String, String> {
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
    env
}

/// Bind mounts: absolute paths without `..`.
fn mounts(raw: &RawFile, p: &mut Problems<'_>) -> Vec<Mount> {
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
        let quota = mount_quota(m, i, p);
        mounts.push(Mount {
            source: m.source.get_ref().clone(),
            target: m.target.get_ref().clone(),
            writable: m.writable,
            quota,
        });
    }
    mounts
}

/// Paths hidden in the root filesystem.
fn mask(raw: &RawFile, rootfs: &Path, p: &mut Problems<'_>) -> Vec<PathBuf> {
    let mask = match &raw.mask {
        Some(list) => {
            for (i, m) in list.iter().enumerate() {
                if let Err(why) = mask_problem(rootfs, m.get_ref()) {
                    p.at(m.span(), &format!("mask[{i}]"), why);
                }
            }
            list.iter().map(|m| m.get_ref().clone()).collect()
        }
        // The default hides the host's /root, when the root filesystem has one.
        None => ["/root"]
            .iter()
            .map(PathBuf::from)
            .filter(|m| mask_problem(rootfs, m).is_ok())
            .collect(),
    };
    mask
}

/// The seccomp profile and its filter, compiled now so a bad profile is a
/// problem of the file.
fn seccomp(raw: &RawFile, p: &mut Problems<'_>) -> (SeccompProfile, Option<Filter>) {
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
    (seccomp, filter)
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

/// One direction's network limit: a rate (bits per second, powers of 1000)
/// and an optional burst (bytes, powers of 1024).
fn net_limit(
    p: &mut Problems<'_>,
    field: &str,
    rate: &Option<Spanned<SizeOrInt>>,
    burst: &Option<Spanned<SizeOrInt>>,
) -> Option<RateLimit> {
    let burst_field = format!("{field}_burst");
    let burst = burst.as_ref().and_then(|b| {
        let parsed = match b.get_ref() {
            SizeOrInt::Int(n) => Ok(*n),
            SizeOrInt::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(n) if (MIN_BURST..=MAX_BURST).contains(&n) => Some((n, b.span())),
            Ok(n) => {
                p.at(
                    b.span(),
                    &burst_field,
                    format!(
                        "{n} bytes is out of range; expected {MIN_BURST} to {MAX_BURST} (\"1G\")"
                    ),
                );
                None
            }
            Err(e) => {
                p.at(b.span(), &burst_field, e);
                None
            }
        }
    });
    let Some(rate) = rate else {
        if let Some((_, span)) = burst {
            p.at(
                span,
                &burst_field,
                format!("a burst without {field}; set the rate too"),
            );
        }
        return None;
    };
    let parsed = match rate.get_ref() {
        SizeOrInt::Int(n) => Ok(*n),
        SizeOrInt::Text(t) => parse_rate(t),
    };
    let rate_bps = match parsed {
        Ok(n) if (MIN_RATE..=MAX_RATE).contains(&n) => n,
        Ok(n) => {
            p.at(
                rate.span(),
                field,
                format!("{n} bit/s is out of range; expected {MIN_RATE} (\"8K\") to {MAX_RATE} (\"1T\")"),
            );
            return None;
        }
        Err(e) => {
            p.at(rate.span(), field, e);
            return None;
        }
    };
    Some(RateLimit {
        rate: rate_bps,
        burst: burst.map_or_else(|| default_burst(rate_bps), |(b, _)| b),
    })
}

/// A size field: bytes or a number with a unit, larger than zero.
fn size(p: &mut Problems<'_>, field: &str, v: &Option<Spanned<SizeOrInt>>) -> Option<u64> {
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
}

fn limits(raw: &RawLimits, p: &mut Problems<'_>) -> Limits {
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
    let net_out = net_limit(p, "limits.net_out", &raw.net_out, &raw.net_out_burst);
    let net_in = net_limit(p, "limits.net_in", &raw.net_in, &raw.net_in_burst);
    let (file_size, io) = disk_limits(raw, p);
    Limits {
        net_out,
        net_in,
        memory: memory.or(Some(DEFAULT_MEMORY)),
        cpu,
        pids: pids.or(Some(DEFAULT_PIDS)),
        nofile,
        tmp_size,
        wall_clock,
        file_size,
        io,
    }
}

// Disk: file_size, the io limits and mount quotas (issue 13, part 2).

/// Below this a quota holds no more than a few inodes' blocks: a typo.
const MIN_QUOTA: u64 = 1 << 20;

/// Below this, IO throttling leaves a program unable to load itself.
const MIN_IO_BPS: u64 = 64 << 10;

/// `[limits] file_size` and the `io_*` keys.
fn disk_limits(raw: &RawLimits, p: &mut Problems<'_>) -> (Option<u64>, IoLimits) {
    let file_size = size(p, "limits.file_size", &raw.file_size);
    let mut bps = |field: &str, v: &Option<Spanned<SizeOrInt>>| {
        let n = size(p, field, v)?;
        if n < MIN_IO_BPS {
            if let Some(v) = v {
                p.at(
                    v.span(),
                    field,
                    format!("{n} bytes per second is too slow to run anything; expected at least \"64K\""),
                );
            }
            return None;
        }
        Some(n)
    };
    let read_bps = bps("limits.io_read", &raw.io_read);
    let write_bps = bps("limits.io_write", &raw.io_write);
    let mut iops = |field: &str, v: &Option<Spanned<u64>>| {
        let v = v.as_ref()?;
        if *v.get_ref() < 10 {
            p.at(
                v.span(),
                field,
                format!(
                    "{} operations per second is too few to run anything; expected at least 10",
                    v.get_ref()
                ),
            );
            return None;
        }
        Some(*v.get_ref())
    };
    let read_iops = iops("limits.io_read_iops", &raw.io_read_iops);
    let write_iops = iops("limits.io_write_iops", &raw.io_write_iops);
    (
        file_size,
        IoLimits {
            read_bps,
            write_bps,
            read_iops,
            write_iops,
        },
    )
}

/// `[[mount]] quota`: a size of at least [`MIN_QUOTA`], on a writable mount.
fn mount_quota(m: &RawMount, i: usize, p: &mut Problems<'_>) -> Option<u64> {
    let field = format!("mount[{i}].quota");
    let quota = size(p, &field, &m.quota)?;
    let span = m.quota.as_ref().map_or(0..0, |q| q.span());
    if !m.writable {
        p.at(
            span,
            &field,
            "a quota limits what the vassal writes: only a writable mount can have one",
        );
        return None;
    }
    if quota < MIN_QUOTA {
        p.at(
            span,
            &field,
            format!("{quota} bytes is below the smallest quota; expected at least \"1M\""),
        );
        return None;
    }
    Some(quota)
}
