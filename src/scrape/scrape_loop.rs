//! The per-target actor: scrapes its target on a fixed phase of its interval and stores
//! the samples. The phase comes from the target's key alone, so a target keeps it when it
//! moves to another node.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use crate::config::ScrapeConfig;
use crate::discovery::Target;
use crate::model::Labels;
use crate::storage::Appendable;
use crate::telemetry::{JobLabels, JobReasonLabels, Metrics, TargetReasonLabels};

use super::ScrapeError;
use super::append::{Report, ReportCache, ScrapeCache, ScrapeContext, ScrapeStats};
use super::fetch;
use super::target::{SharedStatus, TargetHealth};

/// Bounds the scrapes being parsed and stored at once to the number of cores.
static PROCESSING: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
});

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Tolerance in ms within which a scrape's timestamp is moved to its scheduled instant
/// (`--scrape.timestamp-tolerance`; 0 when `--scrape.adjust-timestamps=false`). One
/// setting per process, as in Prometheus.
static TIMESTAMP_TOLERANCE_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(2);

/// Sets the timestamp tolerance (`None`: do not adjust timestamps).
pub fn set_timestamp_tolerance(tolerance: Option<Duration>) {
    let ms = tolerance.map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
    TIMESTAMP_TOLERANCE_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// The timestamp a scrape started at `now_ms` is recorded with: the target's scheduled
/// instant (`≡ key mod interval`) when `now_ms` is within `tolerance_ms` of it, else
/// `now_ms`. As Prometheus, only for intervals over 100 × the tolerance. The schedule
/// comes from the target's key alone, so every node records a target on one grid.
pub fn scrape_timestamp(key: u64, interval: Duration, now_ms: i64, tolerance_ms: i64) -> i64 {
    let iv = interval.as_millis().max(1) as i64;
    if tolerance_ms <= 0 || iv <= 100 * tolerance_ms {
        return now_ms;
    }
    let phase = (key % iv as u64) as i64;
    let off = (now_ms - phase).rem_euclid(iv);
    if off <= tolerance_ms {
        now_ms - off
    } else if iv - off <= tolerance_ms {
        now_ms + (iv - off)
    } else {
        now_ms
    }
}

/// Delay from `now_ms` until the next instant whose position within `interval` equals
/// the target's phase (`key % interval`). Always in `(0, interval]`.
pub fn delay_to_next_phase(key: u64, interval: Duration, now_ms: i64) -> Duration {
    let iv = interval.as_millis().max(1) as i64;
    let phase = (key % iv as u64) as i64;
    let pos = now_ms.rem_euclid(iv);
    let mut d = (phase - pos).rem_euclid(iv);
    if d == 0 {
        d = iv;
    }
    Duration::from_millis(d as u64)
}

/// Everything a scrape actor needs; fixed for its lifetime (a config change restarts it).
pub struct ScrapeActor {
    target: Target,
    target_labels: Labels,
    url: String,
    cfg: Arc<ScrapeConfig>,
    client: fetch::ScrapeClient,
    storage: Arc<dyn Appendable>,
    status: SharedStatus,
    metrics: Metrics,
    /// Taken while a scrape is in flight (scrapes of one target never overlap).
    caches: Option<(ScrapeCache, ReportCache)>,
    next: Option<SpawnHandle>,
    /// Set when a stop arrived during a scrape: finish it, then stop.
    stopping: Option<StopScrape>,
    /// Told once, after the first successful scrape (a target this node gained tells its
    /// previous owner it can stop).
    first_success: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ScrapeActor {
    pub fn new(
        target: Target,
        cfg: Arc<ScrapeConfig>,
        client: fetch::ScrapeClient,
        storage: Arc<dyn Appendable>,
        status: SharedStatus,
        metrics: Metrics,
    ) -> ScrapeActor {
        ScrapeActor {
            target_labels: target.output_labels(),
            url: target.url(),
            target,
            cfg,
            client,
            storage,
            status,
            metrics,
            caches: Some((ScrapeCache::default(), ReportCache::default())),
            next: None,
            stopping: None,
            first_success: None,
        }
    }

    /// Sends on `tx` after the first successful scrape.
    pub fn on_first_success(mut self, tx: tokio::sync::oneshot::Sender<()>) -> ScrapeActor {
        self.first_success = Some(tx);
        self
    }

    fn schedule_next(&mut self, ctx: &mut Context<Self>) {
        let delay = delay_to_next_phase(self.target.key(), self.cfg.scrape_interval, now_ms());
        self.next = Some(ctx.run_later(delay, |act, ctx| {
            act.scrape(ctx);
            act.schedule_next(ctx);
        }));
    }

    fn scrape(&mut self, ctx: &mut Context<Self>) {
        let Some((mut cache, mut report)) = self.caches.take() else {
            // The previous scrape is still running (it is bounded by the timeout).
            return;
        };
        let client = self.client.clone();
        let url = self.url.clone();
        let cfg = self.cfg.clone();
        let storage = self.storage.clone();
        let target_labels = self.target_labels.clone();
        let job = JobLabels {
            job: self.cfg.job_name.clone(),
        };
        self.metrics.scrapes_total.get_or_create(&job).inc();
        let (key, interval) = (self.target.key(), self.cfg.scrape_interval);
        let fut = async move {
            let tolerance = TIMESTAMP_TOLERANCE_MS.load(std::sync::atomic::Ordering::Relaxed);
            let t = scrape_timestamp(key, interval, now_ms(), tolerance);
            let start = Instant::now();
            let fetched = fetch::fetch(&client, &url, &cfg).await;
            // Parsing and storing are CPU and disk work: off the actor's thread, and at
            // most one per core at a time (more would not run faster; without the bound
            // a burst of targets would spawn a blocking thread each).
            let _permit = PROCESSING.acquire().await;
            tokio::task::spawn_blocking(move || {
                let res = fetched.and_then(|f| {
                    let ctx = ScrapeContext {
                        cfg: &cfg,
                        target_labels: &target_labels,
                    };
                    cache.append_body(storage.as_ref(), &ctx, &f.body, f.format, t)
                });
                let duration = start.elapsed();
                let stats = match &res {
                    Ok(s) => *s,
                    Err(_) => {
                        // As Prometheus: a failed scrape ends all its series.
                        if let Err(e) = cache.mark_all_stale(storage.as_ref(), t) {
                            tracing::warn!(error = %e, "writing staleness markers failed");
                        }
                        ScrapeStats::default()
                    }
                };
                let r = Report {
                    up: res.is_ok(),
                    duration_seconds: duration.as_secs_f64(),
                    stats,
                };
                let report_res = report.append_report(storage.as_ref(), &target_labels, t, &r);
                (
                    cache,
                    report,
                    res.and(report_res).map(|_| stats),
                    t,
                    duration,
                )
            })
            .await
        };
        ctx.spawn(fut.into_actor(self).map(|joined, act, ctx| {
            let (cache, report, res, t, duration) = match joined {
                Ok(v) => v,
                Err(e) => {
                    // The blocking task panicked: start over with fresh caches.
                    tracing::error!(target = %act.url, error = %e, "scrape task failed");
                    (
                        ScrapeCache::default(),
                        ReportCache::default(),
                        Err(ScrapeError::Storage(e.to_string())),
                        now_ms(),
                        Duration::ZERO,
                    )
                }
            };
            act.caches = Some((cache, report));
            act.record(res, t, duration);
            if let Some(stop) = act.stopping.take() {
                act.finish(stop, ctx);
            }
        }));
    }

    fn record(&mut self, res: Result<ScrapeStats, ScrapeError>, t: i64, duration: Duration) {
        let job = self.cfg.job_name.clone();
        self.metrics
            .scrape_duration_seconds
            .get_or_create(&JobLabels { job: job.clone() })
            .observe(duration.as_secs_f64());
        let mut st = match self.status.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        st.last_scrape = Some(UNIX_EPOCH + Duration::from_millis(t.max(0) as u64));
        st.last_scrape_duration = duration;
        match res {
            Ok(stats) => {
                if let Some(tx) = self.first_success.take() {
                    // The receiver may be gone (the manager stopped caring): nothing to do.
                    let _ = tx.send(());
                }
                st.health = TargetHealth::Up;
                st.last_error = stats.all_rejected().unwrap_or_default();
                let jl = JobLabels { job };
                if stats.duplicate > 0 {
                    self.metrics
                        .scrape_samples_duplicate_total
                        .get_or_create(&jl)
                        .inc_by(stats.duplicate);
                    tracing::warn!(target = %self.url, count = stats.duplicate, "error on ingesting samples with different value but same timestamp");
                }
                if stats.out_of_order > 0 {
                    self.metrics
                        .scrape_samples_out_of_order_total
                        .get_or_create(&jl)
                        .inc_by(stats.out_of_order);
                    tracing::warn!(target = %self.url, count = stats.out_of_order, "error on ingesting out-of-order samples");
                }
                for (n, reason) in [
                    (stats.out_of_bounds, "too_old"),
                    (stats.too_far_in_future, "too_far_in_future"),
                ] {
                    if n == 0 {
                        continue;
                    }
                    let labels = TargetReasonLabels {
                        job: jl.job.clone(),
                        instance: self.target_labels.get("instance").unwrap_or("").to_string(),
                        reason: reason.to_string(),
                    };
                    self.metrics
                        .scrape_samples_out_of_bounds_total
                        .get_or_create(&labels)
                        .inc_by(n);
                    tracing::warn!(target = %self.url, count = n, reason, "error on ingesting samples that are too old or are too far into the future");
                }
            }
            Err(e) => {
                st.health = TargetHealth::Down;
                st.last_error = e.to_string();
                self.metrics
                    .scrape_failures_total
                    .get_or_create(&JobReasonLabels {
                        job,
                        reason: e.reason().to_string(),
                    })
                    .inc();
                tracing::debug!(target = %self.url, error = %e, "scrape failed");
            }
        }
    }

    fn finish(&mut self, stop: StopScrape, ctx: &mut Context<Self>) {
        if stop.stale
            && let Some((cache, report)) = self.caches.as_mut()
        {
            let t = now_ms();
            if let Err(e) = cache.mark_all_stale(self.storage.as_ref(), t) {
                tracing::warn!(target = %self.url, error = %e, "writing staleness markers failed");
            }
            if let Err(e) = report.append_stale(self.storage.as_ref(), &self.target_labels, t) {
                tracing::warn!(target = %self.url, error = %e, "writing staleness markers failed");
            }
        }
        ctx.stop();
    }
}

impl Actor for ScrapeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(target = %self.url, job = %self.cfg.job_name, "scrape loop started");
        self.schedule_next(ctx);
    }
}

/// Stops a scrape actor. With `stale`, staleness markers are written for the target's
/// series (the target left discovery); without, the series simply stop (shutdown, or a
/// config change that restarts the loop).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopScrape {
    pub stale: bool,
}

impl Handler<StopScrape> for ScrapeActor {
    type Result = ();

    fn handle(&mut self, msg: StopScrape, ctx: &mut Context<Self>) {
        if let Some(h) = self.next.take() {
            ctx.cancel_future(h);
        }
        if self.caches.is_none() {
            // A scrape is in flight; finish it first so its samples and markers order.
            self.stopping = Some(msg);
        } else {
            self.finish(msg, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_depends_on_key_only() {
        let iv = Duration::from_secs(15);
        let key = 123_456_789u64;
        let phase = (key % 15_000) as i64;
        for now in [0i64, 1, 7_000, 14_999, 1_700_000_000_123] {
            let d = delay_to_next_phase(key, iv, now).as_millis() as i64;
            assert!(d > 0 && d <= 15_000);
            assert_eq!((now + d).rem_euclid(15_000), phase, "now={now}");
        }
    }

    #[test]
    fn scrape_timestamps_snap_to_the_schedule_within_the_tolerance() {
        let iv = Duration::from_secs(15);
        let key = 123_456_789u64;
        let at =
            1_700_000_000_000i64 - 1_700_000_000_000i64.rem_euclid(15_000) + (key % 15_000) as i64;
        for (now, want) in [
            (at, at),
            (at + 1, at),
            (at + 2, at),
            (at + 3, at + 3),
            (at - 2, at),
            (at - 3, at - 3),
            (at + 15_000 + 1, at + 15_000),
        ] {
            assert_eq!(
                scrape_timestamp(key, iv, now, 2),
                want,
                "now = at{:+}",
                now - at
            );
        }
        // Off, or an interval too short for the tolerance (as Prometheus: ≤ 100×).
        assert_eq!(scrape_timestamp(key, iv, at + 1, 0), at + 1);
        let short = Duration::from_millis(200);
        let at = 1_700_000_000_000i64 - 1_700_000_000_000i64.rem_euclid(200) + (key % 200) as i64;
        assert_eq!(scrape_timestamp(key, short, at + 1, 2), at + 1);
    }
}
