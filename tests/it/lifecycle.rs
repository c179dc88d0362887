//! Node lifecycle: crash recovery, config reloads, start-up errors and CLI commands.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;

fn one_job(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 500ms\nscrape_configs:\n  - job_name: crash\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Samples of `demo_counter` in [start, end] from a range query.
fn samples(node: &Node, start: f64, end: f64) -> Vec<(f64, f64)> {
    let v = node.get_json(&format!(
        "/api/v1/query_range?query=demo_counter&start={start}&end={end}&step=1"
    ));
    assert_eq!(v["status"], "success", "{v}");
    let r = v["data"]["result"].as_array().unwrap();
    r.first()
        .map(|s| {
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_f64().unwrap(),
                        p[1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Raw samples of `demo_counter` in the hour up to `t` (an instant query at `t`).
fn raw_count(node: &Node, t: f64) -> f64 {
    node.query_at("count_over_time(demo_counter[1h])", t)
        .first()
        .map(value_of)
        .unwrap_or(0.0)
}

#[test]
fn kill_9_loses_at_most_the_last_seconds_and_restart_recovers() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_counter 1\n"));
    let mut node = Node::start(dir.path(), &one_job(&t.target()), &[]);
    // Let it scrape a while.
    wait_for("10 s of samples", Duration::from_secs(60), || {
        let r = node.query("count_over_time(demo_counter[1h])");
        match r.first() {
            Some(s) if value_of(s) >= 10.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // What the node acknowledged at a fixed instant: its raw samples up to `acked_at`
    // (every one visible to a query, so committed).
    let acked_at = now_s();
    let n_acked = raw_count(&node, acked_at);
    // The WAL is written every flush interval (1 s): kill once it has been written
    // since, so that the kill lands at most one flush interval after `acked_at`
    // (kill -9 keeps what reached the file; the loss allowed is what came later).
    let wal = "shoal_tsdb_wal_written_bytes_total ";
    let written = node.metric(wal).expect("WAL bytes metric");
    wait_for(
        "a WAL write after the count",
        Duration::from_secs(30),
        || match node.metric(wal) {
            Some(w) if w > written => Ok(()),
            other => Err(format!("{other:?} <= {written}")),
        },
    );
    let killed_at = now_s();
    let n_killed = raw_count(&node, killed_at);
    node.kill9();

    let port = free_port();
    let node = Node::start_with(
        dir.path(),
        &node.config.clone(),
        &node.data_dir.clone(),
        port,
        &[],
    );
    // Every raw sample acknowledged before the last WAL write is back (none more).
    assert_eq!(
        raw_count(&node, acked_at),
        n_acked,
        "raw samples up to {acked_at} after the restart (before the kill: {n_acked})"
    );
    // At the kill instant, at most the samples of the last flush interval are missing
    // (scrape interval 1 s: two, allowing for the phase of the flush).
    let n = raw_count(&node, killed_at);
    assert!(
        n >= n_killed - 2.0 && n <= n_killed + 1.0,
        "raw samples up to the kill after the restart: {n}, before the kill: {n_killed}"
    );
    // And it goes on scraping into the same series.
    wait_for("new samples after restart", Duration::from_secs(30), || {
        let after = samples(&node, now_s() - 5.0, now_s());
        if !after.is_empty() {
            Ok(())
        } else {
            Err("none".into())
        }
    });
}

#[test]
fn reload_rejects_a_bad_config_and_keeps_running() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_counter 1\n"));
    let node = Node::start(
        dir.path(),
        &one_job(&t.target()),
        &["--web.enable-lifecycle"],
    );

    std::fs::write(&node.config, "global:\n  scrape_intervall: 1s\n").unwrap();
    let (code, body) = http("POST", &node.url("/-/reload"), None, b"").unwrap();
    assert_eq!(code, 500);
    assert!(
        body.contains("scrape_intervall"),
        "the error names the bad key: {body}"
    );
    let cfg = node.get_json("/api/v1/status/config");
    assert!(
        cfg["data"]["yaml"]
            .as_str()
            .unwrap()
            .contains("job_name: crash"),
        "old config still active"
    );
    let m = http_get(&node.url("/metrics")).unwrap().1;
    assert!(m.contains("shoal_config_last_reload_successful 0"), "{m}");

    // A good config through SIGHUP: the new job appears.
    let cfg = format!(
        "{}  - job_name: second\n    static_configs:\n      - targets: ['{}']\n",
        one_job(&t.target()),
        t.target()
    );
    std::fs::write(&node.config, cfg).unwrap();
    node.signal("HUP");
    wait_for("job second to appear", Duration::from_secs(30), || {
        let v = node.get_json("/api/v1/targets");
        let jobs: Vec<String> = v["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["scrapePool"].as_str().unwrap().to_string())
            .collect();
        if jobs.contains(&"second".to_string()) {
            Ok(())
        } else {
            Err(format!("{jobs:?}"))
        }
    });
    let m = http_get(&node.url("/metrics")).unwrap().1;
    assert!(m.contains("shoal_config_last_reload_successful 1"), "{m}");
}

#[test]
fn sigterm_stops_cleanly_and_data_survives() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_counter 1\n"));
    let mut node = Node::start(dir.path(), &one_job(&t.target()), &[]);
    wait_for("3 samples", Duration::from_secs(30), || {
        let r = node.query("count_over_time(demo_counter[1h])");
        match r.first() {
            Some(s) if value_of(s) >= 3.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Raw samples up to a fixed instant: the windows checked after the restart end
    // before it, so the restarted node's own scrapes cannot make up for a loss.
    let at = now_s();
    let n = raw_count(&node, at);
    let st = node.terminate();
    assert!(st.success(), "exit status {st}");
    let node = Node::start_with(
        dir.path(),
        &node.config.clone(),
        &node.data_dir.clone(),
        free_port(),
        &[],
    );
    assert_eq!(
        raw_count(&node, at),
        n,
        "all samples up to {at} kept after a clean stop"
    );
}

#[test]
fn bad_config_at_start_is_a_clear_error() {
    let dir = tempdir();
    let cfg = dir.path().join("bad.yml");
    std::fs::write(
        &cfg,
        "scrape_configs:\n  - job_name: a\n    scrape_intervall: 5s\n",
    )
    .unwrap();
    let out = Command::new(shoal_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scrape_intervall"), "{err}");

    std::fs::write(&cfg, "remote_write:\n  - url: http://x\n").unwrap();
    let out = Command::new(shoal_bin())
        .args(["check", "config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("remote_write") && text.contains("not supported"),
        "{text}"
    );
}

#[test]
fn check_config_accepts_a_valid_file_with_rules() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n",
    )
    .unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        "rule_files: ['rules.yml']\nscrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['localhost:1']\n",
    )
    .unwrap();
    let out = Command::new(shoal_bin())
        .args(["check", "config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SUCCESS"), "{text}");

    std::fs::write(
        dir.path().join("rules.yml"),
        "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up\n",
    )
    .unwrap();
    let out = Command::new(shoal_bin())
        .args(["check", "config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a rule with a bad expression fails the check"
    );
}

#[test]
fn demo_runs_a_node_with_its_fleet_and_stops_on_ctrl_c() {
    let dir = tempdir();
    // The demo's nodes listen on port, port+1, port+2; its one target after them.
    let ports = crate::harness::free_port_range(4);
    let port = ports.base;
    let fleet_port = port + 3;
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let out_path = dir.path().join("demo.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = crate::harness::GroupChild::spawn(
        Command::new(shoal_bin())
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--fleet-port",
                &fleet_port.to_string(),
                "--targets",
                "1",
                "--series-per-target",
                "50",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("demo-data"))
            .stdout(out)
            .stderr(log),
    );
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query=scrape_samples_scraped");
    // The banner (printed once the cluster has formed) gives the URLs to open.
    let banner = format!("http://127.0.0.1:{port}");
    let v = wait_for(
        "the demo to print its banner and scrape its fleet",
        Duration::from_secs(60),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("demo.log"));
                panic!(
                    "demo exited early: {st}; its log:\n{}",
                    log.unwrap_or_default()
                );
            }
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            if !stdout.contains(&banner) {
                return Err(format!("no banner yet: {stdout}"));
            }
            let (_, body) = http_get(&url)?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                Ok(v)
            } else {
                Err(body)
            }
        },
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "50");
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "demo exit status {st}");
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    assert!(stdout.contains("stopping the demo"), "{stdout}");
}

#[test]
fn promql_test_command_reports_failures_and_exit_status() {
    let dir = tempdir();
    let scripts: Vec<std::path::PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/promql"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "test"))
            .collect();
    assert!(!scripts.is_empty());
    let out = Command::new(shoal_bin())
        .arg("promql-test")
        .args(&scripts)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    let last = text.lines().last().unwrap_or("");
    assert!(
        last.ends_with(" failed") && last.contains(" passed, 0 failed"),
        "{last}"
    );

    let bad = dir.path().join("bad.test");
    std::fs::write(
        &bad,
        "load 1m\n  m 1 2 3\n\neval instant at 2m m\n  m 4\n\neval instant at 1m m\n  m 2\n",
    )
    .unwrap();
    let out = Command::new(shoal_bin())
        .arg("promql-test")
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !out.status.success(),
        "a failing case makes the exit status non-zero: {text}"
    );
    assert!(
        text.contains("bad.test:4"),
        "the failing case is named by file:line: {text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("1 passed, 1 failed"),
        "{text}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_counter 1\n"));
    let mut node = Node::start(dir.path(), &one_job(&t.target()), &["--log.format", "json"]);
    let st = node.terminate();
    assert!(st.success());
    let log = std::fs::read_to_string(&node.log).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

#[test]
fn logs_to_a_file_are_plain_text_without_colour_codes() {
    // Logs that go to a file or journald (not a terminal) carry no ANSI escapes: they
    // are read with grep and parsed by log shippers (`key=value` must stay intact).
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_counter 1\n"));
    let mut node = Node::start(dir.path(), &one_job(&t.target()), &[]);
    let st = node.terminate();
    assert!(st.success());
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.lines().count() >= 2, "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
    assert!(log.contains(" INFO "), "{log}");
}
