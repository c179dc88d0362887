//! History follows the target: a leaving node moves every sample it holds to the nodes
//! that own that data once it has left (the drain), before it leaves the membership.
//!
//! # Protocol (the leaver's side, [`Drain::run`])
//! 1. **Announce.** The node commits `Leaving` for itself through Raft
//!    ([`ClusterHandle::report_leaving`]). From that entry on, every node assigns targets
//!    over the members that are up and not leaving (`MembershipView::owners`): the
//!    leaver's targets move to their next owners with the usual make-before-break
//!    handoff. The leaver stays a member that answers reads (queries merge its copy
//!    with the receivers' without doubling it: `query::dedup`, and pushdown falls back
//!    where a series is on two members).
//! 2. **Quiesce.** Once its scrapes have handed off, the node stops its local rule
//!    groups and seals its head: from here its store only changes by the master's
//!    committed global samples, which every node holds anyway.
//! 3. **Stream.** It reads its store in export order, in batches of sealed chunks
//!    (XOR bytes as stored, never decoded samples), sends each series to its new owner
//!    ([`crate::shard::placement`]: the first owner of the series' target among the
//!    members that stay) over `peer::protocol::TSDB_IMPORT`, and persists the cursor
//!    once every receiver of the batch has answered — receivers answer only when the
//!    chunks are durable. A receiver that fails is retried; when the cluster marks it
//!    down the placement moves its share to the next owner. Throttled to
//!    [`DrainOptions::rate`] bytes per second; progress (series and bytes left) is
//!    committed every [`PROGRESS_EVERY`].
//! 4. **Leave.** With everything acknowledged it commits `done` and leaves the
//!    membership (an ordinary removal). Only then does it stop and wipe its cluster
//!    state; the samples stay in its data dir.
//!
//! A crash anywhere keeps the node's identity; restarted, it finds itself leaving in
//! the committed state and runs the drain again from the persisted cursor
//! ([`cursor`]): the batch in flight is sent again, and the receivers' import is
//! idempotent (a chunk they hold already stores nothing).

pub mod cursor;
pub mod receive;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterHandle, DrainProgress, NodeId};
use crate::peer::protocol::{ImportAnswer, ImportRequest, TSDB_IMPORT, WireImportMode};
use crate::scrape::TargetsView;
use crate::shard::Assigner;
use crate::shard::placement::{InstanceKeys, owner_of};
use crate::storage::chunks::{ChunkStore, ExportCursor, ImportSeries};

use self::cursor::CursorFile;

/// How often the drain commits its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How the drain runs.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Chunk bytes per batch read from the store (a receiver gets its share of one).
    pub batch_bytes: usize,
    /// Chunk bytes sent per second at most (0: no limit).
    pub rate: u64,
    /// How long to wait for the scrapes to hand off before sealing regardless.
    pub handoff_wait: Duration,
    /// How long one import request may take.
    pub request_timeout: Duration,
}

impl DrainOptions {
    /// The defaults at `rate` bytes per second (0: no limit); a batch is at most one
    /// second's worth, so that a slow drain moves in small steps.
    pub fn with_rate(rate: u64) -> DrainOptions {
        let d = DrainOptions::default();
        DrainOptions {
            rate,
            batch_bytes: match usize::try_from(rate) {
                Ok(r) if r > 0 => r.min(d.batch_bytes),
                _ => d.batch_bytes,
            },
            ..d
        }
    }
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            batch_bytes: 4 << 20,
            rate: 64 << 20,
            handoff_wait: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What a drain moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub series: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// Samples the receivers stored, and those they held already.
    pub stored: u64,
    pub duplicate: u64,
    pub elapsed: Duration,
}

/// Why a drain stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("drain: the store failed: {0}")]
    Store(String),
    #[error("drain: stopped")]
    Stopped,
}

/// The leaver's side of the drain.
pub struct Drain {
    pub cluster: ClusterHandle,
    pub store: Arc<dyn ChunkStore>,
    /// The scrape manager's view: whether scrapes have handed off, and the targets'
    /// keys for placement.
    pub targets: TargetsView,
    pub cursor: CursorFile,
    pub opts: DrainOptions,
    /// Stops this node's writers other than the scrapes (its local rule groups, whose
    /// series it ends with staleness markers).
    pub stop_writers: Box<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>,
}

impl Drain {
    /// Runs the whole drain (steps 1–3 of the module docs) and commits `done`. Returns
    /// when every chunk is acknowledged; retries failures until then, so the caller
    /// bounds it (or not: a drain may take minutes).
    pub async fn run(&self) -> Result<DrainReport, DrainError> {
        let started = Instant::now();
        let me = self.cluster.node_id();
        let after = self.cursor.load();
        let totals = self.totals(after).await?;
        tracing::info!(
            node_id = me,
            series = totals.series,
            bytes = totals.bytes,
            resumed = after.is_some(),
            "drain: leaving; moving this node's samples to their new owners"
        );
        let mut left = DrainProgress {
            series_left: totals.series,
            bytes_left: totals.bytes,
            done: false,
        };
        self.commit_progress(left, true).await;
        self.wait_for_handoff().await;
        (self.stop_writers)().await;
        let store = self.store.clone();
        let sealed = tokio::task::spawn_blocking(move || store.seal_head())
            .await
            .map_err(|e| DrainError::Store(e.to_string()))?
            .map_err(|e| DrainError::Store(e.0))?;
        // The totals again, with the head's chunks sealed now.
        let totals = self.totals(after).await?;
        left.series_left = totals.series;
        left.bytes_left = totals.bytes;
        tracing::info!(
            sealed,
            series = totals.series,
            bytes = totals.bytes,
            "drain: head sealed"
        );
        let mut report = DrainReport::default();
        // A series has a piece in every block it spans: count each once (by label
        // hash), so that "series left" counts down to zero with the last one.
        let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
        let mut cursor = after;
        let mut last_progress = Instant::now();
        let mut throttle = Throttle::new(self.opts.rate);
        loop {
            let store = self.store.clone();
            let max = self.opts.batch_bytes;
            let batch =
                tokio::task::spawn_blocking(move || store.export_batch(cursor.as_ref(), max))
                    .await
                    .map_err(|e| DrainError::Store(e.to_string()))?
                    .map_err(|e| DrainError::Store(e.0))?;
            if !batch.series.is_empty() {
                let answer = self.deliver(batch.series.clone()).await?;
                report.stored += answer.stored;
                report.duplicate += answer.duplicate;
                seen.extend(batch.series.iter().map(|s| s.labels.stable_hash()));
                report.series = seen.len() as u64;
                report.chunks += batch.chunks;
                report.bytes += batch.bytes;
            }
            cursor = batch.cursor;
            if let Err(e) = self.cursor.save(cursor) {
                // Not fatal: a crash would only send this batch again.
                tracing::warn!(error = %e, "drain: cannot save the cursor");
            }
            left.bytes_left = left.bytes_left.saturating_sub(batch.bytes);
            left.series_left = totals.series.saturating_sub(report.series);
            if batch.done {
                break;
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                self.commit_progress(left, false).await;
                last_progress = Instant::now();
            }
            throttle.pace(batch.bytes).await;
        }
        report.elapsed = started.elapsed();
        let done = DrainProgress {
            series_left: 0,
            bytes_left: 0,
            done: true,
        };
        self.commit_progress(done, true).await;
        tracing::info!(
            series = report.series,
            chunks = report.chunks,
            bytes = report.bytes,
            stored = report.stored,
            duplicate = report.duplicate,
            elapsed = ?report.elapsed,
            "drain: done; every sample is on its new owner"
        );
        Ok(report)
    }

    async fn totals(
        &self,
        after: Option<ExportCursor>,
    ) -> Result<crate::storage::chunks::ExportTotals, DrainError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.export_totals(after.as_ref()))
            .await
            .map_err(|e| DrainError::Store(e.to_string()))?
            .map_err(|e| DrainError::Store(e.0))
    }

    /// Commits the progress; `must`: retries until it is committed (the announcement
    /// and the end), else one try (progress is informational).
    async fn commit_progress(&self, progress: DrainProgress, must: bool) {
        let mut wait = Duration::from_millis(200);
        loop {
            match tokio::time::timeout(
                Duration::from_secs(5),
                self.cluster.report_leaving(progress),
            )
            .await
            {
                Ok(Ok(())) => return,
                Ok(Err(e)) if must => {
                    tracing::info!(error = %e, "drain: cannot commit the leave yet; retrying")
                }
                Err(_) if must => tracing::info!("drain: committing the leave timed out; retrying"),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "drain: progress not committed");
                    return;
                }
                Err(_) => return,
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits until the committed view shows this node leaving and its scrapes have
    /// handed off (bounded by [`DrainOptions::handoff_wait`]).
    async fn wait_for_handoff(&self) {
        let me = self.cluster.node_id();
        let deadline = Instant::now() + self.opts.handoff_wait;
        let mut views = self.cluster.membership_view();
        loop {
            let leaving = views.borrow_and_update().leaving.contains(&me);
            let scraping = self.targets.snapshot().active.len();
            if leaving && scraping == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    scraping,
                    "drain: scrapes did not hand off in time; sealing regardless"
                );
                return;
            }
            tokio::select! {
                _ = views.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Sends one batch's series to their owners; returns once every owner has
    /// acknowledged its share (retrying, and re-placing when the owners change).
    async fn deliver(&self, series: Vec<ImportSeries>) -> Result<ImportAnswer, DrainError> {
        let me = self.cluster.node_id();
        let mut pending = series;
        let mut total = ImportAnswer::default();
        let mut wait = Duration::from_millis(200);
        loop {
            let view = self.cluster.membership_view().borrow().clone();
            let owners = view.owners();
            let keys: Arc<InstanceKeys> = self
                .targets
                .snapshot()
                .assignment
                .map(|a| a.instance_keys)
                .unwrap_or_default();
            let assigner = Assigner::new(owners.keys().copied().filter(|&id| id != me));
            let mut shares: BTreeMap<NodeId, Vec<ImportSeries>> = BTreeMap::new();
            let mut homeless = Vec::new();
            for s in pending {
                match owner_of(&s.labels, &keys, &assigner) {
                    Some(o) => shares.entry(o).or_default().push(s),
                    None => homeless.push(s),
                }
            }
            let mut failed = homeless;
            if !failed.is_empty() {
                tracing::warn!("drain: no member to move samples to; waiting for one");
            }
            for (owner, share) in shares {
                let addr = owners.get(&owner).cloned().unwrap_or_default();
                let req = ImportRequest {
                    from: me,
                    series: share.iter().map(receive::to_wire).collect(),
                    mode: WireImportMode::Replica,
                };
                match self
                    .cluster
                    .peer()
                    .call::<ImportRequest, ImportAnswer>(
                        &addr,
                        TSDB_IMPORT,
                        &req,
                        self.opts.request_timeout,
                    )
                    .await
                {
                    Ok(a) => {
                        total.stored += a.stored;
                        total.duplicate += a.duplicate + a.conflicting;
                        total.dropped += a.dropped;
                    }
                    Err(e) => {
                        tracing::warn!(owner, %addr, error = %e, "drain: a receiver did not take its share; retrying");
                        failed.extend(share);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(total);
            }
            pending = failed;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Keeps the drain under a byte rate.
struct Throttle {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Records `bytes` sent and sleeps until the average rate is within the limit.
    async fn pace(&mut self, bytes: u64) {
        self.sent += bytes;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}
