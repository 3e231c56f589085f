//! The seccomp filter installed last before the command's execve (and
//! before the command of `vassal-launch enter`).
//!
//! The policy is a deny list, written as data (`policy`) and compiled by
//! `seccompiler` (rust-vmm's, Firecracker's) into one BPF program per
//! action, stacked on the process (the kernel runs them all and keeps the
//! strongest answer):
//!
//! - **kill** (SECCOMP_RET_KILL_PROCESS, logged by the kernel's audit,
//!   reported as `killed_by: "seccomp"`): the syscalls that widen the
//!   kernel's attack surface or escape the vassal ([`DENIED`], plus a
//!   profile's names), and `clone` with a namespace flag. Syscalls of
//!   another ABI (i386, x32) are killed too, so the list cannot be
//!   bypassed through them.
//! - **ENOSYS**: `clone3` and io_uring ([`UNAVAILABLE`]), so that libc and
//!   runtimes fall back to calls the filter can inspect, and every syscall
//!   newer than the list was reviewed against ([`NEWEST_REVIEWED`]).
//! - **EAFNOSUPPORT**: `socket` and `socketpair` outside [`FAMILIES`], and
//!   netlink other than `NETLINK_ROUTE`: libraries probe families and must
//!   see "not supported", not die.
//! - **EPERM**: the ioctls [`REFUSED_IOCTLS`] (keystroke injection, quota escapes,
//!   line disciplines) on any fd, and `personality` other than
//!   [`PERSONAS`].
//!
//! Argument compares of `int` and `unsigned int` arguments (families,
//! ioctl numbers, personas, clone flags) look at the low 32 bits only, as
//! the kernel does: `TIOCSTI | 1 << 32` is still TIOCSTI (flatpak's
//! CVE-2019-10063 was an exact 64-bit compare).
//!
//! The filter is compiled once, when the vassal file is read (so `check`
//! and `run` agree, and the profile is read from the host's view of its
//! path before any namespace exists); the launcher records it in the
//! state file, where `enter` takes the very same programs.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A seccomp step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read or parsed.
    #[error("reading the seccomp profile {path}: {message}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// seccompiler refused the policy (an unknown syscall name, mostly).
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
    /// The kernel refused one of the programs.
    #[error("installing the seccomp filter ({program}): {message}")]
    Install {
        /// Which program ("abi", "kill", ...).
        program: &'static str,
        /// The kernel's answer.
        message: String,
    },
    /// This architecture has no deny list.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
}

/// Syscalls that kill the process.
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
    "quotactl_fd",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "modify_ldt",
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

/// clone flags that create namespaces: killed, as unshare is.
/// (CLONE_NEWTIME is 0x80, inside clone's exit-signal byte: only clone3,
/// which answers ENOSYS, and unshare, which is killed, can ask for it.)
pub const CLONE_NS_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The address families `socket` and `socketpair` accept; netlink only
/// with the route protocol (addresses and interfaces: glibc's getaddrinfo
/// and getifaddrs, `ip`).
pub const FAMILIES: &[libc::c_int] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// Ioctls refused on any fd: TIOCSTI (push input into a terminal),
/// TIOCLINUX (the same on a virtual console, and selection tricks),
/// TIOCSETD (line disciplines: module autoloading, a long CVE history);
/// FS_IOC_FSSETXATTR and FS_IOC_SETFLAGS, with which the owner of a file
/// in the host's user namespace may change its project id or clear a
/// directory's project-inherit flag, escaping a `[[mount]] quota`
/// (disk.rs).
pub const REFUSED_IOCTLS: &[libc::c_ulong] = &[
    libc::TIOCSTI,
    libc::TIOCLINUX,
    libc::TIOCSETD,
    FS_IOC_FSSETXATTR,
    FS_IOC_SETFLAGS,
];

/// `_IOW('X', 32, struct fsxattr)`.
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
/// `_IOW('f', 2, long)`.
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;

/// The personas `personality` may set (Docker's list): Linux, 32-bit,
/// UNAME26, and the query 0xffffffff. The rest (ADDR_NO_RANDOMIZE,
/// READ_IMPLIES_EXEC, ...) only help an exploit.
pub const PERSONAS: &[u32] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The programs in the order they are installed, with their names.
const PROGRAMS: [&str; 5] = ["abi", "kill", "enosys", "eafnosupport", "eperm"];

/// What a filter answers, in seccompiler's JSON words.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Allow,
    KillProcess,
    Errno(i32),
}

/// A compare, in seccompiler's JSON words.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    MaskedEq(u64),
}

/// One argument compare. Always a dword (the low 32 bits): every argument
/// compared here is an `int` or `unsigned int` to the kernel.
#[derive(Serialize)]
struct Cond {
    index: u8,
    #[serde(rename = "type")]
    len: &'static str,
    op: Op,
    val: u64,
}

fn dword(index: u8, op: Op, val: u64) -> Cond {
    Cond {
        index,
        len: "dword",
        op,
        val,
    }
}

/// A syscall, matched outright (no `args`) or when every compare holds.
/// Several rules of one syscall match when any does.
#[derive(Serialize)]
struct Rule<'a> {
    syscall: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<Cond>,
}

fn outright(syscall: &str) -> Rule<'_> {
    Rule {
        syscall,
        args: Vec::new(),
    }
}

/// One filter: `filter_action` for what its rules match, allow the rest.
#[derive(Serialize)]
struct JsonFilter<'a> {
    mismatch_action: Action,
    filter_action: Action,
    filter: Vec<Rule<'a>>,
}

/// The whole policy: one filter per action, named as in [`PROGRAMS`].
#[derive(Serialize)]
struct Policy<'a> {
    kill: JsonFilter<'a>,
    enosys: JsonFilter<'a>,
    eafnosupport: JsonFilter<'a>,
    eperm: JsonFilter<'a>,
}

/// The policy, in seccompiler's JSON form once serialized. `extra` are a
/// profile's names, killed like [`DENIED`].
fn policy(extra: &[String]) -> Policy<'_> {
    let mut kill: Vec<Rule> = DENIED
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(outright)
        .collect();
    // seccompiler turns a syscall with any conditional rule into a
    // conditional one: only add clone's when clone is not denied outright.
    if !extra.iter().any(|n| n == "clone") {
        for &flag in CLONE_NS_FLAGS {
            let flag = flag as u32 as u64;
            kill.push(Rule {
                syscall: "clone",
                args: vec![dword(0, Op::MaskedEq(flag), flag)],
            });
        }
    }
    let mut eafnosupport = Vec::new();
    for syscall in ["socket", "socketpair"] {
        let other_family = FAMILIES
            .iter()
            .map(|&f| dword(0, Op::Ne, f as u64))
            .collect();
        eafnosupport.push(Rule {
            syscall,
            args: other_family,
        });
        eafnosupport.push(Rule {
            syscall,
            args: vec![
                dword(0, Op::Eq, libc::AF_NETLINK as u64),
                dword(2, Op::Ne, libc::NETLINK_ROUTE as u64),
            ],
        });
    }
    let mut eperm: Vec<Rule> = REFUSED_IOCTLS
        .iter()
        .map(|&nr| Rule {
            syscall: "ioctl",
            args: vec![dword(1, Op::Eq, nr as u32 as u64)],
        })
        .collect();
    eperm.push(Rule {
        syscall: "personality",
        args: PERSONAS
            .iter()
            .map(|&p| dword(0, Op::Ne, p as u64))
            .collect(),
    });
    let filter = |filter_action, filter| JsonFilter {
        mismatch_action: Action::Allow,
        filter_action,
        filter,
    };
    Policy {
        kill: filter(Action::KillProcess, kill),
        enosys: filter(
            Action::Errno(libc::ENOSYS),
            UNAVAILABLE.iter().copied().map(outright).collect(),
        ),
        eafnosupport: filter(Action::Errno(libc::EAFNOSUPPORT), eafnosupport),
        eperm: filter(Action::Errno(libc::EPERM), eperm),
    }
}

/// The compiled filter: BPF programs installed in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawFilter", into = "RawFilter")]
pub struct Filter {
    programs: Vec<seccompiler::BpfProgram>,
}

/// How a [`Filter`] is stored in the state file: per program, its
/// instructions as (code, jt, jf, k).
#[derive(Serialize, Deserialize)]
struct RawFilter(Vec<Vec<(u16, u8, u8, u32)>>);

impl From<RawFilter> for Filter {
    fn from(raw: RawFilter) -> Filter {
        Filter {
            programs: raw
                .0
                .into_iter()
                .map(|p| {
                    p.into_iter()
                        .map(|(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
                        .collect()
                })
                .collect(),
        }
    }
}

impl From<Filter> for RawFilter {
    fn from(f: Filter) -> RawFilter {
        RawFilter(
            f.programs
                .into_iter()
                .map(|p| p.into_iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
                .collect(),
        )
    }
}

/// The newest x86_64 syscall this policy was reviewed against (mseal,
/// Linux 6.10; the last in seccompiler 0.5's table). Anything numbered
/// above answers ENOSYS: a call added later (open_tree_attr, the *xattrat
/// family...) is not open until someone has looked at it, and libc falls
/// back from ENOSYS as it does for clone3 (runc does the same).
pub const NEWEST_REVIEWED: u32 = 462;

/// Kills every syscall of another ABI and answers ENOSYS above
/// [`NEWEST_REVIEWED`]. seccompiler checks the audit arch (which kills
/// i386) but not the x32 bit, which shares x86_64's arch value: an allow
/// list needs no such check, a deny list does. Nine instructions, the
/// only ones written by hand.
#[cfg(target_arch = "x86_64")]
fn abi_program() -> seccompiler::BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    let insn = |code: u32, k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, jge, jgt, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        insn(ld, OFF_ARCH, 0, 0),
        insn(jeq, AUDIT_ARCH_X86_64, 1, 0),
        insn(ret, kill, 0, 0),
        insn(ld, OFF_NR, 0, 0),
        insn(jge, X32_SYSCALL_BIT, 0, 1),
        insn(ret, kill, 0, 0),
        insn(jgt, NEWEST_REVIEWED, 0, 1),
        insn(ret, enosys, 0, 0),
        insn(ret, libc::SECCOMP_RET_ALLOW, 0, 0),
    ]
}

impl Filter {
    /// Compiles the built-in policy plus a profile's `extra` names.
    pub fn compile(extra: &[String]) -> Result<Filter, SeccompError> {
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = extra;
            Err(SeccompError::Arch(std::env::consts::ARCH))
        }
        #[cfg(target_arch = "x86_64")]
        {
            let text = serde_json::to_vec(&policy(extra))
                .map_err(|e| SeccompError::Compile(e.to_string()))?;
            let mut map =
                seccompiler::compile_from_json(&text[..], seccompiler::TargetArch::x86_64)
                    .map_err(|e| SeccompError::Compile(e.to_string()))?;
            let mut programs = vec![abi_program()];
            for name in &PROGRAMS[1..] {
                let program = map
                    .remove(*name)
                    .ok_or_else(|| SeccompError::Compile(format!("no program {name}")))?;
                programs.push(program);
            }
            Ok(Filter { programs })
        }
    }

    /// Reads a profile file and compiles the built-in policy plus its
    /// names.
    pub fn from_profile(path: &Path) -> Result<Filter, SeccompError> {
        let extra = read_profile(path)?;
        Filter::compile(&extra).map_err(|e| {
            // Name the culprit: compile the names one by one (error path
            // only).
            let unknown = extra
                .iter()
                .find(|n| Filter::compile(std::slice::from_ref(*n)).is_err());
            SeccompError::Profile {
                path: path.to_owned(),
                message: match unknown {
                    Some(n) => format!(
                        "unknown syscall {n:?} (not a syscall of {})",
                        std::env::consts::ARCH
                    ),
                    None => e.to_string(),
                },
            }
        })
    }

    /// The number of BPF instructions, all programs together.
    pub fn len(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }

    /// Whether it holds no instruction (never, once compiled).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Installs every program on the calling thread (and what it execs).
    /// Allocates nothing on success: safe in a forked child. Sets
    /// no_new_privs (already set by the drops).
    pub fn install(&self) -> Result<(), SeccompError> {
        for (i, program) in self.programs.iter().enumerate() {
            seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
                program: PROGRAMS.get(i).copied().unwrap_or("extra"),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// A profile file: a JSON list of syscall names, `["name", ...]`.
pub fn read_profile(path: &Path) -> Result<Vec<String>, SeccompError> {
    let err = |message: String| SeccompError::Profile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text)
        .map_err(|e| err(format!("{e}; expected a JSON list of syscall names")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_compiles_into_five_programs() {
        let f = Filter::compile(&[]).unwrap();
        assert_eq!(f.programs.len(), PROGRAMS.len());
        assert!(f.programs.iter().all(|p| !p.is_empty()));
        // Every program ends by allowing what it does not match.
        for p in &f.programs {
            assert_eq!(p.last().unwrap().k, libc::SECCOMP_RET_ALLOW);
        }
    }

    #[test]
    fn the_filter_survives_the_state_file() {
        let f = Filter::compile(&["uname".into()]).unwrap();
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Filter>(&text).unwrap(), f);
        assert_ne!(f, Filter::compile(&[]).unwrap());
    }

    #[test]
    fn denying_clone_outright_drops_its_conditional_rules() {
        let kill = |extra: &[String]| Filter::compile(extra).unwrap().programs[1].clone();
        let with = kill(&["clone".into()]);
        // Unconditional clone: no compare of its first argument remains.
        assert!(!with.iter().any(|i| i.k == libc::CLONE_NEWUSER as u32));
        assert!(kill(&[]).iter().any(|i| i.k == libc::CLONE_NEWUSER as u32));
    }

    #[test]
    fn a_profile_file_adds_names_and_unknown_names_are_errors() {
        let dir = std::env::temp_dir().join(format!("vassal-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"["uname", "getpid"]"#).unwrap();
        assert_eq!(read_profile(&good).unwrap(), ["uname", "getpid"]);
        assert!(Filter::from_profile(&good).unwrap().len() > Filter::compile(&[]).unwrap().len());
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"["no_such_call"]"#).unwrap();
        let e = Filter::from_profile(&bad).unwrap_err().to_string();
        assert!(
            e.contains("unknown syscall \"no_such_call\"") && e.contains("bad.json"),
            "{e}"
        );
        std::fs::write(&bad, "{").unwrap();
        assert!(Filter::from_profile(&bad)
            .unwrap_err()
            .to_string()
            .contains("JSON list"));
        let e = Filter::from_profile(&dir.join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent.json"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
