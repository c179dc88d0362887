//! Aggregation pushdown: for `sum|min|max|count|avg [by (...)] (E)` where `E` is a
//! selector or one of the per-series range functions over a matrix selector, members
//! evaluate the aggregation over their own data and ship only the per-group results
//! (one point per group and step) instead of the raw samples of every series.
//!
//! That is only the same as evaluating over the merged data at a step when no series
//! has samples on two members in the window that step reads (no replicas, no history
//! split by a move). So with its part each member lists the series it holds
//! ([`listing`]: label hashes grouped by the steps whose windows they reach, ~5 bytes
//! per series); the caller finds the steps at which a series is on two members
//! ([`overlapping_steps`]) and evaluates only those the normal way, usually a few
//! around a target's move. [`plan`]
//! recognises the shapes; [`combine`] folds the members' parts.

use std::collections::BTreeMap;

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

/// A member's part: the series it holds for the span (listed after the evaluation)
/// and, per member query, the result series (group labels → one point per step).
#[derive(Debug, Clone, Default)]
pub struct Part {
    pub listing: Listing,
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

/// Bits of the label hash a listing carries: 6 bytes, about 5 on the wire once sorted
/// and delta-encoded. Two different series on two members share one with probability
/// ~n²/2⁴⁹ per query (7·10⁻⁵ at 200k series); that only makes the steps they reach be
/// evaluated the normal way, never a wrong answer.
pub const HASH_BITS: u32 = 48;

/// The series a member holds for a span, grouped by the steps whose windows they
/// reach: `(first step, last step, sorted hashes)`, steps numbered from 0 at `start`
/// (an instant query has one, step 0). Hashes are the low [`HASH_BITS`] of the stable
/// label hash, so the same series on two members has the same hash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub groups: Vec<(u32, u32, Vec<u64>)>,
}

impl Listing {
    /// How many series the listing holds.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|g| g.2.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Span {
    /// Number of steps.
    fn steps(&self) -> i64 {
        if self.step <= 0 {
            1
        } else {
            (self.end - self.start) / self.step + 1
        }
    }

    /// Time of step `i`.
    fn time(&self, i: i64) -> i64 {
        if self.step <= 0 {
            self.end
        } else {
            self.start + i * self.step
        }
    }

    /// The steps whose windows `(t - window_ms, t]` a series with samples from `a` to
    /// `b` reaches (`t ∈ [a, b + window_ms)`), or `None`.
    fn reach(&self, a: i64, b: i64) -> Option<(u32, u32)> {
        let n = self.steps();
        let until = b.saturating_add(self.window_ms); // exclusive
        let (first, last) = if self.step <= 0 {
            (0, 0)
        } else {
            let first = if a <= self.start {
                0
            } else {
                (a - self.start + self.step - 1) / self.step
            };
            let last = if until > self.time(n - 1) {
                n - 1
            } else {
                (until - 1 - self.start).div_euclid(self.step)
            };
            (first, last)
        };
        let ok = first <= last && self.time(first) >= a && self.time(last) < until;
        ok.then(|| (first as u32, last.min(u32::MAX as i64) as u32))
    }
}

/// The series of `local` matching `matchers` with samples in the span's window
/// (`[start - window_ms, end]`), with the steps they reach.
pub fn listing(local: &dyn Queryable, matchers: &[Matcher], span: Span) -> Result<Listing, String> {
    let mut groups: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
    let mask = (1u64 << HASH_BITS) - 1;
    for p in local
        .presence(span.start - span.window_ms, span.end, matchers)
        .map_err(|e| e.0)?
    {
        if let Some(r) = span.reach(p.min_t, p.max_t) {
            groups.entry(r).or_default().push(p.hash & mask);
        }
    }
    Ok(Listing {
        groups: groups
            .into_iter()
            .map(|((a, b), mut h)| {
                h.sort_unstable();
                (a, b, h)
            })
            .collect(),
    })
}

/// The runs of consecutive steps at which some series is on two members (its
/// windows there read samples from both, so the members' parts are not the same as
/// an evaluation over the merged data), as inclusive `(first, last)` step times.
pub fn overlapping_steps(listings: &[&Listing], span: Span) -> Vec<(i64, i64)> {
    let mut all: Vec<(u64, u32, u32)> = listings
        .iter()
        .flat_map(|l| l.groups.iter())
        .flat_map(|(a, b, hs)| hs.iter().map(move |&h| (h, *a, *b)))
        .collect();
    all.sort_unstable();
    let mut bad: Vec<(u32, u32)> = Vec::new();
    for group in all.chunk_by(|x, y| x.0 == y.0).filter(|g| g.len() > 1) {
        for (i, x) in group.iter().enumerate() {
            for y in &group[i + 1..] {
                let (lo, hi) = (x.1.max(y.1), x.2.min(y.2));
                if lo <= hi {
                    bad.push((lo, hi));
                }
            }
        }
    }
    bad.sort_unstable();
    let mut runs: Vec<(u32, u32)> = Vec::with_capacity(bad.len());
    for (lo, hi) in bad {
        match runs.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => runs.push((lo, hi)),
        }
    }
    runs.into_iter()
        .map(|(a, b)| (span.time(i64::from(a)), span.time(i64::from(b))))
        .collect()
}

/// Most steps a pushed-down range query may have, as `/api/v1/query_range` allows.
pub const MAX_POINTS: i64 = 11_000;

/// Evaluates a plan's member queries over `local` (on a member, or this node's part).
/// The series are listed after the evaluation, so a series that appears in between
/// is listed (at worst a needless normal evaluation of some steps), never unseen.
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
    // The API's bound on a range query (a member gets its span from any peer).
    if step > 0 && end.saturating_sub(start) / step > MAX_POINTS {
        return Err(format!(
            "exceeded maximum resolution of 11,000 points per timeseries ({start}..{end} by {step})"
        ));
    }
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
        listing: listing(local, matchers, span)?,
        results,
    })
}

/// Packs a listing for the wire: the number of groups, then per group its first and
/// last step, its number of hashes and the hashes as deltas (uvarints).
pub fn pack(l: &Listing) -> Vec<u8> {
    use crate::tsdb::codec::put_uvarint;
    let mut out = Vec::with_capacity(16 + 6 * l.len());
    put_uvarint(&mut out, l.groups.len() as u64);
    for (a, b, hs) in &l.groups {
        put_uvarint(&mut out, u64::from(*a));
        put_uvarint(&mut out, u64::from(*b));
        put_uvarint(&mut out, hs.len() as u64);
        let mut prev = 0u64;
        for &h in hs {
            put_uvarint(&mut out, h.wrapping_sub(prev));
            prev = h;
        }
    }
    out
}

/// Unpacks [`pack`]'s bytes.
pub fn unpack(bytes: &[u8]) -> Result<Listing, String> {
    use crate::tsdb::codec::get_uvarint;
    let torn = || "series listing is torn".to_string();
    let mut pos = 0;
    let mut next = || get_uvarint(bytes, &mut pos).ok_or_else(torn);
    let n = next()?;
    let mut groups = Vec::new();
    for _ in 0..n {
        let a = u32::try_from(next()?).map_err(|_| torn())?;
        let b = u32::try_from(next()?).map_err(|_| torn())?;
        let count = next()?;
        // Every hash takes at least a byte: a count beyond the body is a lie.
        if a > b || count > bytes.len() as u64 {
            return Err("series listing has a bad group".into());
        }
        let mut hs = Vec::with_capacity(count as usize);
        let mut prev = 0u64;
        for _ in 0..count {
            prev = prev.wrapping_add(next()?);
            hs.push(prev);
        }
        groups.push((a, b, hs));
    }
    if pos != bytes.len() {
        return Err("series listing has trailing bytes".into());
    }
    Ok(Listing { groups })
}

/// Replaces the points of `combined` at the steps of `runs` (inclusive time ranges)
/// with `normal`, the normal evaluation of those steps. Sorted by labels.
pub fn splice(combined: Vec<Series>, runs: &[(i64, i64)], normal: Vec<Series>) -> Vec<Series> {
    let in_runs = |t: i64| runs.iter().any(|&(a, b)| a <= t && t <= b);
    let mut acc: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
    for s in combined {
        let pts = acc.entry(s.labels).or_default();
        pts.extend(
            s.samples
                .iter()
                .filter(|x| !in_runs(x.t))
                .map(|x| (x.t, x.v)),
        );
    }
    for s in normal {
        let pts = acc.entry(s.labels).or_default();
        pts.extend(
            s.samples
                .iter()
                .filter(|x| in_runs(x.t))
                .map(|x| (x.t, x.v)),
        );
    }
    acc.into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .map(|(labels, pts)| Series {
            labels,
            samples: pts.into_iter().map(|(t, v)| Sample { t, v }).collect(),
        })
        .collect()
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
    fn member_span_is_bounded_like_the_api() {
        // Found by the `query_wire` fuzz target: an Aggregate request over 36 M steps
        // made a member allocate 288 MB (up to the 50 M-sample limit's worth).
        let store = MemStore::new();
        store.insert(&Labels::from_pairs(&[("__name__", "x")]), 0, 1.0);
        let engine = Engine::new(EngineOptions::default());
        let q = vec!["sum(x)".to_string()];
        let span = |end| Span {
            start: 0,
            end,
            step: 1,
            window_ms: 0,
        };
        let err = evaluate(&engine, &store, &q, &[], span(36_000_000)).unwrap_err();
        assert!(err.contains("11,000 points"), "{err}");
        assert!(evaluate(&engine, &store, &q, &[], span(11_000)).is_ok());
    }

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
            let lists: Vec<Listing> = [&a, &b]
                .iter()
                .map(|s| listing(*s, &p.matchers, span).unwrap())
                .collect();
            assert!(overlapping_steps(&lists.iter().collect::<Vec<_>>(), span).is_empty());
            let parts: Vec<Part> = [&a, &b]
                .iter()
                .map(|s| evaluate(&engine, *s, &p.member_queries, &p.matchers, span).unwrap())
                .collect();
            for (part, list) in parts.iter().zip(&lists) {
                assert_eq!(&part.listing, list);
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
        // The same series on both stores (a replica): every step overlaps.
        let p = plan("sum(x)").unwrap();
        let span = Span {
            start: 500_000,
            end: 500_000,
            step: 0,
            window_ms: 300_000,
        };
        let list = |s: &MemStore| listing(s, &p.matchers, span).unwrap();
        let (lw, la) = (list(&whole), list(&a));
        assert_eq!(
            overlapping_steps(&[&lw, &la], span),
            vec![(500_000, 500_000)]
        );
        // Packing round-trips; a torn listing is an error.
        assert_eq!(unpack(&pack(&lw)).unwrap(), lw);
        assert!(unpack(&[1, 2, 3]).is_err());
        assert!(unpack(&[]).is_err());
        assert!(unpack(&[1, 0, 0, 200]).is_err()); // 200 hashes in no bytes
        assert!(unpack(&[1, 2, 1, 0]).is_err()); // first step after last
        let mut extra = pack(&lw);
        extra.push(0);
        assert!(unpack(&extra).is_err());
    }

    #[test]
    fn steps_overlap_where_two_members_reach_their_windows() {
        let span = Span {
            start: 0,
            end: 300_000,
            step: 15_000,
            window_ms: 60_000,
        };
        // A series with samples from a to b reaches the steps t in [a, b + window).
        assert_eq!(span.reach(0, 300_000), Some((0, 20)));
        assert_eq!(span.reach(100_000, 400_000), Some((7, 20)));
        assert_eq!(span.reach(-50_000, 105_000), Some((0, 10)));
        assert_eq!(span.reach(-90_000, -60_000), None);
        assert_eq!(span.reach(301_000, 310_000), None);
        let instant = Span {
            start: 300_000,
            end: 300_000,
            step: 0,
            window_ms: 60_000,
        };
        assert_eq!(instant.reach(250_000, 250_000), Some((0, 0)));
        assert_eq!(instant.reach(200_000, 240_000), None);
        // Series 7 moved from a to b at 100 s (a scraped it once more at 105 s); 8 is
        // on a only; 9 is a replica on both for the whole span.
        let reach = |a, b| span.reach(a, b).unwrap();
        let listing = |series: &[(u64, (u32, u32))]| {
            let mut groups: BTreeMap<(u32, u32), Vec<u64>> = BTreeMap::new();
            for &(h, r) in series {
                groups.entry(r).or_default().push(h);
            }
            Listing {
                groups: groups.into_iter().map(|((a, b), h)| (a, b, h)).collect(),
            }
        };
        let a = listing(&[(7, reach(0, 105_000)), (8, reach(0, 300_000))]);
        let b = listing(&[(7, reach(100_000, 300_000))]);
        // b reaches from step 7 (105 s), a until step 10 (150 s; 165 s = 105 s + 60 s).
        assert_eq!(overlapping_steps(&[&a, &b], span), vec![(105_000, 150_000)]);
        let b = listing(&[(7, reach(100_000, 300_000)), (9, (0, 20))]);
        let a = listing(&[(7, reach(0, 105_000)), (9, (0, 20))]);
        assert_eq!(overlapping_steps(&[&a, &b], span), vec![(0, 300_000)]);
        // Separate runs stay apart, adjacent ones join.
        let a = listing(&[(1, (0, 0)), (2, (5, 6)), (3, (7, 8))]);
        let b = listing(&[(1, (0, 3)), (2, (0, 20)), (3, (0, 20))]);
        assert_eq!(
            overlapping_steps(&[&a, &b], span),
            vec![(0, 0), (75_000, 120_000)]
        );
        assert!(overlapping_steps(&[&a], span).is_empty());
        // Round trip of a listing with several groups.
        assert_eq!(unpack(&pack(&a)).unwrap(), a);
    }

    /// A target's series moves from store a to store b mid-range (with a scrape of
    /// overlap): pushing down the clean steps and evaluating the overlapping ones over
    /// the merged data gives exactly the evaluation over the merged data.
    #[test]
    fn split_history_is_pushed_down_outside_the_move() {
        let (a, b, whole) = (MemStore::new(), MemStore::new(), MemStore::new());
        for i in 0..4 {
            let l = Labels::from_pairs(&[("__name__", "x"), ("i", &i.to_string())]);
            for k in 0..60i64 {
                let t = k * 10_000 + i;
                let v = (k * (i + 2)) as f64;
                whole.insert(&l, t, v);
                if i == 0 {
                    // Moves at 300 s; a scrapes it once more.
                    if t <= 310_000 {
                        a.insert(&l, t, v);
                    }
                    if t >= 300_000 {
                        b.insert(&l, t, v);
                    }
                } else if i % 2 == 0 {
                    a.insert(&l, t, v);
                } else {
                    b.insert(&l, t, v);
                }
            }
        }
        let engine = Engine::new(EngineOptions::default());
        let q = "sum(rate(x[1m]))";
        let p = plan(q).unwrap();
        let span = Span {
            start: 60_000,
            end: 590_000,
            step: 10_000,
            window_ms: 60_000,
        };
        let lists: Vec<Listing> = [&a, &b]
            .iter()
            .map(|s| listing(*s, &p.matchers, span).unwrap())
            .collect();
        let runs = overlapping_steps(&lists.iter().collect::<Vec<_>>(), span);
        assert_eq!(runs, vec![(300_000, 360_000)]);
        let parts: Vec<Part> = [&a, &b]
            .iter()
            .map(|s| evaluate(&engine, *s, &p.member_queries, &p.matchers, span).unwrap())
            .collect();
        let mut normal = Vec::new();
        for &(s, e) in &runs {
            let crate::promql::Value::Matrix(m) = engine
                .range_query(&whole, q, s, e, span.step)
                .unwrap()
                .value
            else {
                panic!("matrix")
            };
            normal.extend(m);
        }
        let got = splice(combine(p.combine, parts), &runs, normal);
        let crate::promql::Value::Matrix(want) = engine
            .range_query(&whole, q, span.start, span.end, span.step)
            .unwrap()
            .value
        else {
            panic!("matrix")
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].samples.len(), want[0].samples.len());
        for (x, y) in got[0].samples.iter().zip(&want[0].samples) {
            assert_eq!(x.t, y.t);
            assert!((x.v - y.v).abs() < 1e-9 * y.v.abs().max(1.0), "{x:?} {y:?}");
        }
        // Without the normal steps the parts alone are wrong there (the check matters).
        let parts: Vec<Part> = [&a, &b]
            .iter()
            .map(|s| evaluate(&engine, *s, &p.member_queries, &p.matchers, span).unwrap())
            .collect();
        let naive = combine(p.combine, parts);
        let at = |ss: &[Series], t: i64| ss[0].samples.iter().find(|x| x.t == t).unwrap().v;
        assert!((at(&naive, 320_000) - at(&want, 320_000)).abs() > 1e-6);
    }
}
