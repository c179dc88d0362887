//! The body of `POST /internal/scrape/handoff` (`web::cluster::parse_handoff_notice`):
//! JSON `{"key": "<u64>", "viewIndex": "<u64>"}`. No panic; what parses, round-trips.
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;

use libfuzzer_sys::fuzz_target;
use shoal::web::cluster::parse_handoff_notice;

fuzz_target!(
    init: seeds::write("handoff", || vec![
        br#"{"key": "18446744073709551615", "viewIndex": "12"}"#.to_vec(),
        br#"{"viewIndex":"0","key":"1"}"#.to_vec(),
    ]),
    |data: &[u8]| {
        if let Ok((key, view)) = parse_handoff_notice(data) {
            let again = format!(r#"{{"key":"{key}","viewIndex":"{view}"}}"#);
            assert_eq!(parse_handoff_notice(again.as_bytes()), Ok((key, view)));
        }
    }
);
