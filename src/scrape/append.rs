//! Turning one scrape body into stored samples: parse → target labels → metric
//! relabelling → limits → storage, with the per-target series cache and staleness
//! tracking. Plain functions over a [`ScrapeCache`]; the actor calls them on a blocking
//! thread.

use std::collections::HashMap;

use crate::config::ScrapeConfig;
use crate::model::relabel;
use crate::model::textparse::{Entry, Format, Parser};
use crate::model::{Labels, stale_nan};
use crate::storage::{AppendError, Appendable, Appender, SeriesRef};

use super::ScrapeError;

/// What the cache knows about one exposed series (keyed by its raw text).
#[derive(Debug, Clone)]
struct CacheEntry {
    /// `None` when metric relabelling dropped the series.
    series: Option<CachedSeries>,
    /// Scrape iteration in which the series was last seen.
    last_iter: u64,
    /// Whether the last sample had an explicit timestamp (no staleness tracking then).
    explicit_ts: bool,
}

#[derive(Debug, Clone)]
struct CachedSeries {
    labels: Labels,
    sref: Option<SeriesRef>,
}

/// The per-target cache: raw series text → final labels and storage ref. Known series
/// skip label building and relabelling; it also tracks which series the previous scrape
/// had, for staleness markers.
#[derive(Debug, Default)]
pub struct ScrapeCache {
    entries: HashMap<Box<[u8]>, CacheEntry>,
    iter: u64,
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
    pub out_of_bounds: u64,
    pub stale_markers: u64,
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

/// Appends one sample, falling back from the cached ref to the labels when the store has
/// forgotten the ref. Per-sample rejections are counted in `stats`, not returned.
fn append_one(
    app: &mut dyn Appender,
    series: &mut CachedSeries,
    t: i64,
    v: f64,
    stats: &mut ScrapeStats,
) -> Result<(), ScrapeError> {
    let res = match series.sref {
        Some(r) => match app.append_ref(r, t, v) {
            Err(AppendError::UnknownRef(_)) => app.append(&series.labels, t, v).map(|r| {
                series.sref = Some(r);
            }),
            other => other,
        },
        None => app.append(&series.labels, t, v).map(|r| {
            series.sref = Some(r);
        }),
    };
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
        Err(AppendError::InvalidLabels(e)) => Err(ScrapeError::Parse(e)),
        Err(e @ (AppendError::UnknownRef(_) | AppendError::Storage(_))) => {
            Err(ScrapeError::Storage(e.to_string()))
        }
    }
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
        let iter = self.iter + 1;
        let mut stats = ScrapeStats::default();
        // New entries are staged so that a failed scrape leaves the cache untouched.
        let mut staged: Vec<(Box<[u8]>, CacheEntry)> = Vec::new();
        let mut touched: Vec<Box<[u8]>> = Vec::new();
        let res = self.append_entries(
            app.as_mut(),
            ctx,
            body,
            format,
            t,
            iter,
            &mut stats,
            &mut staged,
            &mut touched,
        );
        if let Err(e) = res {
            app.rollback();
            return Err(e);
        }
        let prev_iter = self.iter;
        for key in &touched {
            if let Some(e) = self.entries.get_mut(key) {
                e.last_iter = iter;
            }
        }
        for (k, e) in staged {
            self.entries.insert(k, e);
        }
        // Series seen by the previous scrape but not by this one get a staleness marker.
        for e in self.entries.values_mut() {
            if e.last_iter == prev_iter
                && prev_iter > 0
                && !e.explicit_ts
                && let Some(s) = e.series.as_mut()
            {
                append_one(app.as_mut(), s, t, stale_nan(), &mut stats)?;
                stats.stale_markers += 1;
            }
        }
        let commit = app
            .commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        stats.series_added = commit.series_created;
        self.iter = iter;
        // Forget series not seen for a while (they were marked stale already).
        self.entries.retain(|_, e| e.last_iter + 2 >= iter);
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
        iter: u64,
        stats: &mut ScrapeStats,
        staged: &mut Vec<(Box<[u8]>, CacheEntry)>,
        touched: &mut Vec<Box<[u8]>>,
    ) -> Result<(), ScrapeError> {
        let cfg = ctx.cfg;
        let mut parser = Parser::new(body, format);
        let mut staged_index: HashMap<Box<[u8]>, usize> = HashMap::new();
        loop {
            let entry = match parser.next() {
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
            if let Some(e) = self.entries.get_mut(s.raw) {
                if e.last_iter == iter {
                    // The same series twice in one scrape: the store decides (equal
                    // value is a no-op, another value a duplicate).
                } else {
                    touched.push(s.raw.into());
                }
                e.explicit_ts = explicit;
                let Some(series) = e.series.as_mut() else {
                    continue;
                };
                stats.post_relabel += 1;
                if cfg.sample_limit > 0 && stats.post_relabel > cfg.sample_limit {
                    return Err(ScrapeError::SampleLimit);
                }
                append_one(app, series, ts, s.value, stats)?;
                continue;
            }
            if let Some(&i) = staged_index.get(s.raw) {
                let e = &mut staged[i].1;
                let Some(series) = e.series.as_mut() else {
                    continue;
                };
                stats.post_relabel += 1;
                if cfg.sample_limit > 0 && stats.post_relabel > cfg.sample_limit {
                    return Err(ScrapeError::SampleLimit);
                }
                append_one(app, series, ts, s.value, stats)?;
                continue;
            }
            // A series new to this target: build its labels once.
            let labels = apply_target_labels(s.labels(), ctx.target_labels, cfg.honor_labels);
            let labels = relabel::process(&labels, &cfg.metric_relabel_configs);
            let mut entry = CacheEntry {
                series: None,
                last_iter: iter,
                explicit_ts: explicit,
            };
            if let Some(labels) = labels {
                check_label_limits(&labels, cfg)?;
                stats.post_relabel += 1;
                if cfg.sample_limit > 0 && stats.post_relabel > cfg.sample_limit {
                    return Err(ScrapeError::SampleLimit);
                }
                let mut series = CachedSeries { labels, sref: None };
                append_one(app, &mut series, ts, s.value, stats)?;
                entry.series = Some(series);
            }
            staged_index.insert(s.raw.into(), staged.len());
            staged.push((s.raw.into(), entry));
        }
        Ok(())
    }

    /// Writes a staleness marker at `t` for every series of the previous scrape (a failed
    /// scrape, or the target left discovery), and forgets them.
    pub fn mark_all_stale(&mut self, storage: &dyn Appendable, t: i64) -> Result<u64, ScrapeError> {
        let mut app = storage.appender();
        let mut stats = ScrapeStats::default();
        let prev = self.iter;
        for e in self.entries.values_mut() {
            if e.last_iter == prev
                && prev > 0
                && !e.explicit_ts
                && let Some(s) = e.series.as_mut()
            {
                append_one(app.as_mut(), s, t, stale_nan(), &mut stats)?;
                stats.stale_markers += 1;
            }
        }
        app.commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        // The next successful scrape starts a fresh generation: nothing is "previous".
        self.iter += 1;
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

/// Report series with their cached refs.
#[derive(Debug, Default)]
pub struct ReportCache {
    series: Vec<CachedSeries>,
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
                CachedSeries {
                    labels: b.build(),
                    sref: None,
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
            append_one(app.as_mut(), s, t, *v, &mut stats)?;
        }
        app.commit()
            .map_err(|e| ScrapeError::Storage(e.to_string()))?;
        Ok(())
    }
}
