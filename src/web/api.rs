//! Handlers of `/api/v1/*`, `/metrics` and `/-/reload`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::{Value as Json, json};

use crate::model::{Labels, Matcher};
use crate::promql::{Engine, EvalError};
use crate::query::ClusterPushdown;

use super::AppState;
use super::json::{ApiError, ErrorType, encode_query_data, success, success_raw};
use super::params::{
    MAX_TIME_MS, MIN_TIME_MS, parse_bool, parse_duration_ms, parse_selector, parse_time,
};
use crate::storage::{Queryable, StorageError, Warned};

/// Request parameters from the query string and, for form posts, the body (as
/// Prometheus's `r.ParseForm`). Repeated keys (`match[]`) keep every value.
struct Params(Vec<(String, String)>);

impl Params {
    fn from_request(req: &HttpRequest, body: &[u8]) -> Result<Params, ApiError> {
        let bad = |e: serde_urlencoded::de::Error| {
            ApiError::bad_data(format!("error parsing form values: {e}"))
        };
        let mut v: Vec<(String, String)> =
            serde_urlencoded::from_str(req.query_string()).map_err(bad)?;
        let is_form = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form && !body.is_empty() {
            let b: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(bad)?;
            // Body values come first, as Go's ParseForm does.
            let mut all = b;
            all.extend(v);
            v = all;
        }
        Ok(Params(v))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn time(&self, k: &str, default: i64) -> Result<i64, ApiError> {
        match self.get(k) {
            None => Ok(default),
            Some(s) => parse_time(s)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"{k}\": {e}"))),
        }
    }

    fn flag(&self, k: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(default),
            Some(s) => parse_bool(s)
                .map_err(|e| ApiError::bad_data(format!("invalid parameter \"{k}\": {e}"))),
        }
    }

    fn matchers(&self) -> Result<Vec<Vec<Matcher>>, ApiError> {
        let mut out = Vec::new();
        for s in self.all("match[]") {
            out.extend(
                parse_selector(s).map_err(|e| {
                    ApiError::bad_data(format!("invalid parameter \"match[]\": {e}"))
                })?,
            );
        }
        Ok(out)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The store a read route answers from: the whole cluster, or this node only with
/// `local=1` (drill-down); with `partial_response=false` a cluster read that misses a
/// member fails instead of warning.
fn storage_for(st: &AppState, p: &Params) -> Result<Arc<dyn Queryable>, ApiError> {
    if p.flag("local", false)? {
        return Ok(st.local.clone());
    }
    if !p.flag("partial_response", true)? {
        return Ok(st.storage.strict().unwrap_or_else(|| st.storage.clone()));
    }
    Ok(st.storage.clone())
}

/// The cluster reads to try aggregation pushdown with (not with `local=1`), and
/// whether partial answers are refused.
fn pushdown_for(
    st: &AppState,
    p: &Params,
) -> Result<(Option<crate::query::ClusterQueryable>, bool), ApiError> {
    let strict = !p.flag("partial_response", true)?;
    if p.flag("local", false)? {
        return Ok((None, strict));
    }
    Ok((st.pushdown.clone(), strict))
}

/// A storage failure of a read route: a refused partial answer is `unavailable`, a
/// query limit as the query routes answer it.
fn storage_error(e: StorageError) -> ApiError {
    if e.0.starts_with(crate::query::INCOMPLETE) {
        ApiError::new(ErrorType::Unavailable, e.0)
    } else if e.is_limit() {
        eval_error(crate::promql::engine::storage_error(e))
    } else {
        ApiError::internal(e.0)
    }
}

/// The `timeout` of a read: the node's `--query.timeout`, shortened by the `timeout`
/// parameter.
fn timeout_for(st: &AppState, p: &Params) -> Result<Duration, ApiError> {
    let mut timeout = st.engine_opts.timeout;
    if let Some(t) = p.get("timeout") {
        let ms = parse_duration_ms(t)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"timeout\": {e}")))?;
        if ms > 0 {
            timeout = timeout.min(Duration::from_millis(ms as u64));
        }
    }
    Ok(timeout)
}

/// When a read that arrived at `arrived` must be done.
fn deadline_for(st: &AppState, p: &Params, arrived: Instant) -> Result<Instant, ApiError> {
    let t = timeout_for(st, p)?;
    Ok(arrived
        .checked_add(t)
        .unwrap_or_else(|| arrived + Duration::from_secs(86_400 * 365)))
}

/// Waits for one of `slots` until `deadline` (Prometheus: "query timed out in query
/// queue"). The permit is held until the read's answer is built.
pub(super) async fn slot(
    slots: &Arc<tokio::sync::Semaphore>,
    deadline: Instant,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    match tokio::time::timeout_at(deadline.into(), slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(ApiError::new(ErrorType::Unavailable, "query queue closed")),
        Err(_) => Err(eval_error(EvalError::Timeout("query queue".into()))),
    }
}

fn eval_error(e: EvalError) -> ApiError {
    match e {
        EvalError::Execution(m) if m.starts_with(crate::query::INCOMPLETE) => {
            ApiError::new(ErrorType::Unavailable, m)
        }
        EvalError::Parse(m) | EvalError::BadData(m) => ApiError::bad_data(m),
        EvalError::Execution(m) => ApiError::new(ErrorType::Execution, m),
        // Prometheus's text: "query timed out in <phase>", "query was canceled in …".
        e @ EvalError::Timeout(_) => ApiError::new(ErrorType::Timeout, e.to_string()),
        e @ EvalError::Canceled(_) => ApiError::new(ErrorType::Canceled, e.to_string()),
        e @ EvalError::TooManySamples => ApiError::new(ErrorType::Execution, e.to_string()),
    }
}

/// Engine options for one request that arrived at `arrived`: the `timeout` parameter
/// can only shorten the node's `--query.timeout`, and the time counts from the
/// request's arrival (the wait for a query slot is part of it).
fn engine_for(st: &AppState, p: &Params, arrived: Instant) -> Result<Engine, ApiError> {
    let mut opts = st.engine_opts.clone();
    opts.timeout = timeout_for(st, p)?;
    opts.deadline = Some(deadline_for(st, p, arrived)?);
    Ok(Engine::new(opts))
}

async fn run_query<F>(st: &AppState, engine: &Engine, f: F) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Result<crate::promql::QueryResult, EvalError> + Send + 'static,
{
    let _permit = match slot(&st.query_slots, engine.deadline()).await {
        Ok(p) => p,
        Err(e) => {
            count_failure(st, &e);
            return Err(e);
        }
    };
    st.metrics.queries_total.inc();
    let res = web::block(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    match res {
        Ok(r) => Ok(success_raw(&encode_query_data(&r), &r.warnings)),
        Err(e) => {
            let err = eval_error(e);
            count_failure(st, &err);
            Err(err)
        }
    }
}

fn count_failure(st: &AppState, err: &ApiError) {
    st.metrics
        .query_failures_total
        .get_or_create(&crate::telemetry::JobReasonLabels {
            job: String::new(),
            reason: err.kind.as_str().to_string(),
        })
        .inc();
}

fn query_param(p: &Params) -> Result<String, ApiError> {
    p.get("query")
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": missing query"))
}

pub async fn query(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let p = Params::from_request(&req, &body)?;
    let q = query_param(&p)?;
    let t = p.time("time", now_ms())?;
    let engine = engine_for(&st, &p, arrived)?;
    let storage = storage_for(&st, &p)?;
    let (cluster, strict) = pushdown_for(&st, &p)?;
    run_query(&st, &engine.clone(), move || match cluster {
        Some(cluster) => {
            let push = ClusterPushdown {
                cluster: &cluster,
                engine: &engine,
                strict,
            };
            engine.instant_query_pushdown(storage.as_ref(), &push, &q, t)
        }
        None => engine.instant_query(storage.as_ref(), &q, t),
    })
    .await
}

pub async fn query_range(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let p = Params::from_request(&req, &body)?;
    let q = query_param(&p)?;
    let start = match p.get("start") {
        Some(s) => parse_time(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"start\": {e}")))?,
        None => {
            return Err(ApiError::bad_data(
                "invalid parameter \"start\": missing start",
            ));
        }
    };
    let end = match p.get("end") {
        Some(s) => parse_time(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"end\": {e}")))?,
        None => return Err(ApiError::bad_data("invalid parameter \"end\": missing end")),
    };
    if end < start {
        return Err(ApiError::bad_data(
            "invalid parameter \"end\": end timestamp must not be before start time",
        ));
    }
    let step = match p.get("step") {
        Some(s) => parse_duration_ms(s)
            .map_err(|e| ApiError::bad_data(format!("invalid parameter \"step\": {e}")))?,
        None => {
            return Err(ApiError::bad_data(
                "invalid parameter \"step\": missing step",
            ));
        }
    };
    if step <= 0 {
        return Err(ApiError::bad_data(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    if (end - start) / step > 11_000 {
        return Err(ApiError::bad_data(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
        ));
    }
    let engine = engine_for(&st, &p, arrived)?;
    let storage = storage_for(&st, &p)?;
    let (cluster, strict) = pushdown_for(&st, &p)?;
    run_query(&st, &engine.clone(), move || match cluster {
        Some(cluster) => {
            let push = ClusterPushdown {
                cluster: &cluster,
                engine: &engine,
                strict,
            };
            engine.range_query_pushdown(storage.as_ref(), &push, &q, start, end, step)
        }
        None => engine.range_query(storage.as_ref(), &q, start, end, step),
    })
    .await
}

fn range_params(p: &Params) -> Result<(i64, i64), ApiError> {
    Ok((p.time("start", MIN_TIME_MS)?, p.time("end", MAX_TIME_MS)?))
}

/// Runs `f` on a blocking thread once per `match[]` alternative (once with no matchers
/// when there are none) and returns the sorted union of the results with the warnings.
/// Holds a query slot (waiting for one until the read's deadline, counted from
/// `arrived`).
async fn union_over<T, F>(
    st: &AppState,
    p: &Params,
    arrived: Instant,
    sets: Vec<Vec<Matcher>>,
    f: F,
) -> Result<Warned<Vec<T>>, ApiError>
where
    T: Ord + Send + 'static,
    F: Fn(&[Matcher]) -> Result<Warned<Vec<T>>, StorageError> + Send + 'static,
{
    let _permit = slot(&st.query_slots, deadline_for(st, p, arrived)?).await?;
    web::block(move || -> Result<Warned<Vec<T>>, ApiError> {
        if sets.is_empty() {
            return f(&[]).map_err(storage_error);
        }
        let mut all = Warned::new(Vec::new());
        for ms in &sets {
            let w = f(ms).map_err(storage_error)?;
            all.value.extend(w.value);
            for x in w.warnings {
                if !all.warnings.contains(&x) {
                    all.warnings.push(x);
                }
            }
        }
        all.value.sort();
        all.value.dedup();
        Ok(all)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// A success envelope with `data` and the read's warnings.
fn success_warned<T: serde::Serialize>(data: &T, warnings: &[String]) -> HttpResponse {
    match serde_json::to_string(data) {
        Ok(s) => success_raw(&s, warnings),
        Err(e) => ApiError::internal(e.to_string()).error_response(),
    }
}

pub async fn series(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let p = Params::from_request(&req, &body)?;
    let sets = p.matchers()?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = range_params(&p)?;
    let storage = storage_for(&st, &p)?;
    let res = union_over(&st, &p, arrived, sets, move |ms| {
        storage.series_warned(start, end, ms)
    })
    .await?;
    let data: Vec<BTreeMap<&str, &str>> = res
        .value
        .iter()
        .map(|l| {
            l.iter()
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .collect()
        })
        .collect();
    Ok(success_warned(&data, &res.warnings))
}

pub async fn labels(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let p = Params::from_request(&req, &body)?;
    let sets = p.matchers()?;
    let (start, end) = range_params(&p)?;
    let storage = storage_for(&st, &p)?;
    let res = union_over(&st, &p, arrived, sets, move |ms| {
        storage.label_names_warned(start, end, ms)
    })
    .await?;
    Ok(success_warned(&res.value, &res.warnings))
}

pub async fn label_values(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let arrived = Instant::now();
    let name = path.into_inner();
    if !crate::model::labels::is_valid_label_name(&name) {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let p = Params::from_request(&req, &[])?;
    let sets = p.matchers()?;
    let (start, end) = range_params(&p)?;
    let storage = storage_for(&st, &p)?;
    let res = union_over(&st, &p, arrived, sets, move |ms| {
        storage.label_values_warned(&name, start, end, ms)
    })
    .await?;
    Ok(success_warned(&res.value, &res.warnings))
}

/// `POST /internal/query` (`peer::protocol::MEMBER_READ`): another member's fan-out
/// reads this node's store. Bincode in and out; the peer guard has checked the cluster
/// secret; a malformed body is a 400.
pub async fn member_read(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> HttpResponse {
    let plain = |status: actix_web::http::StatusCode, msg: String| {
        HttpResponse::build(status)
            .content_type("text/plain; charset=utf-8")
            .body(msg)
    };
    let Some(server) = st.member_reads.clone() else {
        return plain(
            actix_web::http::StatusCode::NOT_FOUND,
            "this node is not in a cluster".into(),
        );
    };
    let bad_request = |e: crate::query::ServeError| {
        tracing::warn!(peer = ?req.peer_addr(), error = %e, "rejected malformed internal read");
        plain(actix_web::http::StatusCode::BAD_REQUEST, e.to_string())
    };
    let request = match crate::query::MemberServer::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    drop(body);
    // A slot of the internal pool, within the time the asking node gave the read.
    let deadline = request
        .limits()
        .deadline()
        .unwrap_or_else(|| Instant::now() + st.engine_opts.timeout);
    let _permit = match slot(&st.member_slots, deadline).await {
        Ok(p) => p,
        Err(e) => {
            let status = e.kind.status();
            return plain(status, e.msg);
        }
    };
    match web::block(move || server.serve(request)).await {
        Ok(Ok(bytes)) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        Ok(Err(e @ crate::query::ServeError::BadRequest(_))) => bad_request(e),
        Ok(Err(crate::query::ServeError::Limit(e))) => {
            let e = storage_error(e);
            plain(e.kind.status(), e.msg)
        }
        Ok(Err(e)) => plain(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        ),
        Err(e) => plain(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        ),
    }
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|l| (l.name.clone(), Json::String(l.value.clone())))
            .collect(),
    )
}

fn rfc3339(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => chrono::DateTime::<chrono::Utc>::from(t)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

pub async fn targets(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let p = Params::from_request(&req, &[])?;
    let state = p.get("state").unwrap_or("any").to_ascii_lowercase();
    let pool = p.get("scrapePool");
    let snap = st.targets.snapshot();
    let mut active = Vec::new();
    let mut dropped = Vec::new();
    if state == "any" || state == "active" {
        for a in snap
            .active
            .iter()
            .filter(|a| pool.is_none_or(|p| p == a.scrape_pool))
        {
            let s = a.status();
            let url = a.target.url();
            active.push(json!({
                "discoveredLabels": labels_json(&a.target.discovered_labels),
                "labels": labels_json(&a.target.output_labels()),
                "scrapePool": a.scrape_pool,
                "scrapeUrl": url,
                "globalUrl": url,
                "lastError": s.last_error,
                "lastScrape": rfc3339(s.last_scrape),
                "lastScrapeDuration": s.last_scrape_duration.as_secs_f64(),
                "health": s.health.as_str(),
                "scrapeInterval": crate::model::duration::format(a.scrape_interval),
                "scrapeTimeout": crate::model::duration::format(a.scrape_timeout),
                // shoal: the target moved to another node, which has not scraped it yet.
                "handingOff": a.handing_off,
            }));
        }
    }
    if state == "any" || state == "dropped" {
        for d in snap
            .dropped
            .iter()
            .filter(|d| pool.is_none_or(|p| p == d.scrape_pool))
        {
            dropped.push(json!({ "discoveredLabels": labels_json(&d.discovered_labels) }));
        }
    }
    Ok(success(
        &json!({ "activeTargets": active, "droppedTargets": dropped }),
    ))
}

pub async fn buildinfo() -> HttpResponse {
    success(&json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": option_env!("SHOAL_GIT_REVISION").unwrap_or("unknown"),
        "branch": option_env!("SHOAL_GIT_BRANCH").unwrap_or("unknown"),
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
}

pub async fn status_config(st: web::Data<AppState>) -> HttpResponse {
    let cfg = st.current_config();
    // Never the raw file: it holds scrape passwords and tokens.
    match crate::config::redact::redacted_yaml(&cfg.original) {
        Ok(yaml) => success(&json!({ "yaml": yaml })),
        Err(e) => {
            ApiError::new(ErrorType::Internal, format!("showing the config: {e}")).error_response()
        }
    }
}

pub async fn status_flags(st: web::Data<AppState>) -> HttpResponse {
    success(&st.flags)
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(ErrorType::NotFound, "unknown API endpoint"))
}

pub async fn metrics(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(st.metrics.render())
}

/// Prometheus's answer on a lifecycle route without `--web.enable-lifecycle`.
fn lifecycle_disabled() -> HttpResponse {
    HttpResponse::Forbidden()
        .content_type("text/plain; charset=utf-8")
        .body("Lifecycle API is not enabled.")
}

pub async fn quit(st: web::Data<AppState>) -> HttpResponse {
    let Some(quit) = &st.lifecycle else {
        return lifecycle_disabled();
    };
    quit.notify_one();
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Requesting termination... Goodbye!")
}

pub async fn reload(st: web::Data<AppState>) -> HttpResponse {
    if st.lifecycle.is_none() {
        return lifecycle_disabled();
    }
    let f = st.reload.clone();
    match web::block(move || f()).await {
        Ok(Ok(())) => HttpResponse::Ok().body(""),
        Ok(Err(e)) => {
            HttpResponse::InternalServerError().body(format!("failed to reload config: {e}\n"))
        }
        Err(e) => {
            HttpResponse::InternalServerError().body(format!("failed to reload config: {e}\n"))
        }
    }
}
