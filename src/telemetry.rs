//! Logging set-up (tracing) and shoal's own metrics (prometheus-client), served on
//! `/metrics`. Metrics that other parts keep themselves (the TSDB's counters) are read
//! through [`prometheus_client::collector::Collector`]s registered at start-up.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cli::LogFormat;

/// Installs the global tracing subscriber. `level` is a level or an `EnvFilter` directive;
/// `RUST_LOG` overrides it when set.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Logfmt => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) is harmless.
    let _ = res;
}

/// Labels of per-job scrape metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: String,
}

/// Labels of per-job failure metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobReasonLabels {
    pub job: String,
    pub reason: String,
}

/// Labels of HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: String,
    pub code: String,
}

/// shoal's own metrics. Cheap to clone (every field is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<std::sync::Mutex<Registry>>,
    pub scrapes_total: Family<JobLabels, Counter>,
    pub scrape_failures_total: Family<JobReasonLabels, Counter>,
    pub scrape_duration_seconds: Family<JobLabels, Histogram>,
    pub scrape_samples_duplicate_total: Family<JobLabels, Counter>,
    pub scrape_samples_out_of_order_total: Family<JobLabels, Counter>,
    pub scrape_samples_out_of_bounds_total: Family<JobLabels, Counter>,
    pub targets_active: Family<JobLabels, Gauge>,
    pub config_reloads_total: Counter,
    pub config_reload_failures_total: Counter,
    pub config_last_reload_successful: Gauge,
    pub http_requests_total: Family<HandlerLabels, Counter>,
    pub queries_total: Counter,
    pub query_failures_total: Family<JobReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shoal");
        let m = Metrics {
            registry: Arc::new(std::sync::Mutex::new(Registry::default())),
            scrapes_total: Family::default(),
            scrape_failures_total: Family::default(),
            scrape_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
            }),
            scrape_samples_duplicate_total: Family::default(),
            scrape_samples_out_of_order_total: Family::default(),
            scrape_samples_out_of_bounds_total: Family::default(),
            targets_active: Family::default(),
            config_reloads_total: Counter::default(),
            config_reload_failures_total: Counter::default(),
            config_last_reload_successful: Gauge::default(),
            http_requests_total: Family::default(),
            queries_total: Counter::default(),
            query_failures_total: Family::default(),
        };
        registry.register("scrapes", "Scrapes attempted", m.scrapes_total.clone());
        registry.register(
            "scrape_failures",
            "Scrapes that failed, by reason",
            m.scrape_failures_total.clone(),
        );
        registry.register(
            "scrape_duration_seconds",
            "Duration of scrapes",
            m.scrape_duration_seconds.clone(),
        );
        registry.register(
            "scrape_samples_duplicate_timestamp",
            "Samples dropped because a sample with the same timestamp and another value exists",
            m.scrape_samples_duplicate_total.clone(),
        );
        registry.register(
            "scrape_samples_out_of_order",
            "Samples dropped because they were older than the series' newest sample",
            m.scrape_samples_out_of_order_total.clone(),
        );
        registry.register(
            "scrape_samples_out_of_bounds",
            "Samples dropped because they were too old for the head",
            m.scrape_samples_out_of_bounds_total.clone(),
        );
        registry.register(
            "targets_active",
            "Targets scraped by this node",
            m.targets_active.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads",
            m.config_reloads_total.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Configuration reloads that were rejected",
            m.config_reload_failures_total.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration reload succeeded",
            m.config_last_reload_successful.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by handler and status code",
            m.http_requests_total.clone(),
        );
        registry.register(
            "queries",
            "PromQL queries evaluated",
            m.queries_total.clone(),
        );
        registry.register(
            "query_failures",
            "PromQL queries that failed, by reason",
            m.query_failures_total.clone(),
        );
        *m.registry.lock().expect("metrics registry lock poisoned") = registry;
        m
    }

    /// Adds a collector whose metrics are read at every `/metrics` request.
    pub fn register_collector(&self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .expect("metrics registry lock poisoned")
            .register_collector(c);
    }

    /// Renders all metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self
            .registry
            .lock()
            .expect("metrics registry lock poisoned");
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
