//! A real Prometheus client against shoal: `promtool query ...` from Debian's
//! `prometheus` package (tests/run.sh installs it).

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("promtool is needed for this test (Debian package `prometheus`; tests/run.sh installs it): {e}")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn promtool_queries_work_against_shoal() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("demo_requests_total{path=\"/a\"} 10\ndemo_requests_total{path=\"/b\"} 20\n"),
    );
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: promtool\n    static_configs:\n      - targets: ['{}']\n",
        t.target()
    );
    let node = Node::start(dir.path(), &cfg, &[]);
    wait_for("two scrapes", Duration::from_secs(30), || {
        let r = node.query("count_over_time(demo_requests_total{path=\"/a\"}[1m])");
        match r.first() {
            Some(s) if value_of(s) >= 2.0 => Ok(()),
            o => Err(format!("{o:?}")),
        }
    });
    let server = format!("http://127.0.0.1:{}", node.port);

    let (ok, out) = promtool(&[
        "query",
        "instant",
        &server,
        "sum by (job) (demo_requests_total)",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("{job=\"promtool\"} => 30 @["), "{out}");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (ok, out) = promtool(&[
        "query",
        "range",
        "--start",
        &(now - 30).to_string(),
        "--end",
        &(now + 1).to_string(),
        "--step",
        "1s",
        &server,
        "demo_requests_total{path=\"/b\"}",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("demo_requests_total{instance=") && out.contains("=>"),
        "{out}"
    );
    assert!(out.contains("20 @["), "{out}");

    let (ok, out) = promtool(&["query", "series", "--match", "demo_requests_total", &server]);
    assert!(ok, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("demo_requests_total"))
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("path=\"/a\""), "{out}");

    let (ok, out) = promtool(&["query", "labels", &server, "path"]);
    assert!(ok, "{out}");
    let values: Vec<&str> = out.lines().collect();
    assert_eq!(values, ["/a", "/b"], "{out}");

    // A bad query is reported by promtool as the error shoal returned.
    let (ok, out) = promtool(&["query", "instant", &server, "sum(("]);
    assert!(!ok);
    assert!(out.contains("bad_data"), "{out}");
}
