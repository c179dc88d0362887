//! Historical import: chunks of a series that arrive out of order *by chunk* — older
//! than data the TSDB already holds, or interleaved with it — as a node that leaves the
//! cluster hands its history over (the drain, [`ImportMode::Replica`]) or a user
//! backfills a file ([`ImportMode::Exact`], [`Tsdb::import_samples`]).
//!
//! [`Tsdb::import`] takes raw XOR chunks ([`RawChunk`]) per label set:
//!
//! - every chunk is checked first (decoded: samples strictly increasing, first and last
//!   at its claimed min and max time); a malformed chunk or label set fails the whole
//!   call before anything is stored;
//! - samples older than retention or too far ahead of the clock are dropped and counted
//!   (the append path's limits; the head's out-of-bounds window does not apply: this is
//!   the out-of-order path);
//! - a chunk that overlaps nothing the series holds (sealed chunks, chunks pending a
//!   write, the open head chunk, chunks stored earlier in the same call) is stored as it
//!   came (fast path: one validating decode, no re-encode) unless it crosses a block
//!   boundary, which splits it (chunks never cross blocks);
//! - a chunk that overlaps is merged sample by sample: a sample at a timestamp the
//!   series holds with the same value bits is a duplicate, with other bits a conflict —
//!   the existing sample is kept either way; in [`ImportMode::Replica`] a sample in the
//!   scrape slot of an existing sample ([`crate::model::scrape_slot`], the rule the
//!   cluster's read merge uses) is a replica and dropped too. The rest is encoded into
//!   new chunks, which may overlap older ones (reads merge them).
//!
//! Durable before Ok: the new series' index records, the chunks and the per-series
//! records reach sled and are flushed (with the WAL) once per call. Idempotent: a chunk
//! imported again finds all its samples present and stores nothing.
//!
//! Head invariants kept:
//! - an imported sample is never newer than the start of the series' open head chunk:
//!   when the kept samples reach it, the open chunk is sealed first. So the WAL holds
//!   no sample of a series older than its newest sealed one, and replay after a crash
//!   rejects nothing it needs;
//! - the series' last sample (the ordering floor for appends) becomes the newest
//!   imported sample when that is newer; when the series' WAL encoder has state in the
//!   current segment, that sample is also written to the WAL, so that the encoder and
//!   the replay's decoder move together (replay ignores it as a duplicate);
//!   the `sealed` record (min time, last sealed sample) is updated under the head lock,
//!   so a later seal never overwrites it with older values.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;

#[cfg(doc)]
use super::chunkenc::SAMPLES_PER_CHUNK;
use super::chunkenc::{self, XorIterator};
use super::codec::{FORMAT_V1, bytes8};
use super::head::{Head, block_of};
use super::index::sled_err;
use super::wal::RecordBuilder;
use super::{Inner, Tsdb, future_limit, retention, retention_limit};
use crate::model::{Labels, Sample, scrape_slot};
pub use crate::storage::chunks::{ImportMode, ImportSeries, ImportStats, RawChunk};
use crate::storage::{AppendError, StorageError, Writable};

/// Checks a chunk against its claimed times; returns its sample count and the value
/// bits of its last sample.
pub(super) fn check_chunk(min_t: i64, max_t: i64, bytes: &[u8]) -> Result<(u32, u64), String> {
    let mut n = 0u32;
    let mut prev: Option<i64> = None;
    let mut last_v = 0;
    for s in XorIterator::new(bytes) {
        let s = s.map_err(|e| e.to_string())?;
        if prev.is_none() && s.t != min_t {
            return Err(format!(
                "first sample at {} but min time {min_t} claimed",
                s.t
            ));
        }
        if prev.is_some_and(|p| s.t <= p) {
            return Err(format!("sample at {} after {prev:?}: not sorted", s.t));
        }
        prev = Some(s.t);
        last_v = s.v.to_bits();
        n += 1;
    }
    match prev {
        None => Err("empty chunk".into()),
        Some(t) if t != max_t => Err(format!("last sample at {t} but max time {max_t} claimed")),
        Some(_) => Ok((n, last_v)),
    }
}

/// Encodes time-sorted samples into chunks of at most [`SAMPLES_PER_CHUNK`] samples,
/// cut at block boundaries (see [`chunkenc::encode`]).
pub(super) fn encode_chunks(samples: &[Sample], block_range: i64) -> Vec<RawChunk> {
    chunkenc::encode(samples, block_range)
}

fn decode_all(bytes: &[u8], out: &mut Vec<Sample>) -> Result<(), StorageError> {
    super::chunkenc::decode_range(bytes, i64::MIN, i64::MAX, out)
        .map_err(|e| StorageError(format!("tsdb: import: {e}")))
}

/// A part of an imported chunk, within one block and the time limits.
enum Piece {
    /// A chunk as received.
    AsIs {
        chunk: RawChunk,
        n: u32,
        last_v: u64,
    },
    /// Samples of a chunk that crossed a block boundary or the limits (sorted).
    Samples(Vec<Sample>),
}

impl Piece {
    fn min_t(&self) -> i64 {
        match self {
            Piece::AsIs { chunk, .. } => chunk.min_t,
            Piece::Samples(s) => s.first().map_or(i64::MAX, |s| s.t),
        }
    }

    fn max_t(&self) -> i64 {
        match self {
            Piece::AsIs { chunk, .. } => chunk.max_t,
            Piece::Samples(s) => s.last().map_or(i64::MIN, |s| s.t),
        }
    }

    /// How far around it a sample of the series can be the same scrape: nothing for
    /// [`ImportMode::Exact`], twice its mean sample gap for [`ImportMode::Replica`].
    fn reach(&self, mode: ImportMode) -> (i64, i64) {
        let (lo, hi) = (self.min_t(), self.max_t());
        if mode == ImportMode::Exact {
            return (lo, hi);
        }
        let n = match self {
            Piece::AsIs { n, .. } => i64::from(*n),
            Piece::Samples(s) => s.len() as i64,
        };
        let gap = if n > 1 {
            (hi.saturating_sub(lo) / (n - 1)).max(1)
        } else {
            scrape_slot::DEFAULT_SPACING_MS
        };
        let w = gap.saturating_mul(2);
        (lo.saturating_sub(w), hi.saturating_add(w))
    }

    fn samples(&self) -> Result<Vec<Sample>, StorageError> {
        match self {
            Piece::AsIs { chunk, n, .. } => {
                let mut out = Vec::with_capacity(*n as usize);
                decode_all(&chunk.bytes, &mut out)?;
                Ok(out)
            }
            Piece::Samples(s) => Ok(s.clone()),
        }
    }
}

/// Cuts a checked chunk into pieces within blocks and limits, counting what the limits
/// drop.
fn pieces_of(
    chunk: RawChunk,
    n: u32,
    last_v: u64,
    (oldest, newest): (i64, i64),
    block_range: i64,
    st: &mut ImportStats,
    out: &mut Vec<Piece>,
) -> Result<(), StorageError> {
    if chunk.min_t >= oldest
        && chunk.max_t <= newest
        && block_of(chunk.min_t, block_range) == block_of(chunk.max_t, block_range)
    {
        out.push(Piece::AsIs { chunk, n, last_v });
        return Ok(());
    }
    let mut all = Vec::with_capacity(n as usize);
    decode_all(&chunk.bytes, &mut all)?;
    let mut cur: Vec<Sample> = Vec::new();
    for s in all {
        if s.t < oldest {
            st.out_of_bounds += 1;
            continue;
        }
        if s.t > newest {
            st.too_far_in_future += 1;
            continue;
        }
        if cur
            .first()
            .is_some_and(|f| block_of(f.t, block_range) != block_of(s.t, block_range))
        {
            out.push(Piece::Samples(std::mem::take(&mut cur)));
        }
        cur.push(s);
    }
    if !cur.is_empty() {
        out.push(Piece::Samples(cur));
    }
    Ok(())
}

/// A chunk the series holds, or one this import stores.
struct Held {
    min_t: i64,
    max_t: i64,
    bytes: Vec<u8>,
    /// Stored by this import (to be written).
    new: bool,
}

/// What an import needs of the head for one series, copied under its lock.
struct HeadView {
    /// The series' last sample time (`i64::MIN` when none).
    last_t: i64,
    /// The open chunk (min time, max time, bytes) when an imported piece reaches it.
    open: Option<(i64, i64, Vec<u8>)>,
}

fn head_view(head: &Head, id: u64, reach_hi: i64) -> HeadView {
    let Some(ms) = head.get(id) else {
        return HeadView {
            last_t: i64::MIN,
            open: None,
        };
    };
    let open = (ms.open_samples() > 0 && reach_hi >= ms.chunk_min_t)
        .then(|| (ms.chunk_min_t, ms.wal.t, ms.chunk.clone()));
    HeadView {
        last_t: ms.wal.t,
        open,
    }
}

/// The outcome of merging one series' pieces with what it holds.
struct Plan {
    chunks: Vec<Held>,
    /// Oldest and newest stored sample (value bits of the newest).
    kept_min: i64,
    kept_max: Option<(i64, u64)>,
    stats: ImportStats,
}

/// Keeps the samples of `piece` (sorted) that `held` (sorted, distinct times) lacks.
fn merge_samples(
    held: &[Sample],
    piece: &[Sample],
    mode: ImportMode,
    st: &mut ImportStats,
) -> Vec<Sample> {
    let same_scrape = |e: &Sample, t: i64| {
        let d = scrape_slot::spacing_near(&[held, piece], e.t);
        let (start, end) = scrape_slot::slot(&[held, piece], e.t, d);
        start <= t && t < end
    };
    let mut kept = Vec::with_capacity(piece.len());
    for s in piece {
        match held.binary_search_by_key(&s.t, |e| e.t) {
            Ok(i) if held[i].v.to_bits() == s.v.to_bits() => st.duplicate += 1,
            Ok(_) => st.conflicting += 1,
            Err(i) => {
                let replica = mode == ImportMode::Replica
                    && (i
                        .checked_sub(1)
                        .and_then(|p| held.get(p))
                        .is_some_and(|e| same_scrape(e, s.t))
                        || held.get(i).is_some_and(|e| same_scrape(e, s.t)));
                if replica {
                    st.replica += 1;
                } else {
                    kept.push(*s);
                }
            }
        }
    }
    kept
}

impl Inner {
    /// The chunks of series `id` that may meet `pieces`: sled's (in the blocks their
    /// reach touches), those pending a write, and the head's open chunk.
    fn held_chunks(
        &self,
        id: u64,
        pieces: &[Piece],
        mode: ImportMode,
        view: &HeadView,
    ) -> Result<Vec<Held>, StorageError> {
        let r = self.block_range;
        let mut blocks = BTreeSet::new();
        for p in pieces {
            let (lo, hi) = p.reach(mode);
            let mut b = block_of(lo, r);
            while b <= hi {
                blocks.insert(b);
                b = match b.checked_add(r) {
                    Some(n) => n,
                    None => break,
                };
            }
        }
        let mut held = Vec::new();
        for b in blocks {
            for item in self.chunks.scan_prefix(retention::series_prefix(b, id)) {
                let (k, v) = item.map_err(|e| sled_err("scan chunks", e))?;
                let min_t = retention::key_min_t(&k).unwrap_or(i64::MIN);
                // A corrupt chunk holds nothing readable: an import may fill its place.
                let Ok((max_t, bytes)) = retention::parse_chunk_value(&v) else {
                    self.corrupt_chunk(id, min_t, "unreadable (import)");
                    continue;
                };
                held.push(Held {
                    min_t,
                    max_t,
                    bytes: bytes.to_vec(),
                    new: false,
                });
            }
        }
        if self.has_pending.load(Relaxed)
            && let Some(cs) = self.pending_chunks.lock().get(&id)
        {
            held.extend(cs.iter().map(|c| Held {
                min_t: c.min_t,
                max_t: c.max_t,
                bytes: c.bytes.clone(),
                new: false,
            }));
        }
        if let Some((min_t, max_t, bytes)) = &view.open {
            held.push(Held {
                min_t: *min_t,
                max_t: *max_t,
                bytes: bytes.clone(),
                new: false,
            });
        }
        Ok(held)
    }

    /// Merges one series' pieces with what it holds (see the module docs).
    fn plan(
        &self,
        id: u64,
        pieces: &[Piece],
        mode: ImportMode,
        view: &HeadView,
    ) -> Result<Plan, StorageError> {
        let mut held = self.held_chunks(id, pieces, mode, view)?;
        let mut st = ImportStats::default();
        let mut kept_min = i64::MAX;
        let mut kept_max: Option<(i64, u64)> = None;
        let mut scratch = Vec::new();
        for p in pieces {
            let (lo, hi) = p.reach(mode);
            let over: Vec<usize> = (0..held.len())
                .filter(|&i| held[i].min_t <= hi && held[i].max_t >= lo)
                .collect();
            let stored: Vec<(RawChunk, u64, bool)> = if over.is_empty() {
                match p {
                    Piece::AsIs { chunk, n, last_v } => {
                        st.stored += u64::from(*n);
                        vec![(chunk.clone(), *last_v, true)]
                    }
                    Piece::Samples(s) => {
                        st.stored += s.len() as u64;
                        encoded(s, self.block_range)
                    }
                }
            } else {
                scratch.clear();
                for &i in &over {
                    let before = scratch.len();
                    let h = &held[i];
                    if let Err(e) =
                        chunkenc::decode_range(&h.bytes, i64::MIN, i64::MAX, &mut scratch)
                    {
                        // Unreadable: it holds nothing to compare with (reads skip it too).
                        scratch.truncate(before);
                        self.corrupt_chunk(id, h.min_t, &e.to_string());
                    }
                }
                // Stable: on equal times the first held chunk's sample is the one kept.
                scratch.sort_by_key(|s| s.t);
                scratch.dedup_by_key(|s| s.t);
                let samples = p.samples()?;
                let kept = merge_samples(&scratch, &samples, mode, &mut st);
                st.stored += kept.len() as u64;
                match p {
                    Piece::AsIs { chunk, last_v, .. } if kept.len() == samples.len() => {
                        vec![(chunk.clone(), *last_v, true)]
                    }
                    _ => encoded(&kept, self.block_range),
                }
            };
            for (c, last_v, as_is) in stored {
                if as_is {
                    st.chunks_as_is += 1;
                } else {
                    st.chunks_reencoded += 1;
                }
                kept_min = kept_min.min(c.min_t);
                if kept_max.is_none_or(|(t, _)| c.max_t > t) {
                    kept_max = Some((c.max_t, last_v));
                }
                held.push(Held {
                    min_t: c.min_t,
                    max_t: c.max_t,
                    bytes: c.bytes,
                    new: true,
                });
            }
        }
        Ok(Plan {
            chunks: held.into_iter().filter(|h| h.new).collect(),
            kept_min,
            kept_max,
            stats: st,
        })
    }

    /// Applies a plan under the head write lock. `seen_last_t`: the series' last sample
    /// when the plan was made without the lock; `Ok(false)` when appends since then may
    /// meet the plan's samples (plan again under the lock).
    fn apply(
        &self,
        head: &mut Head,
        id: u64,
        plan: &Plan,
        seen_last_t: Option<i64>,
    ) -> Result<bool, StorageError> {
        let Some((max_t, max_v)) = plan.kept_max else {
            return Ok(true);
        };
        let Some(ms) = head.get_mut(id) else {
            return Err(StorageError(format!("tsdb: import: series {id} vanished")));
        };
        if let Some(seen) = seen_last_t
            && ms.wal.t != seen
            && max_t > seen
        {
            return Ok(false);
        }
        // Nothing imported is ever newer than the start of the open chunk: the WAL keeps
        // no sample older than the series' newest sealed one.
        if ms.open_samples() > 0 && max_t >= ms.chunk_min_t {
            let c = ms.seal(id);
            if let Err(e) = self.write_sealed(vec![c]) {
                self.set_unwritable(&e);
                return Err(e);
            }
        }
        if max_t > ms.wal.t {
            if self.pending_chunks.lock().contains_key(&id) {
                return Err(StorageError(format!(
                    "tsdb: import: series {id} has chunks waiting for a write; try again once the TSDB writes"
                )));
            }
            if ms.wal_seg == self.seg.load(Relaxed) {
                // The series' WAL encoder continues from its last sample, and so does
                // the decoder at replay: move both through a record of the newest
                // imported sample (replay finds it again in the per-series record and
                // ignores it as a duplicate).
                let mut rb = RecordBuilder::new(None, 1);
                rb.push(id, &mut ms.wal, max_t, f64::from_bits(max_v));
                rb.finish_into(&mut self.wal.lock().buf);
                self.counters.wal_records.fetch_add(1, Relaxed);
            } else {
                // No WAL state in this segment: the next append starts it afresh.
                ms.wal.t = max_t;
                ms.wal.v = max_v;
            }
        }
        ms.min_t = ms.min_t.min(plan.kept_min);
        let series_min_t = ms.min_t;
        head.max_t = head.max_t.max(max_t);

        let mut batch = sled::Batch::default();
        let mut bytes = 0u64;
        for c in &plan.chunks {
            let key = retention::chunk_key(block_of(c.min_t, self.block_range), id, c.min_t);
            batch.insert(&key[..], retention::chunk_value(c.max_t, &c.bytes));
            bytes += c.bytes.len() as u64 + 33;
        }
        // The per-series record: min time and the newest sealed sample (never older
        // than what it said: a seal of the head wrote it just now, or earlier).
        let key = id.to_be_bytes();
        let old = self
            .sealed
            .get(key)
            .map_err(|e| sled_err("read sealed", e))?
            .and_then(|v| {
                let t = bytes8(&v, 9).map(i64::from_be_bytes)?;
                let lv = bytes8(&v, 17).map(u64::from_be_bytes)?;
                Some((t, lv))
            });
        let (last_t, last_v) = match old {
            Some((t, v)) if t >= max_t => (t, v),
            _ => (max_t, max_v),
        };
        let mut m = Vec::with_capacity(25);
        m.push(FORMAT_V1);
        m.extend_from_slice(&series_min_t.to_be_bytes());
        m.extend_from_slice(&last_t.to_be_bytes());
        m.extend_from_slice(&last_v.to_be_bytes());
        self.chunks
            .apply_batch(batch)
            .map_err(|e| sled_err("write imported chunks", e))?;
        self.sealed
            .insert(key, m)
            .map_err(|e| sled_err("write sealed", e))?;
        self.counters.chunk_bytes.fetch_add(bytes, Relaxed);
        Ok(true)
    }

    /// Imports one series' pieces: plans without the head lock, applies under it (and
    /// plans again under it when appends got in between).
    fn import_series(
        &self,
        labels: &Labels,
        pieces: &[Piece],
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        let (id, created) = self
            .get_or_create(labels)
            .map_err(|e| StorageError(format!("tsdb: import: {e}")))?;
        let reach_hi = pieces
            .iter()
            .map(|p| p.reach(mode).1)
            .max()
            .unwrap_or(i64::MIN);
        let view = head_view(&self.head.read(), id, reach_hi);
        let seen = view.last_t;
        let plan = self.plan(id, pieces, mode, &view)?;
        let mut head = self.head.write();
        let plan = if self.apply(&mut head, id, &plan, Some(seen))? {
            plan
        } else {
            let view = head_view(&head, id, reach_hi);
            let plan = self.plan(id, pieces, mode, &view)?;
            self.apply(&mut head, id, &plan, None)?;
            plan
        };
        drop(head);
        let mut st = plan.stats;
        st.series_created = u64::from(created);
        Ok(st)
    }

    /// Adds an import's figures to the TSDB's counters.
    fn count_import(&self, st: &ImportStats) {
        let c = &self.counters;
        c.import_stored.fetch_add(st.stored, Relaxed);
        c.import_duplicate.fetch_add(st.duplicate, Relaxed);
        c.import_conflicting.fetch_add(st.conflicting, Relaxed);
        c.import_replica.fetch_add(st.replica, Relaxed);
        c.import_out_of_bounds.fetch_add(st.out_of_bounds, Relaxed);
        c.import_too_far_in_future
            .fetch_add(st.too_far_in_future, Relaxed);
        c.import_chunks
            .fetch_add(st.chunks_as_is + st.chunks_reencoded, Relaxed);
    }
}

/// `samples` (sorted, one block) as new chunks, each with its last value's bits.
fn encoded(samples: &[Sample], block_range: i64) -> Vec<(RawChunk, u64, bool)> {
    encode_chunks(samples, block_range)
        .into_iter()
        .map(|c| {
            let last_v = samples
                .iter()
                .rev()
                .find(|s| s.t == c.max_t)
                .map_or(0, |s| s.v.to_bits());
            (c, last_v, false)
        })
        .collect()
}

impl Tsdb {
    /// Imports chunks of series that may be older than, or interleaved with, what the
    /// TSDB holds (see [`crate::tsdb::import`]): creates missing series, stores what is
    /// new, drops what it holds already, and returns only once all of it is durable.
    /// Importing the same input again stores nothing.
    pub fn import(
        &self,
        series: Vec<ImportSeries>,
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        let st = self.import_uncounted(series, mode)?;
        self.inner.count_import(&st);
        Ok(st)
    }

    /// Imports samples of one series (a backfill from a file): sorted, encoded into
    /// chunks per block, then [`Tsdb::import`]ed. A timestamp given twice keeps its
    /// first sample (the others count as duplicates or conflicts).
    pub fn import_samples(
        &self,
        labels: &Labels,
        samples: &[Sample],
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        let mut s = samples.to_vec();
        s.sort_by_key(|x| x.t);
        let (mut duplicate, mut conflicting) = (0, 0);
        s.dedup_by(|later, first| {
            if later.t != first.t {
                return false;
            }
            if later.v.to_bits() == first.v.to_bits() {
                duplicate += 1;
            } else {
                conflicting += 1;
            }
            true
        });
        let chunks = encode_chunks(&s, self.inner.block_range);
        let mut st = self.import_uncounted(
            vec![ImportSeries {
                labels: labels.clone(),
                chunks,
            }],
            mode,
        )?;
        st.duplicate += duplicate;
        st.conflicting += conflicting;
        // Encoded here: none of these chunks came as received.
        st.chunks_reencoded += std::mem::take(&mut st.chunks_as_is);
        self.inner.count_import(&st);
        Ok(st)
    }

    fn import_uncounted(
        &self,
        series: Vec<ImportSeries>,
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        let inner = &self.inner;
        if inner.closed.load(Relaxed) {
            return Err(StorageError("tsdb: import: the TSDB is closed".into()));
        }
        if let Err(why) = inner.writable() {
            return Err(StorageError(format!("tsdb: import: not writable: {why}")));
        }
        // Checked whole before anything is stored: a bad call stores nothing.
        let mut checked = Vec::with_capacity(series.len());
        for s in series {
            check_labels(&s.labels).map_err(|e| StorageError(format!("tsdb: import: {e}")))?;
            let mut chunks = Vec::with_capacity(s.chunks.len());
            for c in s.chunks {
                let (n, last_v) = check_chunk(c.min_t, c.max_t, &c.bytes).map_err(|e| {
                    StorageError(format!(
                        "tsdb: import: series {}: chunk {}..{}: {e}",
                        s.labels, c.min_t, c.max_t
                    ))
                })?;
                chunks.push((c, n, last_v));
            }
            checked.push((s.labels, chunks));
        }
        let _one_at_a_time = inner.import_lock.lock();
        // Chunks a failed write left in memory go first: no per-series record written
        // below may claim a time newer than a chunk that only the WAL holds.
        inner.retry_pending_chunks()?;
        let limits = (retention_limit(&inner.opts), future_limit(&inner.opts));
        let mut total = ImportStats::default();
        for (labels, chunks) in checked {
            let mut st = ImportStats::default();
            let mut pieces = Vec::new();
            for (c, n, last_v) in chunks {
                pieces_of(
                    c,
                    n,
                    last_v,
                    limits,
                    inner.block_range,
                    &mut st,
                    &mut pieces,
                )?;
            }
            pieces.sort_by_key(Piece::min_t);
            if !pieces.is_empty() {
                st.add(&inner.import_series(&labels, &pieces, mode)?);
            }
            total.add(&st);
        }
        // Durable before Ok: new series, chunks, records (and the WAL, so that samples
        // an import found present in the head are on disk too).
        inner.flush_wal()?;
        Ok(total)
    }
}

/// Label sets the TSDB refuses (as the append path does).
pub(super) fn check_labels(labels: &Labels) -> Result<(), AppendError> {
    if labels.is_empty() {
        return Err(AppendError::InvalidLabels("empty label set".into()));
    }
    if let Some(l) = labels
        .iter()
        .find(|l| l.name.is_empty() || l.name.contains('\0'))
    {
        return Err(AppendError::InvalidLabels(format!(
            "invalid label name {:?}",
            l.name
        )));
    }
    Ok(())
}
