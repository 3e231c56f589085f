//! A hostile tenant against the vassal's mounts (docs/security.md, "Mounts:
//! read-only all the way down, propagation, masks"): writes into submounts
//! of read-only binds and of the root, mounts crossing between the host and
//! the vassal, masks, and symlinks planted in a shared writable bind. Every
//! attack runs from inside a vassal started by `vassal-launch run`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vassal_tests::launcher_harness::{
    code, launch, name, spawn_until_line, stderr, stdout, toml_string, TempDir, PROJECT_UID,
};
use vassal_tests::{binary, require_root, unique};

/// The user namespace table of a vassal file whose command runs as root of
/// its user namespace (host uid 100000).
const USERNS: &str =
    "[user_namespace]\nuid_map = \"0:100000:65536\"\ngid_map = \"0:100000:65536\"\n";

/// A mount made by the test on the host, detached on drop (before the
/// directories holding it are removed); its mount point too when the test
/// created it.
struct HostMount(PathBuf, bool);

impl HostMount {
    /// A tmpfs anyone may write, on `path` (created).
    fn tmpfs(path: &Path) -> HostMount {
        require_root();
        let created = !path.exists();
        std::fs::create_dir_all(path).unwrap();
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m,mode=1777"),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", path.display()));
        HostMount(path.to_owned(), created)
    }

    /// `source` bound (alone) on `path` and made shared, as systemd makes
    /// every mount: mounts below it propagate to every copy of it that
    /// stays in its peer group, and from them. With `read_only`, nothing
    /// can be written through it.
    fn shared(source: &Path, path: &Path, read_only: bool) -> HostMount {
        require_root();
        let created = !path.exists();
        std::fs::create_dir_all(path).unwrap();
        let none = None::<&str>;
        mount(Some(source), path, none, MsFlags::MS_BIND, none).unwrap();
        let guard = HostMount(path.to_owned(), created);
        if read_only {
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            mount(none, path, none, ro, none).unwrap();
        }
        mount(none, path, none, MsFlags::MS_SHARED, none).unwrap();
        guard
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        if self.1 {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

/// Writes the vassal file `text` (a `name` line is prepended) in `dir`.
fn vassal_file(dir: &TempDir, vassal: &str, text: &str) -> PathBuf {
    dir.write(
        &format!("{vassal}.toml"),
        &format!("name = \"{vassal}\"\n{text}"),
    )
}

/// `command = ["/bin/sh", "-c", SCRIPT]`, then `uid = PROJECT_UID` unless
/// the vassal runs as root of a user namespace.
fn sh_command(script: &str, userns: bool) -> String {
    let uid = if userns {
        USERNS.to_string()
    } else {
        format!("uid = {PROJECT_UID}\n")
    };
    format!(
        "command = [\"/bin/sh\", \"-c\", {}]\n{uid}",
        toml_string(script)
    )
}

/// `[[mount]]` of `source` on `target`.
fn mount_table(source: &Path, target: &str, writable: bool) -> String {
    format!(
        "[[mount]]\nsource = {}\ntarget = \"{target}\"\nwritable = {writable}\n",
        toml_string(&source.display().to_string())
    )
}

/// A directory anyone may write.
fn open_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    path.to_owned()
}

/// Every line of a mountinfo text as (mount point, per-mount options).
fn mount_lines(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter(|l| l.contains(" - "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[4].to_string(),
                f[5].split(',').map(str::to_string).collect(),
            )
        })
        .collect()
}

/// Asserts over every line of the vassal's mountinfo: nosuid everywhere;
/// nodev except on the device nodes and the vassal's own devpts; read-only
/// except the scratch mounts the vassal owns and the `writable` binds
/// (those still nosuid and nodev). With `visible_only`, a mount stacked
/// under a later one on the same mount point (unreachable) is skipped.
/// Returns how many lines it checked.
fn assert_locked_down(mountinfo: &str, writable: &[&str], visible_only: bool) -> usize {
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/pts",
    ];
    let scratch = ["/proc", "/tmp", "/run", "/dev/shm", "/dev/pts"];
    let mut lines = mount_lines(mountinfo);
    if visible_only {
        let all = lines.clone();
        lines = all
            .iter()
            .enumerate()
            .filter(|(i, (point, _))| !all[i + 1..].iter().any(|(p, _)| p == point))
            .map(|(_, l)| l.clone())
            .collect();
    }
    for (point, opts) in &lines {
        let has = |o: &str| opts.iter().any(|x| x == o);
        assert!(has("nosuid"), "{point} lacks nosuid: {opts:?}\n{mountinfo}");
        if !devices.contains(&point.as_str()) {
            assert!(has("nodev"), "{point} lacks nodev: {opts:?}\n{mountinfo}");
        }
        let own = scratch.contains(&point.as_str())
            || writable
                .iter()
                .any(|w| point == w || point.starts_with(&format!("{w}/")));
        if !own {
            assert!(has("ro"), "{point} is not read-only: {opts:?}\n{mountinfo}");
        }
    }
    lines.len()
}

/// A host tree with a tmpfs below it and another two levels down, bound
/// read-only (and a writable bind with a tmpfs below it too): inside,
/// every write below the read-only bind fails with EROFS, and every line of
/// mountinfo is read-only, nosuid and nodev but the vassal's own.
fn submounts_of_binds_are_locked_down(userns: bool) {
    let dir = TempDir::new();
    let src = dir.0.join("src");
    std::fs::create_dir_all(src.join("plain")).unwrap();
    let _sub = HostMount::tmpfs(&src.join("sub"));
    let _deep = HostMount::tmpfs(&src.join("sub/deeper/deep"));
    let data = open_dir(&dir.0.join("data"));
    let _data_sub = HostMount::tmpfs(&data.join("sub"));
    let n = name("hm");
    let script = "for p in /mnt/sub /mnt/sub/deeper/deep /srv/sub; do \
                    (echo x >$p/f) 2>&1 || echo \"refused $p\"; done; \
                  echo ---; cat /proc/self/mountinfo";
    let file = vassal_file(
        &dir,
        &n,
        &format!(
            "{}{}{}",
            sh_command(script, userns),
            mount_table(&src, "/mnt", false),
            mount_table(&data, "/srv", true)
        ),
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    let (writes, mountinfo) = text.split_once("---\n").unwrap();
    assert!(
        writes.contains("/mnt/sub/f: Read-only file system")
            && writes.contains("/mnt/sub/deeper/deep/f: Read-only file system"),
        "a submount of a read-only bind took a write:\n{writes}"
    );
    assert!(!src.join("sub/f").exists() && !src.join("sub/deeper/deep/f").exists());
    // The writable bind's submount stays writable: the defence is no
    // blanket read-only.
    assert!(!writes.contains("refused /srv/sub"), "{writes}");
    assert!(data.join("sub/f").exists());
    let checked = assert_locked_down(mountinfo, &["/srv"], false);
    assert!(checked >= 15, "{mountinfo}");
    for point in ["/mnt/sub", "/mnt/sub/deeper/deep", "/srv/sub"] {
        assert!(
            mount_lines(mountinfo).iter().any(|(p, _)| p == point),
            "{point} missing:\n{mountinfo}"
        );
    }
}

#[test]
fn mounts_submounts_of_a_read_only_bind_are_read_only_nosuid_nodev() {
    submounts_of_binds_are_locked_down(false);
}

#[test]
fn mounts_submounts_of_a_read_only_bind_are_read_only_in_a_user_namespace() {
    submounts_of_binds_are_locked_down(true);
}

/// A tmpfs the host mounted under its root (here a fresh directory under
/// /mnt, as the issue found on /media): not writable from inside, by the
/// project user nor by root of a user namespace, where the kernel brings
/// the host's submounts along.
#[test]
fn mounts_a_host_tmpfs_below_the_root_is_read_only_inside() {
    require_root();
    let place = PathBuf::from(format!("/mnt/vassal-test-{}", unique("rt")));
    let _tmpfs = HostMount::tmpfs(&place);
    let dir = TempDir::new();
    for userns in [false, true] {
        let n = name("hr");
        let script = format!(
            "id -u; (echo x >{0}/f) 2>&1; (mkdir {0}/d) 2>&1; echo ---; cat /proc/self/mountinfo",
            place.display()
        );
        let file = vassal_file(&dir, &n, &sh_command(&script, userns));
        let out = launch(&["run", "--config", file.to_str().unwrap()]);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
        let (writes, mountinfo) = text.split_once("---\n").unwrap();
        let uid = if userns { "0" } else { "47001" };
        assert!(writes.starts_with(&format!("{uid}\n")), "{writes}");
        assert_eq!(
            writes.matches("Read-only file system").count(),
            2,
            "userns {userns}: the host's tmpfs took a write:\n{writes}"
        );
        assert!(std::fs::read_dir(&place).unwrap().next().is_none());
        assert_locked_down(mountinfo, &[], false);
    }
}

/// Nothing crosses either way, though the vassal's root filesystem and a
/// bind's source are shared mounts on the host: none of the mounts the
/// launcher makes in the vassal (its /proc, /tmp, /dev, a [[mount]] nested
/// in another) appears on the host, and a mount the host makes below the
/// source after the vassal started does not appear inside.
#[test]
fn mounts_do_not_propagate_between_host_and_vassal() {
    let dir = TempDir::new();
    // Not in `dir`: its recursive removal must never meet a bind of `/`.
    let root = PathBuf::from(format!("/run/vassal-test-root-{}", unique("pr")));
    let _root = HostMount::shared(Path::new("/"), &root, true);
    let src = dir.0.join("shared");
    std::fs::create_dir_all(src.join("inner")).unwrap();
    std::fs::create_dir_all(src.join("late")).unwrap();
    let other = dir.0.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("marker"), "other").unwrap();
    let _shared = HostMount::shared(&src, &src, false);
    let go = src.join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let n = name("hp");
    let file = vassal_file(
        &dir,
        &n,
        &format!(
            "rootfs = {}\n{}{}{}",
            toml_string(&root.display().to_string()),
            sh_command(
                "echo up; read x </mnt/go; echo \"late: $(ls -A /mnt/late)\"; grep -c ' /mnt/late ' /proc/self/mountinfo || true",
                false
            ),
            mount_table(&src, "/mnt", false),
            mount_table(&other, "/mnt/inner", false)
        ),
    );
    let (mut child, line, mut rest) =
        spawn_until_line(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(line, "up\n");
    // Inside to host: the host has no mount below the vassal's root or
    // the bind's source but the two the test made.
    let host_table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let ours: Vec<String> = [&root, &src]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    for line in host_table.lines() {
        let point = line.split(' ').nth(4).unwrap();
        assert!(
            !ours.iter().any(|o| point.starts_with(&format!("{o}/"))),
            "the vassal's mount appeared on the host: {line}"
        );
    }
    assert!(!src.join("inner/marker").exists());
    // Host to inside: a tmpfs mounted below the source now.
    let _late = HostMount::tmpfs(&src.join("late"));
    std::fs::write(src.join("late/marker"), "host").unwrap();
    std::fs::write(&go, "go\n").unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut rest, &mut text).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{text}");
    assert_eq!(text, "late: \n0\n", "the host's mount appeared inside");
}

/// `mask` hides files too (an empty read-only file over them), as root of a
/// user namespace as well; a path that does not exist is refused by `check`
/// and by `run`, naming the file, line and field.
#[test]
fn mounts_mask_hides_files_and_refuses_missing_paths() {
    let dir = TempDir::new();
    for userns in [false, true] {
        let n = name("hk");
        let file = vassal_file(
            &dir,
            &n,
            &format!(
                "mask = [\"/etc/passwd\", \"/root\"]\n{}",
                sh_command(
                    "echo \"size $(wc -c </etc/passwd)\"; (echo x >/etc/passwd) 2>&1; ls -A /root | wc -l",
                    userns
                )
            ),
        );
        let out = launch(&["run", "--config", file.to_str().unwrap()]);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
        assert!(
            text.starts_with("size 0\n"),
            "userns {userns}: /etc/passwd readable:\n{text}"
        );
        assert!(text.contains("Read-only file system"), "{text}");
        assert!(text.ends_with("\n0\n"), "{text}");
    }
    let n = name("hk");
    let file = vassal_file(
        &dir,
        &n,
        &format!(
            "mask = [\"/root\", \"/no/such/path\"]\n{}",
            sh_command("echo ran", false)
        ),
    );
    let path = file.to_str().unwrap();
    let want = format!("{path}:2:18: mask[1]: /no/such/path does not exist");
    for args in [vec!["check", path], vec!["run", "--config", path]] {
        let out = launch(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
        assert!(stderr(&out).contains(&want), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).contains("ran"));
    }
}

/// runc CVE-2021-30465's class: two vassals of a project share a writable
/// directory; one plants symlinks in it where the other's [[mount]] target
/// and source pass. The later launch is refused instead of binding its data
/// over its own /usr/local, or the host's root into itself.
#[test]
fn mounts_symlinks_planted_in_a_shared_bind_redirect_nothing() {
    let dir = TempDir::new();
    // In the host's /tmp, which the vassal's private /tmp hides.
    let secret = dir.write("secret", "host secret");
    let shared = open_dir(&dir.0.join("shared"));
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("planted-by-redirect"), "").unwrap();
    // The attacker: a vassal with the shared directory writable.
    let attacker = name("ha");
    let file = vassal_file(
        &dir,
        &attacker,
        &format!(
            "{}{}",
            sh_command(
                "ln -s /run/vassal/.root/usr/local /mnt/sub && ln -s / /mnt/app && echo planted",
                false
            ),
            mount_table(&shared, "/mnt", true)
        ),
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert_eq!(stdout(&out), "planted\n", "{}", stderr(&out));
    // The victim's target passes through the planted link.
    let victim = name("hv");
    let file = vassal_file(
        &dir,
        &victim,
        &format!(
            "{}{}{}",
            sh_command("ls /usr/local", false),
            mount_table(&shared, "/mnt", true),
            mount_table(&data, "/mnt/sub", false)
        ),
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        !stdout(&out).contains("planted-by-redirect"),
        "the bind was redirected onto /usr/local: {}",
        stdout(&out)
    );
    assert_eq!(code(&out), 125, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("/mnt/sub passes through the symlink"),
        "{}",
        stderr(&out)
    );
    // The victim's source passes through the other planted link.
    let file = vassal_file(
        &dir,
        &victim,
        &format!(
            "{}{}",
            sh_command(&format!("cat /opt{}", secret.display()), false),
            mount_table(&shared.join("app"), "/opt", false)
        ),
    );
    let out = launch(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        !stdout(&out).contains("host secret"),
        "the host's root was bound in"
    );
    assert_eq!(code(&out), 125, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("passes through the symlink"),
        "{}",
        stderr(&out)
    );
}

/// `vassal-launch ARGS...` on a kernel without `mount_setattr`,
/// `open_tree` and `move_mount`: a seccomp filter answers them ENOSYS, as
/// a kernel before 5.2 would, so the launcher takes its mount table walk.
fn launch_without_new_mount_api(args: &[&str]) -> Output {
    require_root();
    let mut cmd = Command::new(binary("vassal-launch"));
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: between fork and exec the closure only makes two system
    // calls (prctl, seccomp) on memory it owns; it allocates nothing.
    unsafe { cmd.pre_exec(deny_new_mount_api) };
    cmd.output().expect("running vassal-launch")
}

fn deny_new_mount_api() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let errno = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: i64, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k: k as u32,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        stmt(load, 4), // arch
        jeq(AUDIT_ARCH_X86_64.into(), 0, 5),
        stmt(load, 0), // syscall number
        jeq(libc::SYS_mount_setattr, 3, 0),
        jeq(libc::SYS_open_tree, 2, 0),
        jeq(libc::SYS_move_mount, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ret, errno),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments; seccomp reads `prog`, which
    // points at `filter`, both alive for the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The fallback for kernels without `mount_setattr` locks the same mounts
/// down: submounts of a read-only bind and a host tmpfs below the root in a
/// user namespace take no write, a masked file reads empty, and every
/// visible mountinfo line but the vassal's own is read-only, nosuid and
/// nodev.
#[test]
fn mounts_are_locked_down_without_mount_setattr_too() {
    require_root();
    let place = PathBuf::from(format!("/media/vassal-test-{}", unique("rf")));
    let _tmpfs = HostMount::tmpfs(&place);
    let dir = TempDir::new();
    let src = dir.0.join("src");
    let _sub = HostMount::tmpfs(&src.join("sub"));
    let _deep = HostMount::tmpfs(&src.join("sub/deep"));
    let n = name("hf");
    let script = format!(
        "for p in /mnt/sub /mnt/sub/deep {}; do (echo x >$p/f) 2>&1; done; \
         echo \"size $(wc -c </etc/passwd)\"; echo ---; cat /proc/self/mountinfo",
        place.display()
    );
    let file = vassal_file(
        &dir,
        &n,
        &format!(
            "mask = [\"/etc/passwd\"]\n{}{}",
            sh_command(&script, true),
            mount_table(&src, "/mnt", false)
        ),
    );
    let out = launch_without_new_mount_api(&["run", "--config", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    let (writes, mountinfo) = text.split_once("---\n").unwrap();
    assert_eq!(
        writes.matches("Read-only file system").count(),
        3,
        "{writes}"
    );
    assert!(writes.ends_with("size 0\n"), "{writes}");
    // Without mount_setattr, a mount the host stacked under another on the
    // same path (its two /dev/shm) cannot be reached to remount; it stays
    // hidden under the top one, which the vassal cannot unmount.
    assert_locked_down(mountinfo, &[], true);
}
