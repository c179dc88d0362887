//! Merging the samples of one series that several members returned, without doubling.
//!
//! The same series comes from more than one member when its target is scraped by
//! several of them (replication factor > 1: same phase, timestamps a few ms apart) or
//! moved between them (a handoff overlap of an interval or two, or history split at
//! the move). Interleaving all samples by time would double the sample density and,
//! for counters, create fake resets (two replicas read the counter at slightly
//! different moments). So [`merge`] follows one source at a time:
//!
//! - `d`, the sample spacing, is the median of the gaps between consecutive samples of
//!   every source around the time in question ([`scrape_slot::spacing_near`]: four
//!   samples either side; 5 s when no source has two there), so that a series whose
//!   scrape interval changed is merged by the spacing of each stretch;
//! - the merge keeps taking the current source's next sample while it comes at most
//!   `1.5 d` after the last one taken;
//! - otherwise (the current source has a gap or ends) it takes the earliest sample of
//!   any source from a later scrape than the last one taken, and follows that source
//!   from then on. "Same scrape" is decided by scrape slots: all sources scrape on one
//!   phase and scrapes only ever run late, so the phase (estimated from the samples
//!   around the switch) cuts time into slots of `d`, and a replica that ran up to
//!   0.9 `d` late still falls in its own slot ([`scrape_slot::slot`]). Samples of other sources
//!   in the slot of a sample already taken are replicas of it and are dropped.
//!
//! Staleness markers are samples like any other here: a marker of the followed source
//! is kept (the series really ended there); a replica's marker in the same slot is a
//! duplicate. Ties are broken by source order, which callers make the same on
//! every node (member id), so every node computes the same merged series.

use crate::model::Sample;
use crate::model::scrape_slot::{self, spacing_near};

/// Merges the time-sorted sample lists of one series from several sources (in a fixed
/// order) into one time-sorted list without replica duplicates.
pub fn merge(sources: Vec<Vec<Sample>>) -> Vec<Sample> {
    let mut sources: Vec<Vec<Sample>> = sources.into_iter().filter(|s| !s.is_empty()).collect();
    match sources.len() {
        0 => return Vec::new(),
        1 => return sources.pop().unwrap_or_default(),
        _ => {}
    }
    let mut next = vec![0usize; sources.len()];
    let mut out: Vec<Sample> = Vec::with_capacity(sources.iter().map(Vec::len).max().unwrap_or(0));
    let mut cur: Option<usize> = None;
    loop {
        let last_t = out.last().map(|s| s.t);
        // Stick to the current source while it has no gap.
        if let (Some(c), Some(lt)) = (cur, last_t) {
            let d = spacing_near(&sources, lt);
            let gap = d + d / 2;
            let src = &sources[c];
            while next[c] < src.len() && src[next[c]].t <= lt {
                next[c] += 1;
            }
            if let Some(s) = src.get(next[c])
                && s.t <= lt.saturating_add(gap)
            {
                out.push(*s);
                next[c] += 1;
                continue;
            }
        }
        // Switch: the earliest sample of a later scrape than the last one taken.
        let floor = match last_t {
            Some(lt) => slot_end(&sources, lt, spacing_near(&sources, lt)) - 1,
            None => i64::MIN,
        };
        let mut best: Option<(i64, usize)> = None;
        for (i, src) in sources.iter().enumerate() {
            let bound = if Some(i) == cur {
                last_t.unwrap_or(i64::MIN)
            } else {
                floor
            };
            while next[i] < src.len() && src[next[i]].t <= bound {
                next[i] += 1;
            }
            if let Some(s) = src.get(next[i]) {
                let better = match best {
                    None => true,
                    Some((bt, bi)) => s.t < bt || (s.t == bt && Some(i) == cur && Some(bi) != cur),
                };
                if better {
                    best = Some((s.t, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        out.push(sources[i][next[i]]);
        next[i] += 1;
        cur = Some(i);
    }
    out
}

/// The end of the scrape slot of the sample at `t` ([`scrape_slot::slot`]): samples of
/// other sources up to it come from the same scrape (replicas), even when one of them
/// ran late.
fn slot_end(sources: &[Vec<Sample>], t: i64, d: i64) -> i64 {
    scrape_slot::slot(sources, t, d).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{is_stale_nan, stale_nan};

    fn s(t: i64, v: f64) -> Sample {
        Sample { t, v }
    }

    /// A counter scraped every 15 s from `from` to `to` (inclusive, seconds), with
    /// `jitter` ms added to each timestamp, reading `rate` per second.
    fn counter(from: i64, to: i64, jitter: impl Fn(i64) -> i64, rate: f64) -> Vec<Sample> {
        (from..=to)
            .step_by(15)
            .map(|sec| {
                let t = sec * 1000 + jitter(sec);
                s(t, rate * t as f64 / 1000.0)
            })
            .collect()
    }

    fn resets(v: &[Sample]) -> usize {
        v.windows(2).filter(|w| w[1].v < w[0].v).count()
    }

    fn assert_sorted(v: &[Sample]) {
        assert!(
            v.windows(2).all(|w| w[0].t < w[1].t),
            "not strictly sorted: {v:?}"
        );
    }

    #[test]
    fn single_source_is_untouched() {
        let a = counter(0, 300, |_| 0, 1.0);
        assert_eq!(merge(vec![a.clone()]), a);
        assert_eq!(merge(vec![Vec::new(), a.clone(), Vec::new()]), a);
        assert!(merge(vec![]).is_empty());
    }

    #[test]
    fn replicas_with_jitter_give_one_sample_per_scrape_and_no_fake_reset() {
        // Replica B scrapes a few ms after A, and its reads land a little later, so at
        // the same scrape B's value is higher; interleaving would zig-zag.
        let a = counter(0, 600, |sec| (sec / 15 * 7) % 5, 2.0);
        let b: Vec<Sample> = counter(0, 600, |sec| (sec / 15 * 3) % 7, 2.0)
            .into_iter()
            .map(|x| s(x.t, x.v + 0.5))
            .collect();
        let mut naive: Vec<Sample> = a.iter().chain(&b).copied().collect();
        naive.sort_by_key(|x| x.t);
        assert!(
            resets(&naive) > 0,
            "the naive interleave must show the problem"
        );
        for (x, y) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let m = merge(vec![x, y]);
            assert_eq!(m.len(), a.len(), "one sample per scrape");
            assert_eq!(resets(&m), 0);
            assert_sorted(&m);
        }
    }

    #[test]
    fn a_gap_in_one_replica_is_filled_from_the_other() {
        let a: Vec<Sample> = counter(0, 600, |_| 0, 1.0)
            .into_iter()
            .filter(|x| !(200_000..=300_000).contains(&x.t))
            .collect();
        let b = counter(0, 600, |_| 4, 1.0);
        let m = merge(vec![a.clone(), b.clone()]);
        assert_eq!(m.len(), b.len(), "every scrape once: {m:?}");
        assert_sorted(&m);
        assert_eq!(resets(&m), 0);
        // The hole is filled by B's samples.
        assert!(m.iter().any(|x| x.t == 255_004));
        // And A is followed again after the hole only when B has a gap: B has none.
        assert_eq!(m.last().unwrap().t, 600_004);
    }

    #[test]
    fn handoff_overlap_is_not_doubled() {
        // Old owner until 330 s, new owner from 300 s (two overlapping scrapes).
        let old = counter(0, 330, |_| 2, 1.0);
        let new = counter(300, 600, |_| 9, 1.0);
        for sources in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let m = merge(sources);
            assert_eq!(m.len(), 41, "0..=600 every 15 s once: {m:?}");
            assert_sorted(&m);
            assert_eq!(resets(&m), 0);
            let gaps: Vec<i64> = m.windows(2).map(|w| w[1].t - w[0].t).collect();
            assert!(
                gaps.iter().all(|g| (14_000..=16_000).contains(g)),
                "{gaps:?}"
            );
        }
    }

    #[test]
    fn history_split_over_three_moves_keeps_everything() {
        // A owns the target, then B, then A again; no overlap at all.
        let a1 = counter(0, 150, |_| 0, 1.0);
        let b = counter(165, 300, |_| 1, 1.0);
        let a2 = counter(315, 450, |_| 0, 1.0);
        let a: Vec<Sample> = a1.iter().chain(&a2).copied().collect();
        let m = merge(vec![a, b]);
        assert_eq!(m.len(), 31);
        assert_sorted(&m);
        assert_eq!(resets(&m), 0);
    }

    #[test]
    fn a_real_counter_reset_survives() {
        let mut a = counter(0, 300, |_| 0, 1.0);
        let mut b = counter(0, 300, |_| 5, 1.0);
        for x in a.iter_mut().chain(b.iter_mut()) {
            if x.t >= 150_000 {
                x.v -= 150.0;
            }
        }
        let m = merge(vec![a, b]);
        assert_eq!(resets(&m), 1);
        assert_eq!(m.len(), 21);
    }

    #[test]
    fn staleness_markers_survive() {
        // Both replicas see the target vanish and write a marker; one marker remains,
        // last, so instant queries stop returning the series at once.
        let mut a = counter(0, 150, |_| 0, 1.0);
        a.push(s(165_000, stale_nan()));
        let mut b = counter(0, 150, |_| 6, 1.0);
        b.push(s(165_006, stale_nan()));
        let m = merge(vec![a, b]);
        assert_eq!(m.len(), 12);
        assert!(is_stale_nan(m.last().unwrap().v));
        assert_eq!(m.iter().filter(|x| is_stale_nan(x.v)).count(), 1);

        // A marker in the middle of the followed source (a failed scrape) stays, and
        // the series continues after it.
        let mut c = counter(0, 300, |_| 0, 1.0);
        c[5].v = stale_nan();
        let d = counter(0, 300, |_| 3, 1.0);
        let m = merge(vec![c, d]);
        assert_eq!(m.len(), 21);
        assert!(is_stale_nan(m[5].v));
        assert!(!is_stale_nan(m[6].v));

        // History split where the first owner's series ended with a marker.
        let mut old = counter(0, 150, |_| 0, 1.0);
        old.push(s(165_000, stale_nan()));
        let new = counter(600, 750, |_| 0, 1.0);
        let m = merge(vec![new, old]);
        assert_eq!(m.len(), 23);
        assert!(is_stale_nan(m[11].v));
        assert_eq!(m[12].t, 600_000);
    }

    #[test]
    fn three_replicas_and_identical_copies() {
        let a = counter(0, 300, |_| 0, 1.0);
        let m = merge(vec![a.clone(), a.clone(), a.clone()]);
        assert_eq!(m, a);
        let b = counter(0, 300, |_| 2, 1.0);
        let c = counter(0, 300, |_| 4, 1.0);
        let m = merge(vec![c, b, a]);
        assert_eq!(m.len(), 21);
        assert_sorted(&m);
    }

    #[test]
    fn late_scrapes_on_a_loaded_machine_neither_add_nor_drop_samples() {
        // Both replicas mostly on time; now and then one of them runs up to 0.8 of an
        // interval late, sometimes both at neighbouring scrapes. One sample per scrape.
        let late = |sec: i64, salt: i64| match (sec / 15 * 7 + salt) % 11 {
            0 => 12_000,
            3 => 9_000,
            5 => 7_500,
            _ => (sec + salt) % 4,
        };
        let a = counter(0, 3000, |sec| late(sec, 0), 1.0);
        let b = counter(0, 3000, |sec| late(sec, 4), 1.0);
        for sources in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let m = merge(sources);
            assert_eq!(m.len(), a.len(), "one sample per scrape");
            assert_sorted(&m);
            assert_eq!(resets(&m), 0);
        }
    }

    #[test]
    fn sparse_sources_use_the_default_spacing() {
        // One sample each: 3 ms apart is a replica, 30 s apart is not.
        let m = merge(vec![vec![s(1000, 1.0)], vec![s(1003, 1.0)]]);
        assert_eq!(m, vec![s(1000, 1.0)]);
        let m = merge(vec![vec![s(31_000, 2.0)], vec![s(1000, 1.0)]]);
        assert_eq!(m, vec![s(1000, 1.0), s(31_000, 2.0)]);
    }

    #[test]
    fn a_change_of_scrape_interval_keeps_every_scrape() {
        // The old owner scraped every 15 s, then every second from 313 s on; the new
        // owner took over at 317 s on the same phase. Every scrape once: none of the
        // 1-second ones may pass for a replica of a 15-second one.
        let mut a: Vec<Sample> = (0..=20).map(|k| s(k * 15_000, k as f64)).collect();
        a.extend((313..=320).map(|k| s(k * 1000, k as f64)));
        let b: Vec<Sample> = (317..330).map(|k| s(k * 1000, k as f64)).collect();
        let m = merge(vec![a.clone(), b.clone()]);
        let mut want = a;
        want.extend(b.into_iter().filter(|x| x.t > 320_000));
        assert_eq!(m, want);
    }
}
