//! The etcd side: the block claim, the lease kept alive, identities written
//! under it, and the watch that keeps the local cache of every node's
//! block and every vassal's identity. See docs/cluster.md for the keys.
//!
//! One session = one etcd lease. Any error ends the session; the next one
//! grants a new lease and re-confirms the same block (adopting the key when
//! it names this node), rewrites the identities and re-lists the cache.
//! Between sessions everything local keeps working (fail static).

use super::alloc::Reservation;
use super::persist::{self, State};
use super::secure::{self, Credentials};
use super::ClusterError;
use crate::config::blocks::Block;
use crate::config::cluster::{validate_node, ClusterConfig};
use arc_swap::ArcSwap;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A vassal's identity in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Its project.
    pub project: String,
    /// The node it is attached to.
    pub node: String,
}

/// A node's block in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBlock {
    /// The node.
    pub node: String,
    /// Its block.
    pub block: Block,
    /// Where to reach it.
    pub underlay: IpAddr,
}

/// Value of `<prefix>/blocks/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockValue {
    node: String,
    nonce: String,
    underlay: IpAddr,
    ipv4: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<String>,
}

/// Value of `<prefix>/nodes/<node>` (no lease: remembers a node's block so
/// others leave it alone while the node is away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeValue {
    index: u32,
}

#[derive(Debug, thiserror::Error)]
enum EtcdError {
    #[error("{step}: {}", explain(source, *opening_tls))]
    Client {
        step: &'static str,
        source: etcd_client::Error,
        /// The first requests over a new TLS connection, where a closed
        /// connection means etcd refused the client certificate.
        opening_tls: bool,
    },
    #[error("{0}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("{0}")]
    Lost(String),
    #[error("block {index} is held by node {holder}")]
    Conflict { index: u32, holder: String },
    #[error("every block is held by another node")]
    Exhausted,
}

/// The error with its causes, and a hint naming the key to look at when
/// TLS or authentication refused the connection.
fn explain(e: &etcd_client::Error, opening_tls: bool) -> String {
    let text = secure::describe(e);
    match secure::hint(&text, opening_tls) {
        Some(hint) => format!("{hint} ({text})"),
        None => text,
    }
}

async fn call<T>(
    step: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Client {
            step,
            source,
            opening_tls: false,
        }),
        Err(_) => Err(EtcdError::Timeout(step)),
    }
}

/// This router's membership in the cluster.
pub struct Membership {
    /// The configuration.
    pub config: ClusterConfig,
    /// The block this router serves (fixed for its lifetime).
    pub block: Block,
    credentials: Credentials,
    nonce: String,
    identities: ArcSwap<HashMap<IpAddr, Identity>>,
    nodes: ArcSwap<Vec<NodeBlock>>,
    changes: watch::Sender<u64>,
    local: Mutex<HashMap<IpAddr, String>>,
    wake: Notify,
    up: AtomicBool,
}

fn nonce() -> String {
    let mut bytes = [0u8; 12];
    // A fresh value per start; /dev/urandom failing leaves the time and
    // pid, still distinct between starts of one node.
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(t as u64).to_le_bytes());
        bytes[8..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to one endpoint and grants a lease. One endpoint per session,
/// the next one after a failure: the client's own balancing keeps trying a
/// dead member, which would stall every session on it.
async fn open(m: &Membership, endpoint: &str) -> Result<(Client, i64), EtcdError> {
    // With a user, connecting authenticates; without, the first request
    // (the lease) is where TLS fails.
    let step = if m.credentials.user().is_some() {
        "connecting and authenticating"
    } else {
        "connecting"
    };
    let options = m.credentials.options();
    let opening = |e| match e {
        EtcdError::Client { step, source, .. } => EtcdError::Client {
            step,
            source,
            opening_tls: m.credentials.tls(),
        },
        other => other,
    };
    let mut client = call(step, Client::connect([endpoint], Some(options)))
        .await
        .map_err(opening)?;
    let lease = call(
        "granting a lease",
        client.lease_grant(m.config.lease_ttl as i64, None),
    )
    .await
    .map_err(opening)?
    .id();
    Ok((client, lease))
}

impl Membership {
    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.config.key_prefix)
    }

    /// Claims (or recovers) the block, then runs the session loop in the
    /// background. Returns the reservations persisted with the block.
    pub(super) async fn start(
        config: ClusterConfig,
    ) -> Result<(Arc<Membership>, Vec<Reservation>), ClusterError> {
        let persisted = match persist::read(&config) {
            Ok(p) => p,
            Err(e) => {
                // Input that does not validate is ignored, not trusted.
                tracing::warn!("{e}; ignoring it");
                None
            }
        };
        metrics::describe_gauge!(
            "vassal_cluster_etcd_up",
            "1 while this router's etcd session is up, 0 while etcd is unreachable (fail static)."
        );
        metrics::describe_gauge!(
            "vassal_cluster_block_conflict",
            "1 while another node holds this router's block in etcd (see docs/cluster.md)."
        );
        metrics::describe_gauge!(
            "vassal_cluster_identities",
            "Entries of the identity cache."
        );
        metrics::describe_gauge!("vassal_cluster_nodes", "Nodes with a block in the cache.");
        let credentials = Credentials::load(&config.security)?;
        let nonce = nonce();
        let (changes, _) = watch::channel(0);
        let mut probe = Membership {
            block: config.blocks.block(0).ok_or(ClusterError::Exhausted {
                prefix: config.blocks.prefix().to_string(),
            })?,
            config,
            credentials,
            nonce,
            identities: ArcSwap::from_pointee(HashMap::new()),
            nodes: ArcSwap::from_pointee(Vec::new()),
            changes,
            local: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            up: AtomicBool::new(false),
        };
        let preferred = persisted.as_ref().map(|(i, _)| *i);
        let mut claimed = Err(EtcdError::Lost("no endpoint".into()));
        // Why each endpoint failed, for the error of a first start.
        let mut causes = Vec::new();
        for endpoint in &probe.config.etcd {
            claimed = async {
                let (mut client, lease) = open(&probe, endpoint).await?;
                let index = probe.claim(&mut client, lease, preferred, false).await?;
                Ok::<_, EtcdError>((client, lease, index))
            }
            .await;
            match &claimed {
                Ok(_) | Err(EtcdError::Exhausted) => break,
                Err(e) => {
                    tracing::warn!(endpoint, "claiming a block through this endpoint: {e}");
                    causes.push(format!("{endpoint}: {e}"));
                }
            }
        }
        let (index, session) = match claimed {
            Ok((client, lease, index)) => (index, Some((client, lease))),
            Err(EtcdError::Exhausted) => {
                return Err(ClusterError::Exhausted {
                    prefix: probe.config.blocks.prefix().to_string(),
                })
            }
            Err(e) => match preferred {
                Some(i) => {
                    tracing::warn!(
                        block = i,
                        "etcd unreachable at start ({e}); serving the persisted block"
                    );
                    (i, None)
                }
                None => {
                    return Err(ClusterError::NoBlock {
                        cause: if causes.is_empty() {
                            e.to_string()
                        } else {
                            causes.join("; ")
                        },
                        state: probe.config.state_file.display().to_string(),
                    })
                }
            },
        };
        probe.block = probe
            .config
            .blocks
            .block(index)
            .ok_or(ClusterError::Exhausted {
                prefix: probe.config.blocks.prefix().to_string(),
            })?;
        let reservations = match persisted {
            Some((i, state)) if i == index => state.reservations,
            _ => Vec::new(),
        };
        let membership = Arc::new(probe);
        membership.persist(reservations.clone());
        set_up(&membership, false);
        tracing::info!(node = %membership.config.node, block = %membership.block.net, "cluster block held");
        tokio::spawn(run(Arc::clone(&membership), session));
        Ok((membership, reservations))
    }

    /// Writes the state file (errors are logged: the block is in etcd too).
    pub(super) fn persist(&self, reservations: Vec<Reservation>) {
        let state = State {
            node: self.config.node.clone(),
            block: self.block.net,
            reservations,
        };
        if let Err(e) = persist::write(&self.config.state_file, &state) {
            tracing::error!("{e}");
        }
    }

    /// The identity of `addr`, from the cache (lock-free).
    pub fn identity(&self, addr: IpAddr) -> Option<Identity> {
        self.identities.load().get(&addr).cloned()
    }

    /// The whole identity cache (a snapshot; lock-free).
    pub fn identities(&self) -> Arc<HashMap<IpAddr, Identity>> {
        self.identities.load_full()
    }

    /// Every node's block, this one's included (a snapshot; lock-free).
    pub fn nodes(&self) -> Arc<Vec<NodeBlock>> {
        self.nodes.load_full()
    }

    /// Wakes on every change of [`Membership::nodes`] or
    /// [`Membership::identities`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether the etcd session is up now.
    pub fn etcd_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn register(&self, addr: IpAddr, project: &str) {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, project.to_owned());
        self.wake.notify_one();
    }

    pub(super) fn unregister(&self, addr: IpAddr) {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&addr);
        self.wake.notify_one();
    }

    fn identity_key(&self, addr: IpAddr) -> String {
        self.key(&format!("identities/{addr}"))
    }

    /// The put of `addr`'s identity under `lease`.
    fn identity_put(&self, addr: IpAddr, project: &str, lease: i64) -> TxnOp {
        let value = serde_json::to_vec(&Identity {
            project: project.to_owned(),
            node: self.config.node.clone(),
        })
        .unwrap_or_default();
        TxnOp::put(
            self.identity_key(addr),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
    }

    fn block_value(&self) -> BlockValue {
        BlockValue {
            node: self.config.node.clone(),
            nonce: self.nonce.clone(),
            underlay: self.config.underlay,
            ipv4: self.block.net.to_string(),
            ipv6: self.block.net6.map(|n| n.to_string()),
        }
    }

    fn block_put(&self, index: u32, lease: i64) -> Vec<TxnOp> {
        let mut value = self.block_value();
        if let Some(b) = self.config.blocks.block(index) {
            value.ipv4 = b.net.to_string();
            value.ipv6 = b.net6.map(|n| n.to_string());
        }
        vec![
            TxnOp::put(
                self.key(&format!("blocks/{index}")),
                serde_json::to_vec(&value).unwrap_or_default(),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(
                self.key(&format!("nodes/{}", self.config.node)),
                serde_json::to_vec(&NodeValue { index }).unwrap_or_default(),
                None,
            ),
        ]
    }

    /// Tries to hold block `index` under `lease`: creates the key when
    /// absent (create_revision == 0), adopts it when it names this node
    /// (mod_revision unchanged since read). An uncertain outcome (timeout)
    /// is resolved by reading the key back: this start's nonce there means
    /// the write was applied. `Ok(Err(holder))`: another node holds it.
    async fn take(
        &self,
        client: &mut Client,
        lease: i64,
        index: u32,
    ) -> Result<Result<(), String>, EtcdError> {
        let key = self.key(&format!("blocks/{index}"));
        for _ in 0..5 {
            let got = call("reading a block", client.get(key.as_str(), None)).await?;
            let txn = match got.kvs().first() {
                None => Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then(self.block_put(index, lease)),
                Some(kv) => match serde_json::from_slice::<BlockValue>(kv.value()) {
                    Ok(v) if v.node == self.config.node => {
                        if kv.lease() == lease {
                            return Ok(Ok(()));
                        }
                        Txn::new()
                            .when([Compare::mod_revision(
                                key.as_str(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            )])
                            .and_then(self.block_put(index, lease))
                    }
                    Ok(v) => return Ok(Err(v.node)),
                    Err(_) => return Ok(Err("(unreadable value)".into())),
                },
            };
            match call("claiming a block", client.txn(txn)).await {
                Ok(r) if r.succeeded() => return Ok(Ok(())),
                Ok(_) => continue,
                Err(e @ EtcdError::Timeout(_)) | Err(e @ EtcdError::Client { .. }) => {
                    // Maybe applied: read back; ours only with our nonce.
                    tracing::warn!(index, "block claim outcome unknown ({e}); reading it back");
                    let back = call(
                        "reading a claimed block back",
                        client.get(key.as_str(), None),
                    )
                    .await?;
                    if let Some(kv) = back.kvs().first() {
                        if let Ok(v) = serde_json::from_slice::<BlockValue>(kv.value()) {
                            if v.node == self.config.node
                                && v.nonce == self.nonce
                                && kv.lease() == lease
                            {
                                return Ok(Ok(()));
                            }
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(EtcdError::Lost(format!(
            "block {index} kept changing under the claim"
        )))
    }

    /// Finds this node's block: `preferred` (the persisted one), else the
    /// node's record, else a block neither held nor remembered by another
    /// node (then one only remembered). With `fixed`, only `preferred`:
    /// a running router never changes block.
    async fn claim(
        &self,
        client: &mut Client,
        lease: i64,
        preferred: Option<u32>,
        fixed: bool,
    ) -> Result<u32, EtcdError> {
        let record = call(
            "reading the node record",
            client.get(self.key(&format!("nodes/{}", self.config.node)), None),
        )
        .await?;
        let remembered = record
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<NodeValue>(kv.value()).ok())
            .map(|v| v.index)
            .filter(|i| *i < self.config.blocks.count());
        let first = if fixed {
            preferred
        } else {
            remembered.or(preferred)
        };
        if let Some(i) = first {
            match self.take(client, lease, i).await? {
                Ok(()) => return Ok(i),
                Err(holder) if fixed => return Err(EtcdError::Conflict { index: i, holder }),
                Err(holder) => tracing::warn!(
                    block = i,
                    holder,
                    "this node's former block is held by another node"
                ),
            }
        }
        if let (Some(p), Some(f)) = (preferred, first) {
            if p != f {
                if let Ok(()) = self.take(client, lease, p).await? {
                    return Ok(p);
                }
            }
        }
        let opts = || Some(GetOptions::new().with_prefix());
        let live = call("listing blocks", client.get(self.key("blocks/"), opts())).await?;
        let held: std::collections::HashSet<u32> = live
            .kvs()
            .iter()
            .filter_map(|kv| index_of_key(kv.key(), &self.key("blocks/")))
            .collect();
        let records = call(
            "listing node records",
            client.get(self.key("nodes/"), opts()),
        )
        .await?;
        let reserved: std::collections::HashSet<u32> = records
            .kvs()
            .iter()
            .filter(|kv| {
                !kv.key()
                    .ends_with(format!("/{}", self.config.node).as_bytes())
            })
            .filter_map(|kv| serde_json::from_slice::<NodeValue>(kv.value()).ok())
            .map(|v| v.index)
            .collect();
        let count = self.config.blocks.count();
        // Start at a point derived from the node name, so routers starting
        // at the same instant mostly try different blocks first.
        let start = self.config.node.bytes().fold(2166136261u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(16777619)
        }) % count;
        let order = (0..count).map(|k| (start + k) % count);
        let fresh: Vec<u32> = order
            .clone()
            .filter(|i| !held.contains(i) && !reserved.contains(i))
            .collect();
        let stale: Vec<u32> = order
            .filter(|i| !held.contains(i) && reserved.contains(i))
            .collect();
        for i in fresh.into_iter().chain(stale) {
            if let Ok(()) = self.take(client, lease, i).await? {
                return Ok(i);
            }
        }
        Err(EtcdError::Exhausted)
    }
}

fn index_of_key(key: &[u8], prefix: &str) -> Option<u32> {
    std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

fn set_up(m: &Membership, up: bool) {
    let was = m.up.swap(up, Ordering::Relaxed);
    metrics::gauge!("vassal_cluster_etcd_up").set(if up { 1.0 } else { 0.0 });
    if was != up {
        crate::os::events::emit(
            if up {
                "cluster_etcd_up"
            } else {
                "cluster_etcd_down"
            },
            serde_json::json!({ "node": m.config.node }),
        );
    }
}

/// Sessions, one after the other, for the router's lifetime.
async fn run(m: Arc<Membership>, mut first: Option<(Client, i64)>) {
    let mut backoff = Duration::from_millis(200);
    let endpoints = m.config.etcd.len();
    let mut attempt = 0usize;
    let mut failed_in_a_row = 0usize;
    let mut previous: Option<i64> = None;
    loop {
        let mut reached = false;
        let endpoint = m.config.etcd[attempt % endpoints].clone();
        attempt += 1;
        let e = match session(&m, &endpoint, first.take(), &mut reached, &mut previous).await {
            Ok(()) => EtcdError::Lost("the session ended".into()),
            Err(e) => e,
        };
        match e {
            EtcdError::Conflict { index, ref holder } => {
                metrics::gauge!("vassal_cluster_block_conflict").set(1.0);
                crate::os::events::emit(
                    "cluster_block_conflict",
                    serde_json::json!({ "node": m.config.node, "block": m.block.net.to_string(), "index": index, "holder": holder }),
                );
                tracing::error!(
                    "{e}: this router keeps serving its block locally; see docs/cluster.md"
                );
            }
            _ => tracing::warn!(endpoint, "etcd session ended: {e}"),
        }
        if reached {
            failed_in_a_row = 0;
            backoff = Duration::from_millis(200);
        } else {
            failed_in_a_row += 1;
        }
        // etcd counts as down only when every endpoint failed in a row:
        // one lost member is not an outage.
        if failed_in_a_row < endpoints {
            continue;
        }
        failed_in_a_row = 0;
        set_up(&m, false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One session: lease, block, identities, watch, until something fails.
async fn session(
    m: &Arc<Membership>,
    endpoint: &str,
    first: Option<(Client, i64)>,
    reached: &mut bool,
    previous: &mut Option<i64>,
) -> Result<(), EtcdError> {
    let (mut client, lease) = match first {
        Some(s) => s,
        None => {
            let (mut c, lease) = open(m, endpoint).await?;
            m.claim(&mut c, lease, Some(m.block.index), true).await?;
            (c, lease)
        }
    };
    metrics::gauge!("vassal_cluster_block_conflict").set(0.0);
    let (mut keeper, mut alive) =
        call("keeping the lease alive", client.lease_keep_alive(lease)).await?;
    // List, then watch from the revision after the list.
    let all = call(
        "listing the cluster",
        client.get(
            format!("{}/", m.config.key_prefix),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let revision = all.header().map_or(0, |h| h.revision());
    let mut nodes = HashMap::new();
    let mut identities = HashMap::new();
    for kv in all.kvs() {
        apply(m, &mut nodes, &mut identities, kv, true);
    }
    publish(m, nodes.clone(), identities.clone());
    let mut stream = call(
        "watching the cluster",
        client.watch(
            format!("{}/", m.config.key_prefix),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    set_up(m, true);
    *reached = true;
    let mut written = Written::default();
    sync(m, &mut client, lease, &mut written).await?;
    // The block and the identities are under this lease now: revoking the
    // last session's lease removes only keys of vassals that left while
    // it was away (instead of waiting for its TTL). It may have expired.
    if let Some(old) = previous.replace(lease).filter(|old| *old != lease) {
        let _ = call("revoking the previous lease", client.lease_revoke(old)).await;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(
        (m.config.lease_ttl * 1000 / 3).max(500),
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                call("sending a keep-alive", keeper.keep_alive()).await?;
            }
            msg = alive.message() => {
                match msg {
                    Ok(Some(r)) if r.ttl() > 0 => {}
                    Ok(Some(_)) => return Err(EtcdError::Lost("the lease expired".into())),
                    Ok(None) => return Err(EtcdError::Lost("the keep-alive stream closed".into())),
                    Err(source) => return Err(EtcdError::Client { step: "keep-alive", source, opening_tls: false }),
                }
            }
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(EtcdError::Lost("the watch closed".into())),
                    Err(source) => return Err(EtcdError::Client { step: "watch", source, opening_tls: false }),
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Err(EtcdError::Lost(format!("the watch was cancelled ({}); re-listing", resp.cancel_reason())));
                }
                let mut changed = false;
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        changed |= apply(m, &mut nodes, &mut identities, kv, ev.event_type() == EventType::Put);
                    }
                }
                if changed {
                    publish(m, nodes.clone(), identities.clone());
                }
            }
            _ = m.wake.notified() => {
                sync(m, &mut client, lease, &mut written).await?;
            }
        }
    }
}

/// Applies one key to the working copies; whether the blocks changed.
fn apply(
    m: &Membership,
    nodes: &mut HashMap<u32, NodeBlock>,
    identities: &mut HashMap<IpAddr, Identity>,
    kv: &KeyValue,
    put: bool,
) -> bool {
    let blocks_prefix = m.key("blocks/");
    let ids_prefix = m.key("identities/");
    if let Some(index) = index_of_key(kv.key(), &blocks_prefix) {
        if !put {
            return nodes.remove(&index).is_some();
        }
        let Some(block) = m.config.blocks.block(index) else {
            return false;
        };
        match serde_json::from_slice::<BlockValue>(kv.value()) {
            Ok(v) if validate_node(&v.node).is_ok() => {
                let entry = NodeBlock {
                    node: v.node,
                    block,
                    underlay: v.underlay,
                };
                return nodes.insert(index, entry.clone()) != Some(entry);
            }
            _ => tracing::warn!(index, "ignoring an invalid block value in etcd"),
        }
        return false;
    }
    let Some(addr) = kv
        .key()
        .strip_prefix(ids_prefix.as_bytes())
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.parse::<IpAddr>().ok())
    else {
        return false;
    };
    if !put {
        identities.remove(&addr);
        return true;
    }
    let in_prefix = match addr {
        IpAddr::V4(a) => m.config.blocks.prefix().contains(&a),
        IpAddr::V6(a) => m.config.blocks.prefix6().is_some_and(|p| p.contains(&a)),
    };
    match serde_json::from_slice::<Identity>(kv.value()) {
        Ok(id)
            if in_prefix
                && vassal_attach::validate_project_name(&id.project).is_ok()
                && validate_node(&id.node).is_ok() =>
        {
            identities.insert(addr, id);
        }
        _ => tracing::warn!(%addr, "ignoring an invalid identity in etcd"),
    }
    true
}

fn publish(m: &Membership, nodes: HashMap<u32, NodeBlock>, identities: HashMap<IpAddr, Identity>) {
    // An identity counts only inside the block its node holds: a node
    // (or a stale key) cannot speak for addresses of another block.
    let identities: HashMap<IpAddr, Identity> = identities
        .into_iter()
        .filter(|(addr, id)| {
            nodes.values().any(|n| {
                n.node == id.node
                    && match addr {
                        IpAddr::V4(a) => n.block.net.contains(a),
                        IpAddr::V6(a) => n.block.net6.is_some_and(|b| b.contains(a)),
                    }
            })
        })
        .collect();
    metrics::gauge!("vassal_cluster_identities").set(identities.len() as f64);
    metrics::gauge!("vassal_cluster_nodes").set(nodes.len() as f64);
    let mut changed = false;
    if **m.identities.load() != identities {
        m.identities.store(Arc::new(identities));
        changed = true;
    }
    let mut list: Vec<NodeBlock> = nodes.into_values().collect();
    list.sort_by_key(|n| n.block.index);
    if **m.nodes.load() != list {
        m.nodes.store(Arc::new(list));
        changed = true;
    }
    // The datapath's view follows both: routes the blocks, peer rules the
    // identities (daemon::cluster_routes).
    if changed {
        m.changes.send_modify(|g| *g += 1);
    }
}

/// How many identities one transaction writes or removes: etcd 3.4 takes
/// at most 128 compares and 128 operations per branch (`--max-txn-ops`).
/// Each transaction waits for a raft commit (a disk flush on a majority),
/// so identities that queued while a commit was under way (a burst of
/// attaches, or every vassal when a new session starts) cost one commit
/// per batch, not one per vassal (docs/benchmarks.md, "Cluster churn").
const BATCH: usize = 64;

/// What one session has written of the local identities.
#[derive(Default)]
struct Written {
    /// Registered under this session's lease.
    identities: HashMap<IpAddr, String>,
    /// Held by another node: reported once a session, not at every sync.
    conflicts: HashSet<IpAddr>,
}

/// Makes etcd hold exactly the local identities under this session's
/// lease. An address registered by another node is left alone (event).
async fn sync(
    m: &Membership,
    client: &mut Client,
    lease: i64,
    written: &mut Written,
) -> Result<(), EtcdError> {
    let desired = m.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let new: Vec<(IpAddr, &String)> = desired
        .iter()
        .filter(|(addr, project)| written.identities.get(*addr) != Some(*project))
        .map(|(addr, project)| (*addr, project))
        .collect();
    for batch in new.chunks(BATCH) {
        for addr in register(m, client, lease, batch, &mut written.conflicts).await? {
            if let Some(project) = desired.get(&addr) {
                written.identities.insert(addr, project.clone());
            }
        }
    }
    let gone: Vec<IpAddr> = written
        .identities
        .keys()
        .filter(|a| !desired.contains_key(a))
        .copied()
        .collect();
    for batch in gone.chunks(BATCH) {
        // Only keys still under this lease: one another node took over
        // meanwhile is its own, and stays.
        let mut compares = Vec::new();
        let mut deletes = Vec::new();
        for addr in batch {
            let key = m.identity_key(*addr);
            compares.push(Compare::lease(key.as_str(), CompareOp::Equal, lease));
            deletes.push(TxnOp::delete(key, None));
        }
        let whole = Txn::new().when(compares).and_then(deletes);
        if !call("removing identities", client.txn(whole))
            .await?
            .succeeded()
        {
            for addr in batch {
                let key = m.identity_key(*addr);
                let txn = Txn::new()
                    .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                call("removing an identity", client.txn(txn)).await?;
            }
        }
        for addr in batch {
            written.identities.remove(addr);
        }
    }
    Ok(())
}

/// Registers `batch` (at most [`BATCH`] identities): the addresses etcd
/// now holds for this node under `lease`.
///
/// First as if no key existed (the usual case: one transaction). If one
/// does (an earlier session's, a write that timed out and was applied
/// after all, another node's), every key is read in one transaction and
/// written in a second one guarded by what was read: absent ones and this
/// node's own are taken; an address another node holds is left alone,
/// with a `cluster_identity_conflict` event the first time this session
/// (noted in `conflicts`). If anything changed between
/// the two, nothing is written and the next wake retries.
async fn register(
    m: &Membership,
    client: &mut Client,
    lease: i64,
    batch: &[(IpAddr, &String)],
    conflicts: &mut HashSet<IpAddr>,
) -> Result<Vec<IpAddr>, EtcdError> {
    let absent = |addr: IpAddr| Compare::create_revision(m.identity_key(addr), CompareOp::Equal, 0);
    let all: Vec<IpAddr> = batch.iter().map(|(addr, _)| *addr).collect();
    let txn = Txn::new()
        .when(all.iter().map(|a| absent(*a)).collect::<Vec<_>>())
        .and_then(
            batch
                .iter()
                .map(|(addr, project)| m.identity_put(*addr, project, lease))
                .collect::<Vec<_>>(),
        );
    if call("registering identities", client.txn(txn))
        .await?
        .succeeded()
    {
        return Ok(all);
    }
    let read = Txn::new().and_then(
        all.iter()
            .map(|a| TxnOp::get(m.identity_key(*a), None))
            .collect::<Vec<_>>(),
    );
    let held = call("reading identities", client.txn(read)).await?;
    let mut compares = Vec::new();
    let mut puts = Vec::new();
    let mut taken = Vec::new();
    for ((addr, project), got) in batch.iter().zip(held.op_responses()) {
        let TxnOpResponse::Get(got) = got else {
            continue;
        };
        match got.kvs().first() {
            None => compares.push(absent(*addr)),
            Some(kv) => match serde_json::from_slice::<Identity>(kv.value()) {
                Ok(id) if id.node == m.config.node => compares.push(Compare::mod_revision(
                    m.identity_key(*addr),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )),
                other => {
                    if !conflicts.insert(*addr) {
                        continue;
                    }
                    let holder = other.map(|id| id.node).unwrap_or_default();
                    crate::os::events::emit(
                        "cluster_identity_conflict",
                        serde_json::json!({ "node": m.config.node, "address": addr.to_string(), "holder": holder }),
                    );
                    tracing::error!(%addr, holder, "address registered by another node; not overwritten");
                    continue;
                }
            },
        }
        puts.push(m.identity_put(*addr, project, lease));
        taken.push(*addr);
    }
    if taken.is_empty() {
        return Ok(taken);
    }
    let txn = Txn::new().when(compares).and_then(puts);
    if call("re-registering identities", client.txn(txn))
        .await?
        .succeeded()
    {
        Ok(taken)
    } else {
        // Changed meanwhile: the next wake retries.
        m.wake.notify_one();
        Ok(Vec::new())
    }
}
