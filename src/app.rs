//! The composition root: opens the TSDB, starts discovery, the scrape manager, the
//! cluster member and the HTTP server, wires reloads and signals, and shuts everything
//! down in order (HTTP → cluster → scrapes → TSDB flush). Also the small CLI commands
//! (`check`, `promql-test`, `cluster status|leave|remove`).
//!
//! Signals: SIGINT stops the node and keeps its cluster identity (a restart rejoins
//! with the same id and log, like a crash). SIGTERM is a graceful leave: the node
//! announces it is leaving, moves its samples to their new owners ([`crate::drain`]),
//! leaves the membership, stops, and wipes its cluster state (not its samples), so a
//! restart joins as a new member (a node killed mid-drain keeps its identity and
//! resumes the drain when it starts again). `POST /api/v1/cluster/leave` does the same as SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix::prelude::*;
use anyhow::Context as _;

use crate::cli::{CheckCommand, Cli, Command, RunArgs};
use crate::cluster::{ClusterData, ClusterHandle, ClusterOptions};
use crate::config::{self, Config};
use crate::discovery::DiscoveryManager;
use crate::promql::EngineOptions;
use crate::query;
use crate::rules::{self, RuleManager};
use crate::scrape::ScrapeManager;
use crate::scrape::manager::{
    ApplyConfig, ApplyMembership, ApplyTargetGroups, HandoffDone, Membership, SetPeerClient,
    StopAll,
};
use crate::storage::{Appendable, Queryable};
use crate::telemetry::{self, Metrics};
use crate::tsdb::{Tsdb, TsdbOptions};
use crate::web::{self, AppState, ReloadFn};

/// Runs the command the user gave.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    // The demo's own terminal is for its banner: keep the fleet's server chatter out.
    let level = match &cli.command {
        Command::Demo(_) if cli.log_level == "info" => "info,actix_server=warn",
        _ => cli.log_level.as_str(),
    };
    telemetry::init_logging(cli.log_format, level);
    // Before any HTTP client (reqwest) or TLS listener exists.
    crate::tls::install_crypto_provider();
    match cli.command {
        Command::Run(args) => {
            run_until_signal(*args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => crate::demo::run(args),
        Command::Check {
            what: CheckCommand::Config { files },
        } => Ok(check_config(&files)),
        Command::Check {
            what: CheckCommand::WebConfig { files },
        } => Ok(check_web_config(&files)),
        Command::Cluster { what } => crate::ctl::cluster_command(what),
        Command::Tsdb {
            what: crate::cli::TsdbCommand::Check { dir, repair },
        } => tsdb_check(&dir, repair),
        Command::Tsdb {
            what: crate::cli::TsdbCommand::Import { format },
        } => crate::ctl::tsdb_import(format),
        Command::Fleet(args) => crate::demo::run_fleet(args),
        Command::Healthcheck { url, timeout } => Ok(crate::ctl::healthcheck(&url, timeout)),
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

/// `shoal tsdb check DIR [--repair]`.
fn tsdb_check(dir: &std::path::Path, repair: bool) -> anyhow::Result<ExitCode> {
    let r = crate::tsdb::check::check(dir, repair)
        .with_context(|| format!("checking {} (is its node stopped?)", dir.display()))?;
    let mut problems = r.problems;
    let cluster = dir.join("cluster");
    if cluster.exists() {
        let db = crate::storage::sled_open::open_path(&cluster)
            .with_context(|| format!("opening {}", cluster.display()))?;
        if let Some((key, why)) = crate::cluster::log_store::LogStore::check(&db)? {
            problems.push(format!(
                "raft log entry {key}: {why} (it and every later entry are dropped at start)"
            ));
            if repair {
                crate::cluster::log_store::LogStore::open(&db)?;
            }
        }
    }
    for p in &problems {
        println!("  CORRUPT {p}");
    }
    println!(
        "{}: {} series batches, {} chunks, {} WAL segments; {} corrupt record(s){}",
        dir.display(),
        r.series_batches,
        r.chunks,
        r.wal_segments,
        problems.len(),
        if repair && !problems.is_empty() {
            ", quarantined"
        } else {
            ""
        }
    );
    Ok(if problems.is_empty() || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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

/// `shoal check web-config FILE...`: promtool's `FILE SUCCESS` / `FILE FAILED: why`.
fn check_web_config(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for f in files {
        match web::web_config::check_file(f) {
            Ok(_) => println!("{} SUCCESS", f.display()),
            Err(e) => {
                ok = false;
                println!("{} FAILED: {e}", f.display());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs a node in a new actix system until SIGINT, SIGTERM or a leave request.
pub fn run_until_signal(args: RunArgs) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let node = Node::start(args).await?;
        let (leave, quit) = (node.leave.clone(), node.quit.clone());
        let cluster = node.cluster.clone();
        tokio::select! {
            why = cluster.raft_failed() => {
                tracing::error!(reason = %why, "the Raft core stopped: exiting so that the node is restarted");
                node.stop().await;
                anyhow::bail!("the Raft core stopped: {why}");
            }
            _ = quit.notified() => {
                tracing::info!("POST /-/quit: shutting down");
                node.stop().await;
            }
            sig = wait_for_shutdown_signal() => match sig {
                ShutdownSignal::Interrupt => node.stop().await,
                ShutdownSignal::Terminate => node.leave_and_stop().await,
            },
            _ = leave.notified() => node.leave_and_stop().await,
        }
        Ok(())
    })
}

/// Which signal asked the node to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGINT (Ctrl-C): stop, keep the cluster identity.
    Interrupt,
    /// SIGTERM: leave the cluster gracefully, then stop.
    Terminate,
}

/// Resolves on SIGINT or SIGTERM, telling which.
pub async fn wait_for_shutdown_signal() -> ShutdownSignal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return ShutdownSignal::Interrupt;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("received SIGINT, shutting down");
            ShutdownSignal::Interrupt
        }
        _ = term.recv() => {
            tracing::info!("received SIGTERM, leaving the cluster and shutting down");
            ShutdownSignal::Terminate
        }
    }
}

/// The address this node advertises to the cluster: `--cluster.advertise`, else the
/// bound listen address, else (listen host unspecified: 0.0.0.0 or [::]) this
/// machine's hostname with the bound port.
pub fn advertise_address(flag: Option<&str>, bound: SocketAddr) -> anyhow::Result<String> {
    if let Some(a) = flag {
        let a = a.trim();
        let port_ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        anyhow::ensure!(
            port_ok,
            "--cluster.advertise must be host:port with a non-zero port, got {a:?}"
        );
        return Ok(a.to_owned());
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound.to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .context(
            "the listen host is unspecified (0.0.0.0) and the hostname is unknown: set --cluster.advertise",
        )?;
    Ok(format!("{host}:{}", bound.port()))
}

/// A running node.
pub struct Node {
    pub addrs: Vec<SocketAddr>,
    server: actix_web::dev::ServerHandle,
    manager: Addr<ScrapeManager>,
    targets: crate::scrape::TargetsView,
    discovery: Arc<DiscoveryManager>,
    tsdb: Tsdb,
    cluster: ClusterHandle,
    cluster_data: ClusterData,
    cluster_metrics: tokio::task::JoinHandle<()>,
    rules: RuleManager,
    master_loop: tokio::task::JoinHandle<()>,
    /// Notified to leave gracefully (the HTTP API's leave, or a restarted node that
    /// finds itself leaving in the committed state): as SIGTERM.
    pub leave: Arc<tokio::sync::Notify>,
    /// Set once this run has started a leave (so that seeing itself leaving in the
    /// committed state is no reason to resume one).
    leave_requested: Arc<AtomicBool>,
    /// Where the drain keeps its cursor.
    data_dir: std::path::PathBuf,
    /// `--cluster.drain-rate`.
    drain_rate: u64,
    /// Notified by `POST /-/quit` (`--web.enable-lifecycle`): stop, keeping the
    /// cluster identity, as on SIGINT.
    pub quit: Arc<tokio::sync::Notify>,
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
    m.insert(
        "scrape.adjust-timestamps".into(),
        args.scrape_adjust_timestamps.to_string(),
    );
    m.insert(
        "scrape.timestamp-tolerance".into(),
        crate::model::duration::format(args.scrape_timestamp_tolerance),
    );
    m.insert(
        "web.enable-lifecycle".into(),
        args.web_enable_lifecycle.to_string(),
    );
    m.insert(
        "web.enable-admin-api".into(),
        args.web_enable_admin_api.to_string(),
    );
    // The path only: the file holds password hashes and may hold a key.
    m.insert(
        "web.config.file".into(),
        args.web_config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    m.insert("cluster.seeds".into(), args.cluster.seeds.join(","));
    // Paths only: the files hold a secret or a private key.
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    m.insert(
        "cluster.secret-file".into(),
        path(&args.cluster.secret_file),
    );
    m.insert(
        "cluster.tls.cert-file".into(),
        path(&args.cluster.tls_cert_file),
    );
    m.insert(
        "cluster.tls.key-file".into(),
        path(&args.cluster.tls_key_file),
    );
    m.insert(
        "cluster.tls.ca-file".into(),
        path(&args.cluster.tls_ca_file),
    );
    m.insert("cluster.insecure".into(), args.cluster.insecure.to_string());
    m.insert(
        "cluster.drain-rate".into(),
        args.cluster.drain_rate.to_string(),
    );
    m.insert(
        "cluster.advertise".into(),
        args.cluster.advertise.clone().unwrap_or_default(),
    );
    m.insert(
        "cluster.max-voters".into(),
        args.cluster.max_voters.to_string(),
    );
    m.insert(
        "cluster.down-after".into(),
        crate::model::duration::format(args.cluster.down_after),
    );
    m
}

/// Cluster options from the flags; `advertise` already resolved.
fn cluster_options(args: &RunArgs, advertise: String) -> anyhow::Result<ClusterOptions> {
    let c = &args.cluster;
    anyhow::ensure!(
        !c.max_voters.is_multiple_of(2),
        "--cluster.max-voters must be odd, got {}",
        c.max_voters
    );
    anyhow::ensure!(
        !c.down_after.is_zero(),
        "--cluster.down-after must be positive"
    );
    anyhow::ensure!(
        c.heartbeat_interval < c.election_timeout,
        "--cluster.heartbeat-interval must be shorter than --cluster.election-timeout"
    );
    let mut o = ClusterOptions::new(ClusterData::Dir(args.data_dir.join("cluster")), advertise);
    o.seeds = c
        .seeds
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(p) = &c.secret_file {
        o.peer.secrets = crate::peer::SecretStore::from_file(p).map_err(anyhow::Error::msg)?;
    }
    o.max_voters = c.max_voters;
    o.down_after = c.down_after;
    o.heartbeat_interval = c.heartbeat_interval;
    o.election_timeout_min = c.election_timeout;
    o.election_timeout_max = c.election_timeout * 2;
    // Nodes started together wait this long for every seed before the first one
    // bootstraps alone.
    o.bootstrap_grace = (c.election_timeout * 2).max(std::time::Duration::from_secs(3));
    Ok(o)
}

impl Node {
    /// Starts a node on the current actix system.
    pub async fn start(args: RunArgs) -> anyhow::Result<Node> {
        crate::scrape::scrape_loop::set_timestamp_tolerance(
            args.scrape_adjust_timestamps
                .then_some(args.scrape_timestamp_tolerance),
        );
        let cfg =
            Arc::new(config::load_file(&args.config).with_context(|| {
                format!("loading configuration file {}", args.config.display())
            })?);
        let security = load_web_security(&args)?;
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        let data_dir = args.data_dir.clone();
        let (retention, max_future, maintenance_interval) =
            (args.retention, args.max_future, args.maintenance_interval);
        let tsdb = tokio::task::spawn_blocking(move || {
            Tsdb::open(
                &data_dir,
                TsdbOptions {
                    retention,
                    max_future,
                    maintenance_interval,
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

        let manager = ScrapeManager::new(
            appendable.clone(),
            metrics.clone(),
            cfg.clone(),
            args.cluster.replication_factor,
        )
        .with_max_body_size(args.scrape_max_body_size);
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
        let first_groups = rules::load_groups(&cfg)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("loading the rule files of {}", args.config.display()))?;

        let bound =
            web::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
        let first = *bound
            .addrs
            .first()
            .context("the listen address resolved to nothing")?;
        let advertise = advertise_address(args.cluster.advertise.as_deref(), first)?;
        let mut opts = cluster_options(&args, advertise)?;
        let ip = first.ip();
        if ip.is_loopback()
            && ip != std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
            && ip != std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        {
            // Several nodes on one host (tests) are told apart by source address; the
            // OS would send from 127.0.0.1 otherwise.
            opts.peer.local_address = Some(ip);
        }
        let cluster_tls = cluster_tls(&args)?;
        if let Some(t) = &cluster_tls {
            opts.peer.tls = Some(t.client_config());
        }
        let peer_access = crate::peer::PeerAccess::decide(
            opts.peer.secrets.clone(),
            cluster_tls.clone(),
            crate::peer::Exposure {
                loopback_only: bound.addrs.iter().all(|a| a.ip().is_loopback()),
                has_seeds: !opts.seeds.is_empty(),
                insecure: args.cluster.insecure,
            },
        )
        .map_err(anyhow::Error::msg)?;
        if peer_access.closed {
            tracing::info!(
                "running alone on a reachable address without a cluster secret: the internal (node-to-node) routes are closed; give --cluster.secret-file to let other nodes join"
            );
        } else if !peer_access.authenticated() && !bound.addrs.iter().all(|a| a.ip().is_loopback())
        {
            tracing::warn!(
                "--cluster.insecure: the internal (node-to-node) routes are open to anyone who can reach this port"
            );
        }
        let listener_tls = match (security.as_ref().and_then(|s| s.tls()), &cluster_tls) {
            // Both: users see the web certificate, peers (by ALPN) the node's.
            (Some(web), Some(t)) => Some(
                t.listener()
                    .and_then(|p| web.server_config_with_peers(&p))
                    .context("the listener's TLS (web config and cluster TLS)")?,
            ),
            (Some(web), None) => Some(web.server_config()),
            (_, Some(t)) => Some(
                crate::tls::TlsServer::new(&t.server_settings())
                    .context("cluster TLS listener")?
                    .server_config(),
            ),
            _ => None,
        };
        let cluster_data = opts.data.clone();
        // Samples of global rule groups committed through Raft land in the TSDB.
        opts.sample_sink = Some(Arc::new(TsdbSink(tsdb.clone())));
        let cluster = ClusterHandle::start(opts)
            .await
            .context("starting the cluster member")?;
        {
            // Targets are assigned over the committed membership: forward every view.
            let mut views = cluster.membership_view();
            let node_id = cluster.node_id();
            let mgr = manager.clone();
            mgr.do_send(SetPeerClient(cluster.peer().clone()));
            let formation = cluster.clone();
            actix::spawn(async move {
                let mut formed = false;
                loop {
                    let v = views.borrow_and_update().clone();
                    let member = v.up.contains_key(&node_id);
                    if !formed && member {
                        // A new cluster: wait (boundedly) for the nodes started together.
                        if let Some((n, until)) = formation.formation()
                            && v.up.len() < n
                            && Instant::now() < until
                        {
                            let until = tokio::time::Instant::from_std(until);
                            tokio::select! {
                                r = views.changed() => if r.is_err() { break },
                                _ = tokio::time::sleep_until(until) => {}
                            }
                            continue;
                        }
                        formed = true;
                    }
                    // Targets go to members that are up and not leaving.
                    mgr.do_send(ApplyMembership(Membership {
                        node_id,
                        index: v.index,
                        members: v.owners(),
                    }));
                    if views.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        let engine_opts = EngineOptions {
            lookback_delta: args.query_lookback_delta,
            timeout: args.query_timeout,
            max_samples: args.query_max_samples,
            default_subquery_step: cfg.global.evaluation_interval,
            deadline: None,
        };
        let status_cache = telemetry::ClusterStatusCache::default();
        // Reads answer for the whole cluster (query any node); `local` is this node.
        let cluster_reads = query::ClusterQueryable::new(
            queryable.clone(),
            members_fn(&cluster, status_cache.clone()),
            query::FanOutOptions {
                self_id: cluster.node_id(),
                member_timeout: member_timeout(args.query_timeout),
                peer: cluster.peer().clone(),
                pushdown: args.query_pushdown && args.cluster.replication_factor == 1,
            },
        )
        .context("starting the query fan-out")?;
        metrics.register_collector(Box::new(telemetry::FanOutCollector(cluster_reads.clone())));
        // Rule groups: local ones run here over this node's share of the targets (those
        // it counts, whole across moves: `rules::shard_reads`), with its `shard` label;
        // global ones are held for the master loop.
        let rule_manager = RuleManager::new_sharded(
            queryable.clone(),
            appendable.clone(),
            engine_opts.clone(),
            rules::shard_reads::ShardScope {
                node_id: cluster.node_id(),
                cluster: Arc::new(cluster_reads.clone()),
                ownership: ownership_fn(&cluster, targets.clone()),
            },
        );
        rule_manager.apply(&cfg, first_groups);
        let master_loop = crate::federation::spawn(rule_manager.clone(), cluster.clone());
        let reload: ReloadFn = {
            let path = args.config.clone();
            let config_lock = config_lock.clone();
            let manager = manager.clone();
            let discovery = discovery.clone();
            let metrics = metrics.clone();
            let rule_manager = rule_manager.clone();
            let security = security.clone();
            let secrets = cluster.peer().secrets().clone();
            Arc::new(move || {
                // Every file is tried; each keeps its running version when bad.
                let cfg = reload_config(
                    &path,
                    &config_lock,
                    &manager,
                    &discovery,
                    &rule_manager,
                    &metrics,
                );
                let web = security.as_deref().map_or(Ok(()), reload_web_config);
                let secret = reload_secrets(&secrets);
                let errors: Vec<String> = [cfg, web, secret]
                    .into_iter()
                    .filter_map(Result::err)
                    .collect();
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors.join("; "))
                }
            })
        };
        metrics.config_last_reload_successful.set(1);
        metrics.register_collector(Box::new(telemetry::RaftCollector::new(
            status_cache.clone(),
        )));
        let cluster_metrics = {
            let cluster = cluster.clone();
            let status_cache = status_cache.clone();
            tokio::spawn(async move {
                loop {
                    status_cache.set(cluster.status().await);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            })
        };
        let leave = Arc::new(tokio::sync::Notify::new());
        let quit = Arc::new(tokio::sync::Notify::new());
        let leave_requested = Arc::new(AtomicBool::new(false));
        let start_leave: Arc<dyn Fn() + Send + Sync> = {
            let (leave, requested) = (leave.clone(), leave_requested.clone());
            Arc::new(move || {
                requested.store(true, Ordering::SeqCst);
                leave.notify_one()
            })
        };
        resume_leave(&cluster, leave.clone(), leave_requested.clone());

        // The engine options of the read routes.
        let engine_opts = EngineOptions {
            lookback_delta: args.query_lookback_delta,
            timeout: args.query_timeout,
            max_samples: args.query_max_samples,
            default_subquery_step: cfg.global.evaluation_interval,
            deadline: None,
        };
        let member_reads = Arc::new(query::MemberServer::new(
            queryable.clone(),
            query::GlobalRecords::new({
                let lock = config_lock.clone();
                Arc::new(move || match lock.read() {
                    Ok(c) => c.clone(),
                    Err(p) => p.into_inner().clone(),
                })
            }),
            crate::promql::Engine::new(engine_opts.clone()),
        ));

        let ready = Arc::new(AtomicBool::new(false));
        let targets_for_node = targets.clone();
        let state = AppState {
            storage: Arc::new(cluster_reads.clone()),
            local: queryable,
            member_reads: Some(member_reads),
            pushdown: Some(cluster_reads),
            engine_opts,
            query_slots: Arc::new(tokio::sync::Semaphore::new(
                args.query_max_concurrency.max(1),
            )),
            member_slots: Arc::new(tokio::sync::Semaphore::new(
                args.query_max_concurrency.max(1),
            )),
            targets: targets.clone(),
            handoff: Some({
                let mgr = manager.clone();
                Arc::new(move |key, view_index| mgr.do_send(HandoffDone { key, view_index }))
            }),
            config: config_lock,
            reload: reload.clone(),
            lifecycle: args.web_enable_lifecycle.then(|| quit.clone()),
            admin_api: args.web_enable_admin_api,
            metrics,
            flags: flags_map(&args),
            ready: ready.clone(),
            writable: Arc::new(tsdb.clone()),
            cluster: Some(web::cluster::ClusterWeb {
                handle: cluster.clone(),
                start_leave,
                replication_factor: args.cluster.replication_factor,
            }),
            peer_access,
            rules: Some(rule_manager.clone()),
            drain_receiver: Some(Arc::new(crate::drain::receive::Receiver::new(Arc::new(
                tsdb.clone(),
            )))),
            backfill: Some(Arc::new(crate::backfill::Backfill::new(
                Arc::new(tsdb.clone()),
                cluster.clone(),
                targets.clone(),
                args.cluster.replication_factor,
            ))),
        };
        let addrs = bound.addrs.clone();
        let server = web::serve(state, bound, security, listener_tls)
            .with_context(|| format!("serving on {}", args.listen))?;
        let handle = server.handle();
        actix::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        spawn_sighup_reloader(reload);
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(listen = ?addrs, node_id = cluster.node_id(), advertise = cluster.advertise(), "shoal is ready");
        Ok(Node {
            addrs,
            server: handle,
            manager,
            targets: targets_for_node,
            discovery,
            tsdb,
            cluster,
            cluster_data,
            cluster_metrics,
            rules: rule_manager,
            master_loop,
            leave,
            leave_requested,
            data_dir: args.data_dir.clone(),
            drain_rate: args.cluster.drain_rate,
            quit,
        })
    }

    /// The node's cluster member.
    pub fn cluster(&self) -> &ClusterHandle {
        &self.cluster
    }

    /// Graceful leave (SIGTERM, `POST /api/v1/cluster/leave`): when there is anyone to
    /// leave to, moves this node's samples to their new owners (`crate::drain`), leaves
    /// the membership, stops, and wipes the cluster state. A drain takes as long as its
    /// data needs (it is not bounded: interrupted, a restart resumes it). When the leave
    /// itself fails (no leader) the node keeps its identity, as after SIGINT.
    pub async fn leave_and_stop(self) {
        self.leave_requested.store(true, Ordering::SeqCst);
        let me = self.cluster.node_id();
        let others = self
            .cluster
            .status()
            .await
            .members
            .iter()
            .any(|m| m.id != me);
        if !others {
            self.stop().await;
            return;
        }
        let cursor = crate::drain::cursor::CursorFile::new(&self.data_dir);
        let drain = crate::drain::Drain {
            cluster: self.cluster.clone(),
            store: Arc::new(self.tsdb.clone()),
            targets: self.targets.clone(),
            cursor: cursor.clone(),
            opts: crate::drain::DrainOptions::with_rate(self.drain_rate),
            stop_writers: {
                let rules = self.rules.clone();
                Box::new(move || {
                    let rules = rules.clone();
                    Box::pin(async move { rules.stop_as_shard().await })
                })
            },
        };
        if let Err(e) = drain.run().await {
            tracing::error!(error = %e, "the drain failed; keeping this node's identity (a restart resumes it)");
            self.stop().await;
            return;
        }
        let left = leave_membership(&self.cluster).await;
        if left {
            cursor.remove();
            self.stop_after_leave().await;
        } else {
            self.stop().await;
        }
    }

    /// Stops a node that has left the cluster and wipes its cluster state, so that a
    /// restart joins as a new member (the samples in the TSDB stay).
    pub async fn stop_after_leave(self) {
        let data = self.cluster_data.clone();
        self.stop().await;
        match ClusterHandle::wipe_state(&data) {
            Ok(()) => tracing::info!("cluster state wiped; a restart joins as a new member"),
            Err(e) => tracing::error!(error = %e, "cannot wipe the cluster state"),
        }
    }

    /// Stops serving, the cluster member and scraping, then flushes the TSDB. Keeps the
    /// cluster state: a restart rejoins with the same id.
    pub async fn stop(self) {
        self.server.stop(true).await;
        self.cluster_metrics.abort();
        self.cluster.shutdown().await;
        drop(self.cluster);
        self.master_loop.abort();
        self.rules.stop();
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

/// Removes this node from the membership once its drain is done, retrying through
/// leader changes for a while. Returns whether it left.
async fn leave_membership(cluster: &ClusterHandle) -> bool {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), cluster.leave()).await {
            Ok(Ok(())) => {
                tracing::info!(node_id = cluster.node_id(), "left the cluster");
                return true;
            }
            Ok(Err(e)) => tracing::info!(error = %e, "cannot leave the membership yet"),
            Err(_) => tracing::info!("leaving the membership timed out"),
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "cannot leave the membership; keeping this node's identity (a restart tries again)"
            );
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}

/// A node that restarts while leaving (killed mid-drain) finds itself leaving in the
/// committed state: it resumes the leave — unless this run started the leave itself
/// (`requested`: SIGTERM or the leave API, whose own announcement is what it sees).
fn resume_leave(
    cluster: &ClusterHandle,
    leave: Arc<tokio::sync::Notify>,
    requested: Arc<AtomicBool>,
) {
    let me = cluster.node_id();
    let mut views = cluster.membership_view();
    actix::spawn(async move {
        if views.wait_for(|v| v.leaving.contains(&me)).await.is_ok()
            && !requested.load(Ordering::SeqCst)
        {
            tracing::info!(
                "this node is leaving the cluster (committed before a restart?): resuming the leave"
            );
            leave.notify_one();
        }
    });
}

/// The ownership of targets for the local rule groups: the assignments this node
/// applied (recorded with its clock as each committed view arrives, over the members
/// that own targets, `MembershipView::owners()`), and the discovered targets.
fn ownership_fn(
    cluster: &ClusterHandle,
    targets: crate::scrape::TargetsView,
) -> rules::shard_reads::OwnershipFn {
    let history = Arc::new(RwLock::new(
        crate::shard::ownership::OwnershipHistory::default(),
    ));
    {
        let history = history.clone();
        let mut views = cluster.membership_view();
        actix::spawn(async move {
            loop {
                let owners = views.borrow_and_update().owners();
                let now = rules::now_ms();
                {
                    let mut h = history.write().unwrap_or_else(|p| p.into_inner());
                    if h.record(now, owners.keys().copied()) {
                        // Rule windows are minutes to hours; keep a day (at most 64
                        // changes).
                        h.prune(now - 86_400_000);
                    }
                }
                if views.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    Arc::new(move || {
        let history = history.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (targets, ambiguous) = targets
            .assignment()
            .map(|a| (a.instance_keys, a.ambiguous_instances))
            .unwrap_or_default();
        rules::shard_reads::Ownership {
            history,
            targets,
            ambiguous,
        }
    })
}

/// The members a cluster read asks: the up members of the committed view (current at
/// once) plus the members the last status snapshot (≤ 1 s old) lists as down, so that
/// reads warn about their missing data.
fn members_fn(cluster: &ClusterHandle, status: telemetry::ClusterStatusCache) -> query::MembersFn {
    let views = cluster.membership_view();
    Arc::new(move || {
        let view = views.borrow().clone();
        let mut out: Vec<query::Member> = view
            .up
            .iter()
            .map(|(id, addr)| query::Member {
                id: *id,
                addr: addr.clone(),
                up: true,
            })
            .collect();
        if let Some(st) = status.get() {
            for m in st.members {
                if m.state == crate::cluster::MemberState::Down && !view.up.contains_key(&m.id) {
                    out.push(query::Member {
                        id: m.id,
                        addr: m.addr,
                        up: false,
                    });
                }
            }
        }
        out
    })
}

/// How long a cluster read waits for one member: half the query timeout, at most 30 s,
/// so that a dead or stuck member makes the answer partial rather than the query time
/// out.
fn member_timeout(query_timeout: std::time::Duration) -> std::time::Duration {
    (query_timeout / 2).min(std::time::Duration::from_secs(30))
}

fn reload_config(
    path: &Path,
    lock: &RwLock<Arc<Config>>,
    manager: &Addr<ScrapeManager>,
    discovery: &DiscoveryManager,
    rule_manager: &RuleManager,
    metrics: &Metrics,
) -> Result<(), String> {
    metrics.config_reloads_total.inc();
    // Everything is loaded and checked before anything is swapped: a bad config or rule
    // file leaves the running configuration and rules untouched.
    let loaded = config::load_file(path)
        .map_err(|e| e.to_string())
        .and_then(|cfg| rules::load_groups(&cfg).map(|groups| (cfg, groups)));
    match loaded {
        Ok((cfg, groups)) => {
            let cfg = Arc::new(cfg);
            match lock.write() {
                Ok(mut g) => *g = cfg.clone(),
                Err(p) => *p.into_inner() = cfg.clone(),
            }
            discovery.update_config(&cfg);
            rule_manager.apply(&cfg, groups);
            manager.do_send(ApplyConfig(cfg));
            metrics.config_last_reload_successful.set(1);
            tracing::info!(file = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            metrics.config_reload_failures_total.inc();
            metrics.config_last_reload_successful.set(0);
            tracing::error!(file = %path.display(), error = %e, "configuration reload failed; keeping the running configuration");
            Err(e)
        }
    }
}

/// Loads `--cluster.tls.*`, if given.
fn cluster_tls(args: &RunArgs) -> anyhow::Result<Option<Arc<crate::peer::ClusterTls>>> {
    let c = &args.cluster;
    let (Some(cert), Some(key), Some(ca)) = (&c.tls_cert_file, &c.tls_key_file, &c.tls_ca_file)
    else {
        return Ok(None);
    };
    let tls = crate::peer::ClusterTls::load(crate::peer::ClusterTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: ca.clone(),
    })
    .context("loading cluster TLS (--cluster.tls.*)")?;
    Ok(Some(Arc::new(tls)))
}

/// Loads `--web.config.file`, if given, and says what it turned on.
fn load_web_security(args: &RunArgs) -> anyhow::Result<Option<Arc<web::WebSecurity>>> {
    let Some(path) = &args.web_config_file else {
        return Ok(None);
    };
    let sec = web::WebSecurity::load(path)
        .with_context(|| format!("loading web configuration file {}", path.display()))?;
    tracing::info!(
        file = %path.display(),
        tls = sec.tls().is_some(),
        basic_auth = sec.has_users(),
        http2 = false,
        "web configuration loaded"
    );
    if sec.tls().is_some() && args.cluster.tls_cert_file.is_none() {
        // The peer client (the leader federating from itself included) speaks plain
        // HTTP without cluster TLS.
        tracing::warn!(
            "the web listener serves TLS but node-to-node calls are plain HTTP without --cluster.tls.*: other members cannot reach this node, and global rule groups cannot federate; use cluster TLS instead of tls_server_config in a cluster"
        );
    }
    Ok(Some(Arc::new(sec)))
}

/// Re-reads `--cluster.secret-file` (rotation: docs/security.md); a bad file keeps the
/// running secrets.
fn reload_secrets(secrets: &crate::peer::SecretStore) -> Result<(), String> {
    match secrets.reload() {
        Ok(true) => {
            tracing::info!("cluster secrets reloaded (changed)");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "cluster secret reload failed; keeping the running secrets");
            Err(e)
        }
    }
}

/// Reloads the web config; a bad file keeps the running one (logged, never its content).
fn reload_web_config(sec: &web::WebSecurity) -> Result<(), String> {
    match sec.reload() {
        Ok(()) => {
            tracing::info!("web configuration reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "web configuration reload failed; keeping the running web configuration");
            Err(e)
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

/// The cluster state machine's sink for committed samples: one appender batch per
/// entry, then a WAL flush, so that a slot the state machine records as applied is on
/// disk. A failed append, commit or flush is an error: the state machine keeps the
/// batches pending and hands them over again. Exact duplicates (a batch handed over
/// again, an entry applied again after a crash) are no-ops in the TSDB.
struct TsdbSink(Tsdb);

impl crate::cluster::SampleSink for TsdbSink {
    fn append(&self, batches: &[crate::cluster::SampleBatch]) -> Result<(), String> {
        let rejected = crate::cluster::append_batches(&self.0, batches)?;
        if rejected > 0 {
            tracing::debug!(rejected, "committed rule samples rejected by the store");
        }
        self.0.flush().map_err(|e| e.to_string())
    }
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
        let counters: &[(&str, &str, u64)] = &[
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
                "tsdb_too_far_in_future_samples",
                "Samples rejected as too far ahead of the clock (--storage.tsdb.max-future)",
                s.too_far_in_future_samples_total,
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
            (
                "tsdb_write_failures",
                "Failed disk writes of the TSDB (WAL write or fsync, sled write or flush)",
                s.write_failures_total,
            ),
            (
                "tsdb_appends_refused",
                "Samples refused while the TSDB could not write",
                s.appends_refused_total,
            ),
            (
                "tsdb_corrupt_chunks_skipped",
                "Sealed chunks skipped by reads for a bad checksum or encoding",
                s.corrupt_chunks_skipped_total,
            ),
            (
                "tsdb_corrupt_records_skipped",
                "Corrupt records skipped at open (series batches, series of theirs, chunk records)",
                s.corrupt_records_skipped_total,
            ),
            (
                "tsdb_wal_corrupt_values",
                "WAL values (and the rest of their segment) skipped at replay as corrupt or torn",
                s.wal_corrupt_values_total,
            ),
            (
                "tsdb_wal_unknown_series_samples",
                "WAL samples skipped at replay: their series is not in the index",
                s.wal_unknown_series_samples_total,
            ),
            (
                "tsdb_background_panics",
                "Panics caught in the TSDB's flush and maintenance loop (restarted)",
                s.background_panics_total,
            ),
            (
                "tsdb_maintenance_runs",
                "TSDB maintenance passes (sealing, WAL truncation, retention)",
                s.maintenance_runs_total,
            ),
        ];
        for &(name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let gauges: [(&str, &str, i64); 4] = [
            (
                "tsdb_chunks_pending_write",
                "Sealed chunks kept in memory because sled could not take them yet",
                s.chunks_pending_write as i64,
            ),
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
        {
            let help = "Samples of historical imports (drain, backfill) by result: stored; duplicate (held already), conflicting (held with another value, which is kept), replica (same scrape as a held sample), out_of_bounds (older than retention), too_far_in_future";
            let mut family = enc.encode_descriptor(
                "tsdb_import_samples",
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (result, v) in [
                ("stored", s.import_samples_stored_total),
                ("duplicate", s.import_samples_duplicate_total),
                ("conflicting", s.import_samples_conflicting_total),
                ("replica", s.import_samples_replica_total),
                ("out_of_bounds", s.import_samples_out_of_bounds_total),
                (
                    "too_far_in_future",
                    s.import_samples_too_far_in_future_total,
                ),
            ] {
                let c = ConstCounter::new(v);
                c.encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        let c = ConstCounter::new(s.import_chunks_total);
        c.encode(enc.encode_descriptor(
            "tsdb_import_chunks",
            "Chunks written by historical imports (as received or encoded anew)",
            None,
            c.metric_type(),
        )?)?;
        Ok(())
    }
}
