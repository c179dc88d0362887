//! The receiving side of `peer::protocol::TSDB_IMPORT`: a request becomes an import
//! into this node's store in the request's mode — a drain's chunks in
//! [`ImportMode::Replica`] (samples in the scrape slot of one it holds are the same
//! scrape seen twice), a backfill's share (`crate::backfill`) in [`ImportMode::Exact`].
//! One import runs at a time, on a blocking thread, so that a drain never takes more
//! than one of the node's cores from its scrapes; the answer goes out only once the
//! import is durable.

use std::sync::Arc;

use crate::model::labels::is_valid_label_name;
use crate::model::{Label, Labels};
use crate::peer::protocol::{ImportAnswer, ImportRequest, WireChunk, WireImportMode, WireSeries};
use crate::storage::chunks::{ChunkStore, ImportMode, ImportSeries, RawChunk};

/// Why an import request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The request is malformed (the sender's bug or an attack): 400.
    #[error("invalid import request: {0}")]
    Invalid(String),
    /// The store refused (a full disk): 503, the sender retries.
    #[error("cannot import: {0}")]
    Store(String),
}

/// The chunks of one series for the wire.
pub fn to_wire(s: &ImportSeries) -> WireSeries {
    WireSeries {
        labels: s
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        chunks: s
            .chunks
            .iter()
            .map(|c| WireChunk {
                min_t: c.min_t,
                max_t: c.max_t,
                bytes: c.bytes.clone(),
            })
            .collect(),
    }
}

/// A series from the wire, checked: valid label names, no duplicate or empty names,
/// a metric name, chunks with `min_t <= max_t`. (The chunk bytes are checked by the
/// store as it decodes them.)
pub fn from_wire(s: WireSeries) -> Result<ImportSeries, String> {
    let mut labels = Vec::with_capacity(s.labels.len());
    for (n, v) in s.labels {
        if !is_valid_label_name(&n) {
            return Err(format!("invalid label name {n:?}"));
        }
        if v.is_empty() {
            return Err(format!("empty value for label {n:?}"));
        }
        labels.push(Label::new(n, v));
    }
    let count = labels.len();
    let labels = Labels::new(labels);
    if labels.len() != count {
        return Err("duplicate label names".into());
    }
    if labels.get("__name__").is_none() {
        return Err("a series without a metric name".into());
    }
    let mut chunks = Vec::with_capacity(s.chunks.len());
    for c in s.chunks {
        if c.min_t > c.max_t || c.bytes.is_empty() {
            return Err(format!(
                "chunk [{}, {}] of {labels}: bad time range or empty",
                c.min_t, c.max_t
            ));
        }
        chunks.push(RawChunk {
            min_t: c.min_t,
            max_t: c.max_t,
            bytes: c.bytes,
        });
    }
    Ok(ImportSeries { labels, chunks })
}

/// The answer for an import's figures: duplicates are samples held already (the same
/// value, or in replica mode the same scrape), dropped ones were out of retention or
/// too far in the future.
pub fn answer_of(st: &crate::storage::chunks::ImportStats) -> ImportAnswer {
    ImportAnswer {
        stored: st.stored,
        duplicate: st.duplicate + st.replica,
        dropped: st.out_of_bounds + st.too_far_in_future,
        conflicting: st.conflicting,
    }
}

/// This node's receiver of imported chunks (a drain's, a backfill's share).
pub struct Receiver {
    store: Arc<dyn ChunkStore>,
    /// One import at a time.
    slot: tokio::sync::Semaphore,
}

impl Receiver {
    pub fn new(store: Arc<dyn ChunkStore>) -> Receiver {
        Receiver {
            store,
            slot: tokio::sync::Semaphore::new(1),
        }
    }

    /// Imports a decoded request; answers once it is durable.
    pub async fn receive(&self, req: ImportRequest) -> Result<ImportAnswer, ReceiveError> {
        let from = req.from;
        let series: Vec<ImportSeries> = req
            .series
            .into_iter()
            .map(from_wire)
            .collect::<Result<_, _>>()
            .map_err(ReceiveError::Invalid)?;
        let _permit = self
            .slot
            .acquire()
            .await
            .map_err(|e| ReceiveError::Store(e.to_string()))?;
        let store = self.store.clone();
        let n = series.len();
        let mode = match req.mode {
            WireImportMode::Replica => ImportMode::Replica,
            WireImportMode::Exact => ImportMode::Exact,
        };
        let st = tokio::task::spawn_blocking(move || store.import(series, mode))
            .await
            .map_err(|e| ReceiveError::Store(format!("import panicked: {e}")))?
            .map_err(|e| ReceiveError::Store(e.0))?;
        tracing::debug!(
            from,
            series = n,
            ?mode,
            stored = st.stored,
            duplicate = st.duplicate,
            "imported a batch from a peer"
        );
        Ok(answer_of(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(labels: &[(&str, &str)]) -> WireSeries {
        WireSeries {
            labels: labels
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            chunks: vec![WireChunk {
                min_t: 1,
                max_t: 2,
                bytes: vec![0, 1],
            }],
        }
    }

    #[test]
    fn series_from_the_wire_are_checked() {
        let ok = from_wire(wire(&[("job", "a"), ("__name__", "up")])).unwrap();
        assert_eq!(ok.labels.get("__name__"), Some("up"));
        assert_eq!(
            to_wire(&ok).labels[0].0,
            "__name__",
            "sorted on the way out"
        );
        for bad in [
            wire(&[("job", "a")]),
            wire(&[("__name__", "up"), ("bad-name", "x")]),
            wire(&[("__name__", "up"), ("job", "")]),
            wire(&[("__name__", "up"), ("job", "a"), ("job", "b")]),
        ] {
            assert!(from_wire(bad.clone()).is_err(), "{bad:?}");
        }
        let mut backwards = wire(&[("__name__", "up")]);
        backwards.chunks[0].min_t = 5;
        assert!(from_wire(backwards).is_err());
    }
}
