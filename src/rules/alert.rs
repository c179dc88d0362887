//! Alerting rules: the pending → firing → resolved life cycle of Prometheus 2.42's
//! `AlertingRule.Eval` (with `for` and `keep_firing_for`), label and annotation
//! templates, and the `ALERTS` / `ALERTS_FOR_STATE` series.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::group::{CompiledRule, EvalEnv, RuleState, query};
use super::template::{TemplateData, expand};
use crate::model::Labels;
use crate::model::labels::METRIC_NAME;

/// How long a resolved alert is kept (Prometheus keeps it for notifications).
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub state: AlertState,
    pub value: f64,
    /// Milliseconds.
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub keep_firing_since: Option<i64>,
}

/// Evaluates an alerting rule at `ts`; returns its `ALERTS` and `ALERTS_FOR_STATE`
/// samples (with `env.extra_labels`) and updates the rule's alerts in `rs`.
pub(crate) fn eval_alert(
    r: &CompiledRule,
    rs: &mut RuleState,
    env: &EvalEnv<'_>,
    ts: i64,
    _interval: Duration,
    limit: u64,
) -> Result<Vec<(Labels, f64)>, String> {
    let name = r.rule.alert.as_deref().unwrap_or_default();
    let res = query(env, &r.expr, ts)?;
    let mut current: BTreeMap<Labels, Alert> = BTreeMap::new();
    for (metric, v) in res {
        let data = TemplateData {
            labels: &metric.without_metric_name(),
            value: v,
            external_labels: env.external_labels,
        };
        let mut b = metric.builder();
        b.del(METRIC_NAME);
        for l in r.rule.labels.iter() {
            b.set(&l.name, &expand(&l.name, &l.value, &data));
        }
        b.set("alertname", name);
        let labels = b.build();
        let annotations = Labels::new(
            r.rule
                .annotations
                .iter()
                .map(|a| crate::model::Label::new(&a.name, expand(&a.name, &a.value, &data)))
                .collect(),
        );
        if current.contains_key(&labels) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        current.insert(
            labels.clone(),
            Alert {
                labels,
                annotations,
                state: AlertState::Pending,
                value: v,
                active_at: ts,
                fired_at: None,
                resolved_at: None,
                keep_firing_since: None,
            },
        );
    }
    let returned: HashSet<Labels> = current.keys().cloned().collect();
    for (k, a) in current {
        match rs.alerts.get_mut(&k) {
            Some(old) if old.state != AlertState::Inactive => {
                old.value = a.value;
                old.annotations = a.annotations;
            }
            _ => {
                rs.alerts.insert(k, a);
            }
        }
    }
    let hold = r.rule.for_.as_millis() as i64;
    let keep = r.rule.keep_firing_for.as_millis() as i64;
    let mut active_pending = 0u64;
    let mut out = Vec::new();
    let mut remove = Vec::new();
    for (k, a) in rs.alerts.iter_mut() {
        if !returned.contains(k) {
            let mut keep_firing = false;
            if a.state == AlertState::Firing && keep > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                keep_firing = ts - since < keep;
            }
            if a.state == AlertState::Pending
                || a.resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
            {
                remove.push(k.clone());
            }
            if a.state != AlertState::Inactive && !keep_firing {
                a.state = AlertState::Inactive;
                a.resolved_at = Some(ts);
            }
            if !keep_firing {
                continue;
            }
        } else {
            a.keep_firing_since = None;
        }
        active_pending += 1;
        if a.state == AlertState::Pending && ts - a.active_at >= hold {
            a.state = AlertState::Firing;
            a.fired_at = Some(ts);
        }
        let mut b = a.labels.builder();
        b.set(METRIC_NAME, "ALERTS");
        b.set("alertstate", a.state.as_str());
        for l in env.extra_labels.iter() {
            b.set(&l.name, &l.value);
        }
        out.push((b.build(), 1.0));
        let mut b = a.labels.builder();
        b.set(METRIC_NAME, "ALERTS_FOR_STATE");
        for l in env.extra_labels.iter() {
            b.set(&l.name, &l.value);
        }
        out.push((b.build(), (a.active_at / 1000) as f64));
    }
    for k in remove {
        rs.alerts.remove(&k);
    }
    if limit > 0 && active_pending > limit {
        rs.alerts.clear();
        return Err(format!(
            "exceeded limit of {limit} with {active_pending} alerts"
        ));
    }
    Ok(out)
}

/// The alerts of a rule that are pending or firing, as `/api/v1/alerts` lists them.
pub fn active(rs: &RuleState) -> impl Iterator<Item = &Alert> {
    rs.alerts
        .values()
        .filter(|a| a.state != AlertState::Inactive)
}

/// The state of an alerting rule: the "worst" state of its alerts.
pub fn rule_state(rs: &RuleState) -> AlertState {
    let mut s = AlertState::Inactive;
    for a in active(rs) {
        if a.state == AlertState::Firing {
            return AlertState::Firing;
        }
        s = AlertState::Pending;
    }
    s
}
