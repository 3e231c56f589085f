//! Dropping every privilege before the customer's code runs, in the order
//! of docs/design.md ("Launch order", step 4): bounding set, groups, gid,
//! uid, no_new_privs, capability sets, rlimits, stray fds. Seccomp comes
//! after all of these, right before execve (see `seccomp.rs`).

use nix::unistd::{Gid, Uid};

/// A drop step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// A syscall of the drop sequence failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being dropped.
        step: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn check(step: &'static str, rc: libc::c_int) -> Result<(), DropError> {
    if rc < 0 {
        return Err(DropError::Step {
            step,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Runs the drop sequence: after it the process is `uid`/`gid` with no
/// supplementary groups (see [`drop_to`]'s note on user namespaces), no capabilities in any set (bounding and ambient
/// included), no_new_privs, and the given open-file and file-size limits; every fd above
/// stderr is closed.
pub fn drop_to(
    uid: u32,
    gid: u32,
    nofile: u64,
    file_size: Option<u64>,
    user_namespace: bool,
) -> Result<(), DropError> {
    // Bounding set first: dropping from it needs CAP_SETPCAP, gone after setuid.
    for cap in 0..=last_cap() {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(DropError::Step {
                step: "dropping the capability bounding set",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // SAFETY: prctl with integer arguments.
    check("clearing ambient capabilities", unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    // In a user namespace setgroups is denied (as it must be for an
    // unprivileged map); the outer launcher cleared its own groups before
    // the clone, so there are none to drop.
    if !user_namespace {
        nix::unistd::setgroups(&[]).map_err(|e| DropError::Step {
            step: "clearing supplementary groups",
            source: e.into(),
        })?;
    }
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    nix::unistd::setresgid(g, g, g).map_err(|e| DropError::Step {
        step: "setting the gid",
        source: e.into(),
    })?;
    nix::unistd::setresuid(u, u, u).map_err(|e| DropError::Step {
        step: "setting the uid",
        source: e.into(),
    })?;
    // SAFETY: prctl with integer arguments.
    check("setting no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    clear_capabilities()?;
    let limit = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: limit is a valid rlimit for the call's duration.
    check("setting RLIMIT_NOFILE", unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
    })?;
    // Beyond it a write fails with EFBIG and raises SIGXFSZ.
    if let Some(bytes) = file_size {
        let fsize = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: fsize is a valid rlimit for the call's duration.
        check("setting RLIMIT_FSIZE", unsafe {
            libc::setrlimit(libc::RLIMIT_FSIZE, &fsize)
        })?;
    }
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    check("setting RLIMIT_CORE", unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core)
    })?;
    close_stray_fds()
}

/// Empties the effective, permitted and inheritable sets (a uid 0 inside a
/// user namespace would otherwise keep them across setuid).
pub fn clear_capabilities() -> Result<(), DropError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a v3 header and two data structs, both alive
    // and laid out as the kernel's __user_cap_header/data_struct.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    check("clearing the capability sets", rc as libc::c_int)
}

/// Closes every descriptor above stderr.
pub fn close_stray_fds() -> Result<(), DropError> {
    // SAFETY: close_range on a range of our own descriptors; nothing in
    // this process uses them afterwards.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    check("closing stray file descriptors", rc as libc::c_int)
}
