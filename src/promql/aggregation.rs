//! Aggregation operators: sum, avg, count, min, max, group, stddev, stdvar, topk,
//! bottomk, quantile, count_values, with `by`/`without`.

use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};

use super::engine::{Col, Ev, OutBuilder, V, kahan_inc};
use super::value::{EvalError, format_value};
use crate::model::Labels;
use crate::model::labels::{METRIC_NAME, is_valid_label_name};

type Acc = AccState;

fn group_labels(m: &Option<LabelModifier>, l: &Labels) -> Labels {
    match m {
        None => Labels::empty(),
        Some(LabelModifier::Include(names)) => l.keep_only(&names.labels),
        Some(LabelModifier::Exclude(names)) => {
            let ls = l.drop_names(&names.labels);
            if ls.get(METRIC_NAME).is_some() {
                ls.without_metric_name()
            } else {
                ls
            }
        }
    }
}

/// Whether label `name` is part of the grouping key.
fn in_group(m: &Option<LabelModifier>, name: &str) -> bool {
    match m {
        None => false,
        Some(LabelModifier::Include(names)) => names.labels.iter().any(|n| n == name),
        Some(LabelModifier::Exclude(names)) => {
            name != METRIC_NAME && !names.labels.iter().any(|n| n == name)
        }
    }
}

/// The group of every input series (computed once, not per step) and the groups'
/// label sets. Hashes the grouping labels without building them for every series.
fn group_ids(m: &Option<LabelModifier>, cols: &[Col]) -> (Vec<usize>, Vec<Labels>) {
    let mut gmap: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut glabels: Vec<Labels> = Vec::new();
    let mut gid: Vec<usize> = Vec::with_capacity(cols.len());
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    for c in cols {
        buf.clear();
        for l in c.labels.iter().filter(|l| in_group(m, &l.name)) {
            buf.extend_from_slice(l.name.as_bytes());
            buf.push(0xff);
            buf.extend_from_slice(l.value.as_bytes());
            buf.push(0xff);
        }
        let cands = gmap.entry(xxhash_rust::xxh3::xxh3_64(&buf)).or_default();
        let found = cands.iter().copied().find(|&g| {
            c.labels
                .iter()
                .filter(|l| in_group(m, &l.name))
                .eq(glabels[g].iter())
        });
        let id = match found {
            Some(g) => g,
            None => {
                let g = glabels.len();
                glabels.push(group_labels(m, &c.labels));
                cands.push(g);
                g
            }
        };
        gid.push(id);
    }
    (gid, glabels)
}

/// Prometheus's `quantile` over a slice of values (sorted in place).
pub(crate) fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

fn param_scalar(ev: &Ev, p: &Option<Box<Expr>>, name: &str) -> Result<Vec<f64>, EvalError> {
    match p {
        Some(e) => ev.eval_scalar(e),
        None => Err(EvalError::BadData(format!("no parameter given for {name}"))),
    }
}

pub(crate) fn eval_aggregate(ev: &Ev, a: &AggregateExpr) -> Result<V, EvalError> {
    let op = a.op.to_string().to_lowercase();
    let n = ev.n;
    // Parameters are evaluated before the vector, like Prometheus.
    let mut qparam = None;
    let mut kparam = None;
    let mut label_param = None;
    match op.as_str() {
        "topk" | "bottomk" => kparam = Some(param_scalar(ev, &a.param, &op)?),
        "quantile" => qparam = Some(param_scalar(ev, &a.param, &op)?),
        "count_values" => {
            let Some(p) = &a.param else {
                return Err(EvalError::BadData(
                    "no parameter given for count_values".into(),
                ));
            };
            match ev.eval(p)? {
                V::Str(s) => label_param = Some(s),
                other => {
                    return Err(EvalError::Execution(format!(
                        "expected string parameter for count_values, got {}",
                        other.type_name()
                    )));
                }
            }
        }
        "limitk" | "limit_ratio" => {
            return Err(EvalError::BadData(format!(
                "experimental aggregation {op} is not supported"
            )));
        }
        _ => {}
    }
    let cols = ev.eval_vector(&a.expr)?;

    let (gid, glabels) = group_ids(&a.modifier, &cols);
    let ng = glabels.len();

    match op.as_str() {
        "sum" | "avg" | "count" | "min" | "max" | "group" | "stddev" | "stdvar" => {
            let mut acc = vec![Acc::default(); ng * n];
            for (c, &g) in cols.iter().zip(&gid) {
                ev.check()?;
                let row = &mut acc[g * n..(g + 1) * n];
                for (a, v) in row.iter_mut().zip(&c.vals) {
                    let Some(f) = *v else { continue };
                    if a.count == 0.0 {
                        *a = Acc {
                            count: 1.0,
                            value: match op.as_str() {
                                "group" => 1.0,
                                "stddev" | "stdvar" => {
                                    if f.is_nan() || f.is_infinite() {
                                        f64::NAN
                                    } else {
                                        0.0
                                    }
                                }
                                _ => f,
                            },
                            c: 0.0,
                            mean: f,
                            incremental: false,
                        };
                        continue;
                    }
                    a.count += 1.0;
                    match op.as_str() {
                        "sum" => {
                            let (v, c) = kahan_inc(f, a.value, a.c);
                            a.value = v;
                            a.c = c;
                        }
                        "avg" => avg_step(a, f),
                        "min" if (a.value > f || a.value.is_nan()) => {
                            a.value = f;
                        }
                        "max" if (a.value < f || a.value.is_nan()) => {
                            a.value = f;
                        }
                        "stddev" | "stdvar" => {
                            let delta = f - a.mean;
                            a.mean += delta / a.count;
                            a.value += delta * (f - a.mean);
                        }
                        _ => {}
                    }
                }
            }
            let mut out = Vec::with_capacity(ng);
            for (g, labels) in glabels.into_iter().enumerate() {
                let row = &acc[g * n..(g + 1) * n];
                let vals: Vec<Option<f64>> = row
                    .iter()
                    .map(|a| {
                        (a.count > 0.0).then(|| match op.as_str() {
                            "sum" => a.value + a.c,
                            "avg" => {
                                if a.incremental {
                                    a.mean + a.c
                                } else {
                                    (a.value + a.c) / a.count
                                }
                            }
                            "count" => a.count,
                            "stdvar" => a.value / a.count,
                            "stddev" => (a.value / a.count).sqrt(),
                            _ => a.value,
                        })
                    })
                    .collect();
                out.push(Col { labels, vals });
            }
            Ok(V::Vector(out))
        }
        "quantile" => {
            let q = qparam.unwrap_or_default();
            for &qv in &q {
                if qv.is_nan() || !(0.0..=1.0).contains(&qv) {
                    ev.warn(format!(
                        "quantile value should be between 0 and 1, got {} (1:1)",
                        format_value(qv)
                    ));
                }
            }
            let mut buf: Vec<Vec<f64>> = vec![Vec::new(); ng];
            let mut out: Vec<Col> = glabels
                .into_iter()
                .map(|labels| Col {
                    labels,
                    vals: vec![None; n],
                })
                .collect();
            for (step, &qs) in q.iter().enumerate().take(n) {
                ev.check()?;
                buf.iter_mut().for_each(Vec::clear);
                for (c, &g) in cols.iter().zip(&gid) {
                    if let Some(v) = c.vals[step] {
                        buf[g].push(v);
                    }
                }
                for (g, b) in buf.iter_mut().enumerate() {
                    if !b.is_empty() {
                        out[g].vals[step] = Some(quantile(qs, b));
                    }
                }
            }
            Ok(V::Vector(out))
        }
        "topk" | "bottomk" => {
            let k = kparam.unwrap_or_default();
            let top = op == "topk";
            let mut keep: Vec<Vec<Option<f64>>> = vec![Vec::new(); cols.len()];
            let mut order: Vec<usize> = Vec::new();
            let mut per_group: Vec<Vec<(f64, usize)>> = vec![Vec::new(); ng];
            for step in 0..n {
                ev.check()?;
                let kf = k[step];
                if kf.is_nan() {
                    return Err(EvalError::Execution("Parameter value is NaN".into()));
                }
                if kf >= 9.223_372_036_854_775e18 {
                    return Err(EvalError::Execution(format!(
                        "Scalar value {} overflows int64",
                        format_value(kf)
                    )));
                }
                let kk = kf as i64;
                if kk < 1 {
                    continue;
                }
                per_group.iter_mut().for_each(Vec::clear);
                for (i, (c, &g)) in cols.iter().zip(&gid).enumerate() {
                    if let Some(v) = c.vals[step] {
                        per_group[g].push((v, i));
                    }
                }
                for pg in per_group.iter_mut() {
                    // Stable order: best first; NaN always last; ties keep input order.
                    pg.sort_by(|a, b| {
                        use std::cmp::Ordering::*;
                        match (a.0.is_nan(), b.0.is_nan()) {
                            (true, true) => Equal,
                            (true, false) => Greater,
                            (false, true) => Less,
                            _ => {
                                let o = a.0.partial_cmp(&b.0).unwrap_or(Equal);
                                if top { o.reverse() } else { o }
                            }
                        }
                    });
                    for &(v, i) in pg.iter().take(kk.min(pg.len() as i64) as usize) {
                        if keep[i].is_empty() {
                            keep[i] = vec![None; n];
                            order.push(i);
                        }
                        keep[i][step] = Some(v);
                    }
                }
            }
            if n > 1 {
                order.sort_unstable();
            }
            let mut cols: Vec<Option<Col>> = cols.into_iter().map(Some).collect();
            let mut out = Vec::with_capacity(order.len());
            for i in order {
                if let Some(c) = cols[i].take() {
                    out.push(Col {
                        labels: c.labels,
                        vals: std::mem::take(&mut keep[i]),
                    });
                }
            }
            Ok(V::Vector(out))
        }
        "count_values" => {
            let lname = label_param.unwrap_or_default();
            if !is_valid_label_name(&lname) {
                return Err(EvalError::Execution(format!(
                    "invalid label name {lname:?}"
                )));
            }
            let mut ob = OutBuilder::new(n);
            let mut counts: HashMap<usize, f64> = HashMap::new();
            for step in 0..n {
                ev.check()?;
                counts.clear();
                let mut order = Vec::new();
                for (c, &g) in cols.iter().zip(&gid) {
                    let Some(v) = c.vals[step] else { continue };
                    let mut b = glabels[g].builder();
                    b.set(&lname, &format_value(v));
                    let idx = ob.index(b.build());
                    let e = counts.entry(idx).or_insert_with(|| {
                        order.push(idx);
                        0.0
                    });
                    *e += 1.0;
                }
                for idx in order {
                    ob.set(idx, step, counts[&idx])?;
                }
            }
            Ok(V::Vector(ob.cols))
        }
        other => Err(EvalError::BadData(format!(
            "unknown aggregation operator {other}"
        ))),
    }
}

/// One step of Prometheus's overflow-safe mean (shared with `avg_over_time`).
pub(crate) fn avg_step(a: &mut AccState, f: f64) {
    if !a.incremental {
        let (nv, nc) = kahan_inc(f, a.value, a.c);
        if !nv.is_infinite() {
            a.value = nv;
            a.c = nc;
            return;
        }
        a.incremental = true;
        a.mean = a.value / (a.count - 1.0);
        a.c /= a.count - 1.0;
    }
    if a.mean.is_infinite() {
        if f.is_infinite() && (a.mean > 0.0) == (f > 0.0) {
            return;
        }
        if !f.is_infinite() && !f.is_nan() {
            return;
        }
    }
    let q = (a.count - 1.0) / a.count;
    let (m, c) = kahan_inc(f / a.count, q * a.mean, q * a.c);
    a.mean = m;
    a.c = c;
}

/// The running state of a sum/mean/variance.
#[derive(Clone, Copy, Default)]
pub(crate) struct AccState {
    pub count: f64,
    pub value: f64,
    pub c: f64,
    pub mean: f64,
    pub incremental: bool,
}
