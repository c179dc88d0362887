//! The HTTP API (actix-web). The only module that names actix-web types and decides
//! JSON shapes; everything it serves comes from the storage traits, the PromQL engine,
//! the scrape manager's [`TargetsView`], the telemetry registry and the node's
//! [`crate::cluster::ClusterHandle`] (whose internal routes it mounts).
//!
//! The listener's security — TLS, basic authentication, extra headers — comes from the
//! web config file (`--web.config.file`): its format in [`web_config`], TLS in [`tls`],
//! password checks in [`basic_auth`], the running state, its reload and the middleware
//! in [`security`].

pub mod admin;
pub mod api;
pub mod basic_auth;
pub mod cluster;
pub mod federate;
pub mod internal;
pub mod json;
pub mod params;
pub mod rules;
pub mod security;
pub mod web_config;

pub use basic_auth::WebUser;
pub use security::WebSecurity;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use actix_web::{App, HttpResponse, HttpServer, dev::Server, web};

use crate::config::Config;
use crate::promql::EngineOptions;
use crate::scrape::TargetsView;
use crate::storage::Queryable;
use crate::telemetry::Metrics;

/// Reloads the configuration; returns the error text when the new config is rejected.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// What the read routes answer from: the whole cluster (the distributed select) on a
    /// cluster node, the local store otherwise.
    pub storage: Arc<dyn Queryable>,
    /// This node's own store (`local=1`, the internal select route, `/federate?local=1`).
    pub local: Arc<dyn Queryable>,
    /// Serves the internal read route (`peer::protocol::MEMBER_READ`) that other members' fan-outs
    /// call; `None` when the node is not in a cluster (the route answers 404).
    pub member_reads: Option<Arc<crate::query::MemberServer>>,
    /// The cluster-wide reads again, for aggregation pushdown on the query routes
    /// (`query::ClusterQueryable::pushdown`); `None` outside a cluster.
    pub pushdown: Option<crate::query::ClusterQueryable>,
    pub engine_opts: EngineOptions,
    /// `--query.max-concurrency` slots of every read route (queries, series, labels,
    /// label values, `/federate`): a read waits for one, within its timeout.
    pub query_slots: Arc<tokio::sync::Semaphore>,
    /// As many slots again for the internal read route (`/internal/query`), which
    /// other members' fan-outs call: a pool of its own, so that a node whose query
    /// slots all wait on members can never starve those members' answers to it (no
    /// cycle of waits between nodes).
    pub member_slots: Arc<tokio::sync::Semaphore>,
    pub targets: TargetsView,
    pub config: Arc<RwLock<Arc<Config>>>,
    pub reload: ReloadFn,
    /// `--web.enable-lifecycle`: notified by `POST /-/quit`; `None` answers 403 on
    /// `/-/reload` and `/-/quit`, as Prometheus without the flag.
    pub lifecycle: Option<Arc<tokio::sync::Notify>>,
    /// `--web.enable-admin-api`: the admin routes ([`admin`]) work; without it they
    /// answer 503 "admin APIs disabled", as Prometheus.
    pub admin_api: bool,
    pub metrics: Metrics,
    /// Command-line flags for `/api/v1/status/flags`.
    pub flags: BTreeMap<String, String>,
    pub ready: Arc<AtomicBool>,
    /// The local store's write health: a node whose store cannot write is not ready.
    pub writable: Arc<dyn crate::storage::Writable>,
    /// The node's cluster member (`/api/v1/cluster` and the internal cluster routes).
    pub cluster: Option<cluster::ClusterWeb>,
    /// What the internal routes' guard and the cluster admin routes accept (the
    /// cluster secret, cluster mutual TLS, closed on a lone unauthenticated node).
    pub peer_access: crate::peer::PeerAccess,
    /// Told the key of a target whose new owner has scraped it and the view index of
    /// the move (the internal handoff route); the scrape manager then stops its handoff.
    pub handoff: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
    /// The rule groups (`/api/v1/rules`, `/api/v1/alerts`); None: no rules at all.
    pub rules: Option<crate::rules::RuleManager>,
    /// Takes the chunks a leaving member moves here (`peer::protocol::TSDB_IMPORT`);
    /// `None` outside a cluster (404).
    pub drain_receiver: Option<Arc<crate::drain::receive::Receiver>>,
    /// Routes a backfill batch to its owners (`POST /api/v1/admin/tsdb/import`);
    /// `None` outside a cluster (503).
    pub backfill: Option<Arc<crate::backfill::Backfill>>,
}

impl AppState {
    pub fn current_config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Registers every route on an actix-web service config (used by `serve` and tests).
pub fn routes(cfg: &mut web::ServiceConfig, st: &AppState) {
    internal::routes(
        cfg,
        internal::PeerGuard {
            access: st.peer_access.clone(),
            metrics: st.metrics.clone(),
        },
        st.cluster.as_ref().map(|c| c.handle.clone()),
    );
    cfg.route("/-/healthy", web::get().to(healthy))
        .route("/-/healthy", web::head().to(healthy))
        .route("/-/ready", web::get().to(ready))
        .route("/-/ready", web::head().to(ready))
        .route("/-/reload", web::post().to(api::reload))
        .route("/-/reload", web::put().to(api::reload))
        .route("/-/quit", web::post().to(api::quit))
        .route("/-/quit", web::put().to(api::quit))
        .route("/metrics", web::get().to(api::metrics))
        .route("/federate", web::get().to(federate::federate))
        .route("/", web::get().to(index))
        .service(
            web::scope("/api/v1")
                .route("/query", web::get().to(api::query))
                .route("/query", web::post().to(api::query))
                .route("/query_range", web::get().to(api::query_range))
                .route("/query_range", web::post().to(api::query_range))
                .route("/series", web::get().to(api::series))
                .route("/series", web::post().to(api::series))
                .route("/labels", web::get().to(api::labels))
                .route("/labels", web::post().to(api::labels))
                .route("/label/{name}/values", web::get().to(api::label_values))
                .route("/targets", web::get().to(api::targets))
                .route("/rules", web::get().to(rules::rules))
                .route("/alerts", web::get().to(rules::alerts))
                .route("/status/buildinfo", web::get().to(api::buildinfo))
                .route("/status/config", web::get().to(api::status_config))
                .route("/status/flags", web::get().to(api::status_flags))
                .configure(cluster::routes)
                .configure(admin::routes)
                .default_service(web::to(api::not_found)),
        );
}

async fn healthy() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Shoal is Healthy.\n")
}

async fn ready(st: web::Data<AppState>) -> HttpResponse {
    let unavailable = |why: &str| {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body(format!("Service Unavailable{why}\n"))
    };
    if !st.ready.load(Ordering::Relaxed) {
        return unavailable("");
    }
    match st.writable.writable() {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("Shoal is Ready.\n"),
        Err(why) => unavailable(&format!(": the TSDB cannot write: {why}")),
    }
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            "<!doctype html><title>shoal</title><h1>shoal</h1><ul>\
         <li><a href=\"/api/v1/targets\">/api/v1/targets</a></li>\
         <li><a href=\"/api/v1/query?query=up\">/api/v1/query?query=up</a></li>\
         <li><a href=\"/api/v1/labels\">/api/v1/labels</a></li>\
         <li><a href=\"/api/v1/status/config\">/api/v1/status/config</a></li>\
         <li><a href=\"/metrics\">/metrics</a></li></ul>",
        )
}

/// Listening sockets bound before the server starts (so that the actual addresses are
/// known, e.g. with port 0, before the cluster member that advertises them starts).
pub struct Bound {
    listeners: Vec<std::net::TcpListener>,
    pub addrs: Vec<std::net::SocketAddr>,
}

/// Binds every address `listen` resolves to.
pub fn bind(listen: &str) -> std::io::Result<Bound> {
    use std::net::ToSocketAddrs as _;
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    let mut last_err = None;
    for addr in listen.to_socket_addrs()? {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                addrs.push(l.local_addr()?);
                listeners.push(l);
            }
            Err(e) => last_err = Some(e),
        }
    }
    if listeners.is_empty() {
        return Err(last_err.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{listen} resolves to no address"),
            )
        }));
    }
    Ok(Bound { listeners, addrs })
}

/// Starts serving on `bound`. The returned server runs on the current actix system;
/// stop it with its handle. The internal routes ([`internal`]) are always mounted;
/// the cluster ones answer 404 without a cluster member in `state`. With a web config
/// (`security`), its middleware wraps every route. With `tls` (the web config's, or
/// cluster TLS's) the listeners serve HTTPS only; a TLS client's certificates go into
/// the connection's extensions ([`crate::tls::PeerCertificates`]).
pub fn serve(
    state: AppState,
    bound: Bound,
    security: Option<Arc<WebSecurity>>,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<Server> {
    let metrics = state.metrics.clone();
    let guard = security.clone();
    let data = web::Data::new(state);
    let st = data.clone();
    let mut server = HttpServer::new(move || {
        let metrics = metrics.clone();
        let st = st.clone();
        let guard = guard.clone();
        App::new()
            .wrap_fn(move |req, srv| {
                use actix_web::dev::Service as _;
                let handler = req.match_pattern().unwrap_or_else(|| "other".into());
                let metrics = metrics.clone();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    metrics
                        .http_requests_total
                        .get_or_create(&crate::telemetry::HandlerLabels {
                            handler,
                            code: res.status().as_u16().to_string(),
                        })
                        .inc();
                    Ok(res)
                }
            })
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .wrap(actix_web::middleware::Compress::default())
            // Outermost: a request without a valid user reaches nothing else.
            .wrap(actix_web::middleware::from_fn(move |req, next| {
                let guard = guard.clone();
                async move {
                    match guard {
                        Some(g) => g.guard(req, next).await,
                        None => next.call(req).await.map(|r| r.map_into_boxed_body()),
                    }
                }
            }))
            .configure(move |cfg| routes(cfg, &st))
    })
    .on_connect(put_peer_certificates)
    .workers(2)
    .shutdown_timeout(5)
    .disable_signals();
    for l in bound.listeners {
        server = match &tls {
            Some(config) => server.listen_rustls_0_23(l, config.clone())?,
            None => server.listen(l)?,
        };
    }
    Ok(server.run())
}

/// `on_connect`: a TLS client's certificates into the connection's extensions.
fn put_peer_certificates(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
    if let Some(stream) = conn.downcast_ref::<Tls>()
        && let Some(certs) = stream.get_ref().1.peer_certificates()
    {
        ext.insert(crate::tls::PeerCertificates(
            certs.iter().map(|c| c.clone().into_owned()).collect(),
        ));
    }
}
