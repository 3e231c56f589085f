//! The vassal's filesystem view, built inside its new mount namespace and
//! entered with pivot_root. The order is the one in docs/design.md
//! ("Launch order", supervisor step 3); [`build`] follows it line by line.
//!
//! Every mount meant read-only is read-only, nosuid and nodev all the way
//! down: trees are cloned detached (`open_tree`), given their flags
//! recursively (`mount_setattr` with `AT_RECURSIVE`) and only then attached
//! (`move_mount`), so no submount of a bind or of the root is ever writable
//! inside. Kernels without that API get the same flags from a walk of the
//! mount table. Every path we mount on or bind from is opened component by
//! component without following symlinks, and mounted on through that fd.

mod mountapi;

use crate::config::{Mount, VassalConfig};
use mountapi::{NOEXEC, NOSUID_NODEV, READ_ONLY};
use nix::fcntl::{open, openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Where the new root is assembled. Only ever mounted on inside the
/// vassal's own (private) mount namespace, so vassals do not collide.
pub const STAGING: &str = "/run/vassal/.root";

/// Where the empty read-only file that masks files is made: a tmpfs of the
/// vassal's mount namespace outside the new root, gone with the old root.
pub const MASK_SOURCE: &str = "/run/vassal/.mask";

/// Creates [`STAGING`] and [`MASK_SOURCE`] on the host, as its root, before
/// the supervisor exists: in a user namespace the supervisor cannot (the
/// host's root owns `/run/vassal` and is not mapped there), so the first
/// such vassal after a boot would fail.
pub fn create_host_dirs() -> Result<(), RootfsError> {
    traversable(Path::new(RUN_DIR))?;
    create_dir("creating the staging directory", Path::new(STAGING))?;
    create_dir(
        "making the empty file that masks files",
        Path::new(MASK_SOURCE),
    )
}

/// The host directory of [`STAGING`] and [`MASK_SOURCE`], also the
/// router's default `state_dir`.
pub const RUN_DIR: &str = "/run/vassal";

/// Makes `dir` (root's, on the host) searchable by everyone: a vassal in a
/// user namespace runs as a host uid that is not root and must pass
/// through it to reach [`STAGING`]. A router that started first created
/// it 0700 (its default `state_dir`); only search is added (`--x` for
/// group and others), never read or write, and only to a real directory
/// root owns.
fn traversable(dir: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const STEP: &str = "making the launcher's directory searchable";
    let failed = |source| RootfsError::Create {
        step: STEP,
        path: dir.to_owned(),
        source,
    };
    create_dir(STEP, dir)?;
    let meta = std::fs::symlink_metadata(dir).map_err(failed)?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(failed(std::io::Error::other(
            "not a directory owned by root (remove it)",
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o011))
            .map_err(failed)?;
    }
    Ok(())
}

/// A mount step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A mount(2) call failed.
    #[error("{step}: mount {target}: {source}")]
    Mount {
        /// What the mount was for.
        step: &'static str,
        /// Where.
        target: PathBuf,
        /// The cause.
        source: nix::Error,
    },
    /// A directory, file or link could not be made in a tmpfs of ours.
    #[error("{step}: creating {path}: {source}")]
    Create {
        /// What it was for.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A path the configuration names does not exist.
    #[error("{step}: {path} does not exist{hint}")]
    Missing {
        /// What it was for.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// A path we mount on or bind from passes through a symlink, which
    /// whoever can write that directory could have pointed anywhere.
    #[error("{step}: {path} passes through the symlink {link}; name the real path")]
    Symlink {
        /// What it was for.
        step: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The component that is a symlink.
        link: PathBuf,
    },
    /// Opening a path we mount on or bind from failed.
    #[error("{step}: opening {path}: {source}")]
    Open {
        /// What it was for.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: nix::Error,
    },
    /// pivot_root or the detach of the old root failed.
    #[error("{step}: {source}")]
    Pivot {
        /// pivot_root or umount of the old root.
        step: &'static str,
        /// The cause.
        source: nix::Error,
    },
}

fn do_mount(
    step: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(source, target, fstype, flags, data).map_err(|source| RootfsError::Mount {
        step,
        target: target.to_owned(),
        source,
    })
}

/// What a remount does to the read-only flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only.
    ReadOnly,
    /// Writable (the top of a `writable = true` bind).
    Writable,
    /// As it is (mounts below a writable bind).
    Keep,
}

/// Remounts the bind at `target` read-only, writable, or as it was, keeping
/// the flags the kernel has locked on it (a user namespace may not clear
/// nosuid, nodev, noexec or the atime flags of a mount it inherited), and
/// adding `add` (nosuid and nodev for anything from disk: nothing in a
/// vassal needs setuid files or device nodes from there).
fn remount_bind(
    step: &'static str,
    target: &Path,
    access: Access,
    add: MsFlags,
) -> Result<(), RootfsError> {
    let current = statvfs(target).map_err(|source| RootfsError::Mount {
        step,
        target: target.to_owned(),
        source,
    })?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | add;
    let f = current.flags();
    if access == Access::ReadOnly || (access == Access::Keep && f.contains(FsFlags::ST_RDONLY)) {
        flags |= MsFlags::MS_RDONLY;
    }
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            flags |= keep;
        }
    }
    do_mount(step, None, target, None, flags, None)
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn create_dir(step: &'static str, path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(|source| RootfsError::Create {
        step,
        path: path.to_owned(),
        source,
    })
}

/// An `O_PATH` fd of `path` (absolute) beneath the directory `base` (whose
/// own path is `base_path`), opened one component at a time without
/// following symlinks. Whoever can write a directory on the way (another
/// vassal sharing a writable bind, say) cannot redirect what we mount on or
/// bind from (runc CVE-2021-30465): a symlink is refused, and a directory
/// renamed after we opened it is still the one we hold. Returns the fd and
/// whether it is a directory; `Ok(None)` when the path does not exist.
fn open_beneath(
    step: &'static str,
    base: BorrowedFd<'_>,
    base_path: &Path,
    path: &Path,
) -> Result<Option<(OwnedFd, bool)>, RootfsError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open_error = |source| RootfsError::Open {
        step,
        path: path.to_owned(),
        source,
    };
    let mut fd = openat(base, ".", flags, Mode::empty()).map_err(open_error)?;
    let mut is_dir = true;
    let mut walked = base_path.to_owned();
    for part in path.components() {
        let name = match part {
            Component::Normal(name) => name,
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(open_error(nix::Error::EINVAL));
            }
        };
        walked.push(name);
        fd = match openat(fd.as_fd(), name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(nix::Error::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(e)),
        };
        let kind = SFlag::from_bits_truncate(fstat(fd.as_fd()).map_err(open_error)?.st_mode)
            & SFlag::S_IFMT;
        if kind == SFlag::S_IFLNK {
            return Err(RootfsError::Symlink {
                step,
                path: path.to_owned(),
                link: walked,
            });
        }
        is_dir = kind == SFlag::S_IFDIR;
    }
    Ok(Some((fd, is_dir)))
}

/// The path through which mount(2) reaches exactly the inode `fd` holds.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The new root being assembled: where it is and how mounts are flagged.
struct Root {
    /// [`STAGING`].
    path: PathBuf,
    /// An `O_PATH` fd of it, once the root filesystem is mounted there.
    fd: OwnedFd,
    /// Whether the kernel has `mount_setattr` (else: mount table walks).
    new_api: bool,
}

impl Root {
    /// The existing `path` (inside the new root), opened safely.
    fn open(&self, step: &'static str, path: &Path) -> Result<(OwnedFd, bool), RootfsError> {
        open_beneath(step, self.fd.as_fd(), &self.path, path)?.ok_or_else(|| RootfsError::Missing {
            step,
            path: path.to_owned(),
            hint: " in the vassal's root filesystem",
        })
    }

    /// Mounts a filesystem (tmpfs, proc) on `path` inside the new root.
    fn mount_fs(
        &self,
        step: &'static str,
        path: &str,
        fstype: &str,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), RootfsError> {
        let (target, _) = self.open(step, Path::new(path))?;
        do_mount(
            step,
            Some(Path::new(fstype)),
            &fd_path(&target),
            Some(fstype),
            flags,
            data,
        )
    }

    /// Binds `source` (an open fd; `recursive`: with its submounts) onto
    /// `target` inside the new root: read-only (or writable at its top),
    /// nosuid, nodev and `extra` on every mount of the tree, all private.
    fn bind(
        &self,
        step: &'static str,
        source: &OwnedFd,
        target: &Path,
        recursive: bool,
        access: Access,
        extra: u64,
    ) -> Result<(), RootfsError> {
        let (target_fd, _) = self.open(step, target)?;
        let at = inside(&self.path, target);
        let fail = |source| RootfsError::Mount {
            step,
            target: at.clone(),
            source,
        };
        if self.new_api {
            // The tree gets its flags while detached: it is never visible
            // writable, and no path lookup stands between flags and mount.
            let tree = mountapi::clone_tree(source.as_fd(), recursive).map_err(fail)?;
            let set = match access {
                Access::ReadOnly => READ_ONLY,
                Access::Writable | Access::Keep => NOSUID_NODEV,
            } | extra;
            mountapi::set_attrs(tree.as_fd(), true, set, 0).map_err(fail)?;
            if access == Access::Writable {
                mountapi::set_attrs(tree.as_fd(), false, 0, libc::MOUNT_ATTR_RDONLY)
                    .map_err(fail)?;
            }
            return mountapi::attach(tree.as_fd(), target_fd.as_fd()).map_err(fail);
        }
        let rec = if recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        do_mount(
            step,
            Some(&fd_path(source)),
            &fd_path(&target_fd),
            None,
            MsFlags::MS_BIND | rec,
            None,
        )?;
        let mut add = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if extra & NOEXEC != 0 {
            add |= MsFlags::MS_NOEXEC;
        }
        lock_down_by_walk(step, &at, access, add)
    }
}

/// Without `mount_setattr`: remounts the mount at `top` and every mount
/// below it, as the mount table lists them. The top gets `access`; the ones
/// below read-only when the top is, else they keep theirs.
fn lock_down_by_walk(
    step: &'static str,
    top: &Path,
    access: Access,
    add: MsFlags,
) -> Result<(), RootfsError> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| RootfsError::Create {
            step,
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    let below = match access {
        Access::ReadOnly => Access::ReadOnly,
        Access::Writable | Access::Keep => Access::Keep,
    };
    for point in mountapi::mount_points_below(&table, top) {
        let access = if point == top { access } else { below };
        remount_bind(step, &point, access, add)?;
    }
    Ok(())
}

/// Builds the vassal's root under [`STAGING`] and pivots into it. Runs in
/// the supervisor, inside the new mount and pid namespaces.
pub fn build(config: &VassalConfig) -> Result<(), RootfsError> {
    let staging = Path::new(STAGING);

    // 1. Nothing we mount may propagate back to the host, and nothing the
    //    host mounts later may propagate in: every mount private.
    do_mount(
        "making / private",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    // 2. The root filesystem, bound (not recursively: the host's other
    //    filesystems stay out) onto the staging mount point, read-only,
    //    nosuid and nodev. With a user namespace, the kernel locks the
    //    host's mounts together: the bind must take the submounts along
    //    (MS_REC), and every one of them is made read-only, nosuid and
    //    nodev too; the kernel ones are covered below (/proc, /dev, /run,
    //    /tmp, and /sys masked).
    let step = "binding the root filesystem";
    let rootfs = open(
        &config.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| match source {
        nix::Error::ENOENT | nix::Error::ENOTDIR => RootfsError::Missing {
            step,
            path: config.rootfs.clone(),
            hint: "",
        },
        source => RootfsError::Open {
            step,
            path: config.rootfs.clone(),
            source,
        },
    })?;
    create_dir("creating the staging directory", staging)?;
    let staging_fd = open(
        staging,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|source| RootfsError::Open {
        step: "opening the staging directory",
        path: staging.to_owned(),
        source,
    })?;
    let recursive = config.uid_map.is_some();
    let root = Root {
        path: staging.to_owned(),
        fd: staging_fd,
        new_api: mountapi::available(),
    };
    root.bind(
        step,
        &rootfs,
        Path::new("/"),
        recursive,
        Access::ReadOnly,
        0,
    )?;
    drop(rootfs);
    // From here on, the fd of the mounted root, not of the directory below.
    let root = Root {
        fd: open(
            staging,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|source| RootfsError::Open {
            step,
            path: staging.to_owned(),
            source,
        })?,
        ..root
    };

    // 3. Private kernel filesystems and scratch space.
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    root.mount_fs(
        "mounting /proc of the vassal's pid namespace",
        "/proc",
        "proc",
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )?;
    let tmp_opts = format!("size={},mode=1777", config.limits.tmp_size);
    root.mount_fs(
        "mounting the private /tmp",
        "/tmp",
        "tmpfs",
        nosuid_nodev,
        Some(&tmp_opts),
    )?;
    root.mount_fs(
        "mounting the private /run",
        "/run",
        "tmpfs",
        nosuid_nodev,
        Some("size=16m,mode=0755"),
    )?;
    root.open("building the private /dev", Path::new("/dev"))?;
    build_dev(&staging.join("dev"))?;

    // 4. Host paths hidden from the vassal (by default the host's /root;
    //    with a user namespace also the host's /sys, brought by MS_REC):
    //    directories under an empty read-only tmpfs, files under an empty
    //    read-only file.
    let sys = PathBuf::from("/sys");
    let extra = config.uid_map.is_some().then_some(&sys);
    let mut empty_file = None;
    for hidden in config.mask.iter().chain(extra) {
        let step = "masking a host path";
        let (target, is_dir) = root.open(step, hidden)?;
        if is_dir {
            do_mount(
                step,
                Some(Path::new("tmpfs")),
                &fd_path(&target),
                Some("tmpfs"),
                nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                Some("size=4k,mode=0755"),
            )?;
        } else {
            if empty_file.is_none() {
                empty_file = Some(make_empty_file()?);
            }
            if let Some(empty) = &empty_file {
                root.bind(step, empty, hidden, false, Access::ReadOnly, NOEXEC)?;
            }
        }
    }

    // 5. The operator's binds.
    for m in &config.mounts {
        bind(&root, m)?;
    }

    // 6. Enter it: pivot_root(".", ".") stacks the old root on the new
    //    one; detaching it leaves no path to the host's tree.
    std::env::set_current_dir(staging).map_err(|source| RootfsError::Create {
        step: "entering the new root",
        path: staging.to_owned(),
        source,
    })?;
    nix::unistd::pivot_root(".", ".").map_err(|source| RootfsError::Pivot {
        step: "pivot_root",
        source,
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|source| RootfsError::Pivot {
        step: "detaching the old root",
        source,
    })?;
    std::env::set_current_dir("/").map_err(|source| RootfsError::Create {
        step: "entering the new root",
        path: "/".into(),
        source,
    })?;
    Ok(())
}

/// An empty file, mode 0444, on a tiny tmpfs at [`MASK_SOURCE`] (in the
/// vassal's mount namespace, outside its new root: the vassal never sees
/// the original, only the read-only binds of it); an `O_PATH` fd of it.
fn make_empty_file() -> Result<OwnedFd, RootfsError> {
    let step = "making the empty file that masks files";
    let dir = Path::new(MASK_SOURCE);
    create_dir(step, dir)?;
    do_mount(
        step,
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,nr_inodes=4,mode=0755"),
    )?;
    let file = dir.join("empty");
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&file)
        .and_then(|f| {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o444))
        });
    created.map_err(|source| RootfsError::Create {
        step,
        path: file.clone(),
        source,
    })?;
    open(
        &file,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| RootfsError::Open {
        step,
        path: file,
        source,
    })
}

fn bind(root: &Root, m: &Mount) -> Result<(), RootfsError> {
    let step = "binding a [[mount]] source";
    let host = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| RootfsError::Open {
        step,
        path: "/".into(),
        source,
    })?;
    let Some((source, _)) = open_beneath(step, host.as_fd(), Path::new("/"), &m.source)? else {
        return Err(RootfsError::Missing {
            step,
            path: m.source.clone(),
            hint: "",
        });
    };
    if open_beneath(
        "binding a [[mount]] target",
        root.fd.as_fd(),
        &root.path,
        &m.target,
    )?
    .is_none()
    {
        return Err(RootfsError::Missing {
            step: "binding a [[mount]] target",
            path: m.target.clone(),
            hint:
                " in the vassal's root filesystem (it is read-only, so the target must exist there)",
        });
    }
    let access = if m.writable {
        Access::Writable
    } else {
        Access::ReadOnly
    };
    root.bind("binding a [[mount]]", &source, &m.target, true, access, 0)
}

/// A minimal /dev: a tmpfs holding binds of the harmless host nodes, its own
/// devpts (so ptys are private) and shm.
fn build_dev(dev: &Path) -> Result<(), RootfsError> {
    let step = "building the private /dev";
    do_mount(
        step,
        Some(Path::new("tmpfs")),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        std::fs::File::create(&target).map_err(|source| RootfsError::Create {
            step,
            path: target.clone(),
            source,
        })?;
        do_mount(
            step,
            Some(&Path::new("/dev").join(node)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        // A device node needs dev; nothing else of its mount is needed.
        remount_bind(
            step,
            &target,
            Access::ReadOnly,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        )?;
    }
    let pts = dev.join("pts");
    create_dir(step, &pts)?;
    do_mount(
        step,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    create_dir(step, &shm)?;
    do_mount(
        step,
        Some(Path::new("tmpfs")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64m,mode=1777"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        std::os::unix::fs::symlink(to, &path).map_err(|source| RootfsError::Create {
            step,
            path,
            source,
        })?;
    }
    // Read-only from here on: the vassal cannot add nodes or files to /dev.
    do_mount(
        step,
        None,
        dev,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_RDONLY,
        Some("size=64k,mode=0755"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_beneath_refuses_symlinks_anywhere_and_reports_missing_paths() {
        let base = std::env::temp_dir().join(format!("vassal-rootfs-test-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::fs::write(base.join("a/b/file"), "").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("a/link")).unwrap();
        std::os::unix::fs::symlink("b", base.join("a/rel")).unwrap();
        let fd = open(&base, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let step = "test";
        let open = |p: &str| open_beneath(step, fd.as_fd(), &base, Path::new(p));
        assert!(matches!(open("/a/b"), Ok(Some((_, true)))));
        assert!(matches!(open("/a/b/file"), Ok(Some((_, false)))));
        assert!(matches!(open("/"), Ok(Some((_, true)))));
        assert!(matches!(open("/a/missing/x"), Ok(None)));
        for (path, link) in [
            ("/a/link", "a/link"),
            ("/a/link/passwd", "a/link"),
            ("/a/rel/file", "a/rel"),
        ] {
            match open(path) {
                Err(RootfsError::Symlink { link: l, .. }) => assert_eq!(l, base.join(link)),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(matches!(open("/a/../a"), Err(RootfsError::Open { .. })));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
