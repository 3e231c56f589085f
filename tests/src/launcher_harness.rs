//! Running `vassal-launch` from tests: unique vassal names, vassal files in
//! temporary directories, and the JSON report.

use crate::{binary, unique};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A uid/gid no real user has, for the project's user in tests.
pub const PROJECT_UID: u32 = 47_001;

/// A fresh vassal name (lowercase, unique per test process and call).
pub fn name(prefix: &str) -> String {
    unique(prefix)
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/vassal-launch-test-<unique>`, mode 0755.
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("vassal-launch-test-{}", unique("lt")));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `file` inside it and returns the path.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vassal-launch ARGS...`, stdin closed, output captured.
pub fn launch(args: &[&str]) -> Output {
    crate::require_root();
    Command::new(binary("vassal-launch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running vassal-launch")
}

/// `vassal-launch run --name NAME --uid PROJECT_UID [extra] -- sh -c SCRIPT`.
pub fn sh(name: &str, extra: &[&str], script: &str) -> Output {
    let uid = PROJECT_UID.to_string();
    let mut args = vec!["run", "--name", name, "--uid", &uid];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    launch(&args)
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit code, panicking (with the output) when killed by a signal.
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("vassal-launch was killed: {out:?}"))
}

/// Reads a `--report` file.
pub fn report(path: &std::path::Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Whether any cgroup directory or state file of vassal `name` is left.
pub fn leftovers(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for base in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpuacct",
        "/sys/fs/cgroup/unified",
    ] {
        let p = PathBuf::from(base).join("vassal").join(name);
        if p.exists() {
            found.push(p);
        }
    }
    let state = PathBuf::from("/run/vassal/launch").join(format!("{name}.json"));
    if state.exists() {
        found.push(state);
    }
    found
}

/// Spawns `vassal-launch ARGS...` with stdout piped and waits for the first
/// line the vassal prints (its "I am up" signal); returns the running
/// process (killed on drop), that line and the rest of its stdout.
pub fn spawn_until_line(
    args: &[&str],
) -> (
    crate::KillOnDrop,
    String,
    std::io::BufReader<std::process::ChildStdout>,
) {
    crate::require_root();
    let mut child = crate::KillOnDrop::spawn(
        Command::new(binary("vassal-launch"))
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null()),
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    (child, line, stdout)
}
