//! `GET /federate?match[]=...`: Prometheus's federation endpoint. For every series
//! matching one of the `match[]` selectors it writes the latest sample within the
//! lookback delta (series whose latest sample is a staleness marker are left out), in
//! the text exposition format 0.0.4 with one `# TYPE <name> untyped` line per metric
//! name, sorted by name and labels. The server's Compress middleware gzips the answer
//! for clients that send `Accept-Encoding: gzip` (Prometheus does).
//!
//! Labels added to each series, unless the series already has a label of that name
//! (as Prometheus does with external labels):
//! - the config's `external_labels`;
//! - with `local=1` (this node's own data only), `shard="<node id>"`: the answer is
//!   one shard's view, like the `slave` external label of the classic sharding recipe.
//!   Cluster-wide answers (no `local`) carry no `shard` label: they are the merged
//!   data of all nodes.
//!
//! shoal extension: `external_labels=0` leaves the external labels out (the master loop
//! uses it: external labels are for the world outside the cluster, not for data the
//! cluster stores).
//!
//! Limits, as a query's: the request holds a query slot (`--query.max-concurrency`,
//! waiting at most `--query.timeout`), each selector's select loads at most
//! `--query.max-samples` samples and stops at the deadline. Over the limit the answer
//! is a 422 with Prometheus's text ("query processing would load too many samples into
//! memory in query execution"), past the deadline a 503 ("query timed out in …") —
//! never a partial 200.
//!
//! Differences from Prometheus: a request without any `match[]` is a 400 (Prometheus
//! answers an empty 200), so a misconfigured federation job shows up as a failed
//! scrape; only the text format is served (no protobuf negotiation); Prometheus's
//! `/federate` has no sample limit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::params::parse_selector;
use crate::model::labels::{METRIC_NAME, escape_label_value};
use crate::model::{Labels, Matcher, Sample, is_stale_nan};
use crate::storage::{Queryable, SelectHints, StorageError};

/// Content type of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn bad_request(msg: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{}\n", msg.into()))
}

fn flag(v: Option<&String>) -> Result<Option<bool>, String> {
    match v.map(|s| s.to_ascii_lowercase()) {
        None => Ok(None),
        Some(s) if s == "1" || s == "true" => Ok(Some(true)),
        Some(s) if s == "0" || s == "false" || s.is_empty() => Ok(Some(false)),
        Some(s) => Err(s),
    }
}

pub async fn federate(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let arrived = Instant::now();
    let params: Vec<(String, String)> = match serde_urlencoded::from_str(req.query_string()) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("error parsing form values: {e}")),
    };
    let get = |k: &str| params.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
    let local = match flag(get("local")) {
        Ok(v) => v.unwrap_or(false),
        Err(v) => return bad_request(format!("invalid parameter \"local\": {v:?}")),
    };
    let with_external = match flag(get("external_labels")) {
        Ok(v) => v.unwrap_or(true),
        Err(v) => return bad_request(format!("invalid parameter \"external_labels\": {v:?}")),
    };
    let mut sets: Vec<Vec<Matcher>> = Vec::new();
    for (_, s) in params.iter().filter(|(k, _)| k == "match[]") {
        match parse_selector(s) {
            Ok(alts) => sets.extend(alts),
            Err(e) => return bad_request(e),
        }
    }
    if sets.is_empty() {
        return bad_request("no match[] parameter provided");
    }
    answer(&st, arrived, local, with_external, sets).await
}

/// `POST /internal/federate` (`peer::protocol::FEDERATE`): the leader's master loop
/// federates this node's own latest samples (as `/federate?local=1&external_labels=0`),
/// selectors in a typed body. The peer guard has checked the cluster secret.
pub async fn member_federate(body: web::Bytes, st: web::Data<AppState>) -> HttpResponse {
    let arrived = Instant::now();
    let req: crate::peer::protocol::FederateRequest = match crate::cluster::codec::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("malformed federation request: {e}")),
    };
    let mut sets: Vec<Vec<Matcher>> = Vec::new();
    for s in &req.selectors {
        match parse_selector(s) {
            Ok(alts) => sets.extend(alts),
            Err(e) => return bad_request(e),
        }
    }
    if sets.is_empty() {
        return bad_request("no selector given");
    }
    answer(&st, arrived, true, false, sets).await
}

/// The latest sample of every series matching one of `sets`, in the text format, held
/// to the query limits.
async fn answer(
    st: &AppState,
    arrived: Instant,
    local: bool,
    with_external: bool,
    sets: Vec<Vec<Matcher>>,
) -> HttpResponse {
    let mut extra = if with_external {
        st.current_config().global.external_labels.clone()
    } else {
        Labels::empty()
    };
    if local && let Some(c) = &st.cluster {
        let mut b = extra.builder();
        b.set(crate::rules::SHARD_LABEL, &c.handle.node_id().to_string());
        extra = b.build();
    }
    let store = if local {
        st.local.clone()
    } else {
        st.storage.clone()
    };
    let deadline = arrived + st.engine_opts.timeout;
    let _permit = match super::api::slot(&st.query_slots, deadline).await {
        Ok(p) => p,
        Err(e) => {
            return HttpResponse::build(e.kind.status())
                .content_type("text/plain; charset=utf-8")
                .body(format!("federation failed: {}\n", e.msg));
        }
    };
    let now = now_ms();
    let lookback = st.engine_opts.lookback_delta.as_millis() as i64;
    let hints = SelectHints {
        start: now - lookback,
        end: now,
        max_samples: Some(st.engine_opts.max_samples),
        deadline: Some(deadline),
        // Only the latest sample of each series is wanted.
        grid: Some(crate::storage::StepGrid {
            first: now,
            step: 0,
            last: now,
        }),
        ..SelectHints::default()
    };
    let res = web::block(move || latest(store.as_ref(), &sets, &hints)).await;
    match res {
        Ok(Ok(series)) => HttpResponse::Ok()
            .content_type(CONTENT_TYPE)
            .body(render(&series, &extra)),
        Ok(Err(e)) if e.is_limit() => {
            let status = if e.is_too_many_samples() {
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY
            } else {
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE
            };
            HttpResponse::build(status)
                .content_type("text/plain; charset=utf-8")
                .body(format!("federation failed: {e}\n"))
        }
        Ok(Err(e)) => HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body(format!("federation failed: {e}\n")),
        Err(e) => HttpResponse::InternalServerError().body(format!("federation failed: {e}\n")),
    }
}

fn now_ms() -> i64 {
    crate::rules::now_ms()
}

/// The latest non-stale sample in `[hints.start, hints.end]` of every series matching
/// one of the matcher sets, by labels. Each set's select is held to the hints' limits.
pub fn latest(
    q: &dyn Queryable,
    sets: &[Vec<Matcher>],
    hints: &SelectHints,
) -> Result<BTreeMap<Labels, Sample>, StorageError> {
    let (mint, maxt) = (hints.start, hints.end);
    let mut out: BTreeMap<Labels, Sample> = BTreeMap::new();
    for ms in sets {
        let set = q.select(hints, ms)?;
        for w in &set.warnings {
            tracing::debug!(warning = %w, "federation select");
        }
        for s in set.series {
            let Some(last) = s.samples.iter().rev().find(|x| x.t <= maxt && x.t >= mint) else {
                continue;
            };
            if is_stale_nan(last.v) {
                continue;
            }
            match out.get(&s.labels) {
                Some(prev) if prev.t >= last.t => {}
                _ => {
                    out.insert(s.labels, *last);
                }
            }
        }
    }
    Ok(out)
}

/// Writes series in the text format, grouped by metric name, with `extra` labels added
/// where the series lacks them.
pub fn render(series: &BTreeMap<Labels, Sample>, extra: &Labels) -> String {
    // Group by metric name (series without a name cannot be written).
    let mut by_name: BTreeMap<&str, Vec<(&Labels, &Sample)>> = BTreeMap::new();
    for (l, s) in series {
        if let Some(n) = l.metric_name() {
            by_name.entry(n).or_default().push((l, s));
        }
    }
    let mut out = String::new();
    for (name, list) in by_name {
        let _ = writeln!(out, "# TYPE {name} untyped");
        for (l, s) in list {
            out.push_str(name);
            let mut b = l.builder();
            b.del(METRIC_NAME);
            for e in extra.iter() {
                if !l.has(&e.name) {
                    b.set(&e.name, &e.value);
                }
            }
            let labels = b.build();
            if !labels.is_empty() {
                out.push('{');
                for (i, lab) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{}=\"{}\"", lab.name, escape_label_value(&lab.value));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {} {}", go_g(s.v), s.t);
        }
    }
    out
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` with `+Inf`, `-Inf`, `NaN`, as the text
/// format writes values.
pub fn go_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let e = format!("{v:e}");
    let (m, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Go uses the exponent form when the exponent is < -4 or >= 6 (shortest format).
    if !(-4..6).contains(&exp) {
        return format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemStore;

    #[test]
    fn latest_skips_stale_and_old_and_renders_text() {
        let s = MemStore::new();
        let a = Labels::from_pairs(&[("__name__", "x"), ("i", "a")]);
        let b = Labels::from_pairs(&[("__name__", "x"), ("i", "b\"q")]);
        let c = Labels::from_pairs(&[("__name__", "y"), ("dc", "own")]);
        let old = Labels::from_pairs(&[("__name__", "x"), ("i", "old")]);
        s.insert(&a, 1000, 1.0);
        s.insert(&a, 2000, 2.5);
        s.insert(&b, 1000, 3.0);
        s.insert(&b, 1500, crate::model::stale_nan());
        s.insert(&c, 1800, 1e-7);
        s.insert(&old, 10, 1.0);
        let sets = vec![
            vec![Matcher::equal("__name__", "x")],
            vec![Matcher::equal("__name__", "y")],
        ];
        let hints = |max_samples| SelectHints {
            start: 500,
            end: 2500,
            max_samples,
            ..SelectHints::default()
        };
        let got = latest(&s, &sets, &hints(None)).unwrap();
        // Four samples in the window (and the select stops at the limit).
        assert!(
            latest(&s, &sets, &hints(Some(3)))
                .unwrap_err()
                .is_too_many_samples()
        );
        assert_eq!(latest(&s, &sets, &hints(Some(4))).unwrap().len(), 2);
        // Thinned to the latest sample per series: two of x.
        let thin = |max_samples| SelectHints {
            grid: Some(crate::storage::StepGrid {
                first: 2500,
                step: 0,
                last: 2500,
            }),
            ..hints(max_samples)
        };
        assert_eq!(latest(&s, &sets, &thin(Some(2))).unwrap(), got);
        assert!(latest(&s, &sets, &thin(Some(1))).is_err());
        assert_eq!(got.len(), 2);
        assert_eq!(go_g(1e6), "1e+06");
        assert_eq!(go_g(123456.0), "123456");
        assert_eq!(go_g(0.0001), "0.0001");
        assert_eq!(go_g(-2.5e-5), "-2.5e-05");
        let extra = Labels::from_pairs(&[("dc", "eu"), ("shard", "7")]);
        assert_eq!(
            render(&got, &extra),
            "# TYPE x untyped\nx{dc=\"eu\",i=\"a\",shard=\"7\"} 2.5 2000\n# TYPE y untyped\ny{dc=\"own\",shard=\"7\"} 1e-07 1800\n"
        );
    }
}
