//! The HTTP API's shapes and errors, as Prometheus's.

use std::time::Duration;

use crate::harness::*;

fn node_with_data() -> (tempfile::TempDir, TargetServer, Node) {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("demo_g{a=\"x\"} 1.5\ndemo_g{a=\"y\"} NaN\ndemo_h +Inf\n"),
    );
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  external_labels:\n    site: t\nscrape_configs:\n  - job_name: api\n    static_configs:\n      - targets: ['{}']\n",
        t.target()
    );
    let node = Node::start(dir.path(), &cfg, &[]);
    wait_for("data", Duration::from_secs(30), || {
        let r = node.query("demo_g");
        if r.len() == 2 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    (dir, t, node)
}

#[test]
fn errors_have_prometheus_shape_and_status() {
    let (_d, _t, node) = node_with_data();
    let cases = [
        ("/api/v1/query?query=sum(", 400, "bad_data"),
        ("/api/v1/query", 400, "bad_data"),
        ("/api/v1/query?query=up&time=yesterday", 400, "bad_data"),
        (
            "/api/v1/query_range?query=up&start=10&end=5&step=1",
            400,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=100000&step=1",
            400,
            "bad_data",
        ),
        (
            "/api/v1/query_range?query=up&start=0&end=10&step=0",
            400,
            "bad_data",
        ),
        ("/api/v1/series", 400, "bad_data"),
        ("/api/v1/series?match[]=%7B%7D", 400, "bad_data"),
        ("/api/v1/label/1bad/values", 400, "bad_data"),
        ("/api/v1/nope", 404, "not_found"),
    ];
    for (path, code, etype) in cases {
        let (c, body) = http_get(&node.url(path)).unwrap();
        assert_eq!(c, code, "{path}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(v["status"], "error", "{path}");
        assert_eq!(v["errorType"], etype, "{path}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
}

#[test]
fn query_results_have_prometheus_shapes() {
    let (_d, _t, node) = node_with_data();
    let v = node.get_json("/api/v1/query?query=demo_g&time=2000000000");
    assert_eq!(v["data"]["resultType"], "vector");
    let v = node.get_json("/api/v1/query?query=1%2B1&time=1700000000.5");
    assert_eq!(v["data"]["resultType"], "scalar");
    assert_eq!(v["data"]["result"][0].as_f64().unwrap(), 1_700_000_000.5);
    assert_eq!(v["data"]["result"][1], "2");
    let v = node.get_json("/api/v1/query?query=%22hi%22&time=1");
    assert_eq!(v["data"]["resultType"], "string");
    assert_eq!(v["data"]["result"][1], "hi");
    // NaN and Inf are spelled as Prometheus spells them.
    let r = node.query("demo_g{a=\"y\"}");
    assert_eq!(r[0]["value"][1], "NaN");
    let r = node.query("demo_h");
    assert_eq!(r[0]["value"][1], "+Inf");
    let r = node.query("-demo_h");
    assert_eq!(r[0]["value"][1], "-Inf");
    // POST form bodies work like GET.
    let (c, body) = http(
        "POST",
        &node.url("/api/v1/query"),
        Some("application/x-www-form-urlencoded"),
        b"query=demo_g%7Ba%3D%22x%22%7D",
    )
    .unwrap();
    assert_eq!(c, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "1.5");
    // A range query returns a matrix.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // `now` is truncated to the second: end a little later so the first scrape is inside.
    let v = node.get_json(&format!(
        "/api/v1/query_range?query=demo_g&start={}&end={}&step=1s",
        now - 10,
        now + 5
    ));
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn status_endpoints() {
    let (_d, _t, node) = node_with_data();
    let v = node.get_json("/api/v1/status/buildinfo");
    assert_eq!(v["status"], "success");
    assert!(v["data"]["version"].as_str().is_some());
    let v = node.get_json("/api/v1/status/config");
    assert!(
        v["data"]["yaml"]
            .as_str()
            .unwrap()
            .contains("job_name: api")
    );
    let v = node.get_json("/api/v1/status/flags");
    assert!(v["data"]["storage.tsdb.retention.time"].is_string());
    let (c, b) = http_get(&node.url("/-/healthy")).unwrap();
    assert_eq!(c, 200, "{b}");
    let (_, m) = http_get(&node.url("/metrics")).unwrap();
    for name in [
        "shoal_tsdb_samples_appended_total",
        "shoal_tsdb_head_series",
        "shoal_scrapes_total",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(
        m.contains(r#"shoal_http_requests_total{handler="/api/v1/status/buildinfo",code="200"} 1"#),
        "{m}"
    );
}
