//! Aggregation pushdown: for `sum|min|max|count|avg [by (...)] (E)` where `E` is a
//! selector or one of the per-series range functions over a matrix selector, members
//! evaluate the aggregation over their own data and ship only the per-group results
//! (one point per group and step) instead of the raw samples of every series.
//!
//! That is only the same as evaluating over the merged data when no series has
//! samples on two members in the window the query reads (no replicas, no history
//! split by a move): each member also sends the stable hashes of the series its part
//! covered, and when any hash shows up twice the caller evaluates the normal way.
//! [`plan`] recognises the shapes; [`combine`] folds the members' parts.

use std::collections::{BTreeMap, HashSet};

use promql_parser::parser::{Expr, LabelModifier, VectorSelector, token};

use crate::model::{Labels, Matcher, Sample};
use crate::promql::Engine;
use crate::storage::{Queryable, Series};

/// Range functions whose result for a series depends on that series' samples only.
const RANGE_FUNCS: &[&str] = &[
    "rate",
    "increase",
    "delta",
    "irate",
    "idelta",
    "resets",
    "changes",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
];

/// How members' partial results combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Sum,
    Min,
    Max,
    /// Partial counts add up.
    Count,
    /// Members send `sum` and `count` parts; the result is their quotient.
    Avg,
}

/// A query that can be pushed down.
#[derive(Debug, Clone)]
pub struct Plan {
    pub combine: Combine,
    /// What each member evaluates (two queries for `avg`: sum, then count).
    pub member_queries: Vec<String>,
    /// The selector's matchers (members list the series they hold with these).
    pub matchers: Vec<Matcher>,
    /// How far before each step the query reads: the range of the matrix selector, or
    /// `None` for an instant selector (the lookback delta).
    pub range_ms: Option<i64>,
}

/// Recognises a pushable query; `None` for everything else (evaluated normally).
pub fn plan(query: &str) -> Option<Plan> {
    let mut expr = promql_parser::parser::parse(query).ok()?;
    while let Expr::Paren(p) = expr {
        expr = *p.expr;
    }
    let Expr::Aggregate(agg) = &expr else {
        return None;
    };
    if agg.param.is_some() || matches!(agg.modifier, Some(LabelModifier::Exclude(_))) {
        return None;
    }
    let combine = match agg.op.id() {
        token::T_SUM => Combine::Sum,
        token::T_MIN => Combine::Min,
        token::T_MAX => Combine::Max,
        token::T_COUNT => Combine::Count,
        token::T_AVG => Combine::Avg,
        _ => return None,
    };
    let mut inner = agg.expr.as_ref();
    while let Expr::Paren(p) = inner {
        inner = &p.expr;
    }
    let (vs, range_ms) = match inner {
        Expr::VectorSelector(vs) => (vs, None),
        Expr::Call(call) => {
            if !RANGE_FUNCS.contains(&call.func.name) || call.args.args.len() != 1 {
                return None;
            }
            let Expr::MatrixSelector(ms) = call.args.args[0].as_ref() else {
                return None;
            };
            (&ms.vs, Some(ms.range.as_millis() as i64))
        }
        _ => return None,
    };
    if !plain(vs) {
        return None;
    }
    let matchers = crate::promql::engine::convert_matchers(vs).ok()?;
    let grouping = match &agg.modifier {
        Some(LabelModifier::Include(l)) => format!(" by ({})", l.labels.join(", ")),
        _ => String::new(),
    };
    let body = inner.to_string();
    let member_queries = match combine {
        Combine::Avg => vec![
            format!("sum{grouping} ({body})"),
            format!("count{grouping} ({body})"),
        ],
        _ => vec![query.to_string()],
    };
    Some(Plan {
        combine,
        member_queries,
        matchers,
        range_ms,
    })
}

/// No `offset` or `@` (they shift the window the series list must cover).
fn plain(vs: &VectorSelector) -> bool {
    vs.offset.is_none() && vs.at.is_none() && vs.matchers.or_matchers.is_empty()
}

/// A member's part: a digest of the series it covered and, per member query, the
/// result series (group labels → one point per step).
#[derive(Debug, Clone, Default)]
pub struct Part {
    pub digest: Digest,
    pub results: Vec<Vec<Series>>,
}

/// The steps a query is evaluated at: `start == end` and `step == 0` for an instant
/// query. `window_ms` is how far before a step the query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub step: i64,
    pub window_ms: i64,
}

/// An order-independent digest of a covered-series list: the caller checks that a
/// member evaluated over exactly the series it listed in the first step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest {
    pub count: u64,
    pub sum: u64,
}

impl Digest {
    pub fn of(covered: &[u32]) -> Digest {
        Digest {
            count: covered.len() as u64,
            sum: covered.iter().map(|&h| u64::from(h)).sum(),
        }
    }
}

/// The series of `local` matching `matchers` with samples in the span's window
/// (`[start - window_ms, end]`), as covered-series hashes: the low 32 bits of the
/// stable label hash. The same series always gives the same value, so an overlap is
/// never missed; a collision only makes the caller fall back to the normal path.
pub fn covered(
    local: &dyn Queryable,
    matchers: &[Matcher],
    span: Span,
) -> Result<Vec<u32>, String> {
    Ok(local
        .series(span.start - span.window_ms, span.end, matchers)
        .map_err(|e| e.0)?
        .iter()
        .map(|l| l.stable_hash() as u32)
        .collect())
}

/// Evaluates a plan's member queries over `local` (on a member, or this node's part).
/// The covered series are listed (digested) after the evaluation, so a series that
/// appears in between changes the digest (a needless fallback), never goes unseen.
pub fn evaluate(
    engine: &Engine,
    local: &dyn Queryable,
    queries: &[String],
    matchers: &[Matcher],
    span: Span,
) -> Result<Part, String> {
    let Span {
        start, end, step, ..
    } = span;
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        let r = if step == 0 {
            engine.instant_query(local, q, end)
        } else {
            engine.range_query(local, q, start, end, step)
        }
        .map_err(|e| e.to_string())?;
        let series = match r.value {
            crate::promql::Value::Vector(v) => v
                .into_iter()
                .map(|s| Series {
                    labels: s.labels,
                    samples: vec![Sample { t: s.t, v: s.v }],
                })
                .collect(),
            crate::promql::Value::Matrix(m) => m,
            other => return Err(format!("unexpected {} result", other.type_name())),
        };
        results.push(series);
    }
    Ok(Part {
        digest: Digest::of(&covered(local, matchers, span)?),
        results,
    })
}

/// Whether covered-series lists are disjoint (no series on two of them).
pub fn disjoint_lists<'a>(lists: impl IntoIterator<Item = &'a [u32]>) -> bool {
    let mut seen = HashSet::new();
    lists.into_iter().flatten().all(|h| seen.insert(*h))
}

/// Packs covered-series hashes for the wire (4 bytes each, little-endian).
pub fn pack(covered: &[u32]) -> Vec<u8> {
    covered.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// Unpacks [`pack`]'s bytes.
pub fn unpack(bytes: &[u8]) -> Result<Vec<u32>, String> {
    if !bytes.len().is_multiple_of(4) {
        return Err("covered-series list is not a multiple of 4 bytes".into());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Folds the parts into the result series (sorted by labels).
pub fn combine(how: Combine, parts: Vec<Part>) -> Vec<Series> {
    let fold = |k: usize, parts: &[Part], f: &dyn Fn(f64, f64) -> f64| {
        let mut acc: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
        for p in parts {
            for s in p.results.get(k).into_iter().flatten() {
                let group = acc.entry(s.labels.clone()).or_default();
                for x in &s.samples {
                    group
                        .entry(x.t)
                        .and_modify(|v| *v = f(*v, x.v))
                        .or_insert(x.v);
                }
            }
        }
        acc
    };
    let add = |a: f64, b: f64| a + b;
    // Prometheus's min/max: a NaN so far is replaced by any value.
    let min = |a: f64, b: f64| if a > b || a.is_nan() { b } else { a };
    let max = |a: f64, b: f64| if a < b || a.is_nan() { b } else { a };
    let acc = match how {
        Combine::Sum | Combine::Count => fold(0, &parts, &add),
        Combine::Min => fold(0, &parts, &min),
        Combine::Max => fold(0, &parts, &max),
        Combine::Avg => {
            let sums = fold(0, &parts, &add);
            let counts = fold(1, &parts, &add);
            sums.into_iter()
                .map(|(l, pts)| {
                    let c = counts.get(&l);
                    let pts = pts
                        .into_iter()
                        .filter_map(|(t, s)| c.and_then(|c| c.get(&t)).map(|n| (t, s / n)))
                        .collect();
                    (l, pts)
                })
                .collect()
        }
    };
    acc.into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .map(|(labels, pts)| Series {
            labels,
            samples: pts.into_iter().map(|(t, v)| Sample { t, v }).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::EngineOptions;
    use crate::storage::memory::MemStore;

    #[test]
    fn plans_only_the_safe_shapes() {
        let p = plan("sum by (job) (rate(x[1m]))").unwrap();
        assert_eq!(p.combine, Combine::Sum);
        assert_eq!(p.range_ms, Some(60_000));
        assert_eq!(p.member_queries.len(), 1);
        let p = plan("avg by (job) (x{a=\"b\"})").unwrap();
        assert_eq!(p.combine, Combine::Avg);
        assert_eq!(p.member_queries.len(), 2);
        assert!(p.member_queries[1].starts_with("count by (job)"));
        assert!(plan("count(up)").is_some());
        for q in [
            "sum without (job) (x)",
            "topk(3, x)",
            "sum(rate(x[1m] offset 5m))",
            "sum(x @ 100)",
            "sum(x) + 1",
            "sum(histogram_quantile(0.9, x))",
            "sum(rate(x[5m:1m]))",
            "stddev(x)",
            "x",
            "sum(",
        ] {
            assert!(plan(q).is_none(), "{q}");
        }
    }

    /// Splits 6 counters over two stores, evaluates the parts and combines them: the
    /// same as evaluating over one store holding everything.
    #[test]
    fn combined_parts_equal_the_whole() {
        let (a, b, whole) = (MemStore::new(), MemStore::new(), MemStore::new());
        for i in 0..6 {
            let l = Labels::from_pairs(&[
                ("__name__", "x"),
                ("job", if i % 2 == 0 { "even" } else { "odd" }),
                ("i", &i.to_string()),
            ]);
            for k in 0..40i64 {
                let v = (k * (i + 1)) as f64 + if i == 3 && k > 20 { -50.0 } else { 0.0 };
                let t = k * 15_000 + i;
                whole.insert(&l, t, v);
                if i < 4 { &a } else { &b }.insert(&l, t, v);
            }
        }
        let engine = Engine::new(EngineOptions::default());
        for q in [
            "sum by (job) (rate(x[1m]))",
            "max by (job) (x)",
            "min(increase(x[2m]))",
            "count by (job) (x)",
            "avg by (job) (rate(x[1m]))",
        ] {
            let p = plan(q).unwrap();
            let window = p.range_ms.unwrap_or(300_000);
            let (start, end, step) = (120_000, 500_000, 30_000);
            let span = Span {
                start,
                end,
                step,
                window_ms: window,
            };
            let lists: Vec<Vec<u32>> = [&a, &b]
                .iter()
                .map(|s| covered(*s, &p.matchers, span).unwrap())
                .collect();
            assert!(disjoint_lists(lists.iter().map(Vec::as_slice)));
            let parts: Vec<Part> = [&a, &b]
                .iter()
                .map(|s| evaluate(&engine, *s, &p.member_queries, &p.matchers, span).unwrap())
                .collect();
            for (part, list) in parts.iter().zip(&lists) {
                assert_eq!(part.digest, Digest::of(list));
            }
            let got = combine(p.combine, parts);
            let crate::promql::Value::Matrix(want) = engine
                .range_query(&whole, q, start, end, step)
                .unwrap()
                .value
            else {
                panic!("matrix")
            };
            assert_eq!(got.len(), want.len(), "{q}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.labels, w.labels, "{q}");
                assert_eq!(g.samples.len(), w.samples.len(), "{q}");
                for (x, y) in g.samples.iter().zip(&w.samples) {
                    assert_eq!(x.t, y.t);
                    assert!(
                        (x.v - y.v).abs() < 1e-9 * y.v.abs().max(1.0),
                        "{q}: {x:?} {y:?}"
                    );
                }
            }
        }
        // The same series on both stores (a replica): not disjoint.
        let p = plan("sum(x)").unwrap();
        let span = Span {
            start: 500_000,
            end: 500_000,
            step: 0,
            window_ms: 300_000,
        };
        let list = |s: &MemStore| covered(s, &p.matchers, span).unwrap();
        assert!(!disjoint_lists([
            list(&whole).as_slice(),
            list(&a).as_slice()
        ]));
        // Packing round-trips; a torn list is an error.
        let l = list(&whole);
        assert_eq!(unpack(&pack(&l)).unwrap(), l);
        assert!(unpack(&[1, 2, 3]).is_err());
    }
}
