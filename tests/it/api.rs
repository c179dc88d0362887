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
        r#"shoal_tsdb_import_samples_total{result="stored"} 0"#,
        r#"shoal_tsdb_import_samples_total{result="replica"} 0"#,
        "shoal_tsdb_import_chunks_total 0",
        r#"shoal_tsdb_import_requests_total{source="backfill",result="ok"} 0"#,
        r#"shoal_tsdb_import_requests_total{source="drain",result="error"} 0"#,
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(
        m.contains(r#"shoal_http_requests_total{handler="/api/v1/status/buildinfo",code="200"} 1"#),
        "{m}"
    );
}

#[test]
fn status_config_shows_secrets_as_secret() {
    let dir = tempdir();
    let cfg = "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: locked\n    basic_auth:\n      username: scraper\n      password: s3cr3t-pass\n    static_configs:\n      - targets: ['127.0.0.1:1']\n  - job_name: tokened\n    authorization:\n      credentials: s3cr3t-token\n    static_configs:\n      - targets: ['127.0.0.1:2']\n";
    let node = Node::start(dir.path(), cfg, &["--log.level", "debug"]);
    let v = node.get_json("/api/v1/status/config");
    let yaml = v["data"]["yaml"].as_str().unwrap();
    assert!(yaml.contains("job_name: locked"), "{yaml}");
    assert!(yaml.contains("username: scraper"), "{yaml}");
    assert_eq!(yaml.matches("<secret>").count(), 2, "{yaml}");
    let (_, flags) = http_get(&node.url("/api/v1/status/flags")).unwrap();
    // Scrapes were tried (and logged at debug) with the credentials.
    wait_for("scrapes", Duration::from_secs(30), || {
        let up = node.query("up");
        if up.len() == 2 {
            Ok(())
        } else {
            Err(format!("{up:?}"))
        }
    });
    let log = std::fs::read_to_string(&node.log).unwrap();
    for secret in ["s3cr3t-pass", "s3cr3t-token"] {
        assert!(!yaml.contains(secret), "{secret} in status/config");
        assert!(!flags.contains(secret), "{secret} in status/flags");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[test]
fn lifecycle_routes_need_web_enable_lifecycle() {
    let dir = tempdir();
    let cfg = "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: before\n    static_configs:\n      - targets: ['127.0.0.1:1']\n";
    let mut node = Node::start(dir.path(), cfg, &[]);
    std::fs::write(&node.config, cfg.replace("before", "after")).unwrap();
    for path in ["/-/reload", "/-/quit"] {
        let (code, body) = http("POST", &node.url(path), None, b"").unwrap();
        assert_eq!(
            (code, body.as_str()),
            (403, "Lifecycle API is not enabled."),
            "{path}"
        );
    }
    let yaml = node.get_json("/api/v1/status/config")["data"]["yaml"].clone();
    assert!(
        yaml.as_str().unwrap().contains("job_name: before"),
        "{yaml}"
    );
    assert!(node.child.try_wait().unwrap().is_none(), "still running");
    assert!(node.terminate().success());

    // With the flag: reload applies, quit stops the node cleanly.
    let port = node.port;
    let (config, data) = (node.config.clone(), node.data_dir.clone());
    drop(node);
    let mut node = Node::start_with(
        dir.path(),
        &config,
        &data,
        port,
        &["--web.enable-lifecycle"],
    );
    let (code, body) = http("POST", &node.url("/-/reload"), None, b"").unwrap();
    assert_eq!(code, 200, "{body}");
    let yaml = node.get_json("/api/v1/status/config")["data"]["yaml"].clone();
    assert!(yaml.as_str().unwrap().contains("job_name: after"), "{yaml}");
    let (code, body) = http("POST", &node.url("/-/quit"), None, b"").unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "Requesting termination... Goodbye!")
    );
    let st = wait_for("the node to exit", Duration::from_secs(30), || {
        node.child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or("running".to_string())
    });
    assert!(st.success(), "{st}");
}

/// Prometheus's admin API answers "admin APIs disabled" (503) without
/// `--web.enable-admin-api`; with it, what shoal has works and what it lacks says so.
#[test]
fn admin_routes_need_web_enable_admin_api() {
    let dir = tempdir();
    let cfg = "global:\n  scrape_interval: 15s\nscrape_configs: []\n";
    let node = Node::start(dir.path(), cfg, &[]);
    for route in ["snapshot", "delete_series", "clean_tombstones"] {
        for method in ["POST", "PUT"] {
            let url = node.url(&format!("/api/v1/admin/tsdb/{route}?match[]=up"));
            let (code, body) = http(method, &url, None, b"").unwrap();
            assert_eq!(code, 503, "{method} {route}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["errorType"], "unavailable");
            assert_eq!(v["error"], "admin APIs disabled");
        }
    }
    let (config, data, port) = (node.config.clone(), node.data_dir.clone(), node.port);
    drop(node);
    let node = Node::start_with(
        dir.path(),
        &config,
        &data,
        port,
        &["--web.enable-admin-api"],
    );
    let (code, body) = http(
        "POST",
        &node.url("/api/v1/admin/tsdb/clean_tombstones"),
        None,
        b"",
    )
    .unwrap();
    assert_eq!(code, 204, "{body}");
    for route in ["snapshot", "delete_series"] {
        let url = node.url(&format!("/api/v1/admin/tsdb/{route}?match[]=up"));
        let (code, body) = http("POST", &url, None, b"").unwrap();
        assert_eq!(code, 501, "{route}: {body}");
        assert!(body.contains("not supported by shoal yet"), "{body}");
    }
    assert_eq!(
        node.get_json("/api/v1/status/flags")["data"]["web.enable-admin-api"],
        "true"
    );
}

/// `shoal healthcheck` (the container HEALTHCHECK) works in an image without any CA
/// certificates: the HTTP client must not need the system's roots to be built.
#[test]
fn healthcheck_needs_no_system_certificates() {
    let dir = tempdir();
    let node = Node::start(
        dir.path(),
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
        &[],
    );
    let out = std::process::Command::new(shoal_bin())
        .args(["healthcheck", &node.url("/-/healthy")])
        .env("SSL_CERT_FILE", dir.path().join("none.pem"))
        .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
