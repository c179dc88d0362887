//! Whole chunks in and out of a store: what a leaving node's drain reads
//! ([`ChunkStore::export_batch`]) and what its receivers write ([`ChunkStore::import`]),
//! and the backfill of samples from a file ([`ChunkStore::import_samples`]). Chunks
//! cross as Prometheus XOR chunk bytes, never as decoded samples.

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::model::{Labels, Sample};

/// One XOR chunk as it is stored (Prometheus's format, header included), with the
/// times of its first and last sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChunk {
    pub min_t: i64,
    pub max_t: i64,
    pub bytes: Vec<u8>,
}

/// The chunks of one series, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSeries {
    pub labels: Labels,
    pub chunks: Vec<RawChunk>,
}

/// What an import treats as the same sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Backfill: every distinct timestamp is kept.
    Exact,
    /// Another node's copy of the same targets (the drain): a sample in the scrape slot
    /// of a sample the series holds is a replica of it and dropped.
    Replica,
}

/// What one import did, in samples unless named otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStats {
    pub series_created: u64,
    /// Chunks stored as received.
    pub chunks_as_is: u64,
    /// Chunks encoded anew (split at a block boundary, or what was left of a chunk that
    /// overlapped data or the limits).
    pub chunks_reencoded: u64,
    pub stored: u64,
    /// Same timestamp and value bits as a sample the series holds.
    pub duplicate: u64,
    /// Same timestamp as a sample the series holds, other value bits (that one is kept).
    pub conflicting: u64,
    /// In the scrape slot of a sample the series holds ([`ImportMode::Replica`]).
    pub replica: u64,
    /// Older than retention.
    pub out_of_bounds: u64,
    /// More than `max_future` ahead of the clock.
    pub too_far_in_future: u64,
}

impl ImportStats {
    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &ImportStats) {
        self.series_created += o.series_created;
        self.chunks_as_is += o.chunks_as_is;
        self.chunks_reencoded += o.chunks_reencoded;
        self.stored += o.stored;
        self.duplicate += o.duplicate;
        self.conflicting += o.conflicting;
        self.replica += o.replica;
        self.out_of_bounds += o.out_of_bounds;
        self.too_far_in_future += o.too_far_in_future;
    }
}

/// A position in a store's export order (opaque outside that store; persisted by the
/// drain so that an interrupted one resumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExportCursor {
    /// Start of the chunk's block.
    pub block: i64,
    /// The exporting store's series id (meaningless elsewhere).
    pub series: u64,
    pub min_t: i64,
}

/// Chunks in export order after a cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportBatch {
    /// Per series (each once), its chunks in time order.
    pub series: Vec<ImportSeries>,
    /// Where the next batch starts (pass it back as `after`); the input cursor when the
    /// batch is empty.
    pub cursor: Option<ExportCursor>,
    /// Nothing follows this batch (at the time of the call).
    pub done: bool,
    pub chunks: u64,
    /// Chunk bytes in the batch.
    pub bytes: u64,
}

/// What is left to export after a cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportTotals {
    /// Distinct series with a chunk left.
    pub series: u64,
    pub chunks: u64,
    /// Chunk bytes (what the batches' `bytes` add up to).
    pub bytes: u64,
}

/// A store that moves whole chunks (the TSDB).
pub trait ChunkStore: Send + Sync {
    /// Seals every open chunk now (once writes to it have stopped, before exporting).
    fn seal_head(&self) -> Result<u64, StorageError>;
    /// The chunks after `after`, up to about `max_bytes` (at least one chunk).
    fn export_batch(
        &self,
        after: Option<&ExportCursor>,
        max_bytes: usize,
    ) -> Result<ExportBatch, StorageError>;
    /// What is left to export after `after` (one pass: call it once).
    fn export_totals(&self, after: Option<&ExportCursor>) -> Result<ExportTotals, StorageError>;
    /// Stores what is new of `series`; durable before it returns; idempotent.
    fn import(
        &self,
        series: Vec<ImportSeries>,
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError>;
    /// Imports samples of one series (a backfill), encoded into chunks first.
    fn import_samples(
        &self,
        labels: &Labels,
        samples: &[Sample],
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError>;
}
