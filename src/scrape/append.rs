//! Turning one scrape body into stored samples: parse → target labels → metric
//! relabelling → limits → storage, with the per-target series cache and staleness
//! tracking. Plain functions over a [`ScrapeCache`]; the actor calls them on a blocking
//! thread.

use crate::config::ScrapeConfig;
use crate::model::relabel;
use crate::model::textparse::{Entry, Format, Parser, SeriesEntry};
use crate::model::{Labels, stale_nan};
use crate::storage::{AppendError, Appendable, Appender, SeriesRef};

use super::ScrapeError;
use super::cache::{DROPPED, Entries, Entry as CacheEntry, KeyMap, PENDING, Walk, key_of};

/// How the cache refers to one exposed series.
#[derive(Debug, Clone)]
enum Slot {
    /// Metric relabelling dropped the series.
    Dropped,
    /// The store's ref of the series.
    Ref(SeriesRef),
    /// Not in the store yet (its first sample was rejected): the labels to create it with.
    Pending(Box<Labels>),
}

/// The per-target cache: exposed series → storage ref. Known series skip label building
/// and relabelling (the labels live in the store, not here); it also tracks which series
/// the previous scrape had, for staleness markers. Entries are compact
/// ([`super::cache`]); a series whose first sample the store rejected keeps its labels
/// in `pending` until it is stored.
#[derive(Debug, Default)]
pub struct ScrapeCache {
    entries: Entries,
    pending: KeyMap<Box<Labels>>,
    iter: u32,
}

/// The labels and limits a scrape is processed with.
#[derive(Debug, Clone)]
pub struct ScrapeContext<'a> {
    pub cfg: &'a ScrapeConfig,
    /// The target's labels that go on every series (job, instance, ...).
    pub target_labels: &'a Labels,
}

/// Counts from one successful scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Samples in the exposition (`scrape_samples_scraped`).
    pub scraped: u64,
    /// Samples after metric relabelling (`scrape_samples_post_metric_relabeling`).
    pub post_relabel: u64,
    /// Series new to this target (`scrape_series_added`).
    pub series_added: u64,
    pub out_of_order: u64,
    pub duplicate: u64,
    /// Samples older than the store accepts.
    pub out_of_bounds: u64,
    /// Samples too far ahead of the node's clock (`--storage.tsdb.max-future`).
    pub too_far_in_future: u64,
    pub stale_markers: u64,
}

impl ScrapeStats {
    /// When every sample after relabelling was rejected for its timestamp: why, for the
    /// target's `lastError` (the scrape itself succeeded, so `up` stays 1).
    pub fn all_rejected(&self) -> Option<String> {
        let rejected =
            self.out_of_order + self.duplicate + self.out_of_bounds + self.too_far_in_future;
        if self.post_relabel == 0 || rejected < self.post_relabel {
            return None;
        }
        let mut why = Vec::new();
        for (n, what) in [
            (self.out_of_bounds, "out of bounds (too old)"),
            (
                self.too_far_in_future,
                "out of bounds (too far in the future)",
            ),
            (self.out_of_order, "out of order"),
            (self.duplicate, "duplicate timestamp"),
        ] {
            if n > 0 {
                why.push(format!("{n} {what}"));
            }
        }
        Some(format!(
            "every sample of the scrape was rejected: {}",
            why.join(", ")
        ))
    }
}

/// Applies the target labels to a scraped series as Prometheus does: with
/// `honor_labels` the scraped value wins; otherwise the target's value wins and a
/// conflicting scraped label is kept as `exported_<name>`.
pub fn apply_target_labels(scraped: Labels, target: &Labels, honor_labels: bool) -> Labels {
    let mut b = scraped.builder();
    for l in target {
        let existing = scraped.get(&l.name);
        if honor_labels {
            if existing.is_none() {
                b.set(&l.name, &l.value);
            }
            continue;
        }
        if let Some(v) = existing {
            let mut name = format!("exported_{}", l.name);
            while scraped.has(&name) {
                name = format!("exported_{name}");
            }
            b.set(&name, v);
        }
        b.set(&l.name, &l.value);
    }
    b.build()
}

fn check_label_limits(labels: &Labels, cfg: &ScrapeConfig) -> Result<(), ScrapeError> {
    let name = labels.metric_name().unwrap_or("");
    if cfg.label_limit > 0 && labels.len() as u64 > cfg.label_limit {
        return Err(ScrapeError::LabelLimit(format!(
            "label_limit exceeded (metric: {name}, number of labels: {}, limit: {})",
            labels.len(),
            cfg.label_limit
        )));
    }
    for l in labels {
        if cfg.label_name_length_limit > 0 && l.name.len() as u64 > cfg.label_name_length_limit {
            return Err(ScrapeError::LabelLimit(format!(
                "label_name_length_limit exceeded (metric: {name}, label name: {}, length: {}, limit: {})",
                l.name,
                l.name.len(),
                cfg.label_name_length_limit
            )));
        }
        if cfg.label_value_length_limit > 0 && l.value.len() as u64 > cfg.label_value_length_limit {
            return Err(ScrapeError::LabelLimit(format!(
                "label_value_length_limit exceeded (metric: {name}, label name: {}, value: {:?}, length: {}, limit: {})",
                l.name,
                l.value,
                l.value.len(),
                cfg.label_value_length_limit
            )));
        }
    }
    Ok(())
}

/// Counts a per-sample rejection; other errors fail the scrape.
fn count_rejection(
    res: Result<(), AppendError>,
    stats: &mut ScrapeStats,
) -> Result<(), ScrapeError> {
    match res {
        Ok(()) => Ok(()),
        Err(AppendError::OutOfOrder) => {
            stats.out_of_order += 1;
            Ok(())
        }
        Err(AppendError::DuplicateTimestamp) => {
            stats.duplicate += 1;
            Ok(())
        }
        Err(AppendError::OutOfBounds) => {
            stats.out_of_bounds += 1;
            Ok(())
        }
        Err(AppendError::TooFarInFuture) => {
            stats.too_far_in_future += 1;
            Ok(())
        }
        Err(AppendError::InvalidLabels(e)) => Err(ScrapeError::Parse(e)),
        Err(e @ (AppendError::UnknownRef(_) | AppendError::Storage(_))) => {
            Err(ScrapeError::Storage(e.to_string()))
        }
    }
}

/// Appends by labels and remembers the new ref.
fn append_labels(
    app: &mut dyn Appender,
    slot: &mut Slot,
    labels: &Labels,
    t: i64,
    v: f64,
) -> Result<(), AppendError> {
    let r = app.append(labels, t, v)?;
    *slot = Slot::Ref(r);
    Ok(())
}

/// The final labels of a scraped series (target labels, metric relabelling, limits), or
/// `None` when relabelling drops it.
fn series_labels(
    s: &SeriesEntry<'_>,
    ctx: &ScrapeContext<'_>,
) -> Result<Option<Labels>, ScrapeError> {
    let labels = apply_target_labels(s.labels(), ctx.target_labels, ctx.cfg.honor_labels);
    let Some(labels) = relabel::process(&labels, &ctx.cfg.metric_relabel_configs) else {
        return Ok(None);
    };
    check_label_limits(&labels, ctx.cfg)?;
    Ok(Some(labels))
}

/// Appends a scraped sample for a cached series. A ref the store has forgotten is
/// rebuilt from the exposed series.
fn append_scraped(
    app: &mut dyn Appender,
    slot: &mut Slot,
    s: &SeriesEntry<'_>,
    ctx: &ScrapeContext<'_>,
    t: i64,
    stats: &mut ScrapeStats,
) -> Result<(), ScrapeError> {
    let res = match slot {
        Slot::Dropped => return Ok(()),
        Slot::Ref(r) => match app.append_ref(*r, t, s.value) {
            Err(AppendError::UnknownRef(_)) => match series_labels(s, ctx)? {
                Some(l) => append_labels(app, slot, &l, t, s.value),
                None => {
                    *slot = Slot::Dropped;
                    Ok(())
                }
            },
            other => other,
        },
        Slot::Pending(l) => {
            let l = l.clone();
            append_labels(app, slot, &l, t, s.value)
        }
    };
    count_rejection(res, stats)
}

/// Appends a staleness marker for a cached series. A series the store does not (or no
/// longer) know needs none.
fn append_stale(
    app: &mut dyn Appender,
    e: &CacheEntry,
    t: i64,
    stats: &mut ScrapeStats,
) -> Result<bool, ScrapeError> {
    if e.last_iter == 0 || e.explicit_ts || e.slot == DROPPED || e.slot == PENDING {
        return Ok(false);
    }
    let res = match app.append_ref(e.slot, t, stale_nan()) {
        Err(AppendError::UnknownRef(_)) => return Ok(false),
        other => other,
    };
    count_rejection(res, stats)?;
    Ok(true)
}

impl ScrapeCache {
    /// Processes a scrape body taken at `t` (ms) into `storage`. On success the samples
    /// are committed and series that vanished since the previous scrape get a staleness
    /// marker. On failure nothing of the body is stored; the caller then calls
    /// [`ScrapeCache::mark_all_stale`] as Prometheus does for a failed scrape.
    pub fn append_body(
        &mut self,
        storage: &dyn Appendable,
        ctx: &ScrapeContext<'_>,
        body: &[u8],
        format: Format,
        t: i64,
    ) -> Result<ScrapeStats, ScrapeError> {
        let mut app = storage.appender();
        app.reserve(self.entries.len());
        let iter = self.iter.wrapping_add(1).max(1);
        let mut stats = ScrapeStats::default();
        // The next generation is built beside the cache, so that a failed scrape leaves
        // the cache as it was.
        let mut walk = Walk::new(&self.entries);
        let mut pending = KeyMap::default();
        if let Err(e) = self.append_entries(
            app.as_mut(),
            ctx,
            body,
            format,
            t,
            iter,
            &mut stats,
            &mut walk,
            &mut pending,
        ) {
            app.rollback();
            return Err(e);
        }
        let prev_iter = self.iter;
        // Series seen by the previous scrape but not by this one get a staleness marker.
        for e in walk.unseen(&self.entries) {
            if e.last_iter == prev_iter && append_stale(app.as_mut(), e, t, &mut stats)? {
                stats.stale_markers += 1;
            }
        }
        let commit = app
            .commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        stats.series_added = commit.series_created;
        // Forget series not seen for a while (they were marked stale already).
        let keep = |e: &CacheEntry| iter.wrapping_sub(e.last_iter) <= 2;
        for e in walk.unseen(&self.entries) {
            if e.slot == PENDING
                && keep(e)
                && let Some(l) = self.pending.remove(&e.key)
            {
                pending.insert(e.key, l);
            }
        }
        self.entries = walk.finish(std::mem::take(&mut self.entries), keep);
        self.pending = pending;
        self.iter = iter;
        Ok(stats)
    }

    #[allow(clippy::too_many_arguments)]
    fn append_entries(
        &mut self,
        app: &mut dyn Appender,
        ctx: &ScrapeContext<'_>,
        body: &[u8],
        format: Format,
        t: i64,
        iter: u32,
        stats: &mut ScrapeStats,
        walk: &mut Walk,
        pending: &mut KeyMap<Box<Labels>>,
    ) -> Result<(), ScrapeError> {
        let cfg = ctx.cfg;
        let mut parser = Parser::new(body, format);
        let om = format == Format::OpenMetrics;
        loop {
            // A series the cache knows skips the validation of its label block: its
            // bytes were valid in the scrape that added them (and in this format, as the
            // text format accepts every label block OpenMetrics does).
            let mut found = None;
            let entries = &self.entries;
            let mut known = |raw: &[u8]| {
                let key = key_of(raw);
                let j = walk.find(entries, &key, iter);
                found = Some((key, j));
                j.is_some_and(|j| !om || walk.entry(j).validated_om)
            };
            let entry = match parser.next_with(&mut known) {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => return Err(ScrapeError::Parse(e.to_string())),
            };
            let Entry::Series(s) = entry else { continue };
            stats.scraped += 1;
            let (ts, explicit) = match s.timestamp {
                Some(ts) if cfg.honor_timestamps => (ts, true),
                _ => (t, false),
            };
            // Seen twice in one scrape, a series is found again: the store decides (an
            // equal value is a no-op, another value a duplicate).
            let (key, j) = found.unwrap_or_else(|| {
                let key = key_of(s.raw);
                (key, walk.find(&self.entries, &key, iter))
            });
            let j = match j {
                Some(j) => j,
                None => {
                    // A series new to this target: build its labels once.
                    let slot = match series_labels(&s, ctx)? {
                        Some(l) => {
                            pending.insert(key, Box::new(l));
                            PENDING
                        }
                        None => DROPPED,
                    };
                    walk.insert(CacheEntry {
                        key,
                        slot,
                        last_iter: iter,
                        explicit_ts: explicit,
                        validated_om: om,
                    })
                }
            };
            let e = walk.entry(j);
            e.explicit_ts = explicit;
            e.validated_om |= om;
            if e.slot == DROPPED {
                continue;
            }
            stats.post_relabel += 1;
            if cfg.sample_limit > 0 && stats.post_relabel > cfg.sample_limit {
                return Err(ScrapeError::SampleLimit);
            }
            let mut slot = match e.slot {
                PENDING => {
                    let labels = match pending.remove(&key) {
                        Some(l) => Some(l),
                        None => self.pending.get(&key).cloned(),
                    };
                    match labels {
                        Some(l) => Slot::Pending(l),
                        // Not expected; rebuilding the labels is always right.
                        None => match series_labels(&s, ctx)? {
                            Some(l) => Slot::Pending(Box::new(l)),
                            None => Slot::Dropped,
                        },
                    }
                }
                r => Slot::Ref(r),
            };
            let res = append_scraped(app, &mut slot, &s, ctx, ts, stats);
            e.slot = match slot {
                Slot::Dropped => DROPPED,
                Slot::Ref(r) => r,
                Slot::Pending(l) => {
                    pending.insert(key, l);
                    PENDING
                }
            };
            res?;
        }
        Ok(())
    }

    /// Writes a staleness marker at `t` for every series of the previous scrape (a failed
    /// scrape, or the target left discovery).
    pub fn mark_all_stale(&mut self, storage: &dyn Appendable, t: i64) -> Result<u64, ScrapeError> {
        let mut app = storage.appender();
        let mut stats = ScrapeStats::default();
        let prev = self.iter;
        for e in self.entries.iter() {
            if e.last_iter == prev && append_stale(app.as_mut(), e, t, &mut stats)? {
                stats.stale_markers += 1;
            }
        }
        app.commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        // The next successful scrape starts a fresh generation: nothing is "previous".
        self.iter = self.iter.wrapping_add(1).max(1);
        Ok(stats.stale_markers)
    }
}

/// The synthetic series Prometheus adds for every scrape.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    pub up: bool,
    pub duration_seconds: f64,
    pub stats: ScrapeStats,
}

/// Names of the report series, in the order they are written.
pub const REPORT_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// One report series: its labels and the store's ref once known.
#[derive(Debug)]
struct ReportSeries {
    labels: Labels,
    slot: Slot,
}

/// Report series with their cached refs.
#[derive(Debug, Default)]
pub struct ReportCache {
    series: Vec<ReportSeries>,
}

impl ReportCache {
    fn ensure(&mut self, target_labels: &Labels) {
        if self.series.len() == REPORT_SERIES.len() {
            return;
        }
        self.series = REPORT_SERIES
            .iter()
            .map(|name| {
                let mut b = target_labels.builder();
                b.set(crate::model::labels::METRIC_NAME, name);
                let labels = b.build();
                ReportSeries {
                    slot: Slot::Pending(Box::new(labels.clone())),
                    labels,
                }
            })
            .collect();
    }

    /// Writes the report series for one scrape at `t`.
    pub fn append_report(
        &mut self,
        storage: &dyn Appendable,
        target_labels: &Labels,
        t: i64,
        r: &Report,
    ) -> Result<(), ScrapeError> {
        self.ensure(target_labels);
        let values = [
            if r.up { 1.0 } else { 0.0 },
            r.duration_seconds,
            r.stats.scraped as f64,
            r.stats.post_relabel as f64,
            r.stats.series_added as f64,
        ];
        self.append_values(storage, t, &values)
    }

    /// Writes staleness markers for the report series (the target went away).
    pub fn append_stale(
        &mut self,
        storage: &dyn Appendable,
        target_labels: &Labels,
        t: i64,
    ) -> Result<(), ScrapeError> {
        self.ensure(target_labels);
        self.append_values(storage, t, &[stale_nan(); 5])
    }

    fn append_values(
        &mut self,
        storage: &dyn Appendable,
        t: i64,
        values: &[f64; 5],
    ) -> Result<(), ScrapeError> {
        let mut app = storage.appender();
        let mut stats = ScrapeStats::default();
        for (s, v) in self.series.iter_mut().zip(values) {
            let res = match s.slot {
                Slot::Ref(r) => match app.append_ref(r, t, *v) {
                    Err(AppendError::UnknownRef(_)) => {
                        append_labels(app.as_mut(), &mut s.slot, &s.labels, t, *v)
                    }
                    other => other,
                },
                _ => append_labels(app.as_mut(), &mut s.slot, &s.labels, t, *v),
            };
            count_rejection(res, &mut stats)?;
        }
        app.commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Matcher, is_stale_nan};
    use crate::storage::{Queryable, SelectHints};
    use crate::tsdb::{Tsdb, TsdbOptions};

    fn cfg(extra: &str) -> ScrapeConfig {
        let yaml = format!(
            "scrape_configs:\n  - job_name: j\n{extra}    static_configs:\n      - targets: ['h:1']\n"
        );
        crate::config::load_str(&yaml)
            .unwrap()
            .scrape_configs
            .remove(0)
    }

    /// The tests scrape at times in the epoch's first day: "now" is that day.
    fn test_opts() -> TsdbOptions {
        TsdbOptions {
            clock: crate::tsdb::Clock::manual(24 * 3_600_000),
            ..TsdbOptions::default()
        }
    }

    fn target() -> Labels {
        Labels::from_pairs(&[("instance", "h:1"), ("job", "j")])
    }

    fn samples(db: &Tsdb, name: &str) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let hints = SelectHints {
            start: i64::MIN / 2,
            end: i64::MAX / 2,
            ..SelectHints::default()
        };
        db.select(&hints, &[Matcher::equal("__name__", name)])
            .unwrap()
            .series
            .into_iter()
            .map(|s| (s.labels, s.samples.iter().map(|p| (p.t, p.v)).collect()))
            .collect()
    }

    fn scrape(
        c: &mut ScrapeCache,
        db: &Tsdb,
        cfg: &ScrapeConfig,
        body: &str,
        t: i64,
    ) -> Result<ScrapeStats, ScrapeError> {
        scrape_as(c, db, cfg, body, Format::PromText, t)
    }

    fn scrape_as(
        c: &mut ScrapeCache,
        db: &Tsdb,
        cfg: &ScrapeConfig,
        body: &str,
        format: Format,
        t: i64,
    ) -> Result<ScrapeStats, ScrapeError> {
        let tl = target();
        let ctx = ScrapeContext {
            cfg,
            target_labels: &tl,
        };
        c.append_body(db, &ctx, body.as_bytes(), format, t)
    }

    #[test]
    fn a_cached_series_is_validated_again_when_the_target_turns_to_openmetrics() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let cfg = cfg("");
        let mut c = ScrapeCache::default();
        // No comma between the labels: the text format takes it, OpenMetrics does not.
        let text = "m{a=\"1\" b=\"2\"} 1\nn{a=\"x\"} 2\n";
        scrape(&mut c, &db, &cfg, text, 1000).unwrap();
        scrape(&mut c, &db, &cfg, text, 2000).unwrap();
        let om = format!("{text}# EOF\n");
        let err = scrape_as(&mut c, &db, &cfg, &om, Format::OpenMetrics, 3000).unwrap_err();
        assert!(
            matches!(&err, ScrapeError::Parse(m) if m.contains("comma")),
            "{err:?}"
        );
        // A series that passed OpenMetrics's checks is then taken as known in both.
        let om = "n{a=\"x\"} 3\n# EOF\n";
        for (t, body, format) in [
            (4000, om, Format::OpenMetrics),
            (5000, om, Format::OpenMetrics),
            (6000, "n{a=\"x\"} 6\n", Format::PromText),
        ] {
            scrape_as(&mut c, &db, &cfg, body, format, t).unwrap();
        }
        let n = samples(&db, "n");
        assert_eq!(n[0].0.get("a"), Some("x"));
        let values: Vec<f64> = n[0].1.iter().map(|p| p.1).collect();
        assert_eq!(values, [2.0, 2.0, 3.0, 3.0, 6.0]);
        assert_eq!(samples(&db, "m")[0].1[..2], [(1000, 1.0), (2000, 1.0)]);
    }

    #[test]
    fn target_labels_win_unless_honor_labels() {
        let scraped =
            Labels::from_pairs(&[("__name__", "m"), ("job", "inner"), ("exported_job", "x")]);
        let l = apply_target_labels(scraped.clone(), &target(), false);
        assert_eq!(l.get("job"), Some("j"));
        assert_eq!(l.get("exported_exported_job"), Some("inner"));
        assert_eq!(l.get("instance"), Some("h:1"));
        let l = apply_target_labels(scraped, &target(), true);
        assert_eq!(l.get("job"), Some("inner"));
        assert_eq!(l.get("instance"), Some("h:1"));
    }

    #[test]
    fn vanished_series_get_a_staleness_marker_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let cfg = cfg("");
        let mut c = ScrapeCache::default();
        let s = scrape(&mut c, &db, &cfg, "a 1\nb 2\n", 1000).unwrap();
        assert_eq!((s.scraped, s.post_relabel, s.series_added), (2, 2, 2));
        let s = scrape(&mut c, &db, &cfg, "a 1\n", 2000).unwrap();
        assert_eq!(s.stale_markers, 1);
        let s = scrape(&mut c, &db, &cfg, "a 1\n", 3000).unwrap();
        assert_eq!(s.stale_markers, 0, "a marker is written once");
        let b = samples(&db, "b");
        assert_eq!(b[0].1.len(), 2);
        assert_eq!(b[0].1[0], (1000, 2.0));
        assert!(is_stale_nan(b[0].1[1].1));
        assert_eq!(b[0].0.get("job"), Some("j"));
        // It comes back later as a normal series.
        scrape(&mut c, &db, &cfg, "a 1\nb 5\n", 4000).unwrap();
        assert_eq!(samples(&db, "b")[0].1.last(), Some(&(4000, 5.0)));
    }

    #[test]
    fn a_failed_scrape_stores_nothing_and_marks_the_previous_series_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let cfg = cfg("    sample_limit: 2\n");
        let mut c = ScrapeCache::default();
        scrape(&mut c, &db, &cfg, "a 1\nb 2\n", 1000).unwrap();
        let err = scrape(&mut c, &db, &cfg, "a 1\nb 2\nc 3\n", 2000).unwrap_err();
        assert_eq!(err, ScrapeError::SampleLimit);
        assert!(
            samples(&db, "c").is_empty(),
            "nothing of the failed scrape stored"
        );
        assert_eq!(samples(&db, "a")[0].1, vec![(1000, 1.0)]);
        assert_eq!(c.mark_all_stale(&db, 2000).unwrap(), 2);
        assert!(is_stale_nan(samples(&db, "a")[0].1[1].1));
        // A malformed body fails the same way.
        let err = scrape(&mut c, &db, &cfg, "a 1\nb{ 2\n", 3000).unwrap_err();
        assert!(matches!(err, ScrapeError::Parse(_)), "{err:?}");
        assert_eq!(samples(&db, "a")[0].1.len(), 2);
        // The next good scrape starts over without extra markers.
        let s = scrape(&mut c, &db, &cfg, "a 1\n", 4000).unwrap();
        assert_eq!(s.stale_markers, 0);
    }

    #[test]
    fn duplicates_and_explicit_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let cfg = cfg("");
        let mut c = ScrapeCache::default();
        // The same series twice with different values: the second is a duplicate.
        let s = scrape(&mut c, &db, &cfg, "a 1\na 2\n", 1000).unwrap();
        assert_eq!(s.duplicate, 1);
        assert_eq!(samples(&db, "a")[0].1, vec![(1000, 1.0)]);
        // Explicit timestamps are honoured and out-of-order ones counted.
        let s = scrape(&mut c, &db, &cfg, "e 1 500\n", 2000).unwrap();
        assert_eq!(s.out_of_order, 0);
        let s = scrape(&mut c, &db, &cfg, "e 1 400\n", 3000).unwrap();
        assert_eq!(s.out_of_order, 1);
        assert_eq!(samples(&db, "e")[0].1, vec![(500, 1.0)]);
        // No staleness marker for a series with explicit timestamps.
        let s = scrape(&mut c, &db, &cfg, "a 1\n", 4000).unwrap();
        assert_eq!(s.stale_markers, 0);
        // honor_timestamps: false uses the scrape time.
        let cfg = self::cfg("    honor_timestamps: false\n");
        let mut c = ScrapeCache::default();
        scrape(&mut c, &db, &cfg, "f 1 500\n", 5000).unwrap();
        assert_eq!(samples(&db, "f")[0].1, vec![(5000, 1.0)]);
    }

    #[test]
    fn label_limits_fail_the_scrape() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let mut c = ScrapeCache::default();
        let cfg = cfg("    label_value_length_limit: 3\n");
        let err = scrape(&mut c, &db, &cfg, "a{x=\"long\"} 1\n", 1000).unwrap_err();
        assert!(
            err.to_string()
                .contains("label_value_length_limit exceeded"),
            "{err}"
        );
        let cfg = self::cfg("    label_name_length_limit: 3\n");
        let err = scrape(&mut c, &db, &cfg, "a{long=\"1\"} 1\n", 1000).unwrap_err();
        assert!(
            err.to_string().contains("label_name_length_limit exceeded"),
            "{err}"
        );
        assert!(samples(&db, "a").is_empty());
    }

    #[test]
    fn report_series_carry_target_labels() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(dir.path(), test_opts()).unwrap();
        let mut r = ReportCache::default();
        let stats = ScrapeStats {
            scraped: 3,
            post_relabel: 2,
            series_added: 1,
            ..ScrapeStats::default()
        };
        r.append_report(
            &db,
            &target(),
            1000,
            &Report {
                up: true,
                duration_seconds: 0.5,
                stats,
            },
        )
        .unwrap();
        let up = samples(&db, "up");
        assert_eq!(
            up[0].0,
            Labels::from_pairs(&[("__name__", "up"), ("instance", "h:1"), ("job", "j")])
        );
        assert_eq!(up[0].1, vec![(1000, 1.0)]);
        assert_eq!(
            samples(&db, "scrape_samples_post_metric_relabeling")[0].1,
            vec![(1000, 2.0)]
        );
        r.append_stale(&db, &target(), 2000).unwrap();
        assert!(is_stale_nan(samples(&db, "up")[0].1[1].1));
    }
}
