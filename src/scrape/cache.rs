//! The storage of the per-target series cache: one 32-byte entry per exposed series,
//! in a vector kept in the order the target exposes its series, plus the entry
//! positions sorted by key.
//!
//! Targets expose their series in the same order scrape after scrape, so a scrape
//! finds nearly every series at the position right after the previous one (one key
//! comparison, no hashing); anything else is a binary search. A hash map of the same
//! entries took ~84 bytes per series (40-byte buckets, half empty at typical sizes);
//! this takes ~34.
//!
//! A scrape walks the cache with a [`Walk`], which builds the next generation of
//! entries beside the current one: a failed scrape drops the walk and leaves the cache
//! as it was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Cache key: a 128-bit hash of the series' raw text as exposed (name and label block).
/// At 128 bits a collision among one target's series is not a practical concern, and
/// the cache stays small (no copy of the text per series). Two `u64`s, not a `u128`:
/// 8-byte alignment keeps an entry at 32 bytes.
pub type Key = [u64; 2];

pub fn key_of(raw: &[u8]) -> Key {
    let h = xxhash_rust::xxh3::xxh3_128(raw);
    [h as u64, (h >> 64) as u64]
}

/// The key is already a good hash: use its first 8 bytes as the table hash (a
/// `[u64; 2]` hashes as its length, then its 16 bytes in one `write`).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            Some(b) => self.0 ^= u64::from_le_bytes(*b),
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
    /// The array's length prefix: the same for every key.
    fn write_usize(&mut self, _: usize) {}
}

pub type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// [`Entry::slot`] of a series metric relabelling dropped.
pub const DROPPED: u64 = u64::MAX;
/// [`Entry::slot`] of a series not in the store yet (its labels are kept aside).
pub const PENDING: u64 = u64::MAX - 1;

/// What the cache knows about one exposed series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    /// The store's ref of the series, or [`DROPPED`] / [`PENDING`].
    pub slot: u64,
    /// Scrape iteration in which the series was last seen (wraps after 2³² scrapes).
    pub last_iter: u32,
    /// Whether the last sample had an explicit timestamp (no staleness tracking then).
    pub explicit_ts: bool,
    /// Whether the series' text passed OpenMetrics's validation (stricter than the
    /// text format's) in a scrape; see `Parser::next_with`.
    pub validated_om: bool,
}

/// All entries of one target.
#[derive(Debug, Default)]
pub struct Entries {
    /// In the order the last successful scrape exposed them, then older ones still kept.
    list: Vec<Entry>,
    /// Positions in `list`, sorted by key.
    by_key: Vec<u32>,
}

impl Entries {
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn position(&self, key: &Key) -> Option<usize> {
        self.by_key
            .binary_search_by(|&p| self.list[p as usize].key.cmp(key))
            .ok()
            .map(|k| self.by_key[k] as usize)
    }
}

const UNSEEN: u32 = u32::MAX;

/// One scrape's pass over the cache.
#[derive(Debug)]
pub struct Walk {
    /// The next generation: this scrape's series in exposition order.
    next: Vec<Entry>,
    /// Per current entry: its index in `next` once this scrape saw it.
    seen: Vec<u32>,
    /// Series new to the cache in this scrape: key → index in `next`.
    new: KeyMap<u32>,
    /// Where the next series is expected in the current entries.
    cursor: usize,
    /// Whether `next` is so far the current list, position for position.
    in_order: bool,
}

impl Walk {
    pub fn new(cur: &Entries) -> Walk {
        Walk {
            next: Vec::with_capacity(cur.list.len() + 8),
            seen: vec![UNSEEN; cur.list.len()],
            new: KeyMap::default(),
            cursor: 0,
            in_order: true,
        }
    }

    /// The index in the next generation of the series with `key`, if the cache knows
    /// it; its first sighting in this scrape copies it there with `last_iter = iter`.
    pub fn find(&mut self, cur: &Entries, key: &Key, iter: u32) -> Option<usize> {
        let i = match cur.list.get(self.cursor) {
            Some(e) if e.key == *key => Some(self.cursor),
            _ => cur.position(key),
        };
        let Some(i) = i else {
            return self.new.get(key).map(|&j| j as usize);
        };
        self.cursor = i + 1;
        if self.seen[i] != UNSEEN {
            // Exposed twice in one scrape.
            self.in_order = false;
            return Some(self.seen[i] as usize);
        }
        let j = self.next.len();
        self.in_order &= i == j;
        self.next.push(Entry {
            last_iter: iter,
            ..cur.list[i]
        });
        self.seen[i] = j as u32;
        Some(j)
    }

    /// Adds a series new to the cache; returns its index.
    pub fn insert(&mut self, e: Entry) -> usize {
        let j = self.next.len();
        self.in_order = false;
        self.new.insert(e.key, j as u32);
        self.next.push(e);
        j
    }

    pub fn entry(&mut self, j: usize) -> &mut Entry {
        &mut self.next[j]
    }

    /// The current entries this scrape has not seen.
    pub fn unseen<'a>(&'a self, cur: &'a Entries) -> impl Iterator<Item = &'a Entry> + 'a {
        cur.list
            .iter()
            .zip(&self.seen)
            .filter(|(_, s)| **s == UNSEEN)
            .map(|(e, _)| e)
    }

    /// The next generation: this scrape's series, then the unseen current entries for
    /// which `keep` holds.
    pub fn finish(mut self, cur: Entries, keep: impl Fn(&Entry) -> bool) -> Entries {
        for (e, s) in cur.list.iter().zip(&self.seen) {
            if *s != UNSEEN {
                continue;
            }
            if keep(e) {
                self.in_order &=
                    self.next.len() < self.seen.len() && cur.list[self.next.len()].key == e.key;
                self.next.push(*e);
            } else {
                self.in_order = false;
            }
        }
        let by_key = if self.in_order && self.next.len() == cur.list.len() {
            cur.by_key
        } else {
            let mut by_key: Vec<u32> = (0..self.next.len() as u32).collect();
            by_key.sort_unstable_by_key(|&p| self.next[p as usize].key);
            by_key
        };
        Entries {
            list: self.next,
            by_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u64) -> Entry {
        Entry {
            key: [k, !k],
            slot: k,
            last_iter: 0,
            explicit_ts: false,
            validated_om: false,
        }
    }

    /// One scrape exposing `keys`, keeping unseen entries; returns the keys in order.
    fn scrape(cur: Entries, keys: &[u64], iter: u32) -> (Entries, Vec<bool>) {
        let mut w = Walk::new(&cur);
        let mut hits = Vec::new();
        for &k in keys {
            let key = [k, !k];
            match w.find(&cur, &key, iter) {
                Some(j) => {
                    assert_eq!(w.entry(j).key, key);
                    assert_eq!(w.entry(j).last_iter, iter);
                    hits.push(true);
                }
                None => {
                    w.insert(Entry {
                        last_iter: iter,
                        ..entry(k)
                    });
                    hits.push(false);
                }
            }
        }
        (w.finish(cur, |e| iter - e.last_iter <= 1), hits)
    }

    fn keys(e: &Entries) -> Vec<u64> {
        e.iter().map(|e| e.key[0]).collect()
    }

    #[test]
    fn series_are_found_in_and_out_of_order_and_kept_in_exposition_order() {
        let (c, hits) = scrape(Entries::default(), &[5, 1, 9, 3], 1);
        assert_eq!(hits, [false; 4]);
        assert_eq!(keys(&c), [5, 1, 9, 3]);
        // Same order: all hits, the sorted index is reused.
        let (c, hits) = scrape(c, &[5, 1, 9, 3], 2);
        assert_eq!(hits, [true; 4]);
        // Reordered, one new, one gone (kept one more scrape), one twice.
        let (c, hits) = scrape(c, &[9, 5, 7, 5, 3], 3);
        assert_eq!(hits, [true, true, false, true, true]);
        assert_eq!(keys(&c), [9, 5, 7, 3, 1]);
        let (c, _) = scrape(c, &[9, 5, 7, 3], 4);
        assert_eq!(keys(&c), [9, 5, 7, 3], "1 forgotten after two scrapes");
        for k in [9, 5, 7, 3] {
            assert!(c.position(&[k, !k]).is_some());
        }
        assert_eq!(c.position(&[1, !1]), None);
        assert_eq!(c.by_key.len(), c.list.len());
    }

    #[test]
    fn a_dropped_walk_leaves_the_cache_as_it_was() {
        let (c, _) = scrape(Entries::default(), &[1, 2, 3], 1);
        let before: Vec<Entry> = c.iter().copied().collect();
        let mut w = Walk::new(&c);
        let j = w.find(&c, &[2, !2], 2).unwrap();
        w.entry(j).slot = 99;
        w.insert(entry(4));
        drop(w);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), before);
    }
}
