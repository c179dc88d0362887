//! The PromQL engine over [`crate::storage::Queryable`] and the runner for Prometheus's
//! PromQL test-script format.
//!
//! - [`engine`]: [`Engine`], the evaluator (all steps of a node at once), selectors,
//!   subqueries, `@`/offset handling;
//! - [`binop`], [`aggregation`], [`functions`]: operators, aggregators and functions;
//! - [`value`]: the public result types and [`format_value`];
//! - [`test_script`]: the `promqltest` script runner ([`test_script::run_files`]).
//!
//! Parsing is done by the `promql-parser` crate; this module never names the TSDB.

pub mod aggregation;
pub mod binop;
pub mod engine;
pub mod functions;
pub mod test_script;
pub mod value;

pub use engine::{Engine, EngineOptions, Pushdown, parse_expr};
pub use value::{EvalError, QueryResult, Value, VectorSample, format_value};
