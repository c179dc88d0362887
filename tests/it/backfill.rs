//! Backfill (issue 16): `shoal tsdb import openmetrics FILE --node ADDR` with a file
//! written by a real tool — the Python `prometheus_client` library's OpenMetrics output
//! with explicit timestamps (tests/run.sh installs it) — checked against what
//! Prometheus itself makes of the same file (`promtool tsdb create-blocks-from
//! openmetrics`, then a real `prometheus` on those blocks), on one node and through a
//! 3-node cluster that stores each series on its owner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::cluster::{TestCluster, str_of, view, wait_agreed};
use crate::federate::Prometheus;
use crate::harness::*;

/// Writes `bf_*` metric families with explicit timestamps over the 3 hours before
/// `END` (a whole minute, from argv) through `prometheus_client`'s OpenMetrics
/// exposition to argv[1], and the samples it wrote to argv[2] as JSON (labels,
/// `[ms, value text]`): the expected answer.
const GENERATOR: &str = r#"
import json, math, sys
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest

out, expected_out, end, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = end - 3 * 3600
expected = []

def text(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)

def add(family, labels, points):
    names = [n for n, _ in labels]
    family_labels = dict(labels)
    for ts, v in points:
        family.add_metric([family_labels[n] for n in names], v, timestamp=ts)
    name = family.name + ("_total" if family.type == "counter" else "")
    expected.append({
        "labels": dict(family_labels, __name__=name),
        "samples": [[int(round(ts * 1000)), text(v)] for ts, v in points],
    })

class Collector:
    def collect(self):
        g = GaugeMetricFamily(prefix + "temperature_celsius", "Room temperature",
                              labels=["job", "instance", "room"])
        for i in range(6):
            pts = [(start + 30 * k + (0.5 if k % 7 == 0 else 0),
                    20 + 5 * math.sin(k / 10 + i) + (1e-9 * k))
                   for k in range(360)]
            if i == 0:
                pts[100] = (pts[100][0], float("nan"))
                pts[101] = (pts[101][0], float("inf"))
            add(g, [("job", "sensors"), ("instance", "host-%d:9100" % i), ("room", 'r "%d"' % i)], pts)
        yield g
        c = CounterMetricFamily(prefix + "requests", "Requests served",
                                labels=["job", "instance", "path"])
        for i in range(4):
            total, pts = 0.0, []
            for k in range(360):
                total += (k * 7 + i) % 13 * 0.25
                pts.append((start + 30 * k + 15, total))
            add(c, [("job", "web"), ("instance", "web-%d:80" % i), ("path", "/api/%d" % i)], pts)
        yield c
        q = GaugeMetricFamily(prefix + "queue_length", "Queue length", labels=["queue"])
        for name in ["mail", "jobs"]:
            add(q, [("queue", name)], [(start + 60 * k, float(k % 17)) for k in range(180)])
        yield q

r = CollectorRegistry()
r.register(Collector())
with open(out, "wb") as f:
    f.write(generate_latest(r))
with open(expected_out, "w") as f:
    json.dump(expected, f)
"#;

/// One series' expected samples: labels → `[(ms, value text)]`.
type Expected = BTreeMap<BTreeMap<String, String>, Vec<(i64, String)>>;

/// The end of the file's time span (a whole minute about a minute ago) and the query
/// time that sees all of it.
fn span_end() -> i64 {
    let now = crate::sharding::unix_now() as i64;
    now - now % 60 - 60
}

/// Writes the file with `prefix` as its metric name prefix; returns the file and the
/// samples it holds.
fn write_file(dir: &Path, prefix: &str, end: i64) -> (PathBuf, Expected) {
    let script = dir.join("gen.py");
    std::fs::write(&script, GENERATOR).unwrap();
    let file = dir.join(format!("{prefix}backfill.om"));
    let expected = dir.join(format!("{prefix}expected.json"));
    let out = Command::new("python3")
        .arg(&script)
        .arg(&file)
        .arg(&expected)
        .arg(end.to_string())
        .arg(prefix)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "the generator failed (prometheus_client is needed; tests/run.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&expected).unwrap()).unwrap();
    let mut exp = Expected::new();
    for s in v.as_array().unwrap() {
        let labels: BTreeMap<String, String> = s["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), str_of(v)))
            .collect();
        let samples = s["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), str_of(&p[1])))
            .collect();
        exp.insert(labels, samples);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with("# EOF\n"), "not OpenMetrics: {text:.200}");
    (file, exp)
}

fn samples_of(e: &Expected) -> u64 {
    e.values().map(|s| s.len() as u64).sum()
}

/// `shoal tsdb import openmetrics FILE` against `node` with `extra` flags.
fn import(file: &Path, node: &Node, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "tsdb".into(),
        "import".into(),
        "openmetrics".into(),
        file.display().to_string(),
    ];
    args.extend(node.cli_target());
    args.extend(extra.iter().map(|s| s.to_string()));
    Command::new(shoal_bin()).args(&args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The number after `word ` in the CLI's summary line.
fn count(out: &str, word: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("imported "))
        .unwrap_or_else(|| panic!("no summary line: {out}"));
    let rest = line
        .split_once(&format!("{word} "))
        .unwrap_or_else(|| panic!("no {word:?} in {line}"))
        .1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn value_eq(a: &str, b: &str) -> bool {
    let parse = |s: &str| match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse::<f64>().unwrap(),
    };
    let (x, y) = (parse(a), parse(b));
    (x.is_nan() && y.is_nan()) || x == y
}

/// The raw samples of `{__name__=~"PREFIX.+"}[4h]` at `at` (seconds) from the JSON
/// answer of a query route.
fn raw_answer(v: &Value) -> Expected {
    assert_eq!(v["status"], "success", "{v}");
    assert!(
        v["warnings"].as_array().is_none_or(|w| w.is_empty()),
        "partial answer: {v}"
    );
    let mut out = Expected::new();
    for s in v["data"]["result"].as_array().unwrap() {
        let labels: BTreeMap<String, String> = s["metric"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), str_of(v)))
            .collect();
        let samples = s["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    (p[0].as_f64().unwrap() * 1000.0).round() as i64,
                    str_of(&p[1]),
                )
            })
            .collect();
        out.insert(labels, samples);
    }
    out
}

fn raw_query(prefix: &str, at: i64) -> String {
    format!(
        "query={}&time={at}",
        urlencode(&format!("{{__name__=~\"{prefix}.+\"}}[4h]"))
    )
}

/// Asserts that `got` holds exactly the expected series and samples (times to the
/// millisecond, values bit for bit as decimals; NaN as NaN).
fn assert_same(got: &Expected, want: &Expected, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: other series"
    );
    for (labels, w) in want {
        let g = &got[labels];
        assert_eq!(g.len(), w.len(), "{what}: {labels:?}: sample count");
        for (a, b) in g.iter().zip(w) {
            assert!(
                a.0 == b.0 && value_eq(&a.1, &b.1),
                "{what}: {labels:?}: got {a:?}, want {b:?}"
            );
        }
    }
}

#[test]
fn a_file_written_by_prometheus_client_reads_back_as_prometheus_reads_it() {
    let dir = tempdir();
    let end = span_end();
    let (file, expected) = write_file(dir.path(), "bf_", end);
    let samples = samples_of(&expected);
    assert_eq!(samples, 6 * 360 + 4 * 360 + 2 * 180);
    let at = end + 60;

    // Prometheus's own backfill of the file, served by a real Prometheus.
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&file)
        .arg(prom_dir.join("prom-data"))
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed (Debian package `prometheus`): {e}"));
    assert!(
        out.status.success(),
        "promtool refused the file: {}",
        text(&out)
    );
    let prom = Prometheus::start(&prom_dir, "global:\n  scrape_interval: 1m\n");
    let (_, body) =
        http_get(&prom.url(&format!("/api/v1/query?{}", raw_query("bf_", at)))).unwrap();
    let from_prometheus = raw_answer(&serde_json::from_str(&body).unwrap());
    assert_same(&from_prometheus, &expected, "prometheus");

    // A lone node without the admin API refuses, as Prometheus's admin routes do.
    let off_dir = dir.path().join("off");
    std::fs::create_dir_all(&off_dir).unwrap();
    let off = Node::start(&off_dir, "scrape_configs: []\n", &[]);
    let o = import(&file, &off, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("503") && text(&o).contains("admin APIs disabled"),
        "{}",
        text(&o)
    );
    drop(off);

    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let node = Node::start(
        &node_dir,
        "scrape_configs: []\n",
        &["--web.enable-admin-api"],
    );
    let o = import(&file, &node, &["--batch-size", "64KiB"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "checked {}: 12 series, {samples} samples",
            file.display()
        )),
        "{out}"
    );
    assert_eq!(count(&out, "stored"), samples, "{out}");
    assert_eq!(count(&out, "duplicate"), 0, "{out}");

    let v = node.get_json(&format!("/api/v1/query?{}", raw_query("bf_", at)));
    assert_same(&raw_answer(&v), &from_prometheus, "shoal vs prometheus");

    // Again: nothing new.
    let o = import(&file, &node, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(count(&out, "stored"), 0, "{out}");
    assert_eq!(count(&out, "duplicate"), samples, "{out}");
    let v = node.get_json(&format!("/api/v1/query?{}", raw_query("bf_", at)));
    assert_same(&raw_answer(&v), &expected, "after the second import");
    assert_eq!(
        node.metric("shoal_tsdb_import_samples_total{result=\"stored\"}"),
        Some(samples as f64)
    );
    assert_eq!(
        node.metric("shoal_tsdb_import_samples_total{result=\"duplicate\"}"),
        Some(samples as f64)
    );

    // Older than retention (15 d) or too far ahead (10 min): dropped and counted.
    let now = crate::sharding::unix_now() as i64;
    let odd = node_dir.join("odd.om");
    std::fs::write(
        &odd,
        format!(
            "# TYPE bf_old gauge\nbf_old 1 {}\nbf_old 2 {}\nbf_future 3 {}\n# EOF\n",
            now - 30 * 86400,
            now - 30 * 86400 + 15,
            now + 3600
        ),
    )
    .unwrap();
    let o = import(&odd, &node, &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(count(&out, "stored"), 0, "{out}");
    assert_eq!(count(&out, "dropped"), 3, "{out}");
    assert_eq!(
        node.metric("shoal_tsdb_import_samples_total{result=\"out_of_bounds\"}"),
        Some(2.0)
    );
    assert_eq!(
        node.metric("shoal_tsdb_import_samples_total{result=\"too_far_in_future\"}"),
        Some(1.0)
    );
}

/// The node ids of a cluster's nodes, in node order.
fn node_ids(c: &TestCluster) -> Vec<u64> {
    c.nodes
        .iter()
        .map(|n| str_of(&view(n).unwrap()["nodeId"]).parse().unwrap())
        .collect()
}

/// Asserts that each node's own data (`local=1`) holds exactly the series it owns by
/// `shard::placement` (its first `replicas` owners among the nodes), each whole;
/// returns the owners used.
fn assert_on_owners(
    c: &TestCluster,
    expected: &Expected,
    at: i64,
    replicas: usize,
) -> std::collections::BTreeSet<u64> {
    let ids = node_ids(c);
    let owners = shoal::shard::Assigner::new(ids.iter().copied());
    let keys = shoal::shard::placement::InstanceKeys::new();
    let mut used = std::collections::BTreeSet::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let v = n.get_json(&format!("/api/v1/query?local=1&{}", raw_query("bf_", at)));
        let local = raw_answer(&v);
        for (labels, want) in expected {
            let l = shoal::model::Labels::from_pairs(
                &labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            let key = shoal::shard::placement::placement_key(&l, &keys);
            let these = owners.owners(key, replicas);
            assert_eq!(these.len(), replicas);
            if replicas == 1 {
                assert_eq!(
                    shoal::shard::placement::owner_of(&l, &keys, &owners),
                    these.first().copied()
                );
            }
            used.extend(these.iter().copied());
            if these.contains(&ids[i]) {
                let got = local.get(labels).map_or(0, Vec::len);
                assert_eq!(got, want.len(), "node {i} owns {labels:?}");
            } else {
                assert!(
                    !local.contains_key(labels),
                    "node {i} holds {labels:?}, owned by {these:?}"
                );
            }
        }
    }
    used
}

/// Sum of a metric over the nodes.
fn total(c: &TestCluster, metric: &str) -> f64 {
    c.nodes
        .iter()
        .map(|n| n.metric(metric).unwrap_or(0.0))
        .sum()
}

#[test]
fn an_import_through_one_node_stores_each_series_on_its_owner() {
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
        &["--web.enable-admin-api"],
    );
    wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let end = span_end();
    let at = end + 60;
    let (file, expected) = write_file(c.dir.path(), "bf_", end);
    let samples = samples_of(&expected);
    let secret = c.dir.path().join("cluster.secret").display().to_string();

    // Without the secret, or with another one: 401, and nothing stored.
    let o = import(&file, &c.nodes[1], &[]);
    assert!(
        !o.status.success() && text(&o).contains("401"),
        "{}",
        text(&o)
    );
    let wrong = c.dir.path().join("wrong.secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let o = import(
        &file,
        &c.nodes[1],
        &["--cluster.secret-file", wrong.to_str().unwrap()],
    );
    assert!(
        !o.status.success() && text(&o).contains("401"),
        "{}",
        text(&o)
    );
    assert_eq!(
        total(&c, "shoal_tsdb_import_samples_total{result=\"stored\"}"),
        0.0
    );

    // A malformed file (a sample without a timestamp in the middle) is refused whole,
    // naming the line.
    let good = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    let bad_at = lines.len() / 2;
    let bad_line = lines[bad_at]
        .rsplit_once(' ')
        .map(|(head, _)| head.to_owned())
        .unwrap();
    lines[bad_at] = &bad_line;
    let bad = c.dir.path().join("bad.om");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let o = import(&bad, &c.nodes[1], &["--cluster.secret-file", &secret]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains(&format!("bad.om:{}: expected a timestamp", bad_at + 1)),
        "{out}"
    );
    assert!(out.contains("Nothing was imported"), "{out}");
    for (i, n) in c.nodes.iter().enumerate() {
        let v = n.get_json(&format!("/api/v1/query?local=1&{}", raw_query("bf_", at)));
        assert!(
            raw_answer(&v).is_empty(),
            "node {i} stored part of a bad file: {v}"
        );
    }
    assert_eq!(
        total(&c, "shoal_tsdb_import_samples_total{result=\"stored\"}"),
        0.0
    );

    // The import, through node 1, in several batches.
    let o = import(
        &file,
        &c.nodes[1],
        &["--cluster.secret-file", &secret, "--batch-size", "32KiB"],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}\n{}", c.logs());
    assert_eq!(count(&out, "stored"), samples, "{out}");

    // Every node answers every series' raw samples exactly.
    for (i, n) in c.nodes.iter().enumerate() {
        let v = n.get_json(&format!("/api/v1/query?{}", raw_query("bf_", at)));
        assert_same(&raw_answer(&v), &expected, &format!("node {i}"));
    }

    // Each series is on its owner, and only there.
    let used = assert_on_owners(&c, &expected, at, 1);
    assert!(used.len() >= 2, "every series on one node: nothing routed");
    assert_eq!(
        total(&c, "shoal_tsdb_import_samples_total{result=\"stored\"}"),
        samples as f64
    );
    let entry_requests =
        c.nodes[1].metric("shoal_tsdb_import_requests_total{source=\"backfill\",result=\"ok\"}");
    assert!(
        entry_requests.is_some_and(|n| n >= 2.0),
        "{entry_requests:?}"
    );

    // Again: nothing stored, everything a duplicate.
    let o = import(&file, &c.nodes[2], &["--cluster.secret-file", &secret]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(count(&out, "stored"), 0, "{out}");
    assert_eq!(count(&out, "duplicate"), samples, "{out}");
    assert_eq!(
        total(&c, "shoal_tsdb_import_samples_total{result=\"duplicate\"}"),
        samples as f64
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let v = n.get_json(&format!("/api/v1/query?{}", raw_query("bf_", at)));
        assert_same(
            &raw_answer(&v),
            &expected,
            &format!("node {i} after the second import"),
        );
    }
}

#[test]
fn with_two_replicas_a_backfilled_series_is_on_both_owners_and_read_once() {
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 3],
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
        &[
            "--web.enable-admin-api",
            "--cluster.replication-factor",
            "2",
        ],
    );
    wait_agreed(&c, &[0, 1, 2], 3, 3, 3);
    let end = span_end();
    let at = end + 60;
    let (file, expected) = write_file(c.dir.path(), "bf_", end);
    let samples = samples_of(&expected);
    let secret = c.dir.path().join("cluster.secret").display().to_string();
    let o = import(&file, &c.nodes[0], &["--cluster.secret-file", &secret]);
    let out = text(&o);
    assert!(o.status.success(), "{out}\n{}", c.logs());
    assert_eq!(count(&out, "stored"), 2 * samples, "one per copy: {out}");
    assert_eq!(assert_on_owners(&c, &expected, at, 2).len(), 3);
    // The cluster's answer shows each series once, exactly.
    for (i, n) in c.nodes.iter().enumerate() {
        let v = n.get_json(&format!("/api/v1/query?{}", raw_query("bf_", at)));
        assert_same(&raw_answer(&v), &expected, &format!("node {i}"));
    }
}
