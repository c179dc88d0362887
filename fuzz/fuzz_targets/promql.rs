//! PromQL (`promql`): the input is an expression; it is parsed, evaluated as an instant
//! query and as a range query over a small in-memory store (`storage::memory::MemStore`),
//! and offered to the pushdown planner. No panic, no hang, bounded memory: the engine
//! runs with a 1M-sample limit and a 5 s timeout.
#![no_main]

#[path = "common/store.rs"]
mod store;

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shoal::promql::engine::{Engine, EngineOptions};
use shoal::query::pushdown;
use store::store;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(EngineOptions {
            timeout: Duration::from_secs(5),
            max_samples: 1_000_000,
            ..EngineOptions::default()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let (s, e) = (store(), engine());
    let _ = e.instant_query(s, q, 300_000);
    // 35 steps, as a dashboard panel asks (the API allows at most 11,000).
    let _ = e.range_query(s, q, 0, 600_000, 17_000);
    let _ = pushdown::plan(q);
});
