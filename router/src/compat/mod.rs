//! uWSGI tuntap compatibility: existing uWSGI vassals (`tuntap-device =
//! <dev> <compat_socket>`) attach over a SOCK_STREAM unix socket carrying
//! frames `[0][len u16 LE][modifier2]` + payload.
//!
//! - modifier2 0: one IP packet, fed to the same datapath as a tun vassal's.
//! - modifier2 1: a block of vassal-supplied firewall rules. Tenants must not
//!   write rules, but uWSGI vassals configured with `tuntap-device-rule`
//!   send them at start: the frame is skipped, counted
//!   (`vassal_compat_rule_blocks_total`) and logged; the peer stays.
//! - anything else (modifier1 != 0, unknown modifier2, a length above the
//!   MTU): the peer is disconnected. A bad peer never stops the router.
//!
//! Identity comes from the `[[project]]` entry whose `uid` is the peer's
//! SO_PEERCRED uid, or, when the peer first sends uWSGI's credentials
//! message (the 12 bytes `uwsgi-tuntap` with SCM_CREDENTIALS), the uid in
//! those credentials. No entry: the peer is closed. uWSGI opens a new relay
//! connection each time it jails itself (a fresh namespace and device), so
//! a newer compat connection of the same project takes the address over
//! from an older compat one; the older stays open but is ignored, because
//! uWSGI exits when a relay's server disconnects. The newer one must first
//! prove it speaks the protocol: SO_PEERCRED alone attaches a connection
//! only to a free address; it takes a held one with its credentials message
//! or its first well-formed frame (so a root connection that sends nothing
//! or garbage never displaces a `uid = 0` project's peer), or when the
//! holder disconnects. A vassal attached over the control socket is never
//! displaced. Packets toward a peer
//! go through a bounded per-peer queue; when it is full they are dropped
//! (`queue_full`), so a peer that never reads costs at most that buffer.

use crate::config::MAX_MTU;
use crate::datapath::router::{Router, Snapshot};
use crate::os::socket;
use crate::port::compat_queue::CompatOut;
use crate::port::Port;
use crate::state::rate;
use crate::state::registry::{Burst, Vassal};
use crate::wire::frame::Frame as IpFrame;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use vassal_attach::RefuseReason;

const CREDENTIALS_MAGIC: &[u8; 12] = b"uwsgi-tuntap";

/// One whole frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// modifier2 = 1: a vassal-supplied rule block (refused and counted).
    pub rule_block: bool,
    /// The IP packet (or rule block) it carries.
    pub payload: &'a [u8],
    /// Bytes of the buffer it takes, header included.
    pub consumed: usize,
}

/// A frame the peer must be disconnected for.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// modifier1 != 0 or modifier2 > 1.
    BadHeader([u8; 4]),
    /// A length above the MTU.
    TooLong(usize),
}

/// Decodes the frame at the start of `buf`: `Ok(None)` when more bytes are
/// needed. Pure, so that it is unit-tested and fuzzed on its own; a length
/// is checked against `mtu` as soon as the header is in, before waiting
/// for (or buffering) its payload.
pub fn decode_frame(buf: &[u8], mtu: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(h) = buf.get(..4) else {
        return Ok(None);
    };
    let header = [h[0], h[1], h[2], h[3]];
    let len = usize::from(u16::from_le_bytes([h[1], h[2]]));
    if h[0] != 0 || h[3] > 1 {
        return Err(FrameError::BadHeader(header));
    }
    if len > mtu {
        return Err(FrameError::TooLong(len));
    }
    Ok(buf.get(4..4 + len).map(|payload| Frame {
        rule_block: h[3] == 1,
        payload,
        consumed: 4 + len,
    }))
}

/// Why a compat peer was disconnected (the router itself carries on).
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// Reading a socket option of the peer's connection failed.
    #[error("compat peer: {0}: {1}")]
    Sockopt(&'static str, nix::errno::Errno),
    /// An I/O step on the peer's connection failed.
    #[error("compat peer: {0}: {1}")]
    Io(&'static str, std::io::Error),
    /// No `[[project]]` entry has the peer's uid (SO_PEERCRED or credentials).
    #[error("compat peer with uid {uid}: no [[project]] entry has this uid; refused")]
    UnknownUid {
        /// The uid.
        uid: u32,
    },
    /// The first bytes began like uWSGI's credentials message but were not one.
    #[error("compat peer with uid {uid}: malformed credentials message (expected `uwsgi-tuntap` with SCM_CREDENTIALS)")]
    BadCredentials {
        /// The SO_PEERCRED uid.
        uid: u32,
    },
    /// The address is held by another compat peer of the same project and
    /// this connection has not yet proven itself (no eviction).
    #[error("compat peer with uid {uid}: project {project}'s address is held by another compat peer; waiting for credentials or a frame")]
    Held {
        /// The uid the peer was identified by.
        uid: u32,
        /// The project.
        project: String,
    },
    /// The address is held (by a vassal attached over the control socket).
    #[error("compat peer with uid {uid}: refused ({reason}): {message}")]
    Refused {
        /// The uid the peer was identified by.
        uid: u32,
        /// The refusal reason label.
        reason: &'static str,
        /// Details.
        message: String,
    },
    /// A frame header with modifier1 != 0 or an unknown modifier2.
    #[error("compat peer of project {project}: bad frame header {header:02x?}")]
    BadHeader {
        /// The peer's project.
        project: String,
        /// The four header bytes.
        header: [u8; 4],
    },
    /// A frame longer than the MTU.
    #[error("compat peer of project {project}: frame of {len} bytes exceeds the MTU {mtu}")]
    TooLong {
        /// The peer's project.
        project: String,
        /// The announced length.
        len: usize,
        /// `limits.mtu`.
        mtu: usize,
    },
}

/// Open compat connections, in all and per peer uid.
#[derive(Default)]
struct Open {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// One open connection's place in [`Open`], given back on drop.
struct Slot {
    open: Arc<Mutex<Open>>,
    uid: u32,
}

impl Slot {
    /// Takes a place for a connection of `uid`, unless a bound is reached.
    fn take(open: &Arc<Mutex<Open>>, uid: u32, total: usize, per_uid: usize) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.per_uid.get(&uid).copied().unwrap_or(0);
        if o.total >= total || mine >= per_uid {
            return None;
        }
        o.total += 1;
        o.per_uid.insert(uid, mine + 1);
        metrics::gauge!("vassal_compat_connections").set(o.total as f64);
        Some(Slot {
            open: Arc::clone(open),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total -= 1;
        metrics::gauge!("vassal_compat_connections").set(o.total as f64);
        if let Some(n) = o.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                o.per_uid.remove(&self.uid);
            }
        }
    }
}

/// Accepts compat peers until the router stops. Open connections are
/// bounded in all (`limits.max_compat_connections`) and per peer uid
/// (`limits.max_compat_connections_per_uid`): beyond either a new one is
/// closed at once, so one uid cannot use up the router's memory or fds, nor
/// (short of its own bound) the others' places.
pub async fn serve(router: Arc<Router>, listener: OwnedFd) {
    let open = Arc::new(Mutex::new(Open::default()));
    socket::accept_loop("compat socket", listener, |fd| {
        let uid = match socket::peer_uid(&fd) {
            Ok(uid) => uid,
            Err(e) => return tracing::warn!("compat socket: SO_PEERCRED: {e}"),
        };
        let limits = &router.config.limits;
        let Some(slot) = Slot::take(
            &open,
            uid,
            limits.max_compat_connections,
            limits.max_compat_connections_per_uid,
        ) else {
            drop(fd);
            tracing::warn!(
                uid,
                "compat socket: connection limit reached; closing a new connection"
            );
            return crate::state::counters::attach_refused("too_many_connections");
        };
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            if let Err(why) = peer(router, fd, uid).await {
                tracing::warn!("disconnected: {why}");
            }
            drop(slot);
        });
    })
    .await
}

struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Bumped each time a compat peer detaches: peers waiting for a held
/// address ([`CompatError::Held`]) try again.
fn freed() -> &'static tokio::sync::watch::Sender<u64> {
    static FREED: OnceLock<tokio::sync::watch::Sender<u64>> = OnceLock::new();
    FREED.get_or_init(|| tokio::sync::watch::Sender::new(0))
}

/// Attaches the compat peer as the project whose `[[project]]` uid is `uid`;
/// `evict` (the peer proved itself) lets it take the address from an older
/// compat peer of the same project.
fn attach(
    router: &Router,
    uid: u32,
    out: &Arc<CompatOut>,
    evict: bool,
) -> Result<Arc<Vassal>, CompatError> {
    let entry = router
        .config
        .project_by_uid(uid)
        .ok_or(CompatError::UnknownUid { uid })?;
    let project = router.registry.project(&entry.name);
    router.flows.ensure_slot(project.slot, &project.name);
    router.fragments.ensure_slot(project.slot);
    let port = || Port::Compat(Arc::clone(out));
    // A compat peer cannot ask for limits: its project's tier decides
    // (defaults, else ceilings), as for a version-1 launcher. It may
    // reconnect at will, so its buckets start empty.
    let limits = rate::in_force(&entry.net, [None, None]);
    let attached = match router.registry.attach_with_limits(
        Arc::clone(&project),
        entry.address,
        entry.address6,
        port(),
        limits,
        Burst::Earned,
    ) {
        // uWSGI opens a new relay connection from each process that runs
        // its post-jail hook (the master, then workers) and expects the
        // newest to win. The peer is authenticated by uid, so a newer
        // compat connection of the same project replaces an older one; a
        // vassal attached over the control socket is never evicted.
        Err((RefuseReason::AddressInUse, message)) => {
            let holder = router.registry.lookup(IpAddr::V4(entry.address));
            match holder.as_deref() {
                Some(
                    old @ Vassal {
                        port: Port::Compat(old_out),
                        ..
                    },
                ) if old.project.name == entry.name => {
                    if !evict {
                        return Err(CompatError::Held {
                            uid,
                            project: entry.name.clone(),
                        });
                    }
                    router.registry.detach(old);
                    old_out.evicted.notify_one();
                    tracing::info!(project = %entry.name, "a newer compat connection replaces the older one");
                    router.registry.attach_with_limits(
                        project,
                        entry.address,
                        entry.address6,
                        port(),
                        limits,
                        Burst::Earned,
                    )
                }
                _ => Err((RefuseReason::AddressInUse, message)),
            }
        }
        other => other,
    };
    let vassal = attached.map_err(|(reason, message)| CompatError::Refused {
        uid,
        reason: reason.as_str(),
        message,
    })?;
    tracing::info!(project = %entry.name, address = %entry.address, uid, "compat peer attached");
    router
        .cluster
        .register(vassal.ipv4, vassal.ipv6, &vassal.project.name);
    Ok(vassal)
}

/// Serves one compat peer until it disconnects or misbehaves.
async fn peer(router: Arc<Router>, fd: OwnedFd, peer_uid: u32) -> Result<(), CompatError> {
    setsockopt(&fd, sockopt::PassCred, &true)
        .map_err(|e| CompatError::Sockopt("SO_PASSCRED", e))?;
    let raw = fd.as_raw_fd();
    let out = Arc::new(CompatOut::new(fd, router.config.limits.compat_buffer));
    // SAFETY: `raw` belongs to `out`, which this function holds (an Arc)
    // until after `afd` is dropped.
    let afd = unsafe {
        AsyncFd::register_with_interest(Watched(raw), Interest::READABLE | Interest::WRITABLE)
    }
    .map_err(|e| CompatError::Io("registering with the reactor", e.into()))?;
    // A peer whose SO_PEERCRED uid has an entry is attached at once when
    // its address is free (it may receive before it sends); one whose
    // address another compat peer holds waits until it proves itself or
    // the holder leaves; others must send credentials in time.
    let (mut vassal, held) = match attach(&router, peer_uid, &out, false) {
        Ok(v) => (Some(v), false),
        Err(why @ CompatError::Held { .. }) => {
            tracing::info!("{why}");
            (None, true)
        }
        Err(_) => (None, false),
    };
    let result = serve_peer(&router, &afd, &out, peer_uid, &mut vassal, held).await;
    if let Some(v) = vassal {
        router.registry.detach(&v);
        if router.registry.lookup(IpAddr::V4(v.ipv4)).is_none() {
            router.cluster.unregister(v.ipv4, v.ipv6);
        }
        freed().send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(project = %v.project.name, address = %v.ipv4, "compat peer detached");
    }
    result
}

async fn serve_peer(
    router: &Router,
    afd: &AsyncFd<Watched>,
    out: &Arc<CompatOut>,
    peer_uid: u32,
    vassal: &mut Option<Arc<Vassal>>,
    mut held: bool,
) -> Result<(), CompatError> {
    let mut left = freed().subscribe();
    let mtu = router.config.limits.mtu;
    let mut inbuf = vec![0u8; MAX_MTU + 4 + 4096];
    let mut fill = 0usize;
    let mut first = true;
    let mut replaced = false;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(router.config.limits.hello_timeout_ms);
    let mut snap = vassal
        .as_ref()
        .map(|v| Snapshot::take(&router.firewall, Some(&v.project.name)));
    loop {
        let pending = out.has_pending();
        // Its project's `net_out` shapes a compat peer as it does a tun's
        // reader: nothing is read from the connection while the bucket is
        // spent, so the peer's own writes block (the stream's backpressure).
        let now = rate::now_ns();
        let spent = vassal
            .as_ref()
            .filter(|v| v.egress.limited())
            .map_or(Duration::ZERO, |v| v.egress.wait(now));
        tokio::select! {
            _ = tokio::time::sleep(spent), if !spent.is_zero() => {
                if let Some(v) = vassal.as_ref() {
                    let waited = rate::now_ns().saturating_sub(now);
                    v.project.counters.shaped_us.add_micros(waited / 1000);
                }
            }
            r = afd.readable(), if spent.is_zero() => {
                let mut guard = r.map_err(|e| CompatError::Io("waiting to read", e))?;
                let (n, creds) = match read(afd.get_ref().0, &mut inbuf[fill..]) {
                    Ok(r) => r,
                    Err(libc::EAGAIN) => {
                        guard.clear_ready();
                        continue;
                    }
                    Err(e) => return Err(CompatError::Io("reading", std::io::Error::from_raw_os_error(e))),
                };
                drop(guard);
                if n == 0 {
                    return Ok(());
                }
                fill += n;
                let mut at = 0;
                if first {
                    first = false;
                    if inbuf[0] == CREDENTIALS_MAGIC[0] {
                        if fill < CREDENTIALS_MAGIC.len() || &inbuf[..12] != CREDENTIALS_MAGIC {
                            return Err(CompatError::BadCredentials { uid: peer_uid });
                        }
                        let uid = creds.ok_or(CompatError::BadCredentials { uid: peer_uid })?;
                        at = CREDENTIALS_MAGIC.len();
                        if vassal.is_none() || uid != peer_uid {
                            if let Some(old) = vassal.take() {
                                router.registry.detach(&old);
                                if router.registry.lookup(IpAddr::V4(old.ipv4)).is_none() {
                                    router.cluster.unregister(old.ipv4, old.ipv6);
                                }
                                freed().send_modify(|n| *n = n.wrapping_add(1));
                            }
                            *vassal = Some(attach(router, uid, out, true)?);
                            held = false;
                            // Its project (and so its rule id) changed.
                            snap = None;
                        }
                    }
                }
                if vassal.is_none() && held {
                    // Its first whole, well-formed frame proves it a relay:
                    // only then may it take the address over.
                    match decode_frame(&inbuf[at..fill], mtu) {
                        Ok(Some(_)) => {
                            *vassal = Some(attach(router, peer_uid, out, true)?);
                            held = false;
                        }
                        Ok(None) => continue,
                        Err(FrameError::BadHeader(header)) => {
                            return Err(CompatError::BadHeader { project: format!("uid {peer_uid} (unattached)"), header })
                        }
                        Err(FrameError::TooLong(len)) => {
                            return Err(CompatError::TooLong { project: format!("uid {peer_uid} (unattached)"), len, mtu })
                        }
                    }
                }
                let Some(v) = vassal.as_ref() else {
                    if replaced {
                        // A replaced relay talks for an abandoned device:
                        // read and forget.
                        fill = 0;
                        continue;
                    }
                    return Err(CompatError::UnknownUid { uid: peer_uid });
                };
                let snap = snap.get_or_insert_with(|| Snapshot::take(&router.firewall, Some(&v.project.name)));
                snap.refresh(&router.firewall, Some(&v.project.name));
                let vassals = router.registry.view();
                loop {
                    let frame = match decode_frame(&inbuf[at..fill], mtu) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(FrameError::BadHeader(header)) => {
                            return Err(CompatError::BadHeader { project: v.project.name.clone(), header })
                        }
                        Err(FrameError::TooLong(len)) => {
                            return Err(CompatError::TooLong { project: v.project.name.clone(), len, mtu })
                        }
                    };
                    if frame.rule_block {
                        v.project.counters.compat_rule_blocks.add(1);
                        tracing::warn!(project = %v.project.name, "compat peer sent a rule block: ignored");
                    } else {
                        router.from_vassal(v, snap, &vassals, IpFrame::plain(frame.payload));
                    }
                    at += frame.consumed;
                }
                inbuf.copy_within(at..fill, 0);
                fill -= at;
            }
            _ = out.wake.notified(), if !pending => {}
            _ = out.evicted.notified(), if !replaced => {
                // Detached by `attach` already. The connection stays open:
                // uWSGI exits when its relay's server disconnects, and the
                // process holding this relay is usually the live vassal that
                // just reconnected from its final namespace.
                *vassal = None;
                replaced = true;
            }
            w = afd.writable(), if pending => {
                let mut guard = w.map_err(|e| CompatError::Io("waiting to write", e))?;
                match out.flush() {
                    Ok(true) => {}
                    Ok(false) => guard.clear_ready(),
                    Err(e) => return Err(CompatError::Io("writing", std::io::Error::from_raw_os_error(e))),
                }
            }
            _ = left.changed(), if held && vassal.is_none() => {
                // A compat peer left: the address may be free now.
                if let Ok(v) = attach(router, peer_uid, out, false) {
                    *vassal = Some(v);
                    held = false;
                }
            }
            _ = tokio::time::sleep_until(deadline), if vassal.is_none() && !replaced && !held => {
                return Err(CompatError::UnknownUid { uid: peer_uid });
            }
        }
        if out.is_dead() {
            return Err(CompatError::Io(
                "writing",
                std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            ));
        }
    }
}

/// One `recvmsg`: bytes read and the uid of any SCM_CREDENTIALS.
fn read(fd: RawFd, buf: &mut [u8]) -> Result<(usize, Option<u32>), i32> {
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
            Ok(msg) => {
                let mut uid = None;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmCredentials(creds) = c {
                            uid = Some(creds.uid());
                        }
                    }
                }
                return Ok((msg.bytes, uid));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_exactly() {
        // A packet frame, then a rule block, in one buffer.
        let buf = [0, 3, 0, 0, b'a', b'b', b'c', 0, 1, 0, 1, b'r'];
        let f = decode_frame(&buf, 1500).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                rule_block: false,
                payload: b"abc",
                consumed: 7
            }
        );
        let g = decode_frame(&buf[7..], 1500).unwrap().unwrap();
        assert_eq!(
            g,
            Frame {
                rule_block: true,
                payload: b"r",
                consumed: 5
            }
        );
        // Truncated header or payload: wait for more.
        assert_eq!(decode_frame(&buf[..3], 1500), Ok(None));
        assert_eq!(decode_frame(&buf[..6], 1500), Ok(None));
        assert_eq!(decode_frame(&[], 1500), Ok(None));
        // Bad headers and oversized lengths are refused before any payload.
        assert_eq!(
            decode_frame(&[1, 0, 0, 0], 1500),
            Err(FrameError::BadHeader([1, 0, 0, 0]))
        );
        assert_eq!(
            decode_frame(&[0, 0, 0, 2], 1500),
            Err(FrameError::BadHeader([0, 0, 0, 2]))
        );
        assert_eq!(
            decode_frame(&[0, 0xff, 0xff, 0], 1500),
            Err(FrameError::TooLong(65535))
        );
        assert_eq!(decode_frame(&[0, 0xdc, 0x05, 0], 1500), Ok(None)); // exactly 1500: wait
        assert_eq!(
            decode_frame(&[0, 0xdd, 0x05, 0], 1500),
            Err(FrameError::TooLong(1501))
        );
    }
}
