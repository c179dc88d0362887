//! The cluster's bincode bodies (`cluster::codec`): the first byte picks the type
//! (Raft append/vote/snapshot requests and replies, join/remove/info bodies, the
//! snapshot payload a follower installs, log entries and the vote from sled), the rest
//! is the body. No panic, no huge allocation, and a decoded value re-encodes stably.
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;

use libfuzzer_sys::fuzz_target;
use shoal::cluster::fuzz;

fuzz_target!(
    init: seeds::write("raft_rpc", fuzz::seeds),
    |data: &[u8]| {
        if let Some((&kind, body)) = data.split_first() {
            fuzz::decode(kind, body);
        }
    }
);
