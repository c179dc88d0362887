//! Tests of historical import and export: round trips, overlap rules, durability, the
//! head's ordering rules around imported data, block boundaries, retention, the read
//! path over overlapping chunks.

use super::import::encode_chunks;
use super::tests::{DAY, append_all, copy_dir, eq, hints, lbl, opts};
use super::*;
use crate::model::{MatchOp, stale_nan};
use crate::storage::StepGrid;

const H: i64 = 3_600_000;

/// Every series with its raw samples (time, value bits), sorted by labels.
fn all(db: &Tsdb) -> Vec<(Labels, Vec<(i64, u64)>)> {
    let m = Matcher::new(MatchOp::Regex, "__name__", ".+").unwrap();
    db.select(&hints(i64::MIN, i64::MAX), &[m])
        .unwrap()
        .series
        .into_iter()
        .map(|s| {
            let raw = s.samples.iter().map(|x| (x.t, x.v.to_bits())).collect();
            (s.labels, raw)
        })
        .collect()
}

/// The raw samples of the series with exactly these labels, within `[start, end]`.
fn raw_in(db: &Tsdb, l: &Labels, start: i64, end: i64) -> Vec<(i64, u64)> {
    let ms: Vec<Matcher> = l.iter().map(|x| eq(&x.name, &x.value)).collect();
    let set = db.select(&hints(start, end), &ms).unwrap();
    set.series
        .iter()
        .filter(|s| &s.labels == l)
        .flat_map(|s| s.samples.iter().map(|x| (x.t, x.v.to_bits())))
        .collect()
}

fn raw(db: &Tsdb, l: &Labels) -> Vec<(i64, u64)> {
    raw_in(db, l, i64::MIN, i64::MAX)
}

fn bits(samples: &[Sample]) -> Vec<(i64, u64)> {
    samples.iter().map(|s| (s.t, s.v.to_bits())).collect()
}

fn sample_at(t: i64, v: f64) -> Sample {
    Sample { t, v }
}

/// Samples at `from, from + step, …` (below `to`) with values `f(t)`.
fn every(from: i64, to: i64, step: i64, f: impl Fn(i64) -> f64) -> Vec<Sample> {
    (from..to)
        .step_by(step as usize)
        .map(|t| sample_at(t, f(t)))
        .collect()
}

fn series(l: &Labels, samples: &[Sample]) -> ImportSeries {
    ImportSeries {
        labels: l.clone(),
        chunks: encode_chunks(samples, 2 * H),
    }
}

fn id_of(db: &Tsdb, l: &Labels) -> u64 {
    let inner = &db.inner;
    let head = inner.head.read();
    head.ids_for_hash(l.stable_hash())
        .find(|&id| inner.index.has_labels(id, l).unwrap())
        .expect("series exists")
}

/// Seals the series' open chunk into memory only, as a failed sled write leaves it.
fn leave_pending(db: &Tsdb, l: &Labels) {
    let id = id_of(db, l);
    let inner = &db.inner;
    let c = inner.head.write().get_mut(id).unwrap().seal(id);
    inner.pending_chunks.lock().entry(id).or_default().push(c);
    inner.has_pending.store(true, Relaxed);
}

/// Every batch of a whole export with `max_bytes`.
fn export_all(db: &Tsdb, max_bytes: usize) -> Vec<ExportBatch> {
    let mut out: Vec<ExportBatch> = Vec::new();
    loop {
        let after = out.last().and_then(|b| b.cursor);
        let b = db.export_batch(after.as_ref(), max_bytes).unwrap();
        let done = b.done;
        out.push(b);
        if done {
            return out;
        }
        assert!(out.len() < 100_000, "export does not end");
    }
}

/// `(labels, min_t, max_t, bytes)` of every chunk of the batches, sorted (a batch
/// groups its chunks per series; the order across batches is by block first).
fn flat(batches: &[ExportBatch]) -> Vec<(Labels, i64, i64, Vec<u8>)> {
    let mut v = Vec::new();
    for b in batches {
        for s in &b.series {
            assert!(s.chunks.windows(2).all(|w| w[0].max_t < w[1].min_t));
            for c in &s.chunks {
                v.push((s.labels.clone(), c.min_t, c.max_t, c.bytes.clone()));
            }
        }
    }
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v
}

/// A source TSDB: 30 series scraped every 15 s for 3 h (sealed chunks over two
/// blocks), varied values (stale markers, NaN, -0), then sealed; two more scrapes after
/// the seal (open chunks), one series' open chunk left pending.
fn source(dir: &Path) -> (Tsdb, u64) {
    let db = Tsdb::open(dir, opts()).unwrap();
    let ls: Vec<Labels> = (0..30)
        .map(|i| lbl("m", &[("i", &i.to_string())]))
        .collect();
    let value = |i: usize, k: i64| match (i + k as usize) % 50 {
        0 => stale_nan(),
        1 => f64::NAN,
        2 => -0.0,
        _ => k as f64 * 1.5 + i as f64,
    };
    let mut n = 0;
    for k in 0..722i64 {
        let mut app = db.appender();
        for (i, l) in ls.iter().enumerate() {
            // Series start at different scrapes: not every series is in every block.
            if k >= (i as i64) * 10 {
                app.append(l, 1000 + k * 15_000, value(i, k)).unwrap();
                n += 1;
            }
        }
        app.commit().unwrap();
        if k == 719 {
            db.seal_head().unwrap();
        }
    }
    leave_pending(&db, &ls[3]);
    (db, n)
}

#[test]
fn export_then_import_gives_an_equal_tsdb() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (src, n) = source(d1.path());
    assert_eq!(src.stats().chunks_pending_write, 1);
    let want = all(&src);
    assert_eq!(want.len(), 30);
    assert_eq!(want.iter().map(|s| s.1.len() as u64).sum::<u64>(), n);

    let totals = src.export_totals(None).unwrap();
    assert_eq!(totals.series, 30);
    let dst = Tsdb::open(d2.path(), opts()).unwrap();
    let batches = export_all(&src, 4096);
    assert!(batches.len() > 5, "{} batches", batches.len());
    let (mut chunks, mut bytes) = (0, 0);
    for b in &batches {
        chunks += b.chunks;
        bytes += b.bytes;
        assert!(b.bytes <= 4096 || b.chunks == 1);
        dst.import(b.series.clone(), ImportMode::Replica).unwrap();
    }
    assert_eq!((chunks, bytes), (totals.chunks, totals.bytes));
    assert_eq!(all(&dst), want);
    let st = dst.stats();
    assert_eq!(st.import_samples_stored_total, n);
    assert_eq!(st.series_created_total, 30);
    // Every chunk arrived whole and within a block: stored as it came.
    assert_eq!(st.import_chunks_total, totals.chunks);
}

#[test]
fn export_resumes_from_any_cursor_and_covers_every_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let (src, n) = source(dir.path());
    let whole = export_all(&src, usize::MAX);
    assert_eq!(whole.len(), 1);
    let everything = flat(&whole);
    // Each chunk once (labels and min time name it), and all samples in them.
    let mut keys: Vec<(Labels, i64)> = everything.iter().map(|c| (c.0.clone(), c.1)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), everything.len());
    let mut decoded = 0u64;
    for c in &everything {
        let mut s = Vec::new();
        chunkenc::decode_range(&c.3, i64::MIN, i64::MAX, &mut s).unwrap();
        assert_eq!((s[0].t, s[s.len() - 1].t), (c.1, c.2));
        decoded += s.len() as u64;
    }
    assert_eq!(decoded, n);
    for max_bytes in [1, 100, 777, 5000] {
        let batches = export_all(&src, max_bytes);
        assert_eq!(flat(&batches), everything, "max_bytes {max_bytes}");
        // Resuming at any batch's cursor gives the rest.
        for (i, b) in batches.iter().enumerate().step_by(7) {
            let rest = {
                let mut out = vec![src.export_batch(b.cursor.as_ref(), usize::MAX).unwrap()];
                out[0].done = true;
                flat(&out)
            };
            assert_eq!(rest, flat(&batches[i + 1..]), "after batch {i}");
        }
    }
    // A series comes once per batch.
    for b in export_all(&src, 1 << 16) {
        let mut ls: Vec<&Labels> = b.series.iter().map(|s| &s.labels).collect();
        let len = ls.len();
        ls.sort();
        ls.dedup();
        assert_eq!(ls.len(), len);
    }
}

#[test]
fn older_chunks_import_under_newer_head_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("m", &[]);
    // The node's own samples: from 10 h on, one sealed chunk and an open one.
    let own = every(10 * H, 10 * H + 45 * 60_000, 15_000, |t| t as f64);
    append_all(&db, &l, own.iter().map(|s| (s.t, s.v)));
    let old = every(6 * H, 10 * H - 60_000, 15_000, |t| -(t as f64));
    let st = db
        .import(vec![series(&l, &old)], ImportMode::Replica)
        .unwrap();
    assert_eq!(st.stored, old.len() as u64);
    assert_eq!((st.duplicate, st.conflicting, st.replica), (0, 0, 0));
    assert_eq!(st.chunks_reencoded, 0, "{st:?}");
    assert_eq!(st.chunks_as_is, encode_chunks(&old, 2 * H).len() as u64);
    let mut want = bits(&old);
    want.extend(bits(&own));
    assert_eq!(raw(&db, &l), want);
    // Each range alone.
    assert_eq!(
        raw_in(&db, &l, 7 * H, 8 * H),
        bits(&every(7 * H, 8 * H + 1, 15_000, |t| -(t as f64)))
    );
    assert_eq!(raw_in(&db, &l, 10 * H, 11 * H), bits(&own));
    // The head is as it was: appends older than its last sample are out of order,
    // newer ones go on.
    let last = own.last().unwrap().t;
    let mut app = db.appender();
    assert_eq!(
        app.append(&l, last - 1, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    app.append(&l, last + 15_000, 1.0).unwrap();
    app.commit().unwrap();
    assert_eq!(raw(&db, &l).len(), want.len() + 1);
}

#[test]
fn overlapping_samples_dedup_when_identical_and_keep_the_held_one_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("m", &[]);
    // Held: every 10 ms from 0 to 1990 (a sealed chunk of 120, an open one of 80).
    append_all(&db, &l, (0..200).map(|k| (k * 10, (k * 10) as f64)));
    // Imported every 5 ms: at multiples of 20 the held value, at other multiples of 10
    // another one, between them new samples.
    let f = |t: i64| match (t % 20, t % 10) {
        (0, _) => t as f64,
        (_, 0) => -(t as f64),
        _ => t as f64 + 0.5,
    };
    let imported = every(0, 2000, 5, f);
    let st = db
        .import(vec![series(&l, &imported)], ImportMode::Exact)
        .unwrap();
    assert_eq!(
        (st.stored, st.duplicate, st.conflicting, st.replica),
        (200, 100, 100, 0),
        "{st:?}"
    );
    let want = bits(&every(0, 2000, 5, |t| {
        if t % 10 == 0 {
            t as f64
        } else {
            t as f64 + 0.5
        }
    }));
    assert_eq!(raw(&db, &l), want);
    let s = db.stats();
    assert_eq!(
        (
            s.import_samples_stored_total,
            s.import_samples_duplicate_total,
            s.import_samples_conflicting_total
        ),
        (200, 100, 100)
    );
    // The import reached the open chunk (sealed first) and is newer than its last
    // sample (1995 > 1990): the ordering floor moved with it.
    let mut app = db.appender();
    assert_eq!(
        app.append(&l, 1994, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    assert_eq!(
        app.append(&l, 1995, 0.0).unwrap_err(),
        AppendError::DuplicateTimestamp
    );
    app.append(&l, 2000, 2000.0).unwrap();
    app.commit().unwrap();
    let mut want = want;
    want.push((2000, 2000f64.to_bits()));
    assert_eq!(raw(&db, &l), want);
    // Thinned to a grid (instant selectors), over the overlapping chunks.
    let grid = StepGrid {
        first: 3,
        step: 50,
        last: 1953,
    };
    let set = db
        .select(
            &SelectHints {
                grid: Some(grid),
                ..hints(0, 2000)
            },
            &[eq("__name__", "m")],
        )
        .unwrap();
    let mut thinned: Vec<Sample> = want
        .iter()
        .map(|&(t, v)| sample_at(t, f64::from_bits(v)))
        .collect();
    grid.thin(&mut thinned, 0);
    assert_eq!(bits(&set.series[0].samples), bits(&thinned));
}

#[test]
fn replica_mode_drops_samples_in_the_scrape_slot_of_a_held_one() {
    let l = lbl("up", &[("job", "x")]);
    // This node scrapes from scrape 20 on, 3 ms after the phase; the leaver scraped
    // scrapes 0 to 24, 1 ms after it and sometimes late (one 9 s late, in scrape 22).
    let held: Vec<Sample> = (20..40)
        .map(|k| sample_at(3 + k * 15_000, (k * 10) as f64))
        .collect();
    let late = |k: i64| match k {
        22 => 9_000,
        7 | 21 => 2_500,
        _ => 1,
    };
    let leaver: Vec<Sample> = (0..25)
        .map(|k| sample_at(k * 15_000 + late(k), (k * 10) as f64 + 0.25))
        .collect();
    let run = |mode: ImportMode| {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), opts()).unwrap();
        append_all(&db, &l, held.iter().map(|s| (s.t, s.v)));
        let st = db.import(vec![series(&l, &leaver)], mode).unwrap();
        (st, raw(&db, &l))
    };
    let (st, got) = run(ImportMode::Replica);
    assert_eq!((st.stored, st.replica), (20, 5), "{st:?}");
    let mut want = bits(&leaver[..20]);
    want.extend(bits(&held));
    assert_eq!(got, want);
    // One sample per scrape: no two closer than half an interval.
    assert!(got.windows(2).all(|w| w[1].0 - w[0].0 > 7_500), "{got:?}");
    // A backfill keeps every distinct timestamp.
    let (st, got) = run(ImportMode::Exact);
    assert_eq!((st.stored, st.replica), (25, 0));
    assert_eq!(got.len(), 45);
}

#[test]
fn replica_mode_keeps_the_samples_around_a_change_of_scrape_interval() {
    // The leaver scraped every 15 s, then (a config change) every second; this node
    // took the target over a few seconds after the change, on the same phase. Found by
    // the drain bench: with one spacing for the whole series (15 s, the median) the
    // first 1-second sample fell in the 15-second slot of this node's first sample and
    // was dropped as its replica although no other source has that scrape.
    let l = lbl("x", &[("job", "x")]);
    let t0 = 3 * H;
    let mut leaver = every(t0, t0 + 300_000, 15_000, |t| t as f64);
    let change = t0 + 313_000;
    leaver.extend(every(change, change + 8_000, 1_000, |t| t as f64));
    let held = every(change + 4_000, change + 16_000, 1_000, |t| t as f64);
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    append_all(&db, &l, held.iter().map(|s| (s.t, s.v)));
    let st = db
        .import(vec![series(&l, &leaver)], ImportMode::Replica)
        .unwrap();
    // Every 15-second sample and the four 1-second ones only the leaver has are stored;
    // the four both have are duplicates.
    assert_eq!(
        (st.stored, st.duplicate, st.replica),
        (20 + 4, 4, 0),
        "{st:?}"
    );
    let got = raw(&db, &l);
    let mut want = bits(&leaver[..24]);
    want.extend(bits(&held));
    assert_eq!(got, want);
}

#[test]
fn importing_twice_stores_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let a = lbl("m", &[("s", "a")]);
    let b = lbl("m", &[("s", "b")]);
    // a's value at t is (t - 5 h) / 15 s: where the import meets it, it is the same.
    let v = |t: i64| (t - 5 * H) as f64 / 15_000.0;
    append_all(&db, &a, (0..100).map(|k| (5 * H + k * 15_000, k as f64)));
    let input = vec![
        // Overlaps a's data, and reaches back before it.
        series(&a, &every(4 * H, 5 * H + 600_000, 10_000, v)),
        // A new series over three blocks.
        series(&b, &every(H, 6 * H, 30_000, |t| (t / 1000) as f64)),
    ];
    let in_samples: u64 = input
        .iter()
        .flat_map(|s| &s.chunks)
        .map(|c| u64::from(chunkenc::XorIterator::new(&c.bytes).len()))
        .sum();
    let first = db.import(input.clone(), ImportMode::Exact).unwrap();
    // Every 30 s the import meets a's samples (20 of them in its 10 minutes).
    assert_eq!((first.duplicate, first.conflicting), (20, 0), "{first:?}");
    assert_eq!(first.stored, in_samples - 20);
    let after_first = all(&db);
    let keys = db.inner.chunks.len();
    let second = db.import(input, ImportMode::Exact).unwrap();
    assert_eq!(
        second,
        ImportStats {
            duplicate: in_samples,
            ..ImportStats::default()
        }
    );
    assert_eq!(all(&db), after_first);
    assert_eq!(db.inner.chunks.len(), keys);
}

#[test]
fn an_import_is_durable_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let a = lbl("m", &[("s", "a")]);
    append_all(&db, &a, (0..50).map(|k| (5 * H + k * 15_000, k as f64)));
    let news: Vec<Labels> = (0..20)
        .map(|i| lbl("n", &[("i", &i.to_string())]))
        .collect();
    let mut input: Vec<ImportSeries> = news
        .iter()
        .map(|l| series(l, &every(H, 3 * H, 15_000, |t| t as f64)))
        .collect();
    input.push(series(&a, &every(4 * H, 5 * H, 15_000, |t| -(t as f64))));
    db.import(input, ImportMode::Exact).unwrap();
    let want = all(&db);
    assert_eq!(want.len(), 21);
    // What a kill -9 right after the acknowledgement leaves: the files as they are.
    copy_dir(dir.path(), &crash.path().join("db"));
    let re = Tsdb::open(&crash.path().join("db"), opts()).unwrap();
    assert_eq!(all(&re), want);
    re.close().unwrap();
    drop(re);
    // And a clean close and reopen.
    db.close().unwrap();
    drop(db);
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(all(&db), want);
}

#[test]
fn appends_after_an_import_follow_the_series_newest_sample() {
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    // A new series whose history ends hours before now: it does not block appends.
    let n = lbl("n", &[]);
    let hist = every(DAY - 5 * H, DAY - 4 * H, 15_000, |t| t as f64);
    db.import(vec![series(&n, &hist)], ImportMode::Replica)
        .unwrap();
    let mut app = db.appender();
    assert_eq!(
        app.append(&n, hist[hist.len() - 1].t - 1, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    app.append(&n, DAY - 60_000, 1.0).unwrap();
    app.append(&lbl("other", &[]), DAY - 60_000, 1.0).unwrap();
    app.commit().unwrap();

    // A series written in the current WAL segment gets newer samples by import: the WAL
    // encoder follows (a crash image replays everything).
    let s = lbl("s", &[]);
    let before = every(DAY - 50 * 60_000, DAY - 50 * 60_000 + 100_000, 1000, |t| {
        (t % 7) as f64
    });
    append_all(&db, &s, before.iter().map(|x| (x.t, x.v)));
    let newer = every(DAY - 40 * 60_000, DAY - 40 * 60_000 + 50_000, 1000, |t| {
        (t % 11) as f64 * 0.1
    });
    let st = db
        .import(vec![series(&s, &newer)], ImportMode::Replica)
        .unwrap();
    assert_eq!(st.stored, 50);
    let after = every(DAY - 30 * 60_000, DAY - 30 * 60_000 + 30_000, 1000, |t| {
        (t % 13) as f64
    });
    let mut app = db.appender();
    assert_eq!(
        app.append(&s, DAY - 40 * 60_000 + 48_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    drop(app);
    append_all(&db, &s, after.iter().map(|x| (x.t, x.v)));
    db.flush().unwrap();
    let mut want = bits(&before);
    want.extend(bits(&newer));
    want.extend(bits(&after));
    assert_eq!(raw(&db, &s), want);
    copy_dir(dir.path(), &crash.path().join("db"));
    let re = Tsdb::open(&crash.path().join("db"), opts()).unwrap();
    assert_eq!(raw(&re, &s), want);
    assert_eq!(raw(&re, &n).len(), hist.len() + 1);
    assert_eq!(re.stats().wal_corrupt_values_total, 0);
    let mut app = re.appender();
    assert_eq!(
        app.append(&s, DAY - 30 * 60_000 + 28_000, 1.0).unwrap_err(),
        AppendError::OutOfOrder
    );
    app.append(&s, DAY - 30 * 60_000 + 31_000, 1.0).unwrap();
    app.commit().unwrap();
}

#[test]
fn a_chunk_across_a_block_boundary_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("m", &[]);
    let samples = every(2 * H - 30 * 60_000, 2 * H + 30 * 60_000 + 1, 60_000, |t| {
        t as f64
    });
    let mut chunk = RawChunk {
        min_t: samples[0].t,
        max_t: samples[samples.len() - 1].t,
        bytes: chunkenc::new_chunk(),
    };
    let mut x = chunkenc::XorState::default();
    for s in &samples {
        x.append(&mut chunk.bytes, s.t, s.v);
    }
    let st = db
        .import(
            vec![ImportSeries {
                labels: l.clone(),
                chunks: vec![chunk],
            }],
            ImportMode::Exact,
        )
        .unwrap();
    assert_eq!(
        (st.stored, st.chunks_as_is, st.chunks_reencoded),
        (61, 0, 2)
    );
    assert_eq!(raw(&db, &l), bits(&samples));
    // Each stored chunk within its block (the key's block).
    let mut n = 0;
    for item in db.inner.chunks.iter() {
        let (k, v) = item.unwrap();
        let block = codec::i64_from_key(k[..8].try_into().unwrap());
        let min_t = retention::key_min_t(&k).unwrap();
        let (max_t, _) = retention::parse_chunk_value(&v).unwrap();
        assert_eq!(
            (head::block_of(min_t, 2 * H), head::block_of(max_t, 2 * H)),
            (block, block)
        );
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn retention_and_the_future_bound_apply_to_imports() {
    let dir = tempfile::tempdir().unwrap();
    let now = 40 * DAY;
    let clock = Clock::manual(now);
    let db = Tsdb::open(
        dir.path(),
        TsdbOptions {
            clock: clock.clone(),
            ..opts()
        },
    )
    .unwrap();
    let l = lbl("m", &[]);
    // From 16 days ago to 20 minutes ahead, every 10 minutes.
    let samples = every(now - 16 * DAY, now + 20 * 60_000 + 1, 600_000, |t| t as f64);
    let limit = now - 15 * DAY;
    let old = samples.iter().filter(|s| s.t < limit).count() as u64;
    let future = samples.iter().filter(|s| s.t > now + 10 * 60_000).count() as u64;
    assert_eq!((old, future), (144, 1));
    let st = db.import_samples(&l, &samples, ImportMode::Exact).unwrap();
    assert_eq!(
        (st.out_of_bounds, st.too_far_in_future, st.stored),
        (old, future, samples.len() as u64 - old - future)
    );
    let s = db.stats();
    assert_eq!(
        (
            s.import_samples_out_of_bounds_total,
            s.import_samples_too_far_in_future_total
        ),
        (old, future)
    );
    let kept: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t >= limit && s.t <= now + 10 * 60_000)
        .collect();
    assert_eq!(raw(&db, &l), bits(&kept));
    // A day later the oldest imported blocks age out like any others.
    clock.set(now + DAY);
    db.maintain().unwrap();
    let cut = head::block_of(now + DAY - 15 * DAY, 2 * H);
    let left: Vec<Sample> = kept.iter().copied().filter(|s| s.t >= cut).collect();
    assert!(left.len() < kept.len() - 100);
    assert_eq!(raw(&db, &l), bits(&left));
}

#[test]
fn import_samples_sorts_and_keeps_the_first_of_a_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let l = lbl("m", &[]);
    let input = [
        sample_at(3000, 3.0),
        sample_at(1000, 1.0),
        sample_at(2000, 2.0),
        sample_at(2000, 2.0),
        sample_at(1000, 9.0),
    ];
    let st = db.import_samples(&l, &input, ImportMode::Exact).unwrap();
    assert_eq!(
        (
            st.stored,
            st.duplicate,
            st.conflicting,
            st.chunks_reencoded,
            st.chunks_as_is
        ),
        (3, 1, 1, 1, 0)
    );
    assert_eq!(
        raw(&db, &l),
        bits(&[
            sample_at(1000, 1.0),
            sample_at(2000, 2.0),
            sample_at(3000, 3.0)
        ])
    );
}

#[test]
fn a_malformed_chunk_fails_the_call_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let good = series(&lbl("a", &[]), &every(0, 100_000, 1000, |t| t as f64));
    let mut bad = series(&lbl("b", &[]), &every(0, 100_000, 1000, |t| t as f64));
    bad.chunks[0].max_t += 1; // claims a time it does not hold
    let mut cut = series(&lbl("c", &[]), &every(0, 100_000, 1000, |t| t as f64));
    cut.chunks[0].bytes.truncate(20);
    for b in [bad, cut] {
        let err = db
            .import(vec![good.clone(), b], ImportMode::Exact)
            .unwrap_err();
        assert!(err.0.contains("chunk"), "{err}");
    }
    let mut empty = good.clone();
    empty.labels = Labels::empty();
    assert!(db.import(vec![empty], ImportMode::Exact).is_err());
    assert_eq!(db.stats().head_series, 0);
    assert!(all(&db).is_empty());
    assert_eq!(db.inner.chunks.len(), 0);
}

#[test]
fn tsdb_check_is_clean_after_imports() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Tsdb::open(dir.path(), opts()).unwrap();
        let l = lbl("m", &[]);
        append_all(&db, &l, (0..300).map(|k| (k * 10, k as f64)));
        db.import_samples(&l, &every(0, 4000, 5, |t| t as f64), ImportMode::Exact)
            .unwrap();
        db.import_samples(
            &lbl("n", &[]),
            &every(0, 3 * H, 60_000, |t| t as f64),
            ImportMode::Replica,
        )
        .unwrap();
        db.close().unwrap();
    }
    let r = check::check(dir.path(), false).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(r.chunks >= 5, "{r:?}");
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    assert_eq!(raw(&db, &lbl("m", &[])).len(), 800);
}

#[test]
fn imports_and_appends_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(dir.path(), opts()).unwrap();
    let ls: Vec<Labels> = (0..8).map(|i| lbl("m", &[("i", &i.to_string())])).collect();
    // Appends from 12 h on while the history before it is imported in small calls.
    let writer = {
        let (db, ls) = (db.clone(), ls.clone());
        std::thread::spawn(move || {
            for k in 0..400i64 {
                let mut app = db.appender();
                for l in &ls {
                    app.append(l, 12 * H + k * 1000, k as f64).unwrap();
                }
                app.commit().unwrap();
            }
        })
    };
    let hist = every(8 * H, 12 * H, 15_000, |t| -(t as f64));
    for part in hist.chunks(100) {
        let input = ls.iter().map(|l| series(l, part)).collect();
        db.import(input, ImportMode::Replica).unwrap();
    }
    writer.join().unwrap();
    for l in &ls {
        let got = raw(&db, l);
        let mut want = bits(&hist);
        want.extend((0..400i64).map(|k| (12 * H + k * 1000, (k as f64).to_bits())));
        assert_eq!(got, want);
    }
}
