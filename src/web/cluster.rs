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
use serde_json::json;

use super::AppState;
use super::json::{ApiError, ErrorType, success};
use crate::cluster::{ClusterHandle, ClusterStatus, MemberRole, MemberState};
use crate::scrape::manager::AssignmentSnapshot;

/// What the cluster routes need: the node's cluster member and how to make the node
/// exit after it left the cluster through `POST /api/v1/cluster/leave`.
#[derive(Clone)]
pub struct ClusterWeb {
    pub handle: ClusterHandle,
    /// Called once this node has left the membership; the node then shuts down.
    pub exit_after_leave: Arc<dyn Fn() + Send + Sync>,
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

/// The `data` object of `GET /api/v1/cluster` for `st`, with `now` as the wall clock.
/// With the scrape manager's `assignment`, each member gets `targets` (how many
/// discovered targets it owns — computed here from the same assignment every node
/// computes) and the object gets `assignmentViewIndex`; without it both are null.
pub fn status_json(
    st: &ClusterStatus,
    assignment: Option<&AssignmentSnapshot>,
    now: SystemTime,
) -> serde_json::Value {
    let members: Vec<serde_json::Value> = st
        .members
        .iter()
        .map(|m| {
            let last_contact = m.last_contact.and_then(|d| now.checked_sub(d)).map(rfc3339);
            json!({
                "id": m.id.to_string(),
                "address": m.addr,
                "role": match m.role {
                    MemberRole::Voter => "voter",
                    MemberRole::Learner => "learner",
                },
                "state": match m.state {
                    MemberState::Up => "up",
                    MemberState::Down => "down",
                },
                "lastContact": last_contact,
                "leader": st.leader_id == Some(m.id),
                "targets": assignment.map(|a| a.targets_per_member.get(&m.id).copied().unwrap_or(0)),
            })
        })
        .collect();
    let leader_address = st
        .leader_id
        .and_then(|l| st.members.iter().find(|m| m.id == l))
        .map(|m| m.addr.clone());
    json!({
        "nodeId": st.node_id.to_string(),
        "clusterId": st.cluster_id.map(|c| c.to_string()),
        "address": st.addr,
        "leaderId": st.leader_id.map(|l| l.to_string()),
        "leaderAddress": leader_address,
        "raftState": st.raft_state,
        "term": st.term,
        "leaderChanges": st.leader_changes,
        "lastLogIndex": st.last_log_index,
        "commitIndex": st.commit_index,
        "appliedIndex": st.applied_index,
        "viewIndex": st.view_index,
        "pendingRuleBatches": st.pending_rule_batches,
        "assignmentViewIndex": assignment.map(|a| a.view_index),
        "discoveredTargets": assignment.map(|a| a.discovered),
        "members": members,
    })
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
    Ok(success(&status_json(
        &s,
        targets.assignment.as_ref(),
        SystemTime::now(),
    )))
}

fn authorize(c: &ClusterWeb, req: &HttpRequest) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    crate::cluster::rpc::check_secret(c.handle.secret(), header).map_err(|_| {
        tracing::warn!(path = req.path(), peer = ?req.peer_addr(), "rejected cluster admin request without the right secret");
        ApiError::new(ErrorType::Unauthorized, "missing or wrong cluster secret")
    })
}

/// The body of the internal handoff route (`scrape::manager::HANDOFF_PATH`): the key of
/// a target the sender gained and has scraped once, and the view index it gained it at.
/// Both are strings (u64 in JSON).
#[derive(serde::Deserialize)]
struct HandoffNotice {
    key: String,
    #[serde(rename = "viewIndex")]
    view_index: String,
}

/// Decodes a [`HandoffNotice`] body into `(key, view index)` (public for the `handoff`
/// fuzz target).
#[doc(hidden)]
pub fn parse_handoff_notice(body: &[u8]) -> Result<(u64, u64), String> {
    let notice: HandoffNotice =
        serde_json::from_slice(body).map_err(|e| format!("invalid handoff notice: {e}"))?;
    let key: u64 = notice
        .key
        .parse()
        .map_err(|_| format!("invalid target key {:?}", notice.key))?;
    let view_index: u64 = notice
        .view_index
        .parse()
        .map_err(|_| format!("invalid view index {:?}", notice.view_index))?;
    Ok((key, view_index))
}

/// `POST /internal/scrape/handoff`: a new owner of a target tells this node (a previous
/// owner, still scraping it) that it can stop. Requires the cluster secret when set.
pub async fn handoff(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    authorize(c, &req)?;
    let (key, view_index) = parse_handoff_notice(&body).map_err(ApiError::bad_data)?;
    if let Some(h) = &st.handoff {
        h(key, view_index);
    }
    Ok(success(&json!({"key": key.to_string()})))
}

/// How long the leave request waits for the membership change.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(20);

async fn leave(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    authorize(c, &req)?;
    let id = c.handle.node_id();
    match tokio::time::timeout(LEAVE_TIMEOUT, c.handle.leave()).await {
        Err(_) => Err(ApiError::new(
            ErrorType::Unavailable,
            "leave did not complete in time; the node stays a member",
        )),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorType::Unavailable,
            format!("cannot leave: {e}"),
        )),
        Ok(Ok(())) => {
            tracing::info!(node_id = id, "left the cluster on request; shutting down");
            (c.exit_after_leave)();
            Ok(success(&json!({"nodeId": id.to_string(), "left": true})))
        }
    }
}

async fn remove(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let c = cluster_of(&st)?;
    authorize(c, &req)?;
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
        Ok(Ok(())) => Ok(success(&json!({"nodeId": id.to_string(), "removed": true}))),
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
            }],
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = status_json(&st, None, now);
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
        };
        let v = status_json(&st, Some(&asg), now);
        assert_eq!(v["assignmentViewIndex"], 4);
        assert_eq!(v["discoveredTargets"], 7);
        assert_eq!(v["members"][0]["targets"], 7);
        assert_eq!(v["leaderId"], "18446744073709551557");
        assert_eq!(v["members"][0]["lastContact"], "2023-11-14T22:13:18.000Z");
        assert_eq!(v["leaderAddress"], "a:1");
    }
}
