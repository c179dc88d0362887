//! Query any node: the distributed select. [`ClusterQueryable`] implements
//! [`Queryable`] over the whole cluster — it sends each read to every up member over
//! the internal route [`crate::peer::protocol::MEMBER_READ`] (bincode, samples as XOR
//! chunks; through the node's `PeerClient`), runs the same read on this node's store,
//! and merges:
//! series with equal label sets are merged by time without replica duplicates
//! ([`dedup::merge`]); label names, values and series lists are unions.
//!
//! - Every remote call is bounded by the member timeout. A member that is down, does
//!   not answer in time or answers garbage makes the answer partial: a warning naming
//!   it (Prometheus's `warnings`), never an error — unless the caller asked for a
//!   strict answer ([`Queryable::strict`], `partial_response=false`), then the read
//!   fails with a message starting with [`INCOMPLETE`].
//! - Series recorded by `scope: global` rule groups are written on every node by the
//!   Raft state machine; they are read from this node only ([`GlobalRecords`]): members
//!   leave them out of their select answers.
//! - [`MemberServer`] is the serving side of the route (the handler lives in `web`).
//!
//! The [`Queryable`] trait is synchronous and called from blocking threads; the remote
//! calls run on a small runtime of their own and the calling thread waits for them
//! (with a bound) while it reads the local store.
//!
//! Must not: name actix-web (the route is mounted by `web`) or openraft (members come
//! in as plain [`Member`]s from `app`).

pub mod dedup;
pub mod pushdown;
pub mod wire;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::config::rules::RuleScope;
use crate::model::{Labels, Matcher, Sample};
use crate::peer::protocol::MEMBER_READ;
use crate::peer::{Lane, PeerClient, PeerError};
use crate::promql::{Engine, EvalError, QueryResult, Value, VectorSample};
use crate::storage::{
    Queryable, SampleBudget, SelectHints, Series, SeriesSet, StorageError, Warned,
};
use wire::{Request, Response, SeriesBlock, WireLimits};

/// Start of the error message of a read that refused a partial answer.
pub const INCOMPLETE: &str = "partial response disallowed";

/// A cluster member as the fan-out sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// `host:port` of its HTTP server.
    pub addr: String,
    /// False when the cluster committed it as down: it is not asked, and answers are
    /// partial.
    pub up: bool,
}

/// The current members (this node included or not; it is skipped by id).
pub type MembersFn = Arc<dyn Fn() -> Vec<Member> + Send + Sync>;

/// Settings of the fan-out.
#[derive(Clone)]
pub struct FanOutOptions {
    /// This node's member id (its part is read from the local store).
    pub self_id: u64,
    /// Bound of each member call, body included.
    pub member_timeout: Duration,
    /// The node's client to its peers (member reads use its [`Lane::Reads`] pool).
    pub peer: PeerClient,
    /// Whether aggregations may be pushed down to members ([`pushdown`]). Off with a
    /// replication factor above 1: every series is on two nodes, the check would always
    /// fall back and the members' work would be wasted.
    pub pushdown: bool,
}

/// The names of the series recorded by `scope: global` rule groups of the current
/// configuration: those series exist on every node (written through Raft), so a
/// cluster read takes them from the local store only. Recomputed (rule files read)
/// when the configuration changes.
#[derive(Clone)]
pub struct GlobalRecords {
    config: Arc<dyn Fn() -> Arc<Config> + Send + Sync>,
    cache: Arc<Mutex<Option<NamesOf>>>,
}

/// The record names computed for one configuration.
type NamesOf = (Arc<Config>, Arc<HashSet<String>>);

impl GlobalRecords {
    /// `config` returns the running configuration (reloads included).
    pub fn new(config: Arc<dyn Fn() -> Arc<Config> + Send + Sync>) -> GlobalRecords {
        GlobalRecords {
            config,
            cache: Arc::default(),
        }
    }

    /// The record names of global groups in the running configuration.
    pub fn names(&self) -> Arc<HashSet<String>> {
        let cfg = (self.config)();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, names)) = cache.as_ref()
            && Arc::ptr_eq(c, &cfg)
        {
            return names.clone();
        }
        let names = Arc::new(global_record_names(&cfg));
        *cache = Some((cfg, names.clone()));
        names
    }

    /// Whether a series is one of them (by its metric name).
    pub fn contains(names: &HashSet<String>, labels: &Labels) -> bool {
        labels.metric_name().is_some_and(|n| names.contains(n))
    }
}

/// Record names of the `scope: global` groups in `cfg`'s rule files. A rule file that
/// cannot be read is skipped with a warning (the rule manager reports it too).
pub fn global_record_names(cfg: &Config) -> HashSet<String> {
    let mut names = HashSet::new();
    let paths = match cfg.rule_file_paths() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list rule files for the global-record filter");
            return names;
        }
    };
    for p in paths {
        match crate::config::rules::load_rule_file(&p) {
            Ok(f) => {
                for g in f.groups.iter().filter(|g| g.scope == RuleScope::Global) {
                    for r in g.rules.iter().filter(|r| r.record.is_some()) {
                        names.insert(r.name().to_string());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "cannot read rule file for the global-record filter");
            }
        }
    }
    names
}

/// The serving side of [`crate::peer::protocol::MEMBER_READ`]: runs a member's read over the local store.
pub struct MemberServer {
    local: Arc<dyn Queryable>,
    global: GlobalRecords,
    /// Evaluates pushed-down aggregations.
    engine: Engine,
}

/// Why the internal route refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The read stopped at a query limit (too many samples, past its time): the text
    /// is Prometheus's ([`StorageError::too_many_samples`], [`StorageError::timeout`]),
    /// answered with 422 / 503 so that the asking node fails the query the same way.
    #[error("{0}")]
    Limit(StorageError),
}

impl From<StorageError> for ServeError {
    fn from(e: StorageError) -> Self {
        if e.is_limit() {
            ServeError::Limit(e)
        } else {
            ServeError::Storage(e.0)
        }
    }
}

impl MemberServer {
    pub fn new(local: Arc<dyn Queryable>, global: GlobalRecords, engine: Engine) -> MemberServer {
        MemberServer {
            local,
            global,
            engine,
        }
    }

    /// Decodes a request body, reads the local store, returns the encoded answer.
    /// Blocking (sled): call it from a blocking thread.
    pub fn handle(&self, body: &[u8]) -> Result<Vec<u8>, ServeError> {
        self.serve(Self::decode(body)?)
    }

    /// Decodes a request body (cheap: the route looks at the limits before it waits
    /// for a query slot).
    pub fn decode(body: &[u8]) -> Result<Request, ServeError> {
        wire::decode(body).map_err(|e| ServeError::BadRequest(e.to_string()))
    }

    /// The limits of a read here: the asking node's, within this node's own flags
    /// (`--query.max-samples`, `--query.timeout` from now).
    fn limits(&self, l: WireLimits) -> (usize, Instant) {
        let own = self.engine.options();
        let max = l
            .max_samples
            .map_or(own.max_samples, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            })
            .min(own.max_samples);
        let own_deadline = self.engine.deadline();
        let deadline = l.deadline().map_or(own_deadline, |d| d.min(own_deadline));
        (max, deadline)
    }

    /// Reads the local store for a decoded request; returns the encoded answer.
    /// Blocking (sled): call it from a blocking thread.
    pub fn serve(&self, req: Request) -> Result<Vec<u8>, ServeError> {
        let bad = ServeError::BadRequest;
        let storage = ServeError::from;
        let (max_samples, deadline) = self.limits(req.limits());
        let resp = match req {
            Request::Select {
                hints,
                matchers,
                exclude_global,
            } => {
                let ms = wire::matchers(&matchers).map_err(bad)?;
                let mut hints: SelectHints = hints.into();
                hints.max_samples = Some(max_samples);
                hints.deadline = Some(deadline);
                let mut set = self.local.select(&hints, &ms).map_err(storage)?;
                if exclude_global {
                    let names = self.global.names();
                    if !names.is_empty() {
                        set.series
                            .retain(|s| !GlobalRecords::contains(&names, &s.labels));
                    }
                }
                Response::Series(wire::series_block(&set.series))
            }
            Request::Series {
                mint,
                maxt,
                matchers,
            } => {
                let ms = wire::matchers(&matchers).map_err(bad)?;
                let sets = self.local.series(mint, maxt, &ms).map_err(storage)?;
                Response::Series(wire::labels_block(&sets))
            }
            Request::LabelNames {
                mint,
                maxt,
                matchers,
            } => {
                let ms = wire::matchers(&matchers).map_err(bad)?;
                Response::Strings(self.local.label_names(mint, maxt, &ms).map_err(storage)?)
            }
            Request::LabelValues {
                name,
                mint,
                maxt,
                matchers,
            } => {
                let ms = wire::matchers(&matchers).map_err(bad)?;
                Response::Strings(
                    self.local
                        .label_values(&name, mint, maxt, &ms)
                        .map_err(storage)?,
                )
            }
            Request::Aggregate {
                queries,
                matchers,
                start,
                end,
                step,
                window_ms,
                limits: _,
            } => {
                let ms = wire::matchers(&matchers).map_err(bad)?;
                if queries.is_empty() || queries.iter().any(|q| pushdown::plan(q).is_none()) {
                    return Err(ServeError::BadRequest("not a pushable aggregation".into()));
                }
                let span = pushdown::Span {
                    start,
                    end,
                    step,
                    window_ms,
                };
                let engine = Engine::new(crate::promql::EngineOptions {
                    max_samples,
                    deadline: Some(deadline),
                    ..self.engine.options().clone()
                });
                let part = pushdown::evaluate(&engine, self.local.as_ref(), &queries, &ms, span)
                    .map_err(|e| ServeError::from(StorageError(e)))?;
                Response::Aggregate {
                    listing: pushdown::pack(&part.listing),
                    results: part.results.iter().map(|r| wire::series_block(r)).collect(),
                }
            }
        };
        wire::encode(&resp).map_err(|e| ServeError::Storage(e.to_string()))
    }
}

/// The cluster-wide [`Queryable`] (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct ClusterQueryable {
    inner: Arc<Inner>,
    /// Refuse partial answers instead of warning.
    strict: bool,
}

struct Inner {
    local: Arc<dyn Queryable>,
    members: MembersFn,
    opts: FanOutOptions,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    /// Response bytes received from members (for measurements).
    bytes_received: AtomicU64,
    /// Aggregations answered by pushdown (some steps may have been evaluated normally),
    /// and those a pushdown attempt handed back to the normal evaluation.
    pushed_down: AtomicU64,
    pushdown_fallbacks: AtomicU64,
    /// Members that last timed out, until when they are not asked again: a stuck
    /// member costs one timeout per member-timeout period, not one per read (a
    /// dashboard's twenty panels, or a pushdown check and its fallback).
    suspect: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    /// Queries whose pushdown check found a series on two members, with the query end
    /// time before which the check would find it again (see `pushdown`).
    no_pushdown_until: Mutex<std::collections::HashMap<String, i64>>,
}

/// How many such queries are remembered (then the memory starts over).
const NO_PUSHDOWN_MEMORY: usize = 1024;

/// At most this many runs of steps of one pushed-down query are evaluated the normal
/// way (more: the whole query is).
const MAX_NORMAL_RUNS: usize = 8;

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; this one may be dropped anywhere.
        if let Some(rt) = self.rt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}

/// What one member said (or why it said nothing).
type MemberAnswer = (Member, Result<Response, String>);

/// Why a member call gave no answer: a failure (the answer becomes partial) or a
/// query limit the member or the query's deadline hit (the read fails).
enum CallError {
    Failed(String),
    Limit(StorageError),
}

impl ClusterQueryable {
    /// A fan-out over `members()` plus `local` (this node's store).
    pub fn new(
        local: Arc<dyn Queryable>,
        members: MembersFn,
        opts: FanOutOptions,
    ) -> std::io::Result<ClusterQueryable> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shoal-query")
            .enable_all()
            .build()?;
        Ok(ClusterQueryable {
            inner: Arc::new(Inner {
                local,
                members,
                handle: rt.handle().clone(),
                rt: Mutex::new(Some(rt)),
                opts,
                bytes_received: AtomicU64::new(0),
                pushed_down: AtomicU64::new(0),
                pushdown_fallbacks: AtomicU64::new(0),
                suspect: Mutex::default(),
                no_pushdown_until: Mutex::default(),
            }),
            strict: false,
        })
    }

    /// Total response bytes received from members so far.
    pub fn bytes_received(&self) -> u64 {
        self.inner.bytes_received.load(Ordering::Relaxed)
    }

    /// Aggregations answered by pushdown so far, and pushdown attempts that fell back
    /// to the normal evaluation (series on several members at every step).
    pub fn pushdown_counts(&self) -> (u64, u64) {
        (
            self.inner.pushed_down.load(Ordering::Relaxed),
            self.inner.pushdown_fallbacks.load(Ordering::Relaxed),
        )
    }

    /// Sends `req` to every up member but this node while `local` reads this node's
    /// store on the calling thread. Returns the local result, the members' answers
    /// (ordered by member id) and the members that were down.
    fn fan_out<T>(
        &self,
        req: Request,
        deadline: Option<Instant>,
        local: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(T, Vec<MemberAnswer>, Vec<Member>), StorageError> {
        let (up, down) = self.members();
        let (local, answers) = self.fan_out_to(up, req, deadline, local)?;
        Ok((local, answers, down))
    }

    /// The other members, up ones first, each list in id order.
    fn members(&self) -> (Vec<Member>, Vec<Member>) {
        let mut members = (self.inner.members)();
        members.retain(|m| m.id != self.inner.opts.self_id);
        members.sort_by_key(|m| m.id);
        members.into_iter().partition(|m| m.up)
    }

    /// [`ClusterQueryable::fan_out`] to the given members. Each call is bounded by the
    /// member timeout and by the query's `deadline`; the member is told that bound
    /// (and the query's sample limit, in `req`). A member that hits a query limit, or
    /// the deadline passing, fails the read (no partial answer: the query is over).
    fn fan_out_to<T>(
        &self,
        up: Vec<Member>,
        req: Request,
        deadline: Option<Instant>,
        local: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(T, Vec<MemberAnswer>), StorageError> {
        let inner = &self.inner;
        let timeout = inner.opts.member_timeout;
        let now = std::time::Instant::now();
        // The query's time left, when it ends before the member timeout.
        let cut = deadline
            .map(|d| d.saturating_duration_since(now))
            .filter(|left| *left < timeout);
        let bound = cut.unwrap_or(timeout);
        let limits = req.limits();
        let req = req.with_limits(WireLimits::new(
            limits.max_samples.map(|n| n as usize),
            Some(now + bound),
        ));
        let (up, skipped): (Vec<Member>, Vec<Member>) = {
            let mut suspect = inner.suspect.lock().unwrap_or_else(|p| p.into_inner());
            suspect.retain(|_, until| *until > now);
            up.into_iter().partition(|m| !suspect.contains_key(&m.id))
        };
        let mut answers: Vec<MemberAnswer> = skipped
            .into_iter()
            .map(|m| {
                (
                    m,
                    Err(format!("did not answer within {timeout:?} a moment ago")),
                )
            })
            .collect();
        if up.is_empty() {
            return Ok((local()?, answers));
        }
        let body = Arc::new(wire::encode(&req).map_err(|e| StorageError(e.to_string()))?);
        let (tx, rx) = std::sync::mpsc::channel::<(Member, Result<Response, CallError>)>();
        for m in up.iter().cloned() {
            let tx = tx.clone();
            let body = body.clone();
            let this = self.inner.clone();
            inner.handle.spawn(async move {
                let r = match tokio::time::timeout(bound, this.call(&m.addr, body)).await {
                    Ok(r) => r,
                    // The query's time is up, not the member's: it is not suspect.
                    Err(_) if cut.is_some() => {
                        Err(CallError::Limit(StorageError::timeout("query execution")))
                    }
                    Err(_) => {
                        this.suspect
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(m.id, std::time::Instant::now() + timeout);
                        Err(CallError::Failed(format!(
                            "did not answer within {timeout:?}"
                        )))
                    }
                };
                let _ = tx.send((m, r));
            });
        }
        drop(tx);
        let local = local()?;
        // Each call ends within its bound; the extra second covers scheduling (but
        // never past the query's deadline).
        let mut wait_until = now + bound + Duration::from_secs(1);
        if cut.is_some()
            && let Some(d) = deadline
        {
            wait_until = wait_until.min(d);
        }
        let asked = answers.len() + up.len();
        while answers.len() < asked {
            let left = wait_until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                // A member that gave up at the member timeout (not the query's) is
                // one that did not answer in time: the answer is partial.
                Ok((m, Err(CallError::Limit(e)))) if cut.is_none() && !e.is_too_many_samples() => {
                    answers.push((m, Err(format!("did not answer within {timeout:?}"))));
                }
                Ok((_, Err(CallError::Limit(e)))) => return Err(e),
                Ok((m, Err(CallError::Failed(e)))) => answers.push((m, Err(e))),
                Ok((m, Ok(r))) => answers.push((m, Ok(r))),
                Err(_) if cut.is_some() => {
                    return Err(StorageError::timeout("query execution"));
                }
                Err(_) => break,
            }
        }
        for m in up {
            if !answers.iter().any(|(a, _)| a.id == m.id) {
                answers.push((m, Err(format!("did not answer within {timeout:?}"))));
            }
        }
        answers.sort_by_key(|(m, _)| m.id);
        Ok((local, answers))
    }

    /// The warnings for members that are down or failed; an error instead when strict.
    fn incomplete(
        &self,
        down: &[Member],
        failed: Vec<(Member, String)>,
    ) -> Result<Vec<String>, StorageError> {
        let mut warnings: Vec<String> = down
            .iter()
            .map(|m| {
                format!(
                    "cluster member {} ({}) is down; its data is missing from the result",
                    m.id, m.addr
                )
            })
            .collect();
        for (m, why) in failed {
            tracing::warn!(member = m.id, addr = %m.addr, error = %why, "cluster member failed a read; answering partially");
            warnings.push(format!(
                "cluster member {} ({}) {}; its data is missing from the result",
                m.id, m.addr, why
            ));
        }
        if self.strict && !warnings.is_empty() {
            return Err(StorageError(format!(
                "{INCOMPLETE}: {}",
                warnings.join("; ")
            )));
        }
        Ok(warnings)
    }

    /// Runs a label-set or string read everywhere and returns the sorted union.
    fn union<T: Ord>(
        &self,
        req: Request,
        local: impl FnOnce() -> Result<Vec<T>, StorageError>,
        from: impl Fn(Response) -> Result<Vec<T>, String>,
    ) -> Result<Warned<Vec<T>>, StorageError> {
        let (mut all, answers, down) = self.fan_out(req, None, local)?;
        let mut failed = Vec::new();
        for (m, r) in answers {
            match r.and_then(&from) {
                Ok(v) => all.extend(v),
                Err(e) => failed.push((m, e)),
            }
        }
        let warnings = self.incomplete(&down, failed)?;
        all.sort();
        all.dedup();
        Ok(Warned {
            value: all,
            warnings,
        })
    }
}

impl ClusterQueryable {
    /// Evaluates `query` with aggregation pushdown when [`pushdown::plan`] accepts it
    /// and every series turns out to live on one member only; `None` when the query
    /// must be evaluated the normal way (over [`Queryable::select`]). `step == 0` (and
    /// `start == end`) for an instant query. `strict`: refuse a partial answer.
    pub fn pushdown(
        &self,
        engine: &Engine,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        strict: bool,
    ) -> Option<Result<QueryResult, EvalError>> {
        if !self.inner.opts.pushdown {
            return None;
        }
        let plan = pushdown::plan(query)?;
        let lookback = engine.options().lookback_delta.as_millis() as i64;
        let span = pushdown::Span {
            start,
            end,
            step,
            window_ms: plan.range_ms.unwrap_or(lookback),
        };
        // A series on two members stays in the window of this query (same text, same
        // length) until its data there has aged out: at most the query's span plus the
        // window after this query's end. Don't check again before.
        let key = format!("{query}\u{0}{}\u{0}{step}", end - start);
        let skip = self
            .inner
            .no_pushdown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if skip.get(&key).is_some_and(|&until| end < until) {
            tracing::debug!(
                query,
                "pushdown: skipped, a series was on several members a moment ago"
            );
            return None;
        }
        drop(skip);
        // One round: every member evaluates its part and lists the series it holds
        // (about 5 bytes each, grouped by the steps they reach). A member that fails is
        // missing from the answer, as it would be without pushdown.
        let (up, down) = self.members();
        if up.is_empty() && down.is_empty() {
            // A cluster of one: the normal evaluation reads the local store only.
            return None;
        }
        let local = self.inner.local.as_ref();
        let req = Request::Aggregate {
            queries: plan.member_queries.clone(),
            matchers: wire::wire_matchers(&plan.matchers),
            start,
            end,
            step,
            window_ms: span.window_ms,
            limits: WireLimits::new(Some(engine.options().max_samples), Some(engine.deadline())),
        };
        let deadline = engine.deadline();
        let eval = || {
            pushdown::evaluate(engine, local, &plan.member_queries, &plan.matchers, span)
                .map_err(StorageError)
        };
        let t0 = std::time::Instant::now();
        // A query limit fails the query; another local failure is left to the normal
        // path to report.
        let (local_part, answers) = match self.fan_out_to(up, req, Some(deadline), eval) {
            Ok(x) => x,
            Err(e) if e.is_limit() => {
                return Some(Err(crate::promql::engine::storage_error(e)));
            }
            Err(e) => {
                tracing::debug!(query, error = %e, "pushdown: the local part failed");
                return None;
            }
        };
        let elapsed = t0.elapsed();
        let self_id = self.inner.opts.self_id;
        let mut parts = vec![(self_id, local_part)];
        let mut failed = Vec::new();
        for (m, r) in answers {
            match r.and_then(part_of) {
                Ok(p) => parts.push((m.id, p)),
                Err(e) => failed.push((m, e)),
            }
        }
        // The steps at which a series is on two members are evaluated the normal way
        // (over the data their windows read: never more than the whole query reads);
        // when that is all of them, the whole query is.
        let listings: Vec<&pushdown::Listing> = parts.iter().map(|(_, p)| &p.listing).collect();
        let runs = pushdown::overlapping_steps(&listings, span);
        let steps = |(a, b): (i64, i64)| (b - a) / step.max(1) + 1;
        let total = steps((start, end));
        let overlapping: i64 = runs.iter().map(|&r| steps(r)).sum();
        if overlapping == total || runs.len() > MAX_NORMAL_RUNS {
            tracing::debug!(
                query,
                overlapping,
                total,
                "pushdown not exact (series on several members); evaluating normally"
            );
            self.inner
                .pushdown_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            let mut skip = self
                .inner
                .no_pushdown_until
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if skip.len() >= NO_PUSHDOWN_MEMORY {
                skip.clear();
            }
            skip.insert(key, end + (end - start) + span.window_ms);
            return None;
        }
        let covered: usize = listings.iter().map(|l| l.len()).sum();
        // Member-id order on every node: the same float summation order, the same answer.
        parts.sort_by_key(|(id, _)| *id);
        let parts: Vec<pushdown::Part> = parts.into_iter().map(|(_, p)| p).collect();
        let checked = ClusterQueryable {
            inner: self.inner.clone(),
            strict,
        };
        let mut warnings = match checked.incomplete(&down, failed) {
            Ok(w) => w,
            Err(e) => return Some(Err(EvalError::Execution(e.0))),
        };
        tracing::debug!(
            query,
            members = parts.len(),
            series = covered,
            normal_steps = overlapping,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "aggregation pushed down"
        );
        self.inner.pushed_down.fetch_add(1, Ordering::Relaxed);
        let mut series = pushdown::combine(plan.combine, parts);
        if !runs.is_empty() {
            // Only a range query gets here (an instant query's one step is all of it).
            let mut normal = Vec::new();
            for &(a, b) in &runs {
                match engine.range_query(&checked, query, a, b, step) {
                    Ok(r) => {
                        for w in r.warnings {
                            if !warnings.contains(&w) {
                                warnings.push(w);
                            }
                        }
                        if let Value::Matrix(m) = r.value {
                            normal.extend(m);
                        }
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            series = pushdown::splice(series, &runs, normal);
        }
        let value = if step == 0 {
            Value::Vector(
                series
                    .into_iter()
                    .filter_map(|s| {
                        let x = s.samples.first().copied()?;
                        Some(VectorSample {
                            labels: s.labels,
                            t: x.t,
                            v: x.v,
                        })
                    })
                    .collect(),
            )
        } else {
            Value::Matrix(series)
        };
        Some(Ok(QueryResult { value, warnings }))
    }
}

/// [`ClusterQueryable::pushdown`] as the engine's [`crate::promql::Pushdown`] hook:
/// every pushable aggregation of a query (also one inside `histogram_quantile` or a
/// binary operation) is offered to the members.
pub struct ClusterPushdown<'a> {
    pub cluster: &'a ClusterQueryable,
    pub engine: &'a Engine,
    /// Refuse a partial answer (`partial_response=false`).
    pub strict: bool,
}

impl crate::promql::Pushdown for ClusterPushdown<'_> {
    fn aggregate(
        &self,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Option<Result<QueryResult, EvalError>> {
        self.cluster
            .pushdown(self.engine, expr, start, end, step, self.strict)
    }
}

impl Inner {
    async fn call(&self, addr: &str, body: Arc<Vec<u8>>) -> Result<Response, CallError> {
        let fail = CallError::Failed;
        let sent = self
            .opts
            .peer
            .send(Lane::Reads, addr, MEMBER_READ, body.as_ref().clone(), None)
            .await;
        let bytes = match sent {
            Ok(bytes) => bytes,
            Err(PeerError::Status { status, body, .. }) => {
                let limit = StorageError(body.clone());
                if limit.is_limit() && matches!(status, 422 | 503) {
                    return Err(CallError::Limit(limit));
                }
                return Err(fail(format!("answered HTTP {status}: {body}")));
            }
            Err(e @ PeerError::Connect { .. }) => {
                return Err(fail(format!("could not be reached: {e}")));
            }
            Err(e) => return Err(fail(format!("broke off its answer: {e}"))),
        };
        self.bytes_received
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        wire::decode(&bytes).map_err(|e| fail(format!("sent an unreadable answer: {e}")))
    }
}

fn series_of(r: Response) -> Result<Vec<Series>, String> {
    match r {
        Response::Series(b) => b
            .decode()
            .map_err(|e| format!("sent an unreadable answer: {e}")),
        _ => Err("sent the wrong kind of answer".into()),
    }
}

fn strings_of(r: Response) -> Result<Vec<String>, String> {
    match r {
        Response::Strings(v) => Ok(v),
        _ => Err("sent the wrong kind of answer".into()),
    }
}

fn part_of(r: Response) -> Result<pushdown::Part, String> {
    match r {
        Response::Aggregate { listing, results } => Ok(pushdown::Part {
            listing: pushdown::unpack(&listing)
                .map_err(|e| format!("sent an unreadable answer: {e}"))?,
            results: results
                .into_iter()
                .map(SeriesBlock::decode)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("sent an unreadable answer: {e}"))?,
        }),
        _ => Err("sent the wrong kind of answer".into()),
    }
}

/// Merges per-member series lists (each sorted by labels, one entry per label set) into
/// one list sorted by labels; equal label sets are merged with [`dedup::merge`] in the
/// order of `parts` (member id order, the same on every node).
pub fn merge_series(mut parts: Vec<Vec<Series>>) -> Vec<Series> {
    parts.retain(|p| !p.is_empty());
    if parts.len() <= 1 {
        // One source (e.g. a cluster of one): already sorted, nothing to merge.
        return parts.pop().unwrap_or_default();
    }
    let mut by_labels: BTreeMap<Labels, Vec<Vec<Sample>>> = BTreeMap::new();
    for part in parts {
        for s in part {
            by_labels.entry(s.labels).or_default().push(s.samples);
        }
    }
    by_labels
        .into_iter()
        .filter_map(|(labels, sources)| {
            let samples = dedup::merge(sources);
            (!samples.is_empty()).then_some(Series { labels, samples })
        })
        .collect()
}

impl Queryable for ClusterQueryable {
    fn select(&self, hints: &SelectHints, matchers: &[Matcher]) -> Result<SeriesSet, StorageError> {
        let req = Request::Select {
            hints: hints.into(),
            matchers: wire::wire_matchers(matchers),
            exclude_global: true,
        };
        // This node and every member each load at most the limit; what they send is
        // counted again as it is decoded, so the merged read holds at most the limit
        // (plus one member's chunk) before it fails.
        let budget = SampleBudget::new(hints.max_samples, hints.deadline);
        let (local, answers, down) = self.fan_out(req, hints.deadline, || {
            self.inner.local.select(hints, matchers)
        })?;
        budget.take(local.series.iter().map(|s| s.samples.len()).sum())?;
        let self_id = self.inner.opts.self_id;
        let mut parts: Vec<(u64, Vec<Series>)> = vec![(self_id, local.series)];
        let mut failed = Vec::new();
        for (m, r) in answers {
            let decoded = match r {
                Ok(Response::Series(b)) => b.decode_counted(&budget)?,
                Ok(_) => Err("sent the wrong kind of answer".into()),
                Err(e) => Err(e),
            };
            match decoded {
                Ok(s) => parts.push((m.id, s)),
                Err(e) => failed.push((m, e)),
            }
        }
        let mut warnings = self.incomplete(&down, failed)?;
        warnings.extend(local.warnings);
        parts.sort_by_key(|(id, _)| *id);
        let series = merge_series(parts.into_iter().map(|(_, s)| s).collect());
        Ok(SeriesSet { series, warnings })
    }

    fn series(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<Labels>, StorageError> {
        self.series_warned(mint, maxt, matchers).map(|w| w.value)
    }

    fn label_names(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.label_names_warned(mint, maxt, matchers)
            .map(|w| w.value)
    }

    fn label_values(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Vec<String>, StorageError> {
        self.label_values_warned(name, mint, maxt, matchers)
            .map(|w| w.value)
    }

    fn series_warned(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<Labels>>, StorageError> {
        let req = Request::Series {
            mint,
            maxt,
            matchers: wire::wire_matchers(matchers),
        };
        self.union(
            req,
            || self.inner.local.series(mint, maxt, matchers),
            |r| Ok(series_of(r)?.into_iter().map(|s| s.labels).collect()),
        )
    }

    fn label_names_warned(
        &self,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<String>>, StorageError> {
        let req = Request::LabelNames {
            mint,
            maxt,
            matchers: wire::wire_matchers(matchers),
        };
        self.union(
            req,
            || self.inner.local.label_names(mint, maxt, matchers),
            strings_of,
        )
    }

    fn label_values_warned(
        &self,
        name: &str,
        mint: i64,
        maxt: i64,
        matchers: &[Matcher],
    ) -> Result<Warned<Vec<String>>, StorageError> {
        let req = Request::LabelValues {
            name: name.to_string(),
            mint,
            maxt,
            matchers: wire::wire_matchers(matchers),
        };
        self.union(
            req,
            || self.inner.local.label_values(name, mint, maxt, matchers),
            strings_of,
        )
    }

    fn strict(&self) -> Option<Arc<dyn Queryable>> {
        Some(Arc::new(ClusterQueryable {
            inner: self.inner.clone(),
            strict: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemStore;

    /// A member answers selects without the series of global recording rules (every
    /// node has them), metadata reads with everything, and refuses garbage.
    #[test]
    fn member_server_reads_and_leaves_out_global_records() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.yml");
        std::fs::write(
            &rules,
            "groups:\n  - name: g\n    scope: global\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n  - name: l\n    rules:\n      - record: instance:up:max\n        expr: max by (instance) (up)\n",
        )
        .unwrap();
        let cfg = Arc::new(
            crate::config::load_str(&format!("rule_files: ['{}']\n", rules.display())).unwrap(),
        );
        let global = GlobalRecords::new(Arc::new(move || cfg.clone()));
        assert_eq!(
            *global.names(),
            HashSet::from(["job:up:sum".to_string()]),
            "only records of global groups"
        );
        let store = MemStore::new();
        for name in ["up", "job:up:sum", "instance:up:max"] {
            store.insert(
                &Labels::from_pairs(&[("__name__", name), ("job", "a")]),
                1000,
                1.0,
            );
        }
        let server = MemberServer::new(
            Arc::new(store),
            global,
            Engine::new(crate::promql::EngineOptions::default()),
        );
        let all = vec![any_job()];
        let select = |exclude_global| {
            let req = Request::Select {
                hints: wire::WireHints {
                    start: 0,
                    end: 2000,
                    step: 0,
                    func: None,
                    range: 0,
                    limits: Default::default(),
                    grid: None,
                },
                matchers: all.clone(),
                exclude_global,
            };
            let bytes = server.handle(&wire::encode(&req).unwrap()).unwrap();
            let series = series_of(wire::decode(&bytes).unwrap()).unwrap();
            let mut names: Vec<String> = series
                .iter()
                .filter_map(|s| s.labels.metric_name().map(str::to_string))
                .collect();
            names.sort();
            names
        };
        assert_eq!(select(true), ["instance:up:max", "up"]);
        assert_eq!(select(false), ["instance:up:max", "job:up:sum", "up"]);
        assert!(matches!(
            server.handle(b"\x01\xff\xff"),
            Err(ServeError::BadRequest(_))
        ));
    }

    /// A fake member on a loopback port: it records every request it gets and
    /// answers each with `reply(request)` (status, body), or never when that is `None`.
    fn fake_member(
        reply: impl Fn(&Request) -> Option<(u16, Vec<u8>)> + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<Request>>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (seen2, reply) = (seen.clone(), Arc::new(reply));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let (seen, reply) = (seen2.clone(), reply.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    let (head_end, len) = loop {
                        let n = conn.read(&mut tmp).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let n = conn.read(&mut tmp).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    }
                    let req: Request = wire::decode(&buf[head_end..head_end + len]).unwrap();
                    let answer = reply(&req);
                    seen.lock().unwrap().push(req);
                    match answer {
                        Some((status, body)) => {
                            let _ = write!(
                                conn,
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = conn.write_all(&body);
                        }
                        // Stuck: keep the connection open, never answer.
                        None => std::thread::sleep(Duration::from_secs(30)),
                    }
                });
            }
        });
        (addr, seen)
    }

    fn cluster_with(addr: String, member_timeout: Duration) -> ClusterQueryable {
        let member = Member {
            id: 2,
            addr,
            up: true,
        };
        ClusterQueryable::new(
            Arc::new(MemStore::new()),
            Arc::new(move || vec![member.clone()]),
            FanOutOptions {
                self_id: 1,
                member_timeout,
                peer: crate::peer::PeerClient::new(Default::default()).unwrap(),
                pushdown: false,
            },
        )
        .unwrap()
    }

    fn limited(max_samples: usize, left: Duration) -> SelectHints {
        SelectHints {
            start: 0,
            end: 1000,
            max_samples: Some(max_samples),
            deadline: Some(Instant::now() + left),
            ..SelectHints::default()
        }
    }

    /// Members are told the query's sample limit and the time it has left (not the
    /// fixed member timeout).
    #[test]
    fn members_get_the_sample_limit_and_the_remaining_time() {
        let empty = wire::encode(&Response::Series(SeriesBlock::default())).unwrap();
        let (addr, seen) = fake_member(move |_| Some((200, empty.clone())));
        let q = cluster_with(addr, Duration::from_secs(30));
        let set = q
            .select(&limited(1234, Duration::from_secs(2)), &[])
            .unwrap();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let l = seen.lock().unwrap()[0].limits();
        assert_eq!(l.max_samples, Some(1234));
        let ms = l.timeout_ms.expect("a time limit");
        assert!(ms > 0 && ms <= 2000, "{ms} ms");
        // A query with more time than the member timeout: the member timeout.
        seen.lock().unwrap().clear();
        let q2 = cluster_with(
            q.inner.members.as_ref()()[0].addr.clone(),
            Duration::from_secs(3),
        );
        q2.select(&limited(5, Duration::from_secs(60)), &[])
            .unwrap();
        let ms = seen.lock().unwrap()[0].limits().timeout_ms.unwrap();
        assert!(ms > 2000 && ms <= 3000, "{ms} ms");
    }

    /// A member over the sample limit fails the read (not a partial answer), as does a
    /// member that is still silent when the query's time is up; a member silent past
    /// the member timeout only makes the answer partial.
    #[test]
    fn a_member_at_a_limit_fails_the_read() {
        let (addr, _) = fake_member(|_| Some((422, crate::storage::TOO_MANY_SAMPLES.into())));
        let q = cluster_with(addr, Duration::from_secs(30));
        let err = q
            .select(&limited(10, Duration::from_secs(10)), &[])
            .unwrap_err();
        assert!(err.is_too_many_samples(), "{err}");

        let (addr, _) = fake_member(|_| None);
        let q = cluster_with(addr.clone(), Duration::from_secs(30));
        let t = Instant::now();
        let err = q
            .select(&limited(10, Duration::from_millis(300)), &[])
            .unwrap_err();
        assert_eq!(err.timed_out_in(), Some("query execution"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let q = cluster_with(addr, Duration::from_millis(300));
        let set = q
            .select(&limited(10, Duration::from_secs(30)), &[])
            .unwrap();
        assert!(
            set.warnings.iter().any(|w| w.contains("did not answer")),
            "{:?}",
            set.warnings
        );
    }

    /// What members send is counted against the limit as it is decoded.
    #[test]
    fn member_samples_count_against_the_limit() {
        let series = vec![Series {
            labels: Labels::from_pairs(&[("__name__", "x")]),
            samples: (0..100).map(|t| Sample { t, v: 1.0 }).collect(),
        }];
        let body = wire::encode(&Response::Series(wire::series_block(&series))).unwrap();
        let (addr, _) = fake_member(move |_| Some((200, body.clone())));
        let q = cluster_with(addr, Duration::from_secs(30));
        assert_eq!(
            q.select(&limited(100, Duration::from_secs(10)), &[])
                .unwrap()
                .series[0]
                .samples
                .len(),
            100
        );
        assert!(
            q.select(&limited(99, Duration::from_secs(10)), &[])
                .unwrap_err()
                .is_too_many_samples()
        );
    }

    /// The serving side holds a select to the asking node's limits.
    #[test]
    fn member_server_enforces_the_limits_in_the_request() {
        let store = MemStore::new();
        for t in 0..50 {
            store.insert(
                &Labels::from_pairs(&[("__name__", "x"), ("job", "a")]),
                t,
                1.0,
            );
        }
        let server = MemberServer::new(
            Arc::new(store),
            GlobalRecords::new(Arc::new(|| {
                Arc::new(crate::config::load_str("{}").unwrap())
            })),
            Engine::new(crate::promql::EngineOptions::default()),
        );
        let req = |limits| {
            wire::encode(&Request::Select {
                hints: wire::WireHints {
                    start: 0,
                    end: 100,
                    step: 0,
                    func: None,
                    range: 0,
                    limits,
                    grid: None,
                },
                matchers: vec![any_job()],
                exclude_global: false,
            })
            .unwrap()
        };
        assert!(server.handle(&req(WireLimits::default())).is_ok());
        let over = WireLimits {
            max_samples: Some(49),
            timeout_ms: None,
        };
        assert!(matches!(
            server.handle(&req(over)),
            Err(ServeError::Limit(e)) if e.is_too_many_samples()
        ));
        let late = WireLimits {
            max_samples: None,
            timeout_ms: Some(0),
        };
        assert!(matches!(
            server.handle(&req(late)),
            Err(ServeError::Limit(e)) if e.timed_out_in().is_some()
        ));
    }

    /// A matcher that matches every series with a job label.
    fn any_job() -> wire::WireMatcher {
        wire::WireMatcher {
            op: 2,
            name: "job".into(),
            value: ".+".into(),
        }
    }

    #[test]
    fn merged_series_are_sorted_and_deduplicated_per_label_set() {
        let l = |v: &str| Labels::from_pairs(&[("__name__", "x"), ("i", v)]);
        let s = |labels: Labels, ts: &[i64]| Series {
            labels,
            samples: ts.iter().map(|&t| Sample { t, v: 1.0 }).collect(),
        };
        let a = vec![s(l("1"), &[0, 15_000, 30_000]), s(l("3"), &[0])];
        let b = vec![s(l("1"), &[2, 15_002, 30_002]), s(l("2"), &[5])];
        let m = merge_series(vec![a, b]);
        let names: Vec<&str> = m.iter().map(|s| s.labels.get("i").unwrap()).collect();
        assert_eq!(names, ["1", "2", "3"]);
        assert_eq!(
            m[0].samples.len(),
            3,
            "replicas merged once: {:?}",
            m[0].samples
        );
    }
}
