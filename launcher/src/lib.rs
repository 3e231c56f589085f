//! vassal-launch: runs one customer command as a vassal, in its own mount,
//! pid, IPC, UTS and network namespaces (and user and cgroup namespaces when
//! asked), on a read-only root, limited, with every privilege dropped, its
//! network attached to vassal-router.
//!
//! Three processes share the work (docs/design.md, "Launch order"): the
//! outer launcher in the host's namespaces ([`launch`]), the supervisor that
//! is pid 1 inside ([`supervisor`]), and the command.

pub mod accounting;
pub mod cgroup;
pub mod config;
pub mod disk;
pub mod enter;
pub mod events;
pub mod gc;
pub mod launch;
pub mod netlink;
pub mod network;
pub mod privileges;
pub mod report;
pub mod rootfs;
pub mod seccomp;
pub mod state;
pub mod supervisor;
pub mod sync;
pub mod terminal;
pub mod userns;
