//! The running-vassal registry: `/run/vassal/launch/<name>.json`, holding
//! what `vassal-launch enter` needs. It also keeps two vassals of one name
//! from running at once, and tells a live vassal's file from one a killed
//! launcher left (its pid and start time, as a pid alone may be reused).

use crate::config::{map_to_host, VassalConfig};
use crate::seccomp::Filter;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Directory of the state files.
pub const STATE_DIR: &str = "/run/vassal/launch";

/// A state-file step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A vassal of this name runs already.
    #[error("a vassal named {name} is already running (supervisor pid {pid}, state file {path})")]
    Running {
        /// The name.
        name: String,
        /// Its supervisor's pid.
        pid: i32,
        /// The state file.
        path: PathBuf,
    },
    /// No vassal of this name runs.
    #[error("no running vassal named {name} (no state file {path})")]
    NotRunning {
        /// The name.
        name: String,
        /// The state file looked for.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("{step} {path}: {message}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

/// What a running vassal's state file records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The vassal's name.
    pub name: String,
    /// Host pid of its supervisor (pid 1 inside).
    pub pid: i32,
    /// Host pid of the outer launcher.
    pub launcher_pid: i32,
    /// The project's uid inside the vassal.
    pub uid: u32,
    /// The project's gid inside the vassal.
    pub gid: u32,
    /// Whether it has a user namespace.
    pub user_namespace: bool,
    /// Its RLIMIT_NOFILE.
    pub nofile: u64,
    /// Its RLIMIT_FSIZE (`limits.file_size`); absent from older records.
    #[serde(default)]
    pub file_size: Option<u64>,
    /// The seccomp filter its command runs under (`None`: profile "none"),
    /// compiled programs that `enter` installs as they are. A required
    /// field: a record without it is refused, not entered unfiltered.
    #[serde(deserialize_with = "Option::deserialize")]
    pub seccomp: Option<Filter>,
    /// Start time of the outer launcher (clock ticks since boot, field 22 of
    /// /proc/PID/stat); 0 in files written before it was recorded.
    #[serde(default)]
    pub launcher_start: u64,
    /// The host uid the project's processes run as, the one the kernel's
    /// per-user counts are charged to (the mapped uid in a user namespace).
    #[serde(default)]
    pub host_uid: Option<u32>,
}

impl Record {
    /// Whether the launcher that wrote this record still runs: its pid is
    /// alive and has the recorded start time (a file older than that field
    /// needs the pid to still be a `vassal-launch`).
    pub fn launcher_alive(&self) -> bool {
        if !alive(self.launcher_pid) {
            return false;
        }
        if self.launcher_start != 0 {
            return start_time(self.launcher_pid) == Some(self.launcher_start);
        }
        std::fs::read_to_string(format!("/proc/{}/comm", self.launcher_pid))
            .is_ok_and(|c| c.trim_end() == "vassal-launch")
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// /proc/PID/stat), `None` when it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')'. Field 3 is the first after it; 22 the 20th.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The host uid the processes of `config` run as.
pub fn host_uid(config: &VassalConfig) -> u32 {
    match &config.uid_map {
        Some(map) => map_to_host(map, config.uid).unwrap_or(config.uid),
        None => config.uid,
    }
}

/// A claimed name; its file is removed when dropped.
pub struct State {
    path: PathBuf,
    record: Record,
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{name}.json"))
}

/// An exclusive lock on the state directory, held while a launch claims a
/// name and creates its cgroup and while dead launchers' leftovers are
/// reaped, so that a reap never removes what a launch is making. Released
/// when dropped; take it before any clone (a child would inherit it).
pub struct Lock(#[allow(dead_code)] OwnedFd);

/// Takes the state directory's lock, creating the directory.
pub fn lock() -> Result<Lock, StateError> {
    let io = |step: &'static str, path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| StateError::Io {
            step,
            path,
            message: e.to_string(),
        }
    };
    std::fs::create_dir_all(STATE_DIR).map_err(io("creating", Path::new(STATE_DIR)))?;
    let path = Path::new(STATE_DIR).join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening", &path))?;
    let fd = OwnedFd::from(file);
    // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::LOCK_EX) };
    if rc < 0 {
        return Err(io("locking", &path)(std::io::Error::last_os_error()));
    }
    Ok(Lock(fd))
}

/// Every state file in the directory: its path, the name it is for, and
/// its record when it parses.
pub fn records() -> Vec<(PathBuf, String, Option<Record>)> {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path
                .to_str()?
                .strip_suffix(".json")?
                .rsplit('/')
                .next()?
                .to_owned();
            let record = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<Record>(&t).ok());
            Some((path, name, record))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// The live vassals other than `config`'s whose processes run as the same
/// host uid (and so share its per-user kernel counts).
pub fn sharing_uid(config: &VassalConfig) -> Vec<Record> {
    let uid = host_uid(config);
    records()
        .into_iter()
        .filter_map(|(_, _, r)| r)
        .filter(|r| r.name != config.name && r.launcher_alive())
        .filter(|r| {
            r.host_uid
                .or((!r.user_namespace).then_some(r.uid))
                .is_some_and(|u| u == uid)
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Reads the record of a running vassal.
pub fn lookup(name: &str) -> Result<Record, StateError> {
    let path = path_of(name);
    let text = std::fs::read_to_string(&path).map_err(|_| StateError::NotRunning {
        name: name.into(),
        path: path.clone(),
    })?;
    let record: Record = serde_json::from_str(&text).map_err(|e| StateError::Io {
        step: "parsing",
        path: path.clone(),
        message: e.to_string(),
    })?;
    if !alive(record.pid) {
        return Err(StateError::NotRunning {
            name: name.into(),
            path,
        });
    }
    Ok(record)
}

fn write_record(path: &std::path::Path, record: &Record) -> Result<(), StateError> {
    let text = serde_json::to_string(record).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| StateError::Io {
            step: "writing",
            path: path.to_owned(),
            message: e.to_string(),
        })
}

impl State {
    /// Claims `config.name`: refused while a live launcher holds it; a
    /// stale file (its launcher gone) is taken over.
    pub fn claim(config: &VassalConfig) -> Result<State, StateError> {
        let path = path_of(&config.name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(old) = serde_json::from_str::<Record>(&text) {
                if old.launcher_alive() && old.launcher_pid != std::process::id() as i32 {
                    return Err(StateError::Running {
                        name: config.name.clone(),
                        pid: old.pid,
                        path,
                    });
                }
            }
        }
        std::fs::create_dir_all(STATE_DIR).map_err(|e| StateError::Io {
            step: "creating",
            path: STATE_DIR.into(),
            message: e.to_string(),
        })?;
        let state = State {
            path,
            record: Record {
                name: config.name.clone(),
                pid: 0,
                launcher_pid: std::process::id() as i32,
                uid: config.uid,
                gid: config.gid,
                user_namespace: config.uid_map.is_some(),
                nofile: config.limits.nofile,
                file_size: config.limits.file_size,
                seccomp: config.filter.clone(),
                launcher_start: start_time(std::process::id() as i32).unwrap_or(0),
                host_uid: Some(host_uid(config)),
            },
        };
        state.write()?;
        Ok(state)
    }

    fn write(&self) -> Result<(), StateError> {
        write_record(&self.path, &self.record)
    }

    /// Records the supervisor's pid once it exists.
    pub fn record(&self, pid: i32) -> Result<(), StateError> {
        let mut record = self.record.clone();
        record.pid = pid;
        write_record(&self.path, &record)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_live_only_with_its_launchers_pid_and_start_time() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(start > 0);
        let record = |launcher_pid, launcher_start| Record {
            name: "a".into(),
            pid: 0,
            launcher_pid,
            uid: 1,
            gid: 1,
            user_namespace: false,
            nofile: 1,
            file_size: None,
            seccomp: None,
            launcher_start,
            host_uid: Some(1),
        };
        assert!(record(me, start).launcher_alive());
        // The pid reused by another process: another start time.
        assert!(!record(me, start + 1).launcher_alive());
        // No start time recorded: the pid must be a vassal-launch.
        assert!(!record(me, 0).launcher_alive());
        assert!(!record(0, start).launcher_alive());
        assert_eq!(start_time(-5), None);
    }
}
