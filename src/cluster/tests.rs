//! In-process multi-node tests: real actix-web servers on 127.0.0.1, real sockets,
//! temporary sled databases.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};

use super::*;

const SECRET: &str = "s3cret";

struct TestNode {
    handle: ClusterHandle,
    server: actix_web::dev::ServerHandle,
    addr: String,
    _dir: tempfile::TempDir,
}

fn options(dir: &std::path::Path, addr: &str, seeds: &[String]) -> ClusterOptions {
    let mut o = ClusterOptions::new(ClusterData::Dir(dir.join("cluster")), addr);
    o.seeds = seeds.to_vec();
    o.peer.secrets = crate::peer::SecretStore::fixed(crate::peer::Secrets::single(SECRET));
    o.heartbeat_interval = Duration::from_millis(100);
    o.election_timeout_min = Duration::from_millis(400);
    o.election_timeout_max = Duration::from_millis(800);
    o.down_after = Duration::from_secs(2);
    o.bootstrap_grace = Duration::from_secs(2);
    o
}

/// The internal routes of `h`'s node, behind the peer guard with its secret.
fn mount(cfg: &mut actix_web::web::ServiceConfig, h: &ClusterHandle) {
    crate::web::internal::routes(
        cfg,
        crate::web::internal::PeerGuard {
            access: crate::peer::PeerAccess {
                secrets: h.peer().secrets().clone(),
                ..Default::default()
            },
            metrics: crate::telemetry::Metrics::new(),
        },
        Some(h.clone()),
    );
}

async fn start_node(listener: TcpListener, seeds: &[String]) -> TestNode {
    let addr = listener.local_addr().expect("local addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = ClusterHandle::start(options(dir.path(), &addr, seeds))
        .await
        .expect("cluster start");
    let h = handle.clone();
    let server = HttpServer::new(move || {
        let h = h.clone();
        App::new().configure(move |cfg| mount(cfg, &h))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    let server_handle = server.handle();
    actix_web::rt::spawn(server);
    TestNode {
        handle,
        server: server_handle,
        addr,
        _dir: dir,
    }
}

async fn stop_node(node: &TestNode) {
    node.server.stop(false).await;
    node.handle.shutdown().await;
}

/// Polls `check` every 50 ms until it returns `Some` or `deadline` passes.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until all `nodes` agree on one leader and the same view with `expect_up` up
/// members; returns (leader id, view).
async fn converged(nodes: &[&TestNode], expect_up: usize) -> (NodeId, MembershipView) {
    let start = Instant::now();
    loop {
        let mut leader_ids = Vec::new();
        let mut views = Vec::new();
        let mut leaders = 0;
        let mut seen = String::new();
        for n in nodes {
            let st = n.handle.status().await;
            if st.raft_state == "leader" {
                leaders += 1;
            }
            let v = n.handle.membership_view().borrow().clone();
            seen += &format!(
                "\n  node {}: {} (leader {:?}), up {:?} at {}",
                n.handle.node_id(),
                st.raft_state,
                st.leader_id,
                v.up.keys().collect::<Vec<_>>(),
                v.index
            );
            leader_ids.push(st.leader_id);
            views.push(v);
        }
        let agreed =
            views.windows(2).all(|w| w[0] == w[1]) && leader_ids.windows(2).all(|w| w[0] == w[1]);
        if let (Some(Some(l)), 1, true) = (leader_ids.first().copied(), leaders, agreed)
            && views[0].up.len() == expect_up
        {
            return (l, views.swap_remove(0));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no convergence on {expect_up} up members in 30 s:{seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn listeners(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = ls
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    (ls, addrs)
}

#[actix_web::test]
async fn three_nodes_form_one_cluster_and_survive_leader_loss() {
    let (ls, seeds) = listeners(3);
    let mut nodes = Vec::new();
    for l in ls {
        nodes.push(start_node(l, &seeds).await);
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    let (_, view) = converged(&all, 3).await;

    // One cluster: every node lists the same three members, all voters.
    let ids: std::collections::BTreeSet<NodeId> =
        nodes.iter().map(|n| n.handle.node_id()).collect();
    assert_eq!(
        view.up
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        ids
    );
    for n in &nodes {
        assert_eq!(view.up.get(&n.handle.node_id()), Some(&n.addr));
    }
    let st = wait_for("three voters", Duration::from_secs(15), || async {
        let st = nodes[0].handle.status().await;
        (st.members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .count()
            == 3)
            .then_some(st)
    })
    .await;
    assert_eq!(st.members.len(), 3);
    assert!(st.members.iter().all(|m| m.state == MemberState::Up));

    // Internal routes: no secret → 401; garbage → 400; the cluster is unaffected.
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::new();
    let url = format!("http://{}/internal/raft/vote", nodes[0].addr);
    let r = client
        .post(&url)
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(&url)
        .header("authorization", "Bearer wrong")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    for body in [vec![], vec![1u8, 0xff, 0xff, 0xff], vec![9u8; 64]] {
        let r = client
            .post(&url)
            .header("authorization", format!("Bearer {SECRET}"))
            .body(body)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 400);
    }
    // A well-formed RPC for another node id is refused with 409.
    let wrong_target = codec::encode(&network::RaftRpc {
        target: nodes[0].handle.node_id().wrapping_add(1),
        cluster: None,
        req: openraft::raft::VoteRequest::<NodeId>::new(openraft::Vote::new(999, 1), None),
    })
    .expect("encode");
    let r = client
        .post(&url)
        .header("authorization", format!("Bearer {SECRET}"))
        .body(wrong_target)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 409);
    // ... and so is one from a peer of another cluster.
    let cluster = nodes[0].handle.cluster_id().expect("cluster id known");
    assert!(nodes.iter().all(|n| n.handle.cluster_id() == Some(cluster)));
    let other_cluster = codec::encode(&network::RaftRpc {
        target: nodes[0].handle.node_id(),
        cluster: Some(cluster.wrapping_add(1)),
        req: openraft::raft::VoteRequest::<NodeId>::new(openraft::Vote::new(999, 1), None),
    })
    .expect("encode");
    let r = client
        .post(&url)
        .header("authorization", format!("Bearer {SECRET}"))
        .body(other_cluster)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 409);
    // Still one healthy cluster (the leader may have changed under CPU pressure).
    let (leader, _) = converged(&all, 3).await;

    // Kill the leader: the other two elect a new one and commit it down.
    let dead = nodes
        .iter()
        .position(|n| n.handle.node_id() == leader)
        .expect("leader is one of the nodes");
    let killed_at = Instant::now();
    stop_node(&nodes[dead]).await;
    let rest: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, n)| n)
        .collect();
    let (new_leader, view) = converged(&rest, 2).await;
    assert_ne!(new_leader, leader);
    assert!(!view.up.contains_key(&leader));
    let st = rest[0].handle.status().await;
    assert!(st.leader_changes >= 2, "{st:?}");
    assert!(st.commit_index >= Some(view.index));
    let dead_member = st
        .members
        .iter()
        .find(|m| m.id == leader)
        .expect("dead node is still a member");
    assert_eq!(dead_member.state, MemberState::Down);
    tracing::info!(
        elapsed_ms = killed_at.elapsed().as_millis() as u64,
        "down committed"
    );

    for n in rest {
        stop_node(n).await;
    }
}

/// Starts a node on `addr` (reusing `dir`, i.e. a restart) and returns it.
async fn restart_node(addr: &str, dir: tempfile::TempDir, seeds: &[String]) -> TestNode {
    let listener = wait_for("rebind", Duration::from_secs(10), || async {
        TcpListener::bind(addr).ok()
    })
    .await;
    let handle = ClusterHandle::start(options(dir.path(), addr, seeds))
        .await
        .expect("cluster restart");
    let h = handle.clone();
    let server = HttpServer::new(move || {
        let h = h.clone();
        App::new().configure(move |cfg| mount(cfg, &h))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    let server_handle = server.handle();
    actix_web::rt::spawn(server);
    TestNode {
        handle,
        server: server_handle,
        addr: addr.to_owned(),
        _dir: dir,
    }
}

#[actix_web::test]
async fn late_join_leave_and_restart() {
    let (ls, seeds) = listeners(3);
    let mut nodes = Vec::new();
    for l in ls {
        nodes.push(start_node(l, &seeds).await);
    }
    let (leader, _) = converged(&nodes.iter().collect::<Vec<_>>(), 3).await;
    wait_for("three voters", Duration::from_secs(15), || async {
        let st = nodes[0].handle.status().await;
        (st.members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .count()
            == 3)
            .then_some(())
    })
    .await;

    // A fourth node seeded with a single follower joins through it (forwarded to the
    // leader) and stays a learner: four voters would tolerate no more failures than three.
    let follower = nodes
        .iter()
        .find(|n| n.handle.node_id() != leader)
        .expect("a follower");
    let (mut l4, _) = listeners(1);
    let late = start_node(l4.remove(0), std::slice::from_ref(&follower.addr)).await;
    let four: Vec<&TestNode> = nodes.iter().chain([&late]).collect();
    let (_, view) = converged(&four, 4).await;
    assert_eq!(view.up.get(&late.handle.node_id()), Some(&late.addr));
    let st = wait_for(
        "three voters and a learner",
        Duration::from_secs(10),
        || async {
            let st = late.handle.status().await;
            let voters = st
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Voter)
                .count();
            (st.members.len() == 4 && voters == 3).then_some(st)
        },
    )
    .await;
    let me = st
        .members
        .iter()
        .find(|m| m.id == late.handle.node_id())
        .expect("late node listed");
    assert_eq!(me.role, MemberRole::Learner);

    // Graceful leave of the late node: gone from every view.
    late.handle.leave().await.expect("leave");
    let (_, view) = converged(&nodes.iter().collect::<Vec<_>>(), 3).await;
    assert!(!view.up.contains_key(&late.handle.node_id()));
    stop_node(&late).await;

    // The leader leaves: the others elect a new leader, which promotes a fresh learner so
    // that there are three voters again.
    let (mut l5, _) = listeners(1);
    let spare = start_node(l5.remove(0), &seeds).await;
    let four: Vec<&TestNode> = nodes.iter().chain([&spare]).collect();
    converged(&four, 4).await;
    let leader_idx = nodes
        .iter()
        .position(|n| n.handle.node_id() == leader)
        .expect("leader present");
    let old_leader = nodes.remove(leader_idx);
    old_leader.handle.leave().await.expect("leader leaves");
    stop_node(&old_leader).await;
    nodes.push(spare);
    let (new_leader, view) = converged(&nodes.iter().collect::<Vec<_>>(), 3).await;
    assert_ne!(new_leader, leader);
    assert!(!view.up.contains_key(&leader));
    wait_for("spare promoted", Duration::from_secs(10), || async {
        let st = nodes[0].handle.status().await;
        let voters = st
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .count();
        (st.members.len() == 3 && voters == 3).then_some(())
    })
    .await;

    // Restart a follower from its data dir: same id, no manual step, down then up again.
    let idx = nodes
        .iter()
        .position(|n| n.handle.node_id() != new_leader)
        .expect("a follower");
    let victim = nodes.remove(idx);
    let victim_id = victim.handle.node_id();
    stop_node(&victim).await;
    let (_, view) = converged(&nodes.iter().collect::<Vec<_>>(), 2).await;
    assert!(!view.up.contains_key(&victim_id));
    let TestNode {
        handle,
        addr,
        _dir: dir,
        ..
    } = victim;
    drop(handle);
    // Let the old actix workers release their clones of the handle (and the sled lock).
    wait_for("reopen data dir", Duration::from_secs(10), || async {
        crate::storage::sled_open::open_path(dir.path().join("cluster"))
            .err()
            .is_none()
            .then_some(())
    })
    .await;
    let restarted = restart_node(&addr, dir, &seeds).await;
    assert_eq!(restarted.handle.node_id(), victim_id);
    nodes.push(restarted);
    let (_, view) = converged(&nodes.iter().collect::<Vec<_>>(), 3).await;
    assert!(view.up.contains_key(&victim_id));
    for n in &nodes {
        stop_node(n).await;
    }
}

#[actix_web::test]
async fn five_nodes_have_five_voters_and_agree() {
    let (ls, seeds) = listeners(5);
    let mut nodes = Vec::new();
    for l in ls {
        nodes.push(start_node(l, &seeds).await);
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    converged(&all, 5).await;
    wait_for("five voters", Duration::from_secs(15), || async {
        let st = nodes[4].handle.status().await;
        (st.members
            .iter()
            .filter(|m| m.role == MemberRole::Voter)
            .count()
            == 5)
            .then_some(())
    })
    .await;
    let (_, view) = converged(&all, 5).await;
    let cluster = nodes[0].handle.cluster_id();
    assert!(cluster.is_some());
    for n in &nodes {
        assert_eq!(n.handle.cluster_id(), cluster);
        assert_eq!(*n.handle.membership_view().borrow(), view);
    }
    for n in &nodes {
        stop_node(n).await;
    }
}

#[actix_web::test]
async fn lone_node_without_seeds_forms_its_own_cluster() {
    let (mut ls, _) = listeners(1);
    let node = start_node(ls.remove(0), &[]).await;
    let view = node
        .handle
        .wait_member(Duration::from_secs(10))
        .await
        .expect("member");
    assert_eq!(view.up.len(), 1);
    assert_eq!(view.up.get(&node.handle.node_id()), Some(&node.addr));
    let (leader, _) = converged(&[&node], 1).await;
    assert_eq!(leader, node.handle.node_id());
    assert_eq!(node.handle.cluster_id(), Some(node.handle.node_id()));
    // The only voter may not remove itself.
    assert!(node.handle.leave().await.is_err());
    stop_node(&node).await;
}

#[tokio::test]
async fn wipe_state_gives_a_new_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = crate::storage::sled_open::open_path(dir.path()).expect("db");
    let data = ClusterData::Db(db.clone());
    let mut o = ClusterOptions::new(data.clone(), "127.0.0.1:1");
    o.bootstrap_grace = Duration::from_millis(10);
    let first = ClusterHandle::start(o.clone()).await.expect("start");
    let id = first.node_id();
    first.shutdown().await;
    drop(first);
    let again = ClusterHandle::start(o.clone()).await.expect("restart");
    assert_eq!(again.node_id(), id, "node id is persisted");
    again.shutdown().await;
    drop(again);
    ClusterHandle::wipe_state(&data).expect("wipe");
    let fresh = ClusterHandle::start(o).await.expect("fresh start");
    assert_ne!(fresh.node_id(), id);
    fresh.shutdown().await;
}
