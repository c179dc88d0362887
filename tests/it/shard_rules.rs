//! Shard-level rules across target moves (issue 16, "history follows the target",
//! item 7): every node records `shard:` series over the targets it counts, the leader
//! sums them into `job:` series, and through a join and a graceful leave the committed
//! `job:` samples equal the direct aggregate over all raw data at the same instants.
//!
//! Twenty counters grow by 10/s each. Every node records
//! `shard:x:rate1m = sum without (instance) (rate(x_total[1m]))` and
//! `shard:up:sum = sum without (instance) (up)` every second; the leader records their
//! `sum without (shard)` as `job:x:rate1m` and `job:up:sum` every 2 s. A fourth node
//! joins, scrapes its share for 35 s and leaves (SIGTERM: drain, leave). After the run
//! every committed `job:` sample is compared with `sum(rate(x_total[1m]))` and
//! `sum(up)` evaluated by a cluster query (every member's raw data, replica-aware
//! merge) at its timestamp. A second test runs three nodes with two replicas per
//! target: each target is counted once (by its first owner), not twice.
//!
//! Tolerance: 3 % for the rate. Both sides see the same raw samples; what differs is
//! when (the shard rates are up to one rule interval older than the `job:` sample's
//! timestamp, which a steady rate does not notice) and counter jitter (each target's
//! counter steps every 100 ms, so a scrape reads it up to 1–2 counts late: about
//! ±0.3 % of a target's 600 counts per minute, less over twenty targets). One target
//! counted twice or not at all is 5 % of the sum, so 3 % catches it. `up` is counted
//! exactly (the direct sum is 20 throughout).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{TestCluster, str_of, view};
use crate::harness::*;
use crate::master::Counters;

const TARGETS: usize = 20;
const RATE_TOLERANCE: f64 = 0.03;
/// How long the committed `job:` samples are compared after each move.
const AFTER_MOVE: f64 = 70.0;

const RULES: &str = r#"groups:
  - name: shard
    interval: 1s
    rules:
      - record: shard:x:rate1m
        expr: sum without (instance) (rate(x_total[1m]))
      - record: shard:up:sum
        expr: sum without (instance) (up)
  - name: job
    interval: 2s
    scope: global
    rules:
      - record: job:x:rate1m
        expr: sum without (shard) (shard:x:rate1m)
      - record: job:up:sum
        expr: sum without (shard) (shard:up:sum)
"#;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn sleep_until(t: f64) {
    let d = t - unix_now();
    if d > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(d));
    }
}

/// Active targets of a node that it is not handing off.
fn scraping(node: &Node) -> Result<usize, String> {
    let (code, body) = http_get(&node.url("/api/v1/targets?state=active"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
    Ok(v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["handingOff"] != true)
        .count())
}

/// Waits until the nodes `idx` agree on one assignment over `idx.len()` up members
/// (`replicas` owners per target) and each scrapes (handoffs over) what it says.
fn settle(c: &TestCluster, idx: &[usize], replicas: u64) {
    wait_for(
        "the nodes to settle on an assignment",
        Duration::from_secs(60),
        || {
            let views: Vec<Value> = idx
                .iter()
                .map(|&i| view(&c.nodes[i]))
                .collect::<Result<_, _>>()?;
            let first = &views[0];
            let up: BTreeMap<String, u64> = first["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["state"] == "up")
                .map(|m| (str_of(&m["id"]), m["targets"].as_u64().unwrap_or(0)))
                .collect();
            if up.len() != idx.len() || up.values().sum::<u64>() != replicas * TARGETS as u64 {
                return Err(format!("members: {first}"));
            }
            for (&i, v) in idx.iter().zip(&views) {
                if v["assignmentViewIndex"] != first["assignmentViewIndex"]
                    || v["assignmentViewIndex"].is_null()
                {
                    return Err("assignment views differ".into());
                }
                let mine = scraping(&c.nodes[i])? as u64;
                if up.get(&str_of(&v["nodeId"])) != Some(&mine) {
                    return Err(format!("node {i} scrapes {mine}: {up:?}"));
                }
            }
            Ok(())
        },
    );
}

/// `(t ms, value)` of the raw samples of the one series `q` selects over
/// `[from, end]`, as `node` answers for the cluster.
fn raw(node: &Node, q: &str, from: f64, end: f64) -> Vec<(i64, f64)> {
    let window = (end - from).ceil() as u64 + 1;
    let r = node.query_at(&format!("{q}[{window}s]"), end);
    assert_eq!(r.len(), 1, "{q}: {r:?}");
    r[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
            (t, p[1].as_str().unwrap().parse::<f64>().unwrap())
        })
        .filter(|(t, _)| *t as f64 >= from * 1000.0)
        .collect()
}

/// `q` evaluated by `node` (a cluster query) at every timestamp of `at` (one grid).
fn direct(node: &Node, q: &str, at: &[(i64, f64)], step_ms: i64) -> BTreeMap<i64, f64> {
    let (start, end) = (at.first().unwrap().0, at.last().unwrap().0);
    let v = node.get_json(&format!(
        "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step={:.3}",
        urlencode(q),
        start as f64 / 1000.0,
        end as f64 / 1000.0,
        step_ms as f64 / 1000.0
    ));
    assert_eq!(v["status"], "success", "{q}: {v}");
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 1, "{q}: {v}");
    r[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                p[1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect()
}

struct Phase {
    name: &'static str,
    from: f64,
    to: f64,
}

/// Committed `job:` samples a move may leave off, each within its switch window: the
/// members apply the view that moves a target a few milliseconds apart, so one shard
/// evaluation slot may count the moved targets on both nodes or on neither (a known
/// limit: an agreed switch time in the committed log would remove it).
const SWITCH_SLOTS: usize = 1;

/// Compares the committed `job` series with the direct aggregate at each of its
/// samples; returns per phase the largest error (relative when `relative`) and the
/// number of samples compared, and the samples off: outside every `switches` window,
/// and beyond [`SWITCH_SLOTS`] within one.
fn compare(
    node: &Node,
    job: &str,
    direct_q: &str,
    (from, end): (f64, f64),
    phases: &[Phase],
    relative: bool,
    switches: &[(f64, f64)],
) -> (Vec<(f64, usize)>, Vec<String>) {
    let committed = raw(node, job, from, end);
    assert!(committed.len() > 5, "{job}: {committed:?}");
    let step = committed.windows(2).map(|w| w[1].0 - w[0].0).min().unwrap();
    let want = direct(node, direct_q, &committed, step);
    let mut out = vec![(0.0f64, 0usize); phases.len()];
    let mut worst = Vec::new();
    let mut in_switch = vec![Vec::new(); switches.len()];
    for &(t, v) in &committed {
        let Some(&d) = want.get(&t) else {
            panic!("{direct_q} has no value at {t}: {want:?}");
        };
        let err = if relative {
            (v - d).abs() / d.abs().max(1e-9)
        } else {
            (v - d).abs()
        };
        let ts = t as f64 / 1000.0;
        for (i, p) in phases.iter().enumerate() {
            if ts >= p.from && ts < p.to {
                out[i].0 = out[i].0.max(err);
                out[i].1 += 1;
            }
        }
        if err > if relative { RATE_TOLERANCE } else { 0.5 } {
            let off = format!("t={ts:.3}: {job} {v} vs {direct_q} {d}");
            match switches.iter().position(|&(a, b)| ts >= a && ts <= b) {
                Some(k) => in_switch[k].push(off),
                None => worst.push(off),
            }
        }
    }
    for (k, offs) in in_switch.into_iter().enumerate() {
        if offs.len() > SWITCH_SLOTS {
            worst.extend(offs.into_iter().map(|o| format!("{o} (switch window {k})")));
        } else if !offs.is_empty() {
            eprintln!("{job}: one switch slot off at move {k}: {offs:?}");
        }
    }
    (out, worst)
}

/// The counters, the rule file's directory and the config scraping the counters.
fn setup() -> (Counters, tempfile::TempDir, String) {
    let counters = Counters::start(TARGETS);
    let rules_dir = tempdir();
    let rules = rules_dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let mut cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n",
        rules.display()
    );
    for s in &counters.servers {
        cfg.push_str(&format!("      - targets: ['{}']\n", s.target()));
    }
    (counters, rules_dir, cfg)
}

#[test]
fn job_sums_equal_the_raw_aggregate_through_a_join_and_a_leave() {
    let (counters, _rules_dir, cfg) = setup();
    let mut c = TestCluster::start_with_config(&["127.0.0.1"; 3], &cfg, &[]);
    settle(&c, &[0, 1, 2], 1);
    // Compared from when every rate window holds a minute of data.
    let from = unix_now() + 62.0;
    sleep_until(from + 10.0);

    let joined = unix_now();
    let late = c.add("late", "127.0.0.1");
    settle(&c, &[0, 1, 2, late], 1);
    let join_settled = unix_now();
    let gained = scraping(&c.nodes[late]).unwrap();
    assert!(gained > 0, "the new node got no targets: nothing moved");
    sleep_until(joined + 35.0);

    let left = unix_now();
    let st = c.nodes[late].terminate();
    assert!(st.success(), "SIGTERM exit: {st}");
    settle(&c, &[0, 1, 2], 1);
    sleep_until(left + AFTER_MOVE + 3.0);
    let end = unix_now() - 2.0;

    let phases = [
        Phase {
            name: "before the join",
            from,
            to: joined,
        },
        Phase {
            name: "the join and after",
            from: joined,
            to: left,
        },
        Phase {
            name: "the leave and after",
            from: left,
            to: left + AFTER_MOVE,
        },
        Phase {
            name: "whole run",
            from,
            to: end + 1.0,
        },
    ];
    // Where the ownership switches: from the join until the cluster settled, and the
    // first seconds after SIGTERM (the leave is committed at once).
    let switches = [(joined, join_settled + 2.0), (left, left + 4.0)];
    let mut failures = Vec::new();
    for i in [0, 1] {
        let node = &c.nodes[i];
        let (rate, rate_bad) = compare(
            node,
            "job:x:rate1m",
            "sum(rate(x_total{job=\"fleet\"}[1m]))",
            (from, end),
            &phases,
            true,
            &switches,
        );
        let (up, up_bad) = compare(
            node,
            "job:up:sum",
            "sum(up{job=\"fleet\"})",
            (from, end),
            &phases,
            false,
            &switches,
        );
        for (k, p) in phases.iter().enumerate() {
            eprintln!(
                "node {i}, {}: job:x:rate1m max relative error {:.4} ({} samples); job:up:sum max difference {} ({} samples)",
                p.name, rate[k].0, rate[k].1, up[k].0, up[k].1
            );
            assert!(rate[k].1 > 0, "no job:x:rate1m samples {}", p.name);
        }
        failures.extend(rate_bad.into_iter().map(|s| format!("node {i}: {s}")));
        failures.extend(up_bad.into_iter().map(|s| format!("node {i}: {s}")));
    }
    eprintln!("the new node gained {gained} of {TARGETS} targets");
    assert!(
        failures.is_empty(),
        "{} committed job: samples differ from the raw aggregate (rate tolerance {RATE_TOLERANCE}, up exact); join at {joined:.3}, leave at {left:.3}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(counters);
}

/// With two replicas every target is scraped by two nodes; only its first owner counts
/// it, so the `job:` sums equal the aggregate over the (deduplicated) raw data rather
/// than twice it.
#[test]
fn job_sums_count_each_target_once_with_two_replicas() {
    let (counters, _rules_dir, cfg) = setup();
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        &cfg,
        &["--cluster.replication-factor", "2"],
    );
    settle(&c, &[0, 1, 2], 2);
    let from = unix_now() + 62.0;
    sleep_until(from + 30.0);
    let end = unix_now() - 2.0;
    let phases = [Phase {
        name: "two replicas",
        from,
        to: end + 1.0,
    }];
    let (rate, rate_bad) = compare(
        &c.nodes[0],
        "job:x:rate1m",
        "sum(rate(x_total{job=\"fleet\"}[1m]))",
        (from, end),
        &phases,
        true,
        &[],
    );
    let (up, up_bad) = compare(
        &c.nodes[0],
        "job:up:sum",
        "sum(up{job=\"fleet\"})",
        (from, end),
        &phases,
        false,
        &[],
    );
    eprintln!(
        "two replicas: job:x:rate1m max relative error {:.4} ({} samples); job:up:sum max difference {} ({} samples)",
        rate[0].0, rate[0].1, up[0].0, up[0].1
    );
    let bad: Vec<String> = rate_bad.into_iter().chain(up_bad).collect();
    assert!(
        bad.is_empty(),
        "{} committed job: samples differ from the raw aggregate:\n{}",
        bad.len(),
        bad.join("\n")
    );
    drop(counters);
}
