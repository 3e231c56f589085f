//! The vassal's disk, seen from the host by the outer launcher (root,
//! before the command exists; docs/design.md, "Launch order", step 2): the
//! block devices under its filesystems, which the cgroup's IO limits name,
//! and the project quotas of its writable mounts.
//!
//! A project quota counts the blocks of every inode carrying a project id,
//! on one filesystem. The id of a vassal is the host uid its command runs
//! as (through the uid map with a user namespace): unique per tenant
//! already, as all other isolation needs, so no registry of ids is kept.

use crate::cgroup::DeviceNumber;
use crate::config::{map_to_host, Mount, VassalConfig};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where sysfs is mounted.
pub const SYSFS: &str = "/sys";

/// Directories deeper than this under a quota mount are refused when its
/// tree is tagged (each level holds a descriptor).
const MAX_DEPTH: usize = 512;

/// A disk step that failed, naming the mount.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening or examining a filesystem failed.
    #[error("{what} {path}: {step}: {source}")]
    Io {
        /// `mount[N]` or `rootfs`.
        what: String,
        /// The host path.
        path: PathBuf,
        /// What it was for.
        step: &'static str,
        /// The cause.
        source: nix::Error,
    },
    /// IO limits are set and a writable mount has no block device.
    #[error("{what} {path} is on {fstype}, which has no block device: the io limits ([limits] io_read, io_write, io_read_iops, io_write_iops) cannot throttle what the vassal writes there; put the mount on a disk filesystem or drop the io limits")]
    NoDevice {
        /// `mount[N]`.
        what: String,
        /// The host path.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
    },
    /// A quota is set on a filesystem that cannot enforce project quotas.
    #[error("{what} {path}: quota: its filesystem ({fstype}) has no project quota support: {why}")]
    NoProjectQuota {
        /// `mount[N]`.
        what: String,
        /// The host path.
        path: PathBuf,
        /// Its filesystem type.
        fstype: String,
        /// What is missing.
        why: String,
    },
    /// Two quota mounts of one vassal on one filesystem would share its
    /// project's single limit there.
    #[error("{what} {path}: quota: on the same filesystem as {other}, whose quota it would share (a project has one limit per filesystem); give the quota to one of them")]
    SharedFilesystem {
        /// `mount[N]`.
        what: String,
        /// The host path.
        path: PathBuf,
        /// The other `mount[M]`.
        other: String,
    },
}

fn what(index: usize) -> String {
    format!("mount[{index}]")
}

/// Opens `path` without following any symlink on the way (the vassal may
/// write the directories of another, shared mount).
fn open_nofollow(path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(nix::fcntl::AT_FDCWD, path, how)
}

/// A readable name of the filesystem type of `fd`.
fn fstype(fd: BorrowedFd<'_>) -> String {
    let Ok(s) = nix::sys::statfs::fstatfs(fd) else {
        return "an unknown filesystem".into();
    };
    let magic = s.filesystem_type().0 as u64;
    match magic {
        0x0102_1994 => "tmpfs".into(),
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x6573_5546 => "fuse".into(),
        0x8584_58f6 => "ramfs".into(),
        m => format!("a filesystem of type {m:#x}"),
    }
}

/// The whole disk holding device `dev`, from `sysfs`: the kernel throttles
/// whole disks only (a partition's number is refused with ENODEV), so a
/// partition is throttled through its disk. Loop and device-mapper devices
/// are whole disks. `None` when `dev` is no block device (tmpfs, overlayfs,
/// btrfs subvolumes, NFS: anonymous device numbers).
pub fn whole_disk(sysfs: &Path, dev: u64) -> Option<DeviceNumber> {
    let node = sysfs.join(format!(
        "dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    if !node.is_dir() {
        return None;
    }
    // A partition's sysfs directory sits inside its disk's.
    let number = if node.join("partition").exists() {
        std::fs::read_to_string(node.join("../dev")).ok()?
    } else {
        std::fs::read_to_string(node.join("dev")).ok()?
    };
    let (major, minor) = number.trim().split_once(':')?;
    Some(DeviceNumber {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

/// The devices the io limits apply to: the disk under the root filesystem
/// (reads only can reach it: the root is read-only) and under every mount.
/// A writable mount without one is refused; a read-only mount or root
/// without one (overlayfs, tmpfs) is left unthrottled: its reads are
/// served from memory or from another filesystem's device.
pub fn io_devices(config: &VassalConfig, sysfs: &Path) -> Result<Vec<DeviceNumber>, DiskError> {
    devices(config, sysfs, true)
}

/// The disks [`io_devices`] would name, for accounting only: a mount
/// without a disk (tmpfs) or one that cannot be opened is passed over.
pub fn accounted_devices(config: &VassalConfig, sysfs: &Path) -> Vec<DeviceNumber> {
    devices(config, sysfs, false).unwrap_or_default()
}

/// [`io_devices`]; `strict`: a writable mount without a disk, or one that
/// cannot be opened, is an error (else it is passed over).
fn devices(
    config: &VassalConfig,
    sysfs: &Path,
    strict: bool,
) -> Result<Vec<DeviceNumber>, DiskError> {
    let mut found = Vec::new();
    let mut add = |d: DeviceNumber| {
        if !found.contains(&d) {
            found.push(d);
        }
    };
    let root = open_nofollow(&config.rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY);
    // The rootfs path is the operator's and may hold symlinks; rootfs.rs
    // refuses what it must. Without a device, nothing to throttle.
    let root = root.or_else(|_| {
        nix::fcntl::open(
            &config.rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    });
    if let Ok(root) = root {
        if let Some(d) = fstat(root.as_fd())
            .ok()
            .and_then(|s| whole_disk(sysfs, s.st_dev))
        {
            add(d);
        }
    }
    for (i, m) in config.mounts.iter().enumerate() {
        let st = open_mount(i, m, OFlag::O_PATH).and_then(|fd| {
            let st = fstat(fd.as_fd()).map_err(|source| DiskError::Io {
                what: what(i),
                path: m.source.clone(),
                step: "finding its device (fstat)",
                source,
            })?;
            Ok((fd, st))
        });
        let (fd, st) = match st {
            Ok(found) => found,
            Err(e) if strict => return Err(e),
            Err(_) => continue,
        };
        match whole_disk(sysfs, st.st_dev) {
            Some(d) => add(d),
            None if m.writable && strict => {
                return Err(DiskError::NoDevice {
                    what: what(i),
                    path: m.source.clone(),
                    fstype: fstype(fd.as_fd()),
                })
            }
            None => {}
        }
    }
    Ok(found)
}

fn open_mount(i: usize, m: &Mount, flags: OFlag) -> Result<OwnedFd, DiskError> {
    open_nofollow(&m.source, flags | OFlag::O_DIRECTORY).map_err(|source| DiskError::Io {
        what: what(i),
        path: m.source.clone(),
        step: "opening it (without symlinks)",
        source,
    })
}

/// The project id of `config`'s vassal: its command's host uid.
pub fn project_id(config: &VassalConfig) -> u32 {
    config
        .uid_map
        .as_deref()
        .and_then(|m| map_to_host(m, config.uid))
        .unwrap_or(config.uid)
}

// The kernel's quota and fsxattr interfaces (linux/quota.h, linux/fs.h,
// linux/dqblk_xfs.h); libc has no quotactl_fd wrapper nor fsxattr.
const PRJQUOTA: libc::c_int = 2;
const Q_XGETQSTATV: libc::c_int = (('X' as libc::c_int) << 8) + 8;
const FS_QSTATV_VERSION1: i8 = 1;
const FS_QUOTA_PDQ_ACCT: u16 = 1 << 4;
const FS_QUOTA_PDQ_ENFD: u16 = 1 << 5;
const FS_XFLAG_PROJINHERIT: u32 = 0x200;
/// `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

#[repr(C)]
#[derive(Default)]
struct QFileStatV {
    ino: u64,
    nblks: u64,
    nextents: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct QuotaStatV {
    version: i8,
    pad1: u8,
    flags: u16,
    incoredqs: u32,
    uquota: QFileStatV,
    gquota: QFileStatV,
    pquota: QFileStatV,
    btimelimit: i32,
    itimelimit: i32,
    bwarnlimit: u16,
    iwarnlimit: u16,
    rtbwarnlimit: u16,
    pad3: u16,
    pad4: u32,
    pad2: [u64; 7],
}

/// quotactl_fd(2) (Linux 5.14): quotas of the filesystem holding `fd`,
/// with no device node to find.
fn quotactl_fd<T>(fd: BorrowedFd<'_>, cmd: libc::c_int, id: u32, data: &mut T) -> nix::Result<()> {
    // SAFETY: `data` is a live, exclusively borrowed struct laid out as
    // the kernel's for `cmd` (the callers pair them), for the call's length.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fd.as_raw_fd(),
            libc::QCMD(cmd, PRJQUOTA) as libc::c_uint,
            id as libc::c_int,
            data as *mut T as *mut libc::c_void,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

fn get_xattr(fd: BorrowedFd<'_>) -> nix::Result<FsXattr> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a struct fsxattr, which `x` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x as *mut FsXattr) };
    nix::errno::Errno::result(rc).map(|_| x)
}

fn set_xattr(fd: BorrowedFd<'_>, x: &FsXattr) -> nix::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads a struct fsxattr, which `x` is.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, x as *const FsXattr) };
    nix::errno::Errno::result(rc).map(drop)
}

/// Why the filesystem of `fd` cannot enforce a project quota, if it cannot.
fn project_quota_missing(fd: BorrowedFd<'_>) -> Option<String> {
    let mut stat = QuotaStatV {
        version: FS_QSTATV_VERSION1,
        ..Default::default()
    };
    match quotactl_fd(fd, Q_XGETQSTATV, 0, &mut stat) {
        Err(nix::Error::ENOSYS) => {
            return Some("the filesystem, or this kernel, keeps no quotas (quotactl_fd needs Linux 5.14 with CONFIG_QUOTA)".into())
        }
        Err(nix::Error::ESRCH) => {
            return Some("project quotas are not enabled on it; mount it with prjquota (ext4: made with -O quota,project)".into())
        }
        Err(e) => return Some(format!("reading its quota state (quotactl_fd): {e}")),
        Ok(()) => {}
    }
    if stat.flags & FS_QUOTA_PDQ_ACCT == 0 {
        return Some("project quotas are not enabled on it; mount it with prjquota (ext4: made with -O quota,project)".into());
    }
    if stat.flags & FS_QUOTA_PDQ_ENFD == 0 {
        return Some(
            "project quotas are counted but not enforced on it; mount it with prjquota".into(),
        );
    }
    if let Err(e) = get_xattr(fd) {
        return Some(format!("it keeps no project ids (FS_IOC_FSGETXATTR): {e}"));
    }
    None
}

/// Sets the quota of every `[[mount]]` that has one: the tree under its
/// source tagged with the vassal's project id (directories inheriting it,
/// so whatever is created later is counted too), then the project's block
/// limit on that filesystem. Refused, naming the mount, where the
/// filesystem cannot enforce it.
pub fn apply_quotas(config: &VassalConfig) -> Result<(), DiskError> {
    let id = project_id(config);
    let mut seen: Vec<(u64, usize)> = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let Some(quota) = m.quota else { continue };
        let fd = open_mount(i, m, OFlag::O_RDONLY)?;
        let io = |step: &'static str| {
            move |source| DiskError::Io {
                what: what(i),
                path: m.source.clone(),
                step,
                source,
            }
        };
        let dev = fstat(fd.as_fd())
            .map_err(io("finding its filesystem (fstat)"))?
            .st_dev;
        if let Some((_, other)) = seen.iter().find(|(d, _)| *d == dev) {
            return Err(DiskError::SharedFilesystem {
                what: what(i),
                path: m.source.clone(),
                other: what(*other),
            });
        }
        seen.push((dev, i));
        if let Some(why) = project_quota_missing(fd.as_fd()) {
            return Err(DiskError::NoProjectQuota {
                what: what(i),
                path: m.source.clone(),
                fstype: fstype(fd.as_fd()),
                why,
            });
        }
        let top = get_xattr(fd.as_fd()).map_err(io("reading its project id"))?;
        // The top directory is tagged last: tagged means the whole tree was.
        if top.projid != id || top.xflags & FS_XFLAG_PROJINHERIT == 0 {
            tag_tree(fd.as_fd(), id, 0).map_err(io("tagging its files with the project id"))?;
        }
        let blocks = quota.div_ceil(1024);
        let mut limit = libc::dqblk {
            dqb_bhardlimit: blocks,
            dqb_bsoftlimit: blocks,
            dqb_curspace: 0,
            dqb_ihardlimit: 0,
            dqb_isoftlimit: 0,
            dqb_curinodes: 0,
            dqb_btime: 0,
            dqb_itime: 0,
            dqb_valid: libc::QIF_BLIMITS,
        };
        quotactl_fd(fd.as_fd(), libc::Q_SETQUOTA, id, &mut limit).map_err(io(
            "setting the project's block limit (quotactl_fd Q_SETQUOTA)",
        ))?;
    }
    Ok(())
}

/// Gives every directory and regular file under `dir`, then `dir`, the
/// project id `id` (directories also the inherit flag). Symlinks, sockets
/// and FIFOs have no fd to tag through and hold no blocks worth counting.
fn tag_tree(dir: BorrowedFd<'_>, id: u32, depth: usize) -> nix::Result<()> {
    if depth > MAX_DEPTH {
        return Err(nix::Error::ELOOP);
    }
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    for entry in listing.flatten() {
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() && !kind.is_file() {
            continue;
        }
        let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        if kind.is_dir() {
            flags |= OFlag::O_DIRECTORY;
        }
        // Never through a symlink swapped in since the listing.
        let child = match nix::fcntl::openat(dir, name.as_os_str(), flags, Mode::empty()) {
            Ok(c) => c,
            Err(nix::Error::ENOENT | nix::Error::ELOOP) => continue,
            Err(e) => return Err(e),
        };
        if kind.is_dir() {
            tag_tree(child.as_fd(), id, depth + 1)?;
        } else {
            tag(child.as_fd(), id, false)?;
        }
    }
    tag(dir, id, true)
}

fn tag(fd: BorrowedFd<'_>, id: u32, inherit: bool) -> nix::Result<()> {
    let mut x = get_xattr(fd)?;
    if x.projid == id && (!inherit || x.xflags & FS_XFLAG_PROJINHERIT != 0) {
        return Ok(());
    }
    x.projid = id;
    if inherit {
        x.xflags |= FS_XFLAG_PROJINHERIT;
    }
    set_xattr(fd, &x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_throttled_through_its_whole_disk() {
        let base = std::env::temp_dir().join(format!("vassal-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let disk = base.join("devices/virtual/block/vdz");
        std::fs::create_dir_all(disk.join("vdz1")).unwrap();
        std::fs::create_dir_all(base.join("dev/block")).unwrap();
        std::fs::write(disk.join("dev"), "254:16\n").unwrap();
        std::fs::write(disk.join("vdz1/dev"), "254:17\n").unwrap();
        std::fs::write(disk.join("vdz1/partition"), "1\n").unwrap();
        std::os::unix::fs::symlink(disk.join("vdz1"), base.join("dev/block/254:17")).unwrap();
        std::os::unix::fs::symlink(&disk, base.join("dev/block/254:16")).unwrap();
        let whole = DeviceNumber {
            major: 254,
            minor: 16,
        };
        assert_eq!(whole_disk(&base, libc::makedev(254, 17)), Some(whole));
        assert_eq!(whole_disk(&base, libc::makedev(254, 16)), Some(whole));
        // tmpfs and the like: an anonymous device, no block device.
        assert_eq!(whole_disk(&base, libc::makedev(0, 45)), None);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn the_kernel_structs_have_the_kernel_sizes() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<QuotaStatV>(), 160);
        assert_eq!(Q_XGETQSTATV, 0x5808);
    }
}
