//! Export: the TSDB's whole content as raw chunks, for a node that hands its history to
//! others before it leaves (the drain; the receivers [`Tsdb::import`] it).
//!
//! Order: the `chunks` tree's key order — block, then series id, then chunk min time —
//! with the chunks that only memory holds (those a failed sled write left pending, and
//! the open head chunks) merged in at the key they will have in sled. One ordered scan,
//! resumable from any [`ExportCursor`]: [`Tsdb::export_batch`] returns the chunks after
//! a cursor, grouped per series within the batch, and the cursor to continue from. A
//! series thus comes back once per block (its labels with it), and a series with many
//! chunks in a block may span batches.
//!
//! For a complete and stable export, stop writing (scrapes, rules) and call
//! [`Tsdb::seal_head`] first: an open head chunk is exported as it is at that moment,
//! and samples appended to it afterwards are not. Chunks are checked (checksum and
//! decoding) before they are exported; a corrupt one is skipped and counted, as reads
//! do.

use std::ops::Bound;
use std::sync::atomic::Ordering::Relaxed;

use super::codec::{U64Map, i64_from_key};
use super::head::block_of;
use super::import::check_chunk;
use super::index::sled_err;
use super::{Inner, Tsdb, retention};
use crate::storage::StorageError;
pub use crate::storage::chunks::{ExportBatch, ExportCursor, ExportTotals, ImportSeries, RawChunk};

/// The `chunks` tree key of a cursor's chunk.
fn cursor_key(c: &ExportCursor) -> [u8; 24] {
    retention::chunk_key(c.block, c.series, c.min_t)
}

/// The cursor of a `chunks` tree key.
fn cursor_from_key(k: &[u8]) -> Option<ExportCursor> {
    Some(ExportCursor {
        block: i64_from_key(k.get(..8)?.try_into().ok()?),
        series: u64::from_be_bytes(k.get(8..16)?.try_into().ok()?),
        min_t: retention::key_min_t(k)?,
    })
}

/// Where a chunk that only memory holds lives.
#[derive(Clone, Copy)]
enum InMemory {
    Pending,
    Head,
}

impl Inner {
    /// The chunks only memory holds, after `after`, sorted by key.
    fn memory_chunks(&self, after: Option<&ExportCursor>) -> Vec<(ExportCursor, InMemory)> {
        let r = self.block_range;
        let cursor = |id: u64, min_t: i64| ExportCursor {
            block: block_of(min_t, r),
            series: id,
            min_t,
        };
        let mut out: Vec<(ExportCursor, InMemory)> = Vec::new();
        if self.has_pending.load(Relaxed) {
            for (&id, cs) in self.pending_chunks.lock().iter() {
                out.extend(cs.iter().map(|c| (cursor(id, c.min_t), InMemory::Pending)));
            }
        }
        {
            let head = self.head.read();
            for (id, s) in head.series.iter().enumerate() {
                if let Some(ms) = s
                    && ms.open_samples() > 0
                {
                    out.push((cursor(id as u64, ms.chunk_min_t), InMemory::Head));
                }
            }
        }
        out.retain(|(c, _)| after.is_none_or(|a| c > a));
        out.sort_by_key(|(c, _)| *c);
        out.dedup_by_key(|(c, _)| *c);
        out
    }

    /// A chunk of memory, if it is still there: `(max time, bytes)`. One that moved to
    /// sled meanwhile (a seal, a retried write) is read there.
    fn memory_chunk(
        &self,
        c: &ExportCursor,
        at: InMemory,
    ) -> Result<Option<(i64, Vec<u8>)>, StorageError> {
        match at {
            InMemory::Head => {
                let head = self.head.read();
                if let Some(ms) = head.get(c.series)
                    && ms.open_samples() > 0
                    && ms.chunk_min_t == c.min_t
                {
                    return Ok(Some((ms.wal.t, ms.chunk.clone())));
                }
            }
            InMemory::Pending => {
                if let Some(x) = self.pending_chunks.lock().get(&c.series).and_then(|cs| {
                    cs.iter()
                        .find(|x| x.min_t == c.min_t)
                        .map(|x| (x.max_t, x.bytes.clone()))
                }) {
                    return Ok(Some(x));
                }
            }
        }
        if matches!(at, InMemory::Head)
            && let Some(x) = self.memory_chunk(c, InMemory::Pending)?
        {
            return Ok(Some(x));
        }
        let v = self
            .chunks
            .get(cursor_key(c))
            .map_err(|e| sled_err("read chunk", e))?;
        Ok(v.and_then(|v| {
            retention::parse_chunk_value(&v)
                .ok()
                .map(|(m, b)| (m, b.to_vec()))
        }))
    }

    /// Visits every chunk after `after` in export order: `(cursor, max time, bytes)`,
    /// until `f` returns false.
    fn export_scan(
        &self,
        after: Option<&ExportCursor>,
        mut f: impl FnMut(ExportCursor, i64, &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mem = self.memory_chunks(after);
        let mut mem = mem.into_iter().peekable();
        let mut sled_iter = match after {
            Some(a) => self
                .chunks
                .range((Bound::Excluded(cursor_key(a).to_vec()), Bound::Unbounded)),
            None => self.chunks.iter(),
        }
        .peekable();
        loop {
            let next_sled = match sled_iter.peek() {
                Some(Ok((k, _))) => cursor_from_key(k),
                Some(Err(_)) => {
                    if let Some(Err(e)) = sled_iter.next() {
                        return Err(sled_err("scan chunks", e));
                    }
                    continue;
                }
                None => None,
            };
            let next_mem = mem.peek().map(|(c, _)| *c);
            let from_sled = match (next_sled, next_mem) {
                (None, None) => return Ok(()),
                (Some(s), Some(m)) => s <= m,
                (s, _) => s.is_some(),
            };
            if from_sled {
                let Some(Ok((k, v))) = sled_iter.next() else {
                    continue;
                };
                let Some(c) = cursor_from_key(&k) else {
                    continue;
                };
                // Held in memory and in sled at once (its write just succeeded): once.
                if mem.peek().is_some_and(|(m, _)| *m == c) {
                    mem.next();
                }
                match retention::parse_chunk_value(&v) {
                    Ok((max_t, bytes)) => {
                        if !f(c, max_t, bytes) {
                            return Ok(());
                        }
                    }
                    Err(e) => self.corrupt_chunk(c.series, c.min_t, &e.0),
                }
            } else if let Some((c, at)) = mem.next()
                && let Some((max_t, bytes)) = self.memory_chunk(&c, at)?
                && !f(c, max_t, &bytes)
            {
                return Ok(());
            }
        }
    }
}

impl Tsdb {
    /// Seals every open head chunk into sled now (and flushes): what a node does once
    /// its scrapes and rules have stopped, before it exports. Returns the number of
    /// chunks sealed.
    pub fn seal_head(&self) -> Result<u64, StorageError> {
        let inner = &self.inner;
        let n = {
            let mut head = inner.head.write();
            let sealed: Vec<_> = head
                .series
                .iter_mut()
                .enumerate()
                .filter_map(|(id, s)| {
                    let ms = s.as_mut()?;
                    (ms.open_samples() > 0).then(|| ms.seal(id as u64))
                })
                .collect();
            let n = sealed.len() as u64;
            // A failed write keeps them in memory (and their WAL), as a seal does.
            if let Err(e) = inner.write_sealed(sealed) {
                inner.set_unwritable(&e);
                return Err(e);
            }
            n
        };
        inner.flush_wal()?;
        Ok(n)
    }

    /// The chunks after `after` (from the start when `None`), in export order (see
    /// [`crate::tsdb::export`]), up to about `max_bytes` of chunk bytes (at least one
    /// chunk), grouped per series.
    pub fn export_batch(
        &self,
        after: Option<&ExportCursor>,
        max_bytes: usize,
    ) -> Result<ExportBatch, StorageError> {
        let inner = &self.inner;
        let mut batch = ExportBatch {
            series: Vec::new(),
            cursor: after.copied(),
            done: true,
            chunks: 0,
            bytes: 0,
        };
        let mut pos: U64Map<usize> = U64Map::default();
        let mut failed: Option<StorageError> = None;
        inner.export_scan(after, |c, max_t, bytes| {
            if batch.chunks > 0 && batch.bytes + bytes.len() as u64 > max_bytes as u64 {
                batch.done = false;
                return false;
            }
            batch.cursor = Some(c);
            if let Err(e) = check_chunk(c.min_t, max_t, bytes) {
                inner.corrupt_chunk(c.series, c.min_t, &e);
                return true;
            }
            let i = match pos.get(&c.series) {
                Some(&i) => i,
                None => match inner.index.labels(c.series) {
                    Ok(Some(labels)) => {
                        batch.series.push(ImportSeries {
                            labels,
                            chunks: Vec::new(),
                        });
                        pos.insert(c.series, batch.series.len() - 1);
                        batch.series.len() - 1
                    }
                    // Lost with a corrupt series batch: nothing to name it by.
                    Ok(None) => return true,
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                },
            };
            batch.series[i].chunks.push(RawChunk {
                min_t: c.min_t,
                max_t,
                bytes: bytes.to_vec(),
            });
            batch.chunks += 1;
            batch.bytes += bytes.len() as u64;
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(batch)
    }

    /// What is left to export after `after`: one pass over the chunks' keys and values
    /// (sled reads them together), so call it once, not per batch — the batches' own
    /// `chunks` and `bytes` count down from it.
    pub fn export_totals(
        &self,
        after: Option<&ExportCursor>,
    ) -> Result<ExportTotals, StorageError> {
        let mut t = ExportTotals::default();
        let mut seen: U64Map<()> = U64Map::default();
        self.inner.export_scan(after, |c, _, bytes| {
            t.chunks += 1;
            t.bytes += bytes.len() as u64;
            seen.insert(c.series, ());
            true
        })?;
        t.series = seen.len() as u64;
        Ok(t)
    }
}
