//! Recording and alerting rules on a node (issue 6, priority 1): local groups run over
//! the node's own data with its `shard` label, `/api/v1/rules` and `/api/v1/alerts`,
//! and reloads that reject bad rule files while the running rules keep going.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

fn config(target: &str, rule_file: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels: {{dc: eu}}\nrule_files: ['{rule_file}']\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

const GOOD: &str = r#"groups:
  - name: shard
    rules:
      - record: shard:x:sum
        expr: sum without (instance) (x)
      - alert: XHigh
        expr: x > 5
        labels: {severity: page, who: '{{ $labels.path }}'}
        annotations:
          summary: '{{ $labels.path }} is {{ $value }} in {{ $externalLabels.dc }}'
"#;

fn rules_json(n: &Node) -> Value {
    let v = n.get_json("/api/v1/rules");
    assert_eq!(v["status"], "success", "{v}");
    v
}

fn last_eval(n: &Node, group: &str) -> String {
    let v = rules_json(n);
    v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == group)
        .map(|g| g["lastEvaluation"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn reload(n: &Node) -> (u16, String) {
    http("POST", &n.url("/-/reload"), None, b"").unwrap()
}

#[test]
fn local_rules_record_alert_and_reload() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("x{path=\"/a\"} 3\nx{path=\"/b\"} 7\n"),
    );
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, GOOD).unwrap();
    let node = Node::start(
        dir.path(),
        &config(&t.target(), rules.to_str().unwrap()),
        &["--web.enable-lifecycle"],
    );
    let node_id = node.get_json("/api/v1/cluster")["data"]["nodeId"]
        .as_str()
        .unwrap()
        .to_string();

    // The recording rule's output carries the node's shard label.
    let r = wait_for("shard:x:sum", T, || {
        let r = node.query("shard:x:sum");
        if r.len() == 2 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    for s in &r {
        assert_eq!(s["metric"]["shard"], node_id.as_str(), "{s}");
        assert_eq!(s["metric"]["job"], "app", "{s}");
        assert!(s["metric"].get("instance").is_none(), "{s}");
    }
    let a = r.iter().find(|s| s["metric"]["path"] == "/a").unwrap();
    assert_eq!(value_of(a), 3.0);

    // /api/v1/rules: Prometheus's shape.
    let v = rules_json(&node);
    let g = &v["data"]["groups"][0];
    assert_eq!(g["name"], "shard");
    assert_eq!(g["file"], rules.to_str().unwrap());
    assert_eq!(g["interval"], 1.0);
    assert_eq!(g["scope"], "local");
    assert!(
        g["lastEvaluation"].as_str().unwrap().starts_with("20"),
        "{g}"
    );
    let rec = &g["rules"][0];
    assert_eq!(rec["type"], "recording");
    assert_eq!(rec["name"], "shard:x:sum");
    assert_eq!(rec["health"], "ok", "{rec}");
    assert!(rec["evaluationTime"].as_f64().is_some());
    let alert_rule = &g["rules"][1];
    assert_eq!(alert_rule["type"], "alerting");
    assert_eq!(alert_rule["state"], "firing", "{alert_rule}");
    let alerts = node.get_json("/api/v1/alerts");
    let al = &alerts["data"]["alerts"];
    assert_eq!(al.as_array().unwrap().len(), 1, "{alerts}");
    assert_eq!(al[0]["labels"]["alertname"], "XHigh");
    assert_eq!(al[0]["labels"]["who"], "/b");
    assert_eq!(al[0]["state"], "firing");
    assert_eq!(al[0]["value"], "7e+00");
    assert_eq!(al[0]["annotations"]["summary"], "/b is 7 in eu");
    let alerts_series = node.query("ALERTS{alertname=\"XHigh\"}");
    assert_eq!(alerts_series.len(), 1, "{alerts_series:?}");
    assert_eq!(alerts_series[0]["metric"]["alertstate"], "firing");
    assert_eq!(alerts_series[0]["metric"]["shard"], node_id.as_str());
    assert_eq!(node.query("ALERTS_FOR_STATE").len(), 1);
    let (code, _) = http_get(&node.url("/api/v1/rules?type=bogus")).unwrap();
    assert_eq!(code, 400);
    let only_alerts = node.get_json("/api/v1/rules?type=alert");
    assert_eq!(
        only_alerts["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Bad rule files are rejected on reload with a clear message; the running rules go on.
    let bad_cases = [
        (
            "groups:\n  - name: shard\n    rules:\n      - record: y\n        expr: 'sum(x'\n",
            "could not parse expression",
        ),
        (
            "groups:\n  - name: shard\n    rules:\n      - record: y\n        expr: nosuchfunction(x)\n",
            "nosuchfunction",
        ),
        (
            "groups:\n  - name: a\n    rules: []\n  - name: a\n    rules: []\n",
            "repeated in the same file",
        ),
        ("groups:\n  - name: a\n   rules: [\n", "rules.yml"),
    ];
    for (text, want) in bad_cases {
        std::fs::write(&rules, text).unwrap();
        let (code, body) = reload(&node);
        assert_eq!(code, 500, "{text}: {body}");
        assert!(body.contains(want), "{text}: want {want:?} in {body}");
        let before = last_eval(&node, "shard");
        wait_for("the old rules to keep evaluating", T, || {
            let now = last_eval(&node, "shard");
            if now > before { Ok(()) } else { Err(now) }
        });
    }
    assert_eq!(
        rules_json(&node)["data"]["groups"][0]["rules"][0]["name"],
        "shard:x:sum"
    );

    // A good change: the alert goes away (its series go stale), a new rule appears.
    std::fs::write(
        &rules,
        "groups:\n  - name: shard\n    rules:\n      - record: shard:x:max\n        expr: max without (instance, path) (x)\n",
    )
    .unwrap();
    let (code, body) = reload(&node);
    assert_eq!(code, 200, "{body}");
    wait_for("shard:x:max", T, || {
        let r = node.query("shard:x:max");
        match r.first() {
            Some(s) if value_of(s) == 7.0 => Ok(()),
            _ => Err(format!("{r:?}")),
        }
    });
    wait_for("removed rules' series to go stale", T, || {
        let a = node.query("ALERTS");
        let s = node.query("shard:x:sum");
        if a.is_empty() && s.is_empty() {
            Ok(())
        } else {
            Err(format!("{a:?} {s:?}"))
        }
    });
    assert_eq!(
        node.get_json("/api/v1/alerts")["data"]["alerts"],
        serde_json::json!([])
    );

    // SIGHUP reloads too.
    std::fs::write(
        &rules,
        "groups:\n  - name: other\n    interval: 2s\n    rules:\n      - record: shard:x:count\n        expr: count(x)\n",
    )
    .unwrap();
    node.signal("HUP");
    wait_for("shard:x:count after SIGHUP", T, || {
        let r = node.query("shard:x:count");
        match r.first() {
            Some(s) if value_of(s) == 2.0 => Ok(()),
            _ => Err(format!("{r:?}")),
        }
    });
    let v = rules_json(&node);
    assert_eq!(v["data"]["groups"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"]["groups"][0]["interval"], 2.0);
}
