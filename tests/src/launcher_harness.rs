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

/// `vassal-launch run --config FILE --report REPORT` (the report in
/// `dir`): the output and the report.
pub fn run_reported(dir: &TempDir, file: &std::path::Path) -> (Output, serde_json::Value) {
    let rep = dir.0.join("report.json");
    let out = launch(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    let r = report(&rep);
    (out, r)
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
        "/sys/fs/cgroup/blkio",
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

/// Forks the pids limit of running vassal `name` has refused so far (its
/// cgroup's `pids.events`, v2 or v1), 0 while there is no such cgroup.
pub fn pids_limit_hits(name: &str) -> u64 {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/pids"]
        .iter()
        .filter_map(|base| {
            let path = PathBuf::from(base)
                .join("vassal")
                .join(name)
                .join("pids.events");
            std::fs::read_to_string(path).ok()
        })
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or(0)
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

/// Writes the vassal file `v.toml` in `dir`: `name`, `command` (each
/// argument a TOML string), `uid = PROJECT_UID`, then `rest` verbatim
/// (tables such as `[limits]`, `[network]`, `[[mount]]`); returns its path.
pub fn vassal_file(dir: &TempDir, name: &str, command: &[&str], rest: &str) -> PathBuf {
    let command: Vec<String> = command.iter().map(|a| toml_string(a)).collect();
    dir.write(
        "v.toml",
        &format!(
            "name = \"{name}\"\ncommand = [{}]\nuid = {PROJECT_UID}\n{rest}",
            command.join(", ")
        ),
    )
}

/// `s` as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `[network]` table of a vassal at `address` attached to the router
/// listening on `socket`.
pub fn network_table(socket: &std::path::Path, address: std::net::Ipv4Addr) -> String {
    format!(
        "[network]\nrouter = {}\naddress = \"{address}\"\n",
        toml_string(&socket.display().to_string())
    )
}

/// `run --name NAME --uid PROJECT_UID --address ADDRESS --router SOCKET`:
/// the arguments of a networked `vassal-launch run`, before `--` and the
/// command.
pub fn network_run_args(
    name: &str,
    socket: &std::path::Path,
    address: std::net::Ipv4Addr,
) -> Vec<String> {
    vec![
        "run".into(),
        "--name".into(),
        name.into(),
        "--uid".into(),
        PROJECT_UID.to_string(),
        "--address".into(),
        address.to_string(),
        "--router".into(),
        socket.display().to_string(),
    ]
}

/// The host pid of a running vassal's supervisor (pid 1 inside), from its
/// state file; `None` until the launcher has recorded it.
pub fn supervisor_pid(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/run/vassal/launch/{name}.json")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state["pid"].as_u64().filter(|&p| p > 0).map(|p| p as u32)
}

/// Runs `argv` in the network namespace of process `pid` (`nsenter -n`);
/// whether it succeeded.
pub fn in_netns_of(pid: u32, argv: &[&str]) -> bool {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "--"])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `vassal-launch` running in the background, its stderr in a file.
/// Dropping it stops it as an operator would (SIGTERM, which the launcher
/// forwards and then cleans up after), and kills it if it has not ended
/// within 5 s, so a failing test leaves no vassal behind.
pub struct Launched {
    /// The vassal's name.
    pub name: String,
    /// The outer launcher; `None` once stopped.
    pub child: Option<std::process::Child>,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl Launched {
    /// Spawns `vassal-launch ARGS...` (stdin and stdout closed, stderr into
    /// `stderr_path`) for the vassal `name`.
    pub fn spawn(name: &str, args: &[String], stderr_path: PathBuf) -> Launched {
        crate::require_root();
        let err = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(binary("vassal-launch"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawning vassal-launch");
        Launched {
            name: name.to_owned(),
            child: Some(child),
            stderr_path,
        }
    }

    /// The outer launcher's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the outer launcher is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most `timeout`, then SIGKILL) for the
    /// launcher to end; its exit status, `None` when it had to be killed.
    pub fn stop(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop(std::time::Duration::from_secs(5));
    }
}

/// An ext4 filesystem in a file under /tmp, on a loop device, mounted on a
/// directory the project's uid may write; all removed on drop.
pub struct LoopFs {
    image: PathBuf,
    device: Option<String>,
    /// Where it is mounted.
    pub mount: PathBuf,
    mounted: bool,
}

impl LoopFs {
    /// `mkfs.ext4 mkfs_options` then `mount -o mount_options`; `Err` with
    /// the mount's error when the kernel refuses it (what is made so far
    /// is removed by the drop).
    pub fn try_new(mkfs_options: &[&str], mount_options: &str) -> Result<LoopFs, String> {
        let id = crate::unique("dk");
        let mut fs = LoopFs {
            image: PathBuf::from(format!("/tmp/vassal-disk-{id}.img")),
            device: None,
            mount: PathBuf::from(format!("/tmp/vassal-disk-{id}")),
            mounted: false,
        };
        crate::run(Command::new("truncate").args(["-s", "256M"]).arg(&fs.image));
        let out = crate::run(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&fs.image),
        );
        fs.device = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let device = fs.device.clone().unwrap();
        crate::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .args(mkfs_options)
                .arg(&device),
        );
        std::fs::create_dir_all(&fs.mount).unwrap();
        let out = Command::new("mount")
            .args(["-o", mount_options, &device])
            .arg(&fs.mount)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        fs.mounted = true;
        crate::run(
            Command::new("chown")
                .arg(format!("{PROJECT_UID}:{PROJECT_UID}"))
                .arg(&fs.mount),
        );
        Ok(fs)
    }

    /// A plain ext4, mounted read-write.
    pub fn new() -> LoopFs {
        LoopFs::try_new(&[], "rw").unwrap()
    }
}

impl Default for LoopFs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
        }
        if let Some(d) = &self.device {
            let _ = Command::new("losetup").args(["-d", d]).status();
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.image);
    }
}
