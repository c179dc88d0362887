//! TSDB benchmarks: append throughput of a scrape-shaped load (targets × series, one
//! commit per target scrape with a shared timestamp, appends by ref) and, printed
//! before the timings, the bytes on disk per sample and the RSS per series after a
//! 60-scrape run. `SHOAL_BENCH_SERIES` (default 200000) sets the fleet size.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal::model::{Labels, Matcher};
use shoal::storage::{Appendable, Queryable, SelectHints, SeriesRef};
use shoal::tsdb::{Tsdb, TsdbOptions};

const SERIES_PER_TARGET: usize = 2000;
const INTERVAL_MS: i64 = 5000;

fn fleet_size() -> usize {
    std::env::var("SHOAL_BENCH_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
}

/// A value shaped like the bench fleet's (`shared/bench/targets.py`): integer counters
/// and histogram buckets, integer and float gauges, float counters.
fn value(i: usize, t_ms: i64) -> f64 {
    let t = t_ms as f64 / 1000.0 + 1_000_000.0 + (i % 97) as f64 * 1000.0;
    let a = 0.5 + (i % 13) as f64;
    match i % 20 {
        0..=8 => (a * t).floor(),
        9..=13 => ((a / 4.0) * t).floor(),
        14..=16 => (100.0 + 50.0 * (t / 600.0 + i as f64).sin()).round(),
        17 => a * t * 0.0123,
        _ => 0.5 + 0.3 * (t / 300.0 + i as f64).sin() + 0.05 * (t * 7.3 / 300.0).sin(),
    }
}

fn labels(target: usize, j: usize) -> Labels {
    let metric = [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "app_queue_depth",
        "app_cpu",
    ][j % 4];
    Labels::from_pairs(&[
        ("__name__", metric),
        ("job", "bench"),
        ("instance", &format!("127.0.0.1:{}", 20000 + target)),
        ("handler", &format!("/api/v{}/h{}", j % 3, j / 4)),
        ("method", ["GET", "POST", "PUT", "DELETE"][j % 4]),
    ])
}

struct Fleet {
    db: Tsdb,
    refs: Vec<Vec<SeriesRef>>,
    t: i64,
}

impl Fleet {
    fn new(dir: &std::path::Path, n: usize) -> Fleet {
        let t = 1_700_000_000_000;
        let opts = TsdbOptions {
            maintenance_interval: Duration::from_secs(3600),
            // The samples' times are fixed: so is "now" (retention follows the clock).
            clock: shoal::tsdb::Clock::manual(t + 86_400_000),
            ..TsdbOptions::default()
        };
        let db = Tsdb::open(dir, opts).expect("open tsdb");
        let targets = n.div_ceil(SERIES_PER_TARGET);
        let mut refs = Vec::with_capacity(targets);
        for tg in 0..targets {
            let mut app = db.appender();
            let mut r = Vec::with_capacity(SERIES_PER_TARGET);
            for j in 0..SERIES_PER_TARGET.min(n - tg * SERIES_PER_TARGET) {
                r.push(
                    app.append(&labels(tg, j), t, value(tg * SERIES_PER_TARGET + j, t))
                        .expect("append"),
                );
            }
            app.commit().expect("commit");
            refs.push(r);
        }
        Fleet { db, refs, t }
    }

    /// One scrape of every target.
    fn scrape_all(&mut self) -> usize {
        self.t += INTERVAL_MS;
        let mut n = 0;
        for (tg, refs) in self.refs.iter().enumerate() {
            let mut app = self.db.appender();
            for (j, &r) in refs.iter().enumerate() {
                app.append_ref(r, self.t, value(tg * SERIES_PER_TARGET + j, self.t))
                    .expect("append_ref");
            }
            n += app.commit().expect("commit").samples as usize;
        }
        n
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// 60 scrapes (5 minutes at 5 s) of the fleet, then disk and memory figures.
fn footprint(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rss0 = rss_bytes();
    let start = Instant::now();
    let mut fleet = Fleet::new(dir.path(), n);
    let created = start.elapsed();
    fleet.db.flush().expect("flush");
    let after_create = fleet.db.stats().disk_size_bytes;
    let t0 = Instant::now();
    let mut samples = n;
    for _ in 1..60 {
        samples += fleet.scrape_all();
    }
    let ingest = t0.elapsed();
    fleet.db.flush().expect("flush");
    let rss1 = rss_bytes();
    let st = fleet.db.stats();
    let on_disk = dir_size(dir.path());
    println!(
        "tsdb footprint: {n} series, {samples} samples; create {:.2?}, 59 scrapes {:.2?} ({:.0} ns/sample)",
        created,
        ingest,
        ingest.as_nanos() as f64 / (samples - n) as f64
    );
    println!(
        "  sled size after creating the series: {after_create} B ({:.0} B/series)",
        after_create as f64 / n as f64
    );
    println!(
        "  WAL bytes {} ({:.3} B/sample); sled size_on_disk {} ({:.3} B/sample); dir {} ({:.3} B/sample)",
        st.wal_bytes_total,
        st.wal_bytes_total as f64 / samples as f64,
        st.disk_size_bytes,
        st.disk_size_bytes as f64 / samples as f64,
        on_disk,
        on_disk as f64 / samples as f64
    );
    println!(
        "  RSS growth {} B ({:.0} B/series); head estimate {:.0} B/series",
        rss1.saturating_sub(rss0),
        rss1.saturating_sub(rss0) as f64 / n as f64,
        st.head_bytes as f64 / n as f64
    );
    println!("  stats {st:?}");
    fleet.db.close().expect("close");
}

fn bench(c: &mut Criterion) {
    let n = fleet_size();
    footprint(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fleet = Fleet::new(dir.path(), n);
    let mut g = c.benchmark_group("tsdb");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("append_scrape_{n}_series"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(fleet.scrape_all());
            }
            start.elapsed()
        })
    });
    // A selector over a quarter of the fleet, last 5 minutes (what a rate() needs).
    let m = [Matcher::equal("__name__", "http_requests_total")];
    g.throughput(Throughput::Elements(1));
    g.bench_function("select_quarter_of_fleet_5m", |b| {
        b.iter(|| {
            let h = SelectHints {
                start: fleet.t - 300_000,
                end: fleet.t,
                ..SelectHints::default()
            };
            black_box(fleet.db.select(&h, &m).expect("select").series.len())
        })
    });
    g.finish();
    fleet.db.close().expect("close");
    sealed(c);
}

/// Selects over sealed chunks: 1000 series scraped every 15 s for 6 hours (12 sealed
/// chunks each, over 3 blocks), a quarter of them over the whole range and over the
/// last hour.
fn sealed(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TsdbOptions {
        maintenance_interval: Duration::from_secs(3600),
        clock: shoal::tsdb::Clock::manual(1_700_000_000_000 + 7 * 3_600_000),
        ..TsdbOptions::default()
    };
    let db = Tsdb::open(dir.path(), opts).expect("open tsdb");
    let t0 = 1_700_000_000_000i64;
    let series: Vec<Labels> = (0..1000).map(|j| labels(0, j)).collect();
    let mut refs: Vec<SeriesRef> = Vec::new();
    for k in 0..1440i64 {
        let t = t0 + k * 15_000;
        let mut app = db.appender();
        if k == 0 {
            for (j, l) in series.iter().enumerate() {
                refs.push(app.append(l, t, value(j, t)).expect("append"));
            }
        } else {
            for (j, &r) in refs.iter().enumerate() {
                app.append_ref(r, t, value(j, t)).expect("append_ref");
            }
        }
        app.commit().expect("commit");
    }
    db.flush().expect("flush");
    let end = t0 + 1439 * 15_000;
    let m = [Matcher::equal("__name__", "http_requests_total")];
    let mut g = c.benchmark_group("tsdb_sealed");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    // Throughput in samples returned.
    for (name, start, samples) in [
        ("select_250_series_6h", t0, 250 * 1440),
        ("select_250_series_1h", end - 3_600_000, 250 * 241),
    ] {
        g.throughput(Throughput::Elements(samples));
        g.bench_function(name, |b| {
            b.iter(|| {
                let h = SelectHints {
                    start,
                    end,
                    ..SelectHints::default()
                };
                black_box(db.select(&h, &m).expect("select").series.len())
            })
        });
    }
    g.finish();
    db.close().expect("close");
}

criterion_group!(benches, bench);
criterion_main!(benches);
