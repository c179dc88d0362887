//! The small in-memory store the `promql` and `query_wire` targets query.

use std::sync::OnceLock;

use shoal::model::{Labels, stale_nan};
use shoal::storage::memory::MemStore;

/// The store: 10 minutes of samples every 15 s (t in ms from 0) of counters, gauges,
/// a histogram and odd values (NaN, ±Inf, a staleness marker, a counter reset).
pub fn store() -> &'static MemStore {
    static STORE: OnceLock<MemStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let s = MemStore::new();
        for i in 0..=40i64 {
            let t = i * 15_000;
            let f = i as f64;
            for (job, inst) in [("api", "a:1"), ("api", "b:2"), ("db", "c:3")] {
                let l = |name: &str, extra: &[(&str, &str)]| {
                    let mut p = vec![("__name__", name), ("job", job), ("instance", inst)];
                    p.extend_from_slice(extra);
                    Labels::from_pairs(&p)
                };
                s.insert(&l("http_requests_total", &[("code", "200")]), t, f * 10.0);
                let reset = if i < 20 { f } else { f - 20.0 };
                s.insert(&l("http_requests_total", &[("code", "500")]), t, reset);
                s.insert(&l("temperature", &[]), t, 20.0 + (f / 3.0).sin());
                for (le, k) in [("0.1", 1.0), ("0.5", 3.0), ("1", 4.0), ("+Inf", 5.0)] {
                    s.insert(&l("latency_bucket", &[("le", le)]), t, f * k);
                }
                s.insert(&l("latency_sum", &[]), t, f * 2.5);
                s.insert(&l("latency_count", &[]), t, f * 5.0);
                s.insert(&l("up", &[]), t, 1.0);
            }
            let odd = match i % 5 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                3 => -0.0,
                _ => 1e300,
            };
            s.insert(&Labels::from_pairs(&[("__name__", "odd")]), t, odd);
            if i != 20 {
                let v = if i == 21 { stale_nan() } else { f };
                s.insert(
                    &Labels::from_pairs(&[("__name__", "gappy"), ("x", "é\"\\")]),
                    t,
                    v,
                );
            }
        }
        s
    })
}
