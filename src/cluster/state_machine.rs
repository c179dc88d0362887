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
    ClusterCommand, ClusterResponse, Entry, LogId, MembershipView, NodeId, SampleBatch, SampleSink,
    Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig, io_err,
};

pub(crate) const SM_TREE: &str = "cluster.sm";
const KEY_STATE: &[u8] = b"state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_SLOTS: &[u8] = b"slots";

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
}

/// A snapshot's payload: the state and the slots. (Snapshots written before slots
/// existed hold the state alone; both decode.)
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    data: SmData,
    slots: BTreeMap<String, i64>,
}

pub(crate) fn decode_payload(bytes: &[u8]) -> Result<SmData, codec::CodecError> {
    match codec::decode::<SnapshotPayload>(bytes) {
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
        }
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.last_membership.nodes().any(|(n, _)| *n == id)
    }

    /// Applies one entry; returns whether the view changed. Sample batches for a new
    /// slot of their group are pushed to `samples` for the sink.
    fn apply_entry(&mut self, entry: &Entry, samples: &mut Vec<SampleBatch>) -> bool {
        let before = self.view().up;
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
                let last = self.slots.get(&b.group).copied();
                if last.is_none_or(|l| b.slot > l) {
                    self.slots.insert(b.group.clone(), b.slot);
                    samples.push(b.clone());
                }
            }
            EntryPayload::Membership(m) => {
                self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                if entry.log_id.index == 0 && self.cluster_id.is_none() {
                    self.cluster_id = m.voter_ids().min();
                }
                let members: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                self.down.retain(|id| members.contains(id));
            }
        }
        let changed = self.view().up != before;
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
        let (view_tx, _) = watch::channel(data.view());
        let cluster_id = Arc::new(AtomicU64::new(data.cluster_id.unwrap_or(0)));
        Ok(Self {
            cluster_id,
            sink: Arc::new(Mutex::new(None)),
            tree,
            data: Arc::new(Mutex::new(data)),
            view_tx: Arc::new(view_tx),
        })
    }

    /// Sets where committed samples go.
    pub fn set_sink(&self, sink: Option<Arc<dyn SampleSink>>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// The last committed slot of a global rule group.
    pub fn last_slot(&self, group: &str) -> Option<i64> {
        self.lock().slots.get(group).copied()
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
        let mut batch = sled::Batch::default();
        batch.insert(KEY_STATE, bytes);
        batch.insert(KEY_SLOTS, slots);
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
        let mut samples = Vec::new();
        let (responses, snapshot) = {
            let mut data = self.lock();
            let responses: Vec<ClusterResponse> = entries
                .into_iter()
                .map(|entry| ClusterResponse {
                    changed: data.apply_entry(&entry, &mut samples),
                })
                .collect();
            (responses, data.clone())
        };
        // Samples are durable in the sink before the slots that skip them are.
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(sink), false) = (sink, samples.is_empty()) {
            match tokio::task::spawn_blocking(move || sink.append(&samples)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot store committed samples"),
                Err(e) => tracing::warn!(error = %e, "storing committed samples panicked"),
            }
        }
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
        let bytes = snapshot.into_inner();
        let mut data: SmData = decode_payload(&bytes)
            .map_err(|e| io_err(|a| StorageIOError::read_snapshot(None, a), e))?;
        // The metadata is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
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
        sm.apply_entry(&e, &mut Vec::new())
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
        let db = sled::open(dir.path()).unwrap();
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
        let db = sled::open(dir.path()).unwrap();
        let sm = StateMachine::open(&db).unwrap();
        assert_eq!(sm.last_slot("g"), Some(2000));
        assert_eq!(sm.last_slot("h"), Some(1000));
        let dir2 = tempfile::tempdir().unwrap();
        let db2 = sled::open(dir2.path()).unwrap();
        let mut other = StateMachine::open(&db2).unwrap();
        other
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(other.last_slot("g"), Some(2000));
        // A snapshot of the older format (state only) still installs.
        let old = codec::encode(&other.state()).unwrap();
        let dir3 = tempfile::tempdir().unwrap();
        let mut third = StateMachine::open(&sled::open(dir3.path()).unwrap()).unwrap();
        third
            .install_snapshot(&snap.meta, Box::new(Cursor::new(old)))
            .await
            .unwrap();
        assert_eq!(third.state().cluster_id, Some(7));
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
        let db = sled::open(dir.path()).unwrap();
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

        let db = sled::open(dir.path()).unwrap();
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
        let db2 = sled::open(dir2.path()).unwrap();
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
