//! The select's query limits: it counts samples as it decodes them and stops at the
//! limit or the deadline, never after loading everything.

use super::*;

fn opts() -> TsdbOptions {
    TsdbOptions {
        wal_flush_interval: Duration::from_secs(3600),
        maintenance_interval: Duration::from_secs(3600),
        // The tests' samples are in the epoch's first day: "now" is its end.
        clock: Clock::manual(24 * 3_600_000),
        ..TsdbOptions::default()
    }
}

/// `n` series `m{i="…", job=…}` with `per` head samples each.
fn fill(db: &Tsdb, n: usize, per: i64, job: &str) {
    let mut app = db.appender();
    for i in 0..n {
        let l = Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string()), ("job", job)]);
        for k in 0..per {
            app.append(&l, k * 15_000, k as f64).unwrap();
        }
    }
    app.commit().unwrap();
}

fn all_m() -> Vec<Matcher> {
    vec![Matcher::equal("__name__", "m")]
}

fn hints() -> SelectHints {
    SelectHints {
        start: i64::MIN,
        end: i64::MAX,
        ..SelectHints::default()
    }
}

#[test]
fn select_stops_at_the_sample_limit_before_loading_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    // More series than PARALLEL_MIN: the head snapshot runs on two threads.
    let n = PARALLEL_MIN * 2 + 100;
    fill(&db, n, 3, "a");
    let total = n * 3;

    let unlimited = SampleBudget::unlimited();
    let set = db
        .select_with_budget(&hints(), &all_m(), &unlimited)
        .unwrap();
    assert_eq!(set.series.len(), n);
    assert_eq!(unlimited.loaded(), total);

    let limit = 1000;
    let budget = SampleBudget::new(Some(limit), None);
    let err = db
        .select_with_budget(&hints(), &all_m(), &budget)
        .unwrap_err();
    assert!(err.is_too_many_samples(), "{err}");
    assert_eq!(err.0, crate::storage::TOO_MANY_SAMPLES);
    // Each of the two threads decodes at most one series past the limit.
    assert!(
        budget.loaded() <= limit + 2 * 3,
        "decoded {} of {total} samples with a limit of {limit}",
        budget.loaded()
    );

    // The limit is inclusive, through the trait as well.
    let at = |max| SelectHints {
        max_samples: Some(max),
        ..hints()
    };
    assert_eq!(db.select(&at(total), &all_m()).unwrap().series.len(), n);
    assert!(
        db.select(&at(total - 1), &all_m())
            .unwrap_err()
            .is_too_many_samples()
    );
}

#[test]
fn sealed_chunks_are_counted_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = Labels::from_pairs(&[("__name__", "long")]);
    // 5000 samples: dozens of sealed chunks (120 samples each) and an open one.
    for part in (0..5000i64).collect::<Vec<_>>().chunks(100) {
        let mut app = db.appender();
        for &k in part {
            app.append(&l, k * 15_000, k as f64).unwrap();
        }
        app.commit().unwrap();
    }
    assert!(db.stats().chunks_sealed_total >= 30);
    let ms = [Matcher::equal("__name__", "long")];
    let budget = SampleBudget::new(Some(500), None);
    let err = db.select_with_budget(&hints(), &ms, &budget).unwrap_err();
    assert!(err.is_too_many_samples(), "{err}");
    // The open chunk plus the sealed chunks up to the one that went over.
    assert!(budget.loaded() <= 500 + 2 * 120, "{}", budget.loaded());
    let budget = SampleBudget::new(Some(5000), None);
    let set = db.select_with_budget(&hints(), &ms, &budget).unwrap();
    assert_eq!(set.series[0].samples.len(), 5000);
}

/// Matchers that match the empty string do not narrow the candidates: the series they
/// reject are not counted against the limit.
#[test]
fn only_matching_series_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    fill(&db, 10, 3, "a");
    fill(&db, 1000, 3, "x");
    let ms = vec![
        Matcher::equal("__name__", "m"),
        Matcher::new(crate::model::MatchOp::NotEqual, "job", "x").unwrap(),
    ];
    let budget = SampleBudget::new(Some(30), None);
    let set = db.select_with_budget(&hints(), &ms, &budget).unwrap();
    assert_eq!((set.series.len(), budget.loaded()), (10, 30));
}

#[test]
fn the_deadline_stops_the_select_while_it_loads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    fill(&db, PARALLEL_MIN * 2, 3, "a");
    let past = SampleBudget::new(None, Some(std::time::Instant::now()));
    let err = db
        .select_with_budget(&hints(), &all_m(), &past)
        .unwrap_err();
    assert_eq!(err.timed_out_in(), Some("query execution"), "{err}");
    assert!(err.is_limit());
    // It gave up before decoding the head (the clock is read every 1024 series).
    assert_eq!(past.loaded(), 0);
    let h = SelectHints {
        deadline: Some(std::time::Instant::now()),
        ..hints()
    };
    assert!(
        db.select(&h, &all_m())
            .unwrap_err()
            .timed_out_in()
            .is_some()
    );
    // Metadata reads are not selects and have no deadline.
    assert_eq!(
        db.series(i64::MIN, i64::MAX, &all_m()).unwrap().len(),
        PARALLEL_MIN * 2
    );
}

/// An instant selector's select keeps the latest sample at or before each step, across
/// sealed chunks and the head, and counts only those.
#[test]
fn a_grid_select_loads_one_sample_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = Labels::from_pairs(&[("__name__", "long")]);
    for part in (0..5000i64).collect::<Vec<_>>().chunks(100) {
        let mut app = db.appender();
        for &k in part {
            app.append(&l, k * 15_000, k as f64).unwrap();
        }
        app.commit().unwrap();
    }
    let ms = [Matcher::equal("__name__", "long")];
    let grid = StepGrid {
        first: 7_000,
        step: 600_000,
        last: 74_990_000,
    };
    let h = SelectHints {
        grid: Some(grid),
        ..hints()
    };
    let budget = SampleBudget::unlimited();
    let got = db.select_with_budget(&h, &ms, &budget).unwrap();
    let mut want = db.select(&hints(), &ms).unwrap().series[0].samples.clone();
    grid.thin(&mut want, 0);
    assert_eq!(got.series[0].samples, want);
    assert_eq!(want.len(), 125);
    // Counted: at most one extra sample per chunk boundary.
    assert!(
        budget.loaded() < 125 + 5000 / 120 + 2,
        "{}",
        budget.loaded()
    );
}

/// Chunks that overlap in sled (an import may store them) read back sorted, one sample
/// per timestamp — the first chunk's in key order — with and without a grid.
#[test]
fn overlapping_sealed_chunks_read_sorted_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = Labels::from_pairs(&[("__name__", "o")]);
    let mut app = db.appender();
    for k in 0..200i64 {
        app.append(&l, k * 10, k as f64).unwrap();
    }
    app.commit().unwrap();
    // Sealed: 0..=1190; open: 1200..=1990. A chunk between the sealed samples, also
    // holding 500 (a sealed sample's time, another value), written beside them.
    let mut extra: Vec<i64> = (0..119).map(|k| 5 + k * 10).collect();
    extra.push(500);
    extra.sort_unstable();
    let mut bytes = chunkenc::new_chunk();
    let mut x = chunkenc::XorState::default();
    for &t in &extra {
        x.append(&mut bytes, t, t as f64 + 0.5);
    }
    let id = 1;
    let key = retention::chunk_key(0, id, 5);
    let inner = &db.inner;
    inner
        .chunks
        .insert(key, retention::chunk_value(1185, &bytes))
        .unwrap();
    let ms = [Matcher::equal("__name__", "o")];
    let got = db.select(&hints(), &ms).unwrap().series[0].samples.clone();
    let mut want: Vec<(i64, u64)> = (0..200).map(|k| (k * 10, (k as f64).to_bits())).collect();
    want.extend((0..119).map(|k| (5 + k * 10, ((5 + k * 10) as f64 + 0.5).to_bits())));
    want.sort_unstable();
    assert_eq!(
        got.iter().map(|s| (s.t, s.v.to_bits())).collect::<Vec<_>>(),
        want
    );
    // An instant selector's grid over them.
    let grid = StepGrid {
        first: 2,
        step: 97,
        last: 1900,
    };
    let h = SelectHints {
        grid: Some(grid),
        ..hints()
    };
    let thinned = db.select(&h, &ms).unwrap().series[0].samples.clone();
    let mut w = got.clone();
    grid.thin(&mut w, 0);
    assert_eq!(thinned, w);
}
