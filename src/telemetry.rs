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
/// `RUST_LOG` overrides it when set. Colours only on a terminal: logs that go to a file
/// or journald stay plain `key=value` text.
pub fn init_logging(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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

/// Labels of per-target rejection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetReasonLabels {
    pub job: String,
    pub instance: String,
    pub reason: String,
}

/// Labels of HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: String,
    pub code: String,
}

/// Labels of refusal metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of import request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImportRequestLabels {
    /// `drain` (a leaving member's chunks) or `backfill` (`shoal tsdb import`: the
    /// admin route, and the shares other nodes forward).
    pub source: String,
    /// `ok` or `error`.
    pub result: String,
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
    pub scrape_samples_out_of_bounds_total: Family<TargetReasonLabels, Counter>,
    pub targets_active: Family<JobLabels, Gauge>,
    pub targets_gained_total: Counter,
    pub targets_lost_total: Counter,
    pub targets_handed_off_total: Counter,
    pub scrape_actor_restarts_total: Counter,
    pub config_reloads_total: Counter,
    pub config_reload_failures_total: Counter,
    pub config_last_reload_successful: Gauge,
    pub http_requests_total: Family<HandlerLabels, Counter>,
    pub peer_requests_refused_total: Family<ReasonLabels, Counter>,
    pub queries_total: Counter,
    pub query_failures_total: Family<JobReasonLabels, Counter>,
    pub import_requests_total: Family<ImportRequestLabels, Counter>,
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
            targets_gained_total: Counter::default(),
            targets_lost_total: Counter::default(),
            targets_handed_off_total: Counter::default(),
            scrape_actor_restarts_total: Counter::default(),
            config_reloads_total: Counter::default(),
            config_reload_failures_total: Counter::default(),
            config_last_reload_successful: Gauge::default(),
            http_requests_total: Family::default(),
            peer_requests_refused_total: Family::default(),
            queries_total: Counter::default(),
            query_failures_total: Family::default(),
            import_requests_total: Family::default(),
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
            "Samples dropped for their timestamp, by target and reason (too_old: older than the head accepts; too_far_in_future: beyond --storage.tsdb.max-future)",
            m.scrape_samples_out_of_bounds_total.clone(),
        );
        registry.register(
            "targets_active",
            "Targets scraped by this node",
            m.targets_active.clone(),
        );
        registry.register(
            "scrape_targets_gained",
            "Discovered targets this node started owning after an assignment change",
            m.targets_gained_total.clone(),
        );
        registry.register(
            "scrape_targets_lost",
            "Discovered targets this node stopped owning after an assignment change",
            m.targets_lost_total.clone(),
        );
        registry.register(
            "scrape_targets_handed_off",
            "Moved targets this node kept scraping until the new owner had scraped them",
            m.targets_handed_off_total.clone(),
        );
        registry.register(
            "scrape_actor_restarts",
            "Scrape actors that died (a panic) and were started again by the scrape manager",
            m.scrape_actor_restarts_total.clone(),
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
            "peer_requests_refused",
            "Requests to the internal (node-to-node) routes refused before their body was read, by reason (unauthorized, too_large, unknown_route, wrong_method)",
            m.peer_requests_refused_total.clone(),
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
        registry.register(
            "tsdb_import_requests",
            "Historical import requests this node handled, by source (drain: a leaving member's chunks; backfill: shoal tsdb import, through this node or forwarded to it) and result",
            m.import_requests_total.clone(),
        );
        for source in ["drain", "backfill"] {
            for ok in [true, false] {
                let _ = m
                    .import_requests_total
                    .get_or_create(&import_labels(source, ok));
            }
        }
        *m.registry.lock().expect("metrics registry lock poisoned") = registry;
        m
    }

    /// Counts one import request (`shoal_tsdb_import_requests_total`).
    pub fn count_import_request(&self, source: &str, ok: bool) {
        self.import_requests_total
            .get_or_create(&import_labels(source, ok))
            .inc();
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

fn import_labels(source: &str, ok: bool) -> ImportRequestLabels {
    ImportRequestLabels {
        source: source.to_owned(),
        result: if ok { "ok" } else { "error" }.to_owned(),
    }
}

/// The latest [`crate::cluster::ClusterStatus`], refreshed by the node (about every
/// second) and read by [`RaftCollector`] (collectors are synchronous; the status is not).
#[derive(Clone, Default)]
pub struct ClusterStatusCache(Arc<std::sync::Mutex<Option<crate::cluster::ClusterStatus>>>);

impl ClusterStatusCache {
    pub fn set(&self, st: crate::cluster::ClusterStatus) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
    }

    pub fn get(&self) -> Option<crate::cluster::ClusterStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Exposes the query fan-out's counters on `/metrics` (`shoal_query_*`).
pub struct FanOutCollector(pub crate::query::ClusterQueryable);

impl std::fmt::Debug for FanOutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FanOutCollector")
    }
}

impl prometheus_client::collector::Collector for FanOutCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let (pushed, fallbacks) = self.0.pushdown_counts();
        let counters: [(&str, &str, u64); 3] = [
            (
                "query_member_response_bytes",
                "Bytes of answers received from other members for reads of this node",
                self.0.bytes_received(),
            ),
            (
                "query_pushdowns",
                "Aggregations answered by pushdown (members aggregated their own series)",
                pushed,
            ),
            (
                "query_pushdown_fallbacks",
                "Pushdown attempts evaluated normally instead (series on several members)",
                fallbacks,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

/// Raft and membership metrics on `/metrics` (`shoal_cluster_*`): term, leader
/// changes, commit and applied index, apply lag, leadership, members by state.
#[derive(Debug)]
pub struct RaftCollector {
    cache: ClusterStatusCache,
}

impl std::fmt::Debug for ClusterStatusCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterStatusCache")
    }
}

impl RaftCollector {
    pub fn new(cache: ClusterStatusCache) -> RaftCollector {
        RaftCollector { cache }
    }
}

/// Labels of the members gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    state: String,
    role: String,
}

impl prometheus_client::collector::Collector for RaftCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::cluster::{MemberRole, MemberState};
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some(st) = self.cache.get() else {
            return Ok(());
        };
        let commit = st.commit_index.unwrap_or(0);
        let applied = st.applied_index.unwrap_or(0);
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let gauges: [(&str, &str, i64); 8] = [
            ("cluster_raft_term", "Current Raft term", as_i64(st.term)),
            (
                "cluster_raft_commit_index",
                "Highest Raft log index known committed",
                as_i64(commit),
            ),
            (
                "cluster_raft_applied_index",
                "Highest Raft log index applied to the state machine",
                as_i64(applied),
            ),
            (
                "cluster_raft_apply_lag",
                "Committed Raft entries not yet applied",
                as_i64(commit.saturating_sub(applied)),
            ),
            (
                "cluster_raft_is_leader",
                "1 when this node is the Raft leader",
                i64::from(st.leader_id == Some(st.node_id)),
            ),
            (
                "cluster_raft_has_leader",
                "1 when this node knows a leader",
                i64::from(st.leader_id.is_some()),
            ),
            (
                "cluster_membership_view_index",
                "Raft log index of the committed membership view",
                as_i64(st.view_index),
            ),
            (
                "cluster_rule_batches_pending",
                "Committed global rule batches not yet durable in this node's store (retried)",
                as_i64(st.pending_rule_batches as u64),
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let c = ConstCounter::new(st.leader_changes);
        c.encode(enc.encode_descriptor(
            "cluster_raft_leader_changes",
            "Leader changes this node has seen since it started",
            None,
            c.metric_type(),
        )?)?;
        let mut family = enc.encode_descriptor(
            "cluster_members",
            "Cluster members by committed state and role",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for state in [MemberState::Up, MemberState::Down] {
            for role in [MemberRole::Voter, MemberRole::Learner] {
                let n = st
                    .members
                    .iter()
                    .filter(|m| m.state == state && m.role == role)
                    .count();
                let labels = MemberLabels {
                    state: if state == MemberState::Up {
                        "up"
                    } else {
                        "down"
                    }
                    .into(),
                    role: if role == MemberRole::Voter {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                };
                let g = ConstGauge::new(n as i64);
                g.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
