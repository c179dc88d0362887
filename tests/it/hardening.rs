//! Hostile and failing surroundings: targets with wrong clocks or endless bodies, full
//! disks, corrupt files. Every test here failed on the code before its fix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Node, Reply, TargetServer, http_get, tempdir, urlencode, wait_for};

/// Sum of the `/metrics` samples named `name` whose label block contains every one of
/// `labels` (`k="v"` pieces).
pub fn metric_value(node: &Node, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = http_get(&node.url("/metrics")).expect("GET /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|p| rest.contains(p)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The raw samples of `sel` in the `range_s` seconds up to `at_ms`: `(t_ms, value)`.
pub fn raw_samples(node: &Node, sel: &str, range_s: u64, at_ms: i64) -> Vec<Vec<(i64, f64)>> {
    let q = format!("{sel}[{range_s}s]");
    let v = node.get_json(&format!(
        "/api/v1/query?query={}&time={}",
        urlencode(&q),
        at_ms as f64 / 1000.0
    ));
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (t, p[1].as_str().unwrap().parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// Largest gap between consecutive sample times, in ms.
fn max_gap(samples: &[(i64, f64)]) -> i64 {
    samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or(0)
}

/// Year 2100 and year 1990, in ms.
const YEAR_2100: i64 = 4_102_444_800_000;
const YEAR_1990: i64 = 631_152_000_000;

/// Checks that every good target has a complete `up` (no gap over two intervals) and a
/// `good_metric` sample for every `up` sample over `[from_ms, at_ms]`.
fn assert_good_targets_complete(node: &Node, n: usize, from_ms: i64, at_ms: i64) {
    let range = ((at_ms - from_ms) / 1000).max(1) as u64;
    let ups = raw_samples(node, "up{job=\"good\"}", range, at_ms);
    let goods = raw_samples(node, "good_metric", range, at_ms);
    assert_eq!(ups.len(), n, "up of every good target");
    assert_eq!(goods.len(), n, "good_metric of every good target");
    for (up, good) in ups.iter().zip(&goods) {
        assert!(
            up.len() as i64 >= (at_ms - from_ms) / 1000 - 3,
            "{} up samples over {} s",
            up.len(),
            range
        );
        assert!(up.iter().all(|s| s.1 == 1.0), "{up:?}");
        assert!(max_gap(up) <= 2_000, "a hole in up: {up:?}");
        assert_eq!(
            good.iter().map(|s| s.0).collect::<Vec<_>>(),
            up.iter().map(|s| s.0).collect::<Vec<_>>(),
            "a good_metric sample for every up sample"
        );
    }
}

#[test]
fn a_target_from_2100_or_1990_loses_nobody_else_a_sample() {
    let dir = tempdir();
    let goods: Vec<TargetServer> = (0..20)
        .map(|_| {
            let t = TargetServer::start();
            t.set("/metrics", Reply::text("good_metric 1\n"));
            t
        })
        .collect();
    let evil = TargetServer::start();
    evil.set(
        "/metrics",
        Reply::text(&format!(
            "evil_future 1 {YEAR_2100}\nevil_past 1 {YEAR_1990}\nevil_now 1\n"
        )),
    );
    // A target whose every sample is out of bounds: the scrape succeeds, nothing is
    // stored, and lastError says why.
    let only_future = TargetServer::start();
    only_future.set(
        "/metrics",
        Reply::text(&format!("only_future 1 {YEAR_2100}\n")),
    );
    let list = |ts: &[&TargetServer]| {
        ts.iter()
            .map(|t| format!("'{}'", t.target()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cfg = format!(
        concat!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n",
            "  - job_name: good\n    static_configs:\n      - targets: [{}]\n",
            "  - job_name: evil\n    static_configs:\n      - targets: [{}]\n",
            "  - job_name: only_future\n    static_configs:\n      - targets: [{}]\n",
        ),
        list(&goods.iter().collect::<Vec<_>>()),
        list(&[&evil]),
        list(&[&only_future]),
    );
    let flags = ["--storage.tsdb.maintenance-interval", "1s"];
    let mut node = Node::start(dir.path(), &cfg, &flags);
    let started = now_ms();
    // Several maintenance passes (sealing, truncation, retention) after the bad samples.
    wait_for(
        "rejections and maintenance",
        Duration::from_secs(60),
        || {
            let future = metric_value(
                &node,
                "shoal_scrape_samples_out_of_bounds_total",
                &["reason=\"too_far_in_future\"", "job=\"evil\""],
            );
            let old = metric_value(
                &node,
                "shoal_scrape_samples_out_of_bounds_total",
                &["reason=\"too_old\"", "job=\"evil\""],
            );
            let runs = metric_value(&node, "shoal_tsdb_maintenance_runs_total", &[]);
            if future >= 3.0 && old >= 3.0 && runs >= 5.0 && now_ms() - started >= 8_000 {
                Ok(())
            } else {
                Err(format!(
                    "future {future}, old {old}, maintenance runs {runs}"
                ))
            }
        },
    );
    let at = now_ms() - 1_000;
    assert_good_targets_complete(&node, 20, started + 2_000, at);
    assert!(node.query("evil_future").is_empty());
    assert!(node.query("evil_past").is_empty());
    assert_eq!(
        node.query("evil_now").len(),
        1,
        "the bad target's good series"
    );
    let tg = node.get_json("/api/v1/targets");
    let only = tg["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["job"] == "only_future")
        .cloned()
        .unwrap();
    let last = only["lastError"].as_str().unwrap();
    assert!(
        last.contains("too far in the future"),
        "lastError: {last:?}"
    );

    // A restart keeps every sample, and the node goes on taking them.
    assert!(node.terminate().success());
    let restarted_at = now_ms();
    let mut node = Node::start_with(
        dir.path(),
        &node.config.clone(),
        &node.data_dir.clone(),
        node.port,
        &flags,
    );
    wait_for("samples after the restart", Duration::from_secs(60), || {
        let runs = metric_value(&node, "shoal_tsdb_maintenance_runs_total", &[]);
        let ups = raw_samples(&node, "up{job=\"good\"}", 5, now_ms());
        let fresh = ups.len() == 20
            && ups
                .iter()
                .all(|u| u.last().is_some_and(|s| s.0 > restarted_at + 2_000));
        if runs >= 3.0 && fresh {
            Ok(())
        } else {
            Err(format!(
                "maintenance runs {runs}, {} fresh up series",
                ups.len()
            ))
        }
    });
    // Everything from before the restart is still there, sample for sample.
    assert_good_targets_complete(&node, 20, started + 2_000, at);
    let before: usize = raw_samples(&node, "up{job=\"good\"}", 3600, at)
        .iter()
        .map(Vec::len)
        .sum();
    assert!(before >= 20 * 6, "{before} up samples before the restart");
    node.kill9();
}
