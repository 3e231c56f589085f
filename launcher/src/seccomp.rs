//! The seccomp filter installed last before the command's execve.
//!
//! A deny list: the syscalls that widen the kernel attack surface or escape
//! the vassal (keyrings, bpf, perf, ptrace, mounts and namespaces, module
//! and kexec loading, userfaultfd, clock and swap changes...) kill the whole
//! process (SECCOMP_RET_KILL_PROCESS, which the kernel logs through audit),
//! and the launcher reports the SIGSYS as `killed_by: "seccomp"`. Syscalls
//! of another ABI (i386, x32) are killed too, so the list cannot be
//! bypassed. `clone3` and io_uring answer ENOSYS instead, so that libc and
//! runtimes fall back to calls the filter can inspect.
//!
//! The BPF is written here rather than through a library: the program is
//! short, and every instruction is visible in one place.

use std::path::Path;

/// A seccomp step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read or parsed.
    #[error("reading the seccomp profile {path}: {message}")]
    Profile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] std::io::Error),
    /// This architecture has no deny list.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
}

/// Syscalls that kill the process. Names resolve through [`number`].
pub const DENIED: &[&str] = &[
    "add_key",
    "request_key",
    "keyctl",
    "bpf",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "userfaultfd",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "vhangup",
    "uselib",
    "fanotify_init",
    "pidfd_getfd",
];

/// Syscalls answered with ENOSYS (callers have a fallback).
pub const UNAVAILABLE: &[&str] = &[
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

/// clone flags that create namespaces: refused like unshare.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// Resolves a syscall name on this architecture.
pub fn number(name: &str) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        let n: i64 = match name {
            "add_key" => libc::SYS_add_key,
            "request_key" => libc::SYS_request_key,
            "keyctl" => libc::SYS_keyctl,
            "bpf" => libc::SYS_bpf,
            "perf_event_open" => libc::SYS_perf_event_open,
            "ptrace" => libc::SYS_ptrace,
            "process_vm_readv" => libc::SYS_process_vm_readv,
            "process_vm_writev" => libc::SYS_process_vm_writev,
            "kcmp" => libc::SYS_kcmp,
            "mount" => libc::SYS_mount,
            "umount2" => libc::SYS_umount2,
            "pivot_root" => libc::SYS_pivot_root,
            "chroot" => libc::SYS_chroot,
            "move_mount" => libc::SYS_move_mount,
            "open_tree" => libc::SYS_open_tree,
            "fsopen" => libc::SYS_fsopen,
            "fsmount" => libc::SYS_fsmount,
            "fsconfig" => libc::SYS_fsconfig,
            "fspick" => libc::SYS_fspick,
            "mount_setattr" => libc::SYS_mount_setattr,
            "unshare" => libc::SYS_unshare,
            "setns" => libc::SYS_setns,
            "kexec_load" => libc::SYS_kexec_load,
            "kexec_file_load" => libc::SYS_kexec_file_load,
            "init_module" => libc::SYS_init_module,
            "finit_module" => libc::SYS_finit_module,
            "delete_module" => libc::SYS_delete_module,
            "userfaultfd" => libc::SYS_userfaultfd,
            "swapon" => libc::SYS_swapon,
            "swapoff" => libc::SYS_swapoff,
            "reboot" => libc::SYS_reboot,
            "acct" => libc::SYS_acct,
            "quotactl" => libc::SYS_quotactl,
            "lookup_dcookie" => libc::SYS_lookup_dcookie,
            "open_by_handle_at" => libc::SYS_open_by_handle_at,
            "name_to_handle_at" => libc::SYS_name_to_handle_at,
            "iopl" => libc::SYS_iopl,
            "ioperm" => libc::SYS_ioperm,
            "syslog" => libc::SYS_syslog,
            "settimeofday" => libc::SYS_settimeofday,
            "clock_settime" => libc::SYS_clock_settime,
            "clock_adjtime" => libc::SYS_clock_adjtime,
            "adjtimex" => libc::SYS_adjtimex,
            "vhangup" => libc::SYS_vhangup,
            "uselib" => libc::SYS_uselib,
            "fanotify_init" => libc::SYS_fanotify_init,
            "pidfd_getfd" => libc::SYS_pidfd_getfd,
            "clone3" => libc::SYS_clone3,
            "io_uring_setup" => libc::SYS_io_uring_setup,
            "io_uring_enter" => libc::SYS_io_uring_enter,
            "io_uring_register" => libc::SYS_io_uring_register,
            "clone" => libc::SYS_clone,
            "socket" => libc::SYS_socket,
            "getpid" => libc::SYS_getpid,
            _ => return None,
        };
        u32::try_from(n).ok()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16; // little-endian low half of args[0]

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Builds the program: `denied` syscall numbers kill, `unavailable` ones
/// return ENOSYS, clone with namespace flags kills, anything else passes.
pub fn program(
    denied: &[u32],
    unavailable: &[u32],
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (denied, unavailable);
        return Err(SeccompError::Arch(std::env::consts::ARCH));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let clone = number("clone").ok_or(SeccompError::Arch("x86_64 without clone"))?;
        let mut p = vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
            stmt(BPF_RET_K, kill),
            stmt(BPF_LD_W_ABS, OFF_NR),
            jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, kill),
        ];
        for &nr in denied {
            p.push(jump(BPF_JEQ_K, nr, 0, 1));
            p.push(stmt(BPF_RET_K, kill));
        }
        for &nr in unavailable {
            p.push(jump(BPF_JEQ_K, nr, 0, 1));
            p.push(stmt(BPF_RET_K, enosys));
        }
        // clone(flags, ...): namespace flags kill, as unshare does.
        p.push(jump(BPF_JEQ_K, clone, 0, 3));
        p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(BPF_JSET_K, CLONE_NS_FLAGS, 0, 1));
        p.push(stmt(BPF_RET_K, kill));
        p.push(stmt(BPF_RET_K, allow));
        if p.len() > u16::MAX as usize {
            return Err(SeccompError::Arch("filter too long"));
        }
        Ok(p)
    }
}

/// The deny list of a profile: the built-in one, plus the names in a JSON
/// file (`["name", ...]`) when given.
pub fn denied_numbers(extra_file: Option<&Path>) -> Result<Vec<u32>, SeccompError> {
    let mut names: Vec<String> = DENIED.iter().map(|s| s.to_string()).collect();
    if let Some(path) = extra_file {
        let err = |message: String| SeccompError::Profile {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let extra: Vec<String> = serde_json::from_str(&text)
            .map_err(|e| err(format!("{e}; expected a JSON list of syscall names")))?;
        names.extend(extra);
    }
    names
        .iter()
        .map(|n| {
            number(n).ok_or_else(|| SeccompError::Profile {
                path: extra_file.map(Path::to_owned).unwrap_or_default(),
                message: format!("unknown syscall {n:?}"),
            })
        })
        .collect()
}

/// Installs the filter on the calling thread (and what it execs). Needs
/// no_new_privs set first.
pub fn install(program: &[libc::sock_filter]) -> Result<(), SeccompError> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `program`, alive across the call; the kernel
    // copies the filter.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(SeccompError::Install(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_resolves() {
        for n in DENIED.iter().chain(UNAVAILABLE) {
            assert!(number(n).is_some(), "{n}");
        }
        assert_eq!(denied_numbers(None).unwrap().len(), DENIED.len());
    }

    #[test]
    fn program_shape() {
        let p = program(&[1, 2], &[3]).unwrap();
        // arch check (3) + x32 check (3) + 2 denied * 2 + 1 unavailable * 2 + clone (4) + allow
        assert_eq!(p.len(), 3 + 3 + 4 + 2 + 4 + 1);
        assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn a_profile_file_adds_names_and_unknown_names_are_errors() {
        let dir = std::env::temp_dir().join(format!("vassal-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"["socket"]"#).unwrap();
        assert_eq!(denied_numbers(Some(&good)).unwrap().len(), DENIED.len() + 1);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"["no_such_call"]"#).unwrap();
        let e = denied_numbers(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("unknown syscall \"no_such_call\""), "{e}");
        std::fs::write(&bad, "{").unwrap();
        assert!(denied_numbers(Some(&bad))
            .unwrap_err()
            .to_string()
            .contains("JSON list"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
