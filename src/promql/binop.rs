//! Binary operators: arithmetic, comparison (with and without `bool`), `atan2`, and the
//! set operators `and`/`or`/`unless`, with Prometheus's vector matching (`on`/`ignoring`,
//! `group_left`/`group_right`) and its errors.

use std::collections::HashMap;

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::engine::{Col, Ev, V, drop_metric_names, merge_cols};
use super::value::EvalError;
use crate::model::Labels;
use crate::model::labels::METRIC_NAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            _ => return None,
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }
}

/// Applies `op` to two floats: `(value, keep)`. For comparisons the value is `l`.
#[inline]
fn elem(op: Op, l: f64, r: f64) -> (f64, bool) {
    match op {
        Op::Add => (l + r, true),
        Op::Sub => (l - r, true),
        Op::Mul => (l * r, true),
        Op::Div => (l / r, true),
        Op::Mod => (l % r, true),
        Op::Pow => (l.powf(r), true),
        Op::Atan2 => (l.atan2(r), true),
        Op::Eq => (l, l == r),
        Op::Ne => (l, l != r),
        Op::Gt => (l, l > r),
        Op::Lt => (l, l < r),
        Op::Ge => (l, l >= r),
        Op::Le => (l, l <= r),
        Op::And | Op::Or | Op::Unless => (l, true),
    }
}

pub(crate) fn eval_binary(ev: &Ev, b: &BinaryExpr) -> Result<V, EvalError> {
    let op_s = b.op.to_string();
    let op = Op::parse(&op_s)
        .ok_or_else(|| EvalError::Execution(format!("unknown binary operator {op_s}")))?;
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs)?;
    let rhs = ev.eval(&b.rhs)?;
    match (lhs, rhs) {
        (V::Scalar(l), V::Scalar(r)) => Ok(V::Scalar(
            l.iter()
                .zip(r.iter())
                .map(|(&a, &b)| {
                    let (v, keep) = elem(op, a, b);
                    if op.is_comparison() {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (V::Vector(l), V::Scalar(r)) => vector_scalar(op, l, &r, false, return_bool),
        (V::Scalar(l), V::Vector(r)) => vector_scalar(op, r, &l, true, return_bool),
        (V::Vector(l), V::Vector(r)) => {
            let (card, matching) = match &b.modifier {
                Some(m) => (m.card.clone(), m.matching.clone()),
                None => (
                    if op.is_set() {
                        VectorMatchCardinality::ManyToMany
                    } else {
                        VectorMatchCardinality::OneToOne
                    },
                    None,
                ),
            };
            let m = Matching::new(card, matching.as_ref());
            if op.is_set() {
                set_op(ev, op, l, r, &m)
            } else {
                vector_vector(ev, op, l, r, &m, return_bool)
            }
        }
        (l, r) => Err(EvalError::Execution(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn vector_scalar(
    op: Op,
    mut cols: Vec<Col>,
    s: &[f64],
    swap: bool,
    return_bool: bool,
) -> Result<V, EvalError> {
    let drop_name = !op.is_comparison() || return_bool;
    for c in &mut cols {
        for (slot, &sv) in c.vals.iter_mut().zip(s) {
            let Some(vv) = *slot else { continue };
            let (l, r) = if swap { (sv, vv) } else { (vv, sv) };
            let (mut v, keep) = elem(op, l, r);
            if op.is_comparison() && swap {
                v = vv;
            }
            *slot = if return_bool {
                Some(if keep { 1.0 } else { 0.0 })
            } else if keep {
                Some(v)
            } else {
                None
            };
        }
    }
    cols.retain(|c| c.vals.iter().any(Option::is_some));
    Ok(V::Vector(if drop_name {
        drop_metric_names(cols)?
    } else {
        cols
    }))
}

/// The matching rules of one vector/vector operation.
struct Matching {
    card: VectorMatchCardinality,
    on: bool,
    names: Vec<String>,
    include: Vec<String>,
}

impl Matching {
    fn new(card: VectorMatchCardinality, m: Option<&LabelModifier>) -> Self {
        let (on, names) = match m {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let include = match &card {
            VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
                l.labels.clone()
            }
            _ => Vec::new(),
        };
        Matching {
            card,
            on,
            names,
            include,
        }
    }

    fn signature(&self, l: &Labels) -> Labels {
        if self.on {
            l.keep_only(&self.names)
        } else {
            let mut ls = l.drop_names(&self.names);
            if ls.get(METRIC_NAME).is_some() {
                ls = ls.without_metric_name();
            }
            ls
        }
    }
}

/// Assigns a dense id to every distinct signature of both sides.
fn signatures(m: &Matching, l: &[Col], r: &[Col]) -> (Vec<u32>, Vec<u32>, Vec<Labels>) {
    let mut map: HashMap<Labels, u32> = HashMap::new();
    let mut sigs: Vec<Labels> = Vec::new();
    let mut id = |c: &Col| {
        let s = m.signature(&c.labels);
        if let Some(&i) = map.get(&s) {
            return i;
        }
        let i = sigs.len() as u32;
        sigs.push(s.clone());
        map.insert(s, i);
        i
    };
    let li: Vec<u32> = l.iter().map(&mut id).collect();
    let ri: Vec<u32> = r.iter().map(&mut id).collect();
    (li, ri, sigs)
}

fn set_op(ev: &Ev, op: Op, l: Vec<Col>, r: Vec<Col>, m: &Matching) -> Result<V, EvalError> {
    let (li, ri, sigs) = signatures(m, &l, &r);
    let n = ev.n;
    let mut stamp = vec![usize::MAX; sigs.len()];
    match op {
        Op::And | Op::Unless => {
            let mut l = l;
            for step in 0..n {
                for (c, &s) in r.iter().zip(&ri) {
                    if c.vals[step].is_some() {
                        stamp[s as usize] = step;
                    }
                }
                for (c, &s) in l.iter_mut().zip(&li) {
                    let present = stamp[s as usize] == step;
                    if present != (op == Op::And) {
                        c.vals[step] = None;
                    }
                }
            }
            l.retain(|c| c.vals.iter().any(Option::is_some));
            Ok(V::Vector(l))
        }
        _ => {
            let mut r = r;
            for step in 0..n {
                for (c, &s) in l.iter().zip(&li) {
                    if c.vals[step].is_some() {
                        stamp[s as usize] = step;
                    }
                }
                for (c, &s) in r.iter_mut().zip(&ri) {
                    if stamp[s as usize] == step {
                        c.vals[step] = None;
                    }
                }
            }
            r.retain(|c| c.vals.iter().any(Option::is_some));
            let mut out = l;
            out.extend(r);
            Ok(V::Vector(merge_cols(out)?))
        }
    }
}

fn result_labels(op: Op, ls: &Labels, rs: &Labels, m: &Matching, return_bool: bool) -> Labels {
    let mut b = ls.builder();
    if !op.is_comparison() || return_bool {
        b.del(METRIC_NAME);
    }
    if matches!(m.card, VectorMatchCardinality::OneToOne) {
        if m.on {
            b.retain(|l| m.names.contains(&l.name));
        } else {
            for n in &m.names {
                b.del(n);
            }
        }
    }
    for n in &m.include {
        match rs.get(n) {
            Some(v) => {
                b.set(n, v);
            }
            None => {
                b.del(n);
            }
        }
    }
    b.build()
}

fn vector_vector(
    ev: &Ev,
    op: Op,
    l: Vec<Col>,
    r: Vec<Col>,
    m: &Matching,
    return_bool: bool,
) -> Result<V, EvalError> {
    if matches!(m.card, VectorMatchCardinality::ManyToMany) {
        return Err(EvalError::Execution(
            "many-to-many only allowed for set operators".into(),
        ));
    }
    let one_to_many = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    // `lhs` is the "many" side (or the left side for one-to-one).
    let (lhs, rhs) = if one_to_many { (r, l) } else { (l, r) };
    let (li, ri, sigs) = signatures(m, &lhs, &rhs);
    let n = ev.n;
    // Per step: which rhs series holds each signature.
    let mut rsig_step = vec![usize::MAX; sigs.len()];
    let mut rsig_idx = vec![0usize; sigs.len()];
    let mut matched_step = vec![usize::MAX; sigs.len()];
    let mut pair_out: HashMap<(usize, usize), usize> = HashMap::new();
    let mut out_idx: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Col> = Vec::new();
    let mut out_step: Vec<usize> = Vec::new();
    let one_side = if one_to_many { "left" } else { "right" };
    for step in 0..n {
        ev.check()?;
        for (j, (c, &s)) in rhs.iter().zip(&ri).enumerate() {
            if c.vals[step].is_none() {
                continue;
            }
            let s = s as usize;
            if rsig_step[s] == step {
                return Err(EvalError::Execution(format!(
                    "found duplicate series for the match group {} on the {} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    sigs[s], one_side, c.labels, rhs[rsig_idx[s]].labels
                )));
            }
            rsig_step[s] = step;
            rsig_idx[s] = j;
        }
        for (i, (c, &s)) in lhs.iter().zip(&li).enumerate() {
            let Some(lv) = c.vals[step] else { continue };
            let s = s as usize;
            if rsig_step[s] != step {
                continue;
            }
            let j = rsig_idx[s];
            let Some(rv) = rhs[j].vals[step] else {
                continue;
            };
            let (fl, fr) = if one_to_many { (rv, lv) } else { (lv, rv) };
            let (mut v, keep) = elem(op, fl, fr);
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            let o = match pair_out.get(&(i, j)) {
                Some(&o) => o,
                None => {
                    let labels = result_labels(op, &c.labels, &rhs[j].labels, m, return_bool);
                    let o = match out_idx.get(&labels) {
                        Some(&o) => o,
                        None => {
                            let o = out.len();
                            out_idx.insert(labels.clone(), o);
                            out.push(Col {
                                labels,
                                vals: vec![None; n],
                            });
                            out_step.push(usize::MAX);
                            o
                        }
                    };
                    pair_out.insert((i, j), o);
                    o
                }
            };
            if matches!(m.card, VectorMatchCardinality::OneToOne) {
                if matched_step[s] == step {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                matched_step[s] = step;
            } else if out_step[o] == step {
                return Err(EvalError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            if out_step[o] == step {
                return Err(EvalError::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
            out_step[o] = step;
            out[o].vals[step] = Some(v);
        }
    }
    Ok(V::Vector(out))
}
