//! `vassal-router run`: sets everything up in a safe order, runs the tasks,
//! handles signals, and undoes what it installed on exit.
//!
//! Order: rules (refuse to start on a bad file) -> metrics listener ->
//! cluster block (docs/cluster.md) -> host tun -> nftables table -> flow
//! state file (the predecessor's flows restored) -> cluster routes, guard
//! table and the datapath's view of the other hosts -> tasks -> control
//! and compat sockets last, so that the control socket existing means the
//! router is ready.

pub mod cluster_routes;
pub mod membership;
pub mod watch;

use crate::compat;
use crate::config::Config;
use crate::control;
use crate::datapath::cores::{self, CoresError};
use crate::datapath::reader;
use crate::datapath::router::Router;
use crate::metrics::{self, MetricsError};
use crate::os::clock;
use crate::os::host_tun::{self, HostTunError};
use crate::os::nat::{NatError, Table};
use crate::os::socket::{self, SocketError};
use crate::state::counters::HostCounters;
use crate::state::firewall::{Firewall, FirewallError};
use crate::state::flow_store::{self, Found};
use crate::state::flows::{FlowTable, SHARDS};
use crate::state::registry::Registry;
use crate::state::restore;
use nix::sys::socket::SockType;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// The router could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The rule file is invalid.
    #[error(transparent)]
    Rules(#[from] FirewallError),
    /// The metrics listener failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The host tun failed.
    #[error(transparent)]
    HostTun(#[from] HostTunError),
    #[error(transparent)]
    Cores(#[from] CoresError),
    /// NAT setup or removal failed.
    #[error(transparent)]
    Nat(#[from] NatError),
    /// A listening socket failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The event sink could not be set up.
    #[error("setting up the event sink: {0}")]
    Events(#[source] std::io::Error),
    /// The cluster could not be joined.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The routes to the other hosts could not be set up.
    #[error("setting up the cluster routes: {0}")]
    Routes(#[from] crate::os::routes::RouteError),
    /// The underlay address is not one the routes can use.
    #[error("cluster.underlay {0}: the routes between hosts need an IPv4 underlay")]
    Underlay(std::net::IpAddr),
    /// Installing a signal handler failed.
    #[error("installing the {signal} handler: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs the router until SIGTERM or SIGINT.
pub async fn run(mut config: Config) -> Result<(), DaemonError> {
    let firewall = Firewall::load(config.rules.clone())?;
    metrics::install(config.metrics_listen)?;
    crate::os::events::init(&config.events.sink).map_err(DaemonError::Events)?;
    let host = HostCounters::register();
    let sig = |kind, name| {
        signal(kind).map_err(|source| DaemonError::Signal {
            signal: name,
            source,
        })
    };
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;

    socket::ensure_free(&config.control_socket, SockType::SeqPacket)?;
    if let Some(path) = &config.compat_socket {
        socket::ensure_free(path, SockType::Stream)?;
    }
    // With [cluster], the block (hence the gateway) is known from here on.
    let cluster = crate::cluster::Cluster::start(&mut config).await?;
    // One host tun queue (and reader, and datapath thread) per core.
    let queues = match config.limits.host_queues {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        n => n,
    };
    let host_tun = host_tun::create(&config, queues)?;
    // One datapath thread per queue (docs/design.md, "Threads and tasks").
    cores::start(queues)?;
    // NAT on or off: the table also guards the host (docs/design.md).
    let table = Table::install(&config)?;
    let registry = Registry::new(config.limits.max_vassals);
    let flows = open_flows(&config, &registry);
    let router = Arc::new(Router {
        registry,
        flows,
        fragments: crate::state::fragments::FragmentTable::new(config.fragments.clone()),
        firewall,
        host,
        host_tun,
        remote: Default::default(),
        cluster,
        config,
    });
    let etcd = match &router.config.cluster {
        Some(c) => membership::endpoint_addresses(&c.etcd).await,
        None => Vec::new(),
    };
    let follower = match start_routes(&router, etcd) {
        Ok(f) => f,
        Err(e) => {
            let _ = table.remove();
            return Err(e);
        }
    };
    let result = serve(&router, &mut hup, &mut term, &mut int).await;
    // Undo in reverse order, whatever happened.
    let _ = std::fs::remove_file(&router.config.control_socket);
    if let Some(path) = &router.config.compat_socket {
        let _ = std::fs::remove_file(path);
    }
    if let Some(f) = follower {
        f.stop().await;
    }
    table.remove()?;
    tracing::info!("router stopped");
    result
}

/// With `[cluster]`: the routes to the other hosts' blocks (and the VXLAN
/// device), the guard table, and the datapath's view of the other hosts,
/// all following the membership kept from etcd (docs/cluster.md).
/// `etcd` holds the etcd endpoints' addresses, closed to vassals.
fn start_routes(
    router: &Arc<Router>,
    mut etcd: Vec<std::net::IpAddr>,
) -> Result<Option<cluster_routes::Follower>, DaemonError> {
    let (Some(settings), Some(m)) = (&router.config.cluster, router.cluster.membership()) else {
        return Ok(None);
    };
    let std::net::IpAddr::V4(underlay) = settings.underlay else {
        return Err(DaemonError::Underlay(settings.underlay));
    };
    etcd.push(settings.underlay);
    let follower = cluster_routes::start(
        router,
        Arc::new(membership::Core {
            membership: Arc::clone(m),
            infra: etcd,
        }),
        cluster_routes::mode(settings),
        m.block.net,
        underlay,
    )?;
    Ok(Some(follower))
}

/// The flow table, written to the state file as it goes, with the flows
/// the previous process left there restored (before any reader runs).
/// Without a usable state directory the router runs without persistence.
fn open_flows(config: &Config, registry: &Registry) -> FlowTable {
    let now = clock::boot_secs();
    let path = flow_store::path(config);
    let opened = flow_store::boot_id().and_then(|id| flow_store::open(config, SHARDS, &id));
    let (store, found) = match opened {
        Ok((store, found)) => (Some(store), found),
        Err(e) => {
            tracing::error!(error = %e, "flows will not survive a restart");
            (None, Found::default())
        }
    };
    if let Some(why) = &found.refused {
        tracing::warn!(path = %path.display(), why = why.as_str(), "previous flow state not read");
    }
    let flows = FlowTable::with_store(config.flows.clone(), store);
    flows.tick(now);
    let r = restore::restore(&found, config, now, registry, &flows);
    for (outcome, n) in [
        ("loaded", r.loaded),
        ("invalid", r.invalid),
        ("expired", r.expired),
        ("over_bound", r.over_bound),
    ] {
        ::metrics::counter!("vassal_flows_restored_total", "outcome" => outcome)
            .increment(n as u64);
    }
    tracing::info!(
        path = %path.display(),
        loaded = r.loaded,
        invalid = r.invalid,
        expired = r.expired,
        over_bound = r.over_bound,
        "flows restored"
    );
    if let Err(e) = flows.publish_store() {
        tracing::error!(error = %e, "flows will not survive a restart");
    }
    flows
}

async fn serve(
    router: &Arc<Router>,
    hup: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<(), DaemonError> {
    let mut tasks = Vec::new();
    for queue in 0..router.host_tun.len() {
        tasks.push(cores::spawn_on(
            queue,
            reader::host_reader(Arc::clone(router), queue),
        ));
    }
    tasks.push(tokio::spawn(sweeper(Arc::clone(router))));
    if let Some(path) = &router.config.compat_socket {
        let listener = socket::listen(path, SockType::Stream)?;
        tasks.push(tokio::spawn(compat::serve(Arc::clone(router), listener)));
    }
    let listener = socket::listen(&router.config.control_socket, SockType::SeqPacket)?;
    tasks.push(tokio::spawn(control::serve(Arc::clone(router), listener)));
    tracing::info!(
        device = %router.config.device,
        gateway = %router.config.gateway,
        control = %router.config.control_socket.display(),
        metrics = %router.config.metrics_listen,
        "router ready"
    );
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = control::reload(router).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Flow-table sweep steps per second: each visits `SHARDS / SWEEP_STEPS`
/// shards, so every flow is looked at once a second and no reader waits
/// for more than a few shards' pass.
const SWEEP_STEPS: u32 = 16;

/// Ticks the flow and fragment tables' clocks, expires idle flows (a few
/// shards at a time) and fragmented datagrams, publishes the flow gauges
/// and turns counter movement into events, once a second.
async fn sweeper(router: Arc<Router>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / SWEEP_STEPS);
    let mut watch = watch::Watch::new(
        router.config.events.denied_per_second,
        router.config.events.distinct_ports_per_second,
    );
    let shards = SHARDS.div_ceil(SWEEP_STEPS as usize);
    let mut step = 0u32;
    loop {
        tick.tick().await;
        let total = router.flows.sweep_step(shards);
        step = step.wrapping_add(1);
        if step % SWEEP_STEPS != 1 {
            continue;
        }
        router.flows.tick(clock::boot_secs());
        router.fragments.tick(start.elapsed().as_secs() as u32);
        let in_flight = router.fragments.sweep();
        router.host.fragments_total.set(in_flight as f64);
        router.host.flows_total.set(total as f64);
        let projects = router.registry.projects();
        for p in &projects {
            p.counters.flows.set(router.flows.count(p.slot) as f64);
        }
        watch.tick(&projects, 1);
    }
}
