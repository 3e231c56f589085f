//! Reaping what dead launchers left: a launcher killed with SIGKILL runs no
//! destructor, so its state file and its (by then empty: the vassal died
//! with it, by PDEATHSIG) cgroups stay. Every launch reaps them, and so
//! does `vassal-launch gc`, which the systemd units run at start.
//!
//! A state file is dead when its launcher pid no longer runs with the
//! recorded start time; a cgroup is reaped only when no live state file
//! claims its name and it holds no process. Both run under the state
//! directory's lock, so a launch in progress is never reaped.

use crate::cgroup::{self, CgroupError};
use crate::state;
use std::path::{Path, PathBuf};

/// A reap step that failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Taking the state directory's lock failed.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// Reading the mount table failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// One thing the reap looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reaped {
    /// A state file removed: its launcher (this pid) is gone.
    State {
        /// The file.
        path: PathBuf,
        /// The dead launcher's pid.
        launcher_pid: i32,
    },
    /// A state file its launcher never finished writing, removed.
    Unfinished {
        /// The temporary file.
        path: PathBuf,
    },
    /// An empty cgroup directory of no live vassal, removed.
    Cgroup {
        /// The directory.
        path: PathBuf,
    },
    /// Left in place, and why.
    Kept {
        /// The state file or cgroup directory.
        path: PathBuf,
        /// Why it stays.
        why: String,
    },
}

impl std::fmt::Display for Reaped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reaped::State { path, launcher_pid } => write!(
                f,
                "removed {} (its launcher, pid {launcher_pid}, is gone)",
                path.display()
            ),
            Reaped::Unfinished { path } => write!(
                f,
                "removed {} (a record its launcher never finished writing)",
                path.display()
            ),
            Reaped::Cgroup { path } => {
                write!(f, "removed {} (empty, no live vassal)", path.display())
            }
            Reaped::Kept { path, why } => write!(f, "kept {}: {why}", path.display()),
        }
    }
}

/// Reaps dead launchers' state files and empty cgroups, taking the state
/// directory's lock; returns what it removed and what it kept.
pub fn gc(mountinfo: &Path) -> Result<Vec<Reaped>, GcError> {
    let _lock = state::lock()?;
    reap_locked(mountinfo)
}

/// [`gc`] for a caller already holding [`state::lock`].
pub fn reap_locked(mountinfo: &Path) -> Result<Vec<Reaped>, GcError> {
    let dirs = cgroup::all_vassal_dirs(mountinfo)?;
    let busy_dir = |name: &str| {
        dirs.iter()
            .find(|(n, d)| n == name && cgroup::busy(d))
            .map(|(_, d)| d.clone())
    };
    let mut done = Vec::new();
    let mut live: Vec<String> = Vec::new();
    for (path, name, record) in state::records() {
        let Some(record) = record else {
            done.push(Reaped::Kept {
                path,
                why: "not a state file vassal-launch can read".into(),
            });
            live.push(name);
            continue;
        };
        if record.launcher_alive() {
            live.push(name);
            continue;
        }
        if let Some(dir) = busy_dir(&name) {
            // Its launcher is gone but processes remain: nothing of it is
            // removed while they run.
            done.push(Reaped::Kept {
                path,
                why: format!(
                    "launcher pid {} is gone but {} has processes",
                    record.launcher_pid,
                    dir.display()
                ),
            });
            live.push(name);
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(Reaped::State {
                path,
                launcher_pid: record.launcher_pid,
            }),
            Err(e) => {
                done.push(Reaped::Kept {
                    path,
                    why: format!("removing it failed: {e}"),
                });
                live.push(name);
            }
        }
    }
    // A launcher killed between writing its record and renaming it into
    // place leaves `<name>.tmp`.
    if let Ok(entries) = std::fs::read_dir(state::STATE_DIR) {
        for path in entries.flatten().map(|e| e.path()) {
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".tmp"))
            else {
                continue;
            };
            if !live.iter().any(|l| l == name) && std::fs::remove_file(&path).is_ok() {
                done.push(Reaped::Unfinished { path });
            }
        }
    }
    for (name, dir) in dirs {
        if live.contains(&name) {
            continue;
        }
        match cgroup::remove_empty(&dir) {
            Ok(()) => done.push(Reaped::Cgroup { path: dir }),
            Err(e) => done.push(Reaped::Kept {
                path: dir,
                why: e.to_string(),
            }),
        }
    }
    Ok(done)
}
