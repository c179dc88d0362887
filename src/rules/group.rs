//! One rule group: its parsed rules and the state kept between evaluations (rule
//! health, series written by the previous evaluation for staleness markers, alert
//! state). [`Group::evaluate`] is a plain function of the group state, a
//! [`Queryable`] and an evaluation timestamp: it returns the samples to write, and the
//! caller decides where they go (the local TSDB, or a Raft entry for global groups).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use promql_parser::parser::Expr;

use super::alert::{Alert, eval_alert};
use crate::config::rules::{Rule, RuleGroup, RuleScope};
use crate::model::labels::METRIC_NAME;
use crate::model::{Labels, stale_nan};
use crate::promql::{Engine, EvalError, Value, parse_expr};
use crate::storage::Queryable;

/// A rule with its parsed expression.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: Rule,
    pub expr: Expr,
}

/// Health of a rule, as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

/// Per-rule state between evaluations.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub health: Health,
    pub last_error: String,
    pub last_evaluation: Option<SystemTime>,
    pub evaluation_time: Duration,
    /// Series written by the last successful evaluation (for staleness markers).
    pub(crate) seen: HashSet<Labels>,
    /// Alerts of an alerting rule by their label set.
    pub alerts: BTreeMap<Labels, Alert>,
}

impl Default for RuleState {
    fn default() -> Self {
        RuleState {
            health: Health::Unknown,
            last_error: String::new(),
            last_evaluation: None,
            evaluation_time: Duration::ZERO,
            seen: HashSet::new(),
            alerts: BTreeMap::new(),
        }
    }
}

/// State of the whole group.
#[derive(Debug, Clone, Default)]
pub struct GroupState {
    pub rules: Vec<RuleState>,
    pub last_evaluation: Option<SystemTime>,
    pub evaluation_time: Duration,
    /// Timestamp (ms) of the last evaluation, whatever its outcome.
    pub last_slot: Option<i64>,
    /// Series of rules that a reload removed from the group: marked stale by the next
    /// evaluation.
    pub(crate) pending_stale: Vec<Labels>,
    /// Global groups on the leader: the last master-loop round.
    pub federation: Option<FederationStats>,
}

/// What a group evaluation reads and adds besides its rules.
pub struct EvalEnv<'a> {
    pub queryable: &'a dyn Queryable,
    pub engine: &'a Engine,
    /// Labels set on every output series after the rule's own (the node's `shard`
    /// label for local groups; empty for global ones).
    pub extra_labels: &'a Labels,
    /// `$externalLabels` of templates.
    pub external_labels: &'a Labels,
    /// When set, expressions are evaluated at this time instead of the slot (the
    /// master loop: federated data is the latest at fetch time; results are still
    /// stamped with the slot).
    pub query_time: Option<i64>,
}

/// Figures of the master loop's last round of a global group.
#[derive(Debug, Clone, Default)]
pub struct FederationStats {
    pub members: usize,
    pub failed_members: usize,
    /// Bytes federated from all members.
    pub bytes: u64,
    /// Samples federated.
    pub series: usize,
    pub fetch_time: Duration,
    /// Fetch, evaluation and commit.
    pub total_time: Duration,
    pub committed_samples: usize,
    pub last_error: String,
}

/// A loaded group: its definition and its evaluation state.
#[derive(Debug)]
pub struct Group {
    pub file: PathBuf,
    pub name: String,
    pub interval: Duration,
    pub limit: u64,
    pub scope: RuleScope,
    pub rules: Vec<CompiledRule>,
    state: Mutex<GroupState>,
}

impl Group {
    /// Builds a group from its parsed definition; `default_interval` is the global
    /// `evaluation_interval`. Fails on an expression the engine cannot run.
    pub fn new(file: PathBuf, g: &RuleGroup, default_interval: Duration) -> Result<Group, String> {
        let mut rules = Vec::new();
        for r in &g.rules {
            let expr = parse_expr(&r.expr).map_err(|e| {
                format!(
                    "{}: group {:?}, rule {:?}: {e}",
                    file.display(),
                    g.name,
                    r.name()
                )
            })?;
            // Only alerting rules template their labels (recording rule labels are
            // literal, as in Prometheus).
            let templated = r.is_alert().then_some(&r.labels).into_iter().flatten();
            for (what, t) in templated
                .chain(r.annotations.iter())
                .map(|l| (&l.name, &l.value))
            {
                if let Err(e) = super::template::check(t) {
                    return Err(format!(
                        "{}: group {:?}, rule {:?}: template of {what}: {e}",
                        file.display(),
                        g.name,
                        r.name()
                    ));
                }
            }
            rules.push(CompiledRule {
                rule: r.clone(),
                expr,
            });
        }
        let interval = g.interval.unwrap_or(default_interval);
        if interval.is_zero() {
            return Err(format!("group {:?}: interval must be positive", g.name));
        }
        Ok(Group {
            file,
            name: g.name.clone(),
            interval,
            limit: g.limit,
            scope: g.scope,
            state: Mutex::new(GroupState {
                rules: vec![RuleState::default(); rules.len()],
                ..GroupState::default()
            }),
            rules,
        })
    }

    /// `file;name`, the identity of a group across reloads (and in Raft entries).
    pub fn key(&self) -> String {
        format!("{};{}", self.file.display(), self.name)
    }

    /// Whether `other` has the same definition (a reload keeps such groups running).
    pub fn same_definition(&self, other: &Group) -> bool {
        self.key() == other.key()
            && self.interval == other.interval
            && self.limit == other.limit
            && self.scope == other.scope
            && self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|(a, b)| a.rule == b.rule)
    }

    pub fn state(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes over the state of rules with the same name and expression from `old` (on
    /// reload, as Prometheus does), so alerts keep their `activeAt` and staleness works.
    pub fn copy_state_from(&self, old: &Group) {
        let old_state = old.state().clone();
        let mut st = self.state();
        let mut taken = vec![false; old.rules.len()];
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(j) = old
                .rules
                .iter()
                .position(|o| o.rule.name() == r.rule.name() && o.rule.expr == r.rule.expr)
            {
                st.rules[i] = old_state.rules[j].clone();
                taken[j] = true;
            }
        }
        for (j, t) in taken.iter().enumerate() {
            if !t {
                st.pending_stale
                    .extend(old_state.rules[j].seen.iter().cloned());
            }
        }
        st.pending_stale.extend(old_state.pending_stale);
        st.last_slot = old_state.last_slot;
    }

    /// Forgets the series of the previous evaluation (e.g. a global group on a node
    /// that lost leadership: its previous output is someone else's now).
    pub fn forget_series(&self) {
        let mut st = self.state();
        for r in &mut st.rules {
            r.seen.clear();
        }
    }

    /// Staleness markers for every series the group wrote last (group removed).
    pub fn stale_all(&self) -> Vec<(Labels, f64)> {
        let mut st = self.state();
        let mut out = Vec::new();
        for r in &mut st.rules {
            out.extend(r.seen.drain().map(|l| (l, stale_nan())));
        }
        out.extend(st.pending_stale.drain(..).map(|l| (l, stale_nan())));
        out
    }

    /// Evaluates every rule at `ts` (ms), in order, and returns the samples to write at
    /// `ts`: the rules' results plus staleness markers for series that the previous
    /// evaluation wrote and this one did not. A failing rule keeps its previous series.
    pub fn evaluate(&self, env: &EvalEnv<'_>, ts: i64) -> Vec<(Labels, f64)> {
        let started = Instant::now();
        let wall = SystemTime::now();
        // Work on a copy: readers (`/api/v1/rules`) never wait for an evaluation.
        let mut st = {
            let mut g = self.state();
            let copy = g.clone();
            g.pending_stale.clear();
            copy
        };
        let pending = std::mem::take(&mut st.pending_stale);
        let mut out: Vec<(Labels, f64)> = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let t0 = Instant::now();
            let rs = &mut st.rules[i];
            let res = if r.rule.is_alert() {
                eval_alert(r, rs, env, ts, self.interval, self.limit)
            } else {
                eval_recording(r, env, ts, self.limit)
            };
            rs.last_evaluation = Some(wall);
            rs.evaluation_time = t0.elapsed();
            match res {
                Ok(samples) => {
                    rs.health = Health::Ok;
                    rs.last_error.clear();
                    let now: HashSet<Labels> = samples.iter().map(|(l, _)| l.clone()).collect();
                    for old in rs.seen.iter().filter(|l| !now.contains(*l)) {
                        out.push((old.clone(), stale_nan()));
                    }
                    rs.seen = now;
                    out.extend(samples);
                }
                Err(e) => {
                    tracing::debug!(group = %self.name, rule = r.rule.name(), error = %e, "rule evaluation failed");
                    rs.health = Health::Err;
                    rs.last_error = e;
                }
            }
        }
        if !pending.is_empty() {
            let written: HashSet<&Labels> = out.iter().map(|(l, _)| l).collect();
            let stale: Vec<(Labels, f64)> = pending
                .into_iter()
                .filter(|l| !written.contains(l))
                .map(|l| (l, stale_nan()))
                .collect();
            out.extend(stale);
        }
        st.last_evaluation = Some(wall);
        st.evaluation_time = started.elapsed();
        st.last_slot = Some(ts);
        *self.state() = st;
        out
    }
}

/// The result of a rule's expression at `ts` as (labels, value) pairs; a scalar becomes
/// one series without labels, as in Prometheus's `EngineQueryFunc`.
pub(crate) fn query(env: &EvalEnv<'_>, expr: &Expr, ts: i64) -> Result<Vec<(Labels, f64)>, String> {
    let res = env
        .engine
        .instant_query_expr(env.queryable, expr, env.query_time.unwrap_or(ts))
        .map_err(|e: EvalError| e.to_string())?;
    match res.value {
        Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
        Value::Scalar { v, .. } => Ok(vec![(Labels::empty(), v)]),
        other => Err(format!(
            "rule result is not a vector or scalar: {}",
            other.type_name()
        )),
    }
}

fn eval_recording(
    r: &CompiledRule,
    env: &EvalEnv<'_>,
    ts: i64,
    limit: u64,
) -> Result<Vec<(Labels, f64)>, String> {
    let name = r.rule.record.as_deref().unwrap_or_default();
    let res = query(env, &r.expr, ts)?;
    let mut out = Vec::with_capacity(res.len());
    let mut seen = HashSet::with_capacity(res.len());
    for (labels, v) in res {
        let mut b = labels.builder();
        b.set(METRIC_NAME, name);
        for l in r.rule.labels.iter() {
            b.set(&l.name, &l.value);
        }
        for l in env.extra_labels.iter() {
            b.set(&l.name, &l.value);
        }
        let l = b.build();
        if !seen.insert(l.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        out.push((l, v));
    }
    if limit > 0 && out.len() as u64 > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            out.len()
        ));
    }
    Ok(out)
}

/// The largest timestamp `<= now` on the group's schedule: `offset + k * interval`.
pub fn slot_at_or_before(now_ms: i64, interval_ms: i64, offset_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    now_ms - (now_ms - offset_ms).rem_euclid(interval_ms)
}

/// A group's offset within its interval: a stable hash of its key, so every node (and
/// every leader of a global group) uses the same schedule.
pub fn offset_ms(key: &str, interval_ms: i64) -> i64 {
    let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    (h % interval_ms.max(1) as u64) as i64
}
