//! The series index. Labels are persisted in the sled tree `series`: id (BE u64) →
//! encoded labels (with a version byte, see `codec`); ids are stable across restarts.
//! Postings (label name → value → sorted ids) live in memory only, as Prometheus's head
//! postings do, and are rebuilt from `series` on open: this keeps one sled write per
//! new series and keeps the index small on disk.
//!
//! Matchers resolve to sorted id lists: `=` through postings, the others by scanning
//! that label's values. Matchers that match the empty string do not narrow the
//! candidates; the caller checks every candidate's labels with all matchers
//! (`{a=""}` matches series without `a`).

use std::collections::BTreeMap;
use std::sync::RwLock;

use sled::Tree;

use super::codec::{bytes8, decode_labels, encode_labels};
use crate::model::{Labels, MatchOp, Matcher};
use crate::storage::StorageError;

pub(crate) fn sled_err(what: &str, e: sled::Error) -> StorageError {
    StorageError(format!("tsdb: {what}: {e}"))
}

type Postings = BTreeMap<String, BTreeMap<String, Vec<u64>>>;

pub struct Index {
    pub series: Tree,
    postings: RwLock<Postings>,
}

fn poisoned<T>(_: T) -> StorageError {
    StorageError("tsdb: index lock poisoned".into())
}

impl Index {
    /// Opens the index and rebuilds the postings. Returns every `(id, labels hash)`.
    pub fn open(db: &sled::Db) -> Result<(Index, Vec<(u64, u64)>), StorageError> {
        let series = db
            .open_tree("series")
            .map_err(|e| sled_err("open tree", e))?;
        let mut postings = Postings::new();
        let mut ids = Vec::new();
        for r in series.iter() {
            let (k, v) = r.map_err(|e| sled_err("scan series", e))?;
            let id = bytes8(&k, 0)
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError("tsdb: bad series key".into()))?;
            let labels =
                decode_labels(&v).map_err(|e| StorageError(format!("tsdb: series {id}: {e}")))?;
            add_postings(&mut postings, id, &labels);
            ids.push((id, labels.stable_hash()));
        }
        Ok((
            Index {
                series,
                postings: RwLock::new(postings),
            },
            ids,
        ))
    }

    /// Persists a new series and adds it to the postings. Ids must be added in
    /// increasing order (postings lists stay sorted).
    pub fn add_series(&self, id: u64, labels: &Labels) -> Result<(), StorageError> {
        self.series
            .insert(id.to_be_bytes(), encode_labels(labels))
            .map_err(|e| sled_err("write series", e))?;
        add_postings(&mut *self.postings.write().map_err(poisoned)?, id, labels);
        Ok(())
    }

    pub fn labels(&self, id: u64) -> Result<Option<Labels>, StorageError> {
        match self
            .series
            .get(id.to_be_bytes())
            .map_err(|e| sled_err("read series", e))?
        {
            None => Ok(None),
            Some(v) => decode_labels(&v)
                .map(Some)
                .map_err(|e| StorageError(format!("tsdb: series {id}: {e}"))),
        }
    }

    /// Labels of many series (`ids` sorted ascending), in the same order. Dense id sets
    /// are read with one ordered scan, which is far cheaper in sled than point reads.
    pub fn labels_many(&self, ids: &[u64]) -> Result<Vec<Option<Labels>>, StorageError> {
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else {
            return Ok(Vec::new());
        };
        let span = last.saturating_sub(first).saturating_add(1);
        if ids.len() < 64 || span / (ids.len() as u64) > 16 || ids.windows(2).any(|w| w[0] >= w[1])
        {
            return ids.iter().map(|&id| self.labels(id)).collect();
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut want = ids.iter().copied().peekable();
        for r in self.series.range(first.to_be_bytes()..=last.to_be_bytes()) {
            let (k, v) = r.map_err(|e| sled_err("scan series", e))?;
            let Some(id) = bytes8(&k, 0).map(u64::from_be_bytes) else {
                continue;
            };
            while want.next_if(|&w| w < id).is_some() {
                out.push(None);
            }
            if want.next_if_eq(&id).is_some() {
                let l = decode_labels(&v)
                    .map_err(|e| StorageError(format!("tsdb: series {id}: {e}")))?;
                out.push(Some(l));
            }
            if want.peek().is_none() {
                break;
            }
        }
        out.extend(want.map(|_| None));
        Ok(out)
    }

    /// Sorted ids of series with `name="value"`.
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>, StorageError> {
        let p = self.postings.read().map_err(poisoned)?;
        Ok(p.get(name)
            .and_then(|vs| vs.get(value))
            .cloned()
            .unwrap_or_default())
    }

    /// Sorted distinct values of label `name`.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, StorageError> {
        let p = self.postings.read().map_err(poisoned)?;
        Ok(p.get(name)
            .map(|vs| vs.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// Sorted distinct label names.
    pub fn label_names(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .postings
            .read()
            .map_err(poisoned)?
            .keys()
            .cloned()
            .collect())
    }

    /// Sorted candidate ids for `matchers`, or `None` when no matcher narrows them (all
    /// series are candidates). The caller still checks labels against all matchers.
    pub fn candidates(&self, matchers: &[Matcher]) -> Result<Option<Vec<u64>>, StorageError> {
        let p = self.postings.read().map_err(poisoned)?;
        let mut result: Option<Vec<u64>> = None;
        // Equality matchers first: they are the cheapest and most selective.
        let mut order: Vec<&Matcher> = matchers.iter().filter(|m| !m.matches_empty()).collect();
        order.sort_by_key(|m| m.op != MatchOp::Equal);
        for m in order {
            let values = p.get(&m.name);
            let ids = match m.op {
                MatchOp::Equal => values
                    .and_then(|vs| vs.get(&m.value))
                    .cloned()
                    .unwrap_or_default(),
                _ => {
                    let mut ids = Vec::new();
                    for (v, list) in values.into_iter().flatten() {
                        if m.matches(v) {
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
                return Ok(Some(next));
            }
            result = Some(next);
        }
        Ok(result)
    }
}

fn add_postings(p: &mut Postings, id: u64, labels: &Labels) {
    for l in labels {
        let values = match p.get_mut(l.name.as_str()) {
            Some(v) => v,
            None => p.entry(l.name.clone()).or_default(),
        };
        let list = match values.get_mut(l.value.as_str()) {
            Some(list) => list,
            None => values.entry(l.value.clone()).or_default(),
        };
        if list.last().is_none_or(|&last| last < id) {
            list.push(id);
        } else if let Err(pos) = list.binary_search(&id) {
            list.insert(pos, id);
        }
    }
}

/// Intersection of two sorted id lists.
pub fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
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

    fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        let series = [
            &[("__name__", "up"), ("job", "a"), ("instance", "1")][..],
            &[("__name__", "up"), ("job", "b"), ("instance", "2")],
            &[("__name__", "up"), ("job", "a\0x")],
            &[("__name__", "down"), ("job", "a")],
        ];
        for (i, s) in series.iter().enumerate() {
            idx.add_series(i as u64 + 1, &Labels::from_pairs(s))
                .unwrap();
        }
        (dir, idx)
    }

    fn select(idx: &Index, ms: &[Matcher]) -> Vec<u64> {
        let cands = idx
            .candidates(ms)
            .unwrap()
            .unwrap_or_else(|| vec![1, 2, 3, 4]);
        cands
            .into_iter()
            .filter(|&id| Matcher::all_match(ms, &idx.labels(id).unwrap().unwrap()))
            .collect()
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
        assert!(
            idx.candidates(&[m(MatchOp::NotEqual, "job", "a")])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn labels_many_matches_point_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (idx, _) = Index::open(&db).unwrap();
        for id in (1..400u64).filter(|i| i % 5 != 0) {
            idx.add_series(id, &Labels::from_pairs(&[("i", id.to_string())]))
                .unwrap();
        }
        let ids: Vec<u64> = (0..420).filter(|i| i % 3 != 0).collect();
        let many = idx.labels_many(&ids).unwrap();
        assert_eq!(many.len(), ids.len());
        for (id, l) in ids.iter().zip(many) {
            assert_eq!(l, idx.labels(*id).unwrap(), "id {id}");
        }
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
    fn postings_are_rebuilt_on_open() {
        let (dir, idx) = index();
        drop(idx);
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (idx, ids) = Index::open(&db).unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!(
            ids[0].1,
            Labels::from_pairs(&[("__name__", "up"), ("job", "a"), ("instance", "1")])
                .stable_hash()
        );
        assert_eq!(idx.postings("__name__", "up").unwrap(), vec![1, 2, 3]);
    }
}
