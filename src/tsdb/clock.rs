//! The wall clock the TSDB judges sample times and retention by: the system clock in a
//! node, a clock the test sets in tests (retention and the future bound are about "now").

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the system clock, or a manual one.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that reads `ms` until [`Clock::set`] moves it.
    pub fn manual(ms: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(ms))))
    }

    /// Moves a manual clock (no effect on the system clock).
    pub fn set(&self, ms: i64) {
        if let Some(c) = &self.0 {
            c.store(ms, Relaxed);
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Some(c) => c.load(Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system"),
            Some(c) => write!(f, "Clock::manual({})", c.load(Relaxed)),
        }
    }
}
