//! Scrape slots: which samples of one series, held by several sources (replicas of a
//! target, the owners before and after a move), come from the same scrape.
//!
//! Every source scrapes a target on the same phase (it comes from the target key) and a
//! scrape can only start late, never early. So the phase, estimated from the samples
//! around a time, cuts time into slots of the sample spacing `d`; two samples of
//! different sources in one slot are replicas of one scrape. Used by the cluster's read
//! merge (`query::dedup`) and by the TSDB's replica import (`tsdb::import`), which must
//! agree on what a replica is.

use super::Sample;

/// Spacing assumed when no source has two samples (as Thanos's initial penalty).
pub const DEFAULT_SPACING_MS: i64 = 5_000;

/// The median gap between consecutive samples over all sources (each sorted by time);
/// [`DEFAULT_SPACING_MS`] when no source has two samples.
pub fn spacing<S: AsRef<[Sample]>>(sources: &[S]) -> i64 {
    let mut gaps: Vec<i64> = sources
        .iter()
        .flat_map(|s| s.as_ref().windows(2).map(|w| w[1].t - w[0].t))
        .filter(|g| *g > 0)
        .collect();
    if gaps.is_empty() {
        return DEFAULT_SPACING_MS;
    }
    let mid = gaps.len() / 2;
    *gaps.select_nth_unstable(mid).1
}

/// The scrape slot `[start, end)` holding the sample at `t`, for sample spacing `d`:
/// samples of other sources within it come from the same scrape (replicas), even when
/// one of them ran late.
///
/// The phase is estimated from the samples of all sources (each sorted by time) around
/// `t` (ten intervals back, two ahead): the start of the densest `d / 10` window of
/// their positions modulo `d` — the on-time scrapes. A slot starts `d / 10` before the
/// phase (early jitter) and lasts `d`, so a scrape up to 0.9 `d` late still counts for
/// its own slot.
pub fn slot<S: AsRef<[Sample]>>(sources: &[S], t: i64, d: i64) -> (i64, i64) {
    let d = d.max(1);
    let tol = (d / 10).max(1);
    let (lo, hi) = (
        t.saturating_sub(d.saturating_mul(10)),
        t.saturating_add(d.saturating_mul(2)),
    );
    let mut residues: Vec<i64> = sources
        .iter()
        .flat_map(|src| {
            let src = src.as_ref();
            let from = src.partition_point(|x| x.t < lo);
            src[from..].iter().take_while(|x| x.t <= hi)
        })
        .map(|x| (x.t - t).rem_euclid(d))
        .collect();
    residues.sort_unstable();
    // The densest window [r, r + tol] (circular), earliest r on ties.
    let n = residues.len();
    let mut phase = 0;
    let mut best = 0usize;
    let mut j = 0usize;
    for i in 0..n {
        if j < i {
            j = i;
        }
        // Advance j (modulo n, over at most one full turn) while within the window.
        while j + 1 < i + n && (residues[(j + 1) % n] - residues[i]).rem_euclid(d) <= tol {
            j += 1;
        }
        let count = j - i + 1;
        if count > best {
            best = count;
            phase = residues[i];
        }
    }
    let start = t - (tol - phase).rem_euclid(d);
    (start, start + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64) -> Sample {
        Sample { t, v: 0.0 }
    }

    #[test]
    fn spacing_is_the_median_gap() {
        let a: Vec<Sample> = [0, 15_000, 30_000, 45_000, 100_000].map(s).to_vec();
        assert_eq!(spacing(&[a]), 15_000);
        assert_eq!(spacing(&[vec![s(1)], vec![]]), DEFAULT_SPACING_MS);
    }

    #[test]
    fn a_late_replica_is_in_the_slot_of_its_scrape() {
        // On-time scrapes at 1000 + 15 s · k; a replica 9 s late is still in its slot,
        // the next scrape is not.
        let a: Vec<Sample> = (0..10).map(|k| s(1000 + k * 15_000)).collect();
        let (start, end) = slot(&[&a[..]], 1000 + 5 * 15_000, 15_000);
        assert!(start <= 76_000 && 76_000 + 9_000 < end, "{start}..{end}");
        assert!(end <= 91_000, "{start}..{end}");
        // The slot holds its own time whatever the samples say.
        let (start, end) = slot::<&[Sample]>(&[], 123, 15_000);
        assert!(start <= 123 && 123 < end);
    }
}
