//! Backfill: samples from a file (`shoal tsdb import openmetrics FILE --node ADDR`,
//! like `promtool tsdb create-blocks-from openmetrics`) stored where they belong in the
//! cluster.
//!
//! - [`file`]: the file's rules and reading (the CLI's side): OpenMetrics text, a
//!   timestamp on every sample, increasing per series, `# EOF`; checked whole before
//!   anything is sent, then read again in batches.
//! - [`Backfill`] (the node's side, behind `POST /api/v1/admin/tsdb/import`): takes a
//!   batch of series, places each with [`crate::shard::placement`] over the members
//!   that own data (`MembershipView::owners`: up and not leaving, this node included)
//!   — its `--cluster.replication-factor` first owners, so that a backfilled series
//!   is held by as many members as a scraped one — encodes its samples into XOR chunks
//!   ([`crate::tsdb::chunkenc::encode`]), imports this node's share into its own store
//!   and sends every other owner its share over `peer::protocol::TSDB_IMPORT`
//!   ([`WireImportMode::Exact`]: every distinct timestamp is kept). It answers once
//!   every owner has made its share durable, with what they did (stored, duplicate,
//!   conflicting, dropped: out of retention or too far in the future); a failure of any
//!   owner fails the batch (the others' shares stay: import is idempotent, so sending
//!   the batch again is safe).

pub mod file;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{ClusterHandle, NodeId};
use crate::drain::receive::{answer_of, from_wire, to_wire};
use crate::model::{Labels, Sample};
use crate::peer::protocol::{ImportAnswer, ImportRequest, TSDB_IMPORT, WireImportMode};
use crate::scrape::TargetsView;
use crate::shard::Assigner;
use crate::shard::placement::{InstanceKeys, placement_key};
use crate::storage::chunks::{ChunkStore, ImportMode, ImportSeries};

/// Chunks are cut at 2 h boundaries (the TSDB's default block; a receiver with other
/// blocks splits them again).
const BLOCK_RANGE_MS: i64 = 2 * 3600 * 1000;

/// How long an owner may take for its share.
pub const SHARE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a batch was not (wholly) imported.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The batch is malformed: nothing was stored (400).
    #[error("{0}")]
    Invalid(String),
    /// An owner (this node's store, a peer) did not take its share (503); the other
    /// shares may be stored — sending the batch again is safe.
    #[error("{0}")]
    Unavailable(String),
}

/// What one batch did, summed over its owners (with replication factor R each sample
/// counts once per copy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub series: u64,
    pub samples: u64,
    pub stored: u64,
    pub duplicate: u64,
    pub conflicting: u64,
    pub dropped: u64,
    /// Series sent to each member (this node included).
    pub series_by_node: BTreeMap<NodeId, u64>,
}

impl BackfillReport {
    fn add(&mut self, a: &ImportAnswer) {
        self.stored += a.stored;
        self.duplicate += a.duplicate;
        self.conflicting += a.conflicting;
        self.dropped += a.dropped;
    }
}

/// Checks one series of a batch: a valid label set with a metric name, at least one
/// sample, timestamps strictly increasing.
pub fn check_series(labels: &Labels, samples: &[Sample]) -> Result<(), String> {
    let wire = crate::peer::protocol::WireSeries {
        labels: labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        chunks: Vec::new(),
    };
    from_wire(wire)?;
    if samples.is_empty() {
        return Err(format!("series {labels} has no sample"));
    }
    if let Some(w) = samples.windows(2).find(|w| w[1].t <= w[0].t) {
        return Err(format!(
            "series {labels}: sample at {} ms is not after the one at {} ms",
            w[1].t, w[0].t
        ));
    }
    Ok(())
}

/// The node's side of a backfill (see the module docs).
pub struct Backfill {
    store: Arc<dyn ChunkStore>,
    cluster: ClusterHandle,
    targets: TargetsView,
    replication_factor: usize,
    /// One batch at a time per node (imports are one at a time in the store anyway).
    slot: tokio::sync::Semaphore,
}

impl Backfill {
    pub fn new(
        store: Arc<dyn ChunkStore>,
        cluster: ClusterHandle,
        targets: TargetsView,
        replication_factor: usize,
    ) -> Backfill {
        Backfill {
            store,
            cluster,
            targets,
            replication_factor: replication_factor.max(1),
            slot: tokio::sync::Semaphore::new(1),
        }
    }

    /// Imports one batch where it belongs; answers once every owner holds its share
    /// durably.
    pub async fn import(
        &self,
        batch: Vec<(Labels, Vec<Sample>)>,
    ) -> Result<BackfillReport, BackfillError> {
        for (labels, samples) in &batch {
            check_series(labels, samples).map_err(BackfillError::Invalid)?;
        }
        let _one = self
            .slot
            .acquire()
            .await
            .map_err(|e| BackfillError::Unavailable(e.to_string()))?;
        let me = self.cluster.node_id();
        let owners = self.cluster.membership_view().borrow().owners();
        if owners.is_empty() {
            return Err(BackfillError::Unavailable(
                "no member owns data yet (the cluster has no up member that is not leaving)".into(),
            ));
        }
        let keys: Arc<InstanceKeys> = self
            .targets
            .snapshot()
            .assignment
            .map(|a| a.instance_keys)
            .unwrap_or_default();
        let assigner = Assigner::new(owners.keys().copied());
        let mut report = BackfillReport::default();
        let mut shares: BTreeMap<NodeId, Vec<ImportSeries>> = BTreeMap::new();
        for (labels, samples) in batch {
            report.series += 1;
            report.samples += samples.len() as u64;
            let chunks = crate::tsdb::chunkenc::encode(&samples, BLOCK_RANGE_MS);
            let to = assigner.owners(placement_key(&labels, &keys), self.replication_factor);
            for o in to {
                *report.series_by_node.entry(o).or_default() += 1;
                shares.entry(o).or_default().push(ImportSeries {
                    labels: labels.clone(),
                    chunks: chunks.clone(),
                });
            }
        }
        let mut local = None;
        let mut remote = Vec::new();
        for (owner, share) in shares {
            if owner == me {
                local = Some(share);
                continue;
            }
            let addr = owners.get(&owner).cloned().unwrap_or_default();
            let req = ImportRequest {
                from: me,
                series: share.iter().map(to_wire).collect(),
                mode: WireImportMode::Exact,
            };
            let peer = self.cluster.peer().clone();
            remote.push(async move {
                let r = peer
                    .call::<ImportRequest, ImportAnswer>(&addr, TSDB_IMPORT, &req, SHARE_TIMEOUT)
                    .await;
                (owner, addr, r)
            });
        }
        let store = self.store.clone();
        let local = async move {
            match local {
                None => Ok(ImportAnswer::default()),
                Some(share) => {
                    tokio::task::spawn_blocking(move || store.import(share, ImportMode::Exact))
                        .await
                        .map_err(|e| format!("import panicked: {e}"))?
                        .map(|st| answer_of(&st))
                        .map_err(|e| e.0)
                }
            }
        };
        let (local, remote) = tokio::join!(local, futures_util::future::join_all(remote));
        let mut failures = Vec::new();
        match local {
            Ok(a) => report.add(&a),
            Err(e) => failures.push(format!("this node ({me}): {e}")),
        }
        for (owner, addr, r) in remote {
            match r {
                Ok(a) => report.add(&a),
                Err(e) => failures.push(format!("node {owner} ({addr}): {e}")),
            }
        }
        if !failures.is_empty() {
            tracing::warn!(failures = ?failures, "backfill: owners did not take their share");
            return Err(BackfillError::Unavailable(format!(
                "not every owner took its share of the batch (sending it again is safe): {}",
                failures.join("; ")
            )));
        }
        tracing::info!(
            series = report.series,
            samples = report.samples,
            stored = report.stored,
            duplicate = report.duplicate,
            conflicting = report.conflicting,
            dropped = report.dropped,
            "backfill: imported a batch"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_of_a_batch_are_checked() {
        let l = Labels::from_pairs(&[("__name__", "up"), ("job", "a")]);
        let s = |t| Sample { t, v: 1.0 };
        assert!(check_series(&l, &[s(1), s(2)]).is_ok());
        assert!(check_series(&l, &[]).is_err());
        assert!(check_series(&l, &[s(2), s(2)]).is_err());
        assert!(check_series(&l, &[s(2), s(1)]).is_err());
        let nameless = Labels::from_pairs(&[("job", "a")]);
        assert!(check_series(&nameless, &[s(1)]).is_err());
        let bad = Labels::from_pairs(&[("__name__", "up"), ("a-b", "x")]);
        assert!(check_series(&bad, &[s(1)]).is_err());
    }
}
