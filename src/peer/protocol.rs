//! Every node-to-node route: its path, method, body limit, and the typed bodies that
//! cross it. Requests and answers are [`crate::cluster::codec`] bincode (a format
//! byte, then the value) except the member read, whose body is the query wire format
//! (`crate::query::wire`, also bincode, with its own decode bounds), and the
//! federation answer, which is the text exposition format (the same parser reads
//! it as reads scrapes).
//!
//! All paths start with [`PREFIX`]: the server mounts them in one scope behind the
//! peer guard (`super::guard`), which authenticates before a byte of body is read.

use serde::{Deserialize, Serialize};

/// The scope every internal route lives under.
pub const PREFIX: &str = "/internal";

/// HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One internal route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub path: &'static str,
    pub method: Method,
    /// Largest request body the server reads (413 above it, before reading).
    pub max_body: usize,
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Raft AppendEntries: `RaftRpc<AppendRequest>` → `Result<AppendResponse, RaftError>`.
pub const RAFT_APPEND: Route = post("/internal/raft/append", 64 * MIB);
/// Raft RequestVote: `RaftRpc<VoteRequest>` → `Result<VoteResponse, RaftError>`.
pub const RAFT_VOTE: Route = post("/internal/raft/vote", 64 * KIB);
/// Raft InstallSnapshot (one chunk): `RaftRpc<SnapshotRequest>` →
/// `Result<SnapshotResponse, RaftError<InstallSnapshotError>>`.
pub const RAFT_SNAPSHOT: Route = post("/internal/raft/snapshot", 64 * MIB);
/// Who a node is: no body → [`ClusterInfo`].
pub const CLUSTER_INFO: Route = Route {
    path: "/internal/cluster/info",
    method: Method::Get,
    max_body: 0,
};
/// Ask the leader to add a member: [`JoinRequest`] → `()`.
pub const CLUSTER_JOIN: Route = post("/internal/cluster/join", 64 * KIB);
/// Ask the leader to remove a member: [`RemoveRequest`] → `()`.
pub const CLUSTER_REMOVE: Route = post("/internal/cluster/remove", 64 * KIB);
/// A member's share of a cluster-wide read: `query::wire::Request` →
/// `query::wire::Response` (query wire format).
pub const MEMBER_READ: Route = post("/internal/query", 16 * MIB);
/// The leader federates a member's latest samples for global rules:
/// [`FederateRequest`] → text exposition format.
pub const FEDERATE: Route = post("/internal/federate", 16 * MIB);
/// A target's new owner tells a previous owner it can stop: [`HandoffNotice`] → `()`.
pub const HANDOFF: Route = post("/internal/scrape/handoff", 64 * KIB);

/// Every internal route (the guard refuses paths not listed here).
pub const ROUTES: [Route; 9] = [
    RAFT_APPEND,
    RAFT_VOTE,
    RAFT_SNAPSHOT,
    CLUSTER_INFO,
    CLUSTER_JOIN,
    CLUSTER_REMOVE,
    MEMBER_READ,
    FEDERATE,
    HANDOFF,
];

const fn post(path: &'static str, max_body: usize) -> Route {
    Route {
        path,
        method: Method::Post,
        max_body,
    }
}

/// The route of `path`, if it is an internal route.
pub fn route(path: &str) -> Option<Route> {
    ROUTES.into_iter().find(|r| r.path == path)
}

/// Node id (as in `crate::cluster::NodeId`).
pub type NodeId = u64;

/// Body of every Raft RPC: the intended receiver and the openraft request.
#[derive(Debug, Serialize, Deserialize)]
pub struct RaftRpc<T> {
    pub target: NodeId,
    /// The sender's cluster id, when it knows it.
    pub cluster: Option<NodeId>,
    pub req: T,
}

/// [`CLUSTER_INFO`] answer: who this node is and what it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub node_id: NodeId,
    pub addr: String,
    pub initialized: bool,
    pub leader: Option<(NodeId, String)>,
}

/// [`CLUSTER_JOIN`] body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: NodeId,
    pub addr: String,
    /// Set by a non-leader that passes the request on; never forwarded twice.
    pub forwarded: bool,
}

/// [`CLUSTER_REMOVE`] body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub node_id: NodeId,
    /// Set by a non-leader that passes the request on; never forwarded twice.
    pub forwarded: bool,
}

/// [`FEDERATE`] body: the `match[]` selectors, in PromQL selector syntax. The answer
/// is this node's own latest sample of every matching series (as `/federate?local=1
/// &external_labels=0`), in the text exposition format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederateRequest {
    pub selectors: Vec<String>,
}

/// [`HANDOFF`] body: the key of a target the sender gained and has scraped once, and
/// the view index it gained it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffNotice {
    pub key: u64,
    pub view_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_internal_and_listed_once() {
        for r in ROUTES {
            assert!(r.path.starts_with(PREFIX), "{}", r.path);
            assert_eq!(route(r.path), Some(r));
            assert_eq!(ROUTES.iter().filter(|x| x.path == r.path).count(), 1);
        }
        assert_eq!(route("/internal/nope"), None);
    }
}
