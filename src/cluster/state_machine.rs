//! The cluster state machine on sled ([`StateMachine`], openraft's `RaftStateMachine`).
//!
//! State: last applied log id, last membership, the set of members marked down and the
//! index at which the [`MembershipView`] last changed. The whole state is small, so it
//! is kept in memory, written as one value to the `cluster.sm` tree after every applied
//! batch (flushed), and a snapshot is simply that value encoded. Every change of the
//! view is published on a `tokio::sync::watch` channel.
//!
//! Committed samples of global rule groups ([`ClusterCommand::CommitSamples`]) go to
//! the node's [`SampleSink`] (its TSDB). The state machine remembers the last slot
//! applied per group (persisted under its own key, next to the state, and carried in
//! snapshots): a batch for a slot at or before it is ignored, so two leaders that
//! evaluated the same slot never write two values, and an entry applied again after a
//! crash changes nothing.
//!
//! A slot counts as applied only once the sink has made its samples durable. A batch
//! the sink refuses (a full disk, a failed WAL flush) stays *pending*: it is persisted
//! with the state (key `pending`), retried at every later apply and by
//! [`StateMachine::retry_pending`] (the cluster handle calls it every second), and
//! only then moves the group's slot. The Raft entry itself is reported as applied —
//! an apply error stops an openraft 0.9 node, and a state machine that waited for the
//! disk would also stop membership changes and the leader's writes — so the retry is
//! the state machine's own. Later batches of a group queue behind its pending ones (a
//! sample older than one already stored would be out of order).
// openraft's trait signatures fix `StorageError` (large) as the error type; the
// helpers here return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec;
use super::types::{
    ClusterCommand, ClusterResponse, DrainProgress, Entry, LogId, MembershipView, NodeId,
    SampleBatch, SampleSink, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
    io_err,
};

pub(crate) const SM_TREE: &str = "cluster.sm";
const KEY_STATE: &[u8] = b"state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SLOTS: &[u8] = b"slots";
const KEY_PENDING: &[u8] = b"pending";
const KEY_LEAVING: &[u8] = b"leaving";

/// The replicated state (also the snapshot payload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SmData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub down: BTreeSet<NodeId>,
    pub view_index: u64,
    /// Id of the cluster: the id of the node that initialized it (from the membership
    /// entry at log index 0). `None` until that entry or a snapshot is applied.
    pub cluster_id: Option<NodeId>,
    /// Last committed slot per global rule group. Not part of the encoded state (which
    /// keeps its format): persisted under `KEY_SLOTS` and in snapshots beside it.
    #[serde(skip)]
    pub slots: BTreeMap<String, i64>,
    /// Committed batches the sink has not made durable yet, in log order (persisted
    /// under `KEY_PENDING`; not in snapshots).
    #[serde(skip)]
    pub pending: Vec<SampleBatch>,
    /// Members that are leaving, with their drain's last reported progress (persisted
    /// under `KEY_LEAVING` and in snapshots beside the state).
    #[serde(skip)]
    pub leaving: BTreeMap<NodeId, DrainProgress>,
}

/// A snapshot's payload: the state, the slots and the leaving members. (Snapshots
/// written before the leaving members existed hold the state and the slots, and
/// before slots existed the state alone; all three decode.)
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    data: SmData,
    slots: BTreeMap<String, i64>,
    leaving: BTreeMap<NodeId, DrainProgress>,
}

/// [`SnapshotPayload`] as written before leaving members existed.
#[derive(Deserialize)]
struct SnapshotPayloadV1 {
    data: SmData,
    slots: BTreeMap<String, i64>,
}

pub(crate) fn decode_payload(bytes: &[u8]) -> Result<SmData, codec::CodecError> {
    if let Ok(p) = codec::decode::<SnapshotPayload>(bytes) {
        let mut data = p.data;
        data.slots = p.slots;
        data.leaving = p.leaving;
        return Ok(data);
    }
    match codec::decode::<SnapshotPayloadV1>(bytes) {
        Ok(p) => {
            let mut data = p.data;
            data.slots = p.slots;
            Ok(data)
        }
        Err(_) => codec::decode::<SmData>(bytes),
    }
}

impl SmData {
    pub(crate) fn view(&self) -> MembershipView {
        MembershipView {
            index: self.view_index,
            up: self
                .last_membership
                .nodes()
                .filter(|(id, _)| !self.down.contains(id))
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            leaving: self.leaving.keys().copied().collect(),
        }
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.last_membership.nodes().any(|(n, _)| *n == id)
    }

    /// The last slot of `group` committed here: applied, or pending in the sink.
    fn committed_slot(&self, group: &str) -> Option<i64> {
        let pending = self
            .pending
            .iter()
            .filter(|b| b.group == group)
            .map(|b| b.slot)
            .max();
        self.slots.get(group).copied().max(pending)
    }

    /// Applies one entry; returns whether the view changed. Sample batches for a new
    /// slot of their group join `pending` for the sink.
    fn apply_entry(&mut self, entry: &Entry) -> bool {
        let before = self.view();
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(ClusterCommand::MarkDown { node }) => {
                if self.is_member(*node) {
                    self.down.insert(*node);
                }
            }
            EntryPayload::Normal(ClusterCommand::MarkUp { node }) => {
                self.down.remove(node);
            }
            EntryPayload::Normal(ClusterCommand::Noop) => {}
            EntryPayload::Normal(ClusterCommand::CommitSamples(b)) => {
                if self.committed_slot(&b.group).is_none_or(|l| b.slot > l) {
                    self.pending.push(b.clone());
                }
            }
            EntryPayload::Normal(ClusterCommand::Leaving { node, progress }) => {
                if self.is_member(*node) {
                    self.leaving.insert(*node, *progress);
                }
            }
            EntryPayload::Membership(m) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                if entry.log_id.index == 0 && self.cluster_id.is_none() {
                    self.cluster_id = m.voter_ids().min();
                }
                let members: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                self.down.retain(|id| members.contains(id));
                self.leaving.retain(|id, _| members.contains(id));
            }
        }
        let changed = self.view() != before;
        if changed {
            self.view_index = entry.log_id.index;
        }
        changed
    }
}

/// Stored snapshot: its metadata and the encoded [`SmData`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// sled-backed cluster state machine. Clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    tree: sled::Tree,
    data: Arc<Mutex<SmData>>,
    view_tx: Arc<watch::Sender<MembershipView>>,
    /// `SmData::cluster_id` for lock-free reads by the network layer (0 = unknown).
    cluster_id: Arc<AtomicU64>,
    /// Where committed samples go (None: they are dropped, e.g. in cluster-only tests).
    sink: Arc<Mutex<Option<Arc<dyn SampleSink>>>>,
    /// Serialises the writers of the persisted state (apply, snapshot install, the
    /// retry of pending batches), so no older copy of the state overwrites a newer one.
    io: Arc<tokio::sync::Mutex<()>>,
    /// Consecutive failed attempts to store the pending batches (for the log).
    failures: Arc<AtomicU64>,
}

impl StateMachine {
    /// Opens the state machine tree in `db` and loads the persisted state.
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let tree = db
            .open_tree(SM_TREE)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        let mut data: SmData = match tree
            .get(KEY_STATE)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?
        {
            Some(bytes) => {
                codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_state_machine, e))?
            }
            None => SmData::default(),
        };
        if let Some(bytes) = tree
            .get(KEY_SLOTS)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?
        {
            data.slots =
                codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        }
        if let Some(bytes) = tree
            .get(KEY_LEAVING)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?
        {
            data.leaving =
                codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        }
        if let Some(bytes) = tree
            .get(KEY_PENDING)
            .map_err(|e| io_err(StorageIOError::read_state_machine, e))?
        {
            data.pending =
                codec::decode(&bytes).map_err(|e| io_err(StorageIOError::read_state_machine, e))?;
        }
        let (view_tx, _) = watch::channel(data.view());
        let cluster_id = Arc::new(AtomicU64::new(data.cluster_id.unwrap_or(0)));
        Ok(Self {
            cluster_id,
            sink: Arc::new(Mutex::new(None)),
            io: Arc::new(tokio::sync::Mutex::new(())),
            failures: Arc::new(AtomicU64::new(0)),
            tree,
            data: Arc::new(Mutex::new(data)),
            view_tx: Arc::new(view_tx),
        })
    }

    /// Sets where committed samples go.
    pub fn set_sink(&self, sink: Option<Arc<dyn SampleSink>>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// The last slot of a global rule group applied here: its samples are durable in
    /// the sink.
    pub fn last_slot(&self, group: &str) -> Option<i64> {
        self.lock().slots.get(group).copied()
    }

    /// The last slot of a global rule group committed through the log and seen here:
    /// applied, or pending until the sink takes it. A batch for a slot at or before it
    /// is ignored.
    pub fn committed_slot(&self, group: &str) -> Option<i64> {
        self.lock().committed_slot(group)
    }

    /// Committed batches not yet durable in the sink.
    pub fn pending_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// Stores the pending batches now, if any (what every apply does first). Returns
    /// whether none is left pending.
    pub async fn retry_pending(&self) -> Result<bool, StorageError> {
        let _io = self.io.lock().await;
        if self.lock().pending.is_empty() {
            return Ok(true);
        }
        if !self.store_pending().await {
            return Ok(false);
        }
        let snapshot = self.state();
        self.persist(&snapshot).await?;
        Ok(snapshot.pending.is_empty())
    }

    /// Hands the pending batches to the sink (io lock held). On success they leave
    /// `pending` and move their groups' slots; on failure every one of them stays
    /// pending (the sink accepts the same samples again as a no-op). Returns whether
    /// anything changed.
    async fn store_pending(&self) -> bool {
        let batches = self.lock().pending.clone();
        if batches.is_empty() {
            return false;
        }
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let result = match sink {
            // No sink: the samples are dropped (a cluster without a store).
            None => Ok(()),
            Some(sink) => {
                let b = batches.clone();
                match tokio::task::spawn_blocking(move || sink.append(&b)).await {
                    Ok(r) => r,
                    Err(e) => Err(format!("panicked: {e}")),
                }
            }
        };
        if let Err(e) = result {
            let n = self.failures.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                tracing::warn!(error = %e, batches = batches.len(), "cannot store committed rule samples; retrying");
            } else {
                tracing::debug!(error = %e, attempts = n + 1, "cannot store committed rule samples");
            }
            return false;
        }
        let n = self.failures.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::info!(
                attempts = n + 1,
                "stored committed rule samples after retrying"
            );
        }
        let mut data = self.lock();
        // Only this function (under the io lock) removes from `pending`, and apply only
        // pushes at its end: the first `batches.len()` are the ones stored.
        for b in data.pending.drain(..batches.len()).collect::<Vec<_>>() {
            let slot = data.slots.entry(b.group).or_insert(b.slot);
            *slot = (*slot).max(b.slot);
        }
        true
    }

    /// A receiver of the membership view (current value immediately available).
    pub fn subscribe(&self) -> watch::Receiver<MembershipView> {
        self.view_tx.subscribe()
    }

    /// The cluster id once known (see `SmData::cluster_id`).
    pub fn cluster_id(&self) -> Option<NodeId> {
        Some(self.cluster_id.load(Ordering::Relaxed)).filter(|id| *id != 0)
    }

    fn lock(&self) -> MutexGuard<'_, SmData> {
        // A poisoned lock only means another thread panicked mid-update of plain data;
        // the value is still a valid SmData.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current state.
    pub(crate) fn state(&self) -> SmData {
        self.lock().clone()
    }

    async fn persist(&self, data: &SmData) -> Result<(), StorageError> {
        let bytes =
            codec::encode(data).map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        let slots = codec::encode(&data.slots)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        let pending = codec::encode(&data.pending)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        let leaving = codec::encode(&data.leaving)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_LEAVING, leaving);
        batch.insert(KEY_STATE, bytes);
        batch.insert(KEY_SLOTS, slots);
        batch.insert(KEY_PENDING, pending);
        self.tree
            .apply_batch(batch)
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        self.tree
            .flush_async()
            .await
            .map_err(|e| io_err(StorageIOError::write_state_machine, e))?;
        Ok(())
    }

    fn publish(&self, data: &SmData) {
        self.cluster_id
            .store(data.cluster_id.unwrap_or(0), Ordering::Relaxed);
        let view = data.view();
        self.view_tx.send_if_modified(|cur| {
            if *cur == view {
                false
            } else {
                *cur = view;
                true
            }
        });
    }

    fn store_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = codec::encode(snap)
            .map_err(|e| io_err(|a| StorageIOError::write_snapshot(None, a), e))?;
        self.tree
            .insert(KEY_SNAPSHOT, bytes)
            .map_err(|e| io_err(|a| StorageIOError::write_snapshot(None, a), e))?;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = self.state();
        let bytes = codec::encode(&SnapshotPayload {
            data: data.clone(),
            slots: data.slots.clone(),
            leaving: data.leaving.clone(),
        })
        .map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))?;
        let snapshot_id = match data.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, now_nanos()),
            None => format!("none-{}", now_nanos()),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes.clone(),
        };
        self.store_snapshot(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.lock();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let _io = self.io.lock().await;
        let responses: Vec<ClusterResponse> = {
            let mut data = self.lock();
            entries
                .into_iter()
                .map(|entry| ClusterResponse {
                    changed: data.apply_entry(&entry),
                })
                .collect()
        };
        // Samples are durable in the sink before the slots that skip them are; what
        // the sink refuses stays pending (persisted below) and is retried.
        self.store_pending().await;
        let snapshot = self.state();
        self.persist(&snapshot).await?;
        self.publish(&snapshot);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let _io = self.io.lock().await;
        let bytes = snapshot.into_inner();
        let mut data: SmData = decode_payload(&bytes)
            .map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))?;
        // The metadata is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        // Batches still pending here stay so, unless the snapshot's slots pass them.
        data.pending = self.lock().pending.clone();
        data.pending
            .retain(|b| data.slots.get(&b.group).is_none_or(|l| b.slot > *l));
        self.store_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        })?;
        self.persist(&data).await?;
        *self.lock() = data.clone();
        self.publish(&data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(bytes) = self
            .tree
            .get(KEY_SNAPSHOT)
            .map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = codec::decode(&bytes)
            .map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::cluster::types::NodeInfo;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn membership(voters: &[NodeId], learners: &[NodeId]) -> EntryPayload<TypeConfig> {
        let nodes: BTreeMap<NodeId, NodeInfo> = voters
            .iter()
            .chain(learners)
            .map(|id| {
                (
                    *id,
                    NodeInfo {
                        addr: format!("n{id}:9090"),
                    },
                )
            })
            .collect();
        EntryPayload::Membership(Membership::new(
            vec![voters.iter().copied().collect()],
            nodes,
        ))
    }

    fn ap(sm: &mut SmData, e: Entry) -> bool {
        sm.apply_entry(&e)
    }

    fn batch(group: &str, slot: i64, v: f64) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(ClusterCommand::CommitSamples(SampleBatch {
            group: group.into(),
            slot,
            series: vec![(vec![("__name__".into(), "job:x".into())], v.to_bits())],
        }))
    }

    #[derive(Default)]
    struct Sink(Mutex<Vec<(String, i64)>>);

    impl SampleSink for Sink {
        fn append(&self, batches: &[SampleBatch]) -> Result<(), String> {
            let mut g = self.0.lock().unwrap();
            g.extend(batches.iter().map(|b| (b.group.clone(), b.slot)));
            Ok(())
        }
    }

    #[tokio::test]
    async fn committed_samples_reach_the_sink_once_per_slot() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        let sink = Arc::new(Sink::default());
        sm.set_sink(Some(sink.clone()));
        sm.apply([
            entry(0, membership(&[7], &[])),
            entry(1, batch("g", 1000, 1.0)),
            // Another leader's evaluation of the same slot, an older slot: ignored.
            entry(2, batch("g", 1000, 2.0)),
            entry(3, batch("g", 500, 2.0)),
            entry(4, batch("h", 1000, 2.0)),
        ])
        .await
        .unwrap();
        sm.apply([entry(5, batch("g", 2000, 1.0))]).await.unwrap();
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![("g".into(), 1000), ("h".into(), 1000), ("g".into(), 2000)]
        );
        assert_eq!(sm.last_slot("g"), Some(2000));
        let snap = sm.build_snapshot().await.unwrap();
        drop(sm);
        drop(db);
        // Slots survive a restart and travel in snapshots.
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let sm = StateMachine::open(&db).unwrap();
        assert_eq!(sm.last_slot("g"), Some(2000));
        assert_eq!(sm.last_slot("h"), Some(1000));
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = crate::storage::sled_open::open_path(dir2.path()).unwrap();
        let mut other = StateMachine::open(&db2).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(other.last_slot("g"), Some(2000));
        // A snapshot of the older format (state only) still installs.
        let old = codec::encode(&other.state()).unwrap();
        let dir3 = tempfile::tempdir().unwrap();
        let mut third =
            StateMachine::open(&crate::storage::sled_open::open_path(dir3.path()).unwrap())
                .unwrap();
        third
            .install_snapshot(&snap.meta, Box::new(Cursor::new(old)))
            .await
            .unwrap();
        assert_eq!(third.state().cluster_id, Some(7));
    }

    #[tokio::test]
    async fn a_leaving_member_owns_nothing_stays_readable_and_is_forgotten_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        let views = sm.subscribe();
        let progress = |series_left, done| DrainProgress {
            series_left,
            bytes_left: series_left * 100,
            done,
        };
        let leaving = |node, p| EntryPayload::Normal(ClusterCommand::Leaving { node, progress: p });
        sm.apply([
            entry(0, membership(&[1, 2, 3], &[])),
            // Not a member: ignored.
            entry(1, leaving(9, progress(1, false))),
            entry(2, leaving(3, progress(40, false))),
        ])
        .await
        .unwrap();
        let v = views.borrow().clone();
        assert_eq!(v.index, 2, "the view changes when a member starts leaving");
        assert_eq!(v.up.len(), 3, "a leaving member still answers reads");
        assert_eq!(v.leaving, BTreeSet::from([3]));
        assert_eq!(v.owners().keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        // Progress is state, not a view change.
        sm.apply([entry(3, leaving(3, progress(10, false)))])
            .await
            .unwrap();
        assert_eq!(views.borrow().index, 2);
        assert_eq!(sm.state().leaving[&3], progress(10, false));
        let snap = sm.build_snapshot().await.unwrap();
        drop(sm);
        drop(db);
        // Survives a restart and travels in snapshots.
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        assert_eq!(sm.state().leaving[&3], progress(10, false));
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = crate::storage::sled_open::open_path(dir2.path()).unwrap();
        let mut other = StateMachine::open(&db2).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(other.subscribe().borrow().leaving, BTreeSet::from([3]));
        // Removed from the membership: no longer leaving.
        sm.apply([entry(4, membership(&[1, 2], &[]))])
            .await
            .unwrap();
        assert!(sm.state().leaving.is_empty());
        assert!(sm.subscribe().borrow().leaving.is_empty());
    }

    /// A store whose first `fail` commits fail (a full disk, a failed WAL write), behind
    /// the sink the node uses ([`append_batches`]).
    struct FlakyStore {
        store: crate::storage::memory::MemStore,
        fail: std::sync::atomic::AtomicUsize,
    }

    struct FlakyAppender(Box<dyn crate::storage::Appender>, bool);

    impl crate::storage::Appender for FlakyAppender {
        fn append(
            &mut self,
            labels: &crate::model::Labels,
            t: i64,
            v: f64,
        ) -> Result<crate::storage::SeriesRef, crate::storage::AppendError> {
            self.0.append(labels, t, v)
        }
        fn append_ref(
            &mut self,
            series: crate::storage::SeriesRef,
            t: i64,
            v: f64,
        ) -> Result<(), crate::storage::AppendError> {
            self.0.append_ref(series, t, v)
        }
        fn commit(
            self: Box<Self>,
        ) -> Result<crate::storage::CommitStats, crate::storage::StorageError> {
            if self.1 {
                self.0.rollback();
                return Err(crate::storage::StorageError(
                    "no space left on device".into(),
                ));
            }
            self.0.commit()
        }
        fn rollback(self: Box<Self>) {
            self.0.rollback()
        }
    }

    impl crate::storage::Appendable for FlakyStore {
        fn appender(&self) -> Box<dyn crate::storage::Appender> {
            let fail = self
                .fail
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            Box::new(FlakyAppender(self.store.appender(), fail))
        }
    }

    impl SampleSink for FlakyStore {
        fn append(&self, batches: &[SampleBatch]) -> Result<(), String> {
            crate::cluster::append_batches(self, batches).map(|_| ())
        }
    }

    /// `(t, v)` of every stored `job:x` sample.
    fn stored(s: &crate::storage::memory::MemStore) -> Vec<(i64, f64)> {
        use crate::storage::Queryable;
        let hints = crate::storage::SelectHints {
            start: i64::MIN,
            end: i64::MAX,
            ..Default::default()
        };
        let set = s
            .select(&hints, &[crate::model::Matcher::equal("__name__", "job:x")])
            .unwrap();
        set.series
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| (x.t, x.v)))
            .collect()
    }

    #[tokio::test]
    async fn refused_samples_stay_pending_until_the_store_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        let store = Arc::new(FlakyStore {
            store: crate::storage::memory::MemStore::new(),
            fail: 2.into(),
        });
        sm.set_sink(Some(store.clone()));
        sm.apply([
            entry(0, membership(&[7], &[])),
            entry(1, batch("g", 1000, 1.0)),
        ])
        .await
        .unwrap();
        // The store refused the batch: not in storage, and its slot is not applied.
        assert!(stored(&store.store).is_empty());
        assert_eq!(sm.last_slot("g"), None);
        assert_eq!(sm.committed_slot("g"), Some(1000));
        assert_eq!(sm.pending_batches(), 1);
        // The Raft entry is applied all the same (openraft stops on an apply error).
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(1)
        );
        // Another leader's evaluation of the same slot is still ignored; the retry in
        // this apply fails again.
        sm.apply([entry(2, batch("g", 1000, 2.0))]).await.unwrap();
        assert!(stored(&store.store).is_empty());
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (None, 1));

        // The pending batch survives a restart of the node.
        drop(sm);
        drop(db);
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let sm = StateMachine::open(&db).unwrap();
        sm.set_sink(Some(store.clone()));
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (None, 1));
        // The store works again: the retry (the handle's timer) stores the samples and
        // only then records the slot.
        assert!(sm.retry_pending().await.unwrap());
        assert_eq!(stored(&store.store), vec![(1000, 1.0)]);
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (Some(1000), 0));
        drop(sm);
        drop(db);
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (Some(1000), 0));

        // A later batch of a group queues behind its refused one, and both go in order
        // at the next apply.
        store.fail.store(1, Ordering::Relaxed);
        sm.set_sink(Some(store.clone()));
        sm.apply([entry(3, batch("g", 2000, 3.0))]).await.unwrap();
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (Some(1000), 1));
        sm.apply([entry(4, batch("g", 3000, 4.0))]).await.unwrap();
        assert_eq!(
            stored(&store.store),
            vec![(1000, 1.0), (2000, 3.0), (3000, 4.0)]
        );
        assert_eq!((sm.last_slot("g"), sm.pending_batches()), (Some(3000), 0));
    }

    #[test]
    fn view_follows_membership_and_liveness() {
        let mut sm = SmData::default();
        assert!(ap(&mut sm, entry(0, membership(&[7], &[]))));
        assert_eq!(sm.cluster_id, Some(7));
        assert_eq!(sm.view().index, 0);
        assert!(!ap(&mut sm, entry(1, EntryPayload::Blank)));
        assert!(ap(&mut sm, entry(2, membership(&[7], &[3, 9]))));
        let v = sm.view();
        assert_eq!(v.index, 2);
        assert_eq!(v.up.keys().copied().collect::<Vec<_>>(), vec![3, 7, 9]);
        assert_eq!(v.up[&3], "n3:9090");

        // Down for a non-member is ignored; for a member it changes the view.
        assert!(!ap(
            &mut sm,
            entry(
                3,
                EntryPayload::Normal(ClusterCommand::MarkDown { node: 4 })
            )
        ));
        assert!(ap(
            &mut sm,
            entry(
                4,
                EntryPayload::Normal(ClusterCommand::MarkDown { node: 9 })
            )
        ));
        assert_eq!(sm.view().index, 4);
        assert!(!sm.view().up.contains_key(&9));
        // Repeating it changes nothing, not even the index.
        assert!(!ap(
            &mut sm,
            entry(
                5,
                EntryPayload::Normal(ClusterCommand::MarkDown { node: 9 })
            )
        ));
        assert_eq!(sm.view().index, 4);
        assert!(ap(
            &mut sm,
            entry(6, EntryPayload::Normal(ClusterCommand::MarkUp { node: 9 }))
        ));
        assert_eq!(sm.view().index, 6);

        // Removing a down member forgets that it was down (the up set is unchanged).
        assert!(ap(
            &mut sm,
            entry(
                7,
                EntryPayload::Normal(ClusterCommand::MarkDown { node: 3 })
            )
        ));
        assert!(!ap(&mut sm, entry(8, membership(&[7], &[9]))));
        assert_eq!(sm.view().index, 7);
        assert!(sm.down.is_empty());
        assert_eq!(sm.last_applied.map(|l| l.index), Some(8));
        // The cluster id is fixed by index 0 only.
        ap(&mut sm, entry(9, membership(&[1], &[7])));
        assert_eq!(sm.cluster_id, Some(7));
    }

    #[tokio::test]
    async fn state_and_view_survive_reopen_and_snapshot_install() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        let mut rx = sm.subscribe();
        sm.apply([
            entry(0, membership(&[7], &[3])),
            entry(
                1,
                EntryPayload::Normal(ClusterCommand::MarkDown { node: 3 }),
            ),
        ])
        .await
        .unwrap();
        assert!(rx.has_changed().unwrap());
        let v = rx.borrow_and_update().clone();
        assert_eq!((v.index, v.up.len()), (1, 1));
        let snap = sm.build_snapshot().await.unwrap();
        drop(sm);
        drop(db);

        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let mut sm = StateMachine::open(&db).unwrap();
        assert_eq!(sm.subscribe().borrow().clone(), v);
        assert_eq!(sm.cluster_id(), Some(7));
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot kept");
        assert_eq!(current.meta, snap.meta);

        // A fresh state machine installing the snapshot ends up with the same view.
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = crate::storage::sled_open::open_path(dir2.path()).unwrap();
        let mut other = StateMachine::open(&db2).unwrap();
        other
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(other.subscribe().borrow().clone(), v);
        assert_eq!(other.cluster_id(), Some(7));
        assert_eq!(
            other.applied_state().await.unwrap().0.map(|l| l.index),
            Some(1)
        );
    }
}
