//! The control socket: the attach protocol (`docs/protocol.md`) plus the
//! operator's `stats` and `reload` requests.
//!
//! One task per connection. The peer's SO_PEERCRED uid must be listed in
//! `launcher_uids` (root included: it is not implicitly trusted). A first
//! request must come within `limits.hello_timeout_ms`. An accepted hello
//! keeps the connection: the vassal is attached while it stays open, and
//! detached when it closes.

use crate::config::{host6_in_subnet, host_in_subnet, Config};
use crate::datapath::router::Router;
use crate::datapath::{cores, reader};
use crate::os::events;
use crate::os::socket;
use crate::os::tun;
use crate::port::Port;
use crate::state::counters::{self, DropReason};
use crate::state::rate;
use crate::state::registry::{Burst, Vassal};
use crate::wire::offload;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use vassal_attach::transport::{self, TransportError};
use vassal_attach::{
    decode_request, encode, encode_cluster, encode_stats, ClusterBlock, ClusterIdentity, Hello,
    LeaseRequest, ProjectStats, RateLimit, RefuseReason, Request, Response, MAX_MESSAGE_LEN,
    PROTOCOL_VERSION,
};

/// Accepts control connections until the router stops.
pub async fn serve(router: Arc<Router>, listener: OwnedFd) {
    let open = Arc::new(AtomicUsize::new(0));
    socket::accept_loop("control socket", listener, |fd| {
        if open.load(Ordering::Relaxed) >= router.config.limits.max_connections {
            tracing::warn!("control socket: connection limit reached; closing a new connection");
            counters::attach_refused("too_many_connections");
            return;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let router = Arc::clone(&router);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            connection(router, fd).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    })
    .await
}

/// Receives one datagram, waiting for readability.
async fn recv(
    afd: &AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> Result<(usize, Option<OwnedFd>), TransportError> {
    loop {
        let mut guard = afd.readable().await.map_err(|e| {
            TransportError::Receive(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
        match transport::recv_datagram(afd.get_ref().as_fd(), buf) {
            Err(TransportError::WouldBlock) => guard.clear_ready(),
            other => return other,
        }
    }
}

/// Sends one datagram; answers are small, a full socket buffer means a
/// peer that does not read: it gets a short grace period, then is dropped.
async fn send(afd: &AsyncFd<OwnedFd>, bytes: &[u8]) -> Result<(), TransportError> {
    let attempt = async {
        loop {
            let mut guard = afd.writable().await.map_err(|e| {
                TransportError::Send(nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            })?;
            match transport::send_datagram(afd.get_ref().as_fd(), bytes, None) {
                Err(TransportError::WouldBlock) => guard.clear_ready(),
                other => return other,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or(Err(TransportError::WouldBlock))
}

async fn refuse(afd: &AsyncFd<OwnedFd>, uid: u32, reason: RefuseReason, message: String) {
    tracing::warn!(
        uid,
        reason = reason.as_str(),
        "control request refused: {message}"
    );
    counters::attach_refused(reason.as_str());
    crate::os::events::emit(
        "attach_refused",
        serde_json::json!({ "uid": uid, "reason": reason.as_str(), "message": message }),
    );
    let _ = send(afd, &encode(&Response::Refused { reason, message })).await;
}

async fn connection(router: Arc<Router>, fd: OwnedFd) {
    let uid = match socket::peer_uid(&fd) {
        Ok(uid) => uid,
        Err(e) => return tracing::warn!("control socket: SO_PEERCRED: {e}"),
    };
    // SAFETY: `fd` is an open socket owned by the AsyncFd for its lifetime.
    let Ok(afd) =
        (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) })
    else {
        return;
    };
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let hello_timeout = Duration::from_millis(router.config.limits.hello_timeout_ms);
    let first = match tokio::time::timeout(hello_timeout, recv(&afd, &mut buf)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(uid, "control connection sent nothing in time; closed");
            return;
        }
    };
    let mut attached: Option<(Arc<Vassal>, tokio::task::JoinHandle<()>)> = None;
    let mut next = Some(first);
    loop {
        let received = match next.take() {
            Some(r) => r,
            // An attached vassal's connection stays as long as it likes;
            // an operator's (stats, reload) must keep asking, or it is
            // closed, so idle clients cannot use up `max_connections`.
            None if attached.is_some() => recv(&afd, &mut buf).await,
            None => match tokio::time::timeout(hello_timeout, recv(&afd, &mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let (len, passed_fd) = match received {
            Ok(r) => r,
            Err(TransportError::Closed) => break,
            Err(TransportError::Truncated) => {
                refuse(
                    &afd,
                    uid,
                    RefuseReason::Malformed,
                    format!(
                        "datagram larger than {MAX_MESSAGE_LEN} bytes or with more than one fd"
                    ),
                )
                .await;
                break;
            }
            Err(e) => {
                tracing::warn!(uid, "control connection: {e}");
                break;
            }
        };
        if !router.config.launcher_uids.contains(&uid) {
            refuse(
                &afd,
                uid,
                RefuseReason::Unauthorized,
                format!("uid {uid} is not in launcher_uids"),
            )
            .await;
            break;
        }
        let request = match decode_request(&buf[..len]) {
            Ok(r) => r,
            Err(e) => {
                refuse(&afd, uid, RefuseReason::Malformed, e.to_string()).await;
                break;
            }
        };
        match request {
            Request::Hello(hello) => {
                if attached.is_some() {
                    refuse(
                        &afd,
                        uid,
                        RefuseReason::Malformed,
                        "this connection already attached a vassal".into(),
                    )
                    .await;
                    break;
                }
                match attach(&router, &hello, passed_fd) {
                    Ok(vassal) => {
                        // A version-1 client knows no limits: it is told none.
                        let (net_out, net_in) = if hello.version >= 2 {
                            limits_of(&router.config, &hello)
                        } else {
                            (None, None)
                        };
                        let accepted = Response::Accepted {
                            version: PROTOCOL_VERSION,
                            gateway: router.config.gateway.addr(),
                            gateway6: router.config.gateway6.map(|g| g.addr()),
                            net_out,
                            net_in,
                        };
                        let reader = cores::spawn(reader::vassal_reader(
                            Arc::clone(&router),
                            Arc::clone(&vassal),
                        ));
                        tracing::info!(project = %hello.project, ipv4 = %hello.ipv4, ipv6 = ?hello.ipv6, uid, "vassal attached");
                        router
                            .cluster
                            .register(vassal.ipv4, vassal.ipv6, &hello.project);
                        attached = Some((vassal, reader));
                        if send(&afd, &encode(&accepted)).await.is_err() {
                            break;
                        }
                    }
                    Err((reason, message)) => {
                        refuse(&afd, uid, reason, message).await;
                        break;
                    }
                }
            }
            Request::Lease(request) => {
                let answer = match lease(&router, &request) {
                    Ok(answer) => answer,
                    Err((reason, message)) => {
                        refuse(&afd, uid, reason, message).await;
                        break;
                    }
                };
                tracing::info!(project = %request.project, name = %request.name, uid, "address leased: {answer:?}");
                let _ = send(&afd, &encode(&answer)).await;
                // One lease per connection: the attach comes on another.
                break;
            }
            Request::Cluster => {
                let mut ok = true;
                for datagram in cluster_view(&router) {
                    if send(&afd, &datagram).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
            Request::Stats => {
                let mut ok = true;
                for datagram in encode_stats(&stats(&router)) {
                    if send(&afd, &datagram).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
            Request::Event(event) => {
                // The vassal is the one this connection attached, whatever
                // the message might claim; a connection without one has no
                // business reporting.
                let Some((vassal, _)) = &attached else {
                    refuse(
                        &afd,
                        uid,
                        RefuseReason::Malformed,
                        "events come on the connection that attached their vassal".into(),
                    )
                    .await;
                    break;
                };
                events::emit(
                    event.event.as_str(),
                    serde_json::json!({
                        "project": vassal.project.name,
                        "address": vassal.ipv4,
                        "count": event.count,
                        "source": "vassal-launch",
                    }),
                );
            }
            Request::Usage(usage) => {
                // Counted to the project of the vassal this connection
                // attached, as events are: the message names no project.
                let Some((vassal, _)) = &attached else {
                    refuse(
                        &afd,
                        uid,
                        RefuseReason::Malformed,
                        "usage comes on the connection that attached its vassal".into(),
                    )
                    .await;
                    break;
                };
                vassal.project.usage.report(vassal.id, &usage);
            }
            Request::Reload => {
                let answer = match reload(&router).await {
                    Ok((out_rules, in_rules)) => Response::Reloaded {
                        out_rules,
                        in_rules,
                    },
                    Err(message) => Response::Error { message },
                };
                if send(&afd, &encode(&answer)).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some((vassal, reader)) = attached {
        reader.abort();
        router.registry.detach(&vassal);
        vassal.project.usage.detach(vassal.id);
        if router
            .registry
            .lookup(std::net::IpAddr::V4(vassal.ipv4))
            .is_none()
        {
            router.cluster.unregister(vassal.ipv4, vassal.ipv6);
        }
        tracing::info!(project = %vassal.project.name, ipv4 = %vassal.ipv4, "vassal detached");
    }
}

/// Validates a hello and attaches its tun.
fn attach(
    router: &Router,
    hello: &Hello,
    fd: Option<OwnedFd>,
) -> Result<Arc<Vassal>, (RefuseReason, String)> {
    let config = &router.config;
    if !vassal_attach::version_supported(hello.version) {
        return Err((
            RefuseReason::BadVersion,
            format!(
                "protocol version {} is not supported; this router speaks {}..={PROTOCOL_VERSION}",
                hello.version,
                vassal_attach::OLDEST_PROTOCOL_VERSION
            ),
        ));
    }
    let fd = fd.ok_or((
        RefuseReason::BadDevice,
        "the hello carried no file descriptor".to_owned(),
    ))?;
    let device = tun::check(fd.as_fd()).map_err(|e| (RefuseReason::BadDevice, e.to_string()))?;
    if !host_in_subnet(config.gateway, hello.ipv4) {
        return Err((
            RefuseReason::AddressOutsideSubnet,
            format!("{} is not a vassal address of {} (outside it, or its gateway, network or broadcast address)", hello.ipv4, config.gateway),
        ));
    }
    if let Some(a) = hello.ipv6 {
        if !config.gateway6.is_some_and(|g| host6_in_subnet(g, a)) {
            return Err((
                RefuseReason::AddressOutsideSubnet,
                match config.gateway6 {
                    Some(g) => format!("{a} is not a vassal address of {g}"),
                    None => format!("{a}: this router has no IPv6 subnet (gateway6 unset)"),
                },
            ));
        }
    }
    if let Some(entry) = config.project(&hello.project) {
        if entry.address != hello.ipv4 || (entry.address6.is_some() && entry.address6 != hello.ipv6)
        {
            return Err((
                RefuseReason::ProjectMismatch,
                format!(
                    "project {} is configured with address {}{}",
                    entry.name,
                    entry.address,
                    entry
                        .address6
                        .map(|a| format!(" and {a}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    if let Some(owner) = config.projects.iter().find(|p| {
        p.name != hello.project
            && (p.address == hello.ipv4 || (hello.ipv6.is_some() && p.address6 == hello.ipv6))
    }) {
        return Err((
            RefuseReason::ProjectMismatch,
            format!(
                "the address is reserved for project {} by the [[project]] table",
                owner.name
            ),
        ));
    }
    if let Some(owner) = router.cluster.reserved_by(hello.ipv4) {
        if owner != hello.project {
            return Err((
                RefuseReason::AddressInUse,
                format!(
                    "{} is leased to a vassal of project {owner} (automatic address)",
                    hello.ipv4
                ),
            ));
        }
    }
    tun::set_nonblocking(fd.as_fd()).map_err(|e| (RefuseReason::BadDevice, e.to_string()))?;
    if device.vnet {
        // The router, not the launcher, decides what the kernel may hand
        // over: only what the datapath can check and count.
        let offloads = if config.limits.offload {
            offload::TUN_OFFLOADS
        } else {
            0
        };
        tun::set_offloads(fd.as_fd(), &device.name, offloads)
            .map_err(|e| (RefuseReason::BadDevice, e.to_string()))?;
    }
    let project = router.registry.project(&hello.project);
    router.flows.ensure_slot(project.slot, &project.name);
    router.fragments.ensure_slot(project.slot);
    tracing::debug!(device = device.name, vnet = device.vnet, project = %hello.project, "tun device checked");
    let port = Port::Tun {
        fd,
        vnet: device.vnet,
    };
    let (out, inn) = limits_of(config, hello);
    router.registry.attach_with_limits(
        project,
        hello.ipv4,
        hello.ipv6,
        port,
        [out, inn],
        Burst::Full,
    )
}

/// The `[net_out, net_in]` limits in force for the vassal of `hello`: what
/// it asks, the project's default when it asks none, never above the
/// project's ceiling (docs/operations.md, "Network tiers"). A version-1
/// hello asks none.
pub fn limits_of(config: &Config, hello: &Hello) -> (Option<RateLimit>, Option<RateLimit>) {
    let tier = config
        .project(&hello.project)
        .map(|p| p.net)
        .unwrap_or_default();
    let [out, inn] = rate::in_force(&tier, [hello.net_out, hello.net_in]);
    (out, inn)
}

/// Answers a lease request: the project's `[[project]]` address when it
/// has one, else the vassal name's reservation or a free address.
fn lease(router: &Router, request: &LeaseRequest) -> Result<Response, (RefuseReason, String)> {
    let config = &router.config;
    let (ipv4, static6) = match config.project(&request.project) {
        Some(entry) => (entry.address, entry.address6),
        None => {
            let busy = |a: std::net::Ipv4Addr| {
                router.registry.lookup(std::net::IpAddr::V4(a)).is_some()
                    || config.projects.iter().any(|p| p.address == a)
            };
            let a = router
                .cluster
                .lease(&request.project, &request.name, busy)
                .ok_or_else(|| {
                    (
                        RefuseReason::NoAddress,
                        format!("every address of {} is in use", config.gateway.trunc()),
                    )
                })?;
            (a, None)
        }
    };
    let ipv6 = match (request.ipv6, config.gateway6) {
        (true, Some(g6)) => static6.or_else(|| {
            let offset = u32::from(ipv4).wrapping_sub(u32::from(config.gateway.network()));
            let a = std::net::Ipv6Addr::from(u128::from(g6.network()) + u128::from(offset));
            host6_in_subnet(g6, a).then_some(a)
        }),
        _ => None,
    };
    Ok(Response::Leased {
        version: PROTOCOL_VERSION,
        ipv4,
        ipv6,
        gateway: config.gateway.addr(),
        prefix_len: config.gateway.prefix_len(),
        gateway6: ipv6.and(config.gateway6.map(|g| g.addr())),
        prefix6_len: ipv6.and(config.gateway6.map(|g| g.prefix_len())),
    })
}

/// The `cluster` answer: this router's block, every node's, the cache.
fn cluster_view(router: &Router) -> Vec<Vec<u8>> {
    let Some(m) = router.cluster.membership() else {
        return encode_cluster(None, false, None, Vec::new(), Vec::new());
    };
    let blocks = m
        .nodes()
        .iter()
        .map(|n| ClusterBlock {
            node: n.node.clone(),
            ipv4: n.block.net.to_string(),
            ipv6: n.block.net6.map(|b| b.to_string()),
            underlay: n.underlay.to_string(),
        })
        .collect();
    let mut identities: Vec<ClusterIdentity> = m
        .identities()
        .iter()
        .map(|(a, id)| ClusterIdentity {
            address: a.to_string(),
            project: id.project.clone(),
            node: id.node.clone(),
        })
        .collect();
    identities.sort_by(|a, b| a.address.cmp(&b.address));
    encode_cluster(
        Some(m.config.node.clone()),
        m.etcd_up(),
        Some(m.block.net.to_string()),
        blocks,
        identities,
    )
}

/// Per-project counters for `stats`.
pub fn stats(router: &Router) -> Vec<ProjectStats> {
    router
        .registry
        .projects()
        .iter()
        .map(|p| {
            let c = &p.counters;
            let usage = p.usage.totals();
            ProjectStats {
                project: p.name.clone(),
                attached: p.attached() > 0,
                tx_bytes: c.tx_bytes.get(),
                tx_packets: c.tx_packets.get(),
                rx_bytes: c.rx_bytes.get(),
                rx_packets: c.rx_packets.get(),
                dropped: DropReason::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), c.dropped(*r)))
                    .collect(),
                flows: router.flows.count(p.slot) as u64,
                cpu_usec: usage.cpu_usec,
                io_read_bytes: usage.io_read_bytes,
                io_write_bytes: usage.io_write_bytes,
            }
        })
        .collect()
}

/// Reloads the rule file (SIGHUP and the Reload request): the number of
/// out and in rules now in force, or the errors (old rules kept).
/// Reads and compiles the rules on a blocking thread, so a large rule file
/// never holds up the runtime's workers (and the readers on them).
pub async fn reload(router: &Arc<Router>) -> Result<(usize, usize), String> {
    let compiling = Arc::clone(router);
    let reloaded = tokio::task::spawn_blocking(move || compiling.firewall.reload())
        .await
        .map_err(|e| format!("the rule compiler stopped: {e}"))?;
    match reloaded {
        Ok(rules) => {
            router.host.reloads.add(1);
            tracing::info!(
                out_rules = rules.out_rules,
                in_rules = rules.in_rules,
                generation = rules.generation,
                "rules reloaded"
            );
            Ok((rules.out_rules, rules.in_rules))
        }
        Err(e) => {
            router.host.reload_failures.add(1);
            tracing::error!("rules reload failed; the previous rules stay in force: {e}");
            Err(e.to_string())
        }
    }
}
