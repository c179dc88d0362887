//! The cluster routes of the HTTP API: `GET /api/v1/cluster` (this node's view of the
//! membership, in the shape DESIGN.md promises to scripts) and the admin routes that
//! `shoal cluster leave|remove` call: `POST /api/v1/cluster/leave` (this node leaves,
//! then exits) and `POST /api/v1/cluster/remove/{id}` (remove a member gone for good).
//! Admin routes require `Authorization: Bearer <secret>` when a cluster secret is set.
//!
//! Node ids are strings in JSON: a u64 does not survive JavaScript clients.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::json::{ApiError, ErrorType, success};
use crate::cluster::{ClusterHandle, ClusterStatus, MemberRole, MemberState};
use crate::scrape::manager::AssignmentSnapshot;

/// What the cluster routes need: the node's cluster member and how to start the
/// node's graceful leave (`POST /api/v1/cluster/leave`).
#[derive(Clone)]
pub struct ClusterWeb {
    pub handle: ClusterHandle,
    /// Starts the graceful leave, as SIGTERM does: the drain (`crate::drain`), the
    /// removal from the membership, then the node shuts down.
    pub start_leave: Arc<dyn Fn() + Send + Sync>,
    /// `--cluster.replication-factor` of this node (the cluster's, as every node is
    /// started with the same).
    pub replication_factor: usize,
}

/// Registers the cluster API routes (inside the `/api/v1` scope).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/cluster", web::get().to(status))
        .route("/cluster/leave", web::post().to(leave))
        .route("/cluster/remove/{id}", web::post().to(remove));
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The `data` object of `GET /api/v1/cluster` (also what `shoal cluster status`
/// reads). Ids are strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDoc {
    pub node_id: String,
    pub cluster_id: Option<String>,
    pub address: String,
    pub leader_id: Option<String>,
    pub leader_address: Option<String>,
    pub raft_state: String,
    pub term: u64,
    pub leader_changes: u64,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub view_index: u64,
    pub pending_rule_batches: usize,
    pub assignment_view_index: Option<u64>,
    pub discovered_targets: Option<usize>,
    /// How many members scrape each target (this node's `--cluster.replication-factor`).
    #[serde(default)]
    pub replication_factor: Option<usize>,
    pub members: Vec<MemberDoc>,
}

/// One member in a [`ClusterDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberDoc {
    pub id: String,
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    /// `up`, `leaving` (up, owns no targets, moving its samples to their new owners)
    /// or `down`.
    pub state: String,
    /// The drain of a leaving member: what it still has to move (null otherwise).
    #[serde(default)]
    pub drain: Option<DrainDoc>,
    /// RFC 3339, when this node last heard from the member.
    pub last_contact: Option<String>,
    pub leader: bool,
    /// Discovered targets the member owns (null before the first assignment).
    pub targets: Option<usize>,
}

/// A leaving member's drain progress, as it last committed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainDoc {
    pub series_left: u64,
    pub bytes_left: u64,
    /// Everything is moved; the member is leaving the membership.
    pub done: bool,
}

/// The `data` of `POST /api/v1/cluster/leave`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveDoc {
    pub node_id: String,
    /// The node is out of the membership already (false: it is leaving).
    pub left: bool,
    /// The node is leaving: moving its samples, then it leaves and shuts down.
    #[serde(default)]
    pub leaving: bool,
}

/// The `data` of `POST /api/v1/cluster/remove/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoveDoc {
    pub node_id: String,
    pub removed: bool,
}

/// The [`ClusterDoc`] of `st`, with `now` as the wall clock. With the scrape manager's
/// `assignment`, each member gets `targets` (how many discovered targets it owns —
/// computed here from the same assignment every node computes) and the document gets
/// `assignmentViewIndex`; without it both are null.
pub fn status_doc(
    st: &ClusterStatus,
    assignment: Option<&AssignmentSnapshot>,
    now: SystemTime,
) -> ClusterDoc {
    let members = st
        .members
        .iter()
        .map(|m| MemberDoc {
            id: m.id.to_string(),
            address: m.addr.clone(),
            role: match m.role {
                MemberRole::Voter => "voter",
                MemberRole::Learner => "learner",
            }
            .to_owned(),
            state: match (m.state, m.leaving) {
                (MemberState::Down, _) => "down",
                (MemberState::Up, Some(_)) => "leaving",
                (MemberState::Up, None) => "up",
            }
            .to_owned(),
            drain: m.leaving.map(|p| DrainDoc {
                series_left: p.series_left,
                bytes_left: p.bytes_left,
                done: p.done,
            }),
            last_contact: m.last_contact.and_then(|d| now.checked_sub(d)).map(rfc3339),
            leader: st.leader_id == Some(m.id),
            targets: assignment.map(|a| a.targets_per_member.get(&m.id).copied().unwrap_or(0)),
        })
        .collect();
    let leader_address = st
        .leader_id
        .and_then(|l| st.members.iter().find(|m| m.id == l))
        .map(|m| m.addr.clone());
    ClusterDoc {
        node_id: st.node_id.to_string(),
        cluster_id: st.cluster_id.map(|c| c.to_string()),
        address: st.addr.clone(),
        leader_id: st.leader_id.map(|l| l.to_string()),
        leader_address,
        raft_state: st.raft_state.to_owned(),
        term: st.term,
        leader_changes: st.leader_changes,
        last_log_index: st.last_log_index,
        commit_index: st.commit_index,
        applied_index: st.applied_index,
        view_index: st.view_index,
        pending_rule_batches: st.pending_rule_batches,
        assignment_view_index: assignment.map(|a| a.view_index),
        discovered_targets: assignment.map(|a| a.discovered),
        replication_factor: None,
        members,
    }
}

fn cluster_of(st: &AppState) -> Result<&ClusterWeb, ApiError> {
    st.cluster
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorType::Unavailable, "clustering is not enabled"))
}

async fn status(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    let s = c.handle.status().await;
    let targets = st.targets.snapshot();
    let mut doc = status_doc(&s, targets.assignment.as_ref(), SystemTime::now());
    doc.replication_factor = Some(c.replication_factor);
    Ok(success(&doc))
}

/// The cluster admin routes need a web user (basic authentication passed), or the
/// cluster secret, or — with cluster mutual TLS and no secret — a client certificate of
/// the cluster CA. On a node without any of these they are open on loopback or with
/// `--cluster.insecure`, and closed on a lone node reachable from the network.
pub(super) fn authorize(st: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    use actix_web::HttpMessage as _;
    if req.extensions().get::<super::WebUser>().is_some() {
        return Ok(());
    }
    let a = &st.peer_access;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let certs = req
        .conn_data::<crate::tls::PeerCertificates>()
        .map_or(&[][..], |c| c.0.as_slice());
    let ok = if a.secrets.is_set() {
        a.secrets.admits(header)
    } else if let Some(tls) = &a.tls {
        tls.verify_peer(certs).is_ok()
    } else {
        !a.closed
    };
    if ok {
        return Ok(());
    }
    tracing::warn!(path = req.path(), peer = ?req.peer_addr(), "rejected cluster admin request without the right credentials");
    let msg = if a.closed {
        "this node runs alone without a cluster secret: its cluster admin routes are closed"
    } else if a.secrets.is_set() {
        "missing or wrong cluster secret"
    } else {
        "a client certificate of the cluster CA is required"
    };
    Err(ApiError::new(ErrorType::Unauthorized, msg))
}

/// How long the leave request waits for the cluster to commit that the node leaves.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the node's graceful leave: commits that it is leaving (its targets move to
/// the others at once), then the node moves its samples to their new owners, leaves
/// the membership and shuts down (`crate::drain`; `GET /api/v1/cluster` shows the
/// progress). Answers once the leave is committed, not when it is over.
async fn leave(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    authorize(&st, &req)?;
    let id = c.handle.node_id();
    let others = c.handle.status().await.members.iter().any(|m| m.id != id);
    if others {
        let announce = c
            .handle
            .report_leaving(crate::cluster::DrainProgress::default());
        match tokio::time::timeout(LEAVE_TIMEOUT, announce).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorType::Unavailable,
                    "the cluster did not commit the leave in time; the node stays a member",
                ));
            }
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    ErrorType::Unavailable,
                    format!("cannot leave: {e}"),
                ));
            }
            Ok(Ok(())) => {}
        }
    }
    tracing::info!(node_id = id, "leaving the cluster on request");
    (c.start_leave)();
    Ok(success(&LeaveDoc {
        node_id: id.to_string(),
        left: false,
        leaving: true,
    }))
}

async fn remove(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    authorize(&st, &req)?;
    let id: u64 = path
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_data(format!("invalid node id {:?}", path.as_str())))?;
    match tokio::time::timeout(LEAVE_TIMEOUT, c.handle.remove(id)).await {
        Err(_) => Err(ApiError::new(
            ErrorType::Unavailable,
            "remove did not complete in time",
        )),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorType::Unavailable,
            format!("cannot remove node {id}: {e}"),
        )),
        Ok(Ok(())) => Ok(success(&RemoveDoc {
            node_id: id.to_string(),
            removed: true,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shape() {
        let st = ClusterStatus {
            node_id: 18_446_744_073_709_551_557,
            cluster_id: Some(7),
            addr: "a:1".into(),
            leader_id: None,
            raft_state: "candidate",
            term: 3,
            leader_changes: 1,
            last_log_index: Some(9),
            commit_index: Some(8),
            applied_index: Some(8),
            view_index: 5,
            pending_rule_batches: 0,
            members: vec![crate::cluster::MemberStatus {
                id: 18_446_744_073_709_551_557,
                addr: "a:1".into(),
                role: MemberRole::Voter,
                state: MemberState::Down,
                last_contact: None,
                leaving: None,
            }],
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = serde_json::to_value(status_doc(&st, None, now)).unwrap();
        assert!(v["assignmentViewIndex"].is_null());
        assert!(v["members"][0]["targets"].is_null());
        assert_eq!(v["nodeId"], "18446744073709551557");
        assert!(v["leaderId"].is_null());
        assert_eq!(v["term"], 3);
        assert_eq!(v["commitIndex"], 8);
        assert_eq!(v["viewIndex"], 5);
        assert_eq!(v["members"][0]["role"], "voter");
        assert_eq!(v["members"][0]["state"], "down");
        assert!(v["members"][0]["lastContact"].is_null());
        let mut st = st;
        st.leader_id = Some(18_446_744_073_709_551_557);
        st.members[0].last_contact = Some(Duration::from_secs(2));
        let asg = AssignmentSnapshot {
            view_index: 4,
            targets_per_member: [(18_446_744_073_709_551_557, 7)].into(),
            discovered: 7,
            instance_keys: Default::default(),
            ambiguous_instances: Default::default(),
        };
        let v = serde_json::to_value(status_doc(&st, Some(&asg), now)).unwrap();
        assert_eq!(v["assignmentViewIndex"], 4);
        assert_eq!(v["discoveredTargets"], 7);
        assert_eq!(v["members"][0]["targets"], 7);
        assert_eq!(v["leaderId"], "18446744073709551557");
        assert_eq!(v["members"][0]["lastContact"], "2023-11-14T22:13:18.000Z");
        assert_eq!(v["leaderAddress"], "a:1");
        assert!(v["members"][0]["drain"].is_null());
        // A leaving member that is up shows as `leaving`, with its drain's progress.
        st.members[0].state = MemberState::Up;
        st.members[0].leaving = Some(crate::cluster::DrainProgress {
            series_left: 12,
            bytes_left: 3400,
            done: false,
        });
        let v = serde_json::to_value(status_doc(&st, Some(&asg), now)).unwrap();
        assert_eq!(v["members"][0]["state"], "leaving");
        assert_eq!(v["members"][0]["drain"]["seriesLeft"], 12);
        assert_eq!(v["members"][0]["drain"]["bytesLeft"], 3400);
        assert_eq!(v["members"][0]["drain"]["done"], false);
    }
}
