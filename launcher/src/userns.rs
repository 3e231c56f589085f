//! Who a vassal's user namespace charges. The kernel counts inotify
//! instances and watches, fanotify groups and marks, namespaces and POSIX
//! message queue bytes per (user namespace, uid), and charges each count
//! again, level by level, to the *owner* of every enclosing user namespace
//! (kernel/ucount.c). A user namespace created by root charges root: one
//! vassal holding 128 inotify instances left host root none. So the
//! launcher creates the namespace with its effective uid and gid set to the
//! vassal's host uid and gid ([`as_owner`]): the counts land on the
//! vassal's own host identity, bounded there by the host's per-user limits.
//! Inside, the namespace's own limits (`/proc/sys/user`, which start
//! unlimited) are set to the host's ([`Limits`]).

/// A step that failed.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// Switching the effective ids around the clone failed.
    #[error("{step}: {source}")]
    Ids {
        /// Which switch.
        step: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a per-namespace limit failed.
    #[error("setting the user namespace's limit {path}: {source}")]
    Limit {
        /// The /proc/sys/user file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the per-user-namespace limits live.
const DIR: &str = "/proc/sys/user";

/// The host's per-user limits, read before the clone (inside, the same
/// files show the new namespace's).
#[derive(Debug, Clone, Default)]
pub struct Limits(Vec<(String, String)>);

impl Limits {
    /// Reads every `/proc/sys/user/max_*` of the current namespace.
    pub fn of_host() -> Limits {
        let Ok(entries) = std::fs::read_dir(DIR) else {
            return Limits::default();
        };
        Limits(
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let value = std::fs::read_to_string(e.path()).ok()?;
                    Some((name, value.trim().to_owned()))
                })
                .collect(),
        )
    }

    /// Writes them as the limits of the calling process's user namespace;
    /// run by the namespace's first process, which holds CAP_SYS_RESOURCE
    /// in it (the customer's processes do not, so they cannot raise them).
    pub fn apply(&self) -> Result<(), UsernsError> {
        for (name, value) in &self.0 {
            let path = format!("{DIR}/{name}");
            std::fs::write(&path, value).map_err(|source| UsernsError::Limit { path, source })?;
        }
        Ok(())
    }
}

fn ids(step: &'static str, rc: libc::c_int) -> Result<(), UsernsError> {
    if rc < 0 {
        return Err(UsernsError::Ids {
            step,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `clone` with the effective uid and gid set to `uid` and `gid`, so
/// that a user namespace it creates is owned by them, then restores root.
/// The real and saved ids stay 0, so the switch back needs no privilege;
/// the launcher is single-threaded, so no other thread runs meanwhile.
pub fn as_owner<T>(uid: u32, gid: u32, clone: impl FnOnce() -> T) -> Result<T, UsernsError> {
    // -1: leave that id as it is.
    let keep = u32::MAX;
    // The gid first: changing it needs CAP_SETGID, gone with euid != 0.
    // SAFETY: setresgid with integer arguments.
    let rc = unsafe { libc::setresgid(keep, gid, keep) };
    ids("setting the effective gid to the vassal's (setresgid)", rc)?;
    // SAFETY: setresuid with integer arguments.
    let rc = unsafe { libc::setresuid(keep, uid, keep) };
    if let Err(e) = ids("setting the effective uid to the vassal's (setresuid)", rc) {
        // SAFETY: setresgid with integer arguments.
        unsafe { libc::setresgid(keep, 0, keep) };
        return Err(e);
    }
    let out = clone();
    // Back to root: euid 0 again restores the effective capabilities from
    // the permitted set, which a change of the effective uid alone keeps.
    // SAFETY: setresuid with integer arguments.
    let rc = unsafe { libc::setresuid(keep, 0, keep) };
    ids("restoring the effective uid 0 (setresuid)", rc)?;
    // SAFETY: setresgid with integer arguments.
    let rc = unsafe { libc::setresgid(keep, 0, keep) };
    ids("restoring the effective gid 0 (setresgid)", rc)?;
    Ok(out)
}
