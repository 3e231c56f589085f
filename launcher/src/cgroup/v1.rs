//! cgroup v1: one directory per controller hierarchy.

use super::{
    blkio_bytes, has_procs, keyed, kill_and_remove, read_u64, write, CgroupError, DeviceNumber,
    Usage, PARENT,
};
use crate::config::{IoLimits, Limits};
use std::path::{Path, PathBuf};

/// Mount points of the v1 controllers we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The memory controller.
    pub memory: Option<PathBuf>,
    /// The cpu controller (cfs quota).
    pub cpu: Option<PathBuf>,
    /// The cpuacct controller (CPU time), often co-mounted with cpu.
    pub cpuacct: Option<PathBuf>,
    /// The pids controller.
    pub pids: Option<PathBuf>,
    /// The blkio controller (IO throttling), when mounted.
    pub blkio: Option<PathBuf>,
}

impl Mounts {
    /// Records a `cgroup` mount with its super options (`rw,memory`).
    pub fn note(&mut self, mount_point: &Path, options: &str) {
        for opt in options.split(',') {
            let slot = match opt {
                "memory" => &mut self.memory,
                "cpu" => &mut self.cpu,
                "cpuacct" => &mut self.cpuacct,
                "pids" => &mut self.pids,
                "blkio" => &mut self.blkio,
                _ => continue,
            };
            slot.get_or_insert_with(|| mount_point.to_owned());
        }
    }

    /// Whether the controllers we limit with are all there.
    pub fn complete(&self) -> bool {
        self.memory.is_some() && self.cpu.is_some() && self.pids.is_some()
    }
}

/// A vassal's cgroup v1 directories.
#[derive(Debug)]
pub struct V1 {
    memory: PathBuf,
    cpu: PathBuf,
    cpuacct: Option<PathBuf>,
    pids: PathBuf,
    blkio: Option<PathBuf>,
}

impl V1 {
    /// Creates the directories and writes the limits.
    pub fn create(mounts: &Mounts, name: &str, limits: &Limits) -> Result<V1, CgroupError> {
        let dir = |m: &Option<PathBuf>| m.as_ref().map(|m| m.join(PARENT).join(name));
        let (Some(memory), Some(cpu), Some(pids)) =
            (dir(&mounts.memory), dir(&mounts.cpu), dir(&mounts.pids))
        else {
            return Err(CgroupError::NoHierarchy);
        };
        let cpuacct = dir(&mounts.cpuacct).filter(|d| *d != cpu);
        let blkio = dir(&mounts.blkio).filter(|d| ![&memory, &cpu, &pids].contains(&d));
        let cg = V1 {
            memory,
            cpu,
            cpuacct,
            pids,
            blkio,
        };
        let dirs = cg.dirs();
        if let Some(busy) = dirs.iter().find(|d| has_procs(d)) {
            return Err(CgroupError::Busy { path: busy.clone() });
        }
        for d in &dirs {
            kill_and_remove(d);
            if let Err(source) = std::fs::create_dir_all(d) {
                cg.cleanup();
                return Err(CgroupError::Io {
                    step: "creating the vassal's cgroup",
                    path: d.clone(),
                    source,
                });
            }
        }
        if let Err(e) = cg.limit(limits) {
            cg.cleanup();
            return Err(e);
        }
        Ok(cg)
    }

    fn cleanup(&self) {
        for d in self.dirs() {
            kill_and_remove(&d);
        }
    }

    fn limit(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(m) = limits.memory {
            write(
                "setting the memory limit",
                &self.memory.join("memory.limit_in_bytes"),
                &m.to_string(),
            )?;
            let memsw = self.memory.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write("setting the memory+swap limit", &memsw, &m.to_string())?;
            }
            // v1 charges TCP socket buffers to a memcg only once its own
            // TCP limit is set (v2 always does): without it a vassal's
            // sockets hold memory nobody's limit counts. Set before any
            // socket exists, as the kernel requires.
            let tcp = self.memory.join("memory.kmem.tcp.limit_in_bytes");
            if tcp.exists() {
                write("setting the TCP buffer limit", &tcp, &m.to_string())?;
            }
        }
        if let Some(cores) = limits.cpu {
            let period = 100_000u64;
            let quota = ((cores * period as f64) as u64).max(1000);
            write(
                "setting the cpu period",
                &self.cpu.join("cpu.cfs_period_us"),
                &period.to_string(),
            )?;
            write(
                "setting the cpu limit",
                &self.cpu.join("cpu.cfs_quota_us"),
                &quota.to_string(),
            )?;
        }
        if let Some(p) = limits.pids {
            write(
                "setting the pids limit",
                &self.pids.join("pids.max"),
                &p.to_string(),
            )?;
        }
        Ok(())
    }

    /// Every directory, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut d = vec![self.memory.clone(), self.cpu.clone(), self.pids.clone()];
        d.extend(self.cpuacct.clone());
        d.extend(self.blkio.clone());
        d
    }

    /// Writes `blkio.throttle.*_device` for each device.
    pub fn throttle_io(&self, devices: &[DeviceNumber], io: &IoLimits) -> Result<(), CgroupError> {
        let blkio = self.blkio.as_ref().ok_or(CgroupError::NoIoController)?;
        for (file, value) in [
            ("blkio.throttle.read_bps_device", io.read_bps),
            ("blkio.throttle.write_bps_device", io.write_bps),
            ("blkio.throttle.read_iops_device", io.read_iops),
            ("blkio.throttle.write_iops_device", io.write_iops),
        ] {
            let Some(value) = value else { continue };
            for d in devices {
                write(
                    "setting an io limit",
                    &blkio.join(file),
                    &format!("{d} {value}"),
                )?;
            }
        }
        Ok(())
    }

    /// Turns the kernel's io accounting on for `devices`: cgroup v1 counts
    /// `blkio.throttle.io_service_bytes` only on a disk that has had a
    /// throttle rule (Linux activates blk-throttle per disk on its first
    /// rule, 6.18 here), so a vassal without io limits would report no IO
    /// at all. A read rule of 0 (no limit) activates it and limits
    /// nothing; it stays active for that disk, as after any vassal's limit.
    pub fn account_io(&self, devices: &[DeviceNumber]) -> Result<(), CgroupError> {
        let Some(blkio) = self.blkio.as_ref() else {
            return Ok(());
        };
        for d in devices {
            write(
                "turning io accounting on",
                &blkio.join("blkio.throttle.read_bps_device"),
                &format!("{d} 0"),
            )?;
        }
        Ok(())
    }

    /// Usage so far.
    pub fn usage(&self) -> Usage {
        let acct = self.cpuacct.as_ref().unwrap_or(&self.cpu);
        let cpu_ns = read_u64(&acct.join("cpuacct.usage"));
        let io = self
            .blkio
            .as_ref()
            .and_then(|b| blkio_bytes(&b.join("blkio.throttle.io_service_bytes")));
        Usage {
            cpu_time_ms: cpu_ns.map(|ns| ns / 1_000_000),
            cpu_usec: cpu_ns.map(|ns| ns / 1000),
            memory_bytes: read_u64(&self.memory.join("memory.usage_in_bytes")),
            peak_memory_bytes: read_u64(&self.memory.join("memory.max_usage_in_bytes")),
            io_read_bytes: io.map(|(r, _)| r),
            io_write_bytes: io.map(|(_, w)| w),
            pids: read_u64(&self.pids.join("pids.current")),
            oom_kills: keyed(&self.memory.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            pids_limit_hits: keyed(&self.pids.join("pids.events"), "max").unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::config::{IoLimits, Limits};

    fn limits() -> Limits {
        Limits {
            memory: Some(64 << 20),
            cpu: Some(0.5),
            pids: Some(32),
            nofile: 1024,
            tmp_size: 1 << 20,
            wall_clock: None,
            net_out: None,
            net_in: None,
            file_size: None,
            io: IoLimits::default(),
        }
    }

    fn fake_tree(mountinfo: &str, dirs: &[&str]) -> (PathBuf, PathBuf) {
        let base =
            std::env::temp_dir().join(format!("vassal-cg-{}-{}", std::process::id(), dirs.len()));
        let _ = std::fs::remove_dir_all(&base);
        for d in dirs {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let info = base.join("mountinfo");
        std::fs::write(&info, mountinfo.replace("BASE", base.to_str().unwrap())).unwrap();
        (base, info)
    }

    #[test]
    fn v1_is_chosen_when_cgroup2_has_no_controllers_and_limits_are_written() {
        let (base, info) = fake_tree(
            "30 25 0:26 / BASE/unified rw - cgroup2 cgroup2 rw\n\
             31 25 0:27 / BASE/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:28 / BASE/cpu rw - cgroup cgroup rw,cpu\n\
             33 25 0:29 / BASE/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             34 25 0:30 / BASE/pids rw - cgroup cgroup rw,pids\n",
            &["unified", "memory", "cpu", "cpuacct", "pids"],
        );
        std::fs::write(base.join("unified/cgroup.controllers"), "").unwrap();
        let h = detect(&info).unwrap();
        assert!(matches!(h, Hierarchy::V1(_)), "{h:?}");
        let cg = Cgroup::create(&h, "alice", &limits()).unwrap();
        let dir = base.join("memory/vassal/alice");
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(base.join("cpu/vassal/alice/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("pids/vassal/alice/pids.max")).unwrap(),
            "32"
        );
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(
            base.join("cpuacct/vassal/alice/cpuacct.usage"),
            "2500000000\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.usage_in_bytes"), "8192\n").unwrap();
        std::fs::write(dir.join("memory.max_usage_in_bytes"), "16384\n").unwrap();
        std::fs::write(base.join("pids/vassal/alice/pids.current"), "5\n").unwrap();
        let u = cg.usage();
        assert_eq!(u.oom_kills, 2);
        assert_eq!(u.cpu_time_ms, Some(2500));
        assert_eq!(u.cpu_usec, Some(2_500_000));
        assert_eq!(u.memory_bytes, Some(8192));
        assert_eq!(u.peak_memory_bytes, Some(16384));
        assert_eq!(u.pids, Some(5));
        // No blkio mount: no IO readings rather than zeros.
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (None, None));
        assert_eq!(cg.dirs().len(), 4);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn v2_is_chosen_when_its_controllers_are_available() {
        let (base, info) = fake_tree(
            "30 25 0:26 / BASE/cg rw - cgroup2 cgroup2 rw\n31 25 0:27 / BASE/memory rw - cgroup cgroup rw,memory\n",
            &["cg"],
        );
        std::fs::write(
            base.join("cg/cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let h = detect(&info).unwrap();
        assert_eq!(h, Hierarchy::V2(base.join("cg")));
        let cg = Cgroup::create(&h, "bob", &limits()).unwrap();
        let dir = base.join("cg/vassal/bob");
        // The last write of the (fake, plain-file) subtree_control: the io
        // controller, enabled for io.stat since the host has it.
        assert_eq!(
            std::fs::read_to_string(base.join("cg/cgroup.subtree_control")).unwrap(),
            "+io"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap(), "32");
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("pids.events"), "max 7\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(dir.join("memory.peak"), "123456\n").unwrap();
        std::fs::write(dir.join("memory.current"), "65536\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(
            dir.join("io.stat"),
            "8:0 rbytes=4096 wbytes=1048576 rios=1 wios=256 dbytes=0 dios=0\n\
             253:1 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        )
        .unwrap();
        let u = cg.usage();
        assert_eq!(
            u,
            Usage {
                cpu_time_ms: Some(1),
                cpu_usec: Some(1500),
                memory_bytes: Some(65536),
                peak_memory_bytes: Some(123456),
                io_read_bytes: Some(4196),
                io_write_bytes: Some(1048576),
                pids: Some(3),
                oom_kills: 1,
                pids_limit_hits: 7
            }
        );
        // A cgroup of the same name with live processes is refused.
        std::fs::write(dir.join("cgroup.procs"), "4242\n").unwrap();
        assert!(matches!(
            Cgroup::create(&h, "bob", &limits()),
            Err(CgroupError::Busy { .. })
        ));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn io_limits_are_written_per_device_on_v1_and_v2() {
        let io = IoLimits {
            read_bps: Some(20 << 20),
            write_bps: Some(4 << 20),
            read_iops: None,
            write_iops: Some(100),
        };
        let devices = [
            DeviceNumber {
                major: 254,
                minor: 0,
            },
            DeviceNumber { major: 7, minor: 3 },
        ];
        let (base, info) = fake_tree(
            "31 25 0:27 / BASE/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:28 / BASE/cpu rw - cgroup cgroup rw,cpu,cpuacct\n\
             34 25 0:30 / BASE/pids rw - cgroup cgroup rw,pids\n\
             35 25 0:31 / BASE/blkio rw - cgroup cgroup rw,blkio\n",
            &["memory", "cpu", "pids", "blkio", "x", "y", "z"],
        );
        let h = detect(&info).unwrap();
        let cg = Cgroup::create(&h, "carol", &limits()).unwrap();
        assert_eq!(cg.dirs().len(), 4);
        cg.throttle_io(&devices, &io).unwrap();
        let dir = base.join("blkio/vassal/carol");
        // A fake file keeps the last write; the kernel keeps one per device.
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("blkio.throttle.read_bps_device"), "7:3 20971520");
        assert_eq!(read("blkio.throttle.write_bps_device"), "7:3 4194304");
        assert_eq!(read("blkio.throttle.write_iops_device"), "7:3 100");
        assert!(!dir.join("blkio.throttle.read_iops_device").exists());
        assert!(existing_dirs(&h, "carol").contains(&dir));
        // The IO bytes billed: every device's Read and Write, not Sync,
        // Async or the Total line (which would count them twice).
        std::fs::write(
            dir.join("blkio.throttle.io_service_bytes"),
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n8:0 Total 12288\n\
             7:3 Read 1\n7:3 Write 2\n7:3 Total 3\nTotal 12291\n",
        )
        .unwrap();
        let u = cg.usage();
        assert_eq!(
            (u.io_read_bytes, u.io_write_bytes),
            (Some(4097), Some(8194))
        );
        let _ = std::fs::remove_dir_all(&base);

        let (base, info) = fake_tree(
            "30 25 0:26 / BASE/cg rw - cgroup2 cgroup2 rw\n",
            &["cg", "x", "y"],
        );
        std::fs::write(base.join("cg/cgroup.controllers"), "cpu memory pids\n").unwrap();
        let h = detect(&info).unwrap();
        let cg = Cgroup::create(&h, "dave", &limits()).unwrap();
        assert!(matches!(
            cg.throttle_io(&devices, &io),
            Err(CgroupError::NoIoController)
        ));
        // No limit asks for nothing, whatever the host has.
        cg.throttle_io(&devices, &IoLimits::default()).unwrap();
        std::fs::write(base.join("cg/cgroup.controllers"), "cpu io memory pids\n").unwrap();
        cg.throttle_io(&devices[..1], &io).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("cg/vassal/dave/io.max")).unwrap(),
            "254:0 rbps=20971520 wbps=4194304 wiops=100"
        );
        assert_eq!(
            std::fs::read_to_string(base.join("cg/vassal/cgroup.subtree_control")).unwrap(),
            "+io"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn v1_tcp_buffers_get_the_memory_limit_and_every_mount_is_listed_for_reaping() {
        let (base, info) = fake_tree(
            "31 25 0:27 / BASE/memory rw - cgroup cgroup rw,memory\n\
             32 25 0:28 / BASE/cpu rw - cgroup cgroup rw,cpu,cpuacct\n\
             34 25 0:30 / BASE/pids rw - cgroup cgroup rw,pids\n\
             35 25 0:31 / BASE/unified rw - cgroup2 cgroup2 rw\n",
            &[
                "memory/vassal/carol",
                "cpu",
                "pids",
                "unified/vassal/dave",
                "unified/vassal/erin",
                // (six entries: fake_tree names its directory by the count)
                "spare",
            ],
        );
        let tcp = base.join("memory/vassal/carol/memory.kmem.tcp.limit_in_bytes");
        std::fs::write(&tcp, "max").unwrap();
        let h = detect(&info).unwrap();
        let _cg = Cgroup::create(&h, "carol", &limits()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&tcp).unwrap(),
            (64u64 << 20).to_string()
        );
        let names: Vec<(String, PathBuf)> = all_vassal_dirs(&info).unwrap();
        let mut want = vec![
            ("carol".to_string(), base.join("cpu/vassal/carol")),
            ("carol".to_string(), base.join("memory/vassal/carol")),
            ("carol".to_string(), base.join("pids/vassal/carol")),
            ("dave".to_string(), base.join("unified/vassal/dave")),
            ("erin".to_string(), base.join("unified/vassal/erin")),
        ];
        want.sort();
        assert_eq!(names, want);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn missing_controllers_are_an_error() {
        let (base, info) = fake_tree(
            "31 25 0:27 / BASE/memory rw - cgroup cgroup rw,memory\n",
            &["memory", "x"],
        );
        assert!(matches!(detect(&info), Err(CgroupError::NoHierarchy)));
        let _ = std::fs::remove_dir_all(&base);
    }
}
