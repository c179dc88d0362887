//! Query any node (issue 7): every node answers for the whole cluster as one big
//! Prometheus would — compared with a single-node shoal (`reference`) that scrapes the
//! same fleet alone. The fleet is sharding's 60 targets (one test server, `idx`
//! labels) serving a counter that grows by 100 per second and `fleet_metric 1`.
//!
//! Both the cluster and the reference scrape every target on the same phase (the phase
//! comes from the target key), so their samples are milliseconds apart; tolerances
//! cover that and window edges, not doubled or lost data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{SECRET, TestCluster, str_of, view, write_secret};
use crate::harness::*;
use crate::sharding::{TARGETS, fleet_config, unix_now, wait_settled};

/// The test server behind the fleet; its counter grows until the fleet is dropped.
struct Fleet {
    server: TargetServer,
    stop: Arc<AtomicBool>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn growing_fleet() -> Fleet {
    let server = TargetServer::start();
    let stop = Arc::new(AtomicBool::new(false));
    let body = |n: u64| Reply::text(&format!("fleet_requests_total {n}\nfleet_metric 1\n"));
    server.set("/metrics", body(0));
    let (s, st) = (server.clone(), stop.clone());
    std::thread::spawn(move || {
        let start = Instant::now();
        while !st.load(Ordering::Relaxed) {
            s.set("/metrics", body(start.elapsed().as_millis() as u64 / 10));
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Fleet { server, stop }
}

/// GET `path` on `node`; (HTTP status, JSON body).
fn get(node: &Node, path: &str) -> (u16, Value) {
    let (code, body) = http_get(&node.url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path} ({code}): invalid JSON {e}: {body}"));
    (code, v)
}

/// Successful instant query at `t`; the whole response.
fn instant(node: &Node, q: &str, t: f64, extra: &str) -> Value {
    let (code, v) = get(
        node,
        &format!("/api/v1/query?query={}&time={t:.3}{extra}", urlencode(q)),
    );
    assert_eq!(code, 200, "{q} on {}: {v}", node.addr());
    assert_eq!(v["status"], "success", "{q} on {}: {v}", node.addr());
    v
}

/// An instant vector as metric (JSON text) → value.
fn vector(v: &Value) -> BTreeMap<String, f64> {
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("no result: {v}"))
        .iter()
        .map(|s| (s["metric"].to_string(), value_of(s)))
        .collect()
}

/// A range query's matrix as metric → [(t, v)].
fn matrix(
    node: &Node,
    q: &str,
    start: f64,
    end: f64,
    step: f64,
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let (code, v) = get(
        node,
        &format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            urlencode(q)
        ),
    );
    assert_eq!(code, 200, "{q} on {}: {v}", node.addr());
    assert!(v["warnings"].is_null(), "{q} on {}: {v}", node.addr());
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let pts = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap(),
                        p[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            (s["metric"].to_string(), pts)
        })
        .collect()
}

/// Sleeps until the wall clock passes `t` (lets data accumulate; never a check).
fn sleep_until(t: f64) {
    let now = unix_now();
    if t > now {
        std::thread::sleep(Duration::from_secs_f64(t - now));
    }
}

/// Checks `got` against the reference's `want` point by point: same steps, values
/// within `rel` of each other.
fn assert_close_matrix(
    what: &str,
    got: &BTreeMap<String, Vec<(f64, f64)>>,
    want: &BTreeMap<String, Vec<(f64, f64)>>,
    rel: f64,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: series differ"
    );
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.len(), w.len(), "{what}: steps of {k}: {g:?} vs {w:?}");
        for ((tg, vg), (tw, vw)) in g.iter().zip(w) {
            assert_eq!(tg, tw);
            assert!(
                (vg - vw).abs() <= rel * vw.abs().max(1.0),
                "{what} at {tg}: cluster {vg}, single node {vw}"
            );
        }
    }
}

/// Timestamps of the raw `up` samples of every fleet target (by `idx`) over
/// `window` seconds before `end`, as `node` answers them.
fn raw_up(node: &Node, end: f64, window: u64) -> BTreeMap<String, Vec<f64>> {
    let v = instant(node, &format!("up{{job=\"fleet\"}}[{window}s]"), end, "");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ts = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[0].as_f64().unwrap())
                .collect();
            (str_of(&s["metric"]["idx"]), ts)
        })
        .collect()
}

/// Raw `up` samples per target on `node` against the single-node reference: at most
/// `events` samples apart per target (one per join or leave inside the window: the
/// handoff may drop or repeat the slot at the move; a replica switch of the merge is
/// one too). Both are counted between two instants half an interval away from the
/// target's scrape phase, so a scrape that runs late on a loaded machine cannot
/// cross an edge on one side only.
fn assert_same_sample_counts(
    what: &str,
    node: &Node,
    reference: &Node,
    (end, window): (f64, u64),
    events: usize,
) {
    let got = raw_up(node, end, window);
    let want = raw_up(reference, end, window);
    assert_eq!(want.len(), TARGETS, "{what}: reference {want:?}");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: targets on {}",
        node.addr()
    );
    let start = end - window as f64;
    for (k, w) in &want {
        assert!(w.len() >= 4, "{what}: {k}: reference has {w:?}");
        let mut phases: Vec<f64> = w.iter().map(|t| t.rem_euclid(1.0)).collect();
        phases.sort_by(f64::total_cmp);
        let edge = (phases[phases.len() / 2] + 0.5).rem_euclid(1.0);
        let lo = start.floor() + 1.0 + edge;
        let hi = end.floor() - 1.0 + edge;
        let count = |ts: &[f64]| ts.iter().filter(|&&t| t > lo && t <= hi).count();
        let (g, r) = (count(&got[k]), count(w));
        assert!(
            g.abs_diff(r) <= events,
            "{what}: {k}: {g} samples on {} in ({lo:.3}, {hi:.3}], {r} on the single node \
             (at most {events} apart): {:?} vs {w:?}",
            node.addr(),
            got[k]
        );
    }
}

/// The raw `up` samples of every target over `window` seconds before `end`, as
/// `node` merges them: no two closer than a quarter of the 1 s interval (replicas of
/// one scrape are milliseconds apart).
fn assert_no_replica_duplicates(node: &Node, end: f64, window: u64) {
    let v = instant(node, &format!("up{{job=\"fleet\"}}[{window}s]"), end, "");
    let series = v["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), TARGETS, "{v}");
    for s in series {
        let ts: Vec<f64> = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_f64().unwrap())
            .collect();
        for w in ts.windows(2) {
            assert!(
                w[1] - w[0] >= 0.25,
                "{} on {}: samples {} and {} are replicas of one scrape",
                s["metric"],
                node.addr(),
                w[0],
                w[1]
            );
        }
    }
}

#[test]
fn every_node_answers_like_one_prometheus_across_a_leave_and_a_join() {
    let fleet = growing_fleet();
    let cfg = fleet_config(&fleet.server);
    let ref_dir = tempdir();
    let reference = Node::start(ref_dir.path(), &cfg, &[]);
    let mut c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        &cfg,
        &["--log.level", "info,shoal::query=debug"],
    );
    wait_settled(&c, &[0, 1, 2], 1);

    // A graceful leave: node 2's targets move to 0 and 1 (its own samples leave with
    // it, so the compared window starts once the others own everything).
    c.nodes[2].terminate();
    wait_settled(&c, &[0, 1], 1);
    let start = unix_now().ceil() + 1.0;
    sleep_until(start + 8.0);
    // A join: about a third of the targets move to the newcomer; their history stays
    // split over the old owners and the newcomer.
    let new = c.add("node3", "127.0.0.1");
    wait_settled(&c, &[0, 1, new], 1);
    sleep_until(unix_now() + 8.0);
    let end = unix_now().floor() - 5.0; // every sample up to here is committed, even late scrapes
    let window = (end - start).floor() as u64;
    let nodes = [&c.nodes[0], &c.nodes[1], &c.nodes[new]];

    // Instant: every target once, as on the single node.
    for n in nodes.iter().copied().chain([&reference]) {
        let v = vector(&instant(n, "count(up{job=\"fleet\"})", end, ""));
        assert_eq!(
            v.values().copied().collect::<Vec<_>>(),
            vec![TARGETS as f64],
            "{}",
            n.addr()
        );
    }

    // History over the whole window: every sample once, same answer on every node.
    let q = format!("sum by (idx) (count_over_time(up{{job=\"fleet\"}}[{window}s]))");
    let first = instant(nodes[0], &q, end, "");
    assert!(first["warnings"].is_null(), "{first}");
    // The aggregate counts what the raw select returns.
    let raw: usize = raw_up(nodes[0], end, window).values().map(Vec::len).sum();
    assert_eq!(vector(&first).values().sum::<f64>(), raw as f64, "{q}");
    assert_no_replica_duplicates(nodes[0], end, window);
    // One event in the window: the join (the leave settled before `start`).
    assert_same_sample_counts(&q, nodes[0], &reference, (end, window), 1);
    for n in &nodes[1..] {
        assert_eq!(
            instant(n, &q, end, "")["data"],
            first["data"],
            "{q} differs on {}",
            n.addr()
        );
    }

    // Rates over the window: the single node's answer on every node (no fake resets
    // from interleaved replicas of moved targets).
    let rq = "sum(rate(fleet_requests_total[5s]))";
    let want = matrix(&reference, rq, start + 5.0, end, 2.0);
    let got0 = matrix(nodes[0], rq, start + 5.0, end, 2.0);
    assert_close_matrix(rq, &got0, &want, 0.1);
    for n in &nodes[1..] {
        assert_eq!(
            matrix(n, rq, start + 5.0, end, 2.0),
            got0,
            "{rq} differs on {}",
            n.addr()
        );
    }
    // The rate's history is split by the join only around the move: those steps were
    // evaluated over the merged data, the others pushed down.
    let split = nodes
        .iter()
        .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
        .flat_map(|l| {
            l.lines()
                .filter(|x| x.contains("aggregation pushed down"))
                .filter_map(|x| {
                    x.split("normal_steps=")
                        .nth(1)?
                        .split(['\u{1b}', ' '])
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .filter(|&k| k > 0)
        .count();
    assert!(
        split >= 3,
        "{rq} over the join was not pushed down outside the move on every node:\n{}",
        c.logs()
    );
    let per_target = matrix(
        nodes[1],
        "max(resets(fleet_requests_total[1h]))",
        end,
        end,
        1.0,
    );
    assert_eq!(
        per_target.values().next().map(|p| p[0].1),
        Some(0.0),
        "a counter that never reset looks reset after the merge"
    );

    // Metadata routes see every node's series.
    for n in nodes {
        let (_, v) = get(
            n,
            &format!(
                "/api/v1/series?match[]={}&start={start}&end={end}",
                urlencode("up{job=\"fleet\"}")
            ),
        );
        assert_eq!(
            v["data"].as_array().map(Vec::len),
            Some(TARGETS),
            "series on {}: {v}",
            n.addr()
        );
        let (_, v) = get(
            n,
            &format!("/api/v1/label/idx/values?start={start}&end={end}"),
        );
        assert_eq!(
            v["data"].as_array().map(Vec::len),
            Some(TARGETS),
            "idx values on {}",
            n.addr()
        );
        let (_, v) = get(n, "/api/v1/labels");
        let names: Vec<String> = v["data"].as_array().unwrap().iter().map(str_of).collect();
        assert!(names.contains(&"idx".to_string()), "{names:?}");
    }

    // local=1 drills down to one node: only part of the targets.
    let local = vector(&instant(
        nodes[0],
        "count(up{job=\"fleet\"})",
        end,
        "&local=1",
    ));
    let n_local = local.values().next().copied().unwrap_or(0.0);
    assert!(
        n_local > 0.0 && n_local < TARGETS as f64,
        "local=1 counted {n_local}"
    );
}

#[test]
fn replication_factor_two_does_not_double_counts_or_sums() {
    let fleet = growing_fleet();
    let cfg = fleet_config(&fleet.server);
    let ref_dir = tempdir();
    let reference = Node::start(ref_dir.path(), &cfg, &[]);
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        &cfg,
        &["--cluster.replication-factor", "2"],
    );
    wait_settled(&c, &[0, 1, 2], 2);
    let start = unix_now().ceil() + 1.0;
    sleep_until(start + 14.0);
    let end = unix_now().floor() - 5.0;
    let window = (end - start).floor() as u64;

    for n in &c.nodes {
        let v = vector(&instant(n, "count(up{job=\"fleet\"})", end, ""));
        assert_eq!(
            v.values().copied().collect::<Vec<_>>(),
            vec![TARGETS as f64],
            "{}",
            n.addr()
        );
        // Each node holds two copies of a third of the fleet... and answers for all of it once.
        let v = vector(&instant(n, "sum(fleet_metric)", end, ""));
        assert_eq!(
            v.values().copied().collect::<Vec<_>>(),
            vec![TARGETS as f64],
            "{}",
            n.addr()
        );
    }
    let q = format!("up{{job=\"fleet\"}}[{window}s]");
    for n in &c.nodes {
        assert_no_replica_duplicates(n, end, window);
        // No join or leave in the window; one replica switch of the merge at most.
        assert_same_sample_counts(&q, n, &reference, (end, window), 1);
    }
    let rq = "sum(rate(fleet_requests_total[5s]))";
    let want = matrix(&reference, rq, start + 5.0, end, 2.0);
    for n in &c.nodes {
        assert_close_matrix(rq, &matrix(n, rq, start + 5.0, end, 2.0), &want, 0.1);
    }
    // The true rate: 100/s per target.
    let v = vector(&instant(&c.nodes[0], rq, end, ""));
    let total = v.values().next().copied().unwrap_or(0.0);
    assert!(
        (total - 100.0 * TARGETS as f64).abs() < 10.0 * TARGETS as f64,
        "sum(rate) = {total}"
    );
}

/// Node ids of the cluster as seen by `node`: address → id.
fn ids_by_addr(node: &Node) -> BTreeMap<String, String> {
    let v = view(node).expect("cluster view");
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (str_of(&m["address"]), str_of(&m["id"])))
        .collect()
}

/// Runs a query against `node` and returns (elapsed, HTTP status, body).
fn timed(node: &Node, path: &str) -> (Duration, u16, Value) {
    let t = Instant::now();
    let (code, v) = get(node, path);
    (t.elapsed(), code, v)
}

fn warnings_of(v: &Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .map(|a| a.iter().map(str_of).collect())
        .unwrap_or_default()
}

#[test]
fn a_dead_or_stuck_member_gives_a_partial_answer_naming_it() {
    let fleet = growing_fleet();
    let cfg = fleet_config(&fleet.server);
    // --query.timeout 10s: members get 5 s each.
    let mut c =
        TestCluster::start_with_config(&["127.0.0.1"; 3], &cfg, &["--query.timeout", "10s"]);
    wait_settled(&c, &[0, 1, 2], 1);
    // Some data everywhere: every node has scraped its targets.
    wait_for(
        "every node to hold samples",
        Duration::from_secs(30),
        || {
            let counts: Vec<f64> = c
                .nodes
                .iter()
                .map(|n| {
                    n.query_local("count(up{job=\"fleet\"})")
                        .first()
                        .map_or(0.0, value_of)
                })
                .collect();
            if counts.iter().all(|&n| n > 0.0) && counts.iter().sum::<f64>() >= TARGETS as f64 {
                Ok(())
            } else {
                Err(format!("{counts:?}"))
            }
        },
    );
    let victim_addr = c.nodes[2].addr();
    let victim_id = ids_by_addr(&c.nodes[0])[&victim_addr].clone();
    let names_victim = |w: &[String]| {
        w.iter()
            .any(|w| w.contains(&victim_id) && w.contains(&victim_addr))
    };
    let q = format!(
        "/api/v1/query?query={}",
        urlencode("count(up{job=\"fleet\"})")
    );
    let (_, code, v) = timed(&c.nodes[0], &q);
    assert_eq!(code, 200, "{v}");
    assert!(warnings_of(&v).is_empty(), "healthy cluster: {v}");

    // Stuck (SIGSTOP): answers come within the member timeout, partial.
    c.nodes[2].signal("STOP");
    for i in [0, 1] {
        let (took, code, v) = timed(&c.nodes[i], &q);
        assert_eq!(code, 200, "{v}");
        assert!(took < Duration::from_secs(9), "took {took:?}");
        assert!(names_victim(&warnings_of(&v)), "node {i}: {v}");
    }

    // Killed: partial answers, or an error when partial answers are refused.
    c.nodes[2].kill9();
    for i in [0, 1] {
        let (took, code, v) = timed(&c.nodes[i], &q);
        assert_eq!(code, 200, "{v}");
        assert!(took < Duration::from_secs(9), "took {took:?}");
        assert!(names_victim(&warnings_of(&v)), "node {i}: {v}");

        let (took, code, v) = timed(&c.nodes[i], &format!("{q}&partial_response=false"));
        assert!(took < Duration::from_secs(9), "took {took:?}");
        assert_eq!(code, 503, "{v}");
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["errorType"], "unavailable", "{v}");
        assert!(str_of(&v["error"]).contains(&victim_id), "{v}");

        let (_, code, v) = timed(&c.nodes[i], "/api/v1/labels");
        assert_eq!(code, 200, "{v}");
        assert!(names_victim(&warnings_of(&v)), "labels on node {i}: {v}");
        let (_, code, v) = timed(&c.nodes[i], "/api/v1/labels?partial_response=0");
        assert_eq!(code, 503, "{v}");

        // local=1 asks nobody else.
        let (_, code, v) = timed(&c.nodes[i], &format!("{q}&local=1"));
        assert_eq!(code, 200, "{v}");
        assert!(warnings_of(&v).is_empty(), "{v}");
    }

    // Once committed down, the member is still named (its data is missing), and the
    // survivors scrape its targets: the present is whole again.
    wait_for("the victim to be down", Duration::from_secs(30), || {
        let v = view(&c.nodes[0])?;
        let down = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| str_of(&m["address"]) == victim_addr && m["state"] == "down");
        if down { Ok(()) } else { Err(format!("{v}")) }
    });
    wait_for(
        "survivors to answer for every target",
        Duration::from_secs(40),
        || {
            let (_, code, v) = timed(&c.nodes[1], &q);
            let w = warnings_of(&v);
            if code != 200
                || !w
                    .iter()
                    .any(|w| w.contains("is down") && w.contains(&victim_id))
            {
                return Err(format!("{code} {v}"));
            }
            match vector(&v).values().next() {
                Some(&n) if n == TARGETS as f64 => Ok(()),
                _ => Err(format!("{v}")),
            }
        },
    );
}

/// `POST /internal/query` with a raw body and an optional bearer token: the status and
/// the raw body.
fn post_internal(node: &Node, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    internal_request(
        node,
        "POST",
        shoal::peer::protocol::MEMBER_READ.path,
        token,
        body,
    )
}

#[test]
fn the_internal_read_route_wants_the_secret_and_a_well_formed_body() {
    use shoal::query::wire::{self, Request, Response, WireHints, WireMatcher};
    let fleet = growing_fleet();
    let cfg = fleet_config(&fleet.server);
    let secret_dir = tempdir();
    let secret = write_secret(secret_dir.path());
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 2],
        &cfg,
        &["--cluster.secret-file", secret.to_str().unwrap()],
    );
    wait_settled(&c, &[0, 1], 1);
    let now_ms = (unix_now() * 1000.0) as i64;
    let good = wire::encode(&Request::Select {
        hints: WireHints {
            start: now_ms - 60_000,
            end: now_ms,
            step: 0,
            func: None,
            range: 0,
            limits: Default::default(),
            grid: None,
        },
        matchers: vec![WireMatcher {
            op: 0,
            name: "__name__".into(),
            value: "up".into(),
        }],
        exclude_global: true,
    })
    .unwrap();
    let n = &c.nodes[0];
    assert_eq!(post_internal(n, None, &good).0, 401, "no secret");
    assert_eq!(
        post_internal(n, Some("wrong"), &good).0,
        401,
        "wrong secret"
    );
    assert_eq!(post_internal(n, Some(SECRET), b"").0, 400, "empty body");
    assert_eq!(
        post_internal(n, Some(SECRET), b"\x01garbage\xff\xff\xff").0,
        400,
        "garbage"
    );
    assert_eq!(
        post_internal(n, Some(SECRET), b"\x09\x00").0,
        400,
        "unknown version"
    );
    let bad_regex = wire::encode(&Request::Series {
        mint: 0,
        maxt: now_ms,
        matchers: vec![WireMatcher {
            op: 2,
            name: "job".into(),
            value: "(".into(),
        }],
    })
    .unwrap();
    assert_eq!(
        post_internal(n, Some(SECRET), &bad_regex).0,
        400,
        "bad regex"
    );

    // The right secret and body: this node's own series, as XOR chunks.
    let (code, body) = post_internal(n, Some(SECRET), &good);
    assert_eq!(code, 200);
    let Response::Series(block) = wire::decode::<Response>(&body).unwrap() else {
        panic!("a select answers series")
    };
    let series = block.decode().unwrap();
    assert!(
        !series.is_empty() && series.len() < TARGETS,
        "{} series",
        series.len()
    );
    assert!(series.iter().all(|s| !s.samples.is_empty()));

    // Nothing broke: cluster reads (which send the secret) are whole and warning-free.
    for n in &c.nodes {
        wait_for("a whole answer", Duration::from_secs(20), || {
            let v = n.get_json(&format!(
                "/api/v1/query?query={}",
                urlencode("count(up{job=\"fleet\"})")
            ));
            match (vector(&v).values().next(), warnings_of(&v).is_empty()) {
                (Some(&k), true) if k == TARGETS as f64 => Ok(()),
                _ => Err(format!("{v}")),
            }
        });
    }
}

#[test]
fn aggregation_pushdown_moves_far_fewer_bytes_and_gives_the_same_answer() {
    use shoal::query::wire::{self, Request, WireHints, WireMatcher};
    let fleet = growing_fleet();
    let cfg = fleet_config(&fleet.server);
    let ref_dir = tempdir();
    let reference = Node::start(ref_dir.path(), &cfg, &[]);
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        &cfg,
        &["--log.level", "info,shoal::query=debug"],
    );
    wait_settled(&c, &[0, 1, 2], 1);
    let settled = unix_now();
    // A minute of data where every series stays on one node.
    sleep_until(settled + 66.0);
    let end = unix_now().floor() - 5.0;

    // Bytes one member sends for `sum by (job) (rate(fleet_requests_total[1m]))`: the
    // raw select of the last minute (what the engine asks for) versus the pushed-down
    // aggregate.
    let end_ms = (end * 1000.0) as i64;
    let matchers = vec![WireMatcher {
        op: 0,
        name: "__name__".into(),
        value: "fleet_requests_total".into(),
    }];
    let raw = wire::encode(&Request::Select {
        hints: WireHints {
            start: end_ms - 60_000 + 1,
            end: end_ms,
            step: 0,
            func: Some("rate".into()),
            range: 60_000,
            limits: Default::default(),
            grid: None,
        },
        matchers: matchers.clone(),
        exclude_global: true,
    })
    .unwrap();
    // Pushdown is one call: the member's aggregate plus the listing of its series.
    let pushed = wire::encode(&Request::Aggregate {
        queries: vec!["sum by (job) (rate(fleet_requests_total[1m]))".into()],
        matchers,
        start: end_ms,
        end: end_ms,
        step: 0,
        window_ms: 60_000,
        limits: Default::default(),
    })
    .unwrap();
    let (code, raw_body) = post_internal(&c.nodes[1], Some(SECRET), &raw);
    assert_eq!(code, 200);
    let (code, pushed_body) = post_internal(&c.nodes[1], Some(SECRET), &pushed);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&pushed_body));
    let (raw_len, pushed_len) = (raw_body.len(), pushed_body.len());
    eprintln!(
        "bytes from one member for sum by (job) (rate(x[1m])), 1 s scrapes: raw {raw_len}, pushed down {pushed_len}"
    );
    assert!(
        raw_len >= 10 * pushed_len,
        "raw {raw_len} bytes, pushed down {pushed_len} bytes"
    );

    // The answer through pushdown (series stayed put over the last 10 s) equals the
    // single node's, on every node, instant and range.
    let q = "sum by (job) (rate(fleet_requests_total[10s]))";
    let want = vector(&instant(&reference, q, end, ""));
    let want_range = matrix(&reference, q, end - 4.0, end, 1.0);
    for n in &c.nodes {
        let got = vector(&instant(n, q, end, ""));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, w) in &want {
            assert!(
                (got[k] - w).abs() <= 0.05 * w,
                "{q} on {}: {} vs {w}",
                n.addr(),
                got[k]
            );
        }
        assert_close_matrix(q, &matrix(n, q, end - 4.0, end, 1.0), &want_range, 0.05);
        let avg = vector(&instant(n, "avg by (job) (fleet_metric)", end, ""));
        assert_eq!(avg.values().copied().collect::<Vec<_>>(), vec![1.0]);
        let count = vector(&instant(n, "count(fleet_metric)", end, ""));
        assert_eq!(
            count.values().copied().collect::<Vec<_>>(),
            vec![TARGETS as f64]
        );
    }
    let pushed_down = c
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
        .filter(|l| l.contains("aggregation pushed down"))
        .count();
    assert_eq!(
        pushed_down,
        3,
        "every node pushed the aggregation down:\n{}",
        c.logs()
    );
}
