//! The leader's master loop ("Leader as master" in DESIGN.md): rule groups with
//! `scope: global` run on the current Raft leader only. Each group interval, at the
//! group's slot `offset + k * interval` (the same schedule on every node, see
//! [`crate::rules`]), the leader
//!
//! 1. skips the slot if it is not the leader or the slot is already committed (a
//!    previous leader got there first). A node that becomes leader runs the latest
//!    slot at once if nobody committed it (followers check every 250 ms), so a leader
//!    change costs at most one slot;
//! 2. federates the series the group reads — every vector selector of its rules — from
//!    every up member over the internal route `peer::protocol::FEDERATE` (what
//!    `/federate?local=1&external_labels=0&match[]=...` answers: each member's own
//!    data, with its `shard` label), concurrently, with a timeout;
//! 3. evaluates the group over that data in memory (at the time the fetch finished;
//!    only the latest sample of each series is federated, so global rules use instant
//!    selectors over shard-level series, as in the classic recipe);
//! 4. proposes all resulting samples (stamped with the slot) as ONE Raft entry
//!    ([`ClusterHandle::commit_samples`]); every node's state machine appends them to
//!    its TSDB, and ignores a slot it has already applied.
//!
//! A member that does not answer is left out of that slot's evaluation (logged and
//! counted in the group's federation figures): its targets move to the other members
//! once it is committed down. Alert state of global groups lives on the leader and
//! starts again on a new leader.

pub mod fetch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use promql_parser::parser::Expr;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterHandle, SampleBatch};
use crate::rules::group::{FederationStats, slot_at_or_before};
use crate::rules::{EvalEnv, Group, RuleManager, now_ms, sleep_until_ms};
use crate::storage::memory::MemStore;

/// Starts the master loop on the current Tokio runtime; it runs until aborted.
pub fn spawn(rules: RuleManager, cluster: ClusterHandle) -> JoinHandle<()> {
    tokio::spawn(run(rules, cluster))
}

async fn run(rules: RuleManager, cluster: ClusterHandle) {
    let client = cluster.peer().clone();
    // Last slot this node, as leader, handled per group key.
    let mut done: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let groups = rules.global_groups();
        done.retain(|k, _| groups.iter().any(|g| g.key() == *k));
        let mut wake = now_ms() + CHECK_EVERY_MS;
        for g in &groups {
            let iv = interval_ms(g);
            let off = crate::rules::group::offset_ms(&g.key(), iv);
            // The latest slot that has come: on time normally, late (at once) on a node
            // that just became leader and finds it uncommitted.
            let due = slot_at_or_before(now_ms(), iv, off);
            if done.get(&g.key()).is_none_or(|d| *d < due)
                && run_slot(&rules, &cluster, &client, g, due).await
            {
                done.insert(g.key(), due);
            }
            wake = wake.min(slot_at_or_before(now_ms(), iv, off) + iv);
        }
        sleep_until_ms(wake).await;
    }
}

/// How often a follower checks whether it became leader (and reloads are seen).
const CHECK_EVERY_MS: i64 = 250;

fn interval_ms(g: &Group) -> i64 {
    g.interval.as_millis().max(1) as i64
}

/// One slot of one global group on this node. Returns false when this node is not
/// the leader (the slot stays open for a node that becomes leader before the next one).
async fn run_slot(
    rules: &RuleManager,
    cluster: &ClusterHandle,
    client: &crate::peer::PeerClient,
    g: &Arc<Group>,
    slot: i64,
) -> bool {
    if !cluster.is_leader() {
        // Whatever this node wrote as leader is someone else's series now.
        g.forget_series();
        return false;
    }
    let key = g.key();
    if cluster.last_committed_slot(&key).is_some_and(|l| l >= slot) {
        return true;
    }
    let started = Instant::now();
    let selectors = selectors(g);
    let members: Vec<String> = cluster
        .membership_view()
        .borrow()
        .up
        .values()
        .cloned()
        .collect();
    let timeout = g.interval.min(Duration::from_secs(10));
    let store = MemStore::new();
    let fetched = fetch::federate_all(client, &members, &selectors, timeout, &store).await;
    let fetch_time = started.elapsed();
    for (addr, e) in &fetched.failed {
        tracing::warn!(group = %g.name, member = %addr, error = %e, "master loop: member not federated this slot");
    }
    if !cluster.is_leader() {
        return false;
    }
    let eval_at = now_ms();
    let (rules2, g2) = (rules.clone(), g.clone());
    let samples = tokio::task::spawn_blocking(move || {
        let ext = rules2.external_labels();
        let none = crate::model::Labels::empty();
        let env = EvalEnv {
            queryable: &store,
            engine: rules2.engine(),
            extra_labels: &none,
            external_labels: &ext,
            query_time: Some(eval_at),
        };
        g2.evaluate(&env, slot)
    })
    .await;
    let samples = match samples {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(group = %g.name, error = %e, "global rule evaluation panicked");
            return true;
        }
    };
    let batch = SampleBatch {
        group: key,
        slot,
        series: samples
            .iter()
            .map(|(l, v)| {
                (
                    l.iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect(),
                    v.to_bits(),
                )
            })
            .collect(),
    };
    let n = batch.series.len();
    let res = cluster.commit_samples(batch).await;
    let stats = FederationStats {
        members: members.len(),
        failed_members: fetched.failed.len(),
        bytes: fetched.bytes,
        series: fetched.series,
        fetch_time,
        total_time: started.elapsed(),
        committed_samples: if res.is_ok() { n } else { 0 },
        last_error: res
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    };
    match res {
        Ok(()) => {
            tracing::debug!(group = %g.name, slot, samples = n, bytes = stats.bytes, "global rule results committed")
        }
        Err(e) => {
            tracing::warn!(group = %g.name, slot, error = %e, "cannot commit global rule results")
        }
    }
    g.state().federation = Some(stats);
    true
}

/// The vector selectors of every rule of the group, as `match[]` strings.
pub fn selectors(g: &Group) -> Vec<String> {
    let mut out = Vec::new();
    for r in &g.rules {
        walk(&r.expr, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn walk(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::VectorSelector(vs) => out.push(fetch::selector_text(vs)),
        Expr::MatrixSelector(ms) => out.push(fetch::selector_text(&ms.vs)),
        Expr::Paren(p) => walk(&p.expr, out),
        Expr::Unary(u) => walk(&u.expr, out),
        Expr::Subquery(s) => walk(&s.expr, out),
        Expr::Binary(b) => {
            walk(&b.lhs, out);
            walk(&b.rhs, out);
        }
        Expr::Aggregate(a) => {
            walk(&a.expr, out);
            if let Some(p) = &a.param {
                walk(p, out);
            }
        }
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::rules::parse_rule_file;

    #[test]
    fn selectors_of_a_group() {
        let f = parse_rule_file(
            "groups:\n- name: g\n  scope: global\n  rules:\n  - record: 'job:x:rate1m'\n    expr: sum without (shard) (shard:x:rate1m)\n  - record: b\n    expr: 'max(rate(y{a=~\"b\\\\d\", c!=\"q\"}[5m])) / on() count(shard:x:rate1m) + scalar(z)'\n",
            std::path::Path::new("r.yml"),
        )
        .unwrap();
        let g = Group::new(
            PathBuf::from("r.yml"),
            &f.groups[0],
            Duration::from_secs(60),
        )
        .unwrap();
        let s = selectors(&g);
        assert_eq!(
            s,
            vec![
                "{__name__=\"shard:x:rate1m\"}".to_string(),
                "{__name__=\"y\",a=~\"b\\\\d\",c!=\"q\"}".to_string(),
                "{__name__=\"z\"}".to_string(),
            ]
        );
        for sel in &s {
            crate::web::params::parse_selector(sel).unwrap();
        }
    }
}
