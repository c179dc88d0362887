//! [`ClusterHandle`]: the node's front to its Raft group member. It opens the storage,
//! starts openraft, forms or joins the cluster from the seed list, runs the leader's
//! duties (liveness → `MarkDown`/`MarkUp`, promoting learners to voters) and answers
//! status, join, leave and remove requests.
//!
//! Life cycle: [`ClusterHandle::start`] once at node start (before or right after the
//! HTTP server that mounts its internal routes (`crate::web::internal`) is up; discovery retries until it
//! is), [`ClusterHandle::membership_view`] for sharding, [`ClusterHandle::leave`] on a
//! graceful exit, then [`ClusterHandle::shutdown`].

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::codec;
use super::log_store::{LOG_TREE, LogStore, META_TREE};
use super::network::{NetShared, NetworkFactory, PeerContacts};
use super::rpc::{ADMIN_TIMEOUT, ClusterInfo, JoinRequest, LeavingRequest, RemoveRequest};
use super::state_machine::{SM_TREE, StateMachine};
use super::types::{
    ClusterCommand, DrainProgress, MembershipView, NodeId, NodeInfo, Raft, SampleBatch, SampleSink,
};
use crate::peer::protocol::{CLUSTER_INFO, CLUSTER_JOIN, CLUSTER_LEAVING, CLUSTER_REMOVE, Route};
use crate::peer::{PeerClient, PeerSettings};

const KEY_NODE_ID: &[u8] = b"node_id";
/// How often committed rule samples the store refused are retried.
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// Where the cluster keeps its state.
#[derive(Clone)]
pub enum ClusterData {
    /// Trees (`cluster.*`) inside an already open database (e.g. the node's own).
    Db(sled::Db),
    /// A directory of its own (opened as a sled database), e.g. `data_dir/cluster`.
    Dir(PathBuf),
}

/// Everything [`ClusterHandle::start`] needs.
#[derive(Clone)]
pub struct ClusterOptions {
    pub data: ClusterData,
    /// `host:port` other nodes reach this node's HTTP server at.
    pub advertise: String,
    /// `host:port` of seed nodes; a host may resolve to several addresses.
    pub seeds: Vec<String>,
    /// Most voters the leader promotes to (kept odd). Default 5.
    pub max_voters: usize,
    /// A member silent this long is committed as down. Default 10 s.
    pub down_after: Duration,
    /// Leader heartbeat interval. Default 200 ms.
    pub heartbeat_interval: Duration,
    /// Randomised election timeout range. Default 0.6–1.2 s. (openraft 0.9 followers
    /// wait the maximum as a leader lease on top, so a dead leader is replaced after
    /// 1.8–2.4 s plus a vote round.)
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// When not every seed answers, how long a would-be bootstrapper must keep seeing
    /// itself first among the reachable nodes before it initializes. Default 5 s.
    pub bootstrap_grace: Duration,
    /// Raft cluster name (informational, in openraft's logs).
    pub cluster_name: String,
    /// What the node's one peer client is built from (secret, TLS, source address);
    /// the handle builds it and lends it out ([`ClusterHandle::peer`]).
    pub peer: PeerSettings,
    /// Where the state machine appends committed samples of global rule groups.
    pub sample_sink: Option<Arc<dyn SampleSink>>,
}

impl ClusterOptions {
    /// Options with the documented defaults.
    pub fn new(data: ClusterData, advertise: impl Into<String>) -> Self {
        Self {
            data,
            advertise: advertise.into(),
            seeds: Vec::new(),
            max_voters: 5,
            down_after: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(600),
            election_timeout_max: Duration::from_millis(1200),
            bootstrap_grace: Duration::from_secs(5),
            cluster_name: "shoal".to_owned(),
            peer: PeerSettings::default(),
            sample_sink: None,
        }
    }
}

/// Errors of cluster start-up and cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster storage: {0}")]
    Storage(String),
    #[error("invalid cluster configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader known")]
    NoLeader,
    #[error("request to {addr} failed: {reason}")]
    Peer { addr: String, reason: String },
    #[error("{0}")]
    Refused(String),
}

/// Role of a member in the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberRole {
    /// Its vote counts in every configuration the group is in. During a membership
    /// change (Raft's joint consensus: the old and the new voter set at once) a node
    /// being promoted is not a voter yet: an election still needs a majority of the old
    /// set, so reporting it early would overstate what the group survives.
    Voter,
    Learner,
}

/// Liveness of a member as committed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    Up,
    Down,
}

/// One member in [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    pub role: MemberRole,
    pub state: MemberState,
    /// Time since this node last got an answer from the member. Known on the leader
    /// (which talks to everyone); `Some(0)` for the node itself; `None` otherwise.
    pub last_contact: Option<Duration>,
    /// Set while the member is leaving: its drain's last committed progress.
    pub leaving: Option<DrainProgress>,
}

/// A snapshot of this node's view of the cluster (for `GET /api/v1/cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    /// See [`ClusterHandle::cluster_id`].
    pub cluster_id: Option<NodeId>,
    pub addr: String,
    pub leader_id: Option<NodeId>,
    /// `"leader" | "follower" | "candidate" | "learner" | "shutdown"`.
    pub raft_state: &'static str,
    pub term: u64,
    /// Leader changes this node has seen since it started.
    pub leader_changes: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub view_index: u64,
    /// Committed batches of global rule samples not yet durable in this node's store
    /// (retried every second).
    pub pending_rule_batches: usize,
    pub members: Vec<MemberStatus>,
}

struct Inner {
    id: NodeId,
    advertise: String,
    raft: Raft,
    sm: StateMachine,
    net: Arc<NetShared>,
    seeds: Vec<String>,
    max_voters: usize,
    down_after: Duration,
    heartbeat: Duration,
    bootstrap_grace: Duration,
    /// Serialises membership changes made by this node as leader.
    change_lock: tokio::sync::Mutex<()>,
    shutdown_tx: watch::Sender<bool>,
    /// Times this node saw the leader change (to a known leader).
    leader_changes: AtomicU64,
    /// The leader this node last got an AppendEntries from, and when (a follower's view
    /// of the leader's liveness; see [`ClusterHandle::last_seen`]).
    heard_leader: Mutex<Option<(NodeId, Instant)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// While a new cluster forms: how many nodes answered this node's seed probes
    /// (itself included) when it initialized or asked to join, and until when to wait
    /// for all of them (see [`ClusterHandle::formation`]).
    formation: Mutex<Option<(usize, Instant)>>,
}

/// Cloneable front to this node's cluster member.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Inner>,
}

fn storage_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Storage(e.to_string())
}

fn raft_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Raft(e.to_string())
}

/// Loads the persisted node id or generates (and durably stores) a new random one.
async fn node_id(db: &sled::Db) -> Result<NodeId, ClusterError> {
    let meta = db.open_tree(META_TREE).map_err(storage_err)?;
    if let Some(bytes) = meta.get(KEY_NODE_ID).map_err(storage_err)? {
        return codec::decode(&bytes).map_err(storage_err);
    }
    let mut id = 0;
    while id == 0 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        id = h.finish();
    }
    meta.insert(KEY_NODE_ID, codec::encode(&id).map_err(storage_err)?)
        .map_err(storage_err)?;
    meta.flush_async().await.map_err(storage_err)?;
    Ok(id)
}

/// The nodes whose vote counts in every configuration of `membership` (all of its
/// voters when it is not a joint configuration; see [`MemberRole::Voter`]).
fn stable_voters(membership: &openraft::Membership<NodeId, NodeInfo>) -> BTreeSet<NodeId> {
    let mut configs = membership.get_joint_config().iter();
    let Some(first) = configs.next() else {
        return BTreeSet::new();
    };
    configs.fold(first.clone(), |acc, c| {
        acc.intersection(c).copied().collect()
    })
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl ClusterHandle {
    /// Opens the cluster storage, starts the Raft member and its background tasks
    /// (bootstrap/join while the node is not in a cluster, leader duties). Must run
    /// inside a Tokio runtime (an actix `System` is one).
    pub async fn start(opts: ClusterOptions) -> Result<ClusterHandle, ClusterError> {
        if opts.advertise.is_empty() {
            return Err(ClusterError::Config("advertise address is empty".into()));
        }
        let db = match &opts.data {
            ClusterData::Db(db) => db.clone(),
            ClusterData::Dir(dir) => crate::storage::sled_open::open_path(dir).map_err(|e| {
                ClusterError::Storage(format!("cannot open {}: {e}", dir.display()))
            })?,
        };
        // Fail early on unreadable trees rather than inside openraft.
        db.open_tree(LOG_TREE).map_err(storage_err)?;
        let id = node_id(&db).await?;
        let log_store = LogStore::open(&db).map_err(storage_err)?;
        let sm = StateMachine::open(&db).map_err(storage_err)?;
        sm.set_sink(opts.sample_sink.clone());

        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: opts.cluster_name.clone(),
            heartbeat_interval: ms(opts.heartbeat_interval),
            election_timeout_min: ms(opts.election_timeout_min),
            election_timeout_max: ms(opts.election_timeout_max),
            install_snapshot_timeout: ms(opts.election_timeout_max).max(1000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| ClusterError::Config(e.to_string()))?,
        );

        let peer = PeerClient::new(opts.peer.clone()).map_err(ClusterError::Config)?;
        let net = Arc::new(NetShared {
            id,
            peer,
            contacts: PeerContacts::default(),
            sm: sm.clone(),
        });
        let raft = Raft::new(
            id,
            config,
            NetworkFactory {
                shared: net.clone(),
            },
            log_store,
            sm.clone(),
        )
        .await
        .map_err(raft_err)?;
        tracing::info!(node_id = id, advertise = %opts.advertise, "cluster member started");

        let (shutdown_tx, _) = watch::channel(false);
        let handle = ClusterHandle {
            inner: Arc::new(Inner {
                id,
                advertise: opts.advertise,
                raft,
                sm,
                net,
                seeds: opts.seeds,
                max_voters: opts.max_voters.max(1),
                down_after: opts.down_after,
                heartbeat: opts.heartbeat_interval,
                bootstrap_grace: opts.bootstrap_grace,
                change_lock: tokio::sync::Mutex::new(()),
                shutdown_tx,
                leader_changes: AtomicU64::new(0),
                heard_leader: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
                formation: Mutex::new(None),
            }),
        };
        let bootstrap = tokio::spawn(handle.clone().bootstrap_loop());
        let duties = tokio::spawn(handle.clone().leader_loop());
        let watcher = tokio::spawn(handle.clone().count_leader_changes());
        let pending = tokio::spawn(handle.clone().pending_loop());
        handle
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([bootstrap, duties, watcher, pending]);
        Ok(handle)
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The address this node advertises.
    pub fn advertise(&self) -> &str {
        &self.inner.advertise
    }

    /// The committed membership view (up members + the log index it changed at).
    pub fn membership_view(&self) -> watch::Receiver<MembershipView> {
        self.inner.sm.subscribe()
    }

    /// Set when this node formed or joined a cluster from scratch (not on a restart of
    /// a member): the number of nodes that answered its seed probes, itself included,
    /// and a deadline (the bootstrap grace). Nodes started together join one by one
    /// within moments; an owner of targets that holds the views with fewer members
    /// until then (bounded by the deadline) does not scrape targets it is about to hand
    /// on, so a new cluster starts with no target scraped by two nodes.
    pub fn formation(&self) -> Option<(usize, Instant)> {
        *self
            .inner
            .formation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn expect_formation(&self, nodes: usize) {
        let mut f = self
            .inner
            .formation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some((nodes, Instant::now() + self.inner.bootstrap_grace));
        }
    }

    /// Waits until this node appears as up in the committed membership view (it formed
    /// or joined a cluster), or `timeout` passes.
    pub async fn wait_member(&self, timeout: Duration) -> Result<MembershipView, ClusterError> {
        let mut rx = self.membership_view();
        let id = self.inner.id;
        let wait = rx.wait_for(|v| v.up.contains_key(&id));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(view)) => Ok(view.clone()),
            Ok(Err(_)) => Err(ClusterError::Raft("state machine closed".into())),
            Err(_) => Err(ClusterError::Refused(format!(
                "not a cluster member after {timeout:?}"
            ))),
        }
    }

    /// Proposes the samples of one evaluation slot of a global rule group as one log
    /// entry and waits until it is committed and applied here. Only the leader can;
    /// others get an error. A slot already committed is ignored by every state machine.
    pub async fn commit_samples(&self, batch: SampleBatch) -> Result<(), ClusterError> {
        self.write(ClusterCommand::CommitSamples(batch)).await
    }

    /// The last slot of a global rule group committed through the log as this node's
    /// state machine has seen it (its samples durable here, or pending until they are).
    pub fn last_committed_slot(&self, group: &str) -> Option<i64> {
        self.inner.sm.committed_slot(group)
    }

    /// The last slot of a global rule group whose samples are durable on this node.
    pub fn last_applied_slot(&self, group: &str) -> Option<i64> {
        self.inner.sm.last_slot(group)
    }

    /// Whether this node is currently the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The current leader's id and address, when known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, addr))
    }

    /// Id of the cluster this node belongs to (the id of the node that founded it),
    /// once known.
    pub fn cluster_id(&self) -> Option<NodeId> {
        self.inner.sm.cluster_id()
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Notes an AppendEntries from `leader` (called by the RPC handler).
    pub(crate) fn note_append_from(&self, leader: NodeId) {
        if leader != self.inner.id {
            *self
                .inner
                .heard_leader
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((leader, Instant::now()));
        }
    }

    /// Resolves when the Raft core has stopped by itself (a fatal error: a panic inside
    /// openraft, a storage failure), with the reason. A node whose core stopped still
    /// answers HTTP but can neither commit nor follow: it should exit, so that its
    /// supervisor restarts it.
    pub async fn raft_failed(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "the Raft core stopped".to_owned();
            }
        }
    }

    /// The node's one client to its peers (with the cluster secret and TLS).
    pub fn peer(&self) -> &PeerClient {
        &self.inner.net.peer
    }

    /// This node's status as seen locally.
    pub async fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let commit_index = self
            .inner
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .unwrap_or(None);
        let sm = self.inner.sm.state();
        let membership = m.membership_config.membership();
        let voters = stable_voters(membership);
        let is_leader = m.state == ServerState::Leader;
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                role: if voters.contains(id) {
                    MemberRole::Voter
                } else {
                    MemberRole::Learner
                },
                state: if sm.down.contains(id) {
                    MemberState::Down
                } else {
                    MemberState::Up
                },
                leaving: sm.leaving.get(id).copied(),
                last_contact: if *id == self.inner.id {
                    Some(Duration::ZERO)
                } else if is_leader {
                    self.inner.net.contacts.get(*id).map(|t| t.elapsed())
                } else {
                    None
                },
            })
            .collect();
        ClusterStatus {
            node_id: self.inner.id,
            cluster_id: sm.cluster_id,
            addr: self.inner.advertise.clone(),
            leader_id: m.current_leader,
            raft_state: state_name(m.state),
            term: m.current_term,
            leader_changes: self.inner.leader_changes.load(Ordering::Relaxed),
            last_log_index: m.last_log_index,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index),
            view_index: sm.view_index,
            pending_rule_batches: sm.pending.len(),
            members,
        }
    }

    pub(crate) async fn info(&self) -> ClusterInfo {
        ClusterInfo {
            node_id: self.inner.id,
            addr: self.inner.advertise.clone(),
            initialized: self.inner.raft.is_initialized().await.unwrap_or(false),
            leader: self.leader(),
        }
    }

    async fn forward<T: serde::Serialize>(
        &self,
        route: Route,
        body: &T,
    ) -> Result<(), ClusterError> {
        let (leader, addr) = self.leader().ok_or(ClusterError::NoLeader)?;
        if leader == self.inner.id {
            return Err(ClusterError::Refused("leadership changed, retry".into()));
        }
        self.peer()
            .call::<T, ()>(&addr, route, body, ADMIN_TIMEOUT)
            .await
            .map_err(|e| ClusterError::Peer {
                addr,
                reason: e.to_string(),
            })
    }

    /// Adds `node_id` at `addr` as a learner (the leader promotes it to voter later when
    /// there is room). Forwarded to the leader when this node is not it.
    pub(crate) async fn join_member(
        &self,
        node_id: NodeId,
        addr: String,
        forwarded: bool,
    ) -> Result<(), ClusterError> {
        if addr.is_empty() {
            return Err(ClusterError::Refused("join without an address".into()));
        }
        if !self.is_leader() {
            if forwarded {
                return Err(ClusterError::Refused(
                    "not the leader (already forwarded)".into(),
                ));
            }
            let req = JoinRequest {
                node_id,
                addr,
                forwarded: true,
            };
            return self.forward(CLUSTER_JOIN, &req).await;
        }
        let _guard = self.inner.change_lock.lock().await;
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        if let Some(existing) = membership.membership().get_node(&node_id) {
            if existing.addr == addr {
                return Ok(());
            }
            // The member restarted elsewhere (it keeps its id and log): update its
            // address. Only the node itself knows its id, and the route needs the
            // cluster secret when one is set.
            tracing::info!(node_id, old = %existing.addr, new = %addr, "member moved: updating its address");
            let change = ChangeMembers::SetNodes(BTreeMap::from([(node_id, NodeInfo { addr })]));
            let fut = self.inner.raft.change_membership(change, false);
            tokio::time::timeout(ADMIN_TIMEOUT * 2, fut)
                .await
                .map_err(|_| ClusterError::Raft("address update timed out".into()))?
                .map_err(raft_err)?;
            return Ok(());
        }
        if let Some((other, _)) = membership.nodes().find(|(_, n)| n.addr == addr) {
            tracing::warn!(
                node_id,
                other,
                %addr,
                "a new node joins at the address of an existing member; the old member will be marked down"
            );
        }
        tracing::info!(node_id, %addr, "adding node as learner");
        let fut = self
            .inner
            .raft
            .add_learner(node_id, NodeInfo { addr }, false);
        tokio::time::timeout(ADMIN_TIMEOUT, fut)
            .await
            .map_err(|_| ClusterError::Raft("add_learner timed out".into()))?
            .map_err(raft_err)?;
        Ok(())
    }

    /// Removes `node` from the membership (voter or learner; for a node that is gone for
    /// good). Forwarded to the leader when this node is not it. A removed node must not
    /// come back with its old data: wipe it, it rejoins under a new id.
    pub async fn remove(&self, node: NodeId) -> Result<(), ClusterError> {
        self.remove_member(node, false).await
    }

    pub(crate) async fn remove_member(
        &self,
        node: NodeId,
        forwarded: bool,
    ) -> Result<(), ClusterError> {
        if !self.is_leader() {
            if forwarded {
                return Err(ClusterError::Refused(
                    "not the leader (already forwarded)".into(),
                ));
            }
            let req = RemoveRequest {
                node_id: node,
                forwarded: true,
            };
            return self.forward(CLUSTER_REMOVE, &req).await;
        }
        let _guard = self.inner.change_lock.lock().await;
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        if m.get_node(&node).is_none() {
            return Ok(());
        }
        let is_voter = m.voter_ids().any(|v| v == node);
        let change = if is_voter {
            if node == self.inner.id && m.voter_ids().count() == 1 {
                return Err(ClusterError::Refused("cannot remove the last voter".into()));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node]))
        };
        tracing::info!(node, is_voter, "removing node from the cluster");
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(raft_err)?;
        Ok(())
    }

    /// Commits that this node is leaving, with its drain's progress (see
    /// [`ClusterCommand::Leaving`]); forwarded to the leader when this node is not it.
    /// Returns once committed (applied here when this node is the leader).
    pub async fn report_leaving(&self, progress: DrainProgress) -> Result<(), ClusterError> {
        self.leaving_member(self.inner.id, progress, false).await
    }

    pub(crate) async fn leaving_member(
        &self,
        node: NodeId,
        progress: DrainProgress,
        forwarded: bool,
    ) -> Result<(), ClusterError> {
        if !self.is_leader() {
            if forwarded {
                return Err(ClusterError::Refused(
                    "not the leader (already forwarded)".into(),
                ));
            }
            let req = LeavingRequest {
                node_id: node,
                progress,
                forwarded: true,
            };
            return self.forward(CLUSTER_LEAVING, &req).await;
        }
        let membership = self.inner.raft.metrics().borrow().membership_config.clone();
        if membership.membership().get_node(&node).is_none() {
            return Err(ClusterError::Refused(format!("{node} is not a member")));
        }
        self.write(ClusterCommand::Leaving { node, progress }).await
    }

    /// Leaves the cluster gracefully: asks the leader to remove this node (a leader
    /// removes itself; the remaining voters elect a new leader, which promotes a learner
    /// if one is available).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.remove(self.inner.id).await
    }

    /// Stops the background tasks and the Raft member. Call once at node shutdown,
    /// after `leave` if the node is leaving for good.
    pub async fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    /// Deletes all cluster state in `data` (log, vote, state machine, node id), so the
    /// next start joins as a brand-new node under a new id. Only for a node that has left
    /// or been removed; call after [`ClusterHandle::shutdown`] and after dropping every
    /// clone of the handle (and the HTTP server holding one).
    pub fn wipe_state(data: &ClusterData) -> Result<(), ClusterError> {
        match data {
            ClusterData::Db(db) => {
                for tree in [LOG_TREE, META_TREE, SM_TREE] {
                    db.drop_tree(tree).map_err(storage_err)?;
                }
                db.flush().map_err(storage_err)?;
                Ok(())
            }
            ClusterData::Dir(dir) => match std::fs::remove_dir_all(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ClusterError::Storage(format!(
                    "cannot remove {}: {e}",
                    dir.display()
                ))),
            },
        }
    }

    // ----- background tasks -----

    async fn wait_or_shutdown(&self, d: Duration) -> bool {
        let mut rx = self.inner.shutdown_tx.subscribe();
        if *rx.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = rx.changed() => true,
        }
    }

    /// Resolves every seed to `ip:port` strings.
    async fn resolve_seeds(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for seed in &self.inner.seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => out.extend(addrs.map(|a| a.to_string())),
                Err(e) => tracing::debug!(seed, error = %e, "cannot resolve seed"),
            }
        }
        out
    }

    async fn fetch_info(&self, addr: &str) -> Option<ClusterInfo> {
        self.peer()
            .call(addr, CLUSTER_INFO, &(), Duration::from_secs(1))
            .await
            .map_err(|e| tracing::debug!(%addr, error = %e, "seed info"))
            .ok()
    }

    /// While this node is not in a cluster: find one through the seeds and join it, or,
    /// when nobody is in one and this node sorts first, initialize a one-node cluster.
    async fn bootstrap_loop(self) {
        let mut first_since: Option<Instant> = None;
        let retry = self
            .inner
            .heartbeat
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            match self.inner.raft.is_initialized().await {
                Ok(true) => {
                    tracing::info!(node_id = self.inner.id, "node is part of a cluster");
                    self.readvertise(retry).await;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "raft stopped; bootstrap ends");
                    return;
                }
            }
            let seeds = self.resolve_seeds().await;
            let mut peers = Vec::new();
            let mut answered = 0usize;
            for addr in &seeds {
                if let Some(info) = self.fetch_info(addr).await {
                    answered += 1;
                    if info.node_id != self.inner.id {
                        peers.push(info);
                    }
                }
            }
            let nodes: BTreeSet<NodeId> = peers.iter().map(|p| p.node_id).collect();
            if let Some(member) = peers.iter().find(|p| p.initialized) {
                self.expect_formation(nodes.len() + 1);
                let target = member
                    .leader
                    .as_ref()
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| member.addr.clone());
                let body = JoinRequest {
                    node_id: self.inner.id,
                    addr: self.inner.advertise.clone(),
                    forwarded: false,
                };
                match self
                    .peer()
                    .call::<_, ()>(&target, CLUSTER_JOIN, &body, ADMIN_TIMEOUT)
                    .await
                {
                    Ok(()) => tracing::info!(%target, "join accepted"),
                    Err(e) => tracing::info!(%target, error = %e, "join not accepted yet"),
                }
                first_since = None;
            } else {
                let me_first = peers.iter().all(|p| self.inner.advertise < p.addr);
                let everyone_answered = answered == seeds.len();
                if me_first {
                    let since = *first_since.get_or_insert_with(Instant::now);
                    if everyone_answered || since.elapsed() >= self.inner.bootstrap_grace {
                        tracing::info!(
                            node_id = self.inner.id,
                            peers = peers.len(),
                            "no cluster found and this node sorts first: initializing"
                        );
                        self.expect_formation(nodes.len() + 1);
                        let members = BTreeMap::from([(
                            self.inner.id,
                            NodeInfo {
                                addr: self.inner.advertise.clone(),
                            },
                        )]);
                        if let Err(e) = self.inner.raft.initialize(members).await {
                            tracing::warn!(error = %e, "initialize");
                        }
                    }
                } else {
                    first_since = None;
                }
            }
            if self.wait_or_shutdown(retry).await {
                return;
            }
        }
    }

    /// The address of this node in the membership, when it is a member.
    fn member_addr(&self) -> Option<String> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&self.inner.id)
            .map(|n| n.addr.clone())
    }

    /// A member restarted on another address (new port, new container IP): until the
    /// membership carries the new address, send join requests with it to the seeds and
    /// the known members (a non-leader forwards to the leader, which updates the
    /// address).
    async fn readvertise(&self, retry: Duration) {
        let mut logged = false;
        loop {
            let Some(addr) = self.member_addr() else {
                return;
            };
            if addr == self.inner.advertise {
                return;
            }
            if !logged {
                tracing::info!(old = %addr, new = %self.inner.advertise, "this node moved: asking the leader to update its address");
                logged = true;
            }
            if self.is_leader() {
                if let Err(e) = self
                    .join_member(self.inner.id, self.inner.advertise.clone(), false)
                    .await
                {
                    tracing::debug!(error = %e, "address update");
                }
                if self.wait_or_shutdown(retry).await {
                    return;
                }
                continue;
            }
            let mut targets = self.resolve_seeds().await;
            let m = self.inner.raft.metrics().borrow().membership_config.clone();
            targets.extend(
                m.membership()
                    .nodes()
                    .filter(|(id, _)| **id != self.inner.id)
                    .map(|(_, n)| n.addr.clone()),
            );
            targets.remove(&self.inner.advertise);
            let body = JoinRequest {
                node_id: self.inner.id,
                addr: self.inner.advertise.clone(),
                forwarded: false,
            };
            for target in &targets {
                match self
                    .peer()
                    .call::<_, ()>(target, CLUSTER_JOIN, &body, ADMIN_TIMEOUT)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(%target, "address update accepted");
                        break;
                    }
                    Err(e) => tracing::debug!(%target, error = %e, "address update"),
                }
            }
            if self.wait_or_shutdown(retry).await {
                return;
            }
        }
    }

    /// Counts changes of the known leader (for the `leader changes` metric).
    async fn count_leader_changes(self) {
        let mut rx = self.inner.raft.server_metrics();
        let mut last = None;
        loop {
            let leader = rx.borrow_and_update().current_leader;
            if leader.is_some() && leader != last {
                self.inner.leader_changes.fetch_add(1, Ordering::Relaxed);
                last = leader;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Leader duties, every heartbeat: commit down/up changes and promote learners.
    /// Retries, every second, the committed rule samples this node's store refused
    /// (see the state machine): they do not wait for the next entry to be applied.
    async fn pending_loop(self) {
        loop {
            if self.wait_or_shutdown(PENDING_RETRY).await {
                return;
            }
            if let Err(e) = self.inner.sm.retry_pending().await {
                tracing::warn!(error = %e, "cannot record stored rule samples");
            }
        }
    }

    async fn leader_loop(self) {
        let mut leader_since: Option<Instant> = None;
        let mut joined = JoinTimes::default();
        loop {
            if self.wait_or_shutdown(self.inner.heartbeat).await {
                return;
            }
            if !self.is_leader() {
                leader_since = None;
                joined = JoinTimes::default();
                continue;
            }
            let since = *leader_since.get_or_insert_with(Instant::now);
            if let Err(e) = self.liveness(since, &mut joined).await {
                tracing::debug!(error = %e, "liveness update");
            }
            if let Err(e) = self.promote().await {
                tracing::debug!(error = %e, "learner promotion");
            }
        }
    }

    /// Last time `node` answered, counting leadership start as a contact (a new leader
    /// gives everyone `down_after` before judging them) — except for the previous leader,
    /// whose silence started with its last AppendEntries to this node, so that a dead
    /// leader is marked down `down_after` after it died, not after the election.
    fn last_seen(&self, node: NodeId, leader_since: Instant) -> Instant {
        if let Some(t) = self.inner.net.contacts.get(node)
            && t > leader_since
        {
            return t;
        }
        let heard = *self
            .inner
            .heard_leader
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match heard {
            Some((leader, t)) if leader == node => t.min(leader_since),
            _ => leader_since,
        }
    }

    fn answers_now(&self, node: NodeId) -> bool {
        let fresh = (self.inner.heartbeat * 4).min(self.inner.down_after);
        self.inner
            .net
            .contacts
            .get(node)
            .is_some_and(|t| t.elapsed() <= fresh)
    }

    async fn write(&self, cmd: ClusterCommand) -> Result<(), ClusterError> {
        let fut = self.inner.raft.client_write(cmd);
        match tokio::time::timeout(ADMIN_TIMEOUT, fut).await {
            Err(_) => Err(ClusterError::Raft("write timed out".into())),
            Ok(Err(e)) => Err(raft_err(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Commits down/up marks. A member that joined while this node leads is judged
    /// from when it joined, not from the start of the leadership: the learner is in
    /// the membership a moment before the first AppendEntries reaches it, and on a busy
    /// machine a tick can fall in between.
    async fn liveness(
        &self,
        leader_since: Instant,
        joined: &mut JoinTimes,
    ) -> Result<(), ClusterError> {
        let sm = self.inner.sm.state();
        let members: Vec<NodeId> = sm.last_membership.nodes().map(|(id, _)| *id).collect();
        joined.observe(&members, Instant::now());
        for id in members {
            let down = sm.down.contains(&id);
            if id == self.inner.id {
                if down {
                    tracing::info!(node = id, "marking self up");
                    self.write(ClusterCommand::MarkUp { node: id }).await?;
                }
                continue;
            }
            let silent = joined
                .silence_start(id, self.last_seen(id, leader_since))
                .elapsed();
            if !down && silent >= self.inner.down_after {
                tracing::warn!(
                    node = id,
                    silent_ms = silent.as_millis() as u64,
                    "marking node down"
                );
                self.write(ClusterCommand::MarkDown { node: id }).await?;
            } else if down && self.answers_now(id) {
                tracing::info!(node = id, "node answers again: marking up");
                self.write(ClusterCommand::MarkUp { node: id }).await?;
            }
        }
        Ok(())
    }

    /// Promotes up learners to voters while there are fewer than `max_voters`, keeping
    /// the number of voters odd (2 or 4 voters tolerate no more failures than 1 or 3).
    async fn promote(&self) -> Result<(), ClusterError> {
        let _guard = self.inner.change_lock.lock().await;
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        if membership.get_joint_config().len() > 1 {
            return Ok(());
        }
        let sm = self.inner.sm.state();
        let voters = membership.voter_ids().count();
        let candidates: Vec<NodeId> = membership
            .learner_ids()
            .filter(|id| !sm.down.contains(id) && self.answers_now(*id))
            .collect();
        let max = if self.inner.max_voters.is_multiple_of(2) {
            self.inner.max_voters - 1
        } else {
            self.inner.max_voters
        };
        let mut target = (voters + candidates.len()).min(max);
        if target.is_multiple_of(2) {
            target -= 1;
        }
        if target <= voters {
            return Ok(());
        }
        let add: BTreeSet<NodeId> = candidates.into_iter().take(target - voters).collect();
        tracing::info!(?add, voters, "promoting learners to voters");
        let fut = self
            .inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(add), false);
        match tokio::time::timeout(ADMIN_TIMEOUT * 2, fut).await {
            Err(_) => Err(ClusterError::Raft("promotion timed out".into())),
            Ok(Err(e)) => Err(raft_err(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

/// When members joined, as one leadership saw them: those in the membership at its first
/// tick count as members all along, later ones from the tick that first saw them.
#[derive(Default)]
struct JoinTimes {
    started: bool,
    at: BTreeMap<NodeId, Option<Instant>>,
}

impl JoinTimes {
    fn observe(&mut self, members: &[NodeId], now: Instant) {
        self.at.retain(|id, _| members.contains(id));
        let started = std::mem::replace(&mut self.started, true);
        for &id in members {
            self.at.entry(id).or_insert(started.then_some(now));
        }
    }

    /// When `id`'s silence started, given when it last answered (or counted as having).
    fn silence_start(&self, id: NodeId, seen: Instant) -> Instant {
        match self.at.get(&id).copied().flatten() {
            Some(joined) => seen.max(joined),
            None => seen,
        }
    }
}

#[cfg(test)]
mod join_times_tests {
    use super::*;

    #[test]
    fn a_member_that_joins_during_a_leadership_is_judged_from_its_join() {
        let t0 = Instant::now();
        let long_ago = t0 - Duration::from_secs(60);
        let mut j = JoinTimes::default();
        j.observe(&[1, 2], t0);
        // Members at the first tick: only their last answer counts.
        assert_eq!(j.silence_start(2, long_ago), long_ago);
        let t1 = t0 + Duration::from_secs(1);
        j.observe(&[1, 2, 3], t1);
        // Not answered yet (the first AppendEntries is on its way): silent since the join.
        assert_eq!(j.silence_start(3, long_ago), t1);
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(j.silence_start(3, t2), t2);
        assert_eq!(j.silence_start(2, long_ago), long_ago);
        // Leaves and comes back: the new join counts.
        j.observe(&[1, 2], t2);
        let t3 = t2 + Duration::from_secs(1);
        j.observe(&[1, 2, 3], t3);
        assert_eq!(j.silence_start(3, long_ago), t3);
    }
}

#[cfg(test)]
mod role_tests {
    use super::*;

    fn nodes(ids: &[NodeId]) -> BTreeMap<NodeId, NodeInfo> {
        ids.iter()
            .map(|&id| {
                let addr = format!("127.0.0.1:{id}");
                (id, NodeInfo { addr })
            })
            .collect()
    }

    #[test]
    fn nodes_being_promoted_are_not_voters_until_the_joint_configuration_ends() {
        // The leader (1) promotes four learners: joint configuration [{1}, {1..5}].
        // An election needs a majority of {1}, so if 1 dies now no one can be elected:
        // the group must not claim five voters yet.
        let joint = openraft::Membership::new(
            vec![BTreeSet::from([1]), BTreeSet::from([1, 2, 3, 4, 5])],
            nodes(&[1, 2, 3, 4, 5]),
        );
        assert_eq!(stable_voters(&joint), BTreeSet::from([1]));
        let uniform = openraft::Membership::new(
            vec![BTreeSet::from([1, 2, 3, 4, 5])],
            nodes(&[1, 2, 3, 4, 5]),
        );
        assert_eq!(stable_voters(&uniform), BTreeSet::from([1, 2, 3, 4, 5]));
        // Removing a voter: [{1,2,3}, {1,2}] — 3 no longer counts alone.
        let removing = openraft::Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2])],
            nodes(&[1, 2, 3]),
        );
        assert_eq!(stable_voters(&removing), BTreeSet::from([1, 2]));
    }
}
