//! The secure default (`peer::access`): a node on a reachable address never forms or
//! joins a cluster without authentication unless `--cluster.insecure` says so, and a
//! lone unauthenticated node on a reachable address keeps its internal and cluster
//! admin routes closed. Loopback-only nodes (the tests', `shoal demo`) stay open.

use std::process::{Command, Stdio};

use std::time::Duration;

use crate::harness::*;

const CONFIG: &str = "global:\n  scrape_interval: 15s\nscrape_configs: []\n";

#[test]
fn a_reachable_cluster_without_a_secret_refuses_to_start_and_says_how_to_fix_it() {
    let dir = tempdir();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, CONFIG).unwrap();
    let port = free_port();
    let out = Command::new(shoal_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--cluster.seeds", &format!("127.0.0.1:{port},127.0.0.1:1")])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run shoal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    for hint in [
        "without authentication",
        "--cluster.secret-file",
        "shoal cluster new-secret",
        "--cluster.tls.cert-file",
        "--cluster.insecure",
    ] {
        assert!(stderr.contains(hint), "{hint:?} missing from: {stderr}");
    }

    // With --cluster.insecure it starts (and says what that means).
    let mut n = Node::spawn_on(
        dir.path(),
        &config,
        &dir.path().join("data2"),
        "0.0.0.0",
        port,
        &[
            "--cluster.seeds",
            &format!("127.0.0.1:{port}"),
            "--cluster.insecure",
            // Plain on purpose: the unauthenticated cluster is what is tested.
            NO_CLUSTER_TLS,
        ],
    );
    n.host = "127.0.0.1".into();
    n.wait_ready();
    let log = std::fs::read_to_string(&n.log).unwrap();
    assert!(
        log.contains("open to anyone who can reach this port"),
        "{log}"
    );
}

#[test]
fn a_lone_reachable_node_without_a_secret_keeps_its_cluster_routes_closed() {
    let dir = tempdir();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut n = Node::spawn_on(
        dir.path(),
        &config,
        &dir.path().join("data"),
        "0.0.0.0",
        free_port(),
        &[],
    );
    n.host = "127.0.0.1".into();
    n.wait_ready();
    // The public API works as on any Prometheus.
    let (code, body) = http_get(&n.url("/api/v1/cluster")).unwrap();
    assert_eq!(code, 200, "{body}");
    // Nobody can join it, vote in it, read through it or make it leave.
    let (code, body) = http_get(&n.url("/internal/cluster/info")).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("runs alone"), "{body}");
    let join = shoal::cluster::codec::encode(&shoal::peer::protocol::JoinRequest {
        node_id: 7,
        addr: "10.9.9.9:9090".into(),
        forwarded: false,
    })
    .unwrap();
    let (code, _) = http(
        "POST",
        &n.url("/internal/cluster/join"),
        Some("application/octet-stream"),
        &join,
    )
    .unwrap();
    assert_eq!(code, 403);
    let (code, body) = http("POST", &n.url("/api/v1/cluster/leave"), None, b"").unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("runs alone"), "{body}");
    // Still one member, still running.
    let v = n.get_json("/api/v1/cluster");
    assert_eq!(v["data"]["members"].as_array().unwrap().len(), 1, "{v}");
    assert!(n.child.try_wait().unwrap().is_none(), "the node exited");
}

/// The rotation of docs/security.md: add the new secret as a second line everywhere,
/// swap the lines, drop the old one — a SIGHUP after each step — and the cluster never
/// refuses one of its own: no member goes down, no internal call is unauthorized.
#[test]
fn the_cluster_secret_rotates_without_a_refused_call() {
    use crate::cluster::{TestCluster, wait_agreed};
    use crate::hardening::metric_value;
    let dir = tempdir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "old-secret\n").unwrap();
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        CONFIG,
        &["--cluster.secret-file", secret.to_str().unwrap()],
    );
    wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let refused = |c: &TestCluster| -> f64 {
        c.nodes
            .iter()
            .map(|n| {
                metric_value(
                    n,
                    "shoal_peer_requests_refused_total",
                    &["reason=\"unauthorized\""],
                )
            })
            .sum()
    };
    assert_eq!(refused(&c), 0.0);
    for (step, text) in [
        (1, "old-secret\nnew-secret\n"),
        (2, "new-secret\nold-secret\n"),
        (3, "new-secret\n"),
    ] {
        std::fs::write(&secret, text).unwrap();
        for n in &c.nodes {
            n.signal("HUP");
        }
        for n in &c.nodes {
            wait_for(
                &format!("step {step} reloaded on {}", n.addr()),
                Duration::from_secs(30),
                || {
                    let log = std::fs::read_to_string(&n.log).unwrap();
                    let reloads = log.matches("cluster secrets reloaded").count();
                    if reloads >= step {
                        Ok(())
                    } else {
                        Err(format!("{reloads} reloads"))
                    }
                },
            );
        }
        // Raft heartbeats, joins and reads keep flowing between the nodes.
        wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
        assert_eq!(refused(&c), 0.0, "step {step}: a node refused another");
    }
    // The old secret is gone, the new one works.
    let info = |token: &str| {
        internal_request(
            &c.nodes[0],
            "GET",
            "/internal/cluster/info",
            Some(token),
            b"",
        )
        .0
    };
    assert_eq!(info("old-secret"), 401);
    assert_eq!(info("new-secret"), 200);
}
