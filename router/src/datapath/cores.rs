//! The datapath threads: one per host tun queue, each running its own
//! current-thread tokio runtime (its own epoll), so that a packet's reader
//! never hands it to another thread and no wake-up crosses threads.
//!
//! Why: under the multi-thread runtime the reactor wakes whichever worker
//! holds it, which then wakes another to steal; on a VM each such wake-up is
//! an IPI of tens of microseconds. Here core `i` reads host tun queue `i`
//! and writes every packet toward the host through queue `i` as well: tun's
//! flow steering records the queue a flow was written to and delivers the
//! answers to it, so a reply lands on the epoll of the thread that just
//! wrote the request, which is awake and picks it up without sleeping.
//! Vassal readers are spread over the cores round-robin when they attach.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Why the datapath threads could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoresError {
    /// Building core `core`'s runtime failed.
    #[error("building the runtime of datapath thread {core}: {source}")]
    Runtime {
        core: usize,
        #[source]
        source: std::io::Error,
    },
    /// Spawning core `core`'s thread failed.
    #[error("spawning datapath thread {core}: {source}")]
    Thread {
        core: usize,
        #[source]
        source: std::io::Error,
    },
    /// `start` was called twice.
    #[error("the datapath threads are already running")]
    Started,
}

/// The running datapath threads.
struct Cores {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static CORES: OnceLock<Cores> = OnceLock::new();

thread_local! {
    /// The index of the datapath thread this is (0 elsewhere).
    static CORE: Cell<usize> = const { Cell::new(0) };
}

/// The index of the datapath thread running the caller, 0 on any other
/// thread: the host tun queue its packets toward the host are written to.
pub fn current() -> usize {
    CORE.get()
}

/// Starts `n` datapath threads (at least one), once per process. They run
/// until the process exits; their tasks are ended through their
/// `JoinHandle`s.
pub fn start(n: usize) -> Result<(), CoresError> {
    let mut handles = Vec::new();
    for core in 0..n.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| CoresError::Runtime { core, source })?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("datapath-{core}"))
            .spawn(move || {
                CORE.set(core);
                runtime.block_on(std::future::pending::<()>());
            })
            .map_err(|source| CoresError::Thread { core, source })?;
    }
    CORES
        .set(Cores {
            handles,
            next: AtomicUsize::new(0),
        })
        .map_err(|_| CoresError::Started)
}

/// Spawns a reader on datapath thread `core` (modulo their number), or on
/// the caller's runtime when none were started (the unit tests).
pub fn spawn_on<F>(core: usize, task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match CORES.get() {
        Some(c) => c.handles[core % c.handles.len()].spawn(task),
        None => tokio::spawn(task),
    }
}

/// Spawns a vassal's reader on the next datapath thread, round-robin.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let core = CORES
        .get()
        .map_or(0, |c| c.next.fetch_add(1, Ordering::Relaxed));
    spawn_on(core, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task spawned on core `i` runs on datapath thread `i`, where
    /// `current()` (the host tun queue it writes to) is `i`.
    #[test]
    fn tasks_run_on_their_core() {
        start(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for core in [0, 1, 2, 3] {
            let (seen, name) = rt
                .block_on(spawn_on(core, async {
                    (current(), std::thread::current().name().map(str::to_owned))
                }))
                .unwrap();
            assert_eq!(seen, core % 2);
            assert_eq!(name, Some(format!("datapath-{}", core % 2)));
        }
        assert!(matches!(start(2), Err(CoresError::Started)));
    }
}
