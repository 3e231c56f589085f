//! The kernel's mount API beside mount(2): `open_tree`, `mount_setattr` and
//! `move_mount` (neither nix nor rustix wraps `mount_setattr`), and the
//! mount table walk used instead on kernels without them.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Read-only, nosuid and nodev: what every mount meant read-only carries.
pub const READ_ONLY: u64 = libc::MOUNT_ATTR_RDONLY | NOSUID_NODEV;
/// What every mount of a vassal carries, writable ones included.
pub const NOSUID_NODEV: u64 = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
/// Programs may not run from it either (masks).
pub const NOEXEC: u64 = libc::MOUNT_ATTR_NOEXEC;

const EMPTY: &CStr = c"";

fn check(rc: libc::c_long) -> nix::Result<libc::c_long> {
    if rc < 0 {
        Err(nix::Error::last())
    } else {
        Ok(rc)
    }
}

/// Whether this kernel has `mount_setattr(2)` (5.12; `open_tree` and
/// `move_mount` came with 5.2). A call with no valid argument answers
/// ENOSYS only when the system call itself is missing.
pub fn available() -> bool {
    // SAFETY: mount_setattr with a bad fd, a null path and a null attr
    // pointer of size 0 reads and writes no memory: it fails on the
    // arguments (or with ENOSYS).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<libc::mount_attr>(),
            0usize,
        )
    };
    !(rc < 0 && nix::Error::last() == nix::Error::ENOSYS)
}

/// A detached copy of the mount tree at `source` (an `O_PATH` fd): with
/// `recursive`, every mount below it comes along. Nothing sees it until
/// [`attach`] puts it somewhere.
pub fn clone_tree(source: BorrowedFd<'_>, recursive: bool) -> nix::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: open_tree reads the NUL-terminated empty path and returns a
    // new fd we take ownership of.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            EMPTY.as_ptr(),
            flags,
        )
    })?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sets `set` and clears `clear` on the mount `fd` refers to (and with
/// `recursive` on every mount below it), and makes them all private. The
/// kernel applies all or nothing. Flags the kernel locked (a user
/// namespace's inherited ro, nosuid, nodev) can be added, not cleared.
pub fn set_attrs(fd: BorrowedFd<'_>, recursive: bool, set: u64, clear: u64) -> nix::Result<()> {
    // MS_PRIVATE is a c_ulong: 32 bits wide on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation: libc::MS_PRIVATE as u64,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: the path is a valid empty C string and `attr` a valid
    // mount_attr whose size we pass; the kernel only reads them.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// Mounts the detached `tree` on the file or directory `target` (an
/// `O_PATH` fd): the exact inode we opened, whatever its path now says.
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are valid empty C strings; both fds are ours.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            EMPTY.as_ptr(),
            target.as_raw_fd(),
            EMPTY.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// The mount points of the mount tree on `top` in a `/proc/self/mountinfo`
/// text: the mount on it last (the one visible there) and its descendants,
/// in the table's order (a parent before its children). Mounts at paths
/// below `top` that it covers (older mounts of the parent) are not in it.
pub fn mount_points_below(mountinfo: &str, top: &Path) -> Vec<PathBuf> {
    let entries: Vec<(&str, &str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?;
            let parent = f.next()?;
            let point = f.nth(2)?;
            Some((id, parent, PathBuf::from(unescape(point))))
        })
        .collect();
    let Some(top_id) = entries.iter().rev().find(|e| e.2 == top).map(|e| e.0) else {
        return Vec::new();
    };
    let mut tree = vec![top_id];
    let mut points = Vec::new();
    for (id, parent, point) in &entries {
        if *id == top_id || tree.contains(parent) {
            if *id != top_id {
                tree.push(id);
            }
            points.push(point.clone());
        }
    }
    points
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_finds_the_top_and_everything_below_it_only() {
        let table = "\
64 42 254:0 / /run/vassal/.root ro,relatime - ext4 /dev/vda rw
65 64 0:25 / /run/vassal/.root/media/a\\040b rw,relatime - tmpfs tmpfs rw
66 65 0:26 / /run/vassal/.root/media/a\\040b/deep rw,relatime - tmpfs tmpfs rw
67 42 0:27 / /run/vassal/.rootfs rw,relatime - tmpfs tmpfs rw
68 42 0:28 / /run rw,relatime - tmpfs tmpfs rw
69 64 0:29 / /run/vassal/.root/mnt/covered rw,relatime - tmpfs tmpfs rw
70 64 0:30 / /run/vassal/.root/mnt rw,relatime - ext4 /dev/vda rw
71 70 0:31 / /run/vassal/.root/mnt/sub rw,relatime - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_below(table, Path::new("/run/vassal/.root/media")),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            mount_points_below(table, Path::new("/run/vassal/.root/media/a b")),
            [
                PathBuf::from("/run/vassal/.root/media/a b"),
                PathBuf::from("/run/vassal/.root/media/a b/deep"),
            ]
        );
        // The bind on /mnt covers an older mount below it: not its tree.
        assert_eq!(
            mount_points_below(table, Path::new("/run/vassal/.root/mnt")),
            [
                PathBuf::from("/run/vassal/.root/mnt"),
                PathBuf::from("/run/vassal/.root/mnt/sub"),
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
