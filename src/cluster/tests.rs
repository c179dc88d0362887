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
    o.secret = Some(SECRET.to_owned());
    o.heartbeat_interval = Duration::from_millis(100);
    o.election_timeout_min = Duration::from_millis(400);
    o.election_timeout_max = Duration::from_millis(800);
    o.down_after = Duration::from_secs(2);
    o.bootstrap_grace = Duration::from_secs(2);
    o
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
        App::new().configure(move |cfg| configure(cfg, h.clone()))
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
    wait_for("convergence", Duration::from_secs(30), || async {
        let mut leader = None;
        let mut view: Option<MembershipView> = None;
        let mut leaders = 0;
        for n in nodes {
            let st = n.handle.status().await;
            if st.raft_state == "leader" {
                leaders += 1;
            }
            let l = st.leader_id?;
            if *leader.get_or_insert(l) != l {
                return None;
            }
            let v = n.handle.membership_view().borrow().clone();
            if v.up.len() != expect_up {
                return None;
            }
            if view.get_or_insert_with(|| v.clone()) != &v {
                return None;
            }
        }
        (leaders == 1).then_some(())?;
        Some((leader?, view?))
    })
    .await
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
    let (leader, view) = converged(&all, 3).await;

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
    let (leader_again, _) = converged(&all, 3).await;
    assert_eq!(leader_again, leader);

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
