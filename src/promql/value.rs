//! Public result types of the PromQL engine: [`Value`], [`VectorSample`], [`QueryResult`],
//! [`EvalError`], and Prometheus's float formatting ([`format_value`]).

use crate::model::Labels;
use crate::storage::Series;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorSample {
    pub labels: Labels,
    pub t: i64,
    pub v: f64,
}

/// The value of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar { t: i64, v: f64 },
    String { t: i64, v: String },
    Vector(Vec<VectorSample>),
    Matrix(Vec<Series>),
}

impl Value {
    /// Prometheus's name of the result type (`scalar`, `string`, `vector`, `matrix`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String { .. } => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

/// A query's value plus its annotations (warnings and infos, each in Prometheus's text
/// form `PromQL warning: ...` / `PromQL info: ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub value: Value,
    pub warnings: Vec<String>,
}

impl QueryResult {
    /// The annotations that are warnings.
    pub fn warns(&self) -> impl Iterator<Item = &String> {
        self.warnings
            .iter()
            .filter(|w| w.starts_with("PromQL warning"))
    }
    /// The annotations that are infos.
    pub fn infos(&self) -> impl Iterator<Item = &String> {
        self.warnings
            .iter()
            .filter(|w| w.starts_with("PromQL info"))
    }
}

/// Why a query failed. `web` maps these to Prometheus's `errorType`s.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The query text does not parse (`bad_data`).
    #[error("{0}")]
    Parse(String),
    /// Bad query parameters (`bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failed (`execution`).
    #[error("{0}")]
    Execution(String),
    #[error("query timed out in {0}")]
    Timeout(String),
    #[error("query was canceled in {0}")]
    Canceled(String),
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
}

/// Formats a float as Prometheus does in JSON and test output (Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)`, with `NaN`, `+Inf`, `-Inf`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Rust's Display is the shortest round-tripping decimal without exponent, like
        // Go's 'f' with precision -1.
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_value_like_go() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(-2.5), "-2.5");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(1e-7), "0.0000001");
    }
}
