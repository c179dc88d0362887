//! Tests of the TSDB as a whole: appends, queries, WAL replay, retention, concurrency.

use super::*;
use crate::model::{MatchOp, stale_nan};

pub(super) fn opts() -> TsdbOptions {
    TsdbOptions {
        // Keep the background thread out of the way; tests flush explicitly.
        wal_flush_interval: Duration::from_secs(3600),
        maintenance_interval: Duration::from_secs(3600),
        // The tests' samples are in the first hours after the epoch: "now" is a day in.
        clock: Clock::manual(DAY),
        ..TsdbOptions::default()
    }
}

pub(super) const DAY: i64 = 24 * 3_600_000;

pub(super) fn lbl(name: &str, extra: &[(&str, &str)]) -> Labels {
    let mut p = vec![("__name__", name)];
    p.extend_from_slice(extra);
    Labels::from_pairs(&p)
}

pub(super) fn eq(n: &str, v: &str) -> Matcher {
    Matcher::equal(n, v)
}

pub(super) fn hints(start: i64, end: i64) -> SelectHints {
    SelectHints {
        start,
        end,
        ..SelectHints::default()
    }
}

fn ts(set: &SeriesSet) -> Vec<Vec<(i64, f64)>> {
    set.series
        .iter()
        .map(|s| s.samples.iter().map(|x| (x.t, x.v)).collect())
        .collect()
}

pub(super) fn append_all(
    db: &Tsdb,
    labels: &Labels,
    samples: impl IntoIterator<Item = (i64, f64)>,
) {
    let mut app = db.appender();
    for (t, v) in samples {
        app.append(labels, t, v).unwrap();
    }
    app.commit().unwrap();
}

pub(super) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn append_and_select_sorted_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let mut app = db.appender();
    let b = lbl("up", &[("job", "b")]);
    let a = lbl("up", &[("job", "a")]);
    let rb = app.append(&b, 1000, 1.0).unwrap();
    let ra = app.append(&a, 1000, 2.0).unwrap();
    app.append_ref(rb, 2000, 3.0).unwrap();
    app.append_ref(ra, 3000, stale_nan()).unwrap();
    let st = app.commit().unwrap();
    assert_eq!(
        st,
        CommitStats {
            samples: 4,
            series_created: 2
        }
    );

    let set = db
        .select(&hints(1000, 2000), &[eq("__name__", "up")])
        .unwrap();
    assert_eq!(set.series.len(), 2);
    assert_eq!(set.series[0].labels, a);
    assert_eq!(ts(&set)[1], vec![(1000, 1.0), (2000, 3.0)]);
    let set = db
        .select(&hints(2500, 5000), &[eq("__name__", "up")])
        .unwrap();
    assert_eq!(
        set.series.len(),
        1,
        "series without samples in range are left out"
    );
    assert!(crate::model::is_stale_nan(set.series[0].samples[0].v));

    // Same labels again → same ref, nothing created.
    let mut app = db.appender();
    assert_eq!(app.append(&a, 4000, 1.0).unwrap(), ra);
    assert_eq!(app.commit().unwrap().series_created, 0);
    assert_eq!(db.stats().samples_appended_total, 5);
    assert_eq!(db.stats().head_series, 2);

    let mut app = db.appender();
    assert_eq!(
        app.append_ref(999, 1, 1.0).unwrap_err(),
        AppendError::UnknownRef(999)
    );
    assert!(matches!(
        app.append(&Labels::empty(), 1, 1.0),
        Err(AppendError::InvalidLabels(_))
    ));
    db.close().unwrap();
    let mut app = db.appender();
    assert!(matches!(
        app.append(&a, 9000, 1.0),
        Err(AppendError::Storage(_))
    ));
}

#[test]
fn ordering_rules_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let s = lbl("m", &[]);
    let mut app = db.appender();
    let r = app.append(&s, 10_000, 1.0).unwrap();
    assert_eq!(
        app.append_ref(r, 9_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    assert_eq!(
        app.append_ref(r, 10_000, 2.0).unwrap_err(),
        AppendError::DuplicateTimestamp
    );
    app.append_ref(r, 10_000, 1.0).unwrap(); // exact duplicate: no-op
    app.commit().unwrap();

    let mut app = db.appender();
    assert_eq!(
        app.append_ref(r, 5_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    assert_eq!(
        app.append_ref(r, 10_000, stale_nan()).unwrap_err(),
        AppendError::DuplicateTimestamp
    );
    app.append_ref(r, 10_000, 1.0).unwrap();
    app.append_ref(r, 20_000, stale_nan()).unwrap();
    app.append_ref(r, 20_000, stale_nan()).unwrap();
    assert_eq!(app.commit().unwrap().samples, 1);

    // Three samples of one series in one batch: each is checked against the last.
    let mut app = db.appender();
    app.append_ref(r, 30_000, 3.0).unwrap();
    app.append_ref(r, 40_000, 4.0).unwrap();
    assert_eq!(
        app.append_ref(r, 35_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    assert_eq!(
        app.append_ref(r, 40_000, 5.0).unwrap_err(),
        AppendError::DuplicateTimestamp
    );
    app.append_ref(r, 50_000, 5.0).unwrap();
    assert_eq!(
        app.append_ref(r, 45_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    assert_eq!(app.commit().unwrap().samples, 3);

    // Far older than the head's max time minus half a block: out of bounds.
    let mut app = db.appender();
    let other = lbl("other", &[]);
    assert_eq!(
        app.append(&other, 20_000 - 3_600_001, 1.0).unwrap_err(),
        AppendError::OutOfBounds
    );
    app.rollback();

    let st = db.stats();
    assert_eq!(st.out_of_order_samples_total, 4);
    assert_eq!(st.duplicate_samples_total, 3);
    assert_eq!(st.out_of_bounds_samples_total, 1);
    let set = db
        .select(&hints(0, 100_000), &[eq("__name__", "m")])
        .unwrap();
    assert_eq!(set.series[0].samples.len(), 5);
}

#[test]
fn seals_chunks_and_queries_across_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let s = lbl("c", &[("i", "1")]);
    // 2 h blocks; 15 s steps; 1000 samples cross chunk and block boundaries.
    let samples: Vec<(i64, f64)> = (0..1000).map(|i| (i * 15_000, (i * 3) as f64)).collect();
    for batch in samples.chunks(7) {
        append_all(&db, &s, batch.iter().copied());
    }
    let st = db.stats();
    assert!(st.chunks_sealed_total >= 8, "{st:?}");
    assert_eq!(st.head_chunks, 1);
    let all = db
        .select(&hints(i64::MIN, i64::MAX), &[eq("i", "1")])
        .unwrap();
    assert_eq!(ts(&all)[0], samples);
    // A window inside a sealed chunk, one across a block boundary, one into the head.
    for (lo, hi) in [
        (30_000, 45_000),
        (7_100_000, 7_300_000),
        (14_000_000, 15_000_000),
        (0, 0),
    ] {
        let want: Vec<_> = samples
            .iter()
            .copied()
            .filter(|&(t, _)| t >= lo && t <= hi)
            .collect();
        let got = db.select(&hints(lo, hi), &[eq("i", "1")]).unwrap();
        assert_eq!(
            ts(&got).first().cloned().unwrap_or_default(),
            want,
            "[{lo}, {hi}]"
        );
    }
}

#[test]
fn wal_replay_after_reopen_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let s1 = lbl("a", &[("x", "1")]);
    let s2 = lbl("a", &[("x", "2")]);
    let want: Vec<(i64, f64)> = (0..300)
        .map(|i| (1_700_000_000_000 + i * 5000, (i % 17) as f64 * 1.5))
        .collect();
    let opts = || TsdbOptions {
        clock: Clock::manual(1_800_000_000_000),
        retention: Duration::from_secs(10 * 365 * 24 * 3600),
        ..opts()
    };
    {
        let db = Tsdb::open(dir.path(), opts()).unwrap();
        for w in want.chunks(10) {
            let mut app = db.appender();
            for &(t, v) in w {
                app.append(&s1, t, v).unwrap();
                app.append(&s2, t, -v).unwrap();
            }
            app.commit().unwrap();
        }
        db.checkpoint().unwrap(); // new segment mid-stream: replay must cross it
        append_all(&db, &s1, [(1_800_000_000_000, 7.0)]);
        db.flush().unwrap();
        drop(db); // no close
    }
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let set = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "a")])
        .unwrap();
    let mut w1 = want.clone();
    w1.push((1_800_000_000_000, 7.0));
    assert_eq!(ts(&set)[0], w1);
    assert_eq!(
        ts(&set)[1],
        want.iter().map(|&(t, v)| (t, -v)).collect::<Vec<_>>()
    );
    assert!(db.stats().wal_replayed_samples > 0);
    // Ordering survives the restart, and ids are stable.
    let mut app = db.appender();
    assert_eq!(
        app.append(&s1, 1_800_000_000_000 - 1, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    app.append(&s1, 1_800_000_000_000, 7.0).unwrap();
    assert_eq!(app.commit().unwrap().series_created, 0);
}

#[test]
fn crash_image_holds_everything_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let s = lbl("k", &[]);
    let samples: Vec<(i64, f64)> = (0..250).map(|i| (i * 1000, i as f64)).collect();
    for w in samples.chunks(25) {
        append_all(&db, &s, w.iter().copied());
    }
    db.flush().unwrap();
    // What a kill -9 right now would leave on disk: the files as they are.
    copy_dir(dir.path(), &crash.path().join("db"));
    append_all(&db, &s, [(1_000_000, 1.0)]); // never flushed into the image
    let re = Tsdb::open(&crash.path().join("db"), opts()).unwrap();
    let set = re
        .select(&hints(0, i64::MAX), &[eq("__name__", "k")])
        .unwrap();
    assert_eq!(ts(&set)[0], samples);
    re.close().unwrap();
    db.close().unwrap();
}

#[test]
fn wal_is_truncated_once_chunks_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let series: Vec<Labels> = (0..50)
        .map(|i| lbl("w", &[("i", &i.to_string())]))
        .collect();
    for step in 0..130i64 {
        let mut app = db.appender();
        for s in &series {
            app.append(s, step * 10_000, step as f64).unwrap();
        }
        app.commit().unwrap();
        if step == 60 {
            db.checkpoint().unwrap();
        }
    }
    db.flush().unwrap();
    let segments = || std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    let before = segments();
    assert!(before >= 2, "{before} segment files");
    // Chunks were cut at 120 samples; segment 0 holds only sealed samples now.
    db.checkpoint().unwrap();
    let st = db.stats();
    assert!(st.wal_segments_truncated_total >= 1, "{st:?}");
    assert!(segments() < before);
    assert!(!dir.path().join("wal/00000000").exists());
    drop(db);
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let set = db.select(&hints(0, i64::MAX), &[eq("i", "7")]).unwrap();
    assert_eq!(
        ts(&set)[0],
        (0..130).map(|s| (s * 10_000, s as f64)).collect::<Vec<_>>()
    );
}

#[test]
fn retention_drops_old_blocks_and_stale_heads_are_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000i64;
    let clock = Clock::manual(0);
    let o = TsdbOptions {
        retention: Duration::from_secs(6 * 3600),
        clock: clock.clone(),
        ..opts()
    };
    let db = Tsdb::open(dir.path(), o).unwrap();
    let old = lbl("old", &[]);
    let live = lbl("live", &[]);
    for t in (0..20).map(|i| i * h / 2) {
        clock.set(t);
        if t == h / 2 {
            append_all(&db, &old, [(t, 1.0)]);
        }
        append_all(&db, &live, [(t, 2.0)]);
    }
    db.maintain().unwrap();
    let st = db.stats();
    assert!(st.retention_blocks_dropped_total >= 1, "{st:?}");
    // The idle series' head chunk was sealed (its block can't grow) and then dropped.
    assert_eq!(st.head_chunks, 1);
    assert!(
        db.select(&hints(0, i64::MAX), &[eq("__name__", "old")])
            .unwrap()
            .series
            .is_empty()
    );
    let live_set = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "live")])
        .unwrap();
    let first = live_set.series[0].samples[0].t;
    assert!(
        first >= 2 * h && first <= 4 * h,
        "first kept sample {first}"
    );
    assert!(
        db.series(0, h, &[eq("__name__", "old")])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn series_and_label_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    append_all(
        &db,
        &lbl("up", &[("job", "a"), ("instance", "1")]),
        [(1000, 1.0)],
    );
    append_all(&db, &lbl("up", &[("job", "b")]), [(5000, 1.0)]);
    append_all(&db, &lbl("down", &[("job", "a")]), [(1000, 1.0)]);
    assert_eq!(
        db.label_names(0, 10_000, &[]).unwrap(),
        vec!["__name__", "instance", "job"]
    );
    assert_eq!(
        db.label_values("job", 0, 10_000, &[]).unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        db.label_values("job", 0, 10_000, &[eq("__name__", "up")])
            .unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        db.label_values("job", 0, 2000, &[eq("__name__", "up")])
            .unwrap(),
        vec!["a"]
    );
    assert_eq!(
        db.label_names(4000, 6000, &[eq("__name__", "up")]).unwrap(),
        vec!["__name__", "job"]
    );
    let no_instance = Matcher::new(MatchOp::Equal, "instance", "").unwrap();
    let s = db.series(0, 10_000, &[no_instance]).unwrap();
    assert_eq!(
        s,
        vec![lbl("down", &[("job", "a")]), lbl("up", &[("job", "b")])]
    );
    let re = Matcher::new(MatchOp::Regex, "__name__", "u.|d.*").unwrap();
    let nre = Matcher::new(MatchOp::NotRegex, "job", "b").unwrap();
    assert_eq!(db.series(0, 10_000, &[re, nre]).unwrap().len(), 2);
}

#[test]
fn concurrent_appenders_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(
        dir.path(),
        TsdbOptions {
            wal_flush_interval: Duration::from_millis(20),
            ..opts()
        },
    )
    .unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let series: Vec<Labels> = (0..20)
                    .map(|i| lbl("cc", &[("w", &w.to_string()), ("i", &i.to_string())]))
                    .collect();
                for step in 0..300i64 {
                    let mut app = db.appender();
                    for s in &series {
                        app.append(s, step * 1000, (step * w) as f64).unwrap();
                    }
                    app.commit().unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let db = db.clone();
        std::thread::spawn(move || {
            for _ in 0..50 {
                let set = db
                    .select(&hints(0, i64::MAX), &[eq("__name__", "cc")])
                    .unwrap();
                for s in &set.series {
                    assert!(s.samples.windows(2).all(|w| w[0].t < w[1].t));
                }
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    let set = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "cc")])
        .unwrap();
    assert_eq!(set.series.len(), 80);
    assert!(set.series.iter().all(|s| s.samples.len() == 300));
    assert_eq!(db.stats().samples_appended_total, 80 * 300);
    db.close().unwrap();
    drop(db); // sled's file lock goes with the last handle
    let db2 = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(
        db2.select(&hints(0, i64::MAX), &[eq("w", "3")])
            .unwrap()
            .series
            .len(),
        20
    );
}

#[test]
fn repeated_reopens_keep_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = lbl("r", &[("k", "v")]);
    let mut want = Vec::new();
    let mut t = 0i64;
    for round in 0..4 {
        let db = Tsdb::open(dir.path(), opts()).unwrap();
        // 90 samples a round: chunks are cut mid-round, some during replay.
        for _ in 0..9 {
            let batch: Vec<(i64, f64)> = (0..10)
                .map(|_| {
                    t += 15_000;
                    (t, (t / 1000 + round) as f64)
                })
                .collect();
            want.extend(batch.iter().copied());
            append_all(&db, &s, batch);
        }
        if round == 2 {
            db.checkpoint().unwrap();
        }
        db.flush().unwrap();
        let set = db
            .select(&hints(i64::MIN, i64::MAX), &[eq("k", "v")])
            .unwrap();
        assert_eq!(ts(&set)[0], want, "round {round} before reopen");
    }
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let set = db
        .select(&hints(i64::MIN, i64::MAX), &[eq("k", "v")])
        .unwrap();
    assert_eq!(ts(&set)[0], want);
    assert_eq!(db.stats().head_series, 1);
}

#[test]
fn large_selects_split_over_threads_keep_order_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let n = super::PARALLEL_MIN * 2 + 7;
    let mut refs = Vec::with_capacity(n);
    let mut app = db.appender();
    for i in 0..n {
        let (a, b) = (format!("{}", i % 97), format!("{i}"));
        let l = lbl("big", &[("a", &a), ("b", &b)]);
        refs.push(app.append(&l, 1_000, i as f64).unwrap());
    }
    app.commit().unwrap();
    let mut app = db.appender();
    for (i, r) in refs.iter().enumerate() {
        app.append_ref(*r, 2_000, i as f64 + 0.5).unwrap();
    }
    app.commit().unwrap();
    let set = db
        .select(&hints(0, 10_000), &[eq("__name__", "big")])
        .unwrap();
    assert_eq!(set.series.len(), n);
    assert!(set.series.windows(2).all(|w| w[0].labels < w[1].labels));
    for s in &set.series {
        let i: f64 = s.labels.get("b").unwrap().parse().unwrap();
        assert_eq!(s.samples.len(), 2);
        assert_eq!((s.samples[0].v, s.samples[1].v), (i, i + 0.5));
    }
    assert_eq!(
        db.series(0, 10_000, &[eq("a", "3")]).unwrap().len(),
        n / 97 + 1
    );
}

#[test]
fn a_torn_wal_tail_loses_only_the_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("torn", &[]);
    append_all(&db, &l, (0..5).map(|i| (i * 1000, i as f64)));
    db.flush().unwrap();
    append_all(&db, &l, (5..10).map(|i| (i * 1000, i as f64)));
    db.close().unwrap();
    drop(db);
    // A crash in the middle of the last write: its frame is cut short.
    let seg = dir.path().join("wal/00000000");
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(db.stats().wal_corrupt_values_total, 1);
    let got = |db: &Tsdb| {
        ts(&db
            .select(&hints(0, i64::MAX), &[eq("__name__", "torn")])
            .unwrap())[0]
            .clone()
    };
    assert_eq!(
        got(&db),
        (0..5).map(|i| (i * 1000, i as f64)).collect::<Vec<_>>()
    );
    // Writing goes on in a new segment, and survives the next restart.
    append_all(&db, &l, [(20_000, 20.0)]);
    db.close().unwrap();
    drop(db);
    assert!(dir.path().join("wal/00000001").exists());
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(got(&db).last(), Some(&(20_000, 20.0)));
    assert_eq!(got(&db).len(), 6);
}

#[test]
fn a_wal_kept_in_sled_by_older_versions_is_replayed_then_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("old", &[]);
    append_all(&db, &l, (0..130).map(|i| (i * 1000, i as f64)));
    db.close().unwrap();
    drop(db);
    // Rewrite the data dir as older versions left it: WAL values in the `wal` tree.
    let files = segments::SegmentFiles::open(&dir.path().join("wal")).unwrap();
    let mut values = Vec::new();
    for seg in files.list().unwrap() {
        files.read(seg, |v| values.push((seg, v.to_vec()))).unwrap();
    }
    assert!(!values.is_empty());
    std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
    {
        let sled = open_sled(dir.path(), 1 << 20).unwrap();
        let tree = sled.open_tree("wal").unwrap();
        for (i, (seg, v)) in values.into_iter().enumerate() {
            tree.insert(wal_key(seg, i as u32), v).unwrap();
        }
        sled.flush().unwrap();
    }
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let set = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "old")])
        .unwrap();
    assert_eq!(
        ts(&set)[0],
        (0..130).map(|i| (i * 1000, i as f64)).collect::<Vec<_>>()
    );
    // New samples go to files; once every open chunk is past the old segments they go.
    append_all(&db, &l, (130..250).map(|i| (i * 1000, i as f64)));
    db.checkpoint().unwrap();
    assert_eq!(db.inner.legacy_wal.len(), 0);
    assert!(db.stats().wal_segments_truncated_total >= 1);
    let set = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "old")])
        .unwrap();
    assert_eq!(ts(&set)[0].len(), 250);
}

/// Year 2100, in ms: what a target with a broken clock (or a hostile one) exposes.
const YEAR_2100: i64 = 4_102_444_800_000;

#[test]
fn a_far_future_sample_is_rejected_alone_and_ages_nothing_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let good = lbl("good", &[]);
    let evil = lbl("evil", &[]);
    append_all(
        &db,
        &good,
        (0..60).map(|i| (DAY - 600_000 + i * 10_000, i as f64)),
    );
    let mut app = db.appender();
    assert_eq!(
        app.append(&evil, YEAR_2100, 1.0),
        Err(AppendError::TooFarInFuture)
    );
    // Ten minutes ahead is still accepted (clock skew between target and node).
    app.append(&evil, DAY + 599_000, 1.0).unwrap();
    app.append(&good, DAY, 60.0).unwrap();
    app.commit().unwrap();
    assert_eq!(db.stats().too_far_in_future_samples_total, 1);
    // Every other series goes on being accepted, and maintenance keeps everything.
    append_all(&db, &good, [(DAY + 10_000, 61.0)]);
    db.maintain().unwrap();
    db.checkpoint().unwrap();
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "good")])
        .unwrap();
    assert_eq!(ts(&got)[0].len(), 62);
    db.close().unwrap();
    drop(db);
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    append_all(&db, &good, [(DAY + 20_000, 62.0)]);
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "good")])
        .unwrap();
    assert_eq!(ts(&got)[0].len(), 63);
}

#[test]
fn a_data_dir_poisoned_by_a_future_sample_recovers_on_open() {
    // Written as before the future bound: a year-2100 sample in the WAL and in a sealed
    // chunk, which moved the head's max time to 2100.
    let dir = tempfile::tempdir().unwrap();
    let unbounded = TsdbOptions {
        max_future: Duration::from_secs(200 * 365 * 24 * 3600),
        ..opts()
    };
    let db = Tsdb::open(dir.path(), unbounded.clone()).unwrap();
    let good = lbl("good", &[]);
    let evil = lbl("evil", &[]);
    append_all(&db, &good, [(DAY - 10_000, 1.0)]);
    append_all(&db, &evil, (0..121).map(|i| (YEAR_2100 + i * 1000, 1.0)));
    let mut app = db.appender();
    assert_eq!(
        app.append(&good, DAY, 2.0),
        Err(AppendError::OutOfBounds),
        "the old behaviour this test starts from"
    );
    app.rollback();
    db.close().unwrap();
    drop(db);
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    append_all(&db, &good, [(DAY, 2.0)]);
    db.maintain().unwrap();
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "good")])
        .unwrap();
    assert_eq!(ts(&got)[0], vec![(DAY - 10_000, 1.0), (DAY, 2.0)]);
}

#[test]
fn retention_follows_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let h = 3_600_000i64;
    let clock = Clock::manual(3 * h);
    let o = TsdbOptions {
        retention: Duration::from_secs(6 * 3600),
        clock: clock.clone(),
        ..opts()
    };
    let db = Tsdb::open(dir.path(), o).unwrap();
    let s = lbl("s", &[]);
    append_all(&db, &s, (0..6).map(|i| (i * h / 2, i as f64)));
    db.maintain().unwrap();
    assert_eq!(db.stats().retention_blocks_dropped_total, 0);
    let n = |db: &Tsdb| {
        db.select(&hints(0, i64::MAX), &[eq("__name__", "s")])
            .unwrap()
            .series
            .first()
            .map_or(0, |x| x.samples.len())
    };
    assert_eq!(n(&db), 6);
    // Nothing newer arrives; the clock alone moves past retention.
    clock.set(20 * h);
    db.maintain().unwrap();
    assert_eq!(n(&db), 0);
}

#[test]
fn a_panic_while_a_lock_is_held_poisons_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("p", &[]);
    append_all(&db, &l, [(1000, 1.0)]);
    for which in 0..3 {
        let inner = db.inner.clone();
        let res = std::thread::spawn(move || {
            let _guards = match which {
                0 => (Some(inner.head.write()), None, None),
                1 => (None, Some(inner.wal.lock()), None),
                _ => (None, None, Some(inner.pending_chunks.lock())),
            };
            panic!("a bug while holding lock {which}");
        })
        .join();
        assert!(res.is_err());
    }
    append_all(&db, &l, [(2000, 2.0)]);
    db.flush().unwrap();
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "p")])
        .unwrap();
    assert_eq!(ts(&got)[0], vec![(1000, 1.0), (2000, 2.0)]);
    assert!(db.writable().is_ok());
}

#[test]
fn corrupt_records_are_skipped_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let a = lbl("a", &[]);
    let b = lbl("b", &[]);
    // Two series with a sealed chunk each (120 samples) and open heads.
    for s in [&a, &b] {
        append_all(&db, s, (0..130).map(|i| (i * 1000, i as f64)));
    }
    db.flush().unwrap();
    // A bit flips in a's sealed chunk.
    let key = db.inner.chunks.iter().keys().next().unwrap().unwrap();
    let mut v = db.inner.chunks.get(&key).unwrap().unwrap().to_vec();
    let n = v.len();
    v[n - 5] ^= 0x10;
    db.inner.chunks.insert(&key, v).unwrap();
    let got = db.select(&hints(0, i64::MAX), &[]).unwrap();
    let lens: Vec<usize> = got.series.iter().map(|s| s.samples.len()).collect();
    assert_eq!(lens, vec![10, 130], "the corrupt chunk alone is skipped");
    assert_eq!(db.stats().corrupt_chunks_skipped_total, 1);
    // A per-series chunk record rots too; the node still opens.
    let skey = db.inner.sealed.iter().keys().nth(1).unwrap().unwrap();
    db.inner.sealed.insert(&skey, &[1u8, 2, 3][..]).unwrap();
    db.close().unwrap();
    drop(db);
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(db.stats().corrupt_records_skipped_total, 1);
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "b")])
        .unwrap();
    assert_eq!(ts(&got)[0].len(), 130);
}

#[test]
fn a_corrupt_wal_frame_loses_the_rest_of_its_segment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("w", &[]);
    append_all(&db, &l, (0..3).map(|i| (i * 1000, i as f64)));
    db.flush().unwrap();
    append_all(&db, &l, (3..6).map(|i| (i * 1000, i as f64)));
    db.flush().unwrap();
    db.checkpoint().unwrap(); // a new segment
    append_all(&db, &l, (6..9).map(|i| (i * 1000, i as f64)));
    db.close().unwrap();
    drop(db);
    // Flip a byte in the first segment's second frame.
    let seg = dir.path().join("wal/00000000");
    let mut bytes = std::fs::read(&seg).unwrap();
    let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    bytes[8 + first_len + 10] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert!(db.stats().wal_corrupt_values_total >= 1);
    let got = db
        .select(&hints(0, i64::MAX), &[eq("__name__", "w")])
        .unwrap();
    let times: Vec<i64> = ts(&got)[0].iter().map(|s| s.0).collect();
    // The first frame and the later segment survive.
    assert_eq!(times, vec![0, 1000, 2000, 6000, 7000, 8000]);
}
