//! Who counts a target in shard-level rules, over time. Every node applies the same
//! committed membership views; each records when it applied one (its own clock) and
//! the members targets were assigned over then (`MembershipView::owners()`). A target
//! is *counted* at time `t` by its first owner at `t` — one member per target, also
//! when several scrape it (`--cluster.replication-factor` > 1) — so the shard-level
//! rules of all members together count every target once. Pure: the caller feeds it
//! views and times.

use std::sync::Arc;

use super::Assigner;

/// How many past assignments a history keeps (changes are rare; a rule reads back at
/// most its window, see [`OwnershipHistory::prune`]).
const MAX_EPOCHS: usize = 64;

struct Epoch {
    /// When this node applied the view (ms since the epoch).
    from_ms: i64,
    /// The members targets were assigned over, sorted.
    owners: Vec<u64>,
    assigner: Assigner,
}

/// The assignments this node applied, oldest first. Cheap to clone (shared epochs).
#[derive(Clone, Default)]
pub struct OwnershipHistory {
    epochs: Vec<Arc<Epoch>>,
}

impl std::fmt::Debug for OwnershipHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.epochs.iter().map(|e| (e.from_ms, &e.owners)))
            .finish()
    }
}

impl OwnershipHistory {
    /// Records that targets are assigned over `owners` from `at_ms` on. The same set as
    /// the current one is no change (returns false); a time before the last recorded
    /// one is taken as that time (clocks do not run back in the history).
    pub fn record(&mut self, at_ms: i64, owners: impl IntoIterator<Item = u64>) -> bool {
        let mut owners: Vec<u64> = owners.into_iter().collect();
        owners.sort_unstable();
        owners.dedup();
        if self.epochs.last().is_some_and(|last| last.owners == owners) {
            return false;
        }
        let from_ms = self.epochs.last().map_or(at_ms, |l| l.from_ms.max(at_ms));
        let assigner = Assigner::new(owners.iter().copied());
        self.epochs.push(Arc::new(Epoch {
            from_ms,
            owners,
            assigner,
        }));
        if self.epochs.len() > MAX_EPOCHS {
            self.epochs.remove(0);
        }
        true
    }

    /// Forgets assignments that ended before `before_ms` (the one in force then stays).
    pub fn prune(&mut self, before_ms: i64) {
        let keep_from = self
            .epochs
            .iter()
            .rposition(|e| e.from_ms <= before_ms)
            .unwrap_or(0);
        self.epochs.drain(..keep_from);
    }

    /// When the history starts (`None` while empty).
    pub fn start_ms(&self) -> Option<i64> {
        self.epochs.first().map(|e| e.from_ms)
    }

    /// The index of the epoch in force at `t`.
    fn at(&self, t: i64) -> Option<usize> {
        self.epochs.iter().rposition(|e| e.from_ms <= t)
    }

    /// The member that counts the target with this key at `t`: its first owner then.
    pub fn counter_at(&self, key: u64, t: i64) -> Option<u64> {
        let e = &self.epochs[self.at(t)?];
        e.assigner.owners(key, 1).first().copied()
    }

    /// Since when `member` has counted the target without a break, as of `t`; `None`
    /// when it does not count it at `t`. The start of the history counts as the start
    /// of a run (what came before is unknown here: a node that just started counts its
    /// targets as gained then).
    pub fn counting_since(&self, member: u64, key: u64, t: i64) -> Option<i64> {
        let mut i = self.at(t)?;
        let mine = |e: &Epoch| e.assigner.owners(key, 1).first() == Some(&member);
        if !mine(&self.epochs[i]) {
            return None;
        }
        while i > 0 && mine(&self.epochs[i - 1]) {
            i -= 1;
        }
        Some(self.epochs[i].from_ms)
    }

    /// Whether the assignment changed (or the history started) in `(from, to]`: when
    /// not, nobody gained a target in that time.
    pub fn changed_within(&self, from: i64, to: i64) -> bool {
        self.epochs
            .iter()
            .any(|e| e.from_ms > from && e.from_ms <= to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn one_counter_per_target_and_runs_of_counting() {
        let mut h = OwnershipHistory::default();
        assert_eq!(h.counter_at(1, 0), None);
        assert!(h.record(1000, [1, 2, 3]));
        assert!(!h.record(1500, [3, 2, 1]), "the same owners are no change");
        assert!(h.record(5000, [1, 2, 3, 4]));
        assert!(h.record(9000, [1, 2, 3]));
        assert_eq!(h.start_ms(), Some(1000));
        assert!(h.changed_within(4000, 5000));
        assert!(!h.changed_within(5000, 8999));
        assert!(h.changed_within(0, 1000), "the start counts as a change");

        let before = Assigner::new([1, 2, 3]);
        let mut moved = 0;
        for k in keys(400) {
            assert_eq!(h.counter_at(k, 500), None, "before the history");
            let first = before.owners(k, 1)[0];
            assert_eq!(h.counter_at(k, 4999), Some(first));
            // Counted by exactly one member at any time.
            for t in [1000, 4999, 5000, 8999, 9000, 20_000] {
                let counters: Vec<u64> = (1..=4)
                    .filter(|&m| h.counting_since(m, k, t).is_some())
                    .collect();
                assert_eq!(
                    counters,
                    vec![h.counter_at(k, t).unwrap()],
                    "key {k} at {t}"
                );
            }
            if h.counter_at(k, 5000) == Some(4) {
                moved += 1;
                // Gained by 4 at the join, back to its first owner at the leave.
                assert_eq!(h.counting_since(4, k, 6000), Some(5000));
                assert_eq!(h.counting_since(first, k, 4000), Some(1000));
                assert_eq!(h.counting_since(first, k, 6000), None);
                assert_eq!(h.counting_since(first, k, 9000), Some(9000));
            } else {
                // Unmoved: one run from the start of the history.
                assert_eq!(h.counting_since(first, k, 20_000), Some(1000));
            }
        }
        assert!(moved > 50, "the join moved {moved} of 400");

        h.prune(6000);
        assert_eq!(h.start_ms(), Some(5000), "the epoch in force at 6000 stays");
        h.prune(100_000);
        assert_eq!(h.start_ms(), Some(9000));
    }

    #[test]
    fn clocks_do_not_run_back_and_the_history_is_bounded() {
        let mut h = OwnershipHistory::default();
        h.record(2000, [1]);
        h.record(1000, [1, 2]);
        assert_eq!(h.epochs[1].from_ms, 2000);
        assert_eq!(h.counter_at(7, 1999), None);
        assert!(h.counter_at(7, 2000).is_some());
        for i in 0..(MAX_EPOCHS as u64 + 10) {
            h.record(3000 + i as i64, [1, 2, 3 + i]);
        }
        assert_eq!(h.epochs.len(), MAX_EPOCHS);
    }
}
