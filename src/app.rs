//! The composition root: opens the TSDB, starts discovery, the scrape manager and the
//! HTTP server, wires reloads and signals, and shuts everything down in order
//! (HTTP → scrapes → TSDB flush). Also the small CLI commands (`check`, `promql-test`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use anyhow::Context as _;

use crate::cli::{CheckCommand, Cli, Command, RunArgs};
use crate::config::{self, Config};
use crate::discovery::DiscoveryManager;
use crate::promql::EngineOptions;
use crate::scrape::ScrapeManager;
use crate::scrape::manager::{ApplyConfig, ApplyTargetGroups, StopAll};
use crate::storage::{Appendable, Queryable};
use crate::telemetry::{self, Metrics};
use crate::tsdb::{Tsdb, TsdbOptions};
use crate::web::{self, AppState, ReloadFn};

/// Runs the command the user gave.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(cli.log_format, &cli.log_level);
    match cli.command {
        Command::Run(args) => {
            run_until_signal(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run(args),
        Command::Check {
            what: CheckCommand::Config { files },
        } => Ok(check_config(&files)),
        Command::PromqlTest { files } => {
            let mut out = std::io::stdout();
            let summary = crate::promql::test_script::run_files(&files, &mut out);
            Ok(if summary.failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        println!("Checking {}", f.display());
        match config::check_config_file(f) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                ok = false;
                println!("  FAILED: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs a node in a new actix system until SIGINT or SIGTERM.
pub fn run_until_signal(args: RunArgs) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let node = Node::start(args).await?;
        wait_for_shutdown_signal().await;
        node.stop().await;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
    }
}

/// A running node.
pub struct Node {
    pub addrs: Vec<SocketAddr>,
    server: actix_web::dev::ServerHandle,
    manager: Addr<ScrapeManager>,
    discovery: Arc<DiscoveryManager>,
    tsdb: Tsdb,
}

fn flags_map(args: &RunArgs) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("config.file".into(), args.config.display().to_string());
    m.insert(
        "storage.tsdb.path".into(),
        args.data_dir.display().to_string(),
    );
    m.insert("web.listen-address".into(), args.listen.clone());
    m.insert(
        "storage.tsdb.retention.time".into(),
        crate::model::duration::format(args.retention),
    );
    m.insert(
        "query.timeout".into(),
        crate::model::duration::format(args.query_timeout),
    );
    m.insert(
        "query.max-samples".into(),
        args.query_max_samples.to_string(),
    );
    m.insert(
        "query.lookback-delta".into(),
        crate::model::duration::format(args.query_lookback_delta),
    );
    m.insert(
        "query.max-concurrency".into(),
        args.query_max_concurrency.to_string(),
    );
    m
}

impl Node {
    /// Starts a node on the current actix system.
    pub async fn start(args: RunArgs) -> anyhow::Result<Node> {
        let cfg =
            Arc::new(config::load_file(&args.config).with_context(|| {
                format!("loading configuration file {}", args.config.display())
            })?);
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        let data_dir = args.data_dir.clone();
        let retention = args.retention;
        let tsdb = tokio::task::spawn_blocking(move || {
            Tsdb::open(
                &data_dir,
                TsdbOptions {
                    retention,
                    ..TsdbOptions::default()
                },
            )
        })
        .await
        .context("opening the TSDB")?
        .with_context(|| format!("opening the TSDB in {}", args.data_dir.display()))?;
        tracing::info!(dir = %args.data_dir.display(), "TSDB opened");

        let metrics = Metrics::new();
        metrics.register_collector(Box::new(TsdbCollector(tsdb.clone())));
        let appendable: Arc<dyn Appendable> = Arc::new(tsdb.clone());
        let queryable: Arc<dyn Queryable> = Arc::new(tsdb.clone());

        let manager = ScrapeManager::new(appendable, metrics.clone(), cfg.clone());
        let targets = manager.view();
        let manager = manager.start();
        manager.do_send(ApplyConfig(cfg.clone()));

        let discovery = Arc::new(DiscoveryManager::start(&cfg));
        let mut groups = discovery.subscribe();
        let mgr = manager.clone();
        actix::spawn(async move {
            loop {
                let g = groups.borrow_and_update().clone();
                mgr.do_send(ApplyTargetGroups(g));
                if groups.changed().await.is_err() {
                    break;
                }
            }
        });

        let config_lock = Arc::new(RwLock::new(cfg.clone()));
        let reload: ReloadFn = {
            let path = args.config.clone();
            let config_lock = config_lock.clone();
            let manager = manager.clone();
            let discovery = discovery.clone();
            let metrics = metrics.clone();
            Arc::new(move || reload_config(&path, &config_lock, &manager, &discovery, &metrics))
        };
        metrics.config_last_reload_successful.set(1);

        let ready = Arc::new(AtomicBool::new(false));
        let state = AppState {
            storage: queryable,
            engine_opts: EngineOptions {
                lookback_delta: args.query_lookback_delta,
                timeout: args.query_timeout,
                max_samples: args.query_max_samples,
                default_subquery_step: cfg.global.evaluation_interval,
            },
            query_slots: Arc::new(tokio::sync::Semaphore::new(
                args.query_max_concurrency.max(1),
            )),
            targets,
            config: config_lock,
            reload: reload.clone(),
            metrics,
            flags: flags_map(&args),
            ready: ready.clone(),
        };
        let (server, addrs) = web::serve(state, &args.listen)
            .with_context(|| format!("listening on {}", args.listen))?;
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        spawn_sighup_reloader(reload);
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(listen = ?addrs, "shoal is ready");
        Ok(Node {
            addrs,
            server: handle,
            manager,
            discovery,
            tsdb,
        })
    }

    /// Stops serving and scraping, then flushes the TSDB.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.manager.send(StopAll).await;
        drop(self.discovery);
        let tsdb = self.tsdb.clone();
        match tokio::task::spawn_blocking(move || tsdb.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "closing the TSDB failed"),
            Err(e) => tracing::error!(error = %e, "closing the TSDB failed"),
        }
        tracing::info!("shoal stopped");
    }
}

fn reload_config(
    path: &Path,
    lock: &RwLock<Arc<Config>>,
    manager: &Addr<ScrapeManager>,
    discovery: &DiscoveryManager,
    metrics: &Metrics,
) -> Result<(), String> {
    metrics.config_reloads_total.inc();
    match config::load_file(path) {
        Ok(cfg) => {
            let cfg = Arc::new(cfg);
            match lock.write() {
                Ok(mut g) => *g = cfg.clone(),
                Err(p) => *p.into_inner() = cfg.clone(),
            }
            discovery.update_config(&cfg);
            manager.do_send(ApplyConfig(cfg));
            metrics.config_last_reload_successful.set(1);
            tracing::info!(file = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            metrics.config_reload_failures_total.inc();
            metrics.config_last_reload_successful.set(0);
            tracing::error!(file = %path.display(), error = %e, "configuration reload failed; keeping the running configuration");
            Err(e.to_string())
        }
    }
}

fn spawn_sighup_reloader(reload: ReloadFn) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
            return;
        }
    };
    actix::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("received SIGHUP, reloading configuration");
            let f = reload.clone();
            let _ = tokio::task::spawn_blocking(move || f()).await;
        }
    });
}

/// Exposes the TSDB's counters on `/metrics`.
struct TsdbCollector(Tsdb);

impl std::fmt::Debug for TsdbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TsdbCollector")
    }
}

impl prometheus_client::collector::Collector for TsdbCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = self.0.stats();
        let counters: [(&str, &str, u64); 8] = [
            (
                "tsdb_samples_appended",
                "Samples appended to the TSDB",
                s.samples_appended_total,
            ),
            (
                "tsdb_out_of_order_samples",
                "Samples rejected as out of order",
                s.out_of_order_samples_total,
            ),
            (
                "tsdb_duplicate_samples",
                "Samples rejected as duplicates with another value",
                s.duplicate_samples_total,
            ),
            (
                "tsdb_out_of_bounds_samples",
                "Samples rejected as too old",
                s.out_of_bounds_samples_total,
            ),
            (
                "tsdb_wal_records_written",
                "WAL records written",
                s.wal_records_total,
            ),
            (
                "tsdb_chunks_sealed",
                "Chunks sealed into sled",
                s.chunks_sealed_total,
            ),
            (
                "tsdb_wal_written_bytes",
                "Bytes written to the WAL",
                s.wal_bytes_total,
            ),
            (
                "tsdb_series_created",
                "Series created",
                s.series_created_total,
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges: [(&str, &str, i64); 3] = [
            (
                "tsdb_head_series",
                "Series in the head",
                s.head_series as i64,
            ),
            (
                "tsdb_head_chunks",
                "Open chunks in the head",
                s.head_chunks as i64,
            ),
            (
                "tsdb_storage_bytes",
                "Size of the sled database on disk",
                s.disk_size_bytes as i64,
            ),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
