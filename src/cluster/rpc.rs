//! Server side of the internal cluster routes: plain async handlers that take request
//! bytes and return response bytes ([`handle_append`], [`handle_vote`],
//! [`handle_snapshot`], [`handle_info`], [`handle_join`], [`handle_remove`]). The web
//! layer mounts them (`crate::web::internal`) behind the peer guard, which has checked
//! the cluster secret before they run; the routes and bodies are
//! `crate::peer::protocol`'s.
//!
//! Status codes: 400 malformed body, 409 a Raft RPC meant for a different node id or
//! cluster, 503 no leader / not ready. A Raft-level error (e.g. a stale term) is a 200
//! whose body carries the encoded `Err`.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec;
use super::handle::ClusterHandle;
use super::network::RaftRpc;
use super::types::{AppendRequest, NodeId, SnapshotRequest, VoteRequest};
use crate::peer::protocol::{
    CLUSTER_JOIN, CLUSTER_LEAVING, CLUSTER_REMOVE, RAFT_APPEND, RAFT_SNAPSHOT, RAFT_VOTE,
};
pub(crate) use crate::peer::protocol::{ClusterInfo, JoinRequest, LeavingRequest, RemoveRequest};

/// Why an internal request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("malformed request body: {0}")]
    BadRequest(String),
    #[error("request is for node {expected}, this is node {actual}")]
    WrongTarget { expected: NodeId, actual: NodeId },
    #[error("request comes from cluster {theirs}, this node is in cluster {ours}")]
    WrongCluster { theirs: NodeId, ours: NodeId },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RpcError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            RpcError::BadRequest(_) => 400,
            RpcError::WrongTarget { .. } | RpcError::WrongCluster { .. } => 409,
            RpcError::Unavailable(_) => 503,
            RpcError::Internal(_) => 500,
        }
    }
}

fn decode_body<T: DeserializeOwned>(route: &str, body: &[u8]) -> Result<T, RpcError> {
    codec::decode(body).map_err(|e| {
        tracing::warn!(route, error = %e, len = body.len(), "rejected malformed cluster request");
        RpcError::BadRequest(e.to_string())
    })
}

fn decode_rpc<T: DeserializeOwned>(
    handle: &ClusterHandle,
    route: &str,
    body: &[u8],
) -> Result<T, RpcError> {
    let rpc: RaftRpc<T> = decode_body(route, body)?;
    if rpc.target != handle.node_id() {
        tracing::warn!(
            route,
            expected = rpc.target,
            actual = handle.node_id(),
            "rejected raft rpc meant for another node (stale address in membership?)"
        );
        return Err(RpcError::WrongTarget {
            expected: rpc.target,
            actual: handle.node_id(),
        });
    }
    if let (Some(theirs), Some(ours)) = (rpc.cluster, handle.cluster_id())
        && theirs != ours
    {
        tracing::warn!(
            route,
            their_cluster = theirs,
            our_cluster = ours,
            "rejected raft rpc from a peer of a different cluster"
        );
        return Err(RpcError::WrongCluster { theirs, ours });
    }
    Ok(rpc.req)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcError> {
    codec::encode(value).map_err(|e| RpcError::Internal(e.to_string()))
}

/// Largest snapshot a node receives (offset + chunk): the cluster state is small, and a
/// chunk at a huge offset would otherwise grow the in-memory snapshot to it.
const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

fn malformed(route: &str, why: String) -> RpcError {
    tracing::warn!(route, why, "rejected a malformed raft rpc");
    RpcError::BadRequest(why)
}

/// What openraft assumes of an AppendEntries request and does not check (a request
/// breaking it stops its core for good): entries continue `prev_log_id` without a gap,
/// their log ids grow, and no log id is from a term after the sender's vote.
pub(crate) fn check_append(req: &AppendRequest) -> Result<(), String> {
    let term = req.vote.leader_id().term;
    let mut prev = req.prev_log_id;
    if prev.is_some_and(|p| p.leader_id.term > term) {
        return Err("prev_log_id is from a later term than the vote".into());
    }
    if req.leader_commit.is_some_and(|c| c.leader_id.term > term) {
        return Err("leader_commit is from a later term than the vote".into());
    }
    for e in &req.entries {
        let id = e.log_id;
        let expected = prev.map_or(0, |p| p.index + 1);
        if id.index != expected {
            return Err(format!(
                "entry index {} does not continue the log at {expected}",
                id.index
            ));
        }
        if id.leader_id.term > term || prev.is_some_and(|p| id < p) {
            return Err(format!("entry {} has an impossible term", id.index));
        }
        prev = Some(id);
    }
    Ok(())
}

/// The same for a vote: the candidate's last log id is not from a later term.
pub(crate) fn check_vote(req: &VoteRequest) -> Result<(), String> {
    if req
        .last_log_id
        .is_some_and(|l| l.leader_id.term > req.vote.leader_id().term)
    {
        return Err("last_log_id is from a later term than the vote".into());
    }
    Ok(())
}

/// And for a snapshot chunk: its log id is not from a later term, and it ends within
/// [`MAX_SNAPSHOT_BYTES`].
pub(crate) fn check_snapshot(req: &SnapshotRequest) -> Result<(), String> {
    if req
        .meta
        .last_log_id
        .is_some_and(|l| l.leader_id.term > req.vote.leader_id().term)
    {
        return Err("the snapshot's last_log_id is from a later term than the vote".into());
    }
    let end = req.offset.checked_add(req.data.len() as u64);
    if end.is_none_or(|e| e > MAX_SNAPSHOT_BYTES) {
        return Err(format!(
            "snapshot chunk ends past {MAX_SNAPSHOT_BYTES} bytes (offset {})",
            req.offset
        ));
    }
    Ok(())
}

/// Handles an AppendEntries RPC body; returns the encoded `Result` of the Raft call.
pub async fn handle_append(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: AppendRequest = decode_rpc(handle, RAFT_APPEND.path, body)?;
    check_append(&req).map_err(|why| malformed(RAFT_APPEND.path, why))?;
    if let Some(leader) = req.vote.leader_id().voted_for() {
        handle.note_append_from(leader);
    }
    encode(&handle.raft().append_entries(req).await)
}

/// Handles a RequestVote RPC body.
pub async fn handle_vote(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: VoteRequest = decode_rpc(handle, RAFT_VOTE.path, body)?;
    check_vote(&req).map_err(|why| malformed(RAFT_VOTE.path, why))?;
    encode(&handle.raft().vote(req).await)
}

/// Handles an InstallSnapshot RPC body (one chunk).
pub async fn handle_snapshot(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: SnapshotRequest = decode_rpc(handle, RAFT_SNAPSHOT.path, body)?;
    check_snapshot(&req).map_err(|why| malformed(RAFT_SNAPSHOT.path, why))?;
    encode(&handle.raft().install_snapshot(req).await)
}

/// Handles `GET /internal/cluster/info`.
pub async fn handle_info(handle: &ClusterHandle) -> Result<Vec<u8>, RpcError> {
    encode(&handle.info().await)
}

/// Handles `POST /internal/cluster/join` (forwarded to the leader when needed).
pub async fn handle_join(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: JoinRequest = decode_body(CLUSTER_JOIN.path, body)?;
    handle
        .join_member(req.node_id, req.addr, req.forwarded)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    encode(&())
}

/// Handles `POST /internal/cluster/remove` (forwarded to the leader when needed).
pub async fn handle_remove(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: RemoveRequest = decode_body(CLUSTER_REMOVE.path, body)?;
    handle
        .remove_member(req.node_id, req.forwarded)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    encode(&())
}

/// Handles `POST /internal/cluster/leaving` (forwarded to the leader when needed).
pub async fn handle_leaving(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: LeavingRequest = decode_body(CLUSTER_LEAVING.path, body)?;
    handle
        .leaving_member(req.node_id, req.progress, req.forwarded)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    encode(&())
}

/// Default timeout of admin calls between nodes.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use super::*;
    use crate::cluster::types::Entry;

    fn id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append(term: u64, prev: Option<LogId<NodeId>>, ids: &[LogId<NodeId>]) -> AppendRequest {
        AppendRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev,
            entries: ids
                .iter()
                .map(|&log_id| Entry {
                    log_id,
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: prev,
        }
    }

    #[test]
    fn appends_openraft_would_choke_on_are_refused() {
        // What a leader sends: contiguous entries, terms up to its own.
        assert!(check_append(&append(3, None, &[id(1, 0), id(3, 1)])).is_ok());
        assert!(check_append(&append(3, Some(id(2, 4)), &[id(2, 5), id(3, 6)])).is_ok());
        assert!(check_append(&append(3, Some(id(2, 4)), &[])).is_ok());
        // A gap after prev_log_id (what stopped a follower's Raft core), or from none.
        let e = check_append(&append(3, None, &[id(3, 1_000_000)])).unwrap_err();
        assert!(e.contains("does not continue"), "{e}");
        assert!(check_append(&append(3, Some(id(2, 4)), &[id(3, 6)])).is_err());
        assert!(check_append(&append(3, Some(id(2, 4)), &[id(3, 5), id(3, 7)])).is_err());
        // Log ids from a later term than the vote, or going back in term.
        assert!(check_append(&append(3, None, &[id(4, 0)])).is_err());
        assert!(check_append(&append(3, Some(id(4, 4)), &[])).is_err());
        assert!(check_append(&append(3, Some(id(3, 4)), &[id(2, 5)])).is_err());
        let mut far_commit = append(3, None, &[]);
        far_commit.leader_commit = Some(id(9, 0));
        assert!(check_append(&far_commit).is_err());
    }

    #[test]
    fn votes_and_snapshot_chunks_are_bounded() {
        assert!(check_vote(&VoteRequest::new(Vote::new(3, 1), Some(id(3, 9)))).is_ok());
        assert!(check_vote(&VoteRequest::new(Vote::new(3, 1), Some(id(4, 9)))).is_err());
        let chunk = |offset: u64, len: usize| SnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: openraft::SnapshotMeta {
                last_log_id: Some(id(3, 9)),
                last_membership: Default::default(),
                snapshot_id: "s".into(),
            },
            offset,
            data: vec![0; len],
            done: false,
        };
        assert!(check_snapshot(&chunk(0, 10)).is_ok());
        assert!(check_snapshot(&chunk(MAX_SNAPSHOT_BYTES - 10, 10)).is_ok());
        assert!(check_snapshot(&chunk(MAX_SNAPSHOT_BYTES - 10, 11)).is_err());
        assert!(check_snapshot(&chunk(1 << 40, 1)).is_err());
        assert!(check_snapshot(&chunk(u64::MAX, 1)).is_err());
    }
}
