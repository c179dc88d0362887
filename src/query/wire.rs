//! The wire format of the internal read route (`POST /internal/query`): a
//! [`Request`] in, a [`Response`] out, both bincode 2 behind a format-version byte
//! ([`encode`] / [`decode`]). Samples travel as XOR chunks (`tsdb::chunkenc`, the
//! format the TSDB stores, ~1–2 bytes per sample), label sets as indices into one
//! symbol table per response (every distinct string once).
//!
//! Decoding never trusts the peer: lengths are bounded, symbol indices and chunks are
//! checked, and samples must come out in time order.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::model::{Label, Labels, MatchOp, Matcher, Sample};
use crate::storage::{SampleBudget, SelectHints, Series, StorageError};
use crate::tsdb::chunkenc::{XorIterator, XorState, new_chunk};

/// Version byte in front of every request and response body. 3: selects and
/// aggregations carry the query's limits (`max_samples`, `timeout_ms`).
pub const FORMAT_VERSION: u8 = 3;

/// Upper bound on one decoded body (protects against malformed length prefixes).
const DECODE_LIMIT: usize = 512 << 20;

/// Samples per XOR chunk on the wire (the chunk header counts to 65535).
const SAMPLES_PER_WIRE_CHUNK: usize = 4096;

/// A read a member runs over its own store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Series with samples. `exclude_global`: leave out the series recorded by `scope:
    /// global` rule groups (every node has them; the asking node reads its own).
    Select {
        hints: WireHints,
        matchers: Vec<WireMatcher>,
        exclude_global: bool,
    },
    Series {
        mint: i64,
        maxt: i64,
        matchers: Vec<WireMatcher>,
    },
    LabelNames {
        mint: i64,
        maxt: i64,
        matchers: Vec<WireMatcher>,
    },
    LabelValues {
        name: String,
        mint: i64,
        maxt: i64,
        matchers: Vec<WireMatcher>,
    },
    /// Aggregation pushdown (`query::pushdown`): evaluate `queries` over the member's
    /// data at the steps of `start..=end` by `step` (0: instant at `end`) and list the
    /// series matching `matchers` with samples in `[start - window_ms, end]`.
    Aggregate {
        queries: Vec<String>,
        matchers: Vec<WireMatcher>,
        start: i64,
        end: i64,
        step: i64,
        window_ms: i64,
        limits: WireLimits,
    },
}

impl Request {
    /// The limits the asking node set for this read (none for metadata reads).
    pub fn limits(&self) -> WireLimits {
        match self {
            Request::Select { hints, .. } => hints.limits,
            Request::Aggregate { limits, .. } => *limits,
            _ => WireLimits::default(),
        }
    }

    /// The same request with its limits replaced (a no-op for metadata reads).
    pub fn with_limits(mut self, l: WireLimits) -> Request {
        match &mut self {
            Request::Select { hints, .. } => hints.limits = l,
            Request::Aggregate { limits, .. } => *limits = l,
            _ => {}
        }
        self
    }
}

/// A query's limits on the wire: the samples the member may load for it and the time
/// it has left (a duration, not an instant: the clocks of two hosts differ). `None`:
/// no limit from the asking node (the member's own flags still apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLimits {
    pub max_samples: Option<u64>,
    pub timeout_ms: Option<u64>,
}

impl WireLimits {
    /// The time left as a deadline from now.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout_ms
            .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
    }

    /// Limits for a read that must end by `deadline` (rounded up to whole ms, so that
    /// a member never gets 0 ms while time is left).
    pub fn new(max_samples: Option<usize>, deadline: Option<Instant>) -> WireLimits {
        WireLimits {
            max_samples: max_samples.map(|n| n as u64),
            timeout_ms: deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                left.as_micros().div_ceil(1000).min(u64::MAX as u128) as u64
            }),
        }
    }
}

/// [`SelectHints`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireHints {
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub func: Option<String>,
    pub range: i64,
    pub limits: WireLimits,
    /// [`SelectHints::grid`] as (first, step, last).
    pub grid: Option<(i64, i64, i64)>,
}

impl From<&SelectHints> for WireHints {
    fn from(h: &SelectHints) -> Self {
        WireHints {
            start: h.start,
            end: h.end,
            step: h.step,
            func: h.func.clone(),
            range: h.range,
            limits: WireLimits::new(h.max_samples, h.deadline),
            grid: h.grid.map(|g| (g.first, g.step, g.last)),
        }
    }
}

impl From<WireHints> for SelectHints {
    fn from(h: WireHints) -> Self {
        SelectHints {
            start: h.start,
            end: h.end,
            step: h.step,
            func: h.func,
            range: h.range,
            max_samples: h
                .limits
                .max_samples
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            deadline: h.limits.deadline(),
            grid: h
                .grid
                .map(|(first, step, last)| crate::storage::StepGrid { first, step, last }),
        }
    }
}

/// A label matcher on the wire: op 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMatcher {
    pub op: u8,
    pub name: String,
    pub value: String,
}

impl From<&Matcher> for WireMatcher {
    fn from(m: &Matcher) -> Self {
        WireMatcher {
            op: match m.op {
                MatchOp::Equal => 0,
                MatchOp::NotEqual => 1,
                MatchOp::Regex => 2,
                MatchOp::NotRegex => 3,
            },
            name: m.name.clone(),
            value: m.value.clone(),
        }
    }
}

/// Turns wire matchers back into matchers (compiling regexes).
pub fn matchers(ms: &[WireMatcher]) -> Result<Vec<Matcher>, String> {
    ms.iter()
        .map(|m| {
            let op = match m.op {
                0 => MatchOp::Equal,
                1 => MatchOp::NotEqual,
                2 => MatchOp::Regex,
                3 => MatchOp::NotRegex,
                o => return Err(format!("unknown matcher op {o}")),
            };
            Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| e.to_string())
        })
        .collect()
}

pub fn wire_matchers(ms: &[Matcher]) -> Vec<WireMatcher> {
    ms.iter().map(WireMatcher::from).collect()
}

/// A member's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Series with samples (for [`Request::Select`]) or without (for
    /// [`Request::Series`]).
    Series(SeriesBlock),
    /// Label names or values, sorted.
    Strings(Vec<String>),
    /// A pushdown part: the `pushdown::pack`ed listing of the series the member
    /// holds, and per query its result series (group labels, one point per step).
    Aggregate {
        listing: Vec<u8>,
        results: Vec<SeriesBlock>,
    },
}

/// Label sets (and, for selects, samples) of many series with one symbol table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesBlock {
    pub symbols: Vec<String>,
    pub series: Vec<WireSeries>,
}

/// One series: label (name, value) symbol indices, then its samples as XOR chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSeries {
    pub labels: Vec<(u32, u32)>,
    pub chunks: Vec<Vec<u8>>,
}

/// Builds a [`SeriesBlock`], interning every string once.
#[derive(Default)]
struct BlockBuilder {
    block: SeriesBlock,
    index: HashMap<String, u32>,
}

impl BlockBuilder {
    fn sym(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.block.symbols.len() as u32;
        self.block.symbols.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }

    fn push(&mut self, labels: &Labels, samples: &[Sample]) {
        let labels = labels
            .iter()
            .map(|l| (self.sym(&l.name), self.sym(&l.value)))
            .collect();
        let chunks = samples
            .chunks(SAMPLES_PER_WIRE_CHUNK)
            .map(|part| {
                let mut chunk = new_chunk();
                let mut st = XorState::default();
                for s in part {
                    st.append(&mut chunk, s.t, s.v);
                }
                chunk
            })
            .collect();
        self.block.series.push(WireSeries { labels, chunks });
    }
}

/// Encodes series with their samples.
pub fn series_block(series: &[Series]) -> SeriesBlock {
    let mut b = BlockBuilder::default();
    for s in series {
        b.push(&s.labels, &s.samples);
    }
    b.block
}

/// Encodes label sets only.
pub fn labels_block(sets: &[Labels]) -> SeriesBlock {
    let mut b = BlockBuilder::default();
    for l in sets {
        b.push(l, &[]);
    }
    b.block
}

impl SeriesBlock {
    /// Decodes every series; fails on a bad symbol index, a corrupt chunk or samples
    /// out of time order.
    pub fn decode(self) -> Result<Vec<Series>, String> {
        match self.decode_counted(&SampleBudget::unlimited()) {
            Ok(r) => r,
            Err(e) => Err(e.0),
        }
    }

    /// [`SeriesBlock::decode`] counting the samples into `budget` chunk by chunk: the
    /// outer error is the budget's (a query limit), the inner one a bad answer.
    pub fn decode_counted(
        self,
        budget: &SampleBudget,
    ) -> Result<Result<Vec<Series>, String>, StorageError> {
        let SeriesBlock { symbols, series } = self;
        let sym = |i: u32| -> Result<&String, String> {
            symbols
                .get(i as usize)
                .ok_or_else(|| format!("symbol index {i} out of range"))
        };
        let mut out = Vec::with_capacity(series.len());
        for ws in series {
            let mut labels = Vec::with_capacity(ws.labels.len());
            for (n, v) in ws.labels {
                match (sym(n), sym(v)) {
                    (Ok(n), Ok(v)) => labels.push(Label::new(n.clone(), v.clone())),
                    (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
                }
            }
            let mut samples: Vec<Sample> = Vec::new();
            for chunk in &ws.chunks {
                let before = samples.len();
                for s in XorIterator::new(chunk) {
                    let s = match s {
                        Ok(s) => s,
                        Err(e) => return Ok(Err(format!("corrupt chunk: {}", e.0))),
                    };
                    if samples.last().is_some_and(|p| p.t >= s.t) {
                        return Ok(Err("samples out of time order".into()));
                    }
                    samples.push(s);
                }
                budget.take(samples.len() - before)?;
            }
            out.push(Series {
                labels: Labels::new(labels),
                samples,
            });
        }
        Ok(Ok(out))
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty body (no format version byte)")]
    Empty,
    #[error("unsupported format version {0} (this build understands {FORMAT_VERSION})")]
    Version(u8),
    #[error("malformed body: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the body")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// `[FORMAT_VERSION, bincode...]`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(bincode::serde::encode_to_vec(value, config())?);
    Ok(out)
}

/// `bincode::serde::decode_from_slice` with a limit on the bytes the decoder may claim
/// that grows with the body. bincode allocates (and zeroes) a string's or byte vector's
/// declared length before it reads it, checking only that limit: under a fixed limit a
/// body of a few bytes could make the node allocate up to the whole limit. A value
/// claims at most 16 times its encoded size (a one-byte varint u64 claims 8), so the
/// limit is 16 times the body rounded up to a power of four, at least 64 KiB, at most
/// [`DECODE_LIMIT`].
fn decode_slice<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    crate::model::bounded_decode::decode_slice::<T, DECODE_LIMIT>(body)
}

/// Decodes what [`encode`] wrote; rejects other versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(WireError::Version(version));
    }
    let (value, read) = decode_slice(body)?;
    if read != body.len() {
        return Err(WireError::Trailing(body.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale_nan, stale_nan};

    #[test]
    fn series_round_trip_with_staleness_and_many_samples() {
        let mut samples: Vec<Sample> = (0..10_000)
            .map(|i| Sample {
                t: 1_700_000_000_000 + i * 15_000 + (i % 3),
                v: (i as f64) * 1.5,
            })
            .collect();
        samples[17].v = stale_nan();
        let series = vec![
            Series {
                labels: Labels::from_pairs(&[("__name__", "up"), ("job", "a")]),
                samples: samples.clone(),
            },
            Series {
                labels: Labels::from_pairs(&[("__name__", "up"), ("job", "b")]),
                samples: vec![Sample { t: 5, v: -0.0 }],
            },
        ];
        let req = Response::Series(series_block(&series));
        let bytes = encode(&req).unwrap();
        // XOR chunks: well below the 16 bytes of a raw (i64, f64) sample.
        assert!(bytes.len() < 10_000 * 8, "{} bytes", bytes.len());
        let Response::Series(block) = decode::<Response>(&bytes).unwrap() else {
            panic!("wrong variant")
        };
        assert_eq!(
            block.symbols.len(),
            5,
            "every string once: {:?}",
            block.symbols
        );
        let back = block.decode().unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].labels, series[0].labels);
        assert_eq!(back[0].samples.len(), samples.len());
        assert!(is_stale_nan(back[0].samples[17].v));
        assert_eq!(back[0].samples[18], samples[18]);
        assert_eq!(back[1].samples[0].v.to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn matchers_round_trip_and_bad_ones_are_rejected() {
        let ms = vec![
            Matcher::equal("__name__", "up"),
            Matcher::new(MatchOp::NotRegex, "job", "a|b").unwrap(),
        ];
        let back = matchers(&wire_matchers(&ms)).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].op, MatchOp::NotRegex);
        let bad = WireMatcher {
            op: 2,
            name: "job".into(),
            value: "(".into(),
        };
        assert!(matchers(&[bad]).is_err());
        let bad_op = WireMatcher {
            op: 9,
            name: "job".into(),
            value: "x".into(),
        };
        assert!(matchers(&[bad_op]).is_err());
    }

    /// Found by the `query_wire` fuzz target: 24 bytes declaring a 305 MB matcher name
    /// made the member allocate (and zero) it before finding the body short.
    #[test]
    fn a_short_body_cannot_claim_a_big_allocation() {
        let mut body = [
            0x02, 0x02, 0x00, 0x02, 0x02, 0x00, 0xfc, 0x80, 0x60, 0x34, 0x12, 0x00, 0x00, 0x2b,
            0x3f, 0xfc, 0x80, 0x4f, 0x80, 0x4f, 0x12, 0x12, 0x00, 0x00,
        ];
        // Found at wire version 2; the body after the version byte is the same claim.
        body[0] = FORMAT_VERSION;
        assert!(matches!(
            decode::<Request>(&body),
            Err(WireError::Decode(
                bincode::error::DecodeError::LimitExceeded
            ))
        ));
        // What the limit allows still decodes: a big body with a big string.
        let big = Request::LabelValues {
            name: "x".repeat(3 << 20),
            mint: 1,
            maxt: 2,
            matchers: vec![],
        };
        assert_eq!(decode::<Request>(&encode(&big).unwrap()).unwrap(), big);
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        assert!(decode::<Request>(&[]).is_err());
        assert!(decode::<Request>(&[FORMAT_VERSION, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode::<Request>(&[7, 0]).is_err());
        let block = SeriesBlock {
            symbols: vec!["a".into()],
            series: vec![WireSeries {
                labels: vec![(0, 5)],
                chunks: vec![],
            }],
        };
        assert!(block.decode().is_err());
        let block = SeriesBlock {
            symbols: vec!["a".into()],
            series: vec![WireSeries {
                labels: vec![(0, 0)],
                chunks: vec![vec![0, 9, 1]],
            }],
        };
        assert!(block.decode().is_err());
    }
}
