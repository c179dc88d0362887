//! Scraping end to end: a real `shoal run` scraping test targets over HTTP.

use std::time::Duration;

use crate::harness::*;

const GOOD: &str = "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\n\
demo_requests_total{path=\"/a\"} 10\ndemo_requests_total{path=\"/b\"} 20\n\
# TYPE demo_temp gauge\ndemo_temp 21.5\n";

fn config(interval: &str, jobs: &[(&str, Vec<String>, &str)]) -> String {
    let mut s =
        format!("global:\n  scrape_interval: {interval}\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, targets, extra) in jobs {
        let t: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        s.push_str(&format!(
            "  - job_name: {job}\n{extra}    static_configs:\n      - targets: [{}]\n",
            t.join(", ")
        ));
    }
    s
}

/// The active target of `job` from /api/v1/targets.
/// The active target of `job`; an error (to wait on) while discovery has not got it yet.
fn target_of(node: &Node, job: &str) -> Result<serde_json::Value, String> {
    let v = node.get_json("/api/v1/targets");
    v["data"]["activeTargets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["scrapePool"] == job))
        .cloned()
        .ok_or_else(|| format!("no active target for job {job}: {v}"))
}

#[test]
fn scrapes_a_target_and_serves_its_series() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text(GOOD));
    let node = Node::start(
        dir.path(),
        &config("1s", &[("demo", vec![t.target()], "")]),
        &[],
    );

    wait_for("the target to be up", Duration::from_secs(30), || {
        let tg = target_of(&node, "demo")?;
        if tg["health"] == "up" {
            Ok(())
        } else {
            Err(tg.to_string())
        }
    });
    let tg = target_of(&node, "demo").unwrap();
    assert_eq!(tg["labels"]["job"], "demo");
    assert_eq!(tg["labels"]["instance"], t.target());
    assert_eq!(tg["scrapeUrl"], format!("http://{}/metrics", t.target()));
    assert_eq!(tg["lastError"], "");
    assert_eq!(tg["scrapeInterval"], "1s");

    let series = wait_for("series to be stored", Duration::from_secs(30), || {
        let v = node.get_json("/api/v1/series?match[]=demo_requests_total");
        let d = v["data"].as_array().cloned().unwrap_or_default();
        if d.len() == 2 {
            Ok(d)
        } else {
            Err(v.to_string())
        }
    });
    for s in &series {
        assert_eq!(s["job"], "demo");
        assert_eq!(s["instance"], t.target());
        assert_eq!(s["__name__"], "demo_requests_total");
    }
    // The scraper asked for the formats Prometheus asks for.
    let reqs = t.requests.lock().unwrap().clone();
    let (_, headers) = reqs.first().expect("the target was scraped");
    assert!(
        headers["accept"].contains("text/plain;version=0.0.4"),
        "{headers:?}"
    );
    assert!(
        headers["accept"].contains("application/openmetrics-text"),
        "{headers:?}"
    );
    assert!(headers.contains_key("x-prometheus-scrape-timeout-seconds"));

    let names = node.get_json("/api/v1/labels");
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for n in ["__name__", "instance", "job", "path"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let vals = node.get_json("/api/v1/label/__name__/values");
    let vals: Vec<&str> = vals["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for n in [
        "demo_requests_total",
        "demo_temp",
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    ] {
        assert!(vals.contains(&n), "{n} missing from {vals:?}");
    }

    let up = wait_for("up == 1", Duration::from_secs(30), || {
        let r = node.query("up{job=\"demo\"}");
        if r.len() == 1 && value_of(&r[0]) == 1.0 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(up[0]["metric"]["instance"], t.target());
    let scraped = node.query("scrape_samples_scraped{job=\"demo\"}");
    assert_eq!(value_of(&scraped[0]), 3.0);
}

#[test]
fn bad_targets_fail_alone_with_prometheus_errors() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/good", Reply::text(GOOD));
    let mut e500 = Reply::text("oops");
    e500.status = 500;
    t.set("/e500", e500);
    t.set(
        "/malformed",
        Reply::text("demo_requests_total{path=\"/a\" 10\n"),
    );
    let mut utf8 = Reply::text("");
    utf8.body = b"demo_x{a=\"\xff\xfe\"} 1\n".to_vec();
    t.set("/utf8", utf8);
    let mut slow = Reply::text(GOOD);
    slow.delay = Duration::from_secs(3);
    t.set("/slow", slow);
    let big = format!(
        "{GOOD}{}",
        "demo_pad{i=\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"} 1\n".repeat(100)
    );
    t.set("/big", Reply::text(&big));
    let many: String = (0..20)
        .map(|i| format!("demo_many{{i=\"{i}\"}} {i}\n"))
        .collect();
    t.set("/many", Reply::text(&many));
    t.set(
        "/labels",
        Reply::text("demo_l{a=\"1\",b=\"2\",c=\"3\",d=\"4\"} 1\n"),
    );

    let job = |name: &str, path: &str, extra: &str| {
        format!(
            "  - job_name: {name}\n    metrics_path: {path}\n{extra}    static_configs:\n      - targets: ['{}']\n",
            t.target()
        )
    };
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}{}{}{}{}{}{}{}",
        job("good", "/good", ""),
        job("e404", "/missing", ""),
        job("e500", "/e500", ""),
        job("malformed", "/malformed", ""),
        job("utf8", "/utf8", ""),
        job("slow", "/slow", ""),
        job("big", "/big", "    body_size_limit: 1KB\n"),
        job("many", "/many", "    sample_limit: 10\n"),
        job("labels", "/labels", "    label_limit: 3\n"),
    );
    let node = Node::start(dir.path(), &cfg, &[]);
    let expect = [
        ("e404", "server returned HTTP status 404 Not Found"),
        (
            "e500",
            "server returned HTTP status 500 Internal Server Error",
        ),
        ("malformed", "expected label name, got \"10\""),
        ("utf8", "invalid UTF-8 label value"),
        ("slow", "context deadline exceeded"),
        ("big", "body size limit exceeded"),
        ("many", "sample limit exceeded"),
        ("labels", "label_limit exceeded"),
    ];
    for (job, err) in expect {
        // `contains("")` would accept any text: every entry names its real message.
        assert!(!err.is_empty(), "{job}: no expected message");
        let tg = wait_for(
            &format!("{job} to be down"),
            Duration::from_secs(30),
            || {
                let tg = target_of(&node, job)?;
                if tg["health"] == "down" {
                    Ok(tg)
                } else {
                    Err(tg.to_string())
                }
            },
        );
        let last = tg["lastError"].as_str().unwrap();
        assert!(!last.is_empty(), "{job}: empty lastError");
        assert!(
            last.contains(err),
            "{job}: lastError {last:?} should contain {err:?}"
        );
        // Nothing of a failed scrape is stored; `up` is 0.
        let r = node.query(&format!("up{{job=\"{job}\"}}"));
        assert_eq!(r.len(), 1, "{job}: {r:?}");
        assert_eq!(value_of(&r[0]), 0.0, "{job}");
    }
    assert!(
        node.query("demo_many").is_empty(),
        "sample_limit: nothing of the scrape stored"
    );
    assert!(
        node.query("demo_l").is_empty(),
        "label_limit: nothing of the scrape stored"
    );
    assert!(
        node.query("demo_pad").is_empty(),
        "body_size_limit: nothing stored"
    );
    // The good target was scraped all along.
    let tg = target_of(&node, "good").unwrap();
    assert_eq!(tg["health"], "up");
    let r = node.query("demo_requests_total{job=\"good\"}");
    assert_eq!(r.len(), 2);
}

#[test]
fn vanished_series_and_removed_targets_go_stale() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set("/metrics", Reply::text("demo_a 1\ndemo_b 2\n"));
    let t2 = TargetServer::start();
    t2.set("/metrics", Reply::text("demo_c 3\n"));
    let node = Node::start(
        dir.path(),
        &config(
            "1s",
            &[
                ("one", vec![t.target()], ""),
                ("two", vec![t2.target()], ""),
            ],
        ),
        &["--web.enable-lifecycle"],
    );
    wait_for("both series", Duration::from_secs(30), || {
        let n =
            node.query("demo_a").len() + node.query("demo_b").len() + node.query("demo_c").len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} series"))
        }
    });
    // demo_b vanishes from the exposition: a staleness marker ends it at once (without
    // one it would stay visible for the 5 m lookback).
    t.set("/metrics", Reply::text("demo_a 1\n"));
    wait_for("demo_b to go stale", Duration::from_secs(30), || {
        let r = node.query("demo_b");
        if r.is_empty() {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(node.query("demo_a").len(), 1);

    // Job "two" leaves the config: its series and its `up` go stale too.
    std::fs::write(&node.config, config("1s", &[("one", vec![t.target()], "")])).unwrap();
    let (code, body) = http("POST", &node.url("/-/reload"), None, b"").unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("job two to go stale", Duration::from_secs(30), || {
        let r = node.query("demo_c");
        let up = node.query("up{job=\"two\"}");
        if r.is_empty() && up.is_empty() {
            Ok(())
        } else {
            Err(format!("{r:?} {up:?}"))
        }
    });
    // The history is still there.
    let r = node.query("count_over_time(demo_c[5m])");
    assert_eq!(r.len(), 1);
}

#[test]
fn honor_labels_and_metric_relabel_configs_apply() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("demo_x{job=\"inner\",keep=\"yes\"} 1\ndemo_x{job=\"inner\",keep=\"no\"} 2\n"),
    );
    let extra_honor = "    honor_labels: true\n    metric_relabel_configs:\n      - source_labels: [keep]\n        regex: 'no'\n        action: drop\n";
    let node = Node::start(
        dir.path(),
        &config(
            "1s",
            &[
                ("honor", vec![t.target()], extra_honor),
                ("plain", vec![t.target()], ""),
            ],
        ),
        &[],
    );
    wait_for("series from both jobs", Duration::from_secs(30), || {
        let r = node.query("demo_x");
        if r.len() == 3 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    // honor_labels keeps the exposed job; the dropped series is gone.
    let r = node.query("demo_x{job=\"inner\"}");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["metric"]["keep"], "yes");
    // Without honor_labels the target's job wins and the exposed one is exported_job.
    let r = node.query("demo_x{job=\"plain\"}");
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|s| s["metric"]["exported_job"] == "inner"));
}

#[test]
fn gzip_openmetrics_file_sd_auth_and_redirects() {
    use std::io::Write as _;
    let dir = tempdir();
    let t = TargetServer::start();
    // gzip-compressed text.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"demo_gz 7\n").unwrap();
    let mut r = Reply::text("");
    r.body = gz.finish().unwrap();
    r.headers.push(("Content-Encoding".into(), "gzip".into()));
    t.set("/gz", r);
    // OpenMetrics with float-second timestamps, an exemplar and # EOF.
    let mut om = Reply::text(
        "# TYPE demo_om counter\ndemo_om_total 3 # {trace_id=\"x\"} 1\ndemo_om_created 1\n# EOF\n",
    );
    om.content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8".into();
    t.set("/om", om);
    t.set("/auth", Reply::text("demo_auth 1\n"));
    // A redirect to the gzip body: followed by default, an error with
    // `follow_redirects: false`, as Prometheus.
    let mut moved = Reply::text("");
    moved.status = 302;
    moved.headers.push(("Location".into(), "/gz".into()));
    t.set("/moved", moved);
    // file_sd: targets from a JSON file, edited while running.
    let sd = dir.path().join("targets.json");
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["{}"], "labels": {{"team": "a"}}}}]"#,
            t.target()
        ),
    )
    .unwrap();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n\
         \x20 - job_name: gz\n    metrics_path: /gz\n    static_configs:\n      - targets: ['{t}']\n\
         \x20 - job_name: om\n    metrics_path: /om\n    static_configs:\n      - targets: ['{t}']\n\
         \x20 - job_name: auth\n    metrics_path: /auth\n    basic_auth:\n      username: u\n      password: p\n    static_configs:\n      - targets: ['{t}']\n\
         \x20 - job_name: redir\n    metrics_path: /moved\n    static_configs:\n      - targets: ['{t}']\n\
         \x20 - job_name: noredir\n    metrics_path: /moved\n    follow_redirects: false\n    static_configs:\n      - targets: ['{t}']\n\
         \x20 - job_name: filesd\n    metrics_path: /gz\n    file_sd_configs:\n      - files: ['targets.json']\n        refresh_interval: 1s\n",
        t = t.target()
    );
    let node = Node::start(dir.path(), &cfg, &[]);
    let r = wait_for("gzip series", Duration::from_secs(30), || {
        let r = node.query("demo_gz{job=\"gz\"}");
        if r.len() == 1 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(value_of(&r[0]), 7.0);
    wait_for("openmetrics series", Duration::from_secs(30), || {
        let r = node.query("demo_om_total");
        if r.len() == 1 && value_of(&r[0]) == 3.0 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    wait_for("auth series", Duration::from_secs(30), || {
        let r = node.query("demo_auth");
        if r.len() == 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    wait_for("redirected series", Duration::from_secs(30), || {
        let r = node.query("demo_gz{job=\"redir\"}");
        if r.len() == 1 && value_of(&r[0]) == 7.0 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let tg = wait_for("noredir down", Duration::from_secs(30), || {
        let tg = target_of(&node, "noredir")?;
        if tg["health"] == "down" {
            Ok(tg)
        } else {
            Err(tg.to_string())
        }
    });
    assert_eq!(
        tg["lastError"], "server returned HTTP status 302 Found",
        "{tg}"
    );
    let reqs = t.requests.lock().unwrap().clone();
    let auth = reqs
        .iter()
        .find(|(p, _)| p == "/auth")
        .expect("auth target scraped");
    assert_eq!(auth.1["authorization"], "Basic dTpw");
    // The file_sd target carries its file's labels; editing the file moves it.
    let r = wait_for("file_sd target", Duration::from_secs(30), || {
        let r = node.query("demo_gz{job=\"filesd\"}");
        if r.len() == 1 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(r[0]["metric"]["team"], "a");
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["{}"], "labels": {{"team": "b"}}}}]"#,
            t.target()
        ),
    )
    .unwrap();
    wait_for("file_sd change", Duration::from_secs(30), || {
        let r = node.query("demo_gz{job=\"filesd\"}");
        if r.len() == 1 && r[0]["metric"]["team"] == "b" {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
}
