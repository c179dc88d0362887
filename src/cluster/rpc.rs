//! Server side of the internal cluster routes: plain async handlers that take request
//! bytes and return response bytes ([`handle_append`], [`handle_vote`],
//! [`handle_snapshot`], [`handle_info`], [`handle_join`], [`handle_remove`]), the secret
//! check ([`check_secret`]), and [`configure`], which registers them on an actix-web
//! `ServiceConfig`. This file is the one place outside `web` that names actix-web.
//!
//! Status codes: 401 wrong or missing secret (nothing changes), 400 malformed body,
//! 409 a Raft RPC meant for a different node id, 503 no leader / not ready. A Raft-level
//! error (e.g. a stale term) is a 200 whose body carries the encoded `Err`.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec;
use super::handle::ClusterHandle;
use super::network::{PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE, RaftRpc};
use super::types::{AppendRequest, NodeId, SnapshotRequest, VoteRequest};

pub(crate) const PATH_INFO: &str = "/internal/cluster/info";
pub(crate) const PATH_JOIN: &str = "/internal/cluster/join";
pub(crate) const PATH_REMOVE: &str = "/internal/cluster/remove";

/// Largest accepted request body (snapshots of the cluster state are small).
const MAX_BODY: usize = 64 << 20;

/// Why an internal request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("missing or wrong cluster secret")]
    Unauthorized,
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
            RpcError::Unauthorized => 401,
            RpcError::BadRequest(_) => 400,
            RpcError::WrongTarget { .. } | RpcError::WrongCluster { .. } => 409,
            RpcError::Unavailable(_) => 503,
            RpcError::Internal(_) => 500,
        }
    }
}

/// `GET /internal/cluster/info` reply: who this node is and what it knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterInfo {
    pub node_id: NodeId,
    pub addr: String,
    pub initialized: bool,
    pub leader: Option<(NodeId, String)>,
}

/// `POST /internal/cluster/join` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub node_id: NodeId,
    pub addr: String,
    /// Set by a non-leader that passes the request on; never forwarded twice.
    pub forwarded: bool,
}

/// `POST /internal/cluster/remove` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RemoveRequest {
    pub node_id: NodeId,
    /// Set by a non-leader that passes the request on; never forwarded twice.
    pub forwarded: bool,
}

/// Checks an `Authorization` header value against the configured secret
/// (`Bearer <secret>`), in time independent of where the strings differ.
pub fn check_secret(expected: Option<&str>, authorization: Option<&str>) -> Result<(), RpcError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
        return Err(RpcError::Unauthorized);
    };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(RpcError::Unauthorized)
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
    let req: AppendRequest = decode_rpc(handle, PATH_APPEND, body)?;
    if let Some(leader) = req.vote.leader_id().voted_for() {
        handle.note_append_from(leader);
    }
    encode(&handle.raft().append_entries(req).await)
}

/// Handles a RequestVote RPC body.
pub async fn handle_vote(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: VoteRequest = decode_rpc(handle, PATH_VOTE, body)?;
    encode(&handle.raft().vote(req).await)
}

/// Handles an InstallSnapshot RPC body (one chunk).
pub async fn handle_snapshot(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: SnapshotRequest = decode_rpc(handle, PATH_SNAPSHOT, body)?;
    encode(&handle.raft().install_snapshot(req).await)
}

/// Handles `GET /internal/cluster/info`.
pub async fn handle_info(handle: &ClusterHandle) -> Result<Vec<u8>, RpcError> {
    encode(&handle.info().await)
}

/// Handles `POST /internal/cluster/join` (forwarded to the leader when needed).
pub async fn handle_join(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: JoinRequest = decode_body(PATH_JOIN, body)?;
    handle
        .join_member(req.node_id, req.addr, req.forwarded)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    encode(&())
}

/// Handles `POST /internal/cluster/remove` (forwarded to the leader when needed).
pub async fn handle_remove(handle: &ClusterHandle, body: &[u8]) -> Result<Vec<u8>, RpcError> {
    let req: RemoveRequest = decode_body(PATH_REMOVE, body)?;
    handle
        .remove_member(req.node_id, req.forwarded)
        .await
        .map_err(|e| RpcError::Unavailable(e.to_string()))?;
    encode(&())
}

fn respond(result: Result<Vec<u8>, RpcError>) -> HttpResponse {
    match result {
        Ok(bytes) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        Err(e) => {
            let status = actix_web::http::StatusCode::from_u16(e.status())
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            HttpResponse::build(status)
                .content_type("text/plain")
                .body(e.to_string())
        }
    }
}

fn authorize(handle: &ClusterHandle, req: &HttpRequest) -> Result<(), RpcError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    check_secret(handle.secret(), header).inspect_err(|_| {
        tracing::warn!(
            path = req.path(),
            peer = ?req.peer_addr(),
            "rejected cluster request without the right secret"
        );
    })
}

type Handler = for<'a> fn(
    &'a ClusterHandle,
    &'a [u8],
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<u8>, RpcError>> + 'a>,
>;

async fn dispatch(
    req: HttpRequest,
    body: web::Bytes,
    handle: web::Data<ClusterHandle>,
    handler: Handler,
) -> HttpResponse {
    if let Err(e) = authorize(&handle, &req) {
        return respond(Err(e));
    }
    respond(handler(&handle, &body).await)
}

/// Registers the internal cluster routes (Raft RPCs and the join/info/remove admin
/// routes) with `handle` as their state.
pub fn configure(cfg: &mut web::ServiceConfig, handle: ClusterHandle) {
    let data = web::Data::new(handle);
    let payload = web::PayloadConfig::new(MAX_BODY);
    let routes: [(&str, Handler); 5] = [
        (PATH_APPEND, |h, b| Box::pin(handle_append(h, b))),
        (PATH_VOTE, |h, b| Box::pin(handle_vote(h, b))),
        (PATH_SNAPSHOT, |h, b| Box::pin(handle_snapshot(h, b))),
        (PATH_JOIN, |h, b| Box::pin(handle_join(h, b))),
        (PATH_REMOVE, |h, b| Box::pin(handle_remove(h, b))),
    ];
    for (path, handler) in routes {
        cfg.service(
            web::resource(path)
                .app_data(data.clone())
                .app_data(payload.clone())
                .route(
                    web::post().to(move |req, body, handle| dispatch(req, body, handle, handler)),
                ),
        );
    }
    cfg.service(web::resource(PATH_INFO).app_data(data).route(web::get().to(
        |req: HttpRequest, handle: web::Data<ClusterHandle>| async move {
            if let Err(e) = authorize(&handle, &req) {
                return respond(Err(e));
            }
            respond(handle_info(&handle).await)
        },
    )));
}

/// Default timeout of admin calls between nodes.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_check() {
        assert!(check_secret(None, None).is_ok());
        assert!(check_secret(None, Some("Bearer x")).is_ok());
        assert!(check_secret(Some("s3cret"), Some("Bearer s3cret")).is_ok());
        assert!(check_secret(Some("s3cret"), None).is_err());
        assert!(check_secret(Some("s3cret"), Some("s3cret")).is_err());
        assert!(check_secret(Some("s3cret"), Some("Bearer s3cre")).is_err());
        assert!(check_secret(Some("s3cret"), Some("Bearer s3cret2")).is_err());
        assert!(check_secret(Some("s3cret"), Some("Bearer ")).is_err());
    }
}
