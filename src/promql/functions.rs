//! PromQL functions (the float, non-experimental set of Prometheus 3.x): rate-like
//! functions with Prometheus's extrapolation, `*_over_time`, math and date functions,
//! label manipulation, `histogram_quantile` over classic buckets, and friends.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use promql_parser::parser::{Call, Expr};

use super::aggregation::{AccState, avg_step, quantile};
use super::engine::{
    Col, Ev, RangeVal, V, convert_matchers, drop_metric_names, dur_ms, kahan_inc, merge_cols,
    window,
};
use super::value::{EvalError, format_value};
use crate::model::labels::METRIC_NAME;
use crate::model::{Labels, MatchOp, Sample};

fn arg(c: &Call, i: usize) -> Result<&Expr, EvalError> {
    c.args
        .args
        .get(i)
        .map(|b| b.as_ref())
        .ok_or_else(|| EvalError::BadData(format!("missing argument {i} of {}", c.func.name)))
}

fn eval_range(ev: &Ev, e: &Expr, func: &str) -> Result<RangeVal, EvalError> {
    match e {
        Expr::MatrixSelector(ms) => ev.eval_matrix_selector(&ms.vs, dur_ms(ms.range), Some(func)),
        Expr::Subquery(sq) => ev.eval_subquery(sq),
        Expr::Paren(p) => eval_range(ev, &p.expr, func),
        other => match ev.eval(other)? {
            V::Range(r) => Ok(r),
            v => Err(EvalError::Execution(format!(
                "expected range vector, got {}",
                v.type_name()
            ))),
        },
    }
}

fn eval_string(ev: &Ev, e: &Expr) -> Result<String, EvalError> {
    match ev.eval(e)? {
        V::Str(s) => Ok(s),
        v => Err(EvalError::Execution(format!(
            "expected string, got {}",
            v.type_name()
        ))),
    }
}

/// Slides the window of every step over every series and applies `f`.
fn over_range(
    ev: &Ev,
    r: RangeVal,
    keep_name: bool,
    f: impl FnMut(&[Sample], usize, i64) -> Option<f64>,
) -> Result<Vec<Col>, EvalError> {
    over_range_opts(ev, r, keep_name, false, f)
}

/// [`over_range`], optionally adding Prometheus's "might not be a counter" info for
/// `rate`/`increase`. Each series' labels are touched once: the metric name is removed
/// in place, and merging is only needed when the inputs had different names.
fn over_range_opts(
    ev: &Ev,
    r: RangeVal,
    keep_name: bool,
    counter_check: bool,
    mut f: impl FnMut(&[Sample], usize, i64) -> Option<f64>,
) -> Result<Vec<Col>, EvalError> {
    let mut out = Vec::with_capacity(r.series.len());
    let monotonic = r.te.windows(2).all(|w| w[0] <= w[1]);
    let mut first_name: Option<Option<String>> = None;
    let mut may_collide = false;
    let mut last_noted: Option<String> = None;
    for s in r.series {
        ev.check()?;
        let mut vals = Vec::with_capacity(r.te.len());
        let mut any = false;
        let (mut lo, mut hi) = (0usize, 0usize);
        for (i, &te) in r.te.iter().enumerate() {
            let w = if monotonic {
                let mint = te - r.range;
                while lo < s.samples.len() && s.samples[lo].t <= mint {
                    lo += 1;
                }
                while hi < s.samples.len() && s.samples[hi].t <= te {
                    hi += 1;
                }
                if lo < hi { &s.samples[lo..hi] } else { &[][..] }
            } else {
                window(&s.samples, te - r.range, te)
            };
            let v = if w.is_empty() { None } else { f(w, i, te) };
            any |= v.is_some();
            vals.push(v);
        }
        if !any {
            continue;
        }
        if keep_name {
            out.push(Col {
                labels: s.labels,
                vals,
            });
            continue;
        }
        let mut v = s.labels.into_vec();
        let name = v
            .iter()
            .position(|l| l.name == METRIC_NAME)
            .map(|p| v.remove(p).value);
        if counter_check {
            let n = name.as_deref().unwrap_or("");
            if last_noted.as_deref() != Some(n) {
                if !n.is_empty()
                    && !["_total", "_sum", "_count", "_bucket"]
                        .iter()
                        .any(|suf| n.ends_with(suf))
                {
                    ev.info(format!(
                        "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"{n}\" (1:1)"
                    ));
                }
                last_noted = Some(n.to_string());
            }
        }
        match &first_name {
            None => first_name = Some(name),
            Some(f) => may_collide |= *f != name,
        }
        out.push(Col {
            labels: Labels::from_sorted(v),
            vals,
        });
    }
    if may_collide {
        merge_cols(out)
    } else {
        Ok(out)
    }
}

/// Applies `f` to every value of an instant vector, dropping the metric name.
fn map_vector(
    mut cols: Vec<Col>,
    mut f: impl FnMut(f64, usize) -> f64,
) -> Result<Vec<Col>, EvalError> {
    for c in &mut cols {
        for (i, v) in c.vals.iter_mut().enumerate() {
            if let Some(x) = v {
                *x = f(*x, i);
            }
        }
    }
    drop_metric_names(cols)
}

fn extrapolated_rate(
    w: &[Sample],
    te: i64,
    range: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let range_start = te - range;
    let range_end = te;
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last.v - first.v;
    if is_counter {
        let mut prev = first.v;
        for s in &w[1..] {
            if s.v < prev {
                result += prev;
            }
            prev = s.v;
        }
    }
    let mut dur_to_start = (first.t - range_start) as f64 / 1000.0;
    let mut dur_to_end = (range_end - last.t) as f64 / 1000.0;
    let sampled = (last.t - first.t) as f64 / 1000.0;
    let avg_between = sampled / (w.len() - 1) as f64;
    let threshold = avg_between * 1.1;
    let mut extrapolate_to = sampled;
    if dur_to_start >= threshold {
        dur_to_start = avg_between / 2.0;
    }
    if is_counter && result > 0.0 && first.v >= 0.0 {
        let dur_to_zero = sampled * (first.v / result);
        if dur_to_zero < dur_to_start {
            dur_to_start = dur_to_zero;
        }
    }
    extrapolate_to += dur_to_start;
    if dur_to_end >= threshold {
        dur_to_end = avg_between / 2.0;
    }
    extrapolate_to += dur_to_end;
    let mut factor = extrapolate_to / sampled;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_value(w: &[Sample], is_rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let last = w[w.len() - 1];
    let prev = w[w.len() - 2];
    let mut v = if is_rate && last.v < prev.v {
        last.v
    } else {
        last.v - prev.v
    };
    let dt = last.t - prev.t;
    if dt == 0 {
        return None;
    }
    if is_rate {
        v /= dt as f64 / 1000.0;
    }
    Some(v)
}

fn linear_regression(w: &[Sample], intercept_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init_y = w[0].v;
    let mut const_y = true;
    for (i, s) in w.iter().enumerate() {
        if const_y && i > 0 && s.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (s.t - intercept_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(s.v, sy, cy);
        (sxy, cxy) = kahan_inc(x * s.v, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    let intercept = sy / n - slope * sx / n;
    (slope, intercept)
}

fn variance(w: &[Sample]) -> f64 {
    let (mut count, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in w {
        count += 1.0;
        let delta = s.v - (mean + cmean);
        (mean, cmean) = kahan_inc(delta / count, mean, cmean);
        (aux, caux) = kahan_inc(delta * (s.v - (mean + cmean)), aux, caux);
    }
    (aux + caux) / count
}

/// Labels `absent`/`absent_over_time` give their output: the `=` matchers of a selector.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let Ok(ms) = convert_matchers(vs) else {
        return Labels::empty();
    };
    let mut b = Labels::empty().builder();
    let mut has: Vec<&str> = Vec::new();
    for m in &ms {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name.as_str()) {
            b.set(&m.name, &m.value);
            has.push(&m.name);
        } else {
            b.del(&m.name);
        }
    }
    b.build()
}

fn date_fn(name: &str, secs: f64) -> f64 {
    let Some(d) = DateTime::<Utc>::from_timestamp(secs as i64, 0) else {
        return f64::NAN;
    };
    match name {
        "year" => d.year() as f64,
        "month" => d.month() as f64,
        "day_of_month" => d.day() as f64,
        "day_of_week" => d.weekday().num_days_from_sunday() as f64,
        "day_of_year" => d.ordinal() as f64,
        "hour" => d.hour() as f64,
        "minute" => d.minute() as f64,
        "days_in_month" => {
            let (y, m) = (d.year(), d.month());
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            match (
                chrono::NaiveDate::from_ymd_opt(y, m, 1),
                chrono::NaiveDate::from_ymd_opt(ny, nm, 1),
            ) {
                (Some(a), Some(b)) => (b - a).num_days() as f64,
                _ => f64::NAN,
            }
        }
        _ => f64::NAN,
    }
}

fn math_fn(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |x| x * 180.0 / std::f64::consts::PI,
        "rad" => |x| x * std::f64::consts::PI / 180.0,
        "sgn" => |x: f64| {
            if x < 0.0 {
                -1.0
            } else if x > 0.0 {
                1.0
            } else {
                x
            }
        },
        _ => return None,
    })
}

pub(crate) fn eval_call(ev: &Ev, c: &Call) -> Result<V, EvalError> {
    let name = c.func.name;
    let n = ev.n;
    if let Some(f) = math_fn(name) {
        let cols = ev.eval_vector(arg(c, 0)?)?;
        return Ok(V::Vector(map_vector(cols, |x, _| f(x))?));
    }
    match name {
        "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "changes" | "resets"
        | "avg_over_time" | "min_over_time" | "max_over_time" | "sum_over_time"
        | "count_over_time" | "last_over_time" | "present_over_time" | "stddev_over_time"
        | "stdvar_over_time" => {
            let r = eval_range(ev, arg(c, 0)?, name)?;
            let range = r.range;
            let keep = name == "last_over_time";
            let counter_check = name == "rate" || name == "increase";
            let cols = over_range_opts(ev, r, keep, counter_check, |w, _i, te| match name {
                "rate" => extrapolated_rate(w, te, range, true, true),
                "increase" => extrapolated_rate(w, te, range, true, false),
                "delta" => extrapolated_rate(w, te, range, false, false),
                "irate" => instant_value(w, true),
                "idelta" => instant_value(w, false),
                "deriv" => (w.len() >= 2).then(|| linear_regression(w, w[0].t).0),
                "changes" => Some(
                    w.windows(2)
                        .filter(|p| p[1].v != p[0].v && !(p[1].v.is_nan() && p[0].v.is_nan()))
                        .count() as f64,
                ),
                "resets" => Some(w.windows(2).filter(|p| p[1].v < p[0].v).count() as f64),
                "avg_over_time" => {
                    let mut a = AccState {
                        count: 1.0,
                        value: w[0].v,
                        ..Default::default()
                    };
                    for s in &w[1..] {
                        a.count += 1.0;
                        avg_step(&mut a, s.v);
                    }
                    Some(if a.incremental {
                        a.mean + a.c
                    } else {
                        (a.value + a.c) / a.count
                    })
                }
                "min_over_time" => Some(
                    w.iter()
                        .fold(w[0].v, |m, s| if s.v < m || m.is_nan() { s.v } else { m }),
                ),
                "max_over_time" => Some(
                    w.iter()
                        .fold(w[0].v, |m, s| if s.v > m || m.is_nan() { s.v } else { m }),
                ),
                "sum_over_time" => {
                    let (mut s, mut cc) = (0.0, 0.0);
                    for x in w {
                        (s, cc) = kahan_inc(x.v, s, cc);
                    }
                    Some(if (s + cc).is_infinite() { s } else { s + cc })
                }
                "count_over_time" => Some(w.len() as f64),
                "last_over_time" => Some(w[w.len() - 1].v),
                "present_over_time" => Some(1.0),
                "stdvar_over_time" => Some(variance(w)),
                "stddev_over_time" => Some(variance(w).sqrt()),
                _ => None,
            })?;
            Ok(V::Vector(cols))
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(arg(c, 0)?)?;
            for &qv in &q {
                if qv.is_nan() || !(0.0..=1.0).contains(&qv) {
                    ev.warn(format!(
                        "quantile value should be between 0 and 1, got {} (1:1)",
                        format_value(qv)
                    ));
                }
            }
            let r = eval_range(ev, arg(c, 1)?, name)?;
            let mut buf = Vec::new();
            let cols = over_range(ev, r, false, |w, i, _| {
                buf.clear();
                buf.extend(w.iter().map(|s| s.v));
                Some(quantile(q[i], &mut buf))
            })?;
            Ok(V::Vector(cols))
        }
        "predict_linear" => {
            let r = eval_range(ev, arg(c, 0)?, name)?;
            let d = ev.eval_scalar(arg(c, 1)?)?;
            let cols = over_range(ev, r, false, |w, i, _| {
                if w.len() < 2 {
                    return None;
                }
                let (slope, intercept) = linear_regression(w, ev.ts(i));
                Some(slope * d[i] + intercept)
            })?;
            Ok(V::Vector(cols))
        }
        "absent_over_time" => {
            let e = arg(c, 0)?;
            let r = eval_range(ev, e, name)?;
            let mut present = vec![false; n];
            for s in &r.series {
                for (i, &te) in r.te.iter().enumerate() {
                    if !present[i] && !window(&s.samples, te - r.range, te).is_empty() {
                        present[i] = true;
                    }
                }
            }
            let vals: Vec<Option<f64>> = present.iter().map(|p| (!p).then_some(1.0)).collect();
            Ok(V::Vector(absent_result(absent_labels(e), vals)))
        }
        "absent" => {
            let e = arg(c, 0)?;
            let cols = ev.eval_vector(e)?;
            let vals: Vec<Option<f64>> = (0..n)
                .map(|i| (!cols.iter().any(|c| c.vals[i].is_some())).then_some(1.0))
                .collect();
            Ok(V::Vector(absent_result(absent_labels(e), vals)))
        }
        "time" => Ok(V::Scalar(
            (0..n).map(|i| ev.ts(i) as f64 / 1000.0).collect(),
        )),
        "pi" => Ok(V::Scalar(vec![std::f64::consts::PI; n])),
        "vector" => {
            let s = ev.eval_scalar(arg(c, 0)?)?;
            Ok(V::Vector(vec![Col {
                labels: Labels::empty(),
                vals: s.into_iter().map(Some).collect(),
            }]))
        }
        "scalar" => {
            let cols = ev.eval_vector(arg(c, 0)?)?;
            let mut out = vec![f64::NAN; n];
            for (i, o) in out.iter_mut().enumerate() {
                let mut it = cols.iter().filter_map(|c| c.vals[i]);
                if let (Some(v), None) = (it.next(), it.next()) {
                    *o = v;
                }
            }
            Ok(V::Scalar(out))
        }
        "timestamp" => {
            let e = unwrap_paren(arg(c, 0)?);
            if let Expr::VectorSelector(vs) = e {
                let s = ev.eval_vector_selector_ts(vs, Some(name))?;
                let cols = s
                    .into_iter()
                    .map(|(labels, vals)| Col {
                        labels,
                        vals: vals
                            .into_iter()
                            .map(|o| o.map(|s| s.t as f64 / 1000.0))
                            .collect(),
                    })
                    .collect();
                return Ok(V::Vector(drop_metric_names(cols)?));
            }
            let cols = ev.eval_vector(e)?;
            Ok(V::Vector(map_vector(cols, |_, i| {
                ev.ts(i) as f64 / 1000.0
            })?))
        }
        "year" | "month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "days_in_month" => {
            if c.args.args.is_empty() {
                return Ok(V::Vector(vec![Col {
                    labels: Labels::empty(),
                    vals: (0..n)
                        .map(|i| Some(date_fn(name, (ev.ts(i).div_euclid(1000)) as f64)))
                        .collect(),
                }]));
            }
            let cols = ev.eval_vector(arg(c, 0)?)?;
            Ok(V::Vector(map_vector(cols, |x, _| date_fn(name, x))?))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let cols = ev.eval_vector(arg(c, 0)?)?;
            let a1 = ev.eval_scalar(arg(c, 1)?)?;
            let a2 = if name == "clamp" {
                ev.eval_scalar(arg(c, 2)?)?
            } else {
                Vec::new()
            };
            let mut cols = map_vector(cols, |x, i| match name {
                "clamp" => go_max(a1[i], go_min(a2[i], x)),
                "clamp_min" => go_max(a1[i], x),
                _ => go_min(a1[i], x),
            })?;
            if name == "clamp" {
                for c in &mut cols {
                    for (i, v) in c.vals.iter_mut().enumerate() {
                        if a2[i] < a1[i] {
                            *v = None;
                        }
                    }
                }
                cols.retain(|c| c.vals.iter().any(Option::is_some));
            }
            Ok(V::Vector(cols))
        }
        "round" => {
            let cols = ev.eval_vector(arg(c, 0)?)?;
            let to = match c.args.args.get(1) {
                Some(e) => ev.eval_scalar(e)?,
                None => vec![1.0; n],
            };
            Ok(V::Vector(map_vector(cols, |x, i| {
                let inv = 1.0 / to[i];
                (x * inv + 0.5).floor() / inv
            })?))
        }
        "sort" | "sort_desc" => {
            let mut cols = ev.eval_vector(arg(c, 0)?)?;
            if ev.g.qstep > 0 {
                ev.warn(
                    "sort is ineffective for range queries since results are always ordered by labels (1:1)"
                        .into(),
                );
            }
            if n == 1 {
                let desc = name == "sort_desc";
                cols.sort_by(|a, b| {
                    use std::cmp::Ordering::*;
                    let (x, y) = (a.vals[0].unwrap_or(f64::NAN), b.vals[0].unwrap_or(f64::NAN));
                    match (x.is_nan(), y.is_nan()) {
                        (true, true) => Equal,
                        (true, false) => Greater,
                        (false, true) => Less,
                        _ => {
                            let o = x.partial_cmp(&y).unwrap_or(Equal);
                            if desc { o.reverse() } else { o }
                        }
                    }
                });
            }
            Ok(V::Vector(cols))
        }
        "label_replace" => {
            let mut cols = ev.eval_vector(arg(c, 0)?)?;
            let dst = eval_string(ev, arg(c, 1)?)?;
            let repl = eval_string(ev, arg(c, 2)?)?;
            let src = eval_string(ev, arg(c, 3)?)?;
            let re_s = eval_string(ev, arg(c, 4)?)?;
            let re = regex::Regex::new(&format!("^(?s:{re_s})$")).map_err(|_| {
                EvalError::Execution(format!(
                    "invalid regular expression in label_replace(): {re_s}"
                ))
            })?;
            if !valid_label_name_utf8(&dst) {
                return Err(EvalError::Execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            for col in &mut cols {
                let sv = col.labels.get(&src).unwrap_or("");
                if let Some(caps) = re.captures(sv) {
                    let mut res = String::new();
                    caps.expand(&repl, &mut res);
                    let mut b = col.labels.builder();
                    b.set(&dst, &res);
                    col.labels = b.build();
                }
            }
            Ok(V::Vector(merge_cols(cols)?))
        }
        "label_join" => {
            let mut cols = ev.eval_vector(arg(c, 0)?)?;
            let dst = eval_string(ev, arg(c, 1)?)?;
            let sep = eval_string(ev, arg(c, 2)?)?;
            let mut srcs = Vec::new();
            for e in c.args.args.iter().skip(3) {
                srcs.push(eval_string(ev, e)?);
            }
            if !valid_label_name_utf8(&dst) {
                return Err(EvalError::Execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            for col in &mut cols {
                let joined = srcs
                    .iter()
                    .map(|s| col.labels.get(s).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(&sep);
                let mut b = col.labels.builder();
                b.set(&dst, &joined);
                col.labels = b.build();
            }
            Ok(V::Vector(merge_cols(cols)?))
        }
        "histogram_quantile" => histogram_quantile(ev, c),
        other => Err(EvalError::BadData(format!(
            "function \"{other}\" is not supported"
        ))),
    }
}

/// Go's `math.Max`: NaN wins over everything but +Inf.
fn go_max(a: f64, b: f64) -> f64 {
    if a == f64::INFINITY || b == f64::INFINITY {
        f64::INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins over everything but -Inf.
fn go_min(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY || b == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn valid_label_name_utf8(s: &str) -> bool {
    !s.is_empty()
}

fn unwrap_paren(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_paren(&p.expr),
        other => other,
    }
}

fn absent_result(labels: Labels, vals: Vec<Option<f64>>) -> Vec<Col> {
    if vals.iter().any(Option::is_some) {
        vec![Col { labels, vals }]
    } else {
        Vec::new()
    }
}

const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a == b {
        return true;
    }
    let (sum, diff) = (a.abs() + b.abs(), (a - b).abs());
    if a == 0.0 || b == 0.0 || sum < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / sum.min(f64::MAX) < eps
}

/// Prometheus's `BucketQuantile`: (value, forced monotonicity, fixed precision).
pub(crate) fn bucket_quantile(q: f64, b: &mut Vec<(f64, f64)>) -> (f64, bool, bool) {
    if q.is_nan() {
        return (f64::NAN, false, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false, false);
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    match b.last() {
        Some(l) if l.0 == f64::INFINITY => {}
        _ => return (f64::NAN, false, false),
    }
    // Coalesce equal bounds.
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(ub, c) in b.iter() {
        match out.last_mut() {
            Some(l) if l.0 == ub => l.1 += c,
            _ => out.push((ub, c)),
        }
    }
    *b = out;
    let (mut forced, mut fixed) = (false, false);
    let mut prev = b[0].1;
    for x in b.iter_mut().skip(1) {
        let curr = x.1;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) {
            x.1 = prev;
            fixed = true;
            continue;
        }
        if curr < prev {
            x.1 = prev;
            forced = true;
            continue;
        }
        prev = curr;
    }
    if b.len() < 2 {
        return (f64::NAN, false, false);
    }
    let obs = b[b.len() - 1].1;
    if obs == 0.0 {
        return (f64::NAN, false, false);
    }
    let mut rank = q * obs;
    let idx = b[..b.len() - 1].partition_point(|x| x.1 < rank);
    if idx == b.len() - 1 {
        return (b[b.len() - 2].0, forced, fixed);
    }
    if idx == 0 && b[0].0 <= 0.0 {
        return (b[0].0, forced, fixed);
    }
    let mut start = 0.0;
    let end = b[idx].0;
    let mut count = b[idx].1;
    if idx > 0 {
        start = b[idx - 1].0;
        count -= b[idx - 1].1;
        rank -= b[idx - 1].1;
    }
    (start + (end - start) * (rank / count), forced, fixed)
}

fn histogram_quantile(ev: &Ev, c: &Call) -> Result<V, EvalError> {
    let n = ev.n;
    let q = ev.eval_scalar(arg(c, 0)?)?;
    let cols = ev.eval_vector(arg(c, 1)?)?;
    for &qv in &q {
        if qv.is_nan() || !(0.0..=1.0).contains(&qv) {
            ev.warn(format!(
                "quantile value should be between 0 and 1, got {} (1:1)",
                format_value(qv)
            ));
        }
    }
    // Group by labels without `le` (the metric name is part of the group, as with
    // Prometheus's delayed name removal; it is dropped from the output).
    let mut gmap: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<(f64, usize)>)> = Vec::new();
    for (i, col) in cols.iter().enumerate() {
        let ub = match col.labels.get("le").map(|s| s.trim().parse::<f64>()) {
            Some(Ok(v)) => v,
            _ => {
                let name = col.labels.metric_name().unwrap_or("");
                ev.warn(format!(
                    "bucket label \"le\" is missing or has a malformed value of \"{}\" for metric name \"{}\" (1:1)",
                    col.labels.get("le").unwrap_or(""),
                    name
                ));
                continue;
            }
        };
        let gl = col.labels.drop_names(&["le".to_string()]);
        let g = match gmap.get(&gl) {
            Some(&g) => g,
            None => {
                let g = groups.len();
                gmap.insert(gl.clone(), g);
                groups.push((gl, Vec::new()));
                g
            }
        };
        groups[g].1.push((ub, i));
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut buf = Vec::new();
    for (labels, members) in groups {
        ev.check()?;
        let mut vals = vec![None; n];
        for (step, v) in vals.iter_mut().enumerate() {
            buf.clear();
            for &(ub, i) in &members {
                if let Some(x) = cols[i].vals[step] {
                    buf.push((ub, x));
                }
            }
            if buf.is_empty() {
                continue;
            }
            let (res, forced, _) = bucket_quantile(q[step], &mut buf);
            if forced {
                let name = cols[members[0].1].labels.metric_name().unwrap_or("");
                ev.info(format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name \"{name}\" (1:1)"
                ));
            }
            *v = Some(res);
        }
        if vals.iter().any(Option::is_some) {
            out.push(Col {
                labels: labels.without_metric_name(),
                vals,
            });
        }
    }
    Ok(V::Vector(merge_cols(out)?))
}
