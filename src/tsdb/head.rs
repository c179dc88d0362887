//! The head: the in-memory part of the TSDB. One compact [`MemSeries`] per series id
//! (labels stay in the index, only their hash is kept here) with its open XOR chunk and
//! its WAL encoder state. Appending enforces Prometheus's ordering rules and cuts a
//! chunk at [`SAMPLES_PER_CHUNK`] samples or at a block boundary, handing the sealed
//! chunk back to the caller to persist.

use super::chunkenc::{SAMPLES_PER_CHUNK, XorAppender, new_chunk};
use super::codec::U64Map;
use super::wal::{RecordBuilder, WalCursor};
use crate::storage::AppendError;

/// One series in memory.
#[derive(Debug)]
pub struct MemSeries {
    /// The open chunk's bytes (header included); empty when there is no open chunk.
    pub chunk: Vec<u8>,
    /// The open chunk's appender; its last sample is `wal.t`/`wal.v`.
    pub xor: XorAppender,
    pub chunk_min_t: i64,
    /// Earliest sample time known for the series (`i64::MAX` when none).
    pub min_t: i64,
    /// WAL encoder state; `wal.t`/`wal.v` are the series' last sample (the open chunk's
    /// last one too: kept once, 16 bytes a series).
    pub wal: WalCursor,
    /// The WAL segment `wal` is valid for.
    pub wal_seg: u32,
    /// The WAL segment holding the open chunk's first sample.
    pub head_seg: u32,
}

impl Default for MemSeries {
    fn default() -> Self {
        MemSeries {
            chunk: Vec::new(),
            xor: XorAppender::default(),
            chunk_min_t: i64::MAX,
            min_t: i64::MAX,
            wal: WalCursor::default(),
            wal_seg: u32::MAX,
            head_seg: u32::MAX,
        }
    }
}

/// A chunk cut from the head, to be written to the `chunks` tree.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    pub id: u64,
    pub min_t: i64,
    pub max_t: i64,
    pub last_v: u64,
    pub series_min_t: i64,
    pub bytes: Vec<u8>,
    /// The WAL segment of the chunk's first sample (the WAL keeps it until sled has it).
    pub seg: u32,
}

/// What an accepted append did.
#[derive(Debug)]
pub enum Appended {
    /// Stored; a chunk may have been sealed to make room.
    Stored(Option<SealedChunk>),
    /// Same timestamp and value as the last sample: ignored, as Prometheus does.
    Duplicate,
}

/// Start of the block holding `t`.
pub fn block_of(t: i64, block_range: i64) -> i64 {
    t.div_euclid(block_range) * block_range
}

impl MemSeries {
    pub fn has_samples(&self) -> bool {
        self.min_t != i64::MAX
    }

    pub fn last_t(&self) -> i64 {
        self.wal.t
    }

    pub fn open_samples(&self) -> u16 {
        self.xor.num
    }

    /// Checks `(t, v)` against the last sample `(last_t, last_v)` (Prometheus 2.42 rules,
    /// no out-of-order window). `Ok(true)` means an exact duplicate to ignore.
    pub fn check(last_t: i64, last_v: u64, t: i64, v: f64) -> Result<bool, AppendError> {
        if last_t == i64::MIN {
            return Ok(false);
        }
        if t < last_t {
            return Err(AppendError::OutOfOrder);
        }
        if t == last_t {
            return if v.to_bits() == last_v {
                Ok(true)
            } else {
                Err(AppendError::DuplicateTimestamp)
            };
        }
        Ok(false)
    }

    /// Appends to the open chunk, sealing it first when it is full or `t` is in a later
    /// block, and records the sample as the series' last: encoded into `wal` (a commit;
    /// the cursor restarts at every new segment `seg`), or just kept (WAL replay, `None`).
    pub fn append(
        &mut self,
        id: u64,
        t: i64,
        v: f64,
        block_range: i64,
        seg: u32,
        wal: Option<&mut RecordBuilder>,
    ) -> Result<Appended, AppendError> {
        let (last_t, last_v) = (self.wal.t, self.wal.v);
        if Self::check(last_t, last_v, t, v)? {
            return Ok(Appended::Duplicate);
        }
        let mut sealed = None;
        if self.xor.num > 0
            && (self.xor.num >= SAMPLES_PER_CHUNK
                || block_of(t, block_range) != block_of(self.chunk_min_t, block_range))
        {
            sealed = Some(self.seal(id));
        }
        if self.xor.num == 0 {
            self.chunk = new_chunk();
            self.chunk_min_t = t;
            self.head_seg = seg;
        }
        self.xor.append(&mut self.chunk, (last_t, last_v), t, v);
        self.min_t = self.min_t.min(t);
        match wal {
            Some(rb) => {
                if self.wal_seg != seg {
                    self.wal.reset();
                    self.wal_seg = seg;
                }
                rb.push(id, &mut self.wal, t, v);
            }
            None => {
                self.wal.t = t;
                self.wal.v = v.to_bits();
            }
        }
        Ok(Appended::Stored(sealed))
    }

    /// Cuts the open chunk (which must hold samples).
    pub fn seal(&mut self, id: u64) -> SealedChunk {
        let mut bytes = std::mem::take(&mut self.chunk);
        bytes.shrink_to_fit();
        let c = SealedChunk {
            id,
            min_t: self.chunk_min_t,
            max_t: self.wal.t,
            last_v: self.wal.v,
            series_min_t: self.min_t,
            bytes,
            seg: self.head_seg,
        };
        // `wal` keeps the last sample for ordering checks; the chunk is gone.
        self.xor = XorAppender::default();
        self.chunk_min_t = i64::MAX;
        self.head_seg = u32::MAX;
        c
    }
}

/// All series in memory, indexed by id, plus the labels-hash lookup.
#[derive(Default)]
pub struct Head {
    /// Indexed by series id (ids are dense, starting at 1).
    pub series: Vec<Option<MemSeries>>,
    /// Labels stable hash → id; ids sharing a hash go to `collisions`.
    pub by_hash: U64Map<u64>,
    pub collisions: U64Map<Vec<u64>>,
    pub num_series: usize,
    /// Highest sample time appended (`i64::MIN` when none).
    pub max_t: i64,
}

impl Head {
    pub fn new() -> Head {
        Head {
            max_t: i64::MIN,
            ..Head::default()
        }
    }

    pub fn get(&self, id: u64) -> Option<&MemSeries> {
        self.series.get(usize::try_from(id).ok()?)?.as_ref()
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut MemSeries> {
        self.series.get_mut(usize::try_from(id).ok()?)?.as_mut()
    }

    /// Registers a series id with its labels hash.
    pub fn insert(&mut self, id: u64, hash: u64) {
        let Ok(i) = usize::try_from(id) else { return };
        if self.series.len() <= i {
            // Grow by ~1/8 rather than doubling: MemSeries is the bulk of head memory.
            let need = i + 1 - self.series.len();
            if self.series.capacity() < i + 1 {
                self.series
                    .reserve_exact(need.max(self.series.len() / 8).max(1024));
            }
            self.series.resize_with(i + 1, || None);
        }
        if self.series[i].is_none() {
            self.num_series += 1;
        }
        self.series[i] = Some(MemSeries::default());
        match self.by_hash.get(&hash) {
            None => {
                self.by_hash.insert(hash, id);
            }
            Some(&other) if other != id => self.collisions.entry(hash).or_default().push(id),
            Some(_) => {}
        }
    }

    /// Estimated heap and inline bytes of the head.
    pub fn bytes(&self) -> u64 {
        let slots = self.series.capacity() * std::mem::size_of::<Option<MemSeries>>();
        let chunks: usize = self
            .series
            .iter()
            .flatten()
            .map(|s| s.chunk.capacity())
            .sum();
        let map = self.by_hash.capacity() * (std::mem::size_of::<(u64, u64)>() + 1);
        (slots + chunks + map) as u64
    }

    /// Ids whose labels hash to `hash` (usually one).
    pub fn ids_for_hash(&self, hash: u64) -> impl Iterator<Item = u64> + '_ {
        self.by_hash
            .get(&hash)
            .copied()
            .into_iter()
            .chain(self.collisions.get(&hash).into_iter().flatten().copied())
    }

    /// The minimum time a new sample may have (Prometheus: head max time minus half a
    /// block range).
    pub fn min_valid_time(&self, block_range: i64) -> i64 {
        if self.max_t == i64::MIN {
            i64::MIN
        } else {
            self.max_t.saturating_sub(block_range / 2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: i64 = 7_200_000;

    #[test]
    fn ordering_rules_follow_prometheus() {
        let mut s = MemSeries::default();
        assert!(matches!(
            s.append(1, 1000, 1.0, R, 0, None),
            Ok(Appended::Stored(None))
        ));
        assert_eq!(
            s.append(1, 999, 1.0, R, 0, None).unwrap_err(),
            AppendError::OutOfOrder
        );
        assert_eq!(
            s.append(1, 1000, 2.0, R, 0, None).unwrap_err(),
            AppendError::DuplicateTimestamp
        );
        assert!(matches!(
            s.append(1, 1000, 1.0, R, 0, None),
            Ok(Appended::Duplicate)
        ));
        // A stale marker at the same timestamp is a different value.
        let stale = crate::model::stale_nan();
        assert_eq!(
            s.append(1, 1000, stale, R, 0, None).unwrap_err(),
            AppendError::DuplicateTimestamp
        );
        assert!(matches!(
            s.append(1, 2000, stale, R, 0, None),
            Ok(Appended::Stored(None))
        ));
        assert!(matches!(
            s.append(1, 2000, stale, R, 0, None),
            Ok(Appended::Duplicate)
        ));
    }

    #[test]
    fn a_series_costs_at_most_104_bytes_in_the_table() {
        // The head's series table is the largest per-series structure: keep it tight
        // (the last sample is kept once, in the WAL cursor).
        assert!(std::mem::size_of::<Option<MemSeries>>() <= 104);
    }

    #[test]
    fn seals_at_120_samples_and_at_block_boundaries() {
        let mut s = MemSeries::default();
        let mut sealed = Vec::new();
        for i in 0..250 {
            if let Appended::Stored(Some(c)) = s.append(7, i * 1000, i as f64, R, 0, None).unwrap()
            {
                sealed.push(c);
            }
        }
        assert_eq!(sealed.len(), 2);
        assert_eq!((sealed[0].min_t, sealed[0].max_t), (0, 119_000));
        assert_eq!(s.open_samples(), 10);
        if let Appended::Stored(Some(c)) = s.append(7, R + 5, 1.0, R, 0, None).unwrap() {
            assert_eq!((c.min_t, c.max_t), (240_000, 249_000));
        } else {
            panic!("block boundary did not seal");
        }
        assert_eq!(s.chunk_min_t, R + 5);
        // After a seal the last sample still guards ordering.
        let c = s.seal(7);
        assert_eq!(c.max_t, R + 5);
        assert_eq!(
            s.append(7, R, 1.0, R, 0, None).unwrap_err(),
            AppendError::OutOfOrder
        );
    }
}
