//! What a local (shard-level) rule group reads in a cluster: the series of the targets
//! this node *counts* at the evaluation time, whole.
//!
//! Every member runs the same local groups, and the master sums their results
//! (`sum without (shard) (shard:…)`). For that sum to equal the aggregate over all raw
//! data, every target must be counted by exactly one member at every evaluation, over
//! its whole window — also right after it moved (a join, a leave, a node marked down),
//! when the node that scraped it before still holds its recent samples (a moved target
//! gets no staleness markers) and the node that scrapes it now holds only those since
//! the move. So a local group reads through [`ShardReads`]:
//!
//! 1. a series of a known target (its `job` and `instance` name a discovered target,
//!    [`crate::shard::placement`]) is read only by the target's first owner at the
//!    evaluation time, per the committed assignment history
//!    ([`crate::shard::ownership`]): the old owner stops counting it exactly when the
//!    new one starts (both apply the same log), and with a replication factor above
//!    1 the other owners leave it to the first;
//! 2. for a target it gained within the group's window (the longest range its
//!    expressions read plus the lookback delta), the counting node reads the target's
//!    series from the whole cluster (the fan-out read with its replica-aware merge),
//!    so its rates see the samples the previous owner scraped; after that window its
//!    own store holds everything the group reads. No fan-out while nothing moved;
//! 3. series that name no known target (rule output, a target no longer discovered,
//!    `job`/`instance` pairs that several targets share) are read as before: from this
//!    node's store.
//!
//! Only selects are filtered; label and series listings answer from the node's store.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use promql_parser::parser::{Expr, Offset};

use crate::model::{Labels, MatchOp, Matcher};
use crate::shard::ownership::OwnershipHistory;
use crate::shard::placement::InstanceKeys;
use crate::storage::{Queryable, SelectHints, SeriesSet, StorageError};

/// The assignment history and the discovered targets at one moment.
#[derive(Clone, Default)]
pub struct Ownership {
    pub history: OwnershipHistory,
    /// Every discovered target's key by `(job, instance)`.
    pub targets: Arc<InstanceKeys>,
    /// `(job, instance)` pairs of several targets: their series name no single target.
    pub ambiguous: Arc<HashSet<(String, String)>>,
}

/// Source of the current [`Ownership`].
pub type OwnershipFn = Arc<dyn Fn() -> Ownership + Send + Sync>;

/// What a cluster node gives its local groups: its id, the cluster read and the
/// ownership.
#[derive(Clone)]
pub struct ShardScope {
    pub node_id: u64,
    /// Every member's data, replica-aware merge (`query::ClusterQueryable`).
    pub cluster: Arc<dyn Queryable>,
    pub ownership: OwnershipFn,
}

/// How far before the evaluation time an expression reads, lookback delta excluded:
/// its longest range, subquery range and offset (`@` is not followed).
pub fn reach_ms(e: &Expr) -> i64 {
    fn offset(o: &Option<Offset>) -> i64 {
        match o {
            Some(Offset::Pos(d)) => d.as_millis() as i64,
            _ => 0,
        }
    }
    match e {
        Expr::VectorSelector(vs) => offset(&vs.offset),
        Expr::MatrixSelector(ms) => ms.range.as_millis() as i64 + offset(&ms.vs.offset),
        Expr::Subquery(s) => s.range.as_millis() as i64 + offset(&s.offset) + reach_ms(&s.expr),
        Expr::Paren(p) => reach_ms(&p.expr),
        Expr::Unary(u) => reach_ms(&u.expr),
        Expr::Binary(b) => reach_ms(&b.lhs).max(reach_ms(&b.rhs)),
        Expr::Aggregate(a) => reach_ms(&a.expr).max(a.param.as_deref().map_or(0, reach_ms)),
        Expr::Call(c) => c.args.args.iter().map(|a| reach_ms(a)).max().unwrap_or(0),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => 0,
    }
}

/// Targets this node counts and gained within the window.
#[derive(Default)]
struct Gained {
    keys: HashSet<u64>,
    /// Their `instance` values, sorted.
    instances: Vec<String>,
}

/// A [`Queryable`] over this node's share of the targets at one evaluation time (see
/// the module docs). Built per evaluation.
pub struct ShardReads<'a> {
    local: &'a dyn Queryable,
    cluster: &'a dyn Queryable,
    own: Ownership,
    me: u64,
    at: i64,
    window: i64,
    gained: OnceLock<Gained>,
}

impl<'a> ShardReads<'a> {
    /// Reads at evaluation time `at` (ms) for a group that reads `window` ms back.
    pub fn new(
        local: &'a dyn Queryable,
        scope: &'a ShardScope,
        at: i64,
        window: i64,
    ) -> ShardReads<'a> {
        ShardReads {
            local,
            cluster: scope.cluster.as_ref(),
            own: (scope.ownership)(),
            me: scope.node_id,
            at,
            window,
            gained: OnceLock::new(),
        }
    }

    /// The key of the target a series names, if it names exactly one.
    fn target_key(&self, labels: &Labels) -> Option<u64> {
        let pair = (
            labels.get("job")?.to_owned(),
            labels.get("instance")?.to_owned(),
        );
        if self.own.ambiguous.contains(&pair) {
            return None;
        }
        self.own.targets.get(&pair).copied()
    }

    fn gained(&self) -> &Gained {
        self.gained.get_or_init(|| {
            let since = self.at - self.window;
            let h = &self.own.history;
            let mut g = Gained::default();
            if !h.changed_within(since, self.at) {
                return g;
            }
            for ((job, instance), &key) in self.own.targets.iter() {
                if self
                    .own
                    .ambiguous
                    .contains(&(job.clone(), instance.clone()))
                {
                    continue;
                }
                if h.counting_since(self.me, key, self.at)
                    .is_some_and(|s| s > since)
                {
                    g.keys.insert(key);
                    g.instances.push(instance.clone());
                }
            }
            g.instances.sort_unstable();
            g.instances.dedup();
            g
        })
    }
}

impl Queryable for ShardReads<'_> {
    fn select(&self, hints: &SelectHints, matchers: &[Matcher]) -> Result<SeriesSet, StorageError> {
        let mut set = self.local.select(hints, matchers)?;
        let gained = self.gained();
        set.series.retain(|s| match self.target_key(&s.labels) {
            None => true,
            Some(k) => {
                !gained.keys.contains(&k)
                    && self.own.history.counter_at(k, self.at) == Some(self.me)
            }
        });
        if gained.keys.is_empty() {
            return Ok(set);
        }
        // The gained targets' series from every member: only their instances are read.
        let alternatives: Vec<String> = gained.instances.iter().map(|i| regex::escape(i)).collect();
        let mut m = matchers.to_vec();
        m.push(
            Matcher::new(MatchOp::Regex, "instance", alternatives.join("|"))
                .map_err(|e| StorageError(format!("gained targets' matcher: {e}")))?,
        );
        let remote = self.cluster.select(hints, &m)?;
        set.warnings.extend(remote.warnings);
        set.series.extend(remote.series.into_iter().filter(|s| {
            self.target_key(&s.labels)
                .is_some_and(|k| gained.keys.contains(&k))
        }));
        set.series.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(set)
    }

    fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError> {
        self.local.series(mint, maxt, matchers)
    }

    fn label_names(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.local.label_names(mint, maxt, matchers)
    }

    fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.local.label_values(name, mint, maxt, matchers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Assigner;
    use crate::storage::memory::MemStore;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    fn series(job: &str, instance: &str) -> Labels {
        l(&[
            ("__name__", "x_total"),
            ("instance", instance),
            ("job", job),
        ])
    }

    /// Targets `t0..t{n}` of job `j`, with keys 100.., and the history: members 1 and
    /// 2 from 0 on, member 3 joins at 60 000.
    fn ownership(n: u64) -> Ownership {
        let mut targets = InstanceKeys::new();
        for i in 0..n {
            targets.insert(("j".into(), format!("t{i}")), 100 + i);
        }
        let mut history = OwnershipHistory::default();
        history.record(0, [1, 2]);
        history.record(60_000, [1, 2, 3]);
        Ownership {
            history,
            targets: Arc::new(targets),
            ambiguous: Arc::default(),
        }
    }

    fn scope(me: u64, cluster: &MemStore, own: Ownership) -> ShardScope {
        ShardScope {
            node_id: me,
            cluster: Arc::new(cluster.clone()),
            ownership: Arc::new(move || own.clone()),
        }
    }

    fn names(set: &SeriesSet) -> Vec<String> {
        set.series
            .iter()
            .map(|s| {
                format!(
                    "{}/{}:{}",
                    s.labels.get("job").unwrap_or(""),
                    s.labels.get("instance").unwrap_or(""),
                    s.samples.len()
                )
            })
            .collect()
    }

    fn select_all(r: &ShardReads<'_>, at: i64) -> SeriesSet {
        let hints = SelectHints {
            start: at - 60_000,
            end: at,
            ..SelectHints::default()
        };
        r.select(&hints, &[Matcher::equal("__name__", "x_total")])
            .unwrap()
    }

    #[test]
    fn each_target_is_read_by_its_counter_only_and_whole_after_a_move() {
        const N: u64 = 12;
        let own = ownership(N);
        let before = Assigner::new([1, 2]);
        let after = Assigner::new([1, 2, 3]);
        // Every member's store holds every target it scraped: before the join, the
        // first owners over {1, 2} (samples every second from 0 to 59 s); after it,
        // those over {1, 2, 3} (60 s to 90 s).
        let stores: Vec<MemStore> = (0..=3).map(|_| MemStore::new()).collect();
        let cluster = MemStore::new();
        for i in 0..N {
            let labels = series("j", &format!("t{i}"));
            for s in 0..=90 {
                let t = s * 1000;
                let owner = if t < 60_000 { &before } else { &after }.owners(100 + i, 1)[0];
                stores[owner as usize].insert(&labels, t, t as f64);
                cluster.insert(&labels, t, t as f64);
            }
        }
        // Rule output and a series of an unknown target stay on the node that has them.
        for store in &stores[1..] {
            store.insert(&l(&[("__name__", "x_total"), ("shard", "s")]), 70_000, 1.0);
            store.insert(&series("j", "gone"), 70_000, 1.0);
        }
        let moved: Vec<u64> = (0..N)
            .filter(|i| after.owners(100 + i, 1)[0] == 3)
            .collect();
        assert!(!moved.is_empty(), "the join moved nothing");

        // 20 s after the join, a group with a 1m window (plus 5m lookback).
        let at = 80_000;
        let mut counted: Vec<String> = Vec::new();
        for me in 1..=3u64 {
            let sc = scope(me, &cluster, own.clone());
            let r = ShardReads::new(&stores[me as usize], &sc, at, 360_000);
            let set = select_all(&r, at);
            for s in &set.series {
                let i = s.labels.get("instance").unwrap_or("");
                if i.starts_with('t') {
                    counted.push(i.to_owned());
                    let key = own.targets[&("j".to_owned(), i.to_owned())];
                    assert_eq!(after.owners(key, 1)[0], me, "{i} read by {me}");
                    // Whole: the minute before `at`, also for the moved targets.
                    assert_eq!(s.samples.len(), 61, "{i} on {me}");
                }
            }
            let n = names(&set);
            assert!(n.contains(&"j/gone:1".to_owned()), "{n:?}");
            assert!(
                set.series
                    .iter()
                    .any(|s| s.labels.get("shard") == Some("s")),
                "rule output kept: {n:?}"
            );
        }
        counted.sort();
        let mut want: Vec<String> = (0..N).map(|i| format!("t{i}")).collect();
        want.sort();
        assert_eq!(counted, want, "every target counted exactly once");

        // Long after the join (past the window) the new owner reads only its store.
        let late = 60_000 + 360_000 + 1;
        let sc = scope(3, &MemStore::new(), own.clone());
        let r = ShardReads::new(&stores[3], &sc, late, 360_000);
        assert!(r.gained().keys.is_empty());
        let hints = SelectHints {
            start: 0,
            end: late,
            ..SelectHints::default()
        };
        let set = r
            .select(&hints, &[Matcher::equal("__name__", "x_total")])
            .unwrap();
        let own_targets = set
            .series
            .iter()
            .filter(|s| s.labels.get("instance").is_some_and(|i| i.starts_with('t')))
            .count();
        assert_eq!(own_targets, moved.len());
    }

    #[test]
    fn only_the_first_owner_counts_a_replicated_target() {
        // Replication factor 2 over {1, 2}: both scrape every target, one counts it.
        let mut own = ownership(6);
        own.history = OwnershipHistory::default();
        own.history.record(-1_000_000, [1, 2]);
        let a = Assigner::new([1, 2]);
        let stores: Vec<MemStore> = (0..=2).map(|_| MemStore::new()).collect();
        for i in 0..6 {
            for store in &stores[1..] {
                store.insert(&series("j", &format!("t{i}")), 1000, 1.0);
            }
        }
        let mut total = 0;
        for me in 1..=2u64 {
            let sc = scope(me, &MemStore::new(), own.clone());
            let r = ShardReads::new(&stores[me as usize], &sc, 30_000, 60_000);
            let set = select_all(&r, 30_000);
            for s in &set.series {
                let i = s.labels.get("instance").unwrap();
                assert_eq!(a.owners(own.targets[&("j".into(), i.into())], 1)[0], me);
            }
            total += set.series.len();
        }
        assert_eq!(total, 6);
    }

    #[test]
    fn shared_instances_and_nodes_outside_the_assignment() {
        let mut own = ownership(2);
        own.ambiguous = Arc::new([("j".to_owned(), "t0".to_owned())].into_iter().collect());
        let store = MemStore::new();
        store.insert(&series("j", "t0"), 1000, 1.0);
        store.insert(&series("j", "t1"), 1000, 1.0);
        // Member 9 owns nothing: it reads only what names no single target.
        let sc = scope(9, &MemStore::new(), own);
        let r = ShardReads::new(&store, &sc, 30_000, 60_000);
        assert_eq!(names(&select_all(&r, 30_000)), vec!["j/t0:1".to_owned()]);
    }

    #[test]
    fn reach_of_expressions() {
        let r = |q: &str| reach_ms(&promql_parser::parser::parse(q).unwrap());
        assert_eq!(r("up"), 0);
        assert_eq!(r("sum(rate(x[1m]))"), 60_000);
        assert_eq!(r("rate(x[1m] offset 30s) / rate(y[2m])"), 120_000);
        assert_eq!(r("max_over_time(rate(x[1m])[5m:10s])"), 360_000);
        assert_eq!(r("topk(3, x offset 1m)"), 60_000);
    }
}
