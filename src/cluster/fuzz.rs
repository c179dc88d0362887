//! Entry point of the `raft_rpc` fuzz target (`fuzz/`): every value the cluster module
//! decodes from a peer (Raft RPC bodies and replies, the admin bodies, an installed
//! snapshot) or from its sled trees (log entries, the vote). Not an API.

use openraft::error::InstallSnapshotError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec;
use super::network::RaftRpc;
use super::rpc::{ClusterInfo, JoinRequest, RemoveRequest};
use super::state_machine::decode_payload;
use super::types::{
    AppendRequest, AppendResponse, ClusterCommand, Entry, RaftError, SnapshotRequest,
    SnapshotResponse, Vote, VoteRequest, VoteResponse,
};

/// How many kinds of value [`decode`] knows.
pub const KINDS: u8 = 12;

/// Decodes `body` as kind `kind % KINDS`. Must never panic: a value that decodes is
/// encoded again, and that encoding must decode and encode to the same bytes.
pub fn decode(kind: u8, body: &[u8]) {
    match kind % KINDS {
        // The requests also go through the checks the RPC handlers run first.
        0 => {
            round_trip::<RaftRpc<AppendRequest>>(body);
            if let Ok(r) = codec::decode::<RaftRpc<AppendRequest>>(body) {
                let _ = super::rpc::check_append(&r.req);
            }
        }
        1 => {
            round_trip::<RaftRpc<VoteRequest>>(body);
            if let Ok(r) = codec::decode::<RaftRpc<VoteRequest>>(body) {
                let _ = super::rpc::check_vote(&r.req);
            }
        }
        2 => {
            round_trip::<RaftRpc<SnapshotRequest>>(body);
            if let Ok(r) = codec::decode::<RaftRpc<SnapshotRequest>>(body) {
                let _ = super::rpc::check_snapshot(&r.req);
            }
        }
        3 => round_trip::<Result<AppendResponse, RaftError>>(body),
        4 => round_trip::<Result<VoteResponse, RaftError>>(body),
        5 => round_trip::<Result<SnapshotResponse, RaftError<InstallSnapshotError>>>(body),
        6 => round_trip::<JoinRequest>(body),
        7 => round_trip::<RemoveRequest>(body),
        8 => round_trip::<ClusterInfo>(body),
        9 => {
            if let Ok(data) = decode_payload(body) {
                let _ = data.view();
            }
        }
        10 => round_trip::<Entry>(body),
        11 => {
            round_trip::<Vote>(body);
            round_trip::<ClusterCommand>(body);
        }
        _ => unreachable!("kind is reduced modulo KINDS"),
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    let Ok(value) = codec::decode::<T>(body) else {
        return;
    };
    let bytes = codec::encode(&value).expect("a decoded value encodes");
    let again: T = codec::decode(&bytes).expect("an encoded value decodes");
    let bytes2 = codec::encode(&again).expect("a decoded value encodes");
    assert_eq!(bytes, bytes2, "encoding is stable across a round trip");
}

/// One valid input per kind, `[kind, encoded value...]` (the fuzz target's seeds).
pub fn seeds() -> Vec<Vec<u8>> {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::error::{Fatal, SnapshotMismatch};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta};

    use super::state_machine::SmData;
    use super::types::{NodeInfo, SampleBatch, StoredMembership};

    let vote = Vote::new_committed(3, 7);
    let log_id = |i| LogId::new(CommittedLeaderId::new(3, 7), i);
    let nodes = BTreeMap::from([
        (
            7,
            NodeInfo {
                addr: "10.0.0.7:9090".into(),
            },
        ),
        (
            9,
            NodeInfo {
                addr: "[::1]:9091".into(),
            },
        ),
    ]);
    let membership = Membership::new(vec![BTreeSet::from([7, 9])], nodes);
    let stored = StoredMembership::new(Some(log_id(1)), membership.clone());
    let batch = SampleBatch {
        group: "rules.yml;g".into(),
        slot: 1_700_000_000_000,
        series: vec![(
            vec![
                ("__name__".into(), "job:x".into()),
                ("job".into(), "a".into()),
            ],
            0x7ff0_0000_0000_0002,
        )],
    };
    let entries = vec![
        Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership),
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3),
            payload: EntryPayload::Normal(ClusterCommand::MarkDown { node: 9 }),
        },
        Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(ClusterCommand::CommitSamples(batch)),
        },
    ];
    let data = SmData {
        last_applied: Some(log_id(4)),
        last_membership: stored.clone(),
        down: BTreeSet::from([9]),
        view_index: 3,
        cluster_id: Some(7),
        slots: BTreeMap::new(),
        pending: Vec::new(),
        leaving: BTreeMap::new(),
    };
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(4)),
        last_membership: stored,
        snapshot_id: "3-7-4".into(),
    };
    fn rpc<T>(req: T) -> RaftRpc<T> {
        RaftRpc {
            target: 9,
            cluster: Some(7),
            req,
        }
    }
    let fatal = || RaftError::<openraft::error::Infallible>::Fatal(Fatal::Stopped);
    let mismatch = SnapshotMismatch {
        expect: openraft::SnapshotSegmentId {
            id: "a".into(),
            offset: 0,
        },
        got: openraft::SnapshotSegmentId {
            id: "b".into(),
            offset: 9,
        },
    };
    let enc = |kind: u8, bytes: Result<Vec<u8>, codec::CodecError>| {
        let mut v = vec![kind];
        v.extend(bytes.expect("seed encodes"));
        v
    };
    vec![
        enc(
            0,
            codec::encode(&rpc(AppendRequest {
                vote,
                prev_log_id: Some(log_id(0)),
                entries: entries.clone(),
                leader_commit: Some(log_id(2)),
            })),
        ),
        enc(
            1,
            codec::encode(&rpc(VoteRequest::new(vote, Some(log_id(4))))),
        ),
        enc(
            2,
            codec::encode(&rpc(SnapshotRequest {
                vote,
                meta,
                offset: 0,
                data: vec![1, 2, 3],
                done: true,
            })),
        ),
        enc(
            3,
            codec::encode(&Ok::<_, RaftError>(AppendResponse::PartialSuccess(Some(
                log_id(3),
            )))),
        ),
        enc(3, codec::encode(&Err::<AppendResponse, _>(fatal()))),
        enc(
            4,
            codec::encode(&Ok::<_, RaftError>(VoteResponse {
                vote,
                vote_granted: true,
                last_log_id: Some(log_id(4)),
            })),
        ),
        enc(
            5,
            codec::encode(&Err::<SnapshotResponse, RaftError<InstallSnapshotError>>(
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
            )),
        ),
        enc(
            6,
            codec::encode(&JoinRequest {
                node_id: 9,
                addr: "10.0.0.9:9090".into(),
                forwarded: false,
            }),
        ),
        enc(
            7,
            codec::encode(&RemoveRequest {
                node_id: 9,
                forwarded: true,
            }),
        ),
        enc(
            8,
            codec::encode(&ClusterInfo {
                node_id: 7,
                addr: "10.0.0.7:9090".into(),
                initialized: true,
                leader: Some((7, "10.0.0.7:9090".into())),
            }),
        ),
        // The payload `{data, slots}` (bincode writes a struct as the tuple of its
        // fields), and the older payload without slots.
        enc(
            9,
            codec::encode(&(&data, BTreeMap::from([("rules.yml;g".to_string(), 5i64)]))),
        ),
        enc(9, codec::encode(&data)),
        enc(10, codec::encode(&entries[3])),
        enc(11, codec::encode(&vote)),
    ]
}
