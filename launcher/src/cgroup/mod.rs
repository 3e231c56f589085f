//! The vassal's cgroup: memory, cpu and pids limits, through cgroup v2
//! where its controllers are available and cgroup v1 otherwise, and the
//! usage read back for the report.
//!
//! Hierarchies are found from a mountinfo file given as a parameter, so
//! unit tests build fake hierarchies in a temporary directory.

mod v1;
mod v2;

use crate::config::{IoLimits, Limits};
use std::path::{Path, PathBuf};

/// Directory under each hierarchy holding every vassal's cgroup.
pub const PARENT: &str = "vassal";

/// A cgroup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Reading the mount table failed.
    #[error("reading {path}: {source}")]
    Mountinfo {
        /// The mountinfo file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither a usable cgroup v2 nor the v1 controllers are mounted.
    #[error("no usable cgroup hierarchy: need cgroup2 with memory, cpu and pids, or cgroup v1 memory, cpu and pids mounts")]
    NoHierarchy,
    /// A vassal of this name still has processes.
    #[error("cgroup {path} has live processes: is a vassal of this name already running?")]
    Busy {
        /// The cgroup directory.
        path: PathBuf,
    },
    /// IO limits are set and the host has no io (v2) or blkio (v1) controller.
    #[error("the io limits need the io controller (cgroup v2) or a blkio mount (cgroup v1), and this host has neither")]
    NoIoController,
    /// Writing or creating a cgroup file failed.
    #[error("{step}: {path}: {source}")]
    Io {
        /// What it was for.
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A block device's number, as the io controllers name it (`MAJ:MIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNumber {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl std::fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// What the vassal used so far: read every second while it runs (events,
/// the usage reports to the router) and once when it ends (the report).
/// A reading the host does not offer is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every process of the vassal, in milliseconds.
    pub cpu_time_ms: Option<u64>,
    /// The same in microseconds, for the router's accounting.
    pub cpu_usec: Option<u64>,
    /// Memory in use now, in bytes (page cache included, as the limit
    /// counts it).
    pub memory_bytes: Option<u64>,
    /// Highest memory use, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Bytes read from block devices since the cgroup was made.
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices since the cgroup was made.
    pub io_write_bytes: Option<u64>,
    /// Processes (threads included) in the vassal now.
    pub pids: Option<u64>,
    /// Processes the kernel OOM-killed for the memory limit.
    pub oom_kills: u64,
    /// Forks refused for the pids limit.
    pub pids_limit_hits: u64,
}

/// Which hierarchy this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 mounted here, with memory, cpu and pids available.
    V2(PathBuf),
    /// cgroup v1 mounts of each controller.
    V1(v1::Mounts),
}

/// A vassal's cgroup; removed (its processes killed) when dropped.
#[derive(Debug)]
pub enum Cgroup {
    /// Under cgroup v2.
    V2(v2::V2),
    /// Under cgroup v1.
    V1(v1::V1),
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

fn write(step: &'static str, path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(step, path))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file like memory.events.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Sums the `Read` and `Write` bytes of every device in a cgroup v1
/// `blkio.throttle.io_service_bytes` ("MAJ:MIN Read N" lines, then a
/// "Total N" line).
fn blkio_bytes(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_device), Some(op), Some(n)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match op {
            "Read" => read = read.saturating_add(n),
            "Write" => written = written.saturating_add(n),
            _ => {}
        }
    }
    Some((read, written))
}

/// Sums `rbytes` and `wbytes` of every device in a cgroup v2 `io.stat`
/// ("MAJ:MIN rbytes=N wbytes=N rios=N ..." lines).
fn io_stat_bytes(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (mut read, mut written) = (0u64, 0u64);
    for (key, value) in text
        .lines()
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter_map(|kv| kv.split_once('='))
    {
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "rbytes" => read = read.saturating_add(n),
            "wbytes" => written = written.saturating_add(n),
            _ => {}
        }
    }
    Some((read, written))
}

fn has_procs(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
}

/// Kills every process left in `dir` and removes it, waiting up to a few
/// seconds for the processes to go.
fn kill_and_remove(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Every cgroup mount of a mountinfo text: (mount point, fstype, super
/// options).
fn cgroup_mounts(text: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    text.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(options)) = (right.next(), right.next(), right.next()) else {
            return None;
        };
        matches!(fstype, "cgroup" | "cgroup2")
            .then(|| (PathBuf::from(mount_point), fstype, options))
    })
}

fn read_mountinfo(mountinfo: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Mountinfo {
        path: mountinfo.to_owned(),
        source,
    })
}

/// Finds the hierarchy to use from a mountinfo file.
pub fn detect(mountinfo: &Path) -> Result<Hierarchy, CgroupError> {
    let text = read_mountinfo(mountinfo)?;
    let mut v1 = v1::Mounts::default();
    for (mount_point, fstype, options) in cgroup_mounts(&text) {
        match fstype {
            "cgroup2" if v2::usable(&mount_point) => return Ok(Hierarchy::V2(mount_point)),
            "cgroup" => v1.note(&mount_point, options),
            _ => {}
        }
    }
    if v1.complete() {
        Ok(Hierarchy::V1(v1))
    } else {
        Err(CgroupError::NoHierarchy)
    }
}

/// Every vassal cgroup directory (`<mount>/vassal/<name>`) under every
/// cgroup v1 and v2 mount, with the vassal's name: what a reap of dead
/// launchers' leftovers looks through, whichever hierarchy made them.
pub fn all_vassal_dirs(mountinfo: &Path) -> Result<Vec<(String, PathBuf)>, CgroupError> {
    let text = read_mountinfo(mountinfo)?;
    let mut parents: Vec<PathBuf> = cgroup_mounts(&text)
        .map(|(mount_point, _, _)| mount_point.join(PARENT))
        .collect();
    parents.sort();
    parents.dedup();
    let mut found = Vec::new();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                found.push((name.to_owned(), path.clone()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether a cgroup directory holds processes.
pub fn busy(dir: &Path) -> bool {
    has_procs(dir)
}

/// Removes a cgroup directory that holds no processes (rmdir: the kernel
/// refuses one with processes or child cgroups, so a live vassal's
/// cgroup is never removed).
pub fn remove_empty(dir: &Path) -> Result<(), CgroupError> {
    if has_procs(dir) {
        return Err(CgroupError::Busy {
            path: dir.to_owned(),
        });
    }
    std::fs::remove_dir(dir).map_err(io("removing a dead vassal's cgroup", dir))
}

/// The directories of a running vassal's cgroup, for `enter` to join.
pub fn existing_dirs(hierarchy: &Hierarchy, name: &str) -> Vec<PathBuf> {
    match hierarchy {
        Hierarchy::V2(root) => vec![root.join(PARENT).join(name)],
        Hierarchy::V1(m) => [&m.memory, &m.cpu, &m.pids, &m.cpuacct, &m.blkio]
            .into_iter()
            .flatten()
            .map(|d| d.join(PARENT).join(name))
            .filter(|d| d.exists())
            .collect(),
    }
}

impl Cgroup {
    /// Creates `vassal/<name>` with `limits`. Refuses when it exists with
    /// live processes; a stale empty one is replaced.
    pub fn create(
        hierarchy: &Hierarchy,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        match hierarchy {
            Hierarchy::V2(root) => v2::V2::create(root, name, limits).map(Cgroup::V2),
            Hierarchy::V1(mounts) => v1::V1::create(mounts, name, limits).map(Cgroup::V1),
        }
    }

    /// Throttles the cgroup's IO on each of `devices` (whole disks) to
    /// `io`; nothing to do when `io` sets no limit.
    pub fn throttle_io(&self, devices: &[DeviceNumber], io: &IoLimits) -> Result<(), CgroupError> {
        if !io.any() {
            return Ok(());
        }
        match self {
            Cgroup::V2(c) => c.throttle_io(devices, io),
            Cgroup::V1(c) => c.throttle_io(devices, io),
        }
    }

    /// Makes sure the IO on `devices` is counted when no io limit is set
    /// (cgroup v1 only; v2's `io.stat` always counts): see
    /// [`v1::V1::account_io`].
    pub fn account_io(&self, devices: &[DeviceNumber]) -> Result<(), CgroupError> {
        match self {
            Cgroup::V2(_) => Ok(()),
            Cgroup::V1(c) => c.account_io(devices),
        }
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            write(
                "joining the vassal's cgroup",
                &dir.join("cgroup.procs"),
                &pid.to_string(),
            )?;
        }
        Ok(())
    }

    /// Every directory of this cgroup (one for v2, one per controller for v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V2(c) => vec![c.dir.clone()],
            Cgroup::V1(c) => c.dirs(),
        }
    }

    /// Usage so far.
    pub fn usage(&self) -> Usage {
        match self {
            Cgroup::V2(c) => c.usage(),
            Cgroup::V1(c) => c.usage(),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in self.dirs() {
            kill_and_remove(&dir);
        }
    }
}
