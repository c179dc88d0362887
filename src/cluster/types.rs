//! Raft type configuration and the cluster's replicated data types: the node metadata
//! stored in every membership entry ([`NodeInfo`]), the commands of the state machine
//! ([`ClusterCommand`]) and their reply ([`ClusterResponse`]), plus aliases that tame
//! openraft's generic error types inside this module.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's Raft id: random, generated once and persisted in the node's data dir.
pub type NodeId = u64;

/// Per-node metadata replicated in every membership entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` on which the node serves HTTP (API and the internal routes).
    pub addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A command committed through the Raft log and applied by the state machine.
///
/// New variants must be appended at the end (bincode encodes the variant index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterCommand {
    /// The leader has not heard from `node` for `down_after`.
    MarkDown { node: NodeId },
    /// `node` answers again.
    MarkUp { node: NodeId },
    /// Does nothing; lets a caller wait for the log to be applied up to "now".
    Noop,
    /// Samples of one evaluation of a global rule group (the master loop); every
    /// node's state machine appends them to its store through its [`SampleSink`].
    CommitSamples(SampleBatch),
    /// `node` is leaving: it owns no target from this entry on (its targets move to
    /// the others) but stays a readable member while it moves its samples to their new
    /// owners (the drain). Committed again with the drain's progress; the node leaves
    /// the membership (an ordinary removal) once the drain is done.
    Leaving {
        node: NodeId,
        progress: DrainProgress,
    },
}

pub use crate::peer::protocol::DrainProgress;

/// The results of one evaluation slot of one global rule group: every sample has the
/// timestamp `slot`. Values are f64 bits (staleness markers stay bit-exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleBatch {
    /// The group's identity (`file;name`).
    pub group: String,
    /// Evaluation timestamp (ms since the epoch) on the group's schedule.
    pub slot: i64,
    /// Series as sorted label pairs (with `__name__`) and the value's bits.
    pub series: Vec<(Vec<(String, String)>, u64)>,
}

/// Where the state machine puts committed samples (the node's TSDB). Called from a
/// blocking thread; must make the samples durable before returning (a batch whose
/// slot the state machine then records is never applied again), and must accept the
/// same samples twice as a no-op (a crash between append and that record re-applies).
pub trait SampleSink: Send + Sync {
    fn append(&self, batches: &[SampleBatch]) -> Result<(), String>;
}

/// Appends `batches` to `app`, one appender batch per [`SampleBatch`] (what a store's
/// [`SampleSink`] does before it makes them durable). Returns the number of samples
/// the store rejected (out of order, duplicates: writing them again changes nothing);
/// a failure of the store itself is an error.
pub fn append_batches(
    app: &dyn crate::storage::Appendable,
    batches: &[SampleBatch],
) -> Result<usize, String> {
    let mut rejected = 0;
    for b in batches {
        let series: Vec<(crate::model::Labels, f64)> = b
            .series
            .iter()
            .map(|(pairs, bits)| {
                let labels = crate::model::Labels::new(
                    pairs
                        .iter()
                        .map(|(n, v)| crate::model::Label::new(n, v))
                        .collect(),
                );
                (labels, f64::from_bits(*bits))
            })
            .collect();
        rejected += crate::rules::write_samples(app, b.slot, &series)?;
    }
    Ok(rejected)
}

/// Reply to an applied [`ClusterCommand`] (and to blank / membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    /// Whether the command changed the membership view.
    pub changed: bool,
}

/// The set of up members, those of them that are leaving, and the log index that view
/// was committed at. Every node computes the same view at the same index, so it is the
/// input of sharding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Log index of the entry that last changed `up` or `leaving`. The founding
    /// membership entry is at index 0, so a view with index 0 and an empty `up` means
    /// "not in a cluster yet".
    pub index: u64,
    /// Up members: node id → advertised address. Leaving members are listed (they
    /// still answer reads with their data).
    pub up: BTreeMap<NodeId, String>,
    /// Members that are leaving (see [`ClusterCommand::Leaving`]): they own no targets.
    pub leaving: BTreeSet<NodeId>,
}

impl MembershipView {
    /// The members targets (and moved samples) are assigned to: up and not leaving.
    pub fn owners(&self) -> BTreeMap<NodeId, String> {
        self.up
            .iter()
            .filter(|(id, _)| !self.leaving.contains(id))
            .map(|(id, addr)| (*id, addr.clone()))
            .collect()
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration of a shoal cluster.
    pub TypeConfig:
        D = ClusterCommand,
        R = ClusterResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub(crate) type Snapshot = openraft::Snapshot<TypeConfig>;
pub(crate) type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub(crate) type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, NodeInfo, RaftError<E>>;
pub(crate) type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub(crate) type AppendResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub(crate) type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub(crate) type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub(crate) type SnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub(crate) type SnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;

/// Maps any error into openraft's storage-IO error for the given subject.
pub(crate) fn io_err(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    e: impl std::error::Error + 'static,
) -> StorageError {
    make(openraft::AnyError::new(&e)).into()
}
