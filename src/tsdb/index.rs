//! The series index in sled trees:
//!
//! - `series`: id (BE u64) → encoded labels (with a version byte, see `codec`);
//! - `postings`: `name 0x00 value 0x00 id(BE u64)` → empty;
//! - `label_values`: `name 0x00 value` → empty (label names and values listings).
//!
//! Keys are big-endian so prefix scans come out sorted. Matchers resolve to sorted id
//! lists: `=` through postings, the others by scanning that label's values. Matchers
//! that match the empty string do not narrow the candidates; the caller checks every
//! candidate's labels with all matchers (`{a=""}` matches series without `a`).

use sled::Tree;

use super::codec::{bytes8, decode_labels, encode_labels};
use crate::model::{Labels, MatchOp, Matcher};
use crate::storage::StorageError;

pub(crate) fn sled_err(what: &str, e: sled::Error) -> StorageError {
    StorageError(format!("tsdb: {what}: {e}"))
}

#[derive(Clone)]
pub struct Index {
    pub series: Tree,
    pub postings: Tree,
    pub values: Tree,
}

fn value_key(name: &str, value: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + value.len() + 1);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(value.as_bytes());
    k
}

impl Index {
    pub fn open(db: &sled::Db) -> Result<Index, StorageError> {
        let t = |n: &str| db.open_tree(n).map_err(|e| sled_err("open tree", e));
        Ok(Index {
            series: t("series")?,
            postings: t("postings")?,
            values: t("label_values")?,
        })
    }

    /// Writes a new series into every index tree.
    pub fn add_series(&self, id: u64, labels: &Labels) -> Result<(), StorageError> {
        let mut postings = sled::Batch::default();
        let mut values = sled::Batch::default();
        for l in labels {
            let mut k = value_key(&l.name, &l.value);
            values.insert(k.clone(), &[]);
            k.push(0);
            k.extend_from_slice(&id.to_be_bytes());
            postings.insert(k, &[]);
        }
        self.postings
            .apply_batch(postings)
            .map_err(|e| sled_err("write postings", e))?;
        self.values
            .apply_batch(values)
            .map_err(|e| sled_err("write label values", e))?;
        // The series record last: on open, a series exists once its labels do.
        self.series
            .insert(id.to_be_bytes(), encode_labels(labels))
            .map_err(|e| sled_err("write series", e))?;
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

    /// Every `(id, labels)` in id order.
    pub fn all_series(&self) -> impl Iterator<Item = Result<(u64, Labels), StorageError>> + '_ {
        self.series.iter().map(|r| {
            let (k, v) = r.map_err(|e| sled_err("scan series", e))?;
            let id = bytes8(&k, 0)
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError("tsdb: bad series key".into()))?;
            let l =
                decode_labels(&v).map_err(|e| StorageError(format!("tsdb: series {id}: {e}")))?;
            Ok((id, l))
        })
    }

    /// Sorted ids of series with `name="value"`.
    pub fn postings(&self, name: &str, value: &str) -> Result<Vec<u64>, StorageError> {
        let mut prefix = value_key(name, value);
        prefix.push(0);
        let mut out = Vec::new();
        for r in self.postings.scan_prefix(&prefix) {
            let (k, _) = r.map_err(|e| sled_err("scan postings", e))?;
            // Values may contain 0x00: only keys of exactly this value count.
            if k.len() == prefix.len() + 8 {
                if let Some(b) = bytes8(&k, prefix.len()) {
                    out.push(u64::from_be_bytes(b));
                }
            }
        }
        Ok(out)
    }

    /// Sorted distinct values of label `name`.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, StorageError> {
        let prefix = value_key(name, "");
        let mut out = Vec::new();
        for r in self.values.scan_prefix(&prefix) {
            let (k, _) = r.map_err(|e| sled_err("scan label values", e))?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Sorted distinct label names (skip-scan over `label_values`).
    pub fn label_names(&self) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let next = self.values.range(from.clone()..).next();
            let Some(r) = next else { break };
            let (k, _) = r.map_err(|e| sled_err("scan label names", e))?;
            let end = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            let name = &k[..end];
            out.push(String::from_utf8_lossy(name).into_owned());
            from = name.to_vec();
            from.push(1);
        }
        Ok(out)
    }

    /// Sorted candidate ids for `matchers`, or `None` when no matcher narrows them (all
    /// series are candidates). The caller still checks labels against all matchers.
    pub fn candidates(&self, matchers: &[Matcher]) -> Result<Option<Vec<u64>>, StorageError> {
        let mut result: Option<Vec<u64>> = None;
        // Equality matchers first: they are the cheapest and most selective.
        let mut order: Vec<&Matcher> = matchers.iter().filter(|m| !m.matches_empty()).collect();
        order.sort_by_key(|m| m.op != MatchOp::Equal);
        for m in order {
            let ids = match m.op {
                MatchOp::Equal => self.postings(&m.name, &m.value)?,
                _ => {
                    let mut ids = Vec::new();
                    for v in self.label_values(&m.name)? {
                        if m.matches(&v) {
                            ids.extend(self.postings(&m.name, &v)?);
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
        let idx = Index::open(&db).unwrap();
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
    fn names_and_values_are_sorted_and_distinct() {
        let (_d, idx) = index();
        assert_eq!(
            idx.label_names().unwrap(),
            vec!["__name__", "instance", "job"]
        );
        assert_eq!(idx.label_values("job").unwrap(), vec!["a", "a\0x", "b"]);
        assert_eq!(idx.postings("job", "a").unwrap(), vec![1, 4]);
    }
}
