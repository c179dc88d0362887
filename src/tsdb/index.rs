//! The series index, held in memory with interned strings and persisted in the sled
//! tree `series`.
//!
//! Every label name and value is a *symbol*: a `u32` id into one symbol table, so a
//! series' labels are a run of `(name, value)` symbol pairs in one shared arena (no
//! per-label allocation) and postings are keyed by symbols. Queries, label APIs and
//! series lookups never read sled.
//!
//! Persistence: new symbols and series are encoded into a pending buffer and written as
//! one sled value per flush ([`Index::flush_pending`], called by the WAL flush before the
//! WAL buffer, so a WAL record never refers to a series that is not on disk). Key: batch
//! sequence (BE u64). Value: `3 | raw deflate of body` ([`FORMAT_V3`]; `2 | body`,
//! [`FORMAT_V2`], is read too), body:
//! `uvarint first_sym | uvarint nsyms | (uvarint len, bytes)* | uvarint nseries |
//! (uvarint id, uvarint npairs, (uvarint name, uvarint value)*)*`.
//! Symbols are numbered in order of first use; a batch only uses symbols defined in it
//! or before it. Data dirs from the v1 layout (one labels value per series) are refused.
//!
//! Matchers resolve to sorted id lists: `=` through postings, the others by scanning
//! that label's values. Matchers that match the empty string do not narrow the
//! candidates; [`Index::resolve`] checks every candidate against all matchers
//! (`{a=""}` matches series without `a`), evaluating each matcher once per symbol.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use sled::Tree;

use super::codec::{U64Map, get_uvarint, put_uvarint};
use crate::model::{Label, Labels, MatchOp, Matcher};
use crate::storage::StorageError;

/// Version byte of the `series` tree's values (uncompressed body).
pub const FORMAT_V2: u8 = 2;
/// Version byte of a `series` value whose v2 body is deflated (what is written).
pub const FORMAT_V3: u8 = 3;

pub(crate) fn sled_err(what: &str, e: sled::Error) -> StorageError {
    StorageError(format!("tsdb: {what}: {e}"))
}

/// name symbol → value symbol → sorted series ids.
type Postings = U64Map<U64Map<Vec<u32>>>;

#[derive(Default)]
struct State {
    syms: Vec<Arc<str>>,
    sym_ids: HashMap<Arc<str>, u32>,
    /// `offs[id]` is where series `id`'s pairs start in `arena`; they end at
    /// `offs[id + 1]` (or the arena's end). An empty range means "no such series".
    offs: Vec<u32>,
    arena: Vec<u32>,
    postings: Postings,
    /// Rank of every symbol in string order, for sorting; rebuilt when symbols grow.
    ranks: Arc<Vec<u32>>,
}

impl State {
    fn pairs(&self, id: u64) -> &[u32] {
        let Ok(i) = usize::try_from(id) else {
            return &[];
        };
        let Some(&start) = self.offs.get(i) else {
            return &[];
        };
        let end = self
            .offs
            .get(i + 1)
            .map_or(self.arena.len(), |&e| e as usize);
        self.arena.get(start as usize..end).unwrap_or(&[])
    }

    fn sym(&self, s: u32) -> &str {
        self.syms.get(s as usize).map_or("", |s| s)
    }

    fn labels(&self, pairs: &[u32]) -> Labels {
        let mut out = Vec::with_capacity(pairs.len() / 2);
        for p in pairs.chunks_exact(2) {
            out.push(Label {
                name: self.sym(p[0]).to_string(),
                value: self.sym(p[1]).to_string(),
            });
        }
        Labels::from_sorted(out)
    }

    /// Interns `s`; returns its id and whether it is new.
    fn intern(&mut self, s: &str) -> Result<(u32, bool), StorageError> {
        if let Some(&id) = self.sym_ids.get(s) {
            return Ok((id, false));
        }
        let id = u32::try_from(self.syms.len())
            .map_err(|_| StorageError("tsdb: symbol table full".into()))?;
        let a: Arc<str> = Arc::from(s);
        self.syms.push(a.clone());
        self.sym_ids.insert(a, id);
        Ok((id, true))
    }

    /// Adds series `id` (greater than every id added before) with its symbol pairs.
    fn push_series(&mut self, id: u64, pairs: &[u32]) -> Result<(), StorageError> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i >= self.offs.len() && u32::try_from(i).is_ok())
            .ok_or_else(|| StorageError(format!("tsdb: series id {id} out of order")))?;
        let end = u32::try_from(self.arena.len() + pairs.len())
            .map_err(|_| StorageError("tsdb: series index full".into()))?;
        let start = self.arena.len() as u32;
        while self.offs.len() < i {
            self.offs.push(start);
        }
        // Grow by ~1/8 rather than doubling: the arena is most of the index's memory.
        if self.arena.capacity() - self.arena.len() < pairs.len() {
            self.arena
                .reserve_exact((self.arena.len() / 8).max(pairs.len()).max(4096));
        }
        if self.offs.capacity() == self.offs.len() {
            self.offs.reserve_exact((self.offs.len() / 8).max(1024));
        }
        self.offs.push(start);
        self.arena.extend_from_slice(pairs);
        debug_assert_eq!(self.arena.len(), end as usize);
        for p in pairs.chunks_exact(2) {
            let list = self
                .postings
                .entry(u64::from(p[0]))
                .or_default()
                .entry(u64::from(p[1]))
                .or_default();
            list.push(i as u32);
        }
        Ok(())
    }

    fn ranks(&mut self) -> Arc<Vec<u32>> {
        if self.ranks.len() != self.syms.len() {
            let mut order: Vec<u32> = (0..self.syms.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| self.syms[a as usize].cmp(&self.syms[b as usize]));
            let mut ranks = vec![0u32; order.len()];
            for (r, &s) in order.iter().enumerate() {
                ranks[s as usize] = r as u32;
            }
            self.ranks = Arc::new(ranks);
        }
        self.ranks.clone()
    }
}

/// New symbols and series not yet written to sled.
#[derive(Default)]
struct Pending {
    first_sym: u32,
    nsyms: u64,
    syms: Vec<u8>,
    nseries: u64,
    series: Vec<u8>,
    /// Key of the next batch.
    seq: u64,
}

pub struct Index {
    tree: Tree,
    st: RwLock<State>,
    pending: Mutex<Pending>,
    /// Corrupt records skipped by [`Index::open`]: batches, and series naming a label
    /// name or value of a skipped batch.
    pub skipped_at_open: u64,
    /// Keys of the series batches [`Index::open`] skipped, with why.
    pub corrupt_batches: Vec<(u64, String)>,
}

/// One matcher prepared for symbol-level evaluation.
struct Prepared<'a> {
    m: &'a Matcher,
    name: Option<u32>,
    /// Per value symbol: 0 unknown, 1 match, 2 no match.
    cache: Vec<u8>,
    empty: bool,
}

/// A series batch, parsed and checked before anything of it is applied.
struct Batch {
    first: u64,
    syms: Vec<String>,
    /// `(id, symbol pairs)`.
    series: Vec<(u64, Vec<u32>)>,
}

/// Largest step between consecutive series ids a batch may take (ids are dense; a gap
/// is series lost with an unflushed batch). A corrupt id beyond it is refused rather
/// than sized into memory.
const MAX_ID_GAP: u64 = 1 << 24;

/// Parses a series batch against the symbols and ids loaded so far.
fn parse_batch(st: &State, v: &[u8]) -> Result<Batch, String> {
    let inflated;
    let v: &[u8] = match v.first() {
        Some(&FORMAT_V2) => &v[1..],
        Some(&FORMAT_V3) => {
            inflated = super::codec::inflate(&v[1..])?;
            &inflated
        }
        Some(&1) => {
            return Err(
                "series index is in the v1 format (one labels value per series), \
                 which this shoal no longer reads; remove the data dir or run an older shoal"
                    .into(),
            );
        }
        b => return Err(format!("series batch: unknown format version {b:?}")),
    };
    let mut pos = 0;
    let next = |pos: &mut usize| get_uvarint(v, pos).ok_or("series batch: truncated");
    let first = next(&mut pos)?;
    let nsyms = next(&mut pos)?;
    let mut syms = Vec::new();
    for _ in 0..nsyms {
        let len = next(&mut pos)? as usize;
        let end = pos.checked_add(len).ok_or("series batch: bad length")?;
        let s = v.get(pos..end).ok_or("series batch: truncated symbol")?;
        let s = std::str::from_utf8(s).map_err(|e| format!("series batch: {e}"))?;
        pos = end;
        syms.push(s.to_owned());
    }
    let known = first.saturating_add(syms.len() as u64);
    let nseries = next(&mut pos)?;
    let mut series = Vec::new();
    let mut last = st.offs.len() as u64;
    for _ in 0..nseries {
        let id = next(&mut pos)?;
        if id < last || id > last.saturating_add(MAX_ID_GAP) {
            return Err(format!("series batch: series id {id} out of order"));
        }
        last = id + 1;
        let n = next(&mut pos)?;
        if n > 1024 {
            return Err(format!("series {id}: {n} labels"));
        }
        let mut pairs = Vec::with_capacity(n as usize * 2);
        for _ in 0..n * 2 {
            let s = next(&mut pos)?;
            if s >= known {
                return Err(format!("series {id}: unknown symbol {s}"));
            }
            pairs.push(s as u32);
        }
        series.push((id, pairs));
    }
    if pos != v.len() {
        return Err("series batch: trailing bytes".into());
    }
    Ok(Batch {
        first,
        syms,
        series,
    })
}

/// Applies a parsed batch. `lost` are symbols of batches skipped as corrupt: a series
/// naming one is skipped too (its labels are unknown). Returns the series skipped.
fn apply_batch(
    st: &mut State,
    b: Batch,
    lost: &[std::ops::Range<u32>],
    ids: &mut Vec<(u64, u64)>,
) -> Result<u64, String> {
    if b.first != st.syms.len() as u64 {
        return Err(format!(
            "series batch: symbols start at {}, expected {}",
            b.first,
            st.syms.len()
        ));
    }
    for s in &b.syms {
        let (_, new) = st.intern(s).map_err(|e| e.0)?;
        if !new {
            return Err(format!("series batch: duplicate symbol {s:?}"));
        }
    }
    let mut skipped = 0;
    for (id, pairs) in b.series {
        if pairs.iter().any(|s| lost.iter().any(|r| r.contains(s))) {
            skipped += 1;
            continue;
        }
        st.push_series(id, &pairs).map_err(|e| e.0)?;
        ids.push((id, st.labels(&pairs).stable_hash()));
    }
    Ok(skipped)
}

/// The entries of `ids` whose series match every matcher: `(position in ids, pairs)`.
fn filter<'s>(st: &'s State, ids: &[u64], matchers: &[Matcher]) -> Vec<(usize, &'s [u32])> {
    let mut prep: Vec<Prepared> = matchers
        .iter()
        .map(|m| Prepared {
            m,
            name: st.sym_ids.get(m.name.as_str()).copied(),
            cache: Vec::new(),
            empty: m.matches(""),
        })
        .collect();
    let mut keep: Vec<(usize, &[u32])> = Vec::with_capacity(ids.len());
    'series: for (pos, &id) in ids.iter().enumerate() {
        let pairs = st.pairs(id);
        if pairs.is_empty() {
            continue;
        }
        for p in prep.iter_mut() {
            let value = p
                .name
                .and_then(|n| pairs.chunks_exact(2).find(|q| q[0] == n).map(|q| q[1]));
            let ok = match value {
                None => p.empty,
                Some(v) => {
                    if p.cache.is_empty() {
                        p.cache = vec![0; st.syms.len()];
                    }
                    match p.cache.get(v as usize).copied() {
                        Some(1) => true,
                        Some(2) => false,
                        _ => {
                            let ok = p.m.matches(st.sym(v));
                            if let Some(c) = p.cache.get_mut(v as usize) {
                                *c = if ok { 1 } else { 2 };
                            }
                            ok
                        }
                    }
                }
            };
            if !ok {
                continue 'series;
            }
        }
        keep.push((pos, pairs));
    }
    keep
}

impl Index {
    /// Opens the index and loads it into memory. Returns every `(id, labels hash)`.
    pub fn open(db: &sled::Db) -> Result<(Index, Vec<(u64, u64)>), StorageError> {
        let tree = db
            .open_tree("series")
            .map_err(|e| sled_err("open tree", e))?;
        let mut st = State {
            offs: vec![0],
            ..State::default()
        };
        let mut ids = Vec::new();
        let mut seq = 0u64;
        let mut lost: Vec<std::ops::Range<u32>> = Vec::new();
        let mut corrupt_batches = Vec::new();
        let mut skipped = 0u64;
        for r in tree.iter() {
            let (k, v) = r.map_err(|e| sled_err("scan series", e))?;
            let Some(key) = super::codec::bytes8(&k, 0).map(u64::from_be_bytes) else {
                tracing::warn!(key = ?k, "tsdb: series tree key of the wrong size skipped");
                skipped += 1;
                continue;
            };
            seq = seq.max(key.saturating_add(1));
            let res = parse_batch(&st, &v).and_then(|b| {
                // After a skipped batch, stand in for its symbols (the next batch says
                // where its own start); series naming them are skipped.
                let have = st.syms.len() as u64;
                // (A gap is a batch that is missing: quarantined, or lost.)
                if b.first > have && b.first - have <= MAX_ID_GAP {
                    let from = have as u32;
                    for n in have..b.first {
                        st.intern(&format!("\u{0}lost symbol {n}"))
                            .map_err(|e| e.0)?;
                    }
                    lost.push(from..b.first as u32);
                }
                apply_batch(&mut st, b, &lost, &mut ids)
            });
            match res {
                Ok(n) => skipped += n,
                Err(e) if e.contains("v1 format") => {
                    return Err(StorageError(format!("tsdb: series batch {key}: {e}")));
                }
                Err(e) => {
                    tracing::warn!(batch = key, error = %e, "tsdb: corrupt series batch skipped; its series (and later series naming its label values) are lost (`shoal tsdb check`)");
                    skipped += 1;
                    corrupt_batches.push((key, e));
                    if lost.is_empty()
                        || lost.last().is_some_and(|r| r.end as usize != st.syms.len())
                    {
                        let at = st.syms.len() as u32;
                        lost.push(at..at);
                    }
                }
            }
        }
        let pending = Pending {
            first_sym: st.syms.len() as u32,
            seq,
            ..Pending::default()
        };
        Ok((
            Index {
                tree,
                st: RwLock::new(st),
                pending: Mutex::new(pending),
                skipped_at_open: skipped,
                corrupt_batches,
            },
            ids,
        ))
    }

    /// Adds a new series in memory and queues it for [`Index::flush_pending`]. Ids
    /// must be added in increasing order.
    pub fn add_series(&self, id: u64, labels: &Labels) -> Result<(), StorageError> {
        let mut st = self.st.write();
        let mut p = self.pending.lock();
        let mut pairs = Vec::with_capacity(labels.len() * 2);
        for l in labels {
            for s in [&l.name, &l.value] {
                let (sym, new) = st.intern(s)?;
                if new {
                    if p.nsyms == 0 {
                        p.first_sym = sym;
                    }
                    p.nsyms += 1;
                    put_uvarint(&mut p.syms, s.len() as u64);
                    p.syms.extend_from_slice(s.as_bytes());
                }
                pairs.push(sym);
            }
        }
        st.push_series(id, &pairs)?;
        p.nseries += 1;
        put_uvarint(&mut p.series, id);
        put_uvarint(&mut p.series, labels.len() as u64);
        for s in pairs {
            put_uvarint(&mut p.series, u64::from(s));
        }
        Ok(())
    }

    /// Writes the queued symbols and series as one sled value (not fsynced). Returns
    /// whether there was anything to write.
    pub fn flush_pending(&self) -> Result<bool, StorageError> {
        let mut p = self.pending.lock();
        if p.nseries == 0 && p.nsyms == 0 {
            return Ok(false);
        }
        let mut body = Vec::with_capacity(p.syms.len() + p.series.len() + 24);
        put_uvarint(&mut body, u64::from(p.first_sym));
        put_uvarint(&mut body, p.nsyms);
        body.extend_from_slice(&p.syms);
        put_uvarint(&mut body, p.nseries);
        body.extend_from_slice(&p.series);
        let v = super::codec::deflate(FORMAT_V3, &body);
        self.tree
            .insert(p.seq.to_be_bytes(), v)
            .map_err(|e| sled_err("write series", e))?;
        p.seq += 1;
        p.first_sym = p.first_sym.saturating_add(p.nsyms as u32);
        p.nsyms = 0;
        p.nseries = 0;
        p.syms = Vec::new();
        p.series = Vec::new();
        Ok(true)
    }

    /// Whether series `id` has exactly these labels.
    pub fn has_labels(&self, id: u64, labels: &Labels) -> Result<bool, StorageError> {
        let st = self.st.read();
        let pairs = st.pairs(id);
        Ok(pairs.len() == labels.len() * 2
            && pairs
                .chunks_exact(2)
                .zip(labels.iter())
                .all(|(p, l)| st.sym(p[0]) == l.name && st.sym(p[1]) == l.value))
    }

    pub fn labels(&self, id: u64) -> Result<Option<Labels>, StorageError> {
        let st = self.st.read();
        let pairs = st.pairs(id);
        Ok((!pairs.is_empty()).then(|| st.labels(pairs)))
    }

    /// Every series id (ascending).
    pub fn all_ids(&self) -> Result<Vec<u64>, StorageError> {
        let st = self.st.read();
        Ok((1..st.offs.len() as u64)
            .filter(|&id| !st.pairs(id).is_empty())
            .collect())
    }

    /// The entries of `ids` whose series match every matcher with their stable label
    /// hashes ([`Labels::stable_hash`], computed without building the labels):
    /// `(position in ids, hash)`, in the order of `ids`.
    pub fn hashes(
        &self,
        ids: &[u64],
        matchers: &[Matcher],
    ) -> Result<Vec<(usize, u64)>, StorageError> {
        let st = self.st.read();
        let mut buf = Vec::with_capacity(256);
        Ok(filter(&st, ids, matchers)
            .into_iter()
            .map(|(pos, pairs)| {
                buf.clear();
                for p in pairs.chunks_exact(2) {
                    buf.extend_from_slice(st.sym(p[0]).as_bytes());
                    buf.push(0xff);
                    buf.extend_from_slice(st.sym(p[1]).as_bytes());
                    buf.push(0xff);
                }
                (pos, xxhash_rust::xxh3::xxh3_64(&buf))
            })
            .collect())
    }

    /// Keeps the entries of `ids` whose series match every matcher, sorted by labels,
    /// with their labels: `(position in ids, labels)`.
    pub fn resolve(
        &self,
        ids: &[u64],
        matchers: &[Matcher],
    ) -> Result<Vec<(usize, Labels)>, StorageError> {
        let ranks = self.st.write().ranks();
        let st = self.st.read();
        let mut keep = filter(&st, ids, matchers);
        let rank = |s: u32| ranks.get(s as usize).copied().unwrap_or(u32::MAX);
        let full = |a: &(usize, &[u32]), b: &(usize, &[u32])| {
            for (x, y) in a.1.iter().zip(b.1) {
                match rank(*x).cmp(&rank(*y)) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            a.1.len().cmp(&b.1.len()).then(a.0.cmp(&b.0))
        };
        if ranks.len() >= (1 << 21) - 1 || keep.len() < 64 {
            keep.sort_unstable_by(full);
        } else {
            // Sort by a packed key of the three symbols after the prefix all series
            // share (ranks + 1; 0 = absent, so shorter sorts first), then order the
            // runs of equal keys by full comparison.
            let first = keep.first().map_or(&[][..], |k| k.1);
            let mut common = first.len();
            for k in &keep {
                common = common.min(k.1.iter().zip(first).take_while(|(a, b)| a == b).count());
            }
            let key = |p: &[u32]| {
                (0..3).fold(0u64, |k, i| {
                    let r = p.get(common + i).map_or(0, |&s| u64::from(rank(s)) + 1);
                    (k << 21) | r
                })
            };
            let mut keyed: Vec<(u64, u32)> = keep
                .iter()
                .enumerate()
                .map(|(i, k)| (key(k.1), i as u32))
                .collect();
            keyed.sort_unstable();
            let mut sorted = Vec::with_capacity(keep.len());
            let mut i = 0;
            while i < keyed.len() {
                let mut j = i + 1;
                while j < keyed.len() && keyed[j].0 == keyed[i].0 {
                    j += 1;
                }
                let start = sorted.len();
                sorted.extend(keyed[i..j].iter().map(|&(_, n)| keep[n as usize]));
                if j - i > 1 {
                    sorted[start..].sort_unstable_by(full);
                }
                i = j;
            }
            keep = sorted;
        }
        let st: &State = &st;
        let build = |part: &[(usize, &[u32])]| -> Vec<(usize, Labels)> {
            part.iter()
                .map(|&(pos, pairs)| (pos, st.labels(pairs)))
                .collect()
        };
        if keep.len() < super::PARALLEL_MIN {
            return Ok(build(&keep));
        }
        // Building label strings is most of the cost: split it over two threads.
        let (a, b) = keep.split_at(keep.len() / 2);
        let (mut out, rb) = std::thread::scope(|sc| {
            let hb = sc.spawn(|| build(b));
            (build(a), hb.join())
        });
        out.extend(rb.map_err(|_| StorageError("tsdb: query thread panicked".into()))?);
        Ok(out)
    }

    /// The entries of `ids` (every series when `None`) whose series match every
    /// matcher, in their order: a select counts the samples of matching series only.
    pub fn filter_ids(
        &self,
        ids: Option<Vec<u64>>,
        matchers: &[Matcher],
    ) -> Result<Vec<u64>, StorageError> {
        let st = self.st.read();
        let ids = ids.unwrap_or_else(|| (0..st.offs.len() as u64).collect());
        Ok(filter(&st, &ids, matchers)
            .into_iter()
            .filter_map(|(pos, _)| ids.get(pos).copied())
            .collect())
    }

    /// Sorted ids of series with `name="value"`.
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>, StorageError> {
        let st = self.st.read();
        let (Some(&n), Some(&v)) = (st.sym_ids.get(name), st.sym_ids.get(value)) else {
            return Ok(Vec::new());
        };
        Ok(st
            .postings
            .get(&u64::from(n))
            .and_then(|vs| vs.get(&u64::from(v)))
            .map(|l| l.iter().map(|&i| u64::from(i)).collect())
            .unwrap_or_default())
    }

    /// Sorted distinct values of label `name`.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, StorageError> {
        let st = self.st.read();
        let Some(&n) = st.sym_ids.get(name) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<String> = st
            .postings
            .get(&u64::from(n))
            .into_iter()
            .flat_map(|vs| vs.keys())
            .map(|&v| st.sym(v as u32).to_string())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Sorted distinct label names.
    pub fn label_names(&self) -> Result<Vec<String>, StorageError> {
        let st = self.st.read();
        let mut out: Vec<String> = st
            .postings
            .keys()
            .map(|&n| st.sym(n as u32).to_string())
            .collect();
        out.sort();
        Ok(out)
    }

    /// Estimated bytes held by the index in memory.
    pub fn bytes(&self) -> u64 {
        let st = self.st.read();
        let syms: usize = st.syms.iter().map(|s| s.len() + 16 + 48).sum();
        let postings: usize = st
            .postings
            .values()
            .map(|vs| vs.values().map(|l| l.capacity() * 4 + 40).sum::<usize>())
            .sum();
        (syms + st.offs.capacity() * 4 + st.arena.capacity() * 4 + postings) as u64
    }

    /// Sorted candidate ids for `matchers`, or `None` when no matcher narrows them (all
    /// series are candidates). The caller still checks labels against all matchers.
    pub fn candidates(&self, matchers: &[Matcher]) -> Result<Option<Vec<u64>>, StorageError> {
        let st = self.st.read();
        let mut result: Option<Vec<u32>> = None;
        // Equality matchers first: they are the cheapest and most selective.
        let mut order: Vec<&Matcher> = matchers.iter().filter(|m| !m.matches_empty()).collect();
        order.sort_by_key(|m| m.op != MatchOp::Equal);
        for m in order {
            let values = st
                .sym_ids
                .get(m.name.as_str())
                .and_then(|n| st.postings.get(&u64::from(*n)));
            let ids: Vec<u32> = match m.op {
                MatchOp::Equal => st
                    .sym_ids
                    .get(m.value.as_str())
                    .and_then(|v| values.and_then(|vs| vs.get(&u64::from(*v))))
                    .cloned()
                    .unwrap_or_default(),
                _ => {
                    let mut ids = Vec::new();
                    for (v, list) in values.into_iter().flatten() {
                        if m.matches(st.sym(*v as u32)) {
                            ids.extend_from_slice(list);
                        }
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                }
            };
            let next = match result {
                None => ids,
                Some(prev) => intersect(&prev, &ids),
            };
            if next.is_empty() {
                return Ok(Some(Vec::new()));
            }
            result = Some(next);
        }
        Ok(result.map(|r| r.into_iter().map(u64::from).collect()))
    }
}

/// Intersection of two sorted id lists.
pub fn intersect<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERIES: [&[(&str, &str)]; 4] = [
        &[("__name__", "up"), ("job", "a"), ("instance", "1")],
        &[("__name__", "up"), ("job", "b"), ("instance", "2")],
        &[("__name__", "up"), ("job", "a\0x")],
        &[("__name__", "down"), ("job", "a")],
    ];

    fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        for (i, s) in SERIES.iter().enumerate() {
            idx.add_series(i as u64 + 1, &Labels::from_pairs(s))
                .unwrap();
        }
        (dir, idx)
    }

    fn select(idx: &Index, ms: &[Matcher]) -> Vec<u64> {
        let cands = idx
            .candidates(ms)
            .unwrap()
            .unwrap_or_else(|| idx.all_ids().unwrap());
        let mut out: Vec<u64> = idx
            .resolve(&cands, ms)
            .unwrap()
            .into_iter()
            .map(|(pos, l)| {
                assert_eq!(idx.labels(cands[pos]).unwrap().unwrap(), l);
                cands[pos]
            })
            .collect();
        out.sort();
        out
    }

    fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
        Matcher::new(op, n, v).unwrap()
    }

    #[test]
    fn matcher_semantics() {
        let (_d, idx) = index();
        assert_eq!(select(&idx, &[m(MatchOp::Equal, "job", "a")]), vec![1, 4]);
        assert_eq!(
            select(
                &idx,
                &[
                    m(MatchOp::Equal, "__name__", "up"),
                    m(MatchOp::NotEqual, "job", "a")
                ]
            ),
            vec![2, 3]
        );
        assert_eq!(
            select(&idx, &[m(MatchOp::Regex, "job", "a.*")]),
            vec![1, 3, 4]
        );
        assert_eq!(select(&idx, &[m(MatchOp::NotRegex, "job", "a.*")]), vec![2]);
        // Empty-matching matchers: {instance=""} is "no instance label".
        assert_eq!(
            select(&idx, &[m(MatchOp::Equal, "instance", "")]),
            vec![3, 4]
        );
        assert_eq!(
            select(&idx, &[m(MatchOp::NotEqual, "instance", "")]),
            vec![1, 2]
        );
        assert_eq!(
            select(&idx, &[m(MatchOp::Regex, "instance", "1|")]),
            vec![1, 3, 4]
        );
        assert_eq!(
            select(&idx, &[m(MatchOp::NotRegex, "instance", ".+")]),
            vec![3, 4]
        );
        assert_eq!(
            select(&idx, &[m(MatchOp::Equal, "nope", "x")]),
            Vec::<u64>::new()
        );
        // A value that exists only as a label name is no match.
        assert_eq!(
            select(&idx, &[m(MatchOp::Equal, "job", "instance")]),
            Vec::<u64>::new()
        );
        assert!(
            idx.candidates(&[m(MatchOp::NotEqual, "job", "a")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn resolve_sorts_by_labels() {
        let (_d, idx) = index();
        let ids = idx.all_ids().unwrap();
        let got: Vec<Labels> = idx
            .resolve(&ids, &[])
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let mut want: Vec<Labels> = SERIES.iter().map(|s| Labels::from_pairs(s)).collect();
        want.sort();
        assert_eq!(got, want);
        assert!(idx.has_labels(2, &Labels::from_pairs(SERIES[1])).unwrap());
        assert!(!idx.has_labels(2, &Labels::from_pairs(SERIES[0])).unwrap());
        assert!(!idx.has_labels(9, &Labels::from_pairs(SERIES[0])).unwrap());
    }

    #[test]
    fn resolve_sorts_many_series_like_labels_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        let mut want = Vec::new();
        for i in 1..=500u64 {
            let mut pairs = vec![
                ("__name__", "m".to_string()),
                ("a", format!("{}", i % 7)),
                ("b", format!("{}", (i * 31) % 11)),
            ];
            if i % 3 == 0 {
                pairs.push(("c", format!("{}", i)));
            }
            if i % 5 == 0 {
                pairs.retain(|p| p.0 != "b");
            }
            let l = Labels::from_pairs(&pairs);
            idx.add_series(i, &l).unwrap();
            want.push(l);
        }
        want.sort();
        let ids = idx.all_ids().unwrap();
        let got: Vec<Labels> = idx
            .resolve(&ids, &[])
            .unwrap()
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_and_values_are_sorted_and_distinct() {
        let (_d, idx) = index();
        assert_eq!(
            idx.label_names().unwrap(),
            vec!["__name__", "instance", "job"]
        );
        assert_eq!(idx.label_values("job").unwrap(), vec!["a", "a\0x", "b"]);
        assert_eq!(idx.postings("job", "a").unwrap(), vec![1, 4]);
    }

    #[test]
    fn index_is_reloaded_on_open_from_flushed_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
            let (idx, _) = Index::open(&db).unwrap();
            for (i, s) in SERIES.iter().enumerate() {
                idx.add_series(i as u64 + 1, &Labels::from_pairs(s))
                    .unwrap();
                // Two batches, the second reusing symbols of the first.
                if i == 1 {
                    idx.flush_pending().unwrap();
                }
            }
            idx.add_series(7, &Labels::from_pairs(&[("x", "y")]))
                .unwrap();
            idx.flush_pending().unwrap();
            // Not flushed: lost on reopen.
            idx.add_series(8, &Labels::from_pairs(&[("x", "z")]))
                .unwrap();
            db.flush().unwrap();
        }
        let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
        let (idx, ids) = Index::open(&db).unwrap();
        assert_eq!(
            ids.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 7]
        );
        assert_eq!(ids[0].1, Labels::from_pairs(SERIES[0]).stable_hash());
        assert_eq!(idx.postings("__name__", "up").unwrap(), vec![1, 2, 3]);
        assert_eq!(idx.labels(5).unwrap(), None);
        assert_eq!(
            idx.labels(7).unwrap(),
            Some(Labels::from_pairs(&[("x", "y")]))
        );
        assert_eq!(idx.all_ids().unwrap(), vec![1, 2, 3, 4, 7]);
        // New series continue the symbol numbering.
        idx.add_series(9, &Labels::from_pairs(&[("x", "w"), ("job", "a")]))
            .unwrap();
        idx.flush_pending().unwrap();
        drop(idx);
        let (idx, _) = Index::open(&db).unwrap();
        assert_eq!(idx.postings("job", "a").unwrap(), vec![1, 4, 9]);
    }

    #[test]
    fn old_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
        db.open_tree("series")
            .unwrap()
            .insert(1u64.to_be_bytes(), &[1, 1, 1, b'a', 1, b'b'])
            .unwrap();
        let err = Index::open(&db).err().unwrap();
        assert!(err.0.contains("v1 format"), "{}", err.0);
        db.open_tree("series")
            .unwrap()
            .insert(1u64.to_be_bytes(), &[2, 5])
            .unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        assert_eq!(
            idx.skipped_at_open, 1,
            "a corrupt batch is skipped, not fatal"
        );
    }

    #[test]
    fn a_corrupt_batch_loses_its_series_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::tsdb::open_sled(dir.path(), 1 << 20).unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        // Three batches; the second one's series name a label value only it defines.
        for (id, pairs) in [
            (1, &[("job", "a"), ("x", "1")][..]),
            (2, &[("job", "b"), ("x", "2")][..]),
            (3, &[("job", "a"), ("x", "1"), ("y", "new")][..]),
            (4, &[("job", "b"), ("x", "3")][..]),
        ] {
            idx.add_series(id, &Labels::from_pairs(pairs)).unwrap();
            if id != 3 {
                idx.flush_pending().unwrap();
            }
        }
        drop(idx);
        let tree = db.open_tree("series").unwrap();
        let keys: Vec<_> = tree.iter().keys().map(|k| k.unwrap()).collect();
        assert_eq!(keys.len(), 3);
        let mut bad = tree.get(&keys[1]).unwrap().unwrap().to_vec();
        let n = bad.len();
        bad[n / 2] ^= 0x5a;
        bad.truncate(n - 1);
        tree.insert(&keys[1], bad).unwrap();
        let (idx, ids) = Index::open(&db).unwrap();
        // The batch, and series 4 of the last batch (its `job="b"` was in the lost one).
        assert_eq!(idx.skipped_at_open, 2);
        let got: Vec<u64> = ids.iter().map(|x| x.0).collect();
        assert_eq!(got, vec![1, 3]);
        let three = Labels::from_pairs(&[("job", "a"), ("x", "1"), ("y", "new")]);
        assert_eq!(idx.labels(3).unwrap(), Some(three.clone()));
        // New series still get consistent symbols across a reopen.
        idx.add_series(5, &Labels::from_pairs(&[("job", "c")]))
            .unwrap();
        idx.flush_pending().unwrap();
        drop(idx);
        let (idx, ids) = Index::open(&db).unwrap();
        assert_eq!(ids.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(
            idx.labels(5).unwrap(),
            Some(Labels::from_pairs(&[("job", "c")]))
        );
        assert_eq!(idx.labels(3).unwrap(), Some(three));
    }
}
