//! The evaluator. Every node is evaluated once over all steps of the query (like
//! Prometheus's engine): an instant vector is a list of series with one optional value per
//! step ([`Col`]), a range vector keeps the raw samples plus the evaluation time of each
//! step ([`RangeVal`]) so that range functions slide a window over them.
//!
//! Selectors ask the [`Queryable`] once for the widest range any step needs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};

use super::value::{EvalError, QueryResult, Value, VectorSample};
use crate::model::labels::METRIC_NAME;
use crate::model::{Labels, MatchOp, Matcher, Sample, is_stale_nan};
use crate::storage::{Queryable, SelectHints, Series, StepGrid};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (default 5m).
    pub lookback_delta: Duration,
    /// Maximum wall-clock time of one query (default 2m).
    pub timeout: Duration,
    /// Maximum number of samples a query may load/hold (default 50M).
    pub max_samples: usize,
    /// Step of subqueries written without one (`x[5m:]`), default 1m.
    pub default_subquery_step: Duration,
    /// When the query must be done at the latest, if earlier than its start plus
    /// `timeout`: the HTTP API sets it from the request's arrival, so that the wait for
    /// a query slot counts.
    pub deadline: Option<Instant>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
            default_subquery_step: Duration::from_secs(60),
            deadline: None,
        }
    }
}

/// Evaluates whole aggregation nodes somewhere else (a cluster's members each
/// aggregate their own series, see `crate::query::pushdown`). The engine offers it
/// every aggregation evaluated on the query's own time grid (not inside a subquery).
pub trait Pushdown {
    /// `expr` is the aggregation's text; `step == 0` (and `start == end`) for an
    /// instant query. `None`: evaluate it here as usual. A vector result for an instant
    /// query, a matrix (points on the query's steps) for a range query.
    fn aggregate(
        &self,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Option<Result<QueryResult, EvalError>>;
}

/// The PromQL engine. Stateless apart from its options; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        Engine { opts }
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// When a query started now must be done: `timeout` from now, or the options'
    /// deadline when that is earlier.
    pub fn deadline(&self) -> Instant {
        let by_timeout = Instant::now()
            .checked_add(self.opts.timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        match self.opts.deadline {
            Some(d) => d.min(by_timeout),
            None => by_timeout,
        }
    }

    /// Evaluates `expr` at `t_ms`.
    pub fn instant_query(
        &self,
        q: &dyn Queryable,
        expr: &str,
        t_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        let e = parse_expr(expr)?;
        self.instant_query_expr(q, &e, t_ms)
    }

    /// [`Engine::instant_query`] offering aggregations to `push` first.
    pub fn instant_query_pushdown(
        &self,
        q: &dyn Queryable,
        push: &dyn Pushdown,
        expr: &str,
        t_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        let e = parse_expr(expr)?;
        self.instant_eval(q, Some(push), &e, t_ms)
    }

    /// Evaluates an already parsed expression at `t_ms` (for rules).
    pub fn instant_query_expr(
        &self,
        q: &dyn Queryable,
        e: &Expr,
        t_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        self.instant_eval(q, None, e, t_ms)
    }

    fn instant_eval(
        &self,
        q: &dyn Queryable,
        push: Option<&dyn Pushdown>,
        e: &Expr,
        t_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        check_ts(t_ms)?;
        let g = self.global(q, push, t_ms, t_ms, 0);
        let ev = Ev::new(&g, t_ms, t_ms, 1);
        let v = ev.eval(e)?;
        let value = match v {
            V::Scalar(s) => Value::Scalar { t: t_ms, v: s[0] },
            V::Str(s) => Value::String { t: t_ms, v: s },
            V::Vector(cols) => Value::Vector(
                cols.into_iter()
                    .filter_map(|c| {
                        c.vals[0].map(|v| VectorSample {
                            labels: c.labels,
                            t: t_ms,
                            v,
                        })
                    })
                    .collect(),
            ),
            V::Range(r) => {
                let te = r.te[0];
                let mut out = Vec::new();
                for s in r.series {
                    let w = window(&s.samples, te - r.range, te);
                    if !w.is_empty() {
                        out.push(Series {
                            labels: s.labels,
                            samples: w.to_vec(),
                        });
                    }
                }
                Value::Matrix(out)
            }
        };
        Ok(QueryResult {
            value,
            warnings: g.annots.into_inner(),
        })
    }

    /// Evaluates `expr` at every step from `start_ms` to `end_ms`; returns a matrix.
    pub fn range_query(
        &self,
        q: &dyn Queryable,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        let e = parse_expr(expr)?;
        self.range_query_expr(q, &e, start_ms, end_ms, step_ms)
    }

    /// [`Engine::range_query`] offering aggregations to `push` first.
    pub fn range_query_pushdown(
        &self,
        q: &dyn Queryable,
        push: &dyn Pushdown,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        let e = parse_expr(expr)?;
        self.range_eval(q, Some(push), &e, start_ms, end_ms, step_ms)
    }

    /// [`Engine::range_query`] for a parsed expression.
    pub fn range_query_expr(
        &self,
        q: &dyn Queryable,
        e: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        self.range_eval(q, None, e, start_ms, end_ms, step_ms)
    }

    fn range_eval(
        &self,
        q: &dyn Queryable,
        push: Option<&dyn Pushdown>,
        e: &Expr,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    ) -> Result<QueryResult, EvalError> {
        if step_ms <= 0 {
            return Err(EvalError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if end_ms < start_ms {
            return Err(EvalError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        check_ts(start_ms)?;
        check_ts(end_ms)?;
        if (end_ms - start_ms) / step_ms >= self.opts.max_samples as i64 {
            return Err(EvalError::TooManySamples);
        }
        match e.value_type() {
            parser::value::ValueType::Vector | parser::value::ValueType::Scalar => {}
            t => {
                let name = match t {
                    parser::value::ValueType::Matrix => "range vector",
                    parser::value::ValueType::String => "string",
                    _ => "unknown",
                };
                return Err(EvalError::BadData(format!(
                    "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
                )));
            }
        }
        let g = self.global(q, push, start_ms, end_ms, step_ms);
        let ev = Ev::new(&g, start_ms, end_ms, step_ms);
        let v = ev.eval(e)?;
        let mut out = match v {
            V::Scalar(s) => vec![Series {
                labels: Labels::empty(),
                samples: s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Sample { t: ev.ts(i), v: *v })
                    .collect(),
            }],
            V::Vector(cols) => cols
                .into_iter()
                .filter_map(|c| {
                    let samples = ev.column_samples(&c);
                    (!samples.is_empty()).then_some(Series {
                        labels: c.labels,
                        samples,
                    })
                })
                .collect(),
            V::Str(_) | V::Range(_) => {
                return Err(EvalError::BadData(
                    "invalid expression type for range query, must be Scalar or instant Vector"
                        .into(),
                ));
            }
        };
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(QueryResult {
            value: Value::Matrix(out),
            warnings: g.annots.into_inner(),
        })
    }

    fn global<'a>(
        &self,
        q: &'a dyn Queryable,
        push: Option<&'a dyn Pushdown>,
        start: i64,
        end: i64,
        step: i64,
    ) -> Global<'a> {
        Global {
            q,
            push,
            lookback: dur_ms(self.opts.lookback_delta),
            deadline: self.deadline(),
            max_samples: self.opts.max_samples,
            samples: Cell::new(0),
            annots: RefCell::new(Vec::new()),
            qstart: start,
            qend: end,
            qstep: step,
            sub_step: dur_ms(self.opts.default_subquery_step).max(1),
            checks: Cell::new(0),
        }
    }
}

/// A store's error as the engine reports it: its query limits as
/// [`EvalError::TooManySamples`] and [`EvalError::Timeout`], anything else as an
/// execution error.
pub fn storage_error(e: crate::storage::StorageError) -> EvalError {
    if e.is_too_many_samples() {
        return EvalError::TooManySamples;
    }
    match e.timed_out_in() {
        Some(what) => EvalError::Timeout(what.to_string()),
        None => EvalError::Execution(e.0),
    }
}

fn check_ts(t: i64) -> Result<(), EvalError> {
    if t.abs() > MAX_ABS_MS {
        return Err(EvalError::BadData(format!("timestamp {t} out of range")));
    }
    Ok(())
}

/// Parses a PromQL expression with the `promql-parser` crate.
pub fn parse_expr(expr: &str) -> Result<Expr, EvalError> {
    check_byte_escapes(expr)?;
    parser::parse(expr).map_err(EvalError::Parse)
}

/// `promql-parser` turns a `\xNN` escape into the char U+00NN, while Go (and so
/// Prometheus) produces the raw byte. Strings whose byte escapes do not form valid UTF-8
/// are rejected here, as Prometheus rejects them where they matter (label names).
fn check_byte_escapes(expr: &str) -> Result<(), EvalError> {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let mut run: Vec<u8> = Vec::new();
    let flush = |run: &mut Vec<u8>| -> Result<(), EvalError> {
        if !run.is_empty() && std::str::from_utf8(run).is_err() {
            return Err(EvalError::Parse(
                "invalid UTF-8 byte sequence in string literal".into(),
            ));
        }
        run.clear();
        Ok(())
    };
    while i < b.len() {
        let c = b[i];
        match quote {
            None => {
                if c == b'"' || c == b'\'' || c == b'`' {
                    quote = Some(c);
                }
                i += 1;
            }
            Some(q) => {
                if q != b'`' && c == b'\\' && i + 1 < b.len() {
                    if b[i + 1] == b'x' && i + 3 < b.len() {
                        let h = std::str::from_utf8(&b[i + 2..i + 4]).unwrap_or("");
                        if let Ok(v) = u8::from_str_radix(h, 16) {
                            run.push(v);
                            i += 4;
                            continue;
                        }
                    }
                    flush(&mut run)?;
                    i += 2;
                    continue;
                }
                flush(&mut run)?;
                if c == q {
                    quote = None;
                }
                i += 1;
            }
        }
    }
    flush(&mut run)
}

/// Per-query state shared by all (sub)evaluators.
pub(crate) struct Global<'a> {
    pub q: &'a dyn Queryable,
    pub push: Option<&'a dyn Pushdown>,
    pub lookback: i64,
    /// When the query times out (checked by [`Ev::check`], [`Ev::eval`] and, passed in
    /// the select hints, by the store while it loads).
    pub deadline: Instant,
    pub max_samples: usize,
    pub samples: Cell<usize>,
    pub annots: RefCell<Vec<String>>,
    pub qstart: i64,
    pub qend: i64,
    pub qstep: i64,
    pub sub_step: i64,
    checks: Cell<u32>,
}

/// One instant-vector series: a value (or none) per step.
#[derive(Debug, Clone)]
pub(crate) struct Col {
    pub labels: Labels,
    pub vals: Vec<Option<f64>>,
}

/// One range-vector series: raw float samples (stale markers removed), sorted by time.
#[derive(Debug, Clone)]
pub(crate) struct RSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A range vector over all steps: step `i` sees the samples in `(te[i]-range, te[i]]`.
#[derive(Debug, Clone)]
pub(crate) struct RangeVal {
    pub series: Vec<RSeries>,
    pub range: i64,
    pub te: Vec<i64>,
}

/// An evaluated node.
#[derive(Debug, Clone)]
pub(crate) enum V {
    Scalar(Vec<f64>),
    Vector(Vec<Col>),
    Range(RangeVal),
    Str(String),
}

impl V {
    pub fn type_name(&self) -> &'static str {
        match self {
            V::Scalar(_) => "scalar",
            V::Vector(_) => "instant vector",
            V::Range(_) => "range vector",
            V::Str(_) => "string",
        }
    }
}

/// A series with the sample (if any) each step of an instant selector sees.
pub(crate) type SeriesPoints<T = Sample> = (Labels, Vec<Option<T>>);

/// Samples of `s` (sorted) with `mint < t <= maxt`.
pub(crate) fn window(s: &[Sample], mint: i64, maxt: i64) -> &[Sample] {
    let lo = s.partition_point(|x| x.t <= mint);
    let hi = s.partition_point(|x| x.t <= maxt);
    if lo >= hi { &[] } else { &s[lo..hi] }
}

/// An evaluator for one time grid (`start..=end` by `step`).
pub(crate) struct Ev<'g, 'a> {
    pub g: &'g Global<'a>,
    pub start: i64,
    pub step: i64,
    pub n: usize,
}

/// Largest absolute timestamp/duration (ms) the engine works with (~31,700 years);
/// larger values are clamped so that time arithmetic cannot overflow.
pub(crate) const MAX_ABS_MS: i64 = 1_000_000_000_000_000;

/// A duration in ms, clamped to [`MAX_ABS_MS`].
pub(crate) fn dur_ms(d: Duration) -> i64 {
    d.as_millis().min(MAX_ABS_MS as u128) as i64
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => dur_ms(d),
        Err(e) => -dur_ms(e.duration()),
    }
}

pub(crate) fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(*d),
        Some(Offset::Neg(d)) => -dur_ms(*d),
    }
}

impl<'g, 'a> Ev<'g, 'a> {
    pub fn new(g: &'g Global<'a>, start: i64, end: i64, step: i64) -> Self {
        let n = if end < start {
            0
        } else {
            ((end - start) / step.max(1)) as usize + 1
        };
        Ev {
            g,
            start,
            step: step.max(1),
            n,
        }
    }

    #[inline]
    pub fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    /// The present values of a step column as timestamped samples.
    pub fn column_samples(&self, c: &Col) -> Vec<Sample> {
        c.vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| Sample { t: self.ts(i), v }))
            .collect()
    }

    /// Checks the timeout (cheaply: the clock is read every 64 calls).
    pub fn check(&self) -> Result<(), EvalError> {
        let c = self.g.checks.get().wrapping_add(1);
        self.g.checks.set(c);
        if c.is_multiple_of(64) && Instant::now() >= self.g.deadline {
            return Err(EvalError::Timeout("expression evaluation".into()));
        }
        Ok(())
    }

    /// Accounts for `k` more samples held in memory.
    pub fn add_samples(&self, k: usize) -> Result<(), EvalError> {
        let s = self.g.samples.get() + k;
        self.g.samples.set(s);
        if s > self.g.max_samples {
            return Err(EvalError::TooManySamples);
        }
        Ok(())
    }

    pub fn warn(&self, msg: String) {
        let mut a = self.g.annots.borrow_mut();
        let s = format!("PromQL warning: {msg}");
        if !a.contains(&s) {
            a.push(s);
        }
    }

    pub fn info(&self, msg: String) {
        let mut a = self.g.annots.borrow_mut();
        let s = format!("PromQL info: {msg}");
        if !a.contains(&s) {
            a.push(s);
        }
    }

    /// Evaluates a node over all steps. Sample accounting: while a node is evaluated,
    /// its children's results count as held; once it returns, only its own result does
    /// (like Prometheus's `currentSamples`).
    pub fn eval(&self, e: &Expr) -> Result<V, EvalError> {
        if Instant::now() >= self.g.deadline {
            return Err(EvalError::Timeout("expression evaluation".into()));
        }
        let before = self.g.samples.get();
        let v = self.eval_node(e)?;
        let held = match &v {
            V::Scalar(s) => s.len(),
            V::Str(_) => 1,
            V::Vector(cols) => cols
                .iter()
                .map(|c| c.vals.iter().filter(|x| x.is_some()).count())
                .sum(),
            V::Range(r) => r.series.iter().map(|s| s.samples.len()).sum(),
        };
        self.g.samples.set(before);
        self.add_samples(held)?;
        Ok(v)
    }

    fn eval_node(&self, e: &Expr) -> Result<V, EvalError> {
        match e {
            Expr::NumberLiteral(n) => Ok(V::Scalar(vec![n.val; self.n])),
            Expr::StringLiteral(s) => Ok(V::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                V::Scalar(mut s) => {
                    s.iter_mut().for_each(|v| *v = -*v);
                    Ok(V::Scalar(s))
                }
                V::Vector(mut cols) => {
                    for c in &mut cols {
                        c.vals.iter_mut().flatten().for_each(|v| *v = -*v);
                    }
                    Ok(V::Vector(drop_metric_names(cols)?))
                }
                other => Err(EvalError::Execution(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got \"{}\"",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(V::Vector(self.eval_vector_selector(vs, None)?)),
            Expr::MatrixSelector(ms) => Ok(V::Range(self.eval_matrix_selector(
                &ms.vs,
                dur_ms(ms.range),
                None,
            )?)),
            Expr::Subquery(sq) => Ok(V::Range(self.eval_subquery(sq)?)),
            Expr::Binary(b) => super::binop::eval_binary(self, b),
            Expr::Aggregate(a) => match self.pushed(e)? {
                Some(cols) => Ok(V::Vector(cols)),
                None => super::aggregation::eval_aggregate(self, a),
            },
            Expr::Call(c) => super::functions::eval_call(self, c),
            Expr::Extension(_) => Err(EvalError::Execution(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// The result of aggregation `e` from [`Global::push`], when there is one and this
    /// evaluator is on the query's own grid (a subquery's steps are not the query's).
    fn pushed(&self, e: &Expr) -> Result<Option<Vec<Col>>, EvalError> {
        let Some(push) = self.g.push else {
            return Ok(None);
        };
        let (g, instant) = (self.g, self.g.qstep == 0);
        let on_grid = self.start == g.qstart
            && if instant {
                self.n == 1
            } else {
                self.step == g.qstep && self.n as i64 == (g.qend - g.qstart) / g.qstep + 1
            };
        if !on_grid {
            return Ok(None);
        }
        let Some(r) = push.aggregate(&e.to_string(), self.g.qstart, self.g.qend, self.g.qstep)
        else {
            return Ok(None);
        };
        let r = r?;
        for w in r.warnings {
            let mut a = self.g.annots.borrow_mut();
            if !a.contains(&w) {
                a.push(w);
            }
        }
        let cols = match r.value {
            Value::Vector(v) => v
                .into_iter()
                .map(|s| Col {
                    labels: s.labels,
                    vals: vec![Some(s.v)],
                })
                .collect(),
            Value::Matrix(m) => m
                .into_iter()
                .map(|s| {
                    let mut vals = vec![None; self.n];
                    for x in s.samples {
                        let i = (x.t - self.start) / self.step;
                        if let Some(v) = vals.get_mut(i as usize).filter(|_| i >= 0) {
                            *v = Some(x.v);
                        }
                    }
                    Col {
                        labels: s.labels,
                        vals,
                    }
                })
                .collect(),
            other => {
                return Err(EvalError::Execution(format!(
                    "pushed-down aggregation gave a {}",
                    other.type_name()
                )));
            }
        };
        Ok(Some(cols))
    }

    /// Evaluates `e` and requires an instant vector.
    pub fn eval_vector(&self, e: &Expr) -> Result<Vec<Col>, EvalError> {
        match self.eval(e)? {
            V::Vector(c) => Ok(c),
            other => Err(EvalError::Execution(format!(
                "expected instant vector, got {}",
                other.type_name()
            ))),
        }
    }

    /// Evaluates `e` and requires a scalar (one value per step).
    pub fn eval_scalar(&self, e: &Expr) -> Result<Vec<f64>, EvalError> {
        match self.eval(e)? {
            V::Scalar(s) => Ok(s),
            other => Err(EvalError::Execution(format!(
                "expected scalar, got {}",
                other.type_name()
            ))),
        }
    }

    /// The evaluation time of each step for a node with these modifiers.
    pub fn sel_times(&self, at: &Option<AtModifier>, offset: &Option<Offset>) -> Vec<i64> {
        let off = offset_ms(offset);
        match at {
            None => (0..self.n).map(|i| self.ts(i) - off).collect(),
            Some(a) => {
                let t = match a {
                    AtModifier::Start => self.g.qstart,
                    AtModifier::End => self.g.qend,
                    AtModifier::At(st) => system_time_ms(st),
                };
                vec![t - off; self.n]
            }
        }
    }

    fn select(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        range: i64,
        func: Option<&str>,
        grid: Option<StepGrid>,
    ) -> Result<Vec<Series>, EvalError> {
        let matchers = convert_matchers(vs)?;
        // The store loads at most what the query may still hold, and stops at the
        // query's deadline.
        let hints = SelectHints {
            start: mint,
            end: maxt,
            step: self.g.qstep,
            func: func.map(str::to_string),
            range,
            max_samples: Some(self.g.max_samples.saturating_sub(self.g.samples.get())),
            deadline: Some(self.g.deadline),
            grid,
        };
        let set = self.g.q.select(&hints, &matchers).map_err(storage_error)?;
        for w in set.warnings {
            let mut a = self.g.annots.borrow_mut();
            if !a.contains(&w) {
                a.push(w);
            }
        }
        Ok(set.series)
    }

    pub fn eval_vector_selector(
        &self,
        vs: &VectorSelector,
        func: Option<&str>,
    ) -> Result<Vec<Col>, EvalError> {
        Ok(self
            .eval_vs_with(vs, func, |s| s.v)?
            .into_iter()
            .map(|(labels, vals)| Col { labels, vals })
            .collect())
    }

    /// Like [`Ev::eval_vector_selector`] but keeps each point's sample timestamp.
    pub fn eval_vector_selector_ts(
        &self,
        vs: &VectorSelector,
        func: Option<&str>,
    ) -> Result<Vec<SeriesPoints>, EvalError> {
        self.eval_vs_with(vs, func, |s| s)
    }

    /// Evaluates an instant selector at every step, mapping each visible sample with `f`.
    fn eval_vs_with<T>(
        &self,
        vs: &VectorSelector,
        func: Option<&str>,
        f: impl Fn(Sample) -> T,
    ) -> Result<Vec<SeriesPoints<T>>, EvalError> {
        if self.n == 0 {
            return Ok(Vec::new());
        }
        let te = self.sel_times(&vs.at, &vs.offset);
        let (mn, mx) = min_max(&te);
        let lb = self.g.lookback;
        // Each step sees the latest sample at or before it: the store may leave out
        // the others (they are neither loaded nor counted).
        let grid = if vs.at.is_some() || self.n == 1 {
            StepGrid {
                first: te[0],
                step: 0,
                last: te[0],
            }
        } else {
            StepGrid {
                first: te[0],
                step: self.step,
                last: te[self.n - 1],
            }
        };
        let series = self.select(vs, mn - lb + 1, mx, 0, func, Some(grid))?;
        let mut out = Vec::with_capacity(series.len());
        let mut total = 0usize;
        for s in series {
            self.check()?;
            let mut vals = Vec::with_capacity(self.n);
            let mut j = 0usize; // number of samples with t <= te[i]
            let mut cnt = 0usize;
            for &t in &te {
                if j > 0 && s.samples[j - 1].t > t {
                    // Evaluation times only go forward, but be safe.
                    j = s.samples.partition_point(|x| x.t <= t);
                }
                while j < s.samples.len() && s.samples[j].t <= t {
                    j += 1;
                }
                let p = if j > 0 {
                    let smp = s.samples[j - 1];
                    (smp.t > t - lb && !is_stale_nan(smp.v)).then_some(smp)
                } else {
                    None
                };
                cnt += p.is_some() as usize;
                vals.push(p.map(&f));
            }
            if cnt > 0 {
                total += cnt;
                if total > 4096 {
                    self.add_samples(total)?;
                    total = 0;
                }
                out.push((s.labels, vals));
            }
        }
        self.add_samples(total)?;
        Ok(out)
    }

    pub fn eval_matrix_selector(
        &self,
        vs: &VectorSelector,
        range: i64,
        func: Option<&str>,
    ) -> Result<RangeVal, EvalError> {
        let te = self.sel_times(&vs.at, &vs.offset);
        if self.n == 0 {
            return Ok(RangeVal {
                series: Vec::new(),
                range,
                te,
            });
        }
        let (mn, mx) = min_max(&te);
        let series = self.select(vs, mn - range + 1, mx, range, func, None)?;
        let mut out = Vec::with_capacity(series.len());
        for mut s in series {
            self.check()?;
            if s.samples.iter().any(|x| is_stale_nan(x.v)) {
                s.samples.retain(|x| !is_stale_nan(x.v));
            }
            if s.samples.is_empty() {
                continue;
            }
            self.add_samples(s.samples.len())?;
            out.push(RSeries {
                labels: s.labels,
                samples: s.samples,
            });
        }
        Ok(RangeVal {
            series: out,
            range,
            te,
        })
    }

    pub fn eval_subquery(&self, sq: &parser::SubqueryExpr) -> Result<RangeVal, EvalError> {
        let te = self.sel_times(&sq.at, &sq.offset);
        let range = dur_ms(sq.range);
        let step = match sq.step {
            Some(s) if !s.is_zero() => dur_ms(s),
            _ => self.g.sub_step,
        };
        if self.n == 0 {
            return Ok(RangeVal {
                series: Vec::new(),
                range,
                te,
            });
        }
        let (mn, mx) = min_max(&te);
        let lo = mn - range;
        let mut istart = lo.div_euclid(step) * step;
        if istart <= lo {
            istart += step;
        }
        let steps = (mx.saturating_sub(istart) / step).saturating_add(1);
        if steps > self.g.max_samples as i64 {
            return Err(EvalError::TooManySamples);
        }
        let inner = Ev::new(self.g, istart, mx, step);
        let v = inner.eval(&sq.expr)?;
        let series = match v {
            V::Vector(cols) => cols
                .into_iter()
                .filter_map(|c| {
                    let samples = inner.column_samples(&c);
                    (!samples.is_empty()).then_some(RSeries {
                        labels: c.labels,
                        samples,
                    })
                })
                .collect(),
            V::Scalar(s) => vec![RSeries {
                labels: Labels::empty(),
                samples: s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Sample {
                        t: inner.ts(i),
                        v: *v,
                    })
                    .collect(),
            }],
            other => {
                return Err(EvalError::Execution(format!(
                    "subquery is only allowed on instant vector, got {}",
                    other.type_name()
                )));
            }
        };
        Ok(RangeVal { series, range, te })
    }
}

pub(crate) fn min_max(v: &[i64]) -> (i64, i64) {
    let mn = v.iter().copied().min().unwrap_or(0);
    let mx = v.iter().copied().max().unwrap_or(0);
    (mn, mx)
}

/// Converts the parser's matchers (plus the metric name) into shoal matchers.
pub(crate) fn convert_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(EvalError::BadData(
            "`or` in label matchers is not supported".into(),
        ));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    let mut has_name = false;
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            has_name = true;
        }
        let op = match &m.op {
            promql_parser::label::MatchOp::Equal => MatchOp::Equal,
            promql_parser::label::MatchOp::NotEqual => MatchOp::NotEqual,
            promql_parser::label::MatchOp::Re(_) => MatchOp::Regex,
            promql_parser::label::MatchOp::NotRe(_) => MatchOp::NotRegex,
        };
        let mm = match Matcher::new(op, m.name.clone(), m.value.clone()) {
            Ok(mm) => mm,
            Err(e) => match &m.op {
                // The parser accepted a Go-only regex form it rewrote; use its version.
                promql_parser::label::MatchOp::Re(r) | promql_parser::label::MatchOp::NotRe(r) => {
                    Matcher::new(op, m.name.clone(), r.as_str().to_string()).map_err(|_| {
                        EvalError::BadData(format!("invalid regular expression: {e}"))
                    })?
                }
                _ => return Err(EvalError::BadData(format!("invalid matcher: {e}"))),
            },
        };
        out.push(mm);
    }
    if let (Some(name), false) = (&vs.name, has_name) {
        out.push(Matcher::equal(METRIC_NAME, name.clone()));
    }
    Ok(out)
}

/// `labels` without `__name__`, reusing its allocation.
pub(crate) fn strip_name(l: Labels) -> Labels {
    if l.as_slice().iter().all(|x| x.name != METRIC_NAME) {
        return l;
    }
    let mut v = l.into_vec();
    v.retain(|x| x.name != METRIC_NAME);
    Labels::from_sorted(v)
}

/// Drops `__name__` from every column in place; merges columns that then collide (only
/// possible when the inputs had different metric names).
pub(crate) fn drop_metric_names(mut cols: Vec<Col>) -> Result<Vec<Col>, EvalError> {
    let may_collide = {
        let mut it = cols.iter().map(|c| c.labels.metric_name());
        match it.next() {
            Some(first) => it.any(|n| n != first),
            None => false,
        }
    };
    for c in &mut cols {
        c.labels = strip_name(std::mem::take(&mut c.labels));
    }
    if may_collide {
        merge_cols(cols)
    } else {
        Ok(cols)
    }
}

/// A fast (non-cryptographic, per-process) hasher for maps keyed by label sets.
pub(crate) type FastHash = xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// Merges columns with identical label sets; a step where two of them have a value is
/// an error, as in Prometheus.
pub(crate) fn merge_cols(cols: Vec<Col>) -> Result<Vec<Col>, EvalError> {
    if cols.len() < 2 {
        return Ok(cols);
    }
    // Fast path: distinct inputs stay distinct unless labels were rewritten to collide.
    let mut idx: HashMap<&Labels, usize, FastHash> =
        HashMap::with_capacity_and_hasher(cols.len(), FastHash::default());
    let mut dup = false;
    for (i, c) in cols.iter().enumerate() {
        if idx.insert(&c.labels, i).is_some() {
            dup = true;
            break;
        }
    }
    drop(idx);
    if !dup {
        return Ok(cols);
    }
    let mut map: HashMap<Labels, usize, FastHash> = HashMap::default();
    let mut out: Vec<Col> = Vec::new();
    for c in cols {
        match map.get(&c.labels) {
            Some(&i) => {
                let o = &mut out[i];
                for (a, b) in o.vals.iter_mut().zip(c.vals) {
                    if let Some(b) = b {
                        if a.is_some() {
                            return Err(EvalError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *a = Some(b);
                    }
                }
            }
            None => {
                map.insert(c.labels.clone(), out.len());
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// Builds output series whose label sets are only known per step (e.g. `count_values`).
pub(crate) struct OutBuilder {
    map: HashMap<Labels, usize>,
    pub cols: Vec<Col>,
    n: usize,
}

impl OutBuilder {
    pub fn new(n: usize) -> Self {
        OutBuilder {
            map: HashMap::new(),
            cols: Vec::new(),
            n,
        }
    }

    pub fn index(&mut self, labels: Labels) -> usize {
        if let Some(&i) = self.map.get(&labels) {
            return i;
        }
        let i = self.cols.len();
        self.map.insert(labels.clone(), i);
        self.cols.push(Col {
            labels,
            vals: vec![None; self.n],
        });
        i
    }

    pub fn set(&mut self, idx: usize, step: usize, v: f64) -> Result<(), EvalError> {
        let slot = &mut self.cols[idx].vals[step];
        if slot.is_some() {
            return Err(EvalError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
        *slot = Some(v);
        Ok(())
    }
}

/// Neumaier-compensated addition, as Prometheus's `kahanSumInc`.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemStore;

    fn store() -> MemStore {
        let st = MemStore::new();
        for i in 0..10 {
            for job in ["a", "b"] {
                let l = Labels::from_pairs(&[("__name__", "x"), ("job", job)]);
                st.insert(&l, i * 15_000, i as f64);
            }
        }
        st
    }

    #[test]
    fn instant_range_selector_returns_matrix() {
        let e = Engine::new(EngineOptions::default());
        let r = e
            .instant_query(&store(), "x{job=\"a\"}[1m]", 135_000)
            .unwrap();
        let Value::Matrix(m) = r.value else {
            panic!("expected matrix, got {:?}", r.value)
        };
        assert_eq!(m.len(), 1);
        // Left-open window (75s, 135s].
        let ts: Vec<i64> = m[0].samples.iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![90_000, 105_000, 120_000, 135_000]);
    }

    #[test]
    fn range_query_of_scalar_and_sorting() {
        let e = Engine::new(EngineOptions::default());
        let r = e.range_query(&store(), "x * 2", 0, 30_000, 15_000).unwrap();
        let Value::Matrix(m) = r.value else {
            panic!("expected matrix")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].labels, Labels::from_pairs(&[("job", "a")]));
        assert_eq!(
            m[0].samples.iter().map(|s| s.v).collect::<Vec<_>>(),
            vec![0.0, 2.0, 4.0]
        );
        let r = e
            .range_query(&store(), "time()", 0, 30_000, 15_000)
            .unwrap();
        let Value::Matrix(m) = r.value else {
            panic!("expected matrix")
        };
        assert_eq!(m[0].samples.len(), 3);
        assert!(e.range_query(&store(), "x[1m]", 0, 30_000, 15_000).is_err());
        assert!(e.range_query(&store(), "x", 0, 30_000, 0).is_err());
    }

    #[test]
    fn sample_limit_is_enforced() {
        let e = Engine::new(EngineOptions {
            max_samples: 5,
            ..Default::default()
        });
        let err = e.instant_query(&store(), "count_over_time(x[10m])", 135_000);
        assert_eq!(err.unwrap_err(), EvalError::TooManySamples);
        assert!(e.instant_query(&store(), "x{job=\"a\"}", 135_000).is_ok());
    }

    #[test]
    fn sample_limit_counts_results_not_just_loaded_samples() {
        let e = Engine::new(EngineOptions {
            max_samples: 50,
            ..Default::default()
        });
        let err = e.range_query(&store(), "vector(1)", 0, 100_000, 1_000);
        assert_eq!(err.unwrap_err(), EvalError::TooManySamples);
        assert!(
            e.range_query(&store(), "vector(1)", 0, 40_000, 1_000)
                .is_ok()
        );
    }

    #[test]
    fn huge_step_counts_and_times_are_rejected_not_allocated() {
        let e = Engine::new(EngineOptions::default());
        assert_eq!(
            e.range_query(&store(), "x", 0, 1_000_000_000_000, 1)
                .unwrap_err(),
            EvalError::TooManySamples
        );
        assert_eq!(
            e.instant_query(&store(), "max_over_time(x[10000d:1ms])", 0)
                .unwrap_err(),
            EvalError::TooManySamples
        );
        assert!(e.instant_query(&store(), "x", i64::MAX).is_err());
        assert!(e.instant_query(&store(), "x offset 1000000000y", 0).is_ok());
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
        check::<std::sync::Arc<Engine>>();
    }

    #[test]
    fn timeout_is_enforced() {
        let e = Engine::new(EngineOptions {
            timeout: Duration::ZERO,
            ..Default::default()
        });
        let err = e.instant_query(&store(), "sum(x)", 135_000).unwrap_err();
        assert!(matches!(err, EvalError::Timeout(_)), "{err:?}");
    }

    /// A store that records the hints of every select and answers with `answer`.
    struct Recorder<F>(std::sync::Mutex<Vec<SelectHints>>, MemStore, F);

    impl<F> Queryable for Recorder<F>
    where
        F: Fn(
                &MemStore,
                &SelectHints,
                &[Matcher],
            ) -> Result<crate::storage::SeriesSet, crate::storage::StorageError>
            + Send
            + Sync,
    {
        fn select(
            &self,
            h: &SelectHints,
            m: &[Matcher],
        ) -> Result<crate::storage::SeriesSet, crate::storage::StorageError> {
            self.0.lock().unwrap().push(h.clone());
            (self.2)(&self.1, h, m)
        }
        fn series(
            &self,
            a: i64,
            b: i64,
            m: &[Matcher],
        ) -> Result<Vec<Labels>, crate::storage::StorageError> {
            self.1.series(a, b, m)
        }
        fn label_names(
            &self,
            a: i64,
            b: i64,
            m: &[Matcher],
        ) -> Result<Vec<String>, crate::storage::StorageError> {
            self.1.label_names(a, b, m)
        }
        fn label_values(
            &self,
            n: &str,
            a: i64,
            b: i64,
            m: &[Matcher],
        ) -> Result<Vec<String>, crate::storage::StorageError> {
            self.1.label_values(n, a, b, m)
        }
    }

    /// Every select is told what the query may still load and when it must stop.
    #[test]
    fn selects_get_the_remaining_sample_budget_and_the_deadline() {
        let rec = Recorder(
            Default::default(),
            store(),
            |st: &MemStore, h: &SelectHints, m: &[Matcher]| st.select(h, m),
        );
        let e = Engine::new(EngineOptions {
            max_samples: 1000,
            timeout: Duration::from_secs(30),
            ..Default::default()
        });
        let before = Instant::now();
        // The left side's two samples are held while the right side is selected.
        e.instant_query(&rec, "x + on(job) x", 135_000).unwrap();
        let after = Instant::now();
        let h = rec.0.lock().unwrap().clone();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].max_samples, Some(1000));
        assert_eq!(h[1].max_samples, Some(998));
        for h in &h {
            let d = h.deadline.expect("a deadline");
            assert!(d >= before + Duration::from_secs(30) && d <= after + Duration::from_secs(30));
        }
        // An earlier deadline in the options (the request's arrival plus its timeout)
        // wins over the timeout counted from the start of the evaluation.
        let early = before + Duration::from_secs(5);
        let e = Engine::new(EngineOptions {
            deadline: Some(early),
            ..Default::default()
        });
        rec.0.lock().unwrap().clear();
        e.instant_query(&rec, "x", 135_000).unwrap();
        assert_eq!(rec.0.lock().unwrap()[0].deadline, Some(early));
    }

    /// A store that stops at a limit makes the query fail with the limit's error.
    #[test]
    fn limits_hit_in_the_store_are_query_errors() {
        let too_many = Recorder(
            Default::default(),
            store(),
            |_: &MemStore, _: &SelectHints, _: &[Matcher]| {
                Err(crate::storage::StorageError::too_many_samples())
            },
        );
        let e = Engine::new(EngineOptions::default());
        assert_eq!(
            e.instant_query(&too_many, "sum(x)", 135_000).unwrap_err(),
            EvalError::TooManySamples
        );
        let late = Recorder(
            Default::default(),
            store(),
            |_: &MemStore, _: &SelectHints, _: &[Matcher]| {
                Err(crate::storage::StorageError::timeout("query execution"))
            },
        );
        let err = e.instant_query(&late, "sum(x)", 135_000).unwrap_err();
        assert_eq!(err, EvalError::Timeout("query execution".into()));
        assert_eq!(err.to_string(), "query timed out in query execution");
        // The in-memory store honours the budget itself: 20 samples in the window.
        let e = Engine::new(EngineOptions {
            max_samples: 19,
            ..Default::default()
        });
        assert_eq!(
            e.instant_query(&store(), "count(count_over_time(x[10m]))", 135_000)
                .unwrap_err(),
            EvalError::TooManySamples
        );
        // A deadline that has passed stops the query before it reads anything.
        let rec = Recorder(
            Default::default(),
            store(),
            |st: &MemStore, h: &SelectHints, m: &[Matcher]| st.select(h, m),
        );
        let e = Engine::new(EngineOptions {
            deadline: Some(Instant::now()),
            ..Default::default()
        });
        assert!(matches!(
            e.instant_query(&rec, "x", 135_000),
            Err(EvalError::Timeout(_))
        ));
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn parse_errors_are_parse_errors() {
        let e = Engine::new(EngineOptions::default());
        assert!(matches!(
            e.instant_query(&store(), "sum(", 0),
            Err(EvalError::Parse(_))
        ));
        assert!(matches!(
            e.instant_query(
                &store(),
                "label_replace(x, \"\\xff\", \"\", \"a\", \"\")",
                0
            ),
            Err(EvalError::Parse(_))
        ));
    }

    #[test]
    fn select_hints_cover_the_widest_range() {
        struct Spy(MemStore, std::sync::Mutex<Vec<SelectHints>>);
        impl Queryable for Spy {
            fn select(
                &self,
                h: &SelectHints,
                m: &[Matcher],
            ) -> Result<crate::storage::SeriesSet, crate::storage::StorageError> {
                self.1.lock().unwrap().push(h.clone());
                self.0.select(h, m)
            }
            fn series(
                &self,
                a: i64,
                b: i64,
                m: &[Matcher],
            ) -> Result<Vec<Labels>, crate::storage::StorageError> {
                self.0.series(a, b, m)
            }
            fn label_names(
                &self,
                a: i64,
                b: i64,
                m: &[Matcher],
            ) -> Result<Vec<String>, crate::storage::StorageError> {
                self.0.label_names(a, b, m)
            }
            fn label_values(
                &self,
                n: &str,
                a: i64,
                b: i64,
                m: &[Matcher],
            ) -> Result<Vec<String>, crate::storage::StorageError> {
                self.0.label_values(n, a, b, m)
            }
        }
        let spy = Spy(store(), Default::default());
        let e = Engine::new(EngineOptions::default());
        e.range_query(&spy, "rate(x[1m] offset 30s)", 600_000, 900_000, 60_000)
            .unwrap();
        let h = spy.1.lock().unwrap().clone();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].start, 600_000 - 60_000 - 30_000 + 1);
        assert_eq!(h[0].end, 900_000 - 30_000);
        assert_eq!(h[0].range, 60_000);
        assert_eq!(h[0].step, 60_000);
        assert_eq!(h[0].func.as_deref(), Some("rate"));
    }

    /// The pushdown hook is offered every aggregation on the query's own grid (also
    /// inside a function), not those inside a subquery, and its answer is used.
    #[test]
    fn aggregations_on_the_query_grid_are_offered_to_pushdown() {
        struct Push(std::sync::Mutex<Vec<(String, i64, i64, i64)>>);
        impl Pushdown for Push {
            fn aggregate(
                &self,
                expr: &str,
                start: i64,
                end: i64,
                step: i64,
            ) -> Option<Result<QueryResult, EvalError>> {
                self.0
                    .lock()
                    .unwrap()
                    .push((expr.to_string(), start, end, step));
                if !expr.starts_with("sum by (job)") {
                    return None;
                }
                let labels = Labels::from_pairs(&[("job", "pushed")]);
                let value = if step == 0 {
                    Value::Vector(vec![VectorSample {
                        labels,
                        t: end,
                        v: 42.0,
                    }])
                } else {
                    Value::Matrix(vec![Series {
                        labels,
                        samples: vec![Sample {
                            t: start + step,
                            v: 7.0,
                        }],
                    }])
                };
                Some(Ok(QueryResult {
                    value,
                    warnings: vec!["from members".into()],
                }))
            }
        }
        let (st, e) = (store(), Engine::new(EngineOptions::default()));
        let push = Push(Default::default());
        let r = e
            .instant_query_pushdown(&st, &push, "2 * sum by (job) (x)", 60_000)
            .unwrap();
        let Value::Vector(v) = r.value else {
            panic!("vector")
        };
        assert_eq!((v.len(), v[0].v), (1, 84.0));
        assert_eq!(r.warnings, vec!["from members".to_string()]);
        let r = e
            .range_query_pushdown(&st, &push, "sum by (job) (x)", 0, 100_000, 30_000)
            .unwrap();
        let Value::Matrix(m) = r.value else {
            panic!("matrix")
        };
        assert_eq!(m[0].samples, vec![Sample { t: 30_000, v: 7.0 }]);
        // Declined (and nested in a subquery: never offered): evaluated here.
        push.0.lock().unwrap().clear();
        let r = e
            .instant_query_pushdown(&st, &push, "max_over_time(sum(x)[1m:15s]) + sum(x)", 60_000)
            .unwrap();
        let Value::Vector(v) = r.value else {
            panic!("vector")
        };
        assert_eq!(v[0].v, 8.0 + 8.0);
        assert_eq!(
            *push.0.lock().unwrap(),
            vec![("sum(x)".to_string(), 60_000, 60_000, 0)]
        );
    }
}
