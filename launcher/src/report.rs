//! What `--report FILE` writes when a vassal ends. The events module
//! reads it to report the end's events; this module knows nothing of them,
//! so the dependency points one way (events above report).

use crate::cgroup::Usage;
use crate::config::VassalConfig;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// The end of a vassal, as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The vassal's name.
    pub name: String,
    /// The command's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, when it was killed.
    pub signal: Option<i32>,
    /// Wall time from launch to end.
    pub wall_time_ms: u64,
    /// CPU time of every process of the vassal.
    pub cpu_time_ms: Option<u64>,
    /// Highest memory use.
    pub peak_memory_bytes: Option<u64>,
    /// Processes killed by the kernel for the memory limit.
    pub oom_kills: u64,
    /// Forks refused by the pids limit.
    pub pids_limit_hits: u64,
    /// What killed the command: "memory", "wall_clock", "seccomp", or null.
    pub killed_by: Option<&'static str>,
}

impl Report {
    /// Assembles the report from the supervisor's word and the cgroup.
    pub fn new(
        config: &VassalConfig,
        code: Option<i32>,
        signal: Option<i32>,
        wall_clock: bool,
        wall: Duration,
        usage: Usage,
    ) -> Report {
        let killed_by = if wall_clock {
            Some("wall_clock")
        } else if signal == Some(libc::SIGSYS) {
            Some("seccomp")
        } else if usage.oom_kills > 0
            && (signal == Some(libc::SIGKILL) || code == Some(128 + libc::SIGKILL))
        {
            Some("memory")
        } else {
            None
        };
        Report {
            name: config.name.clone(),
            exit_code: code,
            signal,
            wall_time_ms: wall.as_millis() as u64,
            cpu_time_ms: usage.cpu_time_ms,
            peak_memory_bytes: usage.peak_memory_bytes,
            oom_kills: usage.oom_kills,
            pids_limit_hits: usage.pids_limit_hits,
            killed_by,
        }
    }

    /// vassal-launch's exit status: the command's code, or 128 + signal.
    pub fn status(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 1,
        }
    }

    /// Writes the report as JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n")
    }
}
