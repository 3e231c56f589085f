//! The running-vassal registry: `/run/vassal/launch/<name>.json`, holding
//! what `vassal-launch enter` needs. It also keeps two vassals of one name
//! from running at once.

use crate::config::VassalConfig;
use crate::seccomp::Filter;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
}

/// A claimed name; its file is removed when dropped.
pub struct State {
    path: PathBuf,
    record: Record,
}

fn path_of(name: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{name}.json"))
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
    /// Claims `config.name`: refused while a live vassal holds it; a stale
    /// file (its supervisor gone) is taken over.
    pub fn claim(config: &VassalConfig) -> Result<State, StateError> {
        let path = path_of(&config.name);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(old) = serde_json::from_str::<Record>(&text) {
                if alive(old.launcher_pid) && old.launcher_pid != std::process::id() as i32 {
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
