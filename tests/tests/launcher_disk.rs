//! Disk limits hold from inside real vassals: the file size, IO bandwidth
//! and IOPS on a loop-device-backed ext4 filesystem, project quotas where
//! the kernel has them, and clear refusals where a mount cannot be limited.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use vassal_tests::launcher_harness::{
    code, launch, leftovers, name, stderr, stdout, vassal_file, LoopFs, TempDir,
};
use vassal_tests::{run, unique};

/// A directory on a host tmpfs (/dev/shm), removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new() -> ShmDir {
        let dir = PathBuf::from(format!("/dev/shm/vassal-disk-{}", unique("ds")));
        std::fs::create_dir_all(&dir).unwrap();
        ShmDir(dir)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A vassal file: `sh -c script`, `rest` verbatim after it.
fn vassal(dir: &TempDir, vassal: &str, script: &str, rest: &str) -> PathBuf {
    vassal_file(dir, vassal, &["/bin/sh", "-c", script], rest)
}

/// A writable `[[mount]]` of `source` on /srv, with `extra` keys.
fn mount_table(source: &Path, extra: &str) -> String {
    format!(
        "[[mount]]\nsource = \"{}\"\ntarget = \"/srv\"\nwritable = true\n{extra}\n",
        source.display()
    )
}

fn run_file(file: &Path) -> std::process::Output {
    launch(&["run", "--config", file.to_str().unwrap()])
}

/// Seconds a shell command takes inside the vassal, measured there (so the
/// launch itself is not counted): prints `took NAME SECONDS`.
fn timed(label: &str, command: &str) -> String {
    format!(
        "s=$(date +%s.%N); {command} 2>/dev/null || echo {label} failed; e=$(date +%s.%N); \
         awk -v s=$s -v e=$e 'BEGIN {{ printf \"took {label} %.3f\\n\", e - s }}'; "
    )
}

/// The seconds printed by [`timed`] for `label`.
fn took(out: &std::process::Output, label: &str) -> f64 {
    let text = stdout(out);
    assert!(
        !text.contains(&format!("{label} failed")),
        "{label} failed: {text}\n{}",
        stderr(out)
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("took {label} ")))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time for {label}: {text}\n{}", stderr(out)))
}

#[test]
fn disk_file_size_stops_a_write_beyond_it() {
    let dir = TempDir::new();
    let n = name("df");
    // SIGXFSZ ignored, so the write fails with EFBIG instead of killing dd.
    let script = "trap '' XFSZ; dd if=/dev/zero of=/tmp/f bs=64K count=32 2>&1; echo size=$(stat -c %s /tmp/f)";
    let file = vassal(&dir, &n, script, "[limits]\nfile_size = \"1M\"\n");
    let out = run_file(&file);
    assert!(
        stdout(&out).contains("File too large"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("size=1048576"), "{}", stdout(&out));
    // Without the trap, the default action of SIGXFSZ ends the writer.
    let file = vassal(
        &dir,
        &n,
        "dd if=/dev/zero of=/tmp/f bs=64K count=32; echo status=$?",
        "[limits]\nfile_size = \"1M\"\n",
    );
    let out = run_file(&file);
    assert!(
        stdout(&out).contains(&format!("status={}", 128 + libc::SIGXFSZ)),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

/// 20 MB written then read back with direct IO on a writable mount, and
/// 500 writes then reads of 4 KiB, timed inside the vassal.
fn io_script() -> String {
    [
        timed(
            "write",
            "dd if=/dev/zero of=/srv/f bs=1M count=20 oflag=direct",
        ),
        timed(
            "read",
            "dd if=/srv/f of=/dev/null bs=1M count=20 iflag=direct",
        ),
        timed(
            "writeops",
            "dd if=/dev/zero of=/srv/g bs=4k count=500 oflag=direct",
        ),
        timed(
            "readops",
            "dd if=/srv/g of=/dev/null bs=4k count=500 iflag=direct",
        ),
    ]
    .concat()
}

#[test]
fn disk_io_bandwidth_is_throttled_on_a_writable_mount() {
    let fs = LoopFs::new();
    let dir = TempDir::new();
    let n = name("db");
    let mount = mount_table(&fs.mount, "");
    // Unlimited first, on the same filesystem, for comparison.
    let out = run_file(&vassal(&dir, &n, &io_script(), &mount));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (free_write, free_read) = (took(&out, "write"), took(&out, "read"));
    let out = run_file(&vassal(
        &dir,
        &n,
        &io_script(),
        &format!("{mount}[limits]\nio_write = \"4M\"\nio_read = \"4M\"\n"),
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (write, read) = (took(&out, "write"), took(&out, "read"));
    eprintln!("unlimited {free_write} s / {free_read} s, limited {write} s / {read} s");
    // 20 MB at 4 MB/s: about 5 s.
    assert!((3.5..8.0).contains(&write), "20 MB written in {write} s");
    assert!((3.5..8.0).contains(&read), "20 MB read in {read} s");
    assert!(
        free_write * 2.0 < write && free_read * 2.0 < read,
        "unlimited: {free_write} s and {free_read} s, limited: {write} s and {read} s"
    );
    // The bandwidth limits leave the operation rate alone.
    assert!(took(&out, "writeops") < 3.0, "{}", stdout(&out));
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn disk_io_operations_are_throttled_on_a_writable_mount() {
    let fs = LoopFs::new();
    let dir = TempDir::new();
    let n = name("do");
    let mount = mount_table(&fs.mount, "");
    let out = run_file(&vassal(&dir, &n, &io_script(), &mount));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (free_write, free_read) = (took(&out, "writeops"), took(&out, "readops"));
    let out = run_file(&vassal(
        &dir,
        &n,
        &io_script(),
        &format!("{mount}[limits]\nio_write_iops = 100\nio_read_iops = 100\n"),
    ));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let (write, read) = (took(&out, "writeops"), took(&out, "readops"));
    eprintln!("unlimited {free_write} s / {free_read} s, limited {write} s / {read} s");
    // 500 operations at 100 per second: about 5 s.
    assert!((3.5..8.0).contains(&write), "500 writes in {write} s");
    assert!((3.5..8.0).contains(&read), "500 reads in {read} s");
    assert!(
        free_write * 2.0 < write && free_read * 2.0 < read,
        "unlimited: {free_write} s and {free_read} s, limited: {write} s and {read} s"
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn disk_io_limits_on_a_writable_tmpfs_mount_are_refused_naming_it() {
    let shm = ShmDir::new();
    let dir = TempDir::new();
    let n = name("dt");
    let file = vassal(
        &dir,
        &n,
        "echo ran",
        &format!("{}[limits]\nio_write = \"4M\"\n", mount_table(&shm.0, "")),
    );
    let out = run_file(&file);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "mount[0] {} is on tmpfs, which has no block device",
            shm.0.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("ran"));
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}

#[test]
fn disk_quota_on_a_filesystem_without_project_quotas_is_refused_naming_it() {
    // ext4 made without the quota and project features: no project quotas,
    // whatever the kernel supports.
    let fs = LoopFs::new();
    let shm = ShmDir::new();
    let dir = TempDir::new();
    let n = name("dq");
    for (source, fstype) in [(&fs.mount, "ext4"), (&shm.0, "tmpfs")] {
        let file = vassal(&dir, &n, "echo ran", &mount_table(source, "quota = \"8M\""));
        let out = run_file(&file);
        assert_eq!(code(&out), 125, "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "mount[0] {}: quota: its filesystem ({fstype}) has no project quota support",
                source.display()
            )),
            "{}",
            stderr(&out)
        );
        assert!(!stdout(&out).contains("ran"));
        assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
    }
}

/// Set in the cgroup v2 guest (tests/vm), whose kernel has project quotas.
const EXPECT_QUOTA: &str = "VASSAL_EXPECT_PROJECT_QUOTA";

/// From inside the vassal: give its file the project id 0, and clear the
/// inherit flag of the mount's top directory both ways; prints what each
/// call got (`escape WHAT ok` or `escape WHAT ERRNO`).
const ESCAPE: &str = r#"
import fcntl, os, struct
GETX, SETX, GETF, SETF = 0x801c581f, 0x401c5820, 0x80086601, 0x40086602
def attempt(what, fd, request, arg):
    try:
        fcntl.ioctl(fd, request, arg)
        print("escape", what, "ok")
    except OSError as e:
        print("escape", what, e.errno)
f = os.open("/srv/mine", os.O_RDONLY)
x = bytearray(fcntl.ioctl(f, GETX, bytes(28)))
struct.pack_into("I", x, 12, 0)
attempt("file-projid", f, SETX, bytes(x))
d = os.open("/srv", os.O_RDONLY | os.O_DIRECTORY)
x = bytearray(fcntl.ioctl(d, GETX, bytes(28)))
struct.pack_into("I", x, 0, struct.unpack_from("I", x, 0)[0] & ~0x200)
attempt("dir-xflags", d, SETX, bytes(x))
flags = struct.unpack("l", fcntl.ioctl(d, GETF, bytes(8)))[0]
attempt("dir-setflags", d, SETF, struct.pack("l", flags & ~0x20000000))
"#;

#[test]
fn disk_quota_limits_what_a_vassal_writes_on_a_project_quota_filesystem() {
    let fs = match LoopFs::try_new(&["-O", "quota,project"], "prjquota") {
        Ok(fs) => fs,
        Err(e) => {
            assert!(
                std::env::var_os(EXPECT_QUOTA).is_none(),
                "{EXPECT_QUOTA} is set but a prjquota ext4 cannot be mounted: {e}"
            );
            eprintln!("this kernel cannot mount ext4 with project quotas ({}); the quota is tested in the cgroup v2 guest (tests/vm)", e.trim());
            return;
        }
    };
    let dir = TempDir::new();
    let n = name("dp");
    // 2 MB already there before the first launch are counted too.
    std::fs::write(fs.mount.join("old"), vec![1u8; 2 << 20]).unwrap();
    run(&mut Command::new("sync"));
    let script = format!(
        "python3 -c '{}' 2>&1; dd if=/dev/zero of=/srv/mine bs=1M count=8 conv=fsync 2>&1; echo size=$(stat -c %s /srv/mine)",
        ESCAPE.replace('\'', "\"")
    );
    let script =
        format!("dd if=/dev/zero of=/srv/mine bs=64k count=1 conv=fsync 2>/dev/null; {script}");
    let out = run_file(&vassal(
        &dir,
        &n,
        &script,
        &mount_table(&fs.mount, "quota = \"6M\""),
    ));
    let text = stdout(&out);
    assert!(
        text.contains("Disk quota exceeded"),
        "{text}\n{}",
        stderr(&out)
    );
    let size: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("size="))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // 6 MB less the 2 MB already there (and a few metadata blocks).
    assert!(
        (3 << 20..=4 << 20).contains(&size),
        "{size} bytes written under a 6M quota holding 2M: {text}"
    );
    for line in text.lines().filter(|l| l.starts_with("escape")) {
        assert!(
            line.ends_with(&format!(" {}", libc::EPERM)),
            "the vassal changed its quota's tagging: {line}"
        );
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with("escape")).count(),
        3,
        "{text}"
    );
    assert!(leftovers(&n).is_empty(), "{:?}", leftovers(&n));
}
