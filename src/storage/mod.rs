//! The storage traits that scraping, rules and PromQL use. They follow Prometheus's
//! `storage/interface.go`: an [`Appendable`] hands out [`Appender`]s (one batch of samples,
//! committed or rolled back as a whole), a [`Queryable`] selects series by matchers and
//! time range. Nothing above this module names the TSDB; the distributed select of the
//! cluster plugs in here too.
//!
//! All calls are synchronous (sled is): async callers use `spawn_blocking`.

pub mod chunks;
pub mod memory;
pub mod sled_open;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::model::{Labels, Matcher, Sample};

/// Opaque handle of a series inside one store, valid until the process restarts.
pub type SeriesRef = u64;

/// Why one sample was not appended. The batch goes on; the caller counts these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError {
    #[error("out of order sample")]
    OutOfOrder,
    #[error("duplicate sample for timestamp")]
    DuplicateTimestamp,
    /// Older than the store accepts (Prometheus: older than the head's max time minus
    /// half a block).
    #[error("out of bounds")]
    OutOfBounds,
    /// Further ahead of the store's clock than it accepts (`--storage.tsdb.max-future`).
    #[error("out of bounds: too far in the future")]
    TooFarInFuture,
    #[error("unknown series ref {0}")]
    UnknownRef(SeriesRef),
    #[error("invalid labels: {0}")]
    InvalidLabels(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// A failure of the store itself (IO, corruption, closed), or a read that stopped at a
/// query limit ([`StorageError::too_many_samples`], [`StorageError::timeout`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Whether a store can take writes now. `Err(reason)` while it cannot (a full disk, an
/// IO error): appends are refused then, and the node is not ready.
pub trait Writable: Send + Sync {
    fn writable(&self) -> Result<(), String>;
}

/// Prometheus's text for a query over `--query.max-samples`.
pub const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// Start of Prometheus's text for a query past its deadline (`query timed out in <where>`).
pub const TIMED_OUT: &str = "query timed out in ";

impl StorageError {
    /// The read would load more samples than its [`SelectHints::max_samples`].
    pub fn too_many_samples() -> StorageError {
        StorageError(TOO_MANY_SAMPLES.into())
    }

    /// The read ran past its [`SelectHints::deadline`]; `what` names the phase
    /// (`query execution`, `query queue`).
    pub fn timeout(what: &str) -> StorageError {
        StorageError(format!("{TIMED_OUT}{what}"))
    }

    pub fn is_too_many_samples(&self) -> bool {
        self.0 == TOO_MANY_SAMPLES
    }

    /// The phase named by a [`StorageError::timeout`].
    pub fn timed_out_in(&self) -> Option<&str> {
        self.0.strip_prefix(TIMED_OUT)
    }

    /// Whether this is a query limit rather than a failure of the store.
    pub fn is_limit(&self) -> bool {
        self.is_too_many_samples() || self.timed_out_in().is_some()
    }
}

/// One batch of appends. Samples become visible to queries only after [`Appender::commit`].
pub trait Appender: Send {
    /// Appends a sample to the series with these labels (created when new). Returns the
    /// series' ref, which [`Appender::append_ref`] takes on later batches.
    fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, AppendError>;
    /// Appends to a series by a ref obtained earlier; `UnknownRef` when the store no longer
    /// knows it (the caller then falls back to [`Appender::append`]).
    fn append_ref(&mut self, series: SeriesRef, t: i64, v: f64) -> Result<(), AppendError>;
    /// Makes the batch durable (WAL) and visible.
    fn commit(self: Box<Self>) -> Result<CommitStats, StorageError>;
    /// Discards the batch.
    fn rollback(self: Box<Self>);
    /// Hint: about `n` more samples are coming (a scrape knows its previous size).
    fn reserve(&mut self, _n: usize) {}
}

/// What a commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub samples: u64,
    /// Series created by this batch.
    pub series_created: u64,
}

/// Something that can take samples.
pub trait Appendable: Send + Sync {
    fn appender(&self) -> Box<dyn Appender>;
}

/// One series with its samples in a time range, sorted by time. Staleness markers are
/// included as they were stored (the PromQL engine interprets them).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// The result of a select: series sorted by labels, plus warnings (e.g. an unreachable
/// cluster member) to pass on to the user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesSet {
    pub series: Vec<Series>,
    pub warnings: Vec<String>,
}

/// Hints that let a store (or a remote member) do less work. Stores may ignore them,
/// except the limits (`max_samples`, `deadline`), which every store honours while it
/// loads samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectHints {
    /// Inclusive millisecond bounds of the samples wanted.
    pub start: i64,
    pub end: i64,
    /// Query step in ms (0 for instant queries).
    pub step: i64,
    /// The function the selector is an argument of, if any (`rate`, ...).
    pub func: Option<String>,
    /// Range of a range selector in ms (0 for instant selectors).
    pub range: i64,
    /// Most samples the select may load (`None`: no limit). A store counts samples as it
    /// decodes them and fails with [`StorageError::too_many_samples`] as soon as it
    /// would hold more — it never loads everything first.
    pub max_samples: Option<usize>,
    /// When the select must give up, with [`StorageError::timeout`] (checked while it
    /// loads, not only before).
    pub deadline: Option<Instant>,
    /// For an instant selector: the caller needs, at each of these times, only the
    /// latest sample at or before it. A store may leave the other samples out (and
    /// then does not count them): an instant query of a selector loads one sample per
    /// series, not its whole lookback window.
    pub grid: Option<StepGrid>,
}

/// The evaluation times of an instant selector: `first`, `first + step`, … up to
/// `last` (`step` 0: `first` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepGrid {
    pub first: i64,
    pub step: i64,
    pub last: i64,
}

impl StepGrid {
    /// The first grid time at or after `t`.
    fn next_at(&self, t: i64) -> Option<i64> {
        let g = if t <= self.first {
            self.first
        } else if self.step <= 0 {
            return None;
        } else {
            let (d, step) = (
                i128::from(t) - i128::from(self.first),
                i128::from(self.step),
            );
            i64::try_from(i128::from(self.first) + (d + step - 1) / step * step).ok()?
        };
        (g <= self.last).then_some(g)
    }

    /// Keeps of `samples[from..]` (sorted by time) those that are the latest sample at
    /// or before some grid time; the rest is removed. Applied to consecutive parts of a
    /// series it keeps a superset of what it keeps applied once to the whole.
    pub fn thin(&self, samples: &mut Vec<Sample>, from: usize) {
        let mut w = from;
        for i in from..samples.len() {
            let keep = match self.next_at(samples[i].t) {
                None => false,
                Some(g) => samples.get(i + 1).is_none_or(|n| g < n.t),
            };
            if keep {
                samples[w] = samples[i];
                w += 1;
            }
        }
        samples.truncate(w);
    }
}

impl SelectHints {
    /// The load budget of one select under these hints.
    pub fn budget(&self) -> SampleBudget {
        SampleBudget::new(self.max_samples, self.deadline)
    }
}

/// The limits of one select while it loads: a sample count shared by the threads that
/// decode (atomic) and a deadline.
#[derive(Debug)]
pub struct SampleBudget {
    limit: usize,
    loaded: AtomicUsize,
    deadline: Option<Instant>,
}

impl SampleBudget {
    pub fn new(limit: Option<usize>, deadline: Option<Instant>) -> SampleBudget {
        SampleBudget {
            limit: limit.unwrap_or(usize::MAX),
            loaded: AtomicUsize::new(0),
            deadline,
        }
    }

    /// No limits.
    pub fn unlimited() -> SampleBudget {
        SampleBudget::new(None, None)
    }

    /// Accounts for `n` more loaded samples; fails once the total is over the limit.
    pub fn take(&self, n: usize) -> Result<(), StorageError> {
        let total = self
            .loaded
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total > self.limit {
            return Err(StorageError::too_many_samples());
        }
        Ok(())
    }

    /// Fails once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), StorageError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(StorageError::timeout("query execution")),
            _ => Ok(()),
        }
    }

    /// Samples accounted so far (including the ones that went over the limit).
    pub fn loaded(&self) -> usize {
        self.loaded.load(Ordering::Relaxed)
    }
}

/// Where one series has samples: its stable label hash ([`Labels::stable_hash`]) and
/// the times of its first and last sample (aggregation pushdown checks with these that
/// no series has samples on two cluster members in the window a query reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub hash: u64,
    pub min_t: i64,
    pub max_t: i64,
}

/// Something that answers selects. Implemented by the TSDB and by the distributed select.
pub trait Queryable: Send + Sync {
    /// Series matching all `matchers` with their samples in `[hints.start, hints.end]`.
    /// Series without samples in the range are left out.
    fn select(&self, hints: &SelectHints, matchers: &[Matcher]) -> Result<SeriesSet, StorageError>;
    /// Label sets of the series matching `matchers` that have samples in `[mint, maxt]`,
    /// sorted.
    fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError>;
    /// Sorted label names of matching series (all series when `matchers` is empty).
    fn label_names(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;
    /// Sorted values of label `name` over matching series.
    fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError>;

    /// [`Queryable::series`] with warnings (an unreachable cluster member).
    fn series_warned(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<Labels>>, StorageError> {
        self.series(mint, maxt, matchers).map(Warned::new)
    }

    /// [`Queryable::label_names`] with warnings.
    fn label_names_warned(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<String>>, StorageError> {
        self.label_names(mint, maxt, matchers).map(Warned::new)
    }

    /// [`Queryable::label_values`] with warnings.
    fn label_values_warned(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<String>>, StorageError> {
        self.label_values(name, mint, maxt, matchers)
            .map(Warned::new)
    }

    /// The series matching `matchers` with samples in `[mint, maxt]`, in any order, and
    /// where they have samples. `min_t`/`max_t` may be wider than the range (a store
    /// may report a series' first and last sample overall), never narrower.
    fn presence(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Presence>, StorageError> {
        let hints = SelectHints {
            start: mint,
            end: maxt,
            ..SelectHints::default()
        };
        Ok(self
            .select(&hints, matchers)?
            .series
            .iter()
            .filter_map(|s| {
                Some(Presence {
                    hash: s.labels.stable_hash(),
                    min_t: s.samples.first()?.t,
                    max_t: s.samples.last()?.t,
                })
            })
            .collect())
    }

    /// This store refusing incomplete answers (`partial_response=false`): where a
    /// store would warn that part of the data is missing (a cluster member did not
    /// answer), the strict one fails instead. `None` for stores that are always
    /// complete.
    fn strict(&self) -> Option<Arc<dyn Queryable>> {
        None
    }
}

/// A read's value plus warnings to pass on to the user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Warned<T> {
    pub value: T,
    pub warnings: Vec<String>,
}

impl<T> Warned<T> {
    pub fn new(value: T) -> Warned<T> {
        Warned {
            value,
            warnings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &[Sample]) -> Vec<i64> {
        s.iter().map(|x| x.t).collect()
    }

    #[test]
    fn thinning_keeps_the_latest_sample_of_every_step() {
        let all: Vec<Sample> = (0..20).map(|i| Sample { t: i * 10, v: 0.0 }).collect();
        // Steps at 35, 85, 135: the latest samples at or before them.
        let g = StepGrid {
            first: 35,
            step: 50,
            last: 135,
        };
        let mut s = all.clone();
        g.thin(&mut s, 0);
        assert_eq!(ts(&s), [30, 80, 130]);
        // In two parts: a superset, the same once thinned again.
        let mut s = all[..9].to_vec();
        g.thin(&mut s, 0);
        let from = s.len();
        s.extend_from_slice(&all[9..]);
        g.thin(&mut s, from);
        assert_eq!(ts(&s), [30, 80, 130]);
        let mut p = all[..9].to_vec();
        g.thin(&mut p, 0);
        assert_eq!(ts(&p), [30, 80]);
        // One time (an instant query): one sample; a step on a sample keeps it.
        let mut s = all.clone();
        StepGrid {
            first: 100,
            step: 0,
            last: 100,
        }
        .thin(&mut s, 0);
        assert_eq!(ts(&s), [100]);
        let mut s = all;
        StepGrid {
            first: -5,
            step: 0,
            last: -5,
        }
        .thin(&mut s, 0);
        assert!(s.is_empty());
    }

    #[test]
    fn budget_counts_and_fails_past_the_limit() {
        let b = SampleBudget::new(Some(10), None);
        assert!(b.take(10).is_ok());
        assert!(b.take(1).unwrap_err().is_too_many_samples());
        assert_eq!(b.loaded(), 11);
        let late = SampleBudget::new(None, Some(Instant::now()));
        assert_eq!(
            late.check_deadline().unwrap_err().to_string(),
            "query timed out in query execution"
        );
        assert!(SampleBudget::unlimited().take(usize::MAX).is_ok());
    }
}
