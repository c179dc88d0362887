use super::*;
use crate::config::load_str;

fn job(yaml_extra: &str) -> ScrapeConfig {
    let c = load_str(&format!(
        "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: node\n{yaml_extra}"
    ))
    .unwrap_or_else(|e| panic!("{yaml_extra}: {e}"));
    c.scrape_configs[0].clone()
}

fn group(targets: &[&str], labels: &[(&str, &str)]) -> TargetGroup {
    TargetGroup {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        labels: Labels::from_pairs(labels),
        source: "0".into(),
    }
}

fn one(cfg: &ScrapeConfig, addr: &str, labels: &[(&str, &str)]) -> Result<Target, DroppedTarget> {
    let mut r = targets_from_group(cfg, &group(&[addr], labels));
    assert_eq!(r.len(), 1);
    r.remove(0)
}

#[test]
fn populate_labels_defaults() {
    let cfg = job("    params:\n      module: [a, b]\n");
    let t = one(&cfg, "host:9100", &[("env", "prod"), ("__meta_x", "m")]).unwrap();
    assert_eq!(
        t.labels,
        Labels::from_pairs(&[
            ("__address__", "host:9100"),
            ("__metrics_path__", "/metrics"),
            ("__param_module", "a"),
            ("__scheme__", "http"),
            ("__scrape_interval__", "15s"),
            ("__scrape_timeout__", "10s"),
            ("env", "prod"),
            ("instance", "host:9100"),
            ("job", "node"),
        ])
    );
    // Discovered labels are the pre-relabel set, __meta_ labels included.
    assert_eq!(t.discovered_labels.get("__meta_x"), Some("m"));
    assert_eq!(t.discovered_labels.get("instance"), None);
    assert_eq!(
        t.output_labels(),
        Labels::from_pairs(&[("env", "prod"), ("instance", "host:9100"), ("job", "node")])
    );
    assert_eq!(t.job(), "node");
    assert_eq!(t.instance(), "host:9100");
    assert_eq!(t.interval(), Duration::from_secs(15));
    assert_eq!(t.timeout(), Duration::from_secs(10));
    assert_eq!(t.url(), "http://host:9100/metrics?module=a&module=b");
}

#[test]
fn address_gets_default_port_like_2_42() {
    let cfg = job("");
    let cases = [
        ("host", "host:80"),
        ("host:1234", "host:1234"),
        ("10.0.0.1", "10.0.0.1:80"),
        ("[::1]", "[::1]:80"),
        ("[::1]:9090", "[::1]:9090"),
        ("::1", "::1"),     // adding a port would not make it valid: left alone
        ("host:", "host:"), // Go's SplitHostPort accepts an empty port
    ];
    for (addr, want) in cases {
        let t = one(&cfg, addr, &[]).unwrap_or_else(|e| panic!("{addr}: {e:?}"));
        assert_eq!(t.address(), want, "{addr}");
        assert_eq!(t.instance(), want, "{addr}");
    }
}

#[test]
fn discovered_labels_can_override_defaults() {
    let cfg = job("");
    let t = one(
        &cfg,
        "h:1",
        &[
            ("job", "other"),
            ("__metrics_path__", "/x y"),
            ("__scrape_interval__", "1m"),
            ("__scrape_timeout__", "30s"),
            ("instance", "custom"),
            ("__param_q", "a&b c"),
        ],
    )
    .unwrap();
    assert_eq!(t.job(), "other");
    assert_eq!(t.instance(), "custom");
    assert_eq!(t.interval(), Duration::from_secs(60));
    assert_eq!(t.url(), "http://h:1/x%20y?q=a%26b+c");
}

#[test]
fn relabelling_and_errors() {
    let cfg = job(
        "    relabel_configs:\n      - source_labels: [__meta_drop]\n        regex: yes\n        action: drop\n      - source_labels: [__meta_addr]\n        regex: '(.+)'\n        target_label: __address__\n      - source_labels: [__meta_iv]\n        regex: '(.+)'\n        target_label: __scrape_interval__\n      - source_labels: [__meta_scheme]\n        regex: '(.+)'\n        target_label: __scheme__\n      - source_labels: [__meta_module]\n        regex: '(.+)'\n        target_label: __param_module\n",
    );
    // Dropped by relabelling: the discovered labels are kept for the UI.
    let d = one(&cfg, "h:1", &[("__meta_drop", "yes")]).unwrap_err();
    assert_eq!(d.reason, DropReason::Relabelled);
    assert_eq!(d.discovered_labels.get("__address__"), Some("h:1"));
    assert_eq!(d.discovered_labels.get("job"), Some("node"));

    // Address rewritten by relabelling; instance follows the final address.
    let t = one(&cfg, "h:1", &[("__meta_addr", "other")]).unwrap();
    assert_eq!(t.address(), "other:80");
    assert_eq!(t.instance(), "other:80");
    assert!(t.labels.iter().all(|l| !l.name.starts_with("__meta_")));

    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("__meta_addr", "a/b")],
            "\"a/b:80\" is not a valid hostname",
        ),
        (&[("__meta_iv", "0s")], "scrape interval cannot be 0"),
        (&[("__meta_iv", "fast")], "error parsing scrape interval"),
        (
            &[("__meta_iv", "5s")],
            "scrape timeout cannot be greater than scrape interval (\"10s\" > \"5s\")",
        ),
        (&[("__meta_scheme", "gopher")], "invalid scheme"),
        (&[("__meta_scheme", "https")], "not supported by shoal yet"),
    ];
    for (labels, want) in cases {
        match one(&cfg, "h:1", labels) {
            Err(DroppedTarget {
                reason: DropReason::Invalid(m),
                ..
            }) => assert!(m.contains(want), "{labels:?}: {m}"),
            other => panic!("{labels:?}: {other:?}"),
        }
    }

    // __param_ from relabelling replaces the first configured value.
    let cfg2 = job(
        "    params:\n      module: [a, b]\n      z: ['1']\n    relabel_configs:\n      - source_labels: [__meta_module]\n        regex: '(.+)'\n        target_label: __param_module\n      - target_label: __param_extra\n        replacement: x\n",
    );
    let t = one(&cfg2, "h:1", &[("__meta_module", "m")]).unwrap();
    assert_eq!(t.url(), "http://h:1/metrics?extra=x&module=m&module=b&z=1");
}

#[test]
fn empty_address_after_relabel_is_invalid() {
    let cfg =
        job("    relabel_configs:\n      - target_label: __address__\n        replacement: ''\n");
    match one(&cfg, "h:1", &[]) {
        Err(DroppedTarget {
            reason: DropReason::Invalid(m),
            ..
        }) => assert_eq!(m, "no address"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_is_stable_and_distinguishes_targets() {
    let cfg = job("");
    let a = one(&cfg, "h:1", &[("env", "a")]).unwrap();
    let a2 = one(&cfg, "h:1", &[("env", "a"), ("__meta_z", "ignored")]).unwrap();
    let b = one(&cfg, "h:2", &[("env", "a")]).unwrap();
    let c = one(&cfg, "h:1", &[("env", "b")]).unwrap();
    assert_eq!(a.key(), a2.key(), "meta labels do not change the key");
    assert_ne!(a.key(), b.key());
    assert_ne!(a.key(), c.key());
    // Pinned value: the key must not change between builds, releases or nodes.
    // xxh3_64(b"shoal/target/v1\xffnode\xffenv\xffa\xffinstance\xffh:1\xffjob\xffnode\xff\xfehttp://h:1/metrics")
    let mut buf = b"shoal/target/v1\xffnode\xff".to_vec();
    buf.extend_from_slice(b"env\xffa\xffinstance\xffh:1\xffjob\xffnode\xff\xfe");
    buf.extend_from_slice(b"http://h:1/metrics");
    assert_eq!(a.key(), xxhash_rust::xxh3::xxh3_64(&buf));
}

#[test]
fn targets_for_job_splits_and_dedups() {
    let cfg = job(
        "    relabel_configs:\n      - source_labels: [__address__]\n        regex: 'drop.*'\n        action: drop\n",
    );
    let groups = vec![
        group(&["a:1", "drop:1", "a:1"], &[]),
        group(&["b:1"], &[("x", "y")]),
    ];
    let (active, dropped) = targets_for_job(&cfg, &groups);
    let addrs: Vec<&str> = active.iter().map(|t| t.address()).collect();
    assert_eq!(addrs, vec!["a:1", "b:1"]);
    assert_eq!(dropped.len(), 1);
}

#[test]
fn split_host_port_matches_go() {
    let ok = [
        ("h:1", ("h", "1")),
        ("[::1]:80", ("::1", "80")),
        ("h:", ("h", "")),
        (":80", ("", "80")),
    ];
    for (s, want) in ok {
        assert_eq!(split_host_port(s), Some(want), "{s}");
    }
    for bad in ["h", "::1", "[::1]", "[::1]x:80", "a:b:c", "h]:1", "[h:1"] {
        assert_eq!(split_host_port(bad), None, "{bad}");
    }
}

/// End to end over tests/fixtures/config: load, discover, build targets.
#[tokio::test]
async fn fixture_config_end_to_end() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let cfg = crate::config::load_file(&dir.join("prometheus.yml")).unwrap();
    let report = crate::config::check_config_file(&dir.join("prometheus.yml")).unwrap();
    assert_eq!(report.rule_files, vec![(dir.join("rules/node.yml"), 3)]);

    let mgr = DiscoveryManager::start(&cfg);
    let groups = mgr.current();
    mgr.shutdown().await;

    let node = cfg.scrape_config("node").unwrap();
    let (active, dropped) = targets_for_job(node, &groups["node"]);
    assert!(dropped.is_empty(), "{dropped:?}");
    let got: Vec<String> = active
        .iter()
        .map(|t| t.output_labels().to_string())
        .collect();
    assert_eq!(
        got,
        vec![
            r#"{dc="dc1", instance="node-1:9100", job="node", sd_file="dc1", team="infra"}"#,
            r#"{dc="dc1", instance="node-2:9100", job="node", sd_file="dc1", team="infra"}"#,
            r#"{dc="dc1", instance="node-3:9100", job="node", sd_file="dc1"}"#,
            r#"{dc="dc2", instance="node-4:9100", job="node", sd_file="dc2"}"#,
        ]
    );
    assert_eq!(active[0].interval(), Duration::from_secs(30));
    assert_eq!(active[0].url(), "http://node-1:9100/metrics");

    let bb = cfg.scrape_config("blackbox").unwrap();
    let (active, _) = targets_for_job(bb, &groups["blackbox"]);
    assert_eq!(active.len(), 2);
    assert_eq!(active[0].instance(), "https://example.com");
    assert_eq!(
        active[0].url(),
        "http://blackbox:9115/probe?module=http_2xx&target=https%3A%2F%2Fexample.com"
    );
    assert_ne!(active[0].key(), active[1].key());
}
