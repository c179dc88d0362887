//! The OpenMetrics exposition parser (`model::textparse`) on arbitrary
//! bytes: no panic, and the scrape cache's known-series path parses as the full one.
#![no_main]

#[path = "common/exposition.rs"]
mod exposition;

use libfuzzer_sys::fuzz_target;
use shoal::model::textparse::Format;

fuzz_target!(|data: &[u8]| exposition::run(data, Format::OpenMetrics));
