//! What a customer sees from inside a vassal: its own processes, a
//! read-only root without the host's secrets, its own namespaces, its own
//! user with no privileges.

use std::os::unix::fs::PermissionsExt;
use vassal_tests::launcher_harness::{
    code, launch, name, sh, spawn_until_line, stderr, stdout, TempDir, PROJECT_UID,
};

#[test]
fn launcher_pid_1_is_the_supervisor_and_only_own_processes_are_visible() {
    let n = name("li");
    let out = sh(
        &n,
        &[],
        "tr '\\0' ' ' </proc/1/cmdline; echo; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap().contains("vassal-launch: supervisor"),
        "{text}"
    );
    let pids: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{pids:?}");
    // pid 1, the shell, and its pipeline: nothing of the host.
    assert!(pids.len() <= 6 && pids.iter().all(|&p| p < 20), "{pids:?}");
}

#[test]
fn launcher_root_is_read_only_and_the_hosts_root_is_hidden() {
    let secret = std::path::Path::new("/root/.vassal-test-secret");
    std::fs::write(secret, "host secret").unwrap();
    let n = name("li");
    let out = sh(
        &n,
        &[],
        "touch /usr/vassal-probe 2>&1; (echo x >/etc/vassal-probe) 2>&1; cat /root/.vassal-test-secret 2>&1; ls -A /root | wc -l; echo ok >/tmp/t && cat /tmp/t",
    );
    let _ = std::fs::remove_file(secret);
    let text = stdout(&out);
    assert_eq!(text.matches("Read-only file system").count(), 2, "{text}");
    assert!(text.contains("No such file or directory"), "{text}");
    assert!(!text.contains("host secret"), "{text}");
    assert!(text.contains("\n0\nok"), "{text}");
    assert!(!std::path::Path::new("/usr/vassal-probe").exists());
}

#[test]
fn launcher_namespaces_hostname_and_ipc_are_its_own() {
    let n = name("li");
    let out = sh(
        &n,
        &[],
        "hostname; for k in mnt pid ipc uts net; do readlink /proc/self/ns/$k; done",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(n.as_str()));
    for (kind, inside) in ["mnt", "pid", "ipc", "uts", "net"].iter().zip(lines) {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
        assert_ne!(
            host.to_string_lossy(),
            inside,
            "{kind} namespace shared with the host"
        );
    }
    // A message queue made inside is not seen by the host.
    let before = std::process::Command::new("ipcs")
        .arg("-q")
        .output()
        .unwrap()
        .stdout;
    let out = sh(
        &name("li"),
        &[],
        "ipcmk -Q >/dev/null && ipcs -q | grep -c 0x",
    );
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
    let after = std::process::Command::new("ipcs")
        .arg("-q")
        .output()
        .unwrap()
        .stdout;
    assert_eq!(before, after);
}

#[test]
fn launcher_command_runs_as_the_project_user_without_privileges() {
    let n = name("li");
    let out = sh(
        &n,
        &["--gid", "47002"],
        "id -u; id -g; id -G; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; ulimit -n",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], PROJECT_UID.to_string());
    assert_eq!(lines[1], "47002");
    assert_eq!(lines[2], "47002", "supplementary groups must be gone");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{cap}:\t0000000000000000")),
            "{cap} not empty:\n{text}"
        );
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert_eq!(lines.last(), Some(&"1024"));
}

#[test]
fn launcher_customer_cannot_signal_trace_or_read_the_supervisor() {
    let n = name("li");
    let out = sh(
        &n,
        &[],
        "kill -9 1 2>&1; kill -STOP 1 2>&1; cat /proc/1/environ 2>&1 | head -c 100; echo; head -c 1 /proc/1/mem 2>&1; echo; ls /proc/1/fd 2>&1; echo alive",
    );
    let text = stdout(&out);
    assert_eq!(text.matches("Operation not permitted").count(), 2, "{text}");
    assert!(text.matches("Permission denied").count() >= 3, "{text}");
    assert!(text.ends_with("alive\n"), "{text}");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn launcher_vassal_cannot_reach_a_siblings_files() {
    let dir = TempDir::new();
    let alice = dir.0.join("alice");
    std::fs::create_dir(&alice).unwrap();
    std::fs::write(alice.join("secret"), "alice's data").unwrap();
    std::os::unix::fs::chown(&alice, Some(PROJECT_UID), Some(PROJECT_UID)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let vassal_file = dir.write(
        "alice.toml",
        &format!("name = \"{}\"\ncommand = [\"/bin/cat\", \"/mnt/secret\"]\nuid = {PROJECT_UID}\n[[mount]]\nsource = \"{}\"\ntarget = \"/mnt\"\n", name("la"), alice.display()),
    );
    let out = launch(&["run", "--config", vassal_file.to_str().unwrap()]);
    assert_eq!(stdout(&out), "alice's data", "{}", stderr(&out));
    // A sibling has no bind, and the host's /tmp is not its /tmp.
    let out = sh(
        &name("lb"),
        &[],
        &format!("cat {}/secret 2>&1; ls -A /mnt", alice.display()),
    );
    let text = stdout(&out);
    assert!(
        text.contains("No such file or directory") && !text.contains("alice's data"),
        "{text}"
    );
    assert!(!text.contains("secret\n"), "{text}");
}

#[test]
fn launcher_binds_are_read_only_unless_writable() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(PROJECT_UID), Some(PROJECT_UID)).unwrap();
    for writable in [false, true] {
        let file = dir.write(
            "v.toml",
            &format!(
                "name = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo hi > /mnt/f && echo wrote\"]\nuid = {PROJECT_UID}\n[[mount]]\nsource = \"{}\"\ntarget = \"/mnt\"\nwritable = {writable}\n",
                name("lw"),
                data.display()
            ),
        );
        let out = launch(&["run", "--config", file.to_str().unwrap()]);
        assert_eq!(stdout(&out).contains("wrote"), writable, "{}", stderr(&out));
        assert_eq!(data.join("f").exists(), writable);
    }
}

#[test]
fn launcher_user_namespace_maps_root_to_the_configured_ids() {
    let dir = TempDir::new();
    let file = dir.write(
        "v.toml",
        &format!(
            "name = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"id -u; cat /proc/self/uid_map /proc/self/gid_map; grep CapEff /proc/self/status; touch /etc/x 2>&1; true\"]\n[user_namespace]\nuid_map = \"0:200000:65536\"\ngid_map = \"0:200000:65536\"\n",
            name("lu")
        ),
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(
        &words[..7],
        &["0", "0", "200000", "65536", "0", "200000", "65536"],
        "{text}"
    );
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
}

#[test]
fn launcher_exit_status_is_the_commands_own_or_128_plus_signal() {
    assert_eq!(code(&sh(&name("le"), &[], "exit 7")), 7);
    assert_eq!(code(&sh(&name("le"), &[], "kill -TERM $$")), 128 + 15);
    let out = launch(&[
        "run",
        "--name",
        &name("le"),
        "--uid",
        "47001",
        "--",
        "/no/such/program",
    ]);
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/no/such/program"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn launcher_forwards_sigterm_to_the_command() {
    let n = name("ls");
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done";
    let (mut child, line, mut stdout) = spawn_until_line(&[
        "run", "--name", &n, "--uid", "47001", "--", "/bin/sh", "-c", script,
    ]);
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn launcher_first_user_namespace_vassal_after_a_boot_starts() {
    // A fresh /run/vassal, as after a boot, in a mount namespace of its
    // own: the first vassal is one in a user namespace, with a mask, whose
    // supervisor cannot create the mount points there itself. The state
    // directory stays the host's (bound back in): with a private one, a
    // concurrent launch's gc would see no live vassal of this name and
    // reap its cgroup before the vassal joins it.
    let dir = TempDir::new();
    let file = dir.write(
        "v.toml",
        &format!(
            "name = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", \"echo ran; wc -c </etc/passwd\"]\nmask = [\"/etc/passwd\"]\n[user_namespace]\nuid_map = \"0:200000:65536\"\ngid_map = \"0:200000:65536\"\n",
            name("lb")
        ),
    );
    vassal_tests::require_root();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(
            "mkdir -p /run/vassal/launch \"$2\" && mount --bind /run/vassal/launch \"$2\" \
             && mount -t tmpfs -o mode=0755 fresh /run/vassal && mkdir /run/vassal/launch \
             && mount --bind \"$2\" /run/vassal/launch && exec \"$0\" run --config \"$1\"",
        )
        .arg(vassal_tests::binary("vassal-launch"))
        .arg(&file)
        .arg(dir.0.join("state"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "ran\n0\n");
}
