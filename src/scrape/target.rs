//! Per-target scrape state shown by `/api/v1/targets`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::discovery::Target;

/// Health as Prometheus reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHealth {
    Unknown,
    Up,
    Down,
}

impl TargetHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetHealth::Unknown => "unknown",
            TargetHealth::Up => "up",
            TargetHealth::Down => "down",
        }
    }
}

/// The outcome of the latest scrape of one target.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub health: TargetHealth,
    pub last_error: String,
    pub last_scrape: Option<SystemTime>,
    pub last_scrape_duration: Duration,
}

impl Default for TargetStatus {
    fn default() -> Self {
        TargetStatus {
            health: TargetHealth::Unknown,
            last_error: String::new(),
            last_scrape: None,
            last_scrape_duration: Duration::ZERO,
        }
    }
}

/// Shared between a scrape actor (writer) and the web layer (reader).
pub type SharedStatus = Arc<Mutex<TargetStatus>>;

/// One active target as the targets API lists it.
#[derive(Debug, Clone)]
pub struct ActiveTarget {
    pub target: Target,
    pub scrape_pool: String,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub status: SharedStatus,
    /// The target moved to another node; this node keeps scraping it until the new
    /// owner has scraped it once (or a bound passes).
    pub handing_off: bool,
}

impl ActiveTarget {
    pub fn status(&self) -> TargetStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A target that relabelling dropped.
#[derive(Debug, Clone)]
pub struct DroppedTarget {
    pub discovered_labels: crate::model::Labels,
    pub scrape_pool: String,
}
