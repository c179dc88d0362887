//! The storage traits that scraping, rules and PromQL use. They follow Prometheus's
//! `storage/interface.go`: an [`Appendable`] hands out [`Appender`]s (one batch of samples,
//! committed or rolled back as a whole), a [`Queryable`] selects series by matchers and
//! time range. Nothing above this module names the TSDB; the distributed select of the
//! cluster plugs in here too.
//!
//! All calls are synchronous (sled is): async callers use `spawn_blocking`.

pub mod memory;

use std::sync::Arc;

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

/// A failure of the store itself (IO, corruption, closed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Whether a store can take writes now. `Err(reason)` while it cannot (a full disk, an
/// IO error): appends are refused then, and the node is not ready.
pub trait Writable: Send + Sync {
    fn writable(&self) -> Result<(), String>;
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

/// Hints that let a store (or a remote member) do less work. Stores may ignore them.
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
