//! The readers: one tokio task per vassal tun and per host tun queue. Each
//! drains its fd until EAGAIN (at most [`BATCH`] packets, then yields for
//! fairness) into its worker thread's read buffer and hands each packet to
//! the router synchronously. Buffers belong to worker threads, not to
//! vassals.

use crate::config::MAX_MTU;
use crate::datapath::router::{Router, Snapshot};
use crate::os::tun::{self, Io};
use crate::port::Port;
use crate::state::rate;
use crate::state::registry::{AddrMap, Vassal};
use crate::wire::frame::{frame_of, Frame};
use crate::wire::offload::HDR_LEN;
use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Packets handled per wake-up before a reader yields to the others.
pub const BATCH: usize = 64;

/// Room for the largest read: a header and a 64 KiB super-packet.
const READ_BUFFER: usize = HDR_LEN + MAX_MTU + 1;

thread_local! {
    /// The read buffer of every reader running on this worker thread. A
    /// reader borrows it for one synchronous batch, never across an await.
    static READ: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// A raw fd kept open by someone else (the `Arc<Vassal>` or the router),
/// registered with tokio's reactor.
struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Reads a vassal's tun until it closes. The caller keeps `vassal` (and so
/// the fd) alive for at least as long as this task.
pub async fn vassal_reader(router: Arc<Router>, vassal: Arc<Vassal>) {
    let Port::Tun { fd, vnet } = &vassal.port else {
        return;
    };
    let name = vassal.project.name.as_str();
    let end = read_loop(
        fd.as_fd(),
        *vnet,
        &router,
        Some(&vassal),
        |snap, vassals, frame| router.from_vassal(&vassal, snap, vassals, frame),
    )
    .await;
    tracing::debug!(project = name, address = %vassal.ipv4, ?end, "vassal tun reader stopped");
}

/// Reads queue `queue` of the host tun until the router stops.
pub async fn host_reader(router: Arc<Router>, queue: usize) {
    let Some(fd) = router.host_tun.queues().nth(queue) else {
        return;
    };
    let vnet = router.host_tun.vnet();
    let end = read_loop(fd, vnet, &router, None, |snap, vassals, frame| {
        router.from_host(snap, vassals, frame)
    })
    .await;
    tracing::error!(queue, ?end, "host tun reader stopped");
}

/// The drain loop shared by every tun reader; returns why it stopped.
///
/// A vassal's reader (`vassal` set) shapes its `net_out`: it reads only
/// while the vassal's egress bucket holds tokens, and otherwise sleeps
/// until it does, reading nothing meanwhile. What the vassal sends then
/// waits in its own tun queue, and its sockets feel it (docs/design.md,
/// "Network limits").
async fn read_loop(
    fd: BorrowedFd<'_>,
    vnet: bool,
    router: &Router,
    vassal: Option<&Vassal>,
    mut handle: impl FnMut(&Snapshot, &AddrMap, Frame<'_>),
) -> Io {
    let project = vassal.map(|v| v.project.name.as_str());
    let egress = vassal.filter(|v| v.egress.limited());
    let firewall = &router.firewall;
    // SAFETY: `fd` is borrowed for this whole function, so it stays open
    // (and the same description) for the AsyncFd's lifetime.
    let afd = match unsafe {
        AsyncFd::register_with_interest(Watched(fd.as_raw_fd()), Interest::READABLE)
    } {
        Ok(afd) => afd,
        Err(e) => return Io::Failed(std::io::Error::from(e).raw_os_error().unwrap_or(0)),
    };
    let mut snap = Snapshot::take(firewall, project);
    loop {
        if let Some(v) = egress {
            let before = rate::now_ns();
            let wait = v.egress.wait(before);
            if !wait.is_zero() {
                // The timer rounds up (to a millisecond): count the time
                // really spent off the tun, not the time asked.
                tokio::time::sleep(wait).await;
                let waited = rate::now_ns().saturating_sub(before);
                v.project.counters.shaped_us.add(waited / 1000);
            }
        }
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => return Io::Failed(e.raw_os_error().unwrap_or(0)),
        };
        snap.refresh(firewall, project);
        // The batch is synchronous: no await while the thread's buffer is
        // borrowed.
        let batch = READ.with_borrow_mut(|buf| {
            // The registry as it is now, for this batch only: no lock and
            // no shared count per packet, and nothing held across an await.
            let vassals = router.registry.view();
            for _ in 0..BATCH {
                if egress.is_some_and(|v| !v.egress.ready(snap.now)) {
                    // Out of tokens: leave the rest queued in the tun.
                    return Ok(false);
                }
                match tun::read(fd, buf) {
                    Io::Done(n) => match frame_of(&buf[..n], vnet) {
                        Some(frame) => handle(&snap, &vassals, frame),
                        None => continue,
                    },
                    Io::WouldBlock => return Ok(true),
                    end => return Err(end),
                }
            }
            Ok(false)
        });
        match batch {
            Ok(true) => {
                guard.clear_ready();
                drop(guard);
            }
            Ok(false) => {
                drop(guard);
                tokio::task::yield_now().await;
            }
            Err(end) => return end,
        }
    }
}
