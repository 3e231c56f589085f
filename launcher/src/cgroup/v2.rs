//! cgroup v2: one directory, controllers enabled down the path.

use super::{
    has_procs, io, io_stat_bytes, keyed, kill_and_remove, read_u64, write, CgroupError,
    DeviceNumber, Usage, PARENT,
};
use crate::config::{IoLimits, Limits};
use std::path::{Path, PathBuf};

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Whether a cgroup2 mount offers the controllers we limit with.
pub fn usable(root: &Path) -> bool {
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        return false;
    };
    let available: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS.iter().all(|c| available.contains(c))
}

/// A vassal's cgroup v2 directory.
#[derive(Debug)]
pub struct V2 {
    /// `<root>/vassal/<name>`.
    pub dir: PathBuf,
}

impl V2 {
    /// Creates the cgroup and writes the limits.
    pub fn create(root: &Path, name: &str, limits: &Limits) -> Result<V2, CgroupError> {
        let enable = "+memory +cpu +pids";
        let parent = root.join(PARENT);
        write(
            "enabling controllers",
            &root.join("cgroup.subtree_control"),
            enable,
        )?;
        if !parent.exists() {
            std::fs::create_dir(&parent)
                .map_err(io("creating the vassal cgroup parent", &parent))?;
        }
        write(
            "enabling controllers",
            &parent.join("cgroup.subtree_control"),
            enable,
        )?;
        // The io controller too where the host has it, for io.stat: the
        // IO bytes the router bills. Best effort (io.max is only written
        // when limits ask for it, see throttle_io); without it the IO
        // readings are absent, not an error.
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if available.split_whitespace().any(|c| c == "io") {
            for d in [root, parent.as_path()] {
                let _ = std::fs::write(d.join("cgroup.subtree_control"), "+io");
            }
        }
        let dir = parent.join(name);
        if dir.exists() {
            if has_procs(&dir) {
                return Err(CgroupError::Busy { path: dir });
            }
            kill_and_remove(&dir);
        }
        std::fs::create_dir(&dir).map_err(io("creating the vassal's cgroup", &dir))?;
        let cg = V2 { dir };
        if let Err(e) = cg.limit(limits) {
            kill_and_remove(&cg.dir);
            return Err(e);
        }
        Ok(cg)
    }

    fn limit(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(m) = limits.memory {
            write(
                "setting the memory limit",
                &self.dir.join("memory.max"),
                &m.to_string(),
            )?;
            let swap = self.dir.join("memory.swap.max");
            if swap.exists() {
                write("disabling swap", &swap, "0")?;
            }
        }
        if let Some(cores) = limits.cpu {
            let period = 100_000u64;
            let quota = ((cores * period as f64) as u64).max(1000);
            write(
                "setting the cpu limit",
                &self.dir.join("cpu.max"),
                &format!("{quota} {period}"),
            )?;
        }
        if let Some(p) = limits.pids {
            write(
                "setting the pids limit",
                &self.dir.join("pids.max"),
                &p.to_string(),
            )?;
        }
        Ok(())
    }

    /// Enables the io controller down to the vassal's cgroup (only when
    /// limits ask for it: it costs on every IO) and writes `io.max` for
    /// each device.
    pub fn throttle_io(&self, devices: &[DeviceNumber], io: &IoLimits) -> Result<(), CgroupError> {
        let (Some(parent), Some(root)) =
            (self.dir.parent(), self.dir.parent().and_then(Path::parent))
        else {
            return Err(CgroupError::NoIoController);
        };
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == "io") {
            return Err(CgroupError::NoIoController);
        }
        for d in [root, parent] {
            write(
                "enabling the io controller",
                &d.join("cgroup.subtree_control"),
                "+io",
            )?;
        }
        let key =
            |name: &str, v: Option<u64>| v.map(|v| format!(" {name}={v}")).unwrap_or_default();
        for d in devices {
            write(
                "setting the io limits",
                &self.dir.join("io.max"),
                &format!(
                    "{d}{}{}{}{}",
                    key("rbps", io.read_bps),
                    key("wbps", io.write_bps),
                    key("riops", io.read_iops),
                    key("wiops", io.write_iops)
                ),
            )?;
        }
        Ok(())
    }

    /// Usage so far.
    pub fn usage(&self) -> Usage {
        let cpu_usec = keyed(&self.dir.join("cpu.stat"), "usage_usec");
        let io = io_stat_bytes(&self.dir.join("io.stat"));
        Usage {
            cpu_time_ms: cpu_usec.map(|us| us / 1000),
            cpu_usec,
            memory_bytes: read_u64(&self.dir.join("memory.current")),
            peak_memory_bytes: read_u64(&self.dir.join("memory.peak")),
            io_read_bytes: io.map(|(r, _)| r),
            io_write_bytes: io.map(|(_, w)| w),
            pids: read_u64(&self.dir.join("pids.current")),
            oom_kills: keyed(&self.dir.join("memory.events"), "oom_kill").unwrap_or(0),
            pids_limit_hits: keyed(&self.dir.join("pids.events"), "max").unwrap_or(0),
        }
    }
}
