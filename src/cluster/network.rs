//! Client side of the Raft RPCs: [`NetworkFactory`] / [`PeerClient`] (openraft's
//! `RaftNetworkFactory` / `RaftNetwork`) over one shared `reqwest::Client`, posting
//! [`codec`]-encoded bodies to `/internal/raft/{append,vote,snapshot}` on the peer.
//!
//! Every request carries the id of the node it is meant for ([`RaftRpc::target`]); the
//! peer rejects it when that is not its own id, so a stale address in a membership entry
//! never makes us talk Raft to the wrong node. Every call is bounded by the RPC's hard
//! TTL; connect failures and rejections are reported as `Unreachable` so openraft backs
//! off. The time of the last answer from each peer is recorded in [`PeerContacts`]; the
//! leader derives liveness ("down after") from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::RPCTypes;
use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec;
use super::state_machine::StateMachine;
use super::types::{
    AppendRequest, AppendResponse, NodeId, NodeInfo, RaftError, RpcError, SnapshotRequest,
    SnapshotResponse, TypeConfig, VoteRequest, VoteResponse,
};

pub(crate) const PATH_APPEND: &str = "/internal/raft/append";
pub(crate) const PATH_VOTE: &str = "/internal/raft/vote";
pub(crate) const PATH_SNAPSHOT: &str = "/internal/raft/snapshot";

/// Body of every Raft RPC: the intended receiver and the openraft request.
#[derive(Serialize, Deserialize)]
pub(crate) struct RaftRpc<T> {
    pub target: NodeId,
    /// The sender's cluster id, when it knows it.
    pub cluster: Option<NodeId>,
    pub req: T,
}

/// When each peer last answered an RPC (any answer, including a Raft-level rejection).
#[derive(Default)]
pub(crate) struct PeerContacts(Mutex<HashMap<NodeId, Instant>>);

impl PeerContacts {
    pub fn record(&self, node: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now());
    }

    pub fn get(&self, node: NodeId) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
    }
}

/// What the HTTP layer of a peer call can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: reqwest::Error,
    },
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: String,
        source: reqwest::Error,
    },
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// State shared by all outgoing cluster calls of one node.
pub(crate) struct NetShared {
    pub id: NodeId,
    pub client: reqwest::Client,
    pub secret: Option<String>,
    pub contacts: PeerContacts,
    /// The local state machine (for the cluster id sent with every RPC).
    pub sm: StateMachine,
}

impl NetShared {
    pub fn cluster_id(&self) -> Option<NodeId> {
        self.sm.cluster_id()
    }

    /// POSTs (or GETs, when `body` is `None`) `path` on `addr`; returns the body of a 200
    /// answer. Bounded by `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let url = format!("http://{addr}{path}");
        let mut request = match body {
            Some(body) => self
                .client
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(body),
            None => self.client.get(&url),
        };
        if let Some(secret) = &self.secret {
            request = request.header("authorization", format!("Bearer {secret}"));
        }
        let fut = async {
            let response = request.send().await.map_err(|source| {
                if source.is_connect() {
                    TransportError::Connect {
                        addr: addr.to_owned(),
                        source,
                    }
                } else {
                    TransportError::Request {
                        addr: addr.to_owned(),
                        source,
                    }
                }
            })?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|source| TransportError::Request {
                    addr: addr.to_owned(),
                    source,
                })?;
            if !status.is_success() {
                return Err(TransportError::Status {
                    addr: addr.to_owned(),
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
                });
            }
            Ok(bytes.to_vec())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }
}

/// Creates one lazy [`PeerClient`] per target (no connection is made here).
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    pub shared: Arc<NetShared>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            shared: self.shared.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Raft RPC client for one peer.
pub(crate) struct PeerClient {
    shared: Arc<NetShared>,
    target: NodeId,
    node: NodeInfo,
}

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        action: RPCTypes,
        req: Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = codec::encode(&RaftRpc {
            target: self.target,
            cluster: self.shared.cluster_id(),
            req,
        })
        .map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let timeout = option.hard_ttl();
        let bytes = match self
            .shared
            .call(&self.node.addr, path, Some(body), timeout)
            .await
        {
            Ok(bytes) => bytes,
            Err(TransportError::Timeout(_)) => {
                return Err(RpcError::Timeout(Timeout {
                    action,
                    id: self.shared.id,
                    target: self.target,
                    timeout,
                }));
            }
            Err(e @ (TransportError::Connect { .. } | TransportError::Status { .. })) => {
                tracing::debug!(target_node = self.target, error = %e, "raft rpc: peer unreachable");
                return Err(RpcError::Unreachable(Unreachable::new(&e)));
            }
            Err(e) => return Err(RpcError::Network(NetworkError::new(&e))),
        };
        let reply: Result<Resp, RaftError<E>> =
            codec::decode(&bytes).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        self.shared.contacts.record(self.target);
        reply.map_err(|e| {
            RpcError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendRequest,
        option: RPCOption,
    ) -> Result<AppendResponse, RpcError> {
        self.rpc(PATH_APPEND, RPCTypes::AppendEntries, rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: SnapshotRequest,
        option: RPCOption,
    ) -> Result<SnapshotResponse, RpcError<InstallSnapshotError>> {
        self.rpc(PATH_SNAPSHOT, RPCTypes::InstallSnapshot, rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.rpc(PATH_VOTE, RPCTypes::Vote, rpc, &option).await
    }
}
