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
use crate::peer::protocol::{CLUSTER_JOIN, CLUSTER_REMOVE, RAFT_APPEND, RAFT_SNAPSHOT, RAFT_VOTE};
pub(crate) use crate::peer::protocol::{ClusterInfo, JoinRequest, RemoveRequest};

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

/// Handles an AppendEntries RPC body; returns the encoded `Result` of the Raft call.
pub async fn handle_append(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: AppendRequest = decode_rpc(handle, RAFT_APPEND.path, body)?;
    if let Some(leader) = req.vote.leader_id().voted_for() {
        handle.note_append_from(leader);
    }
    encode(&handle.raft().append_entries(req).await)
}

/// Handles a RequestVote RPC body.
pub async fn handle_vote(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: VoteRequest = decode_rpc(handle, RAFT_VOTE.path, body)?;
    encode(&handle.raft().vote(req).await)
}

/// Handles an InstallSnapshot RPC body (one chunk).
pub async fn handle_snapshot(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: SnapshotRequest = decode_rpc(handle, RAFT_SNAPSHOT.path, body)?;
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

/// Default timeout of admin calls between nodes.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);
