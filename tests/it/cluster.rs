//! Cluster membership end to end: real `shoal run` processes forming one Raft group
//! over real sockets, observed only through each node's own `GET /api/v1/cluster`.
//!
//! Timings: the default heartbeat (200 ms) and election timeout (0.6–1.2 s), spelled
//! out as flags, and down-after 3 s. An openraft 0.9 follower campaigns once the leader
//! has been silent for the maximum election timeout (its leader lease) plus a random
//! timeout, so the worst case is 2× the maximum election timeout: "a new leader within
//! 2× the election timeout" is asserted as 2.4 s plus 0.5 s for the vote round and the
//! 100 ms polling; "marked down within down-after + 2 s" is 5 s. Both from the kill.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(3);
const ELECTION_MAX: Duration = Duration::from_millis(1200);
/// Vote round and polling on top of 2× the maximum election timeout.
const ELECTION_SLACK: Duration = Duration::from_millis(500);
const CONVERGE: Duration = Duration::from_secs(30);
pub(crate) const SECRET: &str = "it-cluster-secret";

/// A set of `shoal run` processes sharing one seed list. In the cluster TLS test mode
/// (`SHOAL_TEST_CLUSTER_TLS=1`, `crate::pki`) its nodes also speak mutual TLS, each
/// with a certificate of its own (`Node::spawn_on` adds the flags), and serve HTTPS.
pub(crate) struct TestCluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: PathBuf,
    flags: Vec<String>,
    pub(crate) nodes: Vec<Node>,
}

/// In a [`TestCluster`]'s `extra` flags: run without a cluster secret (loopback only).
pub(crate) const NO_SECRET: &str = "--test.no-secret";

fn base_flags(seeds: &str) -> Vec<String> {
    [
        "--cluster.seeds",
        seeds,
        "--cluster.down-after",
        "3s",
        "--cluster.heartbeat-interval",
        "200ms",
        "--cluster.election-timeout",
        "600ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl TestCluster {
    /// Starts one node per host at the same moment (all spawned before any is
    /// waited on), every one with every node as seed.
    fn start(hosts: &[&str], extra: &[&str]) -> TestCluster {
        TestCluster::start_with_config(
            hosts,
            "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
            extra,
        )
    }

    /// [`TestCluster::start`] with this `prometheus.yml` on every node.
    pub(crate) fn start_with_config(
        hosts: &[&str],
        config_yaml: &str,
        extra: &[&str],
    ) -> TestCluster {
        let dir = tempdir();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml).unwrap();
        let addrs: Vec<(String, u16)> =
            hosts.iter().map(|h| (h.to_string(), free_port())).collect();
        let seeds = addrs
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        // A timing flag in `extra` replaces the base one.
        let mut flags: Vec<String> = base_flags(&seeds)
            .chunks(2)
            .filter(|kv| !extra.contains(&kv[0].as_str()))
            .flatten()
            .cloned()
            .collect();
        flags.extend(extra.iter().map(|s| s.to_string()));
        // The default of a real cluster: a shared secret (`write_secret`'s [`SECRET`]),
        // unless the test gives its own or runs without one on purpose.
        if !extra.contains(&"--cluster.secret-file") && !extra.contains(&NO_SECRET) {
            let secret = write_secret(dir.path());
            flags.extend([
                "--cluster.secret-file".to_owned(),
                secret.display().to_string(),
            ]);
        }
        flags.retain(|f| f != NO_SECRET);
        let mut c = TestCluster {
            dir,
            config,
            flags,
            nodes: Vec::new(),
        };
        for (i, (h, p)) in addrs.iter().enumerate() {
            let node = c.spawn(&format!("node{i}"), h, *p);
            c.nodes.push(node);
        }
        for n in &mut c.nodes {
            n.wait_ready();
        }
        if let Some(n) = c.nodes.iter().find(|n| n.tls) {
            // The mode took: the listener serves no plain HTTP.
            let plain = http_get(&format!("http://{}/-/ready", n.addr()));
            assert!(
                !matches!(plain, Ok((200, _))),
                "plain HTTP served: {plain:?}"
            );
        }
        c
    }

    fn spawn(&self, name: &str, host: &str, port: u16) -> Node {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        Node::spawn_on(
            self.dir.path(),
            &self.config,
            &self.dir.path().join(name),
            host,
            port,
            &flags,
        )
    }

    /// Starts an extra node (seeded with the original seed list) and waits until ready.
    pub(crate) fn add(&mut self, name: &str, host: &str) -> usize {
        let mut n = self.spawn(name, host, free_port());
        n.wait_ready();
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Restarts node `i` on its old address and data dir (after a kill or exit).
    pub(crate) fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        self.restart_on(i, port);
    }

    /// Starts node `i` again on its address and data dir without waiting until it is
    /// ready (a node that resumes a leave may exit soon).
    pub(crate) fn respawn(&mut self, i: usize) {
        let (host, port, data) = {
            let n = &self.nodes[i];
            (n.host.clone(), n.port, n.data_dir.clone())
        };
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        self.nodes[i] = Node::spawn_on(self.dir.path(), &self.config, &data, &host, port, &flags);
    }

    /// Restarts node `i` with its data dir on `port`.
    fn restart_on(&mut self, i: usize, port: u16) {
        let (host, data) = {
            let n = &self.nodes[i];
            (n.host.clone(), n.data_dir.clone())
        };
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let mut n = Node::spawn_on(self.dir.path(), &self.config, &data, &host, port, &flags);
        n.wait_ready();
        self.nodes[i] = n;
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} ---\n", n.addr()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// The `data` of a node's `GET /api/v1/cluster`, or why not.
pub(crate) fn view(node: &Node) -> Result<Value, String> {
    let (code, body) = http_get(&node.url("/api/v1/cluster"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
    if code != 200 || v["status"] != "success" {
        return Err(format!("{} answered {code}: {body}", node.addr()));
    }
    Ok(v["data"].clone())
}

pub(crate) fn str_of(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

/// Members as (id → (address, role, state)).
pub(crate) fn members(v: &Value) -> BTreeMap<String, (String, String, String)> {
    v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                str_of(&m["id"]),
                (
                    str_of(&m["address"]),
                    str_of(&m["role"]),
                    str_of(&m["state"]),
                ),
            )
        })
        .collect()
}

/// Whether every node in `nodes` reports the same leader (known), the same view index
/// and the same members (ids, roles, states), with `n_members` members of which `n_up`
/// are up and `n_voters` are voters. Returns the agreed view.
fn agreed(
    nodes: &[&Node],
    n_members: usize,
    n_up: usize,
    n_voters: usize,
) -> Result<Value, String> {
    let views: Vec<Value> = nodes.iter().map(|n| view(n)).collect::<Result<_, _>>()?;
    let first = &views[0];
    if first["leaderId"].is_null() {
        return Err(format!("no leader known: {first}"));
    }
    for (n, v) in nodes.iter().zip(&views) {
        if v["leaderId"] != first["leaderId"]
            || v["viewIndex"] != first["viewIndex"]
            || members(v) != members(first)
        {
            return Err(format!(
                "disagreement: {} says {v}; {} says {first}",
                n.addr(),
                nodes[0].addr()
            ));
        }
        if !members(v).contains_key(&str_of(&v["nodeId"])) {
            return Err(format!("{} is not a member: {v}", n.addr()));
        }
    }
    let m = members(first);
    let up = m.values().filter(|(_, _, s)| s == "up").count();
    let voters = m.values().filter(|(_, r, _)| r == "voter").count();
    if m.len() != n_members || up != n_up || voters != n_voters {
        return Err(format!(
            "want {n_members} members ({n_up} up, {n_voters} voters), have {} ({up} up, {voters} voters): {first}",
            m.len()
        ));
    }
    Ok(first.clone())
}

pub(crate) fn wait_agreed(
    c: &TestCluster,
    idx: &[usize],
    n_members: usize,
    n_up: usize,
    n_voters: usize,
) -> Value {
    wait_agreed_with(c, idx, (n_members, n_up, n_voters), |_| Ok(()))
}

/// [`wait_agreed`] plus a condition on the agreed view.
fn wait_agreed_with(
    c: &TestCluster,
    idx: &[usize],
    (n_members, n_up, n_voters): (usize, usize, usize),
    cond: impl Fn(&Value) -> Result<(), String>,
) -> Value {
    let nodes: Vec<&Node> = idx.iter().map(|&i| &c.nodes[i]).collect();
    let deadline = Instant::now() + CONVERGE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match agreed(&nodes, n_members, n_up, n_voters).and_then(|v| cond(&v).map(|()| v)) {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nodes {idx:?} did not agree on {n_members} members ({n_up} up, {n_voters} voters) within {CONVERGE:?}; last: {last}\n{}",
        c.logs()
    );
}

pub(crate) fn leader_index(c: &TestCluster, v: &Value) -> usize {
    let addr = str_of(&v["leaderAddress"]);
    c.nodes
        .iter()
        .position(|n| n.addr() == addr)
        .unwrap_or_else(|| panic!("leader address {addr} is none of the nodes: {v}"))
}

fn node_id(n: &Node) -> String {
    str_of(&view(n).expect("cluster view")["nodeId"])
}

pub(crate) fn write_secret(dir: &Path) -> PathBuf {
    let p = dir.join("cluster.secret");
    std::fs::write(&p, format!("{SECRET}\n")).unwrap();
    p
}

fn shoal(args: &[&str]) -> std::process::Output {
    Command::new(shoal_bin())
        .args(args)
        .output()
        .expect("run shoal")
}

/// `shoal cluster ARGS` against `node` (its [`Node::cli_target`] flags appended).
fn shoal_cluster(node: &Node, args: &[&str]) -> std::process::Output {
    let target = node.cli_target();
    let mut all = vec!["cluster"];
    all.extend_from_slice(args);
    all.extend(target.iter().map(String::as_str));
    shoal(&all)
}

/// kill -9 the leader of agreed view `v`; asserts a new leader within 2× the
/// election timeout and the dead node marked down within down-after + 2 s on every
/// other node. Returns the killed node's index and id.
fn kill_leader_and_fail_over(c: &mut TestCluster, v: &Value) -> (usize, String) {
    let li = leader_index(c, v);
    let old_id = str_of(&v["leaderId"]);
    let others: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != li).collect();
    c.nodes[li].kill9();
    let killed = Instant::now();
    let new_leader = try_wait_for("a new leader", Duration::from_secs(20), || {
        let vs: Vec<Value> = others
            .iter()
            .map(|&i| view(&c.nodes[i]))
            .collect::<Result<_, _>>()?;
        let l = &vs[0]["leaderId"];
        if l.is_null() || str_of(l) == old_id || vs.iter().any(|v| v["leaderId"] != *l) {
            return Err(format!("{vs:?}"));
        }
        Ok(str_of(l))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let to_leader = killed.elapsed();
    assert!(
        to_leader <= ELECTION_MAX * 2 + ELECTION_SLACK,
        "new leader {new_leader} after {to_leader:?}, want <= {:?}",
        ELECTION_MAX * 2 + ELECTION_SLACK
    );
    wait_for(
        "the dead leader marked down",
        Duration::from_secs(20),
        || {
            for &i in &others {
                let v = view(&c.nodes[i])?;
                match members(&v).get(&old_id) {
                    Some((_, _, s)) if s == "down" => {}
                    other => return Err(format!("{other:?}")),
                }
            }
            Ok(())
        },
    );
    let to_down = killed.elapsed();
    assert!(
        to_down <= DOWN_AFTER + Duration::from_secs(2),
        "marked down after {to_down:?}"
    );
    (li, old_id)
}

#[test]
fn three_nodes_form_one_cluster_fail_over_and_rejoin() {
    let mut c = TestCluster::start(&["127.0.0.1"; 3], &[]);
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    // One cluster: every node has the same founder.
    let ids: BTreeSet<String> = c
        .nodes
        .iter()
        .map(|n| str_of(&view(n).unwrap()["clusterId"]))
        .collect();
    assert_eq!(ids.len(), 1, "several clusters: {ids:?}");
    let roles: BTreeSet<String> = members(&v).values().map(|m| m.1.clone()).collect();
    assert_eq!(roles, BTreeSet::from(["voter".to_owned()]), "{v}");

    let (li, old_id) = kill_leader_and_fail_over(&mut c, &v);
    let others: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let v = wait_agreed(&c, &others, 3, 2, 3);
    assert_eq!(members(&v)[&old_id].2, "down");

    // Restart it on the same address and data dir: same id, marked up again.
    c.restart(li);
    assert_eq!(node_id(&c.nodes[li]), old_id, "restart changed the node id");
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    assert_eq!(members(&v)[&old_id].2, "up");
    // Raft metrics are exported (from a status snapshot refreshed every second).
    let node = &c.nodes[0];
    wait_for("raft metrics", Duration::from_secs(10), || {
        let (_, metrics) = http_get(&node.url("/metrics"))?;
        for m in [
            "shoal_cluster_raft_term ",
            "shoal_cluster_raft_leader_changes_total ",
            "shoal_cluster_raft_commit_index ",
            "shoal_cluster_raft_apply_lag ",
            "shoal_cluster_raft_is_leader ",
            "shoal_cluster_raft_has_leader 1",
            "shoal_cluster_members{state=\"up\",role=\"voter\"} 3",
            "shoal_cluster_members{state=\"down\",role=\"voter\"} 0",
        ] {
            if !metrics.contains(m) {
                return Err(format!("missing {m:?} in /metrics"));
            }
        }
        Ok(())
    });
}

#[test]
fn five_nodes_have_five_voters_and_fail_over() {
    let mut c = TestCluster::start(&["127.0.0.1"; 5], &[]);
    let all: Vec<usize> = (0..5).collect();
    let v = wait_agreed(&c, &all, 5, 5, 5);
    let (li, old_id) = kill_leader_and_fail_over(&mut c, &v);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != li).collect();
    let v = wait_agreed(&c, &rest, 5, 4, 5);
    assert_eq!(members(&v)[&old_id].2, "down");
}

#[test]
fn late_join_and_graceful_leaves_are_seen_everywhere() {
    let dir = tempdir();
    let secret = write_secret(dir.path());
    let secret = secret.to_str().unwrap();
    let mut c = TestCluster::start(
        &["127.0.0.1"; 3],
        &["--cluster.max-voters", "3", "--cluster.secret-file", secret],
    );
    wait_agreed(&c, &[0, 1, 2], 3, 3, 3);

    // A 4th node joins later, as a learner (max voters 3), seen by everyone.
    let late = c.add("late", "127.0.0.1");
    let late_id = node_id(&c.nodes[late]);
    let v = wait_agreed(&c, &[0, 1, 2, 3], 4, 4, 3);
    assert_eq!(members(&v)[&late_id].1, "learner", "{v}");

    // `shoal cluster leave` without the secret is refused and changes nothing.
    let out = shoal_cluster(&c.nodes[late], &["leave"]);
    assert!(!out.status.success(), "leave without secret succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("secret"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_agreed(&c, &[0, 1, 2, 3], 4, 4, 3);

    // With the secret: it leaves, exits, and every node drops it.
    let out = shoal_cluster(&c.nodes[late], &["leave", "--cluster.secret-file", secret]);
    assert!(
        out.status.success(),
        "cluster leave failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let late_node = &mut c.nodes[late];
    let status = wait_for("the leaver to exit", Duration::from_secs(30), || {
        late_node
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_owned())
    });
    assert!(status.success(), "leaver exited with {status}");
    assert!(
        !c.nodes[late].data_dir.join("cluster").exists(),
        "cluster state kept after leaving"
    );
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    assert!(!members(&v).contains_key(&late_id));

    // SIGTERM the leader: it leaves, the other two agree on a new leader and on two
    // members.
    let li = leader_index(&c, &v);
    let old_id = str_of(&v["leaderId"]);
    let status = c.nodes[li].terminate();
    assert!(status.success(), "SIGTERM exit status {status}");
    assert!(!c.nodes[li].data_dir.join("cluster").exists());
    let rest: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let v = wait_agreed_with(&c, &rest, (2, 2, 2), |v| {
        if str_of(&v["leaderId"]) == old_id {
            return Err("still following the node that left".into());
        }
        Ok(())
    });
    assert!(!members(&v).contains_key(&old_id));

    // `docker compose restart` semantics: the same data dir comes back as a new member.
    c.restart(li);
    let new_id = node_id(&c.nodes[li]);
    assert_ne!(
        new_id, old_id,
        "a node that left must rejoin under a new id"
    );
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    assert!(members(&v).contains_key(&new_id));

    // `shoal cluster status` prints the table (header and one row per member).
    // (`shoal cluster remove` is exercised by `remove_takes_a_dead_node_out`.)
    let out = shoal_cluster(&c.nodes[0], &["status"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(
        table.contains(&new_id) && table.contains("voter"),
        "{table}"
    );
}

#[test]
fn sigint_keeps_the_identity_and_a_moved_node_updates_its_address() {
    let mut c = TestCluster::start(&["127.0.0.1"; 3], &[]);
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let li = leader_index(&c, &v);
    let i = (li + 1) % 3;
    let id = node_id(&c.nodes[i]);
    // SIGINT: a plain stop, no leave; the others mark it down.
    c.nodes[i].signal("INT");
    let node = &mut c.nodes[i];
    let status = wait_for("exit after SIGINT", Duration::from_secs(30), || {
        node.child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_owned())
    });
    assert!(status.success(), "{status}");
    assert!(c.nodes[i].data_dir.join("cluster").exists());
    let rest: Vec<usize> = (0..3).filter(|&j| j != i).collect();
    wait_agreed(&c, &rest, 3, 2, 3);
    // Back on another port: same id, the membership carries the new address.
    let port = free_port();
    c.restart_on(i, port);
    assert_eq!(node_id(&c.nodes[i]), id);
    let want = c.nodes[i].addr();
    let v = wait_agreed_with(&c, &[0, 1, 2], (3, 3, 3), |v| {
        let m = members(v);
        match m.get(&id) {
            Some((addr, _, _)) if *addr == want => Ok(()),
            other => Err(format!("member {id} is {other:?}, want address {want}")),
        }
    });
    assert_eq!(members(&v).len(), 3);
}

#[test]
fn bad_cluster_flags_are_rejected_at_start() {
    let dir = tempdir();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n").unwrap();
    let data = dir.path().join("data");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let out = shoal(&args);
        assert!(!out.status.success(), "{extra:?} accepted");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--cluster.max-voters", "4"]);
    assert!(err.contains("must be odd"), "{err}");
    let err = run(&["--cluster.advertise", "nohost"]);
    assert!(err.contains("--cluster.advertise"), "{err}");
    let missing = dir.path().join("no-such-secret");
    let err = run(&["--cluster.secret-file", missing.to_str().unwrap()]);
    assert!(err.contains("secret file"), "{err}");
}

#[test]
fn remove_takes_a_dead_node_out() {
    let mut c = TestCluster::start(&["127.0.0.1"; 3], &[]);
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    // Kill a follower for good, then remove it through another follower.
    let li = leader_index(&c, &v);
    let victim = (0..3).find(|&i| i != li).unwrap();
    let via = (0..3).find(|&i| i != li && i != victim).unwrap();
    let victim_id = node_id(&c.nodes[victim]);
    c.nodes[victim].kill9();
    let rest: Vec<usize> = vec![li, via];
    wait_agreed(&c, &rest, 3, 2, 3);
    let secret = c.dir.path().join("cluster.secret");
    // Replication factor 1: the command says what is lost and acts only with --yes.
    let out = shoal_cluster(
        &c.nodes[via],
        &[
            "remove",
            &victim_id,
            "--cluster.secret-file",
            secret.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "remove without --yes: {stderr}");
    assert!(
        stderr.contains("loses every sample only it holds") && stderr.contains("--yes"),
        "{stderr}"
    );
    wait_agreed(&c, &rest, 3, 2, 3);
    let out = shoal_cluster(
        &c.nodes[via],
        &[
            "remove",
            &victim_id,
            "--yes",
            "--cluster.secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "cluster remove failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = wait_agreed(&c, &rest, 2, 2, 2);
    assert!(!members(&v).contains_key(&victim_id));
    // A bad id is a clear error.
    let out = shoal_cluster(&c.nodes[via], &["remove", "x1"]);
    assert!(!out.status.success());
}

#[test]
fn bad_requests_to_internal_routes_are_rejected_and_change_nothing() {
    let dir = tempdir();
    let secret = write_secret(dir.path());
    let mut c = TestCluster::start(
        &["127.0.0.1"; 3],
        &["--cluster.secret-file", secret.to_str().unwrap()],
    );
    let before = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let target = &c.nodes[(leader_index(&c, &before) + 1) % 3];
    let post = |path: &str, auth: Option<&str>, body: &[u8]| -> u16 {
        let mut s = target.connect().unwrap();
        s.tcp()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            target.addr(),
            body.len()
        );
        if let Some(a) = auth {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        use std::io::{Read, Write};
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    let good = format!("Bearer {SECRET}");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    for path in [
        "/internal/raft/append",
        "/internal/raft/vote",
        "/internal/raft/snapshot",
        "/internal/cluster/join",
        "/internal/cluster/remove",
    ] {
        assert_eq!(post(path, None, &garbage), 401, "{path} without secret");
        assert_eq!(
            post(path, Some("Bearer wrong"), &garbage),
            401,
            "{path} wrong secret"
        );
        assert_eq!(
            post(path, Some(&good), &garbage),
            400,
            "{path} garbage body"
        );
        assert_eq!(post(path, Some(&good), b""), 400, "{path} empty body");
        let mut versioned = vec![1u8];
        versioned.extend(std::iter::repeat_n(0xffu8, 64));
        assert_eq!(
            post(path, Some(&good), &versioned),
            400,
            "{path} malformed bincode"
        );
    }
    let victim = str_of(&before["leaderId"]);
    assert_eq!(
        post(&format!("/api/v1/cluster/remove/{victim}"), None, b""),
        401
    );
    assert_eq!(
        post("/api/v1/cluster/leave", Some("Bearer wrong"), b""),
        401
    );
    let (code, _) = http_get(&target.url("/internal/cluster/info")).unwrap();
    assert_eq!(code, 401, "info without secret");
    // Nothing changed: same leader, same members, same term.
    let after = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    assert_eq!(after["leaderId"], before["leaderId"]);
    assert_eq!(after["term"], before["term"]);
    assert_eq!(members(&after), members(&before));
    let log = std::fs::read_to_string(&target.log).unwrap();
    for n in &mut c.nodes {
        assert!(n.child.try_wait().unwrap().is_none(), "{} died", n.addr());
    }
    assert!(
        log.contains("rejected malformed cluster request"),
        "no log line for malformed bodies"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("refused an internal request") && l.contains("unauthorized")),
        "no log line for a wrong secret"
    );
}

/// iptables rules that cut `cut` off from `others` (both directions), removed on drop
/// even when the test fails.
struct Partition {
    rules: Vec<[String; 4]>,
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Partition {
    fn cut(cut: &str, others: &[&str]) -> Partition {
        let mut p = Partition { rules: Vec::new() };
        for o in others {
            for (s, d) in [(cut, *o), (*o, cut)] {
                let rule = ["-s".to_owned(), s.to_owned(), "-d".to_owned(), d.to_owned()];
                let mut args = vec!["-I", "INPUT"];
                args.extend(rule.iter().map(String::as_str));
                args.extend(["-j", "DROP"]);
                iptables(&args).unwrap_or_else(|e| panic!("cannot partition: {e}"));
                p.rules.push(rule);
            }
        }
        p
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let mut args = vec!["-D", "INPUT"];
            args.extend(rule.iter().map(String::as_str));
            args.extend(["-j", "DROP"]);
            if let Err(e) = iptables(&args) {
                eprintln!("WARNING: could not remove iptables rule: {e}");
            }
        }
    }
}

/// Records every (term → leader) claim the nodes make; fails on two leaders in a term.
#[derive(Default)]
struct LeaderLog {
    by_term: BTreeMap<u64, BTreeSet<String>>,
}

impl LeaderLog {
    fn observe(&mut self, nodes: &[&Node]) {
        for n in nodes {
            let Ok(v) = view(n) else { continue };
            let Some(term) = v["term"].as_u64() else {
                continue;
            };
            if let Some(l) = v["leaderId"].as_str() {
                self.by_term.entry(term).or_default().insert(l.to_owned());
            }
            if v["raftState"] == "leader" {
                self.by_term
                    .entry(term)
                    .or_default()
                    .insert(str_of(&v["nodeId"]));
            }
        }
        for (term, leaders) in &self.by_term {
            assert!(
                leaders.len() <= 1,
                "split brain: leaders {leaders:?} in term {term}"
            );
        }
    }
}

#[test]
fn partition_keeps_majority_leader_and_heals() {
    if let Err(e) = iptables(&["-L", "INPUT", "-n"]) {
        panic!(
            "the partition test needs a working `iptables` (root, Debian package iptables; tests/run.sh installs it): {e}"
        );
    }
    // A loopback /24 of its own (127.X.Y.2-4, any 127/8 address works on Linux), so
    // that concurrent runs of this test never cut each other's nodes off.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let net = format!("127.{}.{}", 10 + std::process::id() % 240, 1 + nanos % 250);
    let hosts: Vec<String> = (2..5).map(|i| format!("{net}.{i}")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let c = TestCluster::start(&hosts, &[]);
    let nodes: Vec<&Node> = c.nodes.iter().collect();
    let v = wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let mut log = LeaderLog::default();
    log.observe(&nodes);

    // Cut the leader off: the worst case for split brain.
    let li = leader_index(&c, &v);
    let cut_id = str_of(&v["leaderId"]);
    let rest: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let cut_host = c.nodes[li].host.clone();
    let other_hosts: Vec<&str> = rest.iter().map(|&i| c.nodes[i].host.as_str()).collect();
    {
        let _partition = Partition::cut(&cut_host, &other_hosts);
        let deadline = Instant::now() + CONVERGE;
        loop {
            log.observe(&nodes);
            let majority: Vec<&Node> = rest.iter().map(|&i| &c.nodes[i]).collect();
            if let Ok(v) = agreed(&majority, 3, 2, 3)
                && str_of(&v["leaderId"]) != cut_id
                && members(&v)[&cut_id].2 == "down"
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "majority did not elect a leader and mark the cut node down\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The majority stays stable for a while; no two leaders in any term.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            log.observe(&nodes);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Healed: the cut node rejoins with its id and is marked up; all agree.
    let deadline = Instant::now() + CONVERGE;
    loop {
        log.observe(&nodes);
        if let Ok(v) = agreed(&nodes, 3, 3, 3)
            && members(&v).contains_key(&cut_id)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cluster did not heal\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node_id(&c.nodes[li]), cut_id);
    assert!(
        log.by_term.len() >= 2,
        "no new term observed: {:?}",
        log.by_term
    );
}
