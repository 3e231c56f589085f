//! The vassal's filesystem view, built inside its new mount namespace and
//! entered with pivot_root. The order is the one in docs/design.md
//! ("Launch order", step 2); [`build`] follows it line by line.

use crate::config::{Mount, VassalConfig};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::path::{Path, PathBuf};

/// Where the new root is assembled. Only ever mounted on inside the
/// vassal's own (private) mount namespace, so vassals do not collide.
pub const STAGING: &str = "/run/vassal/.root";

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

/// Remounts the bind at `target` read-only (or not), keeping the flags the
/// kernel has locked on it (a user namespace may not clear nosuid, nodev,
/// noexec or the atime flags of a mount it inherited), and adding nosuid and
/// nodev: nothing in a vassal needs setuid files or device nodes from disk.
fn remount_bind(step: &'static str, target: &Path, read_only: bool) -> Result<(), RootfsError> {
    let current = statvfs(target).map_err(|source| RootfsError::Mount {
        step,
        target: target.to_owned(),
        source,
    })?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let f = current.flags();
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    for (have, keep) in [
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

/// Builds the vassal's root under [`STAGING`] and pivots into it. Runs in
/// the supervisor, inside the new mount and pid namespaces.
pub fn build(config: &VassalConfig) -> Result<(), RootfsError> {
    let root = Path::new(STAGING);

    // 1. Nothing we mount may propagate back to the host.
    do_mount(
        "making / private",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    // 2. The root filesystem, bound (not recursively: the host's other
    //    filesystems stay out) onto the staging mount point, then read-only.
    if !config.rootfs.is_dir() {
        return Err(RootfsError::Missing {
            step: "binding the root filesystem",
            path: config.rootfs.clone(),
            hint: "",
        });
    }
    create_dir("creating the staging directory", root)?;
    // With a user namespace, the kernel locks the host's mounts together:
    // a bind must take the submounts along (MS_REC), and the ones that
    // matter are covered below (/proc, /dev, /run, /tmp, and /sys masked).
    let rec = if config.uid_map.is_some() {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    do_mount(
        "binding the root filesystem",
        Some(&config.rootfs),
        root,
        None,
        MsFlags::MS_BIND | rec,
        None,
    )?;
    remount_bind("making the root filesystem read-only", root, true)?;

    // 3. Private kernel filesystems and scratch space.
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    do_mount(
        "mounting /proc of the vassal's pid namespace",
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        nosuid_nodev | MsFlags::MS_NOEXEC,
        None,
    )?;
    let tmp_opts = format!("size={},mode=1777", config.limits.tmp_size);
    do_mount(
        "mounting the private /tmp",
        Some(Path::new("tmpfs")),
        &root.join("tmp"),
        Some("tmpfs"),
        nosuid_nodev,
        Some(&tmp_opts),
    )?;
    do_mount(
        "mounting the private /run",
        Some(Path::new("tmpfs")),
        &root.join("run"),
        Some("tmpfs"),
        nosuid_nodev,
        Some("size=16m,mode=0755"),
    )?;
    build_dev(&root.join("dev"))?;

    // 4. Host paths hidden from the vassal (by default the host's /root;
    //    with a user namespace also the host's /sys, brought by MS_REC).
    let sys = PathBuf::from("/sys");
    let extra = config.uid_map.is_some().then_some(&sys);
    for hidden in config.mask.iter().chain(extra) {
        let target = inside(root, hidden);
        if target.is_dir() {
            do_mount(
                "masking a host path",
                Some(Path::new("tmpfs")),
                &target,
                Some("tmpfs"),
                nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                Some("size=4k,mode=0755"),
            )?;
        }
    }

    // 5. The operator's binds.
    for m in &config.mounts {
        bind(root, m)?;
    }

    // 6. Enter it: pivot_root(".", ".") stacks the old root on the new
    //    one; detaching it leaves no path to the host's tree.
    std::env::set_current_dir(root).map_err(|source| RootfsError::Create {
        step: "entering the new root",
        path: root.to_owned(),
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

fn bind(root: &Path, m: &Mount) -> Result<(), RootfsError> {
    if !m.source.exists() {
        return Err(RootfsError::Missing {
            step: "binding a [[mount]] source",
            path: m.source.clone(),
            hint: "",
        });
    }
    let target = inside(root, &m.target);
    if !target.exists() {
        return Err(RootfsError::Missing {
            step: "binding a [[mount]] target",
            path: m.target.clone(),
            hint:
                " in the vassal's root filesystem (it is read-only, so the target must exist there)",
        });
    }
    do_mount(
        "binding a [[mount]]",
        Some(&m.source),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    remount_bind("remounting a [[mount]]", &target, !m.writable)
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
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
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
        MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=64k,mode=0755"),
    )
}
