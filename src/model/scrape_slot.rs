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

/// Samples each source contributes on either side of `t` to [`spacing_near`].
pub const NEAR: usize = 4;

/// The sample spacing around `t`: the median gap between consecutive samples among the
/// [`NEAR`] samples before `t` and the [`NEAR`] from `t` on, in every source (each
/// sorted by time); [`DEFAULT_SPACING_MS`] when no source has two there. Local, so a
/// series whose scrape interval changed (15 s, then 1 s) gets each stretch's own
/// spacing: one spacing for the whole series would take the 1-second scrapes next to
/// the change for replicas of one 15-second scrape.
pub fn spacing_near<S: AsRef<[Sample]>>(sources: &[S], t: i64) -> i64 {
    let mut gaps: Vec<i64> = Vec::with_capacity(sources.len() * 2 * NEAR);
    for src in sources {
        let src = src.as_ref();
        let p = src.partition_point(|x| x.t < t);
        let near = &src[p.saturating_sub(NEAR)..(p + NEAR).min(src.len())];
        gaps.extend(near.windows(2).map(|w| w[1].t - w[0].t).filter(|g| *g > 0));
    }
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
    fn the_spacing_near_a_time_is_that_stretch_s_own() {
        // Every 15 s up to 300 s, then every second from 313 s on.
        let mut a: Vec<Sample> = (0..=20).map(|k| s(k * 15_000)).collect();
        a.extend((313..330).map(|k| s(k * 1000)));
        assert_eq!(spacing(&[&a[..]]), 15_000);
        assert_eq!(spacing_near(&[&a[..]], 150_000), 15_000);
        assert_eq!(spacing_near(&[&a[..]], 317_000), 1000);
        // A second source counts too; a time with no samples near uses the default.
        let b: Vec<Sample> = (317..330).map(|k| s(k * 1000)).collect();
        assert_eq!(spacing_near(&[&a[..], &b[..]], 313_000), 1000);
        assert_eq!(spacing_near::<&[Sample]>(&[&[s(5)]], 5), DEFAULT_SPACING_MS);
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
