//! Scraping: one actix actor per target ([`scrape_loop::ScrapeActor`]) driven by a
//! [`manager::ScrapeManager`] that reconciles the discovered targets with the running
//! actors. This is the only module that defines actors; the work they do is in plain
//! functions ([`fetch`] for HTTP, [`append`] for parse → relabel → storage) so it can be
//! tested without a running system.
//!
//! Prometheus's scrape semantics are followed: the whole scrape fails on a parse error,
//! a limit breach or a bad HTTP status (nothing of it stored, `up` = 0, staleness markers
//! for the previous scrape's series), duplicate and out-of-order samples are dropped and
//! counted, and series that vanish get a staleness marker.

pub mod append;
pub mod cache;
pub mod fetch;
pub mod manager;
pub mod scrape_loop;
pub mod target;

pub use manager::{ScrapeManager, TargetsView};
pub use target::{TargetHealth, TargetStatus};

/// Why a scrape failed. The message is what `/api/v1/targets` shows as `lastError`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0}")]
    Http(String),
    #[error("server returned HTTP status {0}")]
    Status(String),
    #[error("context deadline exceeded")]
    Timeout,
    #[error("body size limit exceeded")]
    BodySizeLimit,
    #[error("{0}")]
    Parse(String),
    #[error("sample limit exceeded")]
    SampleLimit,
    #[error("{0}")]
    LabelLimit(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl ScrapeError {
    /// A short reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Http(_) => "http",
            ScrapeError::Status(_) => "status",
            ScrapeError::Timeout => "timeout",
            ScrapeError::BodySizeLimit => "body_size_limit",
            ScrapeError::Parse(_) => "parse",
            ScrapeError::SampleLimit => "sample_limit",
            ScrapeError::LabelLimit(_) => "label_limit",
            ScrapeError::Storage(_) => "storage",
        }
    }
}
