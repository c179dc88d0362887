//! The JSON shapes of Prometheus's HTTP API: the `{"status": ...}` envelope, the error
//! envelope with `errorType`, and the query result encodings (written by hand: result
//! sets can be large, and the timestamp and value formats are Prometheus's own).

use std::fmt::Write as _;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::model::Labels;
use crate::promql::{QueryResult, Value};

/// Prometheus's `errorType` values with their HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
    Unavailable,
    NotFound,
    Unauthorized,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Internal => "internal",
            ErrorType::Unavailable => "unavailable",
            ErrorType::NotFound => "not_found",
            ErrorType::Unauthorized => "unauthorized",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout | ErrorType::Canceled | ErrorType::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::NotFound => StatusCode::NOT_FOUND,
            ErrorType::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An API error, rendered as Prometheus's error envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorType,
    pub msg: String,
}

impl ApiError {
    pub fn bad_data(msg: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorType::BadData,
            msg: msg.into(),
        }
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError {
            kind: ErrorType::Internal,
            msg: msg.into(),
        }
    }
    pub fn new(kind: ErrorType, msg: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.msg)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.kind.status()
    }
    fn error_response(&self) -> HttpResponse {
        let body = serde_json::json!({
            "status": "error",
            "errorType": self.kind.as_str(),
            "error": self.msg,
        });
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .body(body.to_string())
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// A success envelope around already-encoded JSON `data`.
pub fn success_raw(data: &str, warnings: &[String]) -> HttpResponse {
    let mut s = String::with_capacity(data.len() + 64);
    s.push_str(r#"{"status":"success","data":"#);
    s.push_str(data);
    if !warnings.is_empty() {
        s.push_str(r#","warnings":"#);
        s.push_str(&serde_json::to_string(warnings).unwrap_or_else(|_| "[]".into()));
    }
    s.push('}');
    HttpResponse::Ok().content_type("application/json").body(s)
}

/// A success envelope around a serializable `data`.
pub fn success<T: serde::Serialize>(data: &T) -> HttpResponse {
    match serde_json::to_string(data) {
        Ok(d) => success_raw(&d, &[]),
        Err(e) => ApiError::internal(e.to_string()).error_response(),
    }
}

/// Writes a JSON string literal.
fn write_str(out: &mut String, s: &str) {
    // serde_json's escaping of a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Labels as a JSON object.
pub fn write_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, lbl) in l.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, &lbl.name);
        out.push(':');
        write_str(out, &lbl.value);
    }
    out.push('}');
}

/// A millisecond timestamp as Prometheus writes it: seconds with up to 3 decimals.
pub fn write_timestamp(out: &mut String, t: i64) {
    let (sign, t) = if t < 0 {
        ("-", t.unsigned_abs())
    } else {
        ("", t as u64)
    };
    let frac = t % 1000;
    if frac == 0 {
        let _ = write!(out, "{sign}{}", t / 1000);
    } else {
        let _ = write!(out, "{sign}{}.{frac:03}", t / 1000);
    }
}

fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_timestamp(out, t);
    out.push_str(",\"");
    out.push_str(&crate::promql::format_value(v));
    out.push_str("\"]");
}

/// The `data` object of a query response.
pub fn encode_query_data(r: &QueryResult) -> String {
    let mut out = String::with_capacity(256);
    match &r.value {
        Value::Scalar { t, v } => {
            out.push_str(r#"{"resultType":"scalar","result":"#);
            write_point(&mut out, *t, *v);
        }
        Value::String { t, v } => {
            out.push_str(r#"{"resultType":"string","result":["#);
            write_timestamp(&mut out, *t);
            out.push(',');
            write_str(&mut out, v);
            out.push(']');
        }
        Value::Vector(samples) => {
            out.push_str(r#"{"resultType":"vector","result":["#);
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                write_labels(&mut out, &s.labels);
                out.push_str(r#","value":"#);
                write_point(&mut out, s.t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push_str(r#"{"resultType":"matrix","result":["#);
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"metric":"#);
                write_labels(&mut out, &s.labels);
                out.push_str(r#","values":["#);
                for (j, p) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(&mut out, p.t, p.v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_like_prometheus() {
        let f = |t| {
            let mut s = String::new();
            write_timestamp(&mut s, t);
            s
        };
        assert_eq!(f(1_435_781_451_781), "1435781451.781");
        assert_eq!(f(1_435_781_460_000), "1435781460");
        assert_eq!(f(1_500), "1.500");
        assert_eq!(f(5), "0.005");
        assert_eq!(f(-1_500), "-1.500");
    }
}
