//! shoal's TSDB: the sled-backed implementation of [`Appendable`] and [`Queryable`].
//!
//! Parts:
//! - [`chunkenc`]: Prometheus-compatible XOR chunks;
//! - [`head`]: one open chunk per series in memory, ordering rules, chunk cutting;
//! - [`index`]: the interned in-memory series index (symbols, label arena, postings),
//!   matcher resolution and label sorting; persisted as batches in the `series` tree;
//! - [`wal`]: the write-ahead log's record format;
//! - [`segments`]: the WAL's segment files;
//! - [`retention`]: the `chunks` tree layout and block retention;
//! - [`codec`]: varints, sortable keys, version bytes, deflate of persisted values;
//! - [`import`]: historical import of chunks older than, or interleaved with, what the
//!   TSDB holds (the drain of a leaving node, backfill);
//! - [`export`]: the whole TSDB as raw chunks in a resumable order (the drain's source).
//!
//! sled trees: `series` (symbols and series, one value per WAL flush), `chunks`
//! (sealed chunks; those of an import may overlap others), `sealed` (per series: min
//! time, last sealed sample); `wal` only in
//! data dirs written before the WAL moved to files (replayed, then truncated away).
//! The WAL is in `<data dir>/wal/`, one file per segment ([`segments`]).
//! New series reach sled (fsynced) with the WAL flush that follows their creation,
//! before the WAL records that refer to them.
//!
//! # Durability
//! A commit encodes its batch into an in-memory WAL buffer and applies it to the head;
//! a background thread appends that buffer to the segment file and fsyncs it (and
//! sled) every [`TsdbOptions::wal_flush_interval`] (1 s by default): a group commit. A
//! `kill -9` may therefore lose up to about one flush interval of acknowledged samples;
//! everything flushed before survives (WAL replay on open). [`Tsdb::close`] flushes
//! everything.
//!
//! # WAL truncation
//! The WAL is cut into segments (a new one every [`TsdbOptions::wal_segment_interval`]
//! and at every open). Each segment decodes on its own. A segment is deleted once no
//! open head chunk has samples from it, i.e. all its samples are in sealed chunks.
//! Head chunks whose block can no longer receive samples (older than the head's min
//! valid time) are sealed by the background maintenance, so idle series do not pin old
//! segments.
//!
//! Ordering follows Prometheus 2.42 without out-of-order support: older than the
//! series' last sample → `OutOfOrder`; same timestamp, different value bits →
//! `DuplicateTimestamp`; same timestamp and bits → accepted as a no-op; older than the
//! head's max time minus half a block range → `OutOfBounds`; more than
//! [`TsdbOptions::max_future`] ahead of the wall clock → `TooFarInFuture` (shoal's
//! addition: Prometheus accepts such a sample, and its head then rejects every other
//! series' samples). Retention follows the wall clock too, never the newest sample.
//!
//! # Historical import and overlapping chunks
//! Appends are in order per series; [`Tsdb::import`] is the out-of-order path, by chunk:
//! it stores what a series lacks, drops what it holds (counted), and is **idempotent**
//! (the same chunks again store nothing) and **durable before it returns** (one sled
//! flush per call, with the WAL). Imported chunks may overlap sealed chunks of their
//! block, so **reads merge overlapping chunks**: the sealed scan notices a chunk that
//! starts before the previous one ends (one comparison per chunk) and only then sorts
//! and keeps one sample per timestamp; disjoint chunks are read as before. Imported
//! samples are never newer than the start of the series' open head chunk (an import
//! that reaches it seals it first), so the WAL never holds a sample older than the
//! series' last sealed one and replay keeps working; an import newer than the series'
//! last sample moves that sample (the ordering floor of appends) with it.

pub mod check;
pub mod chunkenc;
pub mod clock;
pub mod codec;
pub mod export;
pub mod head;
pub mod import;
pub mod index;
pub mod retention;
pub mod segments;
pub mod wal;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

// Locks that do not poison: a panic while one is held (a bug) must not turn every later
// append and query into an error while the node still answers ready.
use parking_lot::{Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::Tree;

pub use self::clock::Clock;
use self::codec::{FORMAT_DEFLATE, FORMAT_V1, U64Map, bytes8};
pub use self::export::{ExportBatch, ExportCursor, ExportTotals};
use self::head::{Appended, Head, MemSeries, SealedChunk, block_of};
pub use self::import::{ImportMode, ImportSeries, ImportStats, RawChunk};
use self::index::{Index, sled_err};
use self::segments::SegmentFiles;
use self::wal::{RecordBuilder, WalCursor};
use crate::model::{Labels, Matcher, Sample};
use crate::storage::{
    AppendError, Appendable, Appender, CommitStats, Presence, Queryable, SampleBudget, SelectHints,
    Series, SeriesRef, SeriesSet, StepGrid, StorageError, Writable,
};

/// How the TSDB is run.
#[derive(Debug, Clone)]
pub struct TsdbOptions {
    /// Blocks whose end is older than now (the wall clock) minus this are dropped.
    pub retention: Duration,
    /// Samples more than this ahead of the clock are rejected (`TooFarInFuture`): one
    /// far-future sample would otherwise move the head's max time and with it the
    /// bound below which every other series' samples are rejected.
    pub max_future: Duration,
    /// The wall clock (the system's in a node).
    pub clock: Clock,
    /// How often the WAL buffer is written and sled fsynced (the loss window on a crash).
    pub wal_flush_interval: Duration,
    /// Width of a block; chunks never cross a block boundary.
    pub block_range: Duration,
    /// How often stale head chunks are sealed, the WAL truncated and retention applied.
    pub maintenance_interval: Duration,
    /// How often a new WAL segment starts (older segments become deletable).
    pub wal_segment_interval: Duration,
    /// sled's page cache in bytes. Queries of head data and label lookups never read
    /// sled, so this only serves sealed-chunk reads and writes.
    pub cache_capacity: u64,
}

impl Default for TsdbOptions {
    fn default() -> Self {
        TsdbOptions {
            retention: Duration::from_secs(15 * 24 * 3600),
            max_future: Duration::from_secs(10 * 60),
            clock: Clock::system(),
            wal_flush_interval: Duration::from_secs(1),
            block_range: Duration::from_secs(2 * 3600),
            maintenance_interval: Duration::from_secs(60),
            wal_segment_interval: Duration::from_secs(10 * 60),
            cache_capacity: 4 << 20,
        }
    }
}

/// Counters and gauges of the TSDB (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TsdbStats {
    pub samples_appended_total: u64,
    pub series_created_total: u64,
    pub head_series: u64,
    /// Series with an open (unsealed) chunk.
    pub head_chunks: u64,
    pub out_of_order_samples_total: u64,
    pub duplicate_samples_total: u64,
    pub out_of_bounds_samples_total: u64,
    /// Samples rejected for being more than `max_future` ahead of the clock.
    pub too_far_in_future_samples_total: u64,
    pub wal_records_total: u64,
    pub wal_bytes_total: u64,
    pub wal_segment: u32,
    pub wal_segments_truncated_total: u64,
    pub wal_replayed_samples: u64,
    pub wal_corrupt_values_total: u64,
    pub chunks_sealed_total: u64,
    pub chunk_bytes_written_total: u64,
    pub retention_blocks_dropped_total: u64,
    /// Maintenance passes run (sealing, WAL truncation, retention).
    pub maintenance_runs_total: u64,
    /// Failed writes to disk (WAL write or fsync, sled write or flush).
    pub write_failures_total: u64,
    /// Samples refused because the TSDB could not write.
    pub appends_refused_total: u64,
    /// Panics caught in the background flush/maintenance loop (which goes on).
    pub background_panics_total: u64,
    /// Sealed chunks skipped by reads for a bad checksum or encoding.
    pub corrupt_chunks_skipped_total: u64,
    /// Records skipped at open: series batches, series whose labels were in one, and
    /// per-series chunk metadata.
    pub corrupt_records_skipped_total: u64,
    /// WAL samples of series the index does not know (lost with a corrupt batch).
    pub wal_unknown_series_samples_total: u64,
    /// Chunks sealed out of the head that sled does not hold yet (kept in memory and
    /// retried; the WAL keeps their samples meanwhile).
    pub chunks_pending_write: u64,
    /// sled's `size_on_disk()` of the data dir plus the WAL files.
    pub disk_size_bytes: u64,
    /// Estimated bytes held by the head (series structs, open chunks, hash lookup),
    /// without the in-memory postings and sled's cache.
    pub head_bytes: u64,
    /// Imported samples ([`Tsdb::import`]) by outcome: stored; dropped as present
    /// already (same timestamp and value bits), as conflicting (same timestamp, other
    /// bits: the held one kept), as replicas (same scrape slot, replica mode), as older
    /// than retention, as too far ahead of the clock.
    pub import_samples_stored_total: u64,
    pub import_samples_duplicate_total: u64,
    pub import_samples_conflicting_total: u64,
    pub import_samples_replica_total: u64,
    pub import_samples_out_of_bounds_total: u64,
    pub import_samples_too_far_in_future_total: u64,
    /// Chunks written by imports (as received or encoded anew).
    pub import_chunks_total: u64,
}

#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    created: AtomicU64,
    ooo: AtomicU64,
    dup: AtomicU64,
    oob: AtomicU64,
    future: AtomicU64,
    wal_records: AtomicU64,
    wal_bytes: AtomicU64,
    wal_truncated: AtomicU64,
    replayed: AtomicU64,
    corrupt: AtomicU64,
    sealed: AtomicU64,
    chunk_bytes: AtomicU64,
    blocks_dropped: AtomicU64,
    maintenance_runs: AtomicU64,
    write_failures: AtomicU64,
    refused: AtomicU64,
    background_panics: AtomicU64,
    corrupt_chunks: AtomicU64,
    corrupt_records: AtomicU64,
    replay_unknown: AtomicU64,
    import_stored: AtomicU64,
    import_duplicate: AtomicU64,
    import_conflicting: AtomicU64,
    import_replica: AtomicU64,
    import_out_of_bounds: AtomicU64,
    import_too_far_in_future: AtomicU64,
    import_chunks: AtomicU64,
}

struct WalBuf {
    buf: Vec<u8>,
    /// Series batches were written to sled but sled's flush has not succeeded since:
    /// no WAL record may be synced before they are durable.
    sled_dirty: bool,
    files: SegmentFiles,
    seg: u32,
    seq: u32,
    last_roll: Instant,
}

struct Signal {
    stop: Mutex<bool>,
    cv: Condvar,
}

struct Inner {
    db: sled::Db,
    index: Index,
    chunks: Tree,
    sealed: Tree,
    /// The WAL of data dirs from before the WAL files (read, then truncated away).
    legacy_wal: Tree,
    head: RwLock<Head>,
    wal: Mutex<WalBuf>,
    /// Chunks sealed out of the head whose sled write failed, by series: kept (and
    /// queried) until a retry succeeds; WAL truncation keeps their segments.
    pending_chunks: Mutex<U64Map<Vec<SealedChunk>>>,
    /// Whether `pending_chunks` has any (read without its lock by every select).
    has_pending: AtomicBool,
    /// Why the TSDB cannot write now (set by a failed disk write, cleared by the next
    /// flush that writes everything); appends are refused while set.
    unwritable: Mutex<Option<String>>,
    unwritable_flag: AtomicBool,
    /// Current WAL segment; changes only with the head write lock held.
    seg: AtomicU32,
    next_id: AtomicU64,
    /// First block start kept by retention.
    retention_from: AtomicI64,
    block_range: i64,
    opts: TsdbOptions,
    counters: Counters,
    closed: AtomicBool,
    signal: Arc<Signal>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Imports run one at a time (two imports of one series would each miss the
    /// other's chunks).
    import_lock: Mutex<()>,
}

/// The TSDB. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Tsdb {
    inner: Arc<Inner>,
}

fn wal_key(seg: u32, seq: u32) -> [u8; 8] {
    ((u64::from(seg) << 32) | u64::from(seq)).to_be_bytes()
}

impl Tsdb {
    /// Opens (or creates) the TSDB in `dir`, replays its WAL and starts the background
    /// flush/maintenance thread.
    pub fn open(dir: &Path, opts: TsdbOptions) -> Result<Tsdb, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError(format!("tsdb: create {}: {e}", dir.display())))?;
        let db = open_sled(dir, opts.cache_capacity)?;
        let (index, known) = Index::open(&db)?;
        let tree = |n: &str| db.open_tree(n).map_err(|e| sled_err("open tree", e));
        let (chunks, sealed, legacy_wal) = (tree("chunks")?, tree("sealed")?, tree("wal")?);
        let files = SegmentFiles::open(&dir.join("wal"))
            .map_err(|e| StorageError(format!("tsdb: open {}/wal: {e}", dir.display())))?;
        let block_range = i64::try_from(opts.block_range.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);

        let mut head = Head::new();
        // Sample times beyond this (written before the future bound existed) never move
        // the head's max time.
        let future_limit = future_limit(&opts);
        let mut max_id = 0;
        for (id, hash) in known {
            head.insert(id, hash);
            max_id = max_id.max(id);
        }
        let mut corrupt_records = index.skipped_at_open;
        for r in sealed.iter() {
            let (k, v) = r.map_err(|e| sled_err("scan sealed", e))?;
            let (Some(id), Some(min_t), Some(max_t), Some(last_v)) = (
                bytes8(&k, 0).map(u64::from_be_bytes),
                bytes8(&v, 1).map(i64::from_be_bytes),
                bytes8(&v, 9).map(i64::from_be_bytes),
                bytes8(&v, 17).map(u64::from_be_bytes),
            ) else {
                tracing::warn!(key = ?k, "tsdb: corrupt per-series chunk record skipped");
                corrupt_records += 1;
                continue;
            };
            if !check::sealed_record_ok(&k, &v) {
                tracing::warn!(series = id, "tsdb: corrupt per-series chunk record skipped");
                corrupt_records += 1;
                continue;
            }
            // Ids of series lost with a corrupt batch are never given out again.
            max_id = max_id.max(id);
            if let Some(ms) = head.get_mut(id) {
                ms.min_t = min_t;
                ms.wal.t = max_t;
                ms.wal.v = last_v;
                if max_t <= future_limit {
                    head.max_t = head.max_t.max(max_t);
                }
            }
        }

        let inner = Arc::new(Inner {
            db,
            index,
            chunks,
            sealed,
            legacy_wal,
            head: RwLock::new(head),
            pending_chunks: Mutex::new(U64Map::default()),
            has_pending: AtomicBool::new(false),
            unwritable: Mutex::new(None),
            unwritable_flag: AtomicBool::new(false),
            wal: Mutex::new(WalBuf {
                buf: Vec::new(),
                sled_dirty: false,
                files,
                seg: 0,
                seq: 0,
                last_roll: Instant::now(),
            }),
            seg: AtomicU32::new(0),
            next_id: AtomicU64::new(max_id + 1),
            retention_from: AtomicI64::new(i64::MIN),
            block_range,
            opts,
            counters: Counters::default(),
            closed: AtomicBool::new(false),
            signal: Arc::new(Signal {
                stop: Mutex::new(false),
                cv: Condvar::new(),
            }),
            thread: Mutex::new(None),
            import_lock: Mutex::new(()),
        });
        inner
            .counters
            .corrupt_records
            .store(corrupt_records, Relaxed);
        let next_seg = inner.replay()?;
        inner.seg.store(next_seg, Relaxed);
        inner.wal.lock().seg = next_seg;

        let weak = Arc::downgrade(&inner);
        let signal = inner.signal.clone();
        let (flush, maint) = (
            inner.opts.wal_flush_interval,
            inner.opts.maintenance_interval,
        );
        let handle = std::thread::Builder::new()
            .name("tsdb-flush".into())
            .spawn(move || background(weak, signal, flush, maint))
            .map_err(|e| StorageError(format!("tsdb: spawn flush thread: {e}")))?;
        *inner.thread.lock() = Some(handle);
        Ok(Tsdb { inner })
    }

    /// Counters, head size and disk size.
    pub fn stats(&self) -> TsdbStats {
        let c = &self.inner.counters;
        let (head_series, head_chunks, head_bytes) = {
            let h = self.inner.head.read();
            (
                h.num_series as u64,
                h.series
                    .iter()
                    .flatten()
                    .filter(|s| s.open_samples() > 0)
                    .count() as u64,
                h.bytes(),
            )
        };
        TsdbStats {
            samples_appended_total: c.appended.load(Relaxed),
            series_created_total: c.created.load(Relaxed),
            head_series,
            head_chunks,
            out_of_order_samples_total: c.ooo.load(Relaxed),
            duplicate_samples_total: c.dup.load(Relaxed),
            out_of_bounds_samples_total: c.oob.load(Relaxed),
            too_far_in_future_samples_total: c.future.load(Relaxed),
            wal_records_total: c.wal_records.load(Relaxed),
            wal_bytes_total: c.wal_bytes.load(Relaxed),
            wal_segment: self.inner.seg.load(Relaxed),
            wal_segments_truncated_total: c.wal_truncated.load(Relaxed),
            wal_replayed_samples: c.replayed.load(Relaxed),
            wal_corrupt_values_total: c.corrupt.load(Relaxed),
            chunks_sealed_total: c.sealed.load(Relaxed),
            chunk_bytes_written_total: c.chunk_bytes.load(Relaxed),
            retention_blocks_dropped_total: c.blocks_dropped.load(Relaxed),
            maintenance_runs_total: c.maintenance_runs.load(Relaxed),
            write_failures_total: c.write_failures.load(Relaxed),
            appends_refused_total: c.refused.load(Relaxed),
            background_panics_total: c.background_panics.load(Relaxed),
            corrupt_chunks_skipped_total: c.corrupt_chunks.load(Relaxed),
            corrupt_records_skipped_total: c.corrupt_records.load(Relaxed),
            wal_unknown_series_samples_total: c.replay_unknown.load(Relaxed),
            chunks_pending_write: self
                .inner
                .pending_chunks
                .lock()
                .values()
                .map(|v| v.len() as u64)
                .sum(),
            disk_size_bytes: self.inner.db.size_on_disk().unwrap_or(0)
                + self.inner.wal.lock().files.size(),
            head_bytes,
            import_samples_stored_total: c.import_stored.load(Relaxed),
            import_samples_duplicate_total: c.import_duplicate.load(Relaxed),
            import_samples_conflicting_total: c.import_conflicting.load(Relaxed),
            import_samples_replica_total: c.import_replica.load(Relaxed),
            import_samples_out_of_bounds_total: c.import_out_of_bounds.load(Relaxed),
            import_samples_too_far_in_future_total: c.import_too_far_in_future.load(Relaxed),
            import_chunks_total: c.import_chunks.load(Relaxed),
        }
    }

    /// Writes the WAL buffer and fsyncs sled now (what the background thread does every
    /// flush interval).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush_wal()
    }

    /// Runs one maintenance pass now: seals head chunks that can no longer grow, starts
    /// a new WAL segment when due, truncates the WAL and applies retention.
    pub fn maintain(&self) -> Result<(), StorageError> {
        self.inner.maintain(false)
    }

    /// Starts a new WAL segment and truncates segments no open chunk needs (tests and
    /// shutdown; normally done by maintenance).
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.inner.maintain(true)
    }

    /// Stops the background thread and flushes everything. Appends fail afterwards;
    /// queries still work. Idempotent. sled's directory lock is released only when the
    /// last clone of this `Tsdb` is dropped, so drop all clones before reopening the
    /// same directory.
    pub fn close(&self) -> Result<(), StorageError> {
        self.inner.closed.store(true, Relaxed);
        self.inner.stop_background();
        let handle = self.inner.thread.lock().take();
        if let Some(h) = handle
            && h.thread().id() != std::thread::current().id()
            && h.join().is_err()
        {
            tracing::error!("tsdb flush thread panicked");
        }
        self.inner.flush_wal()
    }
}

/// Opens the TSDB's sled database through the shared lock wait
/// ([`crate::storage::sled_open`]).
fn open_sled(dir: &Path, cache_capacity: u64) -> Result<sled::Db, StorageError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    crate::storage::sled_open::open(&config)
        .map_err(|e| sled_err(&format!("open {}", dir.display()), e))
}

fn background(weak: Weak<Inner>, signal: Arc<Signal>, flush: Duration, maint: Duration) {
    let mut last_maint = Instant::now();
    loop {
        {
            let mut stop = signal.stop.lock();
            if !*stop {
                signal.cv.wait_for(&mut stop, flush);
            }
            if *stop {
                return;
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        // Supervised: a panic (a bug) is logged, counted and makes the TSDB unwritable
        // until a later flush succeeds; the loop goes on instead of dying silently.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Err(e) = inner.flush_wal() {
                tracing::error!(error = %e, "tsdb WAL flush failed");
            }
            if last_maint.elapsed() >= maint {
                last_maint = Instant::now();
                if let Err(e) = inner.maintain(false) {
                    tracing::error!(error = %e, "tsdb maintenance failed");
                }
            }
        }));
        if let Err(panic) = pass {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            inner.counters.background_panics.fetch_add(1, Relaxed);
            inner.set_unwritable(&StorageError(format!(
                "tsdb: the flush thread panicked: {msg}"
            )));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_background();
        if let Err(e) = self.flush_wal() {
            tracing::error!(error = %e, "tsdb final WAL flush failed");
        }
    }
}

/// WAL replay state: decoder cursors per series, reset at every segment start.
struct Replay {
    block_range: i64,
    future_limit: i64,
    cursors: U64Map<WalCursor>,
    cur_seg: Option<u32>,
    broken_seg: Option<u32>,
    sealed: Vec<SealedChunk>,
    replayed: u64,
    corrupt: u64,
    /// Samples of series the index does not know (lost with a corrupt batch, or
    /// created just before a crash that lost their batch).
    unknown: u64,
    /// Highest series id the WAL names (never given out again).
    max_id: u64,
}

impl Replay {
    /// Applies one WAL value of segment `seg` to the head.
    fn value(&mut self, head: &mut Head, seg: u32, v: &[u8]) {
        if self.cur_seg != Some(seg) {
            self.cursors.clear();
            self.cur_seg = Some(seg);
        }
        if self.broken_seg == Some(seg) {
            return;
        }
        let body = match v.first() {
            Some(&FORMAT_V1) => std::borrow::Cow::Borrowed(&v[1..]),
            Some(&FORMAT_DEFLATE) => match codec::inflate(&v[1..]) {
                Ok(b) => std::borrow::Cow::Owned(b),
                Err(e) => return self.broken(seg, &e),
            },
            _ => return self.broken(seg, "unknown format byte"),
        };
        let r = self.block_range;
        let (sealed, replayed, limit) = (&mut self.sealed, &mut self.replayed, self.future_limit);
        let (unknown, max_id) = (&mut self.unknown, &mut self.max_id);
        let res = wal::decode_records(&body, &mut self.cursors, |id, t, vb| {
            *max_id = (*max_id).max(id);
            let Some(ms) = head.get_mut(id) else {
                *unknown += 1;
                return;
            };
            if let Ok(Appended::Stored(s)) = ms.append(id, t, f64::from_bits(vb), r, seg, None) {
                sealed.extend(s);
                if t <= limit {
                    head.max_t = head.max_t.max(t);
                }
                *replayed += 1;
            }
        });
        if let Err(e) = res {
            self.broken(seg, &e.to_string());
        }
    }

    /// Later values of a segment depend on earlier ones' decoder state: skip the rest.
    fn broken(&mut self, seg: u32, why: &str) {
        tracing::warn!(segment = seg, error = %why, "tsdb: corrupt WAL value, skipping the rest of its segment");
        self.corrupt += 1;
        self.broken_seg = Some(seg);
    }
}

/// What the query path copies out of the head for one series.
struct HeadSnap {
    id: u64,
    min_t: i64,
    last_t: i64,
    /// Open chunk (min time, its samples within the range) when it overlaps the range.
    open: Option<(i64, Vec<Sample>)>,
}

impl Inner {
    fn stop_background(&self) {
        *self.signal.stop.lock() = true;
        self.signal.cv.notify_all();
    }

    /// Replays the WAL into the head: the legacy `wal` tree's segments, then the segment
    /// files. Returns the segment number to write next (a new one: a torn tail is never
    /// appended to).
    fn replay(&self) -> Result<u32, StorageError> {
        let mut head = self.head.write();
        let mut rp = Replay {
            block_range: self.block_range,
            future_limit: future_limit(&self.opts),
            cursors: U64Map::default(),
            cur_seg: None,
            broken_seg: None,
            sealed: Vec::new(),
            replayed: 0,
            unknown: 0,
            max_id: 0,
            corrupt: 0,
        };
        let mut last_seg = None;
        for item in self.legacy_wal.iter() {
            let (k, v) = item.map_err(|e| sled_err("scan wal", e))?;
            let seg = bytes8(&k, 0)
                .map(|b| (u64::from_be_bytes(b) >> 32) as u32)
                .unwrap_or(0);
            rp.value(&mut head, seg, &v);
            last_seg = last_seg.max(Some(seg));
        }
        let w = self.wal.lock();
        let io_err = |e: std::io::Error| StorageError(format!("tsdb: read WAL: {e}"));
        for seg in w.files.list().map_err(io_err)? {
            let stop = w
                .files
                .read(seg, |v| rp.value(&mut head, seg, v))
                .map_err(io_err)?;
            if let Some(why) = stop {
                tracing::warn!(segment = seg, reason = %why, "tsdb: WAL segment ends early (a torn write from a crash, or corruption); its later samples are lost");
                rp.corrupt += 1;
            }
            last_seg = last_seg.max(Some(seg));
        }
        drop(w);
        self.counters.replayed.fetch_add(rp.replayed, Relaxed);
        self.counters.replay_unknown.fetch_add(rp.unknown, Relaxed);
        if rp.unknown > 0 {
            tracing::warn!(
                samples = rp.unknown,
                "tsdb: WAL samples of series the index does not know were skipped"
            );
        }
        self.next_id.fetch_max(rp.max_id.saturating_add(1), Relaxed);
        self.counters.corrupt.fetch_add(rp.corrupt, Relaxed);
        self.write_sealed(rp.sealed)?;
        Ok(last_seg.map_or(0, |s| s.saturating_add(1)))
    }

    /// Writes chunks sealed out of the head to sled. Those it cannot write stay in
    /// memory (queried, retried by the next flush) with the WAL segments that hold their
    /// samples: a failed write loses nothing.
    fn write_sealed(&self, sealed: Vec<SealedChunk>) -> Result<(), StorageError> {
        if sealed.is_empty() {
            return Ok(());
        }
        let res = self.write_sealed_to_sled(&sealed);
        if res.is_err() {
            self.counters.write_failures.fetch_add(1, Relaxed);
            let mut p = self.pending_chunks.lock();
            for c in sealed {
                p.entry(c.id).or_default().push(c);
            }
            self.has_pending.store(true, Relaxed);
        }
        res
    }

    /// Writes the chunks that a failed write left in memory; Ok when none is left.
    fn retry_pending_chunks(&self) -> Result<(), StorageError> {
        let pending: Vec<SealedChunk> = {
            let p = self.pending_chunks.lock();
            if p.is_empty() {
                return Ok(());
            }
            // Queries see them until the write below succeeds: copy, do not take.
            p.values().flatten().cloned().collect()
        };
        match self.write_sealed_to_sled(&pending) {
            Ok(()) => {
                let mut p = self.pending_chunks.lock();
                for c in &pending {
                    if let Some(v) = p.get_mut(&c.id) {
                        v.retain(|x| x.min_t != c.min_t);
                        if v.is_empty() {
                            p.remove(&c.id);
                        }
                    }
                }
                self.has_pending.store(!p.is_empty(), Relaxed);
                Ok(())
            }
            Err(e) => {
                self.counters.write_failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    fn write_sealed_to_sled(&self, sealed: &[SealedChunk]) -> Result<(), StorageError> {
        let mut chunks = sled::Batch::default();
        let mut meta = sled::Batch::default();
        let mut bytes = 0u64;
        for c in sealed {
            let key = retention::chunk_key(block_of(c.min_t, self.block_range), c.id, c.min_t);
            chunks.insert(&key[..], retention::chunk_value(c.max_t, &c.bytes));
            bytes += c.bytes.len() as u64 + 33;
            let mut m = Vec::with_capacity(25);
            m.push(FORMAT_V1);
            m.extend_from_slice(&c.series_min_t.to_be_bytes());
            m.extend_from_slice(&c.max_t.to_be_bytes());
            m.extend_from_slice(&c.last_v.to_be_bytes());
            meta.insert(&c.id.to_be_bytes()[..], m);
        }
        self.chunks
            .apply_batch(chunks)
            .map_err(|e| sled_err("write chunks", e))?;
        self.sealed
            .apply_batch(meta)
            .map_err(|e| sled_err("write sealed", e))?;
        self.counters.sealed.fetch_add(sealed.len() as u64, Relaxed);
        self.counters.chunk_bytes.fetch_add(bytes, Relaxed);
        Ok(())
    }

    /// Writes and fsyncs everything buffered (WAL, series, chunks a failed write left
    /// in memory). A failure makes the TSDB unwritable (appends refused, the node not
    /// ready) until a flush writes everything again; nothing buffered is dropped.
    fn flush_wal(&self) -> Result<(), StorageError> {
        match self.flush_all() {
            Ok(()) => {
                if self.unwritable_flag.load(Relaxed) {
                    if let Some(why) = self.unwritable.lock().take() {
                        tracing::warn!(was = %why, "tsdb: writes succeed again; taking samples again");
                    }
                    self.unwritable_flag.store(false, Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                self.set_unwritable(&e);
                Err(e)
            }
        }
    }

    fn set_unwritable(&self, e: &StorageError) {
        let mut u = self.unwritable.lock();
        if u.is_none() {
            tracing::error!(error = %e, "tsdb: a write to disk failed; refusing samples until writes succeed again");
        }
        *u = Some(e.0.clone());
        self.unwritable_flag.store(true, Relaxed);
    }

    fn flush_all(&self) -> Result<(), StorageError> {
        let fail = |e: StorageError| {
            self.counters.write_failures.fetch_add(1, Relaxed);
            e
        };
        self.retry_pending_chunks()?;
        let sync = {
            let mut w = self.wal.lock();
            // Series reach sled, durably, before the records that refer to them (both
            // under the wal lock, so no record can overtake its series).
            if self.index.flush_pending().map_err(fail)? {
                w.sled_dirty = true;
            }
            if w.sled_dirty {
                self.db.flush().map_err(|e| fail(sled_err("flush", e)))?;
                w.sled_dirty = false;
            }
            self.write_wal_buf(&mut w).map_err(fail)?;
            w.files
                .sync_handle()
                .map_err(|e| fail(StorageError(format!("tsdb: WAL file: {e}"))))?
        };
        if let Some((f, seg, len)) = sync {
            let res = f.sync_data();
            self.wal.lock().files.synced(seg, len, res.is_ok());
            res.map_err(|e| fail(StorageError(format!("tsdb: fsync WAL: {e}"))))?;
        }
        self.db.flush().map_err(|e| fail(sled_err("flush", e)))?;
        Ok(())
    }

    /// Appends the buffered records to the segment's file (wal lock held, so values
    /// reach the file in order).
    fn write_wal_buf(&self, w: &mut WalBuf) -> Result<(), StorageError> {
        if w.buf.is_empty() {
            return Ok(());
        }
        let v = codec::deflate(FORMAT_DEFLATE, &w.buf);
        let written = w
            .files
            .append(w.seg, &v)
            .map_err(|e| StorageError(format!("tsdb: write WAL: {e}")))?;
        self.counters.wal_bytes.fetch_add(written, Relaxed);
        w.buf.clear();
        if w.buf.capacity() > (1 << 20) {
            w.buf.shrink_to(1 << 20);
        }
        w.seq = w.seq.wrapping_add(1);
        Ok(())
    }

    fn maintain(&self, force_roll: bool) -> Result<(), StorageError> {
        let r = self.block_range;
        // 1. Seal open chunks whose block can no longer receive samples.
        {
            let mut head = self.head.write();
            let min_valid = head.min_valid_time(r);
            let mut sealed = Vec::new();
            for (id, s) in head.series.iter_mut().enumerate() {
                if let Some(ms) = s
                    && ms.open_samples() > 0
                    && block_of(ms.chunk_min_t, r).saturating_add(r) <= min_valid
                {
                    sealed.push(ms.seal(id as u64));
                }
            }
            // A failed write keeps the chunks in memory (and their WAL segments).
            if let Err(e) = self.write_sealed(sealed) {
                self.set_unwritable(&e);
            }
            // 2. Start a new segment when due.
            let mut w = self.wal.lock();
            if force_roll || w.last_roll.elapsed() >= self.opts.wal_segment_interval {
                self.write_wal_buf(&mut w)?;
                w.seg = w.seg.wrapping_add(1);
                w.seq = 0;
                w.last_roll = Instant::now();
                self.seg.store(w.seg, Relaxed);
            }
        }
        // 3. Truncate segments that no open chunk needs, nor a sealed chunk sled does
        // not hold yet.
        let keep_from = {
            let head = self.head.read();
            let pending = self.pending_chunks.lock();
            head.series
                .iter()
                .flatten()
                .filter(|s| s.open_samples() > 0)
                .map(|s| s.head_seg)
                .chain(pending.values().flatten().map(|c| c.seg))
                .min()
                .unwrap_or(u32::MAX)
                .min(self.seg.load(Relaxed))
        };
        // Sealed chunks are durable before the segments holding their samples go.
        self.db.flush().map_err(|e| sled_err("flush", e))?;
        let mut segs = std::collections::BTreeSet::new();
        for item in self.legacy_wal.range(..wal_key(keep_from, 0).to_vec()) {
            let (k, _) = item.map_err(|e| sled_err("scan wal", e))?;
            if let Some(b) = bytes8(&k, 0) {
                segs.insert(u64::from_be_bytes(b) >> 32);
            }
            self.legacy_wal
                .remove(&k)
                .map_err(|e| sled_err("truncate wal", e))?;
        }
        let removed = self
            .wal
            .lock()
            .files
            .remove_before(keep_from)
            .map_err(|e| StorageError(format!("tsdb: truncate WAL: {e}")))?;
        self.counters
            .wal_truncated
            .fetch_add(segs.len() as u64 + removed, Relaxed);
        // 4. Retention, by the wall clock (never by the newest sample seen: one sample
        // from a wrong clock must not age out everything else).
        let retention = i64::try_from(self.opts.retention.as_millis()).unwrap_or(i64::MAX);
        let now = self.opts.clock.now_ms();
        let keep = block_of(now.saturating_sub(retention), r);
        self.retention_from.fetch_max(keep, Relaxed);
        let dropped = retention::drop_blocks_before(&self.chunks, keep)?;
        self.counters.blocks_dropped.fetch_add(dropped, Relaxed);
        self.counters.maintenance_runs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Finds or creates the series with these labels. Returns `(id, created)`.
    fn get_or_create(&self, labels: &Labels) -> Result<(u64, bool), AppendError> {
        import::check_labels(labels)?;
        let hash = labels.stable_hash();
        let storage = |e: StorageError| AppendError::Storage(e.0);
        {
            let head = self.head.read();
            if let Some(id) = self.find(&head, hash, labels).map_err(storage)? {
                return Ok((id, false));
            }
        }
        let mut head = self.head.write();
        if let Some(id) = self.find(&head, hash, labels).map_err(storage)? {
            return Ok((id, false));
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        self.index.add_series(id, labels).map_err(storage)?;
        head.insert(id, hash);
        self.counters.created.fetch_add(1, Relaxed);
        Ok((id, true))
    }

    fn find(&self, head: &Head, hash: u64, labels: &Labels) -> Result<Option<u64>, StorageError> {
        for id in head.ids_for_hash(hash) {
            if self.index.has_labels(id, labels)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn commit(&self, mut samples: Vec<(u64, i64, f64)>) -> Result<u64, StorageError> {
        if samples.is_empty() {
            return Ok(0);
        }
        samples.sort_by_key(|s| s.0);
        let t0 = samples[0].1;
        let shared_t = samples.iter().all(|s| s.1 == t0).then_some(t0);
        let mut rb = RecordBuilder::new(shared_t, samples.len());
        let mut sealed = Vec::new();
        let (mut ooo, mut dup, mut oob, mut accepted) = (0u64, 0u64, 0u64, 0u64);
        let mut head = self.head.write();
        let seg = self.seg.load(Relaxed);
        let min_valid = head.min_valid_time(self.block_range);
        let mut max_t = head.max_t;
        for (id, t, v) in samples {
            if t < min_valid {
                oob += 1;
                continue;
            }
            let Some(ms) = head.get_mut(id) else { continue };
            match ms.append(id, t, v, self.block_range, seg, Some(&mut rb)) {
                Err(AppendError::OutOfOrder) => ooo += 1,
                Err(_) => dup += 1,
                Ok(Appended::Duplicate) => {}
                Ok(Appended::Stored(s)) => {
                    sealed.extend(s);
                    accepted += 1;
                    max_t = max_t.max(t);
                }
            }
        }
        head.max_t = max_t;
        if !rb.is_empty() {
            let mut w = self.wal.lock();
            rb.finish_into(&mut w.buf);
            self.counters.wal_records.fetch_add(1, Relaxed);
        }
        // The batch is in the head and the WAL buffer: acknowledged. A chunk sled cannot
        // take now stays in memory with its WAL segment.
        if let Err(e) = self.write_sealed(sealed) {
            self.set_unwritable(&e);
        }
        drop(head);
        let c = &self.counters;
        c.appended.fetch_add(accepted, Relaxed);
        c.ooo.fetch_add(ooo, Relaxed);
        c.dup.fetch_add(dup, Relaxed);
        c.oob.fetch_add(oob, Relaxed);
        Ok(accepted)
    }

    /// Copies what the query path needs out of the head for the candidate series. Large
    /// candidate lists are split over two threads (the head read lock is shared).
    /// `load`: also decode the open chunks, counting their samples into this budget
    /// (and stopping at its limit or deadline).
    fn snapshot(
        &self,
        cands: Option<Vec<u64>>,
        start: i64,
        end: i64,
        load: Option<&Load>,
    ) -> Result<Vec<HeadSnap>, StorageError> {
        let head = self.head.read();
        let cutoff = self.retention_from.load(Relaxed);
        let ids: Vec<u64> = match cands {
            Some(ids) => ids,
            None => head
                .series
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(|(id, _)| id as u64)
                .collect(),
        };
        let head: &Head = &head;
        let run = |ids: &[u64]| snap_many(head, ids, start, end, cutoff, load);
        if ids.len() < PARALLEL_MIN {
            return run(&ids);
        }
        let (a, b) = ids.split_at(ids.len() / 2);
        let (ra, rb) = std::thread::scope(|sc| {
            let hb = sc.spawn(|| run(b));
            let ra = run(a);
            (ra, hb.join())
        });
        let mut out = ra?;
        out.extend(rb.map_err(|_| StorageError("tsdb: query thread panicked".into()))??);
        Ok(out)
    }

    /// Sealed-chunk samples of `id` within `[lo, hi]` (thinned to the grid, if any),
    /// counted into the budget chunk by chunk.
    fn sealed_samples(
        &self,
        id: u64,
        lo: i64,
        hi: i64,
        out: &mut Vec<Sample>,
        load: &Load,
    ) -> Result<(), StorageError> {
        let r = self.block_range;
        let from = out.len();
        // Chunks come in key order (block, min time) and never cross a block; those an
        // import stored may overlap others of their block: then (only) sort and dedup.
        let mut prev_max = i64::MIN;
        let mut overlap = false;
        let mut b = block_of(lo, r);
        while b <= hi {
            for item in self.chunks.scan_prefix(retention::series_prefix(b, id)) {
                let (k, v) = item.map_err(|e| sled_err("scan chunks", e))?;
                let min_t = retention::key_min_t(&k).unwrap_or(i64::MIN);
                // A corrupt chunk is skipped (logged, counted): the rest is served.
                let (max_t, bytes) = match retention::parse_chunk_value(&v) {
                    Ok(x) => x,
                    Err(e) => {
                        self.corrupt_chunk(id, min_t, &e.0);
                        continue;
                    }
                };
                if min_t > hi || max_t < lo {
                    continue;
                }
                overlap |= min_t <= prev_max;
                prev_max = prev_max.max(max_t);
                let before = out.len();
                if let Err(e) = chunkenc::decode_range(bytes, lo, hi, out) {
                    out.truncate(before);
                    self.corrupt_chunk(id, min_t, &e.to_string());
                    continue;
                }
                if let Some(g) = &load.grid {
                    g.thin(out, before);
                }
                load.budget.take(out.len() - before)?;
            }
            b = match b.checked_add(r) {
                Some(n) => n,
                None => break,
            };
        }
        if overlap {
            sort_dedup(out, from);
        }
        Ok(())
    }

    fn corrupt_chunk(&self, id: u64, min_t: i64, why: &str) {
        self.counters.corrupt_chunks.fetch_add(1, Relaxed);
        tracing::warn!(series = id, chunk_min_t = min_t, error = %why, "tsdb: corrupt chunk skipped (`shoal tsdb check --repair` quarantines it)");
    }

    /// Samples within `[lo, hi]` of `id`'s chunks that a failed write left in memory,
    /// merged into `out` (sorted, from sled) in time order.
    fn pending_samples(
        &self,
        id: u64,
        lo: i64,
        hi: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), StorageError> {
        if !self.has_pending.load(Relaxed) {
            return Ok(());
        }
        let p = self.pending_chunks.lock();
        let Some(chunks) = p.get(&id) else {
            return Ok(());
        };
        let before = out.len();
        for c in chunks.iter().filter(|c| c.min_t <= hi && c.max_t >= lo) {
            chunkenc::decode_range(&c.bytes, lo, hi, out).map_err(|e| {
                StorageError(format!(
                    "tsdb: series {id} pending chunk at {}: {e}",
                    c.min_t
                ))
            })?;
        }
        if out.len() > before {
            sort_dedup(out, 0);
        }
        Ok(())
    }

    /// Matching series (labels checked against every matcher) overlapping the range,
    /// sorted by labels. `load`: with their open chunks' samples, counted (see
    /// [`Inner::snapshot`]).
    fn matching(
        &self,
        start: i64,
        end: i64,
        matchers: &[Matcher],
        load: Option<&Load>,
    ) -> Result<Vec<(Labels, HeadSnap)>, StorageError> {
        if start > end {
            return Ok(Vec::new());
        }
        let mut cands = self.index.candidates(matchers)?;
        if load.is_some() && matchers.iter().any(Matcher::matches_empty) {
            // Candidates are a superset here (such matchers do not narrow them): drop
            // the series that do not match before their samples are decoded and counted.
            cands = Some(self.index.filter_ids(cands, matchers)?);
        }
        let snaps = self.snapshot(cands, start, end, load)?;
        if let Some(l) = load {
            l.budget.check_deadline()?;
        }
        let ids: Vec<u64> = snaps.iter().map(|s| s.id).collect();
        let resolved = self.index.resolve(&ids, matchers)?;
        let mut snaps: Vec<Option<HeadSnap>> = snaps.into_iter().map(Some).collect();
        Ok(resolved
            .into_iter()
            .filter_map(|(pos, labels)| Some((labels, snaps.get_mut(pos)?.take()?)))
            .collect())
    }
}

/// Sorts `samples[from..]` by time (stably) and keeps the first sample of every
/// timestamp.
fn sort_dedup(samples: &mut Vec<Sample>, from: usize) {
    samples[from..].sort_by_key(|s| s.t);
    let mut w = from;
    for i in from..samples.len() {
        if w == from || samples[w - 1].t != samples[i].t {
            samples[w] = samples[i];
            w += 1;
        }
    }
    samples.truncate(w);
}

/// The newest sample time accepted now: the clock plus `max_future`.
fn future_limit(opts: &TsdbOptions) -> i64 {
    let ahead = i64::try_from(opts.max_future.as_millis()).unwrap_or(i64::MAX);
    opts.clock.now_ms().saturating_add(ahead)
}

/// The oldest sample time accepted now: the clock minus retention (older samples would
/// be dropped by the next maintenance anyway).
fn retention_limit(opts: &TsdbOptions) -> i64 {
    let back = i64::try_from(opts.retention.as_millis()).unwrap_or(i64::MAX);
    opts.clock.now_ms().saturating_sub(back)
}

/// Candidate lists at least this long are processed on two threads.
pub(crate) const PARALLEL_MIN: usize = 16_384;

/// How many series the query path handles between two looks at the clock.
const DEADLINE_EVERY: usize = 1024;

/// What a select loads under: its budget, and the grid its samples are thinned to.
struct Load<'a> {
    budget: &'a SampleBudget,
    grid: Option<StepGrid>,
}

/// [`Inner::snapshot`] for one slice of ids.
fn snap_many(
    head: &Head,
    ids: &[u64],
    start: i64,
    end: i64,
    cutoff: i64,
    load: Option<&Load>,
) -> Result<Vec<HeadSnap>, StorageError> {
    let mut out = Vec::with_capacity(ids.len());
    let mut scratch: Vec<Sample> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(l) = load
            && i % DEADLINE_EVERY == 0
        {
            l.budget.check_deadline()?;
        }
        let Some(ms) = head.get(id) else { continue };
        let last_t = ms.last_t();
        if !ms.has_samples() || ms.min_t > end || last_t < start || last_t < cutoff {
            continue;
        }
        let open = if let Some(load) = load
            && ms.open_samples() > 0
            && ms.chunk_min_t <= end
        {
            // Decode in place (no copy of the chunk); one exact-size allocation, once
            // the budget has room for it.
            scratch.clear();
            chunkenc::decode_range(&ms.chunk, start, end, &mut scratch)
                .map_err(|e| StorageError(format!("tsdb: series {id} head chunk: {e}")))?;
            if let Some(g) = &load.grid {
                g.thin(&mut scratch, 0);
            }
            load.budget.take(scratch.len())?;
            Some((ms.chunk_min_t, scratch.as_slice().to_vec()))
        } else {
            None
        };
        out.push(HeadSnap {
            id,
            min_t: ms.min_t.max(cutoff),
            last_t,
            open,
        });
    }
    Ok(out)
}

impl Tsdb {
    /// [`Queryable::select`] counting into `budget`: head samples are counted as the
    /// snapshot decodes them, sealed ones chunk by chunk; the select stops with an error
    /// at the budget's limit or deadline, having loaded at most one chunk per thread
    /// more than the limit.
    pub fn select_with_budget(
        &self,
        hints: &SelectHints,
        matchers: &[Matcher],
        budget: &SampleBudget,
    ) -> Result<SeriesSet, StorageError> {
        let (start, end) = (hints.start, hints.end);
        let inner = &self.inner;
        let load = Load {
            budget,
            grid: hints.grid,
        };
        let mut series = Vec::new();
        for (i, (labels, snap)) in inner
            .matching(start, end, matchers, Some(&load))?
            .into_iter()
            .enumerate()
        {
            if i % DEADLINE_EVERY == 0 {
                budget.check_deadline()?;
            }
            let sealed_hi = snap
                .open
                .as_ref()
                .map_or(snap.last_t, |(m, _)| m.saturating_sub(1))
                .min(end);
            let lo = snap.min_t.max(start);
            let head_samples = snap.open.map(|(_, s)| s).unwrap_or_default();
            let samples = if lo <= sealed_hi {
                let mut samples = Vec::new();
                inner.sealed_samples(snap.id, lo, sealed_hi, &mut samples, &load)?;
                inner.pending_samples(snap.id, lo, sealed_hi, &mut samples)?;
                // Sealed samples end before the open chunk starts (imports seal the
                // head chunk they would reach); checked, as it costs one comparison.
                let sealed_end = samples.last().map(|s| s.t);
                samples.extend_from_slice(&head_samples);
                if sealed_end.is_some_and(|t| head_samples.first().is_some_and(|h| h.t <= t)) {
                    sort_dedup(&mut samples, 0);
                }
                if let Some(g) = &load.grid {
                    g.thin(&mut samples, 0);
                }
                samples
            } else {
                head_samples
            };
            if !samples.is_empty() {
                series.push(Series { labels, samples });
            }
        }
        Ok(SeriesSet {
            series,
            warnings: Vec::new(),
        })
    }
}

impl Queryable for Tsdb {
    fn select(&self, hints: &SelectHints, matchers: &[Matcher]) -> Result<SeriesSet, StorageError> {
        self.select_with_budget(hints, matchers, &hints.budget())
    }

    fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError> {
        Ok(self
            .inner
            .matching(mint, maxt, matchers, None)?
            .into_iter()
            .map(|(l, _)| l)
            .collect())
    }

    fn presence(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Presence>, StorageError> {
        if mint > maxt {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let cands = inner.index.candidates(matchers)?;
        let snaps = inner.snapshot(cands, mint, maxt, None)?;
        let ids: Vec<u64> = snaps.iter().map(|s| s.id).collect();
        Ok(inner
            .index
            .hashes(&ids, matchers)?
            .into_iter()
            .filter_map(|(pos, hash)| {
                let s = snaps.get(pos)?;
                Some(Presence {
                    hash,
                    min_t: s.min_t,
                    max_t: s.last_t,
                })
            })
            .collect())
    }

    fn label_names(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        if matchers.is_empty() {
            return self.inner.index.label_names();
        }
        let mut names: Vec<String> = self
            .series(mint, maxt, matchers)?
            .iter()
            .flat_map(|l| l.iter().map(|l| l.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        if matchers.is_empty() {
            return self.inner.index.label_values(name);
        }
        let mut values: Vec<String> = self
            .series(mint, maxt, matchers)?
            .iter()
            .filter_map(|l| l.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}

impl Writable for Inner {
    fn writable(&self) -> Result<(), String> {
        if !self.unwritable_flag.load(Relaxed) {
            return Ok(());
        }
        self.unwritable.lock().clone().map_or(Ok(()), Err)
    }
}

impl Writable for Tsdb {
    fn writable(&self) -> Result<(), String> {
        self.inner.writable()
    }
}

impl Appendable for Tsdb {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(TsdbAppender {
            future_limit: future_limit(&self.inner.opts),
            retention_limit: retention_limit(&self.inner.opts),
            inner: self.inner.clone(),
            samples: Vec::new(),
            batch_last: U64Map::default(),
            in_batch: Vec::new(),
            created: 0,
        })
    }
}

/// Series ids up to `64 * MAX_BITSET_WORD` are tracked in the appender's bitset.
const MAX_BITSET_WORD: usize = 1 << 24;

/// One batch of appends; validated at append time, applied and logged at commit.
struct TsdbAppender {
    inner: Arc<Inner>,
    /// Samples after this are too far in the future (the clock when the batch began
    /// plus `max_future`).
    future_limit: i64,
    /// Samples before this are older than retention keeps.
    retention_limit: i64,
    samples: Vec<(u64, i64, f64)>,
    /// Last pending sample per series, for ordering checks within the batch.
    batch_last: U64Map<(i64, u64)>,
    /// Bit per series id: already has a pending sample in this batch. Only ids seen
    /// twice go to `batch_last` (a scrape appends each series once).
    in_batch: Vec<u64>,
    created: u64,
}

impl TsdbAppender {
    /// Whether `id` may have a pending sample in this batch.
    fn pending(&self, id: u64) -> bool {
        let (w, b) = ((id / 64) as usize, id % 64);
        w > MAX_BITSET_WORD || self.in_batch.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// The last pending sample of `id` (rare: a series appended twice in one batch).
    fn last_pending(&self, id: u64) -> Option<(i64, u64)> {
        if let Some(&x) = self.batch_last.get(&id) {
            return Some(x);
        }
        let &(_, t, v) = self.samples.iter().rev().find(|s| s.0 == id)?;
        Some((t, v.to_bits()))
    }

    /// Records that `id` has a pending sample `(t, v)`.
    fn mark_pending(&mut self, id: u64, t: i64, v: f64) {
        let (w, b) = ((id / 64) as usize, id % 64);
        if w > MAX_BITSET_WORD {
            self.batch_last.insert(id, (t, v.to_bits()));
            return;
        }
        if w >= self.in_batch.len() {
            self.in_batch.resize(w + 1 + w / 8, 0);
        }
        if self.in_batch[w] & (1 << b) != 0 {
            self.batch_last.insert(id, (t, v.to_bits()));
        } else {
            self.in_batch[w] |= 1 << b;
        }
    }

    fn check(&mut self, id: u64, t: i64, v: f64) -> Result<bool, AppendError> {
        let c = &self.inner.counters;
        let (last_t, last_v, min_valid) = {
            let head = self.inner.head.read();
            let Some(ms) = head.get(id) else {
                return Err(AppendError::UnknownRef(id));
            };
            let (lt, lv) = (ms.wal.t, ms.wal.v);
            (lt, lv, head.min_valid_time(self.inner.block_range))
        };
        if t < min_valid || t < self.retention_limit {
            c.oob.fetch_add(1, Relaxed);
            return Err(AppendError::OutOfBounds);
        }
        if t > self.future_limit {
            c.future.fetch_add(1, Relaxed);
            return Err(AppendError::TooFarInFuture);
        }
        let (last_t, last_v) = if self.pending(id) {
            self.last_pending(id).unwrap_or((last_t, last_v))
        } else {
            (last_t, last_v)
        };
        match MemSeries::check(last_t, last_v, t, v) {
            Err(e) => {
                let ctr = if e == AppendError::OutOfOrder {
                    &c.ooo
                } else {
                    &c.dup
                };
                ctr.fetch_add(1, Relaxed);
                Err(e)
            }
            Ok(dup) => Ok(dup),
        }
    }
}

impl TsdbAppender {
    /// Refuses samples while the TSDB is closed or cannot write.
    fn open_for_writes(&self) -> Result<(), AppendError> {
        if self.inner.closed.load(Relaxed) {
            return Err(AppendError::Storage("tsdb is closed".into()));
        }
        if self.inner.unwritable_flag.load(Relaxed) {
            self.inner.counters.refused.fetch_add(1, Relaxed);
            let why = self.inner.writable().err().unwrap_or_default();
            return Err(AppendError::Storage(format!("tsdb is not writable: {why}")));
        }
        Ok(())
    }
}

impl Appender for TsdbAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError> {
        self.open_for_writes()?;
        let (id, created) = self.inner.get_or_create(labels)?;
        if created {
            self.created += 1;
        }
        self.append_ref(id, t, v)?;
        Ok(id)
    }

    fn append_ref(&mut self, id: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        self.open_for_writes()?;
        if self.check(id, t, v)? {
            return Ok(());
        }
        self.samples.push((id, t, v));
        self.mark_pending(id, t, v);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<CommitStats, StorageError> {
        let me = *self;
        let samples = me.inner.commit(me.samples)?;
        Ok(CommitStats {
            samples,
            series_created: me.created,
        })
    }

    fn rollback(self: Box<Self>) {}

    fn reserve(&mut self, n: usize) {
        self.samples.reserve(n);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod select_tests;

#[cfg(test)]
mod import_tests;

impl crate::storage::chunks::ChunkStore for Tsdb {
    fn seal_head(&self) -> Result<u64, StorageError> {
        Tsdb::seal_head(self)
    }

    fn export_batch(
        &self,
        after: Option<&ExportCursor>,
        max_bytes: usize,
    ) -> Result<ExportBatch, StorageError> {
        Tsdb::export_batch(self, after, max_bytes)
    }

    fn export_totals(&self, after: Option<&ExportCursor>) -> Result<ExportTotals, StorageError> {
        Tsdb::export_totals(self, after)
    }

    fn import(
        &self,
        series: Vec<ImportSeries>,
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        Tsdb::import(self, series, mode)
    }

    fn import_samples(
        &self,
        labels: &Labels,
        samples: &[Sample],
        mode: ImportMode,
    ) -> Result<ImportStats, StorageError> {
        Tsdb::import_samples(self, labels, samples, mode)
    }
}
