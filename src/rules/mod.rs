//! Recording and alerting rules (Prometheus's `rules` package) over the storage traits.
//!
//! - [`group`]: a rule group, its state and [`group::Group::evaluate`] (pure apart from
//!   the [`Queryable`] it reads);
//! - [`alert`]: the alert life cycle and `ALERTS` / `ALERTS_FOR_STATE`;
//! - [`template`]: the subset of Go templates that labels and annotations use;
//! - [`shard_reads`]: what a local group reads in a cluster — the targets this node
//!   counts, whole across moves.
//!
//! [`RuleManager`] loads the groups of `rule_files`, runs every `scope: local` group on
//! this node over its own data (in a cluster: its share of the targets,
//! [`shard_reads::ShardReads`]) at the group's interval and appends the results to the
//! local store with the node's `shard` label. `scope: global` groups are only held here:
//! the master loop (`crate::federation`) runs them on the leader.
//!
//! Schedule: a group evaluates at `offset + k * interval` (ms since the epoch), where
//! `offset` is a stable hash of `file;name`, so all nodes (and all leaders) share it.
//! Missed slots (a slow evaluation) are skipped, as in Prometheus.

pub mod alert;
pub mod group;
pub mod shard_reads;
pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

pub use group::{EvalEnv, Group, Health};

use crate::config::rules::RuleScope;
use crate::config::{Config, load_rule_file};
use crate::model::Labels;
use crate::promql::{Engine, EngineOptions};
use crate::storage::{Appendable, Queryable};

/// Name of the label local rule results carry (value: the node id).
pub const SHARD_LABEL: &str = "shard";

/// Loads every group of the config's rule files. Nothing changes on error.
pub fn load_groups(cfg: &Config) -> Result<Vec<Group>, String> {
    let mut out: Vec<Group> = Vec::new();
    let paths = cfg.rule_file_paths().map_err(|e| e.to_string())?;
    for path in paths {
        let f = load_rule_file(&path).map_err(|e| e.to_string())?;
        for g in &f.groups {
            let group = Group::new(path.clone(), g, cfg.global.evaluation_interval)?;
            if out.iter().any(|o| o.key() == group.key()) {
                return Err(format!(
                    "{}: groupname: {:?} is repeated in the same file",
                    path.display(),
                    g.name
                ));
            }
            out.push(group);
        }
    }
    Ok(out)
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sleeps until the wall clock reaches `t_ms`.
pub async fn sleep_until_ms(t_ms: i64) {
    loop {
        let d = t_ms - now_ms();
        if d <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(d as u64)).await;
    }
}

struct Inner {
    groups: RwLock<Vec<Arc<Group>>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    local: Arc<dyn Queryable>,
    appendable: Arc<dyn Appendable>,
    engine: Engine,
    /// `shard="<node id>"`.
    shard: Labels,
    external_labels: RwLock<Labels>,
    /// In a cluster: local groups read this node's share of the targets.
    shard_scope: Option<shard_reads::ShardScope>,
}

/// Runs the local rule groups and holds all groups for `/api/v1/rules` and the master
/// loop. Cloneable; [`RuleManager::stop`] ends the tasks.
#[derive(Clone)]
pub struct RuleManager {
    inner: Arc<Inner>,
}

impl RuleManager {
    /// A manager without groups; call [`RuleManager::apply`] with the first config.
    /// Must be used inside a Tokio runtime.
    pub fn new(
        local: Arc<dyn Queryable>,
        appendable: Arc<dyn Appendable>,
        engine: EngineOptions,
        node_id: &str,
    ) -> RuleManager {
        RuleManager::build(local, appendable, engine, node_id, None)
    }

    /// A manager whose local groups read through [`shard_reads::ShardReads`]: the
    /// targets this node counts at each evaluation, whole across moves.
    pub fn new_sharded(
        local: Arc<dyn Queryable>,
        appendable: Arc<dyn Appendable>,
        engine: EngineOptions,
        scope: shard_reads::ShardScope,
    ) -> RuleManager {
        let id = scope.node_id.to_string();
        RuleManager::build(local, appendable, engine, &id, Some(scope))
    }

    fn build(
        local: Arc<dyn Queryable>,
        appendable: Arc<dyn Appendable>,
        engine: EngineOptions,
        node_id: &str,
        shard_scope: Option<shard_reads::ShardScope>,
    ) -> RuleManager {
        RuleManager {
            inner: Arc::new(Inner {
                groups: RwLock::new(Vec::new()),
                tasks: Mutex::new(HashMap::new()),
                local,
                appendable,
                engine: Engine::new(engine),
                shard: Labels::from_pairs(&[(SHARD_LABEL, node_id)]),
                external_labels: RwLock::new(Labels::empty()),
                shard_scope,
            }),
        }
    }

    /// The `shard` label set of this node.
    pub fn shard_labels(&self) -> &Labels {
        &self.inner.shard
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn external_labels(&self) -> Labels {
        self.inner
            .external_labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// All groups, in rule-file order.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `scope: global` groups.
    pub fn global_groups(&self) -> Vec<Arc<Group>> {
        self.groups()
            .into_iter()
            .filter(|g| g.scope == RuleScope::Global)
            .collect()
    }

    /// Swaps in new groups (from [`load_groups`]): unchanged groups keep running, changed
    /// ones restart with the state of their rules, removed ones stop and get staleness
    /// markers for their series.
    pub fn apply(&self, cfg: &Config, new: Vec<Group>) {
        *self
            .inner
            .external_labels
            .write()
            .unwrap_or_else(|p| p.into_inner()) = cfg.global.external_labels.clone();
        let old = self.groups();
        let mut next: Vec<Arc<Group>> = Vec::with_capacity(new.len());
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for g in new {
            let prev = old.iter().find(|o| o.key() == g.key());
            match prev {
                Some(p) if p.same_definition(&g) => next.push(p.clone()),
                Some(p) => {
                    g.copy_state_from(p);
                    if let Some(t) = tasks.remove(&p.key()) {
                        t.abort();
                    }
                    next.push(Arc::new(g));
                }
                None => next.push(Arc::new(g)),
            }
        }
        for o in &old {
            if !next.iter().any(|n| n.key() == o.key()) {
                if let Some(t) = tasks.remove(&o.key()) {
                    t.abort();
                }
                if o.scope == RuleScope::Local {
                    let stale = o.stale_all();
                    let app = self.inner.appendable.clone();
                    let ts = now_ms();
                    tokio::task::spawn_blocking(move || write_local(app.as_ref(), ts, &stale));
                }
            }
        }
        for g in &next {
            if g.scope == RuleScope::Local && !tasks.contains_key(&g.key()) {
                let h = tokio::spawn(run_local(self.clone(), g.clone()));
                tasks.insert(g.key(), h);
            }
        }
        let n_local = next.iter().filter(|g| g.scope == RuleScope::Local).count();
        tracing::info!(
            groups = next.len(),
            local = n_local,
            global = next.len() - n_local,
            "rule groups loaded"
        );
        *self.inner.groups.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Stops every group task (no staleness markers: the node stops, it is not
    /// reconfigured).
    pub fn stop(&self) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (_, t) in tasks.drain() {
            t.abort();
        }
    }

    /// Stops every group task and ends the series of the local groups with staleness
    /// markers: the node stops being a shard (a leave), so its `shard` series must not
    /// linger for a lookback delta in the master's sums.
    pub async fn stop_as_shard(&self) {
        self.stop();
        let stale: Vec<(Labels, f64)> = self
            .groups()
            .iter()
            .filter(|g| g.scope == RuleScope::Local)
            .flat_map(|g| g.stale_all())
            .collect();
        let app = self.inner.appendable.clone();
        let ts = now_ms();
        let _ = tokio::task::spawn_blocking(move || write_local(app.as_ref(), ts, &stale)).await;
    }

    /// Evaluates a local group once at `ts` and appends the result (blocking).
    pub fn evaluate_local(&self, g: &Group, ts: i64) {
        let ext = self.external_labels();
        let reads;
        let queryable: &dyn Queryable = match &self.inner.shard_scope {
            Some(scope) => {
                let lookback = self.inner.engine.options().lookback_delta.as_millis() as i64;
                let reach = g
                    .rules
                    .iter()
                    .map(|r| shard_reads::reach_ms(&r.expr))
                    .max()
                    .unwrap_or(0);
                reads = shard_reads::ShardReads::new(
                    self.inner.local.as_ref(),
                    scope,
                    ts,
                    reach + lookback,
                );
                &reads
            }
            None => self.inner.local.as_ref(),
        };
        let env = EvalEnv {
            queryable,
            engine: &self.inner.engine,
            extra_labels: &self.inner.shard,
            external_labels: &ext,
            query_time: None,
        };
        let samples = g.evaluate(&env, ts);
        write_local(self.inner.appendable.as_ref(), ts, &samples);
    }
}

/// Appends `samples` at `ts` in one batch. Samples the store rejects (out of order,
/// duplicates, out of bounds) are counted in the returned number, not fatal: writing
/// them again would not change that. A failure of the store itself (an append or the
/// commit failing) is an error and nothing of the batch counts as written.
pub fn write_samples(
    app: &dyn Appendable,
    ts: i64,
    samples: &[(Labels, f64)],
) -> Result<usize, String> {
    if samples.is_empty() {
        return Ok(0);
    }
    let mut a = app.appender();
    let mut rejected = 0usize;
    for (l, v) in samples {
        match a.append(l, ts, *v) {
            Ok(_) => {}
            Err(crate::storage::AppendError::Storage(e)) => {
                a.rollback();
                return Err(format!("storage: {e}"));
            }
            Err(_) => rejected += 1,
        }
    }
    a.commit().map_err(|e| e.to_string())?;
    Ok(rejected)
}

/// [`write_samples`] for local rule results: failures are logged (the next evaluation
/// writes the next slot).
fn write_local(app: &dyn Appendable, ts: i64, samples: &[(Labels, f64)]) {
    match write_samples(app, ts, samples) {
        Ok(0) => {}
        Ok(rejected) => tracing::debug!(rejected, "rule samples rejected by the store"),
        Err(e) => tracing::warn!(error = %e, "cannot write rule results"),
    }
}

async fn run_local(mgr: RuleManager, g: Arc<Group>) {
    let iv = g.interval.as_millis().max(1) as i64;
    let off = group::offset_ms(&g.key(), iv);
    let mut next = group::slot_at_or_before(now_ms(), iv, off) + iv;
    loop {
        sleep_until_ms(next).await;
        let ts = next;
        let (m, gg) = (mgr.clone(), g.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || m.evaluate_local(&gg, ts)).await {
            tracing::error!(group = %g.name, error = %e, "rule evaluation panicked");
        }
        next += iv;
        let now = now_ms();
        if next <= now {
            let missed = (now - next) / iv + 1;
            tracing::warn!(group = %g.name, missed, "rule group evaluation missed iterations");
            next = group::slot_at_or_before(now, iv, off) + iv;
        }
    }
}

#[cfg(test)]
mod tests;
