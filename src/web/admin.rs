//! Prometheus's admin API, `/api/v1/admin/tsdb/{snapshot,delete_series,clean_tombstones}`
//! (POST or PUT), behind `--web.enable-admin-api` as in Prometheus: without the flag
//! every admin route answers 503 `unavailable` "admin APIs disabled", Prometheus's
//! exact answer, whatever the request.
//!
//! With the flag: `clean_tombstones` succeeds with 204 (shoal's TSDB never writes
//! tombstones: deletion is by retention only); `snapshot` and `delete_series` are not
//! supported by shoal yet and say so (501) — never a silent success.
//!
//! shoal's own admin route `POST /api/v1/admin/tsdb/import` takes a backfill batch
//! ([`ImportBody`], what `shoal tsdb import openmetrics` sends) and answers an
//! [`ImportDoc`] once every owner of its series holds them (`crate::backfill`). Besides
//! the flag it needs what the cluster admin routes need (a web user, or the cluster
//! secret as a bearer token, or a client certificate of the cluster CA; open on a
//! loopback node without any), checked before its body is read.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::json::{ApiError, ErrorType, success};
use crate::model::{Label, Labels, Sample};

/// Largest backfill batch body taken (the CLI sends a few MB).
pub const IMPORT_MAX_BODY: usize = 32 << 20;

/// The body of `POST /api/v1/admin/tsdb/import`: series with their samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    pub series: Vec<ImportSeriesDoc>,
}

/// One series of an [`ImportBody`]: its labels (`__name__` included) and its samples as
/// `[milliseconds, "value"]` in time order (values as Prometheus writes them: `NaN`,
/// `+Inf`, `-Inf`, or a float that parses back to the same bits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSeriesDoc {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, String)>,
}

/// The answer of `POST /api/v1/admin/tsdb/import`: what the owners did with the batch,
/// summed over them (with replication factor R a sample counts once per copy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportDoc {
    pub series: u64,
    pub samples: u64,
    pub stored: u64,
    /// Held already (same timestamp and value).
    pub duplicate: u64,
    /// Held with another value at the same timestamp (the held one is kept).
    pub conflicting: u64,
    /// Older than retention or too far in the future.
    pub dropped: u64,
    /// Series sent to each member (node id → series).
    pub nodes: BTreeMap<String, u64>,
}

/// A sample value as [`ImportSeriesDoc`] carries it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Reads a value written by [`format_value`] (a `NaN` gets Prometheus's bits for a
/// NaN sample, as a scrape's).
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::from_bits(crate::model::textparse::NORMAL_NAN_BITS)),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok().filter(|v| !v.is_nan()),
    }
}

impl ImportSeriesDoc {
    /// The doc of a series and its samples.
    pub fn new(labels: &Labels, samples: &[Sample]) -> ImportSeriesDoc {
        ImportSeriesDoc {
            labels: labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
            samples: samples.iter().map(|s| (s.t, format_value(s.v))).collect(),
        }
    }

    fn decode(self) -> Result<(Labels, Vec<Sample>), String> {
        let labels = Labels::new(
            self.labels
                .into_iter()
                .map(|(n, v)| Label::new(n, v))
                .collect(),
        );
        let samples = self
            .samples
            .into_iter()
            .map(|(t, v)| {
                parse_value(&v)
                    .map(|v| Sample { t, v })
                    .ok_or_else(|| format!("series {labels}: invalid value {v:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((labels, samples))
    }
}

/// Registers the admin routes (inside the `/api/v1` scope).
pub fn routes(cfg: &mut web::ServiceConfig) {
    for (path, name) in [
        ("/admin/tsdb/snapshot", "snapshot"),
        ("/admin/tsdb/delete_series", "delete_series"),
        ("/admin/tsdb/clean_tombstones", "clean_tombstones"),
    ] {
        cfg.route(path, web::post().to(move |st| admin(st, name)))
            .route(path, web::put().to(move |st| admin(st, name)));
    }
    cfg.route("/admin/tsdb/import", web::post().to(import));
}

/// `POST /api/v1/admin/tsdb/import`: a backfill batch (see the module docs).
async fn import(
    req: HttpRequest,
    body: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !st.admin_api {
        return Err(ApiError::new(ErrorType::Unavailable, "admin APIs disabled"));
    }
    super::cluster::authorize(&st, &req)?;
    let result = import_batch(body, &st).await;
    st.metrics.count_import_request("backfill", result.is_ok());
    result.map(|doc| success(&doc))
}

async fn import_batch(body: web::Payload, st: &AppState) -> Result<ImportDoc, ApiError> {
    let Some(backfill) = &st.backfill else {
        return Err(ApiError::new(
            ErrorType::Unavailable,
            "this node cannot import (not in a cluster)",
        ));
    };
    let bytes = match body.to_bytes_limited(IMPORT_MAX_BODY).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(ApiError::bad_data(format!("reading the body: {e}"))),
        Err(_) => {
            return Err(ApiError::bad_data(format!(
                "import batch larger than {IMPORT_MAX_BODY} bytes"
            )));
        }
    };
    let doc: ImportBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_data(format!("invalid import batch: {e}")))?;
    let batch = doc
        .series
        .into_iter()
        .map(ImportSeriesDoc::decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::bad_data)?;
    let r = backfill.import(batch).await.map_err(|e| match e {
        crate::backfill::BackfillError::Invalid(m) => ApiError::bad_data(m),
        crate::backfill::BackfillError::Unavailable(m) => ApiError::new(ErrorType::Unavailable, m),
    })?;
    Ok(ImportDoc {
        series: r.series,
        samples: r.samples,
        stored: r.stored,
        duplicate: r.duplicate,
        conflicting: r.conflicting,
        dropped: r.dropped,
        nodes: r
            .series_by_node
            .into_iter()
            .map(|(id, n)| (id.to_string(), n))
            .collect(),
    })
}

async fn admin(st: web::Data<AppState>, name: &'static str) -> Result<HttpResponse, ApiError> {
    if !st.admin_api {
        return Err(ApiError::new(ErrorType::Unavailable, "admin APIs disabled"));
    }
    if name == "clean_tombstones" {
        return Ok(HttpResponse::NoContent().finish());
    }
    let body = serde_json::json!({
        "status": "error",
        "errorType": ErrorType::Unavailable.as_str(),
        "error": format!("{name} is not supported by shoal yet"),
    });
    Ok(HttpResponse::build(StatusCode::NOT_IMPLEMENTED)
        .content_type("application/json")
        .body(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cross_as_text_bit_for_bit() {
        for v in [
            0.0,
            -0.0,
            1.5,
            1e-300,
            1e21,
            0.1 + 0.2,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let back = parse_value(&format_value(v)).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v}");
        }
        assert_eq!(parse_value("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_value("-Inf"), Some(f64::NEG_INFINITY));
        assert_eq!(
            parse_value("NaN").map(f64::to_bits),
            Some(crate::model::textparse::NORMAL_NAN_BITS)
        );
        assert_eq!(parse_value("x"), None);
    }
}
