//! The body of the internal handoff route (`peer::protocol::HANDOFF`,
//! `web::internal::parse_handoff_notice`): a `HandoffNotice` in the cluster codec. No
//! panic, no allocation beyond the input's bound; what decodes, round-trips.
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;

use libfuzzer_sys::fuzz_target;
use shoal::cluster::codec;
use shoal::peer::protocol::HandoffNotice;
use shoal::web::internal::parse_handoff_notice;

fuzz_target!(
    init: seeds::write("handoff", || vec![
        codec::encode(&HandoffNotice { key: u64::MAX, view_index: 12 }).unwrap(),
        codec::encode(&HandoffNotice { key: 1, view_index: 0 }).unwrap(),
    ]),
    |data: &[u8]| {
        if let Ok(notice) = parse_handoff_notice(data) {
            let again = codec::encode(&notice).expect("a decoded notice encodes");
            assert_eq!(parse_handoff_notice(&again), Ok(notice));
        }
    }
);
