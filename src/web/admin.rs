//! Prometheus's admin API, `/api/v1/admin/tsdb/{snapshot,delete_series,clean_tombstones}`
//! (POST or PUT), behind `--web.enable-admin-api` as in Prometheus: without the flag
//! every admin route answers 503 `unavailable` "admin APIs disabled", Prometheus's
//! exact answer, whatever the request.
//!
//! With the flag: `clean_tombstones` succeeds with 204 (shoal's TSDB never writes
//! tombstones: deletion is by retention only); `snapshot` and `delete_series` are not
//! supported by shoal yet and say so (501) — never a silent success.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::json::{ApiError, ErrorType};

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
