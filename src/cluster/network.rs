//! Client side of the Raft RPCs: [`NetworkFactory`] / [`RaftPeer`] (openraft's
//! `RaftNetworkFactory` / `RaftNetwork`) over the node's one [`PeerClient`], posting
//! [`codec`]-encoded bodies to the Raft routes of [`protocol`] on the peer.
//!
//! Every request carries the id of the node it is meant for ([`RaftRpc::target`]); the
//! peer rejects it when that is not its own id, so a stale address in a membership entry
//! never makes us talk Raft to the wrong node. Every call is bounded by the RPC's hard
//! TTL; connect failures and rejections are reported as `Unreachable` so openraft backs
//! off. The time of the last answer from each peer is recorded in [`PeerContacts`]; the
//! leader derives liveness ("down after") from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::RPCTypes;
use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec;
use super::state_machine::StateMachine;
use super::types::{
    AppendRequest, AppendResponse, NodeId, NodeInfo, RaftError, RpcError, SnapshotRequest,
    SnapshotResponse, TypeConfig, VoteRequest, VoteResponse,
};
use crate::peer::protocol::{self, Route};
use crate::peer::{Lane, PeerClient, PeerError};

pub(crate) use crate::peer::protocol::RaftRpc;

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

/// State shared by all outgoing cluster calls of one node.
pub(crate) struct NetShared {
    pub id: NodeId,
    /// The node's one peer client.
    pub peer: PeerClient,
    pub contacts: PeerContacts,
    /// The local state machine (for the cluster id sent with every RPC).
    pub sm: StateMachine,
}

impl NetShared {
    pub fn cluster_id(&self) -> Option<NodeId> {
        self.sm.cluster_id()
    }
}

/// Creates one lazy [`RaftPeer`] per target (no connection is made here).
#[derive(Clone)]
pub(crate) struct NetworkFactory {
    pub shared: Arc<NetShared>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> RaftPeer {
        RaftPeer {
            shared: self.shared.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Raft RPC client for one peer.
pub(crate) struct RaftPeer {
    shared: Arc<NetShared>,
    target: NodeId,
    node: NodeInfo,
}

impl RaftPeer {
    async fn rpc<Req, Resp, E>(
        &self,
        route: Route,
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
            .peer
            .send(Lane::Control, &self.node.addr, route, body, Some(timeout))
            .await
        {
            Ok(bytes) => bytes,
            Err(PeerError::Timeout(_)) => {
                if action == RPCTypes::Vote {
                    tracing::warn!(
                        target_node = self.target,
                        ?timeout,
                        "raft: vote request timed out"
                    );
                }
                return Err(RpcError::Timeout(Timeout {
                    action,
                    id: self.shared.id,
                    target: self.target,
                    timeout,
                }));
            }
            Err(e @ (PeerError::Connect { .. } | PeerError::Status { .. })) => {
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

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendRequest,
        option: RPCOption,
    ) -> Result<AppendResponse, RpcError> {
        self.rpc(protocol::RAFT_APPEND, RPCTypes::AppendEntries, rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: SnapshotRequest,
        option: RPCOption,
    ) -> Result<SnapshotResponse, RpcError<InstallSnapshotError>> {
        self.rpc(
            protocol::RAFT_SNAPSHOT,
            RPCTypes::InstallSnapshot,
            rpc,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.rpc(protocol::RAFT_VOTE, RPCTypes::Vote, rpc, &option)
            .await
    }
}
