//! In-memory store (for tests and the PromQL test runner): a `BTreeMap<Labels, Vec<Sample>>`
//! behind a `RwLock`. It implements [`Appendable`] and [`Queryable`]; samples are kept
//! sorted by time, and an append at an existing timestamp replaces the old value (the
//! test-script loader relies on that). Not meant for production data.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::{
    AppendError, Appendable, Appender, CommitStats, Queryable, SelectHints, Series, SeriesRef,
    SeriesSet, StorageError,
};
use crate::model::{Labels, Matcher, Sample};

#[derive(Default)]
struct Inner {
    series: BTreeMap<Labels, Vec<Sample>>,
    refs: Vec<Labels>,
    ref_of: std::collections::HashMap<Labels, SeriesRef>,
}

/// A simple in-memory series store. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemStore {
    inner: Arc<RwLock<Inner>>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// Drops all series.
    pub fn clear(&self) {
        let mut g = self.write();
        *g = Inner::default();
    }

    /// Inserts (or replaces) one sample directly, without an appender.
    pub fn insert(&self, labels: &Labels, t: i64, v: f64) {
        let mut g = self.write();
        insert_sample(&mut g, labels, t, v);
    }

    /// Removes every sample of the series with exactly these labels.
    pub fn remove_series(&self, labels: &Labels) {
        let mut g = self.write();
        g.series.remove(labels);
    }

    /// Number of series held.
    pub fn num_series(&self) -> usize {
        self.read().series.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn insert_sample(g: &mut Inner, labels: &Labels, t: i64, v: f64) -> SeriesRef {
    let r = match g.ref_of.get(labels) {
        Some(r) => *r,
        None => {
            let r = g.refs.len() as SeriesRef;
            g.refs.push(labels.clone());
            g.ref_of.insert(labels.clone(), r);
            r
        }
    };
    let samples = g.series.entry(labels.clone()).or_default();
    match samples.last() {
        Some(last) if last.t < t => samples.push(Sample { t, v }),
        None => samples.push(Sample { t, v }),
        _ => match samples.binary_search_by(|s| s.t.cmp(&t)) {
            Ok(i) => samples[i].v = v,
            Err(i) => samples.insert(i, Sample { t, v }),
        },
    }
    r
}

struct MemAppender {
    store: MemStore,
    pending: Vec<(Labels, i64, f64)>,
}

impl Appender for MemAppender {
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError> {
        if labels.is_empty() {
            return Err(AppendError::InvalidLabels("empty label set".into()));
        }
        let g = self.store.read();
        let r = g
            .ref_of
            .get(labels)
            .copied()
            .unwrap_or(g.refs.len() as SeriesRef);
        drop(g);
        self.pending.push((labels.clone(), t, v));
        Ok(r)
    }

    fn append_ref(&mut self, series: SeriesRef, t: i64, v: f64) -> Result<(), AppendError> {
        let g = self.store.read();
        let labels = g
            .refs
            .get(series as usize)
            .cloned()
            .ok_or(AppendError::UnknownRef(series))?;
        drop(g);
        self.pending.push((labels, t, v));
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<CommitStats, StorageError> {
        let mut g = self.store.write();
        let mut stats = CommitStats::default();
        for (l, t, v) in &self.pending {
            if !g.series.contains_key(l) {
                stats.series_created += 1;
            }
            insert_sample(&mut g, l, *t, *v);
            stats.samples += 1;
        }
        Ok(stats)
    }

    fn rollback(self: Box<Self>) {}
}

impl Appendable for MemStore {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(MemAppender {
            store: self.clone(),
            pending: Vec::new(),
        })
    }
}

fn in_range(samples: &[Sample], mint: i64, maxt: i64) -> &[Sample] {
    let lo = samples.partition_point(|s| s.t < mint);
    let hi = samples.partition_point(|s| s.t <= maxt);
    if lo >= hi { &[] } else { &samples[lo..hi] }
}

impl Queryable for MemStore {
    fn select(&self, hints: &SelectHints, matchers: &[Matcher]) -> Result<SeriesSet, StorageError> {
        let g = self.read();
        let budget = hints.budget();
        let mut out = SeriesSet::default();
        for (l, s) in &g.series {
            budget.check_deadline()?;
            if !Matcher::all_match(matchers, l) {
                continue;
            }
            let s = in_range(s, hints.start, hints.end);
            if s.is_empty() {
                continue;
            }
            let mut samples = s.to_vec();
            if let Some(g) = &hints.grid {
                g.thin(&mut samples, 0);
            }
            budget.take(samples.len())?;
            out.series.push(Series {
                labels: l.clone(),
                samples,
            });
        }
        Ok(out)
    }

    fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError> {
        let g = self.read();
        Ok(g.series
            .iter()
            .filter(|(l, s)| Matcher::all_match(matchers, l) && !in_range(s, mint, maxt).is_empty())
            .map(|(l, _)| l.clone())
            .collect())
    }

    fn label_names(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let mut names = std::collections::BTreeSet::new();
        for l in self.series(mint, maxt, matchers)? {
            for lab in l.iter() {
                names.insert(lab.name.clone());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        let mut vals = std::collections::BTreeSet::new();
        for l in self.series(mint, maxt, matchers)? {
            if let Some(v) = l.get(name) {
                vals.insert(v.to_string());
            }
        }
        Ok(vals.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MatchOp;

    #[test]
    fn append_commit_select_in_range() {
        let st = MemStore::new();
        let a = Labels::from_pairs(&[("__name__", "a"), ("job", "x")]);
        let b = Labels::from_pairs(&[("__name__", "b")]);
        let mut app = st.appender();
        app.append(&a, 10, 1.0).unwrap();
        app.append(&a, 20, 2.0).unwrap();
        app.append(&b, 30, 3.0).unwrap();
        // Not visible before commit.
        assert_eq!(st.num_series(), 0);
        let stats = app.commit().unwrap();
        assert_eq!(stats.samples, 3);
        assert_eq!(stats.series_created, 2);
        let m = Matcher::new(MatchOp::Regex, "__name__", "a|b").unwrap();
        let hints = SelectHints {
            start: 15,
            end: 30,
            ..Default::default()
        };
        let set = st.select(&hints, &[m]).unwrap();
        assert_eq!(set.series.len(), 2);
        assert_eq!(set.series[0].samples, vec![Sample { t: 20, v: 2.0 }]);
        assert_eq!(
            st.label_values("job", 0, 100, &[]).unwrap(),
            vec!["x".to_string()]
        );
        assert_eq!(
            st.label_names(0, 100, &[]).unwrap(),
            vec!["__name__".to_string(), "job".to_string()]
        );
    }

    #[test]
    fn same_timestamp_replaces_and_out_of_order_is_sorted() {
        let st = MemStore::new();
        let a = Labels::from_pairs(&[("__name__", "a")]);
        st.insert(&a, 20, 1.0);
        st.insert(&a, 10, 2.0);
        st.insert(&a, 20, 3.0);
        let set = st
            .select(
                &SelectHints {
                    start: 0,
                    end: 100,
                    ..Default::default()
                },
                &[],
            )
            .unwrap();
        assert_eq!(
            set.series[0].samples,
            vec![Sample { t: 10, v: 2.0 }, Sample { t: 20, v: 3.0 }]
        );
    }
}
