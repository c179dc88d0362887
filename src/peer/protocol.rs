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
/// Ask the leader to commit that a member is leaving, with its drain's progress:
/// [`LeavingRequest`] → `()`.
pub const CLUSTER_LEAVING: Route = post("/internal/cluster/leaving", 64 * KIB);
/// A leaving member moves sealed chunks to their new owner: [`ImportRequest`] →
/// [`ImportAnswer`], sent only once they are durable on the receiver.
pub const TSDB_IMPORT: Route = post("/internal/tsdb/import", 64 * MIB);
/// A member's share of a cluster-wide read: `query::wire::Request` →
/// `query::wire::Response` (query wire format).
pub const MEMBER_READ: Route = post("/internal/query", 16 * MIB);
/// The leader federates a member's latest samples for global rules:
/// [`FederateRequest`] → text exposition format.
pub const FEDERATE: Route = post("/internal/federate", 16 * MIB);
/// A target's new owner tells a previous owner it can stop: [`HandoffNotice`] → `()`.
pub const HANDOFF: Route = post("/internal/scrape/handoff", 64 * KIB);

/// Every internal route (the guard refuses paths not listed here).
pub const ROUTES: [Route; 11] = [
    RAFT_APPEND,
    RAFT_VOTE,
    RAFT_SNAPSHOT,
    CLUSTER_INFO,
    CLUSTER_JOIN,
    CLUSTER_REMOVE,
    CLUSTER_LEAVING,
    TSDB_IMPORT,
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

/// How much a leaving node still has to move (as it last reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainProgress {
    pub series_left: u64,
    pub bytes_left: u64,
    /// Whether everything has been moved (the node is about to leave the membership).
    pub done: bool,
}

/// [`CLUSTER_LEAVING`] body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeavingRequest {
    pub node_id: NodeId,
    pub progress: DrainProgress,
    /// Set by a non-leader that passes the request on; never forwarded twice.
    pub forwarded: bool,
}

/// One sealed chunk as it crosses the wire: the Prometheus XOR chunk bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChunk {
    pub min_t: i64,
    pub max_t: i64,
    pub bytes: Vec<u8>,
}

/// One series' chunks in an [`ImportRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSeries {
    /// Sorted label pairs, `__name__` included.
    pub labels: Vec<(String, String)>,
    pub chunks: Vec<WireChunk>,
}

/// What the receiver of an [`ImportRequest`] treats as the same sample (the wire form
/// of `storage::chunks::ImportMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireImportMode {
    /// A leaving member's drain: a sample in the scrape slot of a held one is a replica.
    #[default]
    Replica,
    /// A backfill (`shoal tsdb import`): every distinct timestamp is kept.
    Exact,
}

/// [`TSDB_IMPORT`] body: chunks a leaving member moves to this node (their owner once
/// it has left), or a backfill's share that the node a user imported through sends to
/// this node (an owner of the series). Importing the same request twice stores nothing
/// the second time.
///
/// `mode` is the last field: a request of a release before it (`from` and `series`
/// only) still decodes ([`decode_import_request`]) as [`WireImportMode::Replica`], and
/// is answered in that release's shape ([`LegacyImportAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The sender (for logs and metrics).
    pub from: NodeId,
    pub series: Vec<WireSeries>,
    pub mode: WireImportMode,
}

/// [`TSDB_IMPORT`] answer: what the receiver did with the samples (all durable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportAnswer {
    pub stored: u64,
    /// Held already (same timestamp and value; in replica mode also the same scrape).
    pub duplicate: u64,
    /// Out of retention or too far in the future.
    pub dropped: u64,
    /// Held with another value at the same timestamp (the held one is kept).
    pub conflicting: u64,
}

/// The [`ImportRequest`] of releases before [`WireImportMode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyImportRequest {
    pub from: NodeId,
    pub series: Vec<WireSeries>,
}

/// The answer to a [`LegacyImportRequest`] (conflicts counted as duplicates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyImportAnswer {
    pub stored: u64,
    pub duplicate: u64,
    pub dropped: u64,
}

/// Decodes a [`TSDB_IMPORT`] body of this release or of one before the mode; `true`
/// with a legacy request (answer it with a [`LegacyImportAnswer`]).
pub fn decode_import_request(
    body: &[u8],
) -> Result<(ImportRequest, bool), crate::cluster::codec::CodecError> {
    use crate::cluster::codec::decode;
    match decode::<ImportRequest>(body) {
        Ok(r) => Ok((r, false)),
        Err(e) => match decode::<LegacyImportRequest>(body) {
            Ok(l) => Ok((
                ImportRequest {
                    from: l.from,
                    series: l.series,
                    mode: WireImportMode::Replica,
                },
                true,
            )),
            Err(_) => Err(e),
        },
    }
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

    #[test]
    fn import_requests_of_either_release_decode() {
        use crate::cluster::codec::encode;
        let series = vec![WireSeries {
            labels: vec![("__name__".into(), "up".into())],
            chunks: vec![],
        }];
        let new = ImportRequest {
            from: 7,
            series: series.clone(),
            mode: WireImportMode::Exact,
        };
        let (r, legacy) = decode_import_request(&encode(&new).unwrap()).unwrap();
        assert_eq!((r, legacy), (new, false));
        let old = LegacyImportRequest { from: 7, series };
        let (r, legacy) = decode_import_request(&encode(&old).unwrap()).unwrap();
        assert!(legacy);
        assert_eq!(r.mode, WireImportMode::Replica);
        assert_eq!(r.series, old.series);
        assert!(decode_import_request(&[1, 2, 3]).is_err());
    }
}
