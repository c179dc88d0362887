//! `GET /api/v1/rules` and `GET /api/v1/alerts` in Prometheus 2.42's JSON shapes, from
//! the node's [`crate::rules::RuleManager`]. shoal adds `"scope"` to each group
//! (`local`: evaluated on this node; `global`: on the leader, so a follower shows the
//! group as never evaluated).

use std::time::SystemTime;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value as Json, json};

use super::AppState;
use super::json::{ApiError, success};
use crate::config::rules::RuleScope;
use crate::model::Labels;
use crate::rules::alert::{self, Alert};
use crate::rules::group::RuleState;

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

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, the alert value format of the API.
pub fn go_exp(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{v:e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

fn alert_json(a: &Alert) -> Json {
    let mut o = json!({
        "labels": labels_json(&a.labels),
        "annotations": labels_json(&a.annotations),
        "state": a.state.as_str(),
        "activeAt": rfc3339_ms(a.active_at),
        "value": go_exp(a.value),
    });
    if let Some(k) = a.keep_firing_since {
        o["keepFiringSince"] = Json::String(rfc3339_ms(k));
    }
    o
}

fn rule_json(r: &crate::rules::group::CompiledRule, st: &RuleState) -> Json {
    let mut o = if r.rule.is_alert() {
        json!({
            "state": alert::rule_state(st).as_str(),
            "name": r.rule.name(),
            "query": r.expr.to_string(),
            "duration": r.rule.for_.as_secs_f64(),
            "keepFiringFor": r.rule.keep_firing_for.as_secs_f64(),
            "labels": labels_json(&r.rule.labels),
            "annotations": labels_json(&r.rule.annotations),
            "alerts": alert::active(st).map(alert_json).collect::<Vec<_>>(),
            "type": "alerting",
        })
    } else {
        json!({
            "name": r.rule.name(),
            "query": r.expr.to_string(),
            "labels": labels_json(&r.rule.labels),
            "type": "recording",
        })
    };
    o["health"] = Json::String(st.health.as_str().into());
    if !st.last_error.is_empty() {
        o["lastError"] = Json::String(st.last_error.clone());
    }
    o["evaluationTime"] = json!(st.evaluation_time.as_secs_f64());
    o["lastEvaluation"] = Json::String(rfc3339(st.last_evaluation));
    o
}

fn query_type(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let v: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_data(format!("error parsing form values: {e}")))?;
    let t = v
        .into_iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    match t.as_deref() {
        None | Some("alert") | Some("record") => Ok(t),
        Some(other) => Err(ApiError::bad_data(format!(
            "invalid parameter \"type\": not supported value {other:?}"
        ))),
    }
}

pub async fn rules(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let typ = query_type(&req)?;
    let mut groups = Vec::new();
    for g in st.rules.iter().flat_map(|m| m.groups()) {
        let state = g.state().clone();
        let rules: Vec<Json> = g
            .rules
            .iter()
            .zip(&state.rules)
            .filter(|(r, _)| match typ.as_deref() {
                Some("alert") => r.rule.is_alert(),
                Some("record") => !r.rule.is_alert(),
                _ => true,
            })
            .map(|(r, s)| rule_json(r, s))
            .collect();
        if typ.is_some() && rules.is_empty() {
            continue;
        }
        let mut gj = json!({
            "name": g.name,
            "file": g.file.display().to_string(),
            "rules": rules,
            "interval": g.interval.as_secs_f64(),
            "limit": g.limit,
            "evaluationTime": state.evaluation_time.as_secs_f64(),
            "lastEvaluation": rfc3339(state.last_evaluation),
            "scope": match g.scope { RuleScope::Local => "local", RuleScope::Global => "global" },
        });
        if let Some(f) = &state.federation {
            gj["federation"] = json!({
                "members": f.members,
                "failedMembers": f.failed_members,
                "bytes": f.bytes,
                "samples": f.series,
                "fetchTime": f.fetch_time.as_secs_f64(),
                "totalTime": f.total_time.as_secs_f64(),
                "committedSamples": f.committed_samples,
                "lastError": f.last_error,
            });
        }
        groups.push(gj);
    }
    Ok(success(&json!({ "groups": groups })))
}

pub async fn alerts(st: web::Data<AppState>) -> HttpResponse {
    let mut out = Vec::new();
    for g in st.rules.iter().flat_map(|m| m.groups()) {
        let state = g.state();
        for (r, s) in g.rules.iter().zip(&state.rules) {
            if r.rule.is_alert() {
                out.extend(alert::active(s).map(alert_json));
            }
        }
    }
    success(&json!({ "alerts": out }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn alert_values_format_like_go() {
        assert_eq!(super::go_exp(1.0), "1e+00");
        assert_eq!(super::go_exp(0.25), "2.5e-01");
        assert_eq!(super::go_exp(12345.0), "1.2345e+04");
    }
}
