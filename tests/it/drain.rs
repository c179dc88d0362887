//! History follows the target (issue 16): a node that leaves gracefully moves every
//! sample it holds to the nodes that own that data afterwards, before it leaves the
//! membership. Measured from outside: after the leave, every remaining node answers
//! every target's raw samples (`up{job="fleet"}[Ns]` at a fixed instant, the whole run)
//! with no gap longer than 1.5 scrape intervals and no two samples closer than half an
//! interval (no hole, no double), although the leaver scraped a share of them.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{TestCluster, str_of, view};
use crate::harness::*;
use crate::sharding::{TARGETS, fleet_config, owned, unix_now, wait_settled};

/// Scrape interval of the fleet config (1 s).
const INTERVAL: f64 = 1.0;

fn fleet() -> TargetServer {
    let s = TargetServer::start();
    s.set("/metrics", Reply::text("fleet_metric 1\n"));
    s
}

/// Raw `up` sample times (seconds) per target idx, as `node` answers for the cluster,
/// from `from` to `at`.
fn raw_times(node: &Node, from: f64, at: f64) -> Vec<(usize, Vec<f64>)> {
    let window = (at - from).ceil() as u64 + 1;
    let q = urlencode(&format!("up{{job=\"fleet\"}}[{window}s]"));
    let v = node.get_json(&format!("/api/v1/query?query={q}&time={at:.3}"));
    assert_eq!(v["status"], "success", "{v}");
    assert!(
        v["warnings"].as_array().is_none_or(|w| w.is_empty()),
        "partial answer: {v}"
    );
    let mut out: Vec<(usize, Vec<f64>)> = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let idx: usize = str_of(&s["metric"]["idx"]).parse().unwrap();
            let ts: Vec<f64> = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[0].as_f64())
                .filter(|&t| t >= from)
                .collect();
            (idx, ts)
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Every target's raw samples from `node`, over `[from, at]`: present from its first
/// scrape on, no gap over 1.5 intervals, no two samples within half an interval.
/// Returns the number of samples checked.
fn assert_no_hole_no_double(node: &Node, from: f64, at: f64, what: &str) -> usize {
    let series = raw_times(node, from, at);
    assert_eq!(
        series.len(),
        TARGETS,
        "{what}: {} of {TARGETS} targets answered by {}",
        series.len(),
        node.addr()
    );
    let mut n = 0;
    for (idx, ts) in &series {
        assert!(
            ts.first().is_some_and(|&t| t <= from + 2.0 * INTERVAL),
            "{what}: target {idx} starts late on {}: {:?}",
            node.addr(),
            ts.first()
        );
        assert!(
            ts.last().is_some_and(|&t| t >= at - 2.0 * INTERVAL),
            "{what}: target {idx} ends early on {}: {:?}",
            node.addr(),
            ts.last()
        );
        for w in ts.windows(2) {
            let d = w[1] - w[0];
            assert!(
                d <= 1.5 * INTERVAL,
                "{what}: target {idx} has a {d:.3} s hole at {:.3} on {}",
                w[0],
                node.addr()
            );
            assert!(
                d >= 0.5 * INTERVAL,
                "{what}: target {idx} has two samples {d:.3} s apart at {:.3} on {} (a double)",
                w[0],
                node.addr()
            );
        }
        n += ts.len();
    }
    n
}

/// Waits until the node at index `i` has scraped at least `samples` raw samples of
/// some target of its own (it ran long enough as an owner to leave a real hole).
fn wait_owned_history(c: &TestCluster, i: usize, samples: usize) {
    wait_for(
        "the new node to scrape a history of its own",
        Duration::from_secs(90),
        || {
            let r = c.nodes[i].query_local("max(count_over_time(up{job=\"fleet\"}[5m]))");
            let n = r.first().map(value_of).unwrap_or(0.0);
            if n as usize >= samples {
                Ok(())
            } else {
                Err(format!("{n} samples"))
            }
        },
    );
}

/// Waits until node `i` exits on its own (a leave ends with the node stopping).
fn wait_exit(c: &mut TestCluster, i: usize, within: Duration) -> std::process::ExitStatus {
    let n = &mut c.nodes[i];
    let log = n.log.clone();
    try_wait_for("the leaver to exit", within, || {
        n.child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
}

/// How many targets node `i` scrapes.
fn owned_targets(node: &Node) -> usize {
    let v = node.get_json("/api/v1/targets?state=active");
    v["data"]["activeTargets"].as_array().map_or(0, Vec::len)
}

fn start(n: usize, extra: &[&str]) -> (TargetServer, TestCluster, f64) {
    start_rf(n, 1, extra)
}

/// The sharding tests' fleet, each target with an `instance` of its own (they share one
/// server address): a series follows its target by `job` and `instance`
/// (`shard::placement`), so that the leaver's history spreads over the receivers as
/// its targets do.
fn drain_fleet_config(server: &TargetServer) -> String {
    let y = fleet_config(server);
    let mut out = String::new();
    for line in y.lines() {
        match line.split_once("labels: {idx: '") {
            Some((head, rest)) => {
                let idx = rest.trim_end_matches("'}");
                out.push_str(&format!(
                    "{head}labels: {{idx: '{idx}', instance: 't{idx}'}}\n"
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(out.contains("instance: 't0'"), "{out}");
    out
}

fn start_rf(n: usize, replicas: usize, extra: &[&str]) -> (TargetServer, TestCluster, f64) {
    let server = fleet();
    let config = drain_fleet_config(&server);
    let c = TestCluster::start_with_config(&vec!["127.0.0.1"; n], &config, extra);
    let idx: Vec<usize> = (0..n).collect();
    wait_settled(&c, &idx, replicas);
    // Every target has been scraped a few times: the run's history starts here.
    let from = unix_now() + 1.0;
    (server, c, from)
}

/// Checks every node in `idx` after the run.
fn check_all(c: &TestCluster, idx: &[usize], from: f64, what: &str) {
    let at = unix_now() - 1.0;
    for &i in idx {
        let n = assert_no_hole_no_double(&c.nodes[i], from, at, what);
        // Each of the 60 targets scraped about once a second over the whole run.
        let expected = (at - from) * TARGETS as f64;
        assert!(
            n as f64 >= 0.9 * expected,
            "{what}: node {i} answered {n} raw samples, expected about {expected:.0}"
        );
    }
}

#[test]
fn a_graceful_leave_moves_the_leavers_history_to_the_new_owners() {
    let (_server, mut c, from) = start(3, &[]);
    let late = c.add("late", "127.0.0.1");
    wait_settled(&c, &[0, 1, 2, late], 1);
    let owned = owned_targets(&c.nodes[late]);
    assert!(owned > 0, "the new node got no targets: nothing to test");
    wait_owned_history(&c, late, 30);

    let st = c.nodes[late].terminate();
    assert!(st.success(), "SIGTERM exit: {st}");
    let log = std::fs::read_to_string(&c.nodes[late].log).unwrap_or_default();
    assert!(
        log.contains("drain: done"),
        "the leaver did not drain:\n{log}"
    );
    assert!(
        !c.nodes[late].data_dir.join("cluster").exists(),
        "cluster state kept after the leave"
    );
    assert!(
        !c.nodes[late].data_dir.join("drain.cursor").exists(),
        "drain cursor kept after the leave"
    );
    wait_settled(&c, &[0, 1, 2], 1);
    check_all(&c, &[0, 1, 2], from, "after a graceful leave");
    // The receivers counted the drain's imports.
    let sum = |m: &str| -> f64 { (0..3).filter_map(|i| c.nodes[i].metric(m)).sum() };
    assert!(sum("shoal_tsdb_import_requests_total{source=\"drain\",result=\"ok\"}") >= 1.0);
    assert!(sum("shoal_tsdb_import_samples_total{result=\"stored\"}") >= 1.0);
    assert!(sum("shoal_tsdb_import_chunks_total") >= 1.0);
    assert_eq!(
        sum("shoal_tsdb_import_requests_total{source=\"backfill\",result=\"ok\"}"),
        0.0
    );
}

#[test]
fn two_nodes_leave_at_once_and_nothing_is_lost() {
    let (_server, mut c, from) = start(3, &[]);
    let a = c.add("a", "127.0.0.1");
    let b = c.add("b", "127.0.0.1");
    wait_settled(&c, &[0, 1, 2, a, b], 1);
    assert!(owned_targets(&c.nodes[a]) + owned_targets(&c.nodes[b]) > 0);
    wait_owned_history(&c, a, 20);
    wait_owned_history(&c, b, 20);
    c.nodes[a].signal("TERM");
    c.nodes[b].signal("TERM");
    for i in [a, b] {
        let st = wait_exit(&mut c, i, Duration::from_secs(60));
        assert!(st.success(), "node {i} exit: {st}");
    }
    wait_settled(&c, &[0, 1, 2], 1);
    check_all(&c, &[0, 1, 2], from, "after two leaves at once");
}

#[test]
fn the_leader_leaves_and_its_history_stays() {
    let (_server, mut c, from) = start(4, &[]);
    let v = view(&c.nodes[0]).unwrap();
    let leader_addr = str_of(&v["leaderAddress"]);
    let li = c
        .nodes
        .iter()
        .position(|n| n.addr() == leader_addr)
        .expect("a leader");
    let old_leader = str_of(&v["leaderId"]);
    assert!(owned_targets(&c.nodes[li]) > 0, "the leader owns no target");
    wait_owned_history(&c, li, 20);
    let st = c.nodes[li].terminate();
    assert!(st.success(), "SIGTERM exit: {st}");
    let rest: Vec<usize> = (0..4).filter(|&i| i != li).collect();
    wait_for("a new leader", Duration::from_secs(30), || {
        let v = view(&c.nodes[rest[0]])?;
        let l = &v["leaderId"];
        if l.is_null() || str_of(l) == old_leader {
            return Err(format!("{v}"));
        }
        Ok(())
    });
    wait_settled(&c, &rest, 1);
    check_all(&c, &rest, from, "after the leader left");
}

#[test]
fn a_leaver_killed_mid_drain_resumes_and_loses_nothing() {
    // A slow drain (256 B/s: the leaver holds a few KiB of chunks, so the drain takes
    // tens of seconds even on an idle machine) so that the leaver can be killed in the
    // middle of it.
    let (_server, mut c, from) = start(3, &["--cluster.drain-rate", "256B"]);
    let late = c.add("late", "127.0.0.1");
    wait_settled(&c, &[0, 1, 2, late], 1);
    assert!(owned_targets(&c.nodes[late]) > 0, "nothing to drain");
    wait_owned_history(&c, late, 30);
    let late_id = str_of(&view(&c.nodes[late]).unwrap()["nodeId"]);

    c.nodes[late].signal("TERM");
    // Mid-drain: its members entry shows progress with bytes still left, after some
    // bytes were moved already.
    let mut first_left: Option<u64> = None;
    wait_for("the drain to be half way", Duration::from_secs(60), || {
        let left = drain_left(&c.nodes[0], &late_id)?;
        let first = *first_left.get_or_insert(left);
        if left < first {
            Ok(())
        } else {
            Err(format!("{left} bytes left of {first}"))
        }
    });
    c.nodes[late].kill9();
    // It keeps its identity: restarted, it finds itself leaving, resumes and leaves.
    assert!(c.nodes[late].data_dir.join("cluster").exists());
    c.respawn(late);
    let st = wait_exit(&mut c, late, Duration::from_secs(120));
    assert!(st.success(), "the resumed leaver exited with {st}");
    let log = std::fs::read_to_string(&c.nodes[late].log).unwrap_or_default();
    assert!(log.contains("resuming the leave"), "no resume:\n{log}");
    assert!(log.contains("drain: done"), "no drain:\n{log}");
    assert!(
        !c.nodes[late].data_dir.join("cluster").exists(),
        "cluster state kept after the leave"
    );
    wait_settled(&c, &[0, 1, 2], 1);
    let v: Value = view(&c.nodes[0]).unwrap();
    assert!(
        !v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| str_of(&m["id"]) == late_id),
        "the leaver is still a member: {v}"
    );
    check_all(&c, &[0, 1, 2], from, "after a drain killed and resumed");
}

#[test]
fn removing_a_dead_node_loses_nothing_with_two_replicas() {
    let (_server, mut c, from) = start_rf(3, 2, &["--cluster.replication-factor", "2"]);
    wait_owned_history(&c, 2, 15);
    let victim_id = str_of(&view(&c.nodes[2]).unwrap()["nodeId"]);
    c.nodes[2].kill9();
    wait_for("the dead node marked down", Duration::from_secs(30), || {
        let v = view(&c.nodes[0])?;
        let down = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| str_of(&m["id"]) == victim_id && m["state"] == "down");
        if down { Ok(()) } else { Err(format!("{v}")) }
    });
    // Replication factor 2 and a dead node: nothing to warn about, no --yes needed.
    let secret = c.dir.path().join("cluster.secret");
    let mut args = vec![
        "cluster".to_owned(),
        "remove".to_owned(),
        victim_id.clone(),
        "--cluster.secret-file".to_owned(),
        secret.display().to_string(),
    ];
    args.extend(c.nodes[0].cli_target());
    let out = std::process::Command::new(shoal_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_settled(&c, &[0, 1], 2);
    check_all(&c, &[0, 1], from, "after removing a dead node (2 replicas)");
}

#[test]
fn a_killed_node_that_comes_back_serves_its_samples_again() {
    let (_server, mut c, from) = start(3, &[]);
    let victim = 2;
    assert!(
        owned_targets(&c.nodes[victim]) > 0,
        "the victim owns nothing"
    );
    wait_owned_history(&c, victim, 15);
    // Up to a few seconds before the kill (a kill -9 may lose the last WAL flush).
    let until = unix_now() - 3.0;
    let before = raw_times(&c.nodes[0], from, until);
    let samples: usize = before.iter().map(|(_, t)| t.len()).sum();
    assert!(
        samples as f64 >= 0.9 * (until - from) * TARGETS as f64,
        "{samples} raw samples before the kill"
    );
    c.nodes[victim].kill9();
    // While it is down its share of the history is missing (a partial answer).
    wait_for("a partial answer", Duration::from_secs(30), || {
        let q = urlencode("up{job=\"fleet\"}[10m]");
        let v = c.nodes[0].get_json(&format!("/api/v1/query?query={q}&time={until:.3}"));
        if v["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
            Ok(())
        } else {
            Err(format!("{v}"))
        }
    });
    c.restart(victim);
    wait_settled(&c, &[0, 1, 2], 1);
    // Back with its data: the same raw samples as before the kill, from every node.
    for i in 0..3 {
        let after = raw_times(&c.nodes[i], from, until);
        assert_eq!(
            after, before,
            "node {i} answers other raw samples after the comeback"
        );
    }
}

/// The leaver's members entry as `node` shows it, once it is leaving with bytes left
/// (`Err` otherwise).
fn drain_left(node: &Node, leaver_id: &str) -> Result<u64, String> {
    let v = view(node)?;
    let m = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| str_of(&m["id"]) == leaver_id)
        .cloned()
        .ok_or("leaver not listed")?;
    let left = m["drain"]["bytesLeft"].as_u64().ok_or(format!("{m}"))?;
    if m["state"] != "leaving" || left == 0 {
        return Err(format!("{m}"));
    }
    Ok(left)
}

#[test]
fn a_receiver_that_dies_mid_drain_is_replaced_by_the_next_owner() {
    // A slow drain (128 B/s: about a minute for the leaver's few KiB of chunks), so
    // that a receiver can die in the middle of it and be marked down (10 s) before
    // it ends.
    let (_server, mut c, from) = start(3, &["--cluster.drain-rate", "128B"]);
    // Who owns what among the three: after the leave, the leaver's targets (and their
    // history) go back to these owners (rendezvous: the order among the three does not
    // depend on the fourth).
    let before: Vec<BTreeSet<usize>> = (0..3).map(|i| owned(&c.nodes[i]).unwrap()).collect();
    let late = c.add("late", "127.0.0.1");
    wait_settled(&c, &[0, 1, 2, late], 1);
    let leavers = owned(&c.nodes[late]).unwrap();
    assert!(!leavers.is_empty(), "nothing to drain");
    wait_owned_history(&c, late, 30);
    let late_id = str_of(&view(&c.nodes[late]).unwrap()["nodeId"]);
    // The receiver that dies: one that receives a share of the leaver's history, a
    // follower when one does (the leader's death would test elections too).
    let leader = str_of(&view(&c.nodes[0]).unwrap()["leaderAddress"]);
    let receivers: Vec<usize> = (0..3)
        .filter(|&i| !before[i].is_disjoint(&leavers))
        .collect();
    let victim = receivers
        .iter()
        .copied()
        .find(|&i| c.nodes[i].addr() != leader)
        .unwrap_or(receivers[0]);
    let victim_id = str_of(&view(&c.nodes[victim]).unwrap()["nodeId"]);
    let witness = (0..3).find(|&i| i != victim).unwrap();

    c.nodes[late].signal("TERM");
    let mut first_left: Option<u64> = None;
    wait_for("the drain to be under way", Duration::from_secs(60), || {
        let left = drain_left(&c.nodes[witness], &late_id)?;
        let first = *first_left.get_or_insert(left);
        if left < first {
            Ok(())
        } else {
            Err(format!("{left} bytes left of {first}"))
        }
    });
    // Samples up to a few seconds before the kill are what the cluster must keep (a
    // kill -9 may lose the victim's last WAL flush of its own scrapes; its targets are
    // not scraped until it is marked down).
    let until = unix_now() - 3.0;
    c.nodes[victim].kill9();

    // The drain goes on without it: the victim's share goes to the next owner and the
    // leaver leaves while the victim is still down.
    let st = wait_exit(&mut c, late, Duration::from_secs(180));
    assert!(st.success(), "the leaver exited with {st}");
    let log = std::fs::read_to_string(&c.nodes[late].log).unwrap_or_default();
    assert!(log.contains("drain: done"), "no drain:\n{log}");
    assert!(
        !log.contains("resuming the leave"),
        "a leave this run started was taken for one to resume:\n{log}"
    );
    // Whether a batch was refused by the dead receiver before it was marked down
    // depends on where its share falls in the export order; either way its share
    // must end on the next owner.
    eprintln!(
        "deliveries the dead receiver refused: {}",
        log.matches("did not take its share").count()
    );
    let v: Value = view(&c.nodes[witness]).unwrap();
    let members: Vec<&Value> = v["members"].as_array().into_iter().flatten().collect();
    assert!(
        !members.iter().any(|m| str_of(&m["id"]) == late_id),
        "the leaver is still a member: {v}"
    );
    assert!(
        members
            .iter()
            .any(|m| str_of(&m["id"]) == victim_id && m["state"] == "down"),
        "the victim is not down while the leave ended: {v}"
    );

    // The victim comes back with what it had taken; every node answers the whole run
    // up to the kill with no hole and no double.
    c.restart(victim);
    wait_settled(&c, &[0, 1, 2], 1);
    for i in 0..3 {
        let n = assert_no_hole_no_double(&c.nodes[i], from, until, "after a receiver died");
        let expected = (until - from) * TARGETS as f64;
        assert!(
            n as f64 >= 0.9 * expected,
            "node {i} answered {n} raw samples, expected about {expected:.0}"
        );
    }
}
