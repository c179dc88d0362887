use std::time::Duration;

use super::*;

fn err(yaml: &str) -> ConfigError {
    match load_str(yaml) {
        Ok(c) => panic!("{yaml}\nexpected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults_match_prometheus() {
    let c = load_str("scrape_configs:\n  - job_name: node\n").unwrap();
    assert_eq!(c.global, GlobalConfig::default());
    assert_eq!(c.global.scrape_interval, Duration::from_secs(60));
    assert_eq!(c.global.scrape_timeout, Duration::from_secs(10));
    assert_eq!(c.global.evaluation_interval, Duration::from_secs(60));
    let s = &c.scrape_configs[0];
    assert_eq!(s.job_name, "node");
    assert_eq!(s.scrape_interval, Duration::from_secs(60));
    assert_eq!(s.scrape_timeout, Duration::from_secs(10));
    assert_eq!(s.metrics_path, "/metrics");
    assert_eq!(s.scheme, "http");
    assert!(!s.honor_labels);
    assert!(s.honor_timestamps);
    assert!(s.follow_redirects);
    assert_eq!(
        (
            s.sample_limit,
            s.target_limit,
            s.label_limit,
            s.body_size_limit
        ),
        (0, 0, 0, 0)
    );
    assert!(s.basic_auth.is_none() && s.authorization.is_none());
    assert!(c.rule_files.is_empty());
    // An empty document is a valid, empty config.
    assert!(load_str("").unwrap().scrape_configs.is_empty());
}

#[test]
fn intervals_inherit_and_timeout_defaults_to_min() {
    let cases = [
        // (global, job, want interval, want timeout)
        ("", "", 60, 10),
        ("  scrape_interval: 5s\n", "", 5, 5),
        ("  scrape_interval: 30s\n", "", 30, 10),
        (
            "  scrape_interval: 30s\n  scrape_timeout: 20s\n",
            "",
            30,
            20,
        ),
        ("", "    scrape_interval: 4s\n", 4, 4),
        (
            "  scrape_timeout: 3s\n",
            "    scrape_interval: 15s\n",
            15,
            3,
        ),
        (
            "",
            "    scrape_interval: 15s\n    scrape_timeout: 15s\n",
            15,
            15,
        ),
    ];
    for (g, j, iv, to) in cases {
        let yaml =
            format!("global:\n{g}  evaluation_interval: 1m\nscrape_configs:\n  - job_name: a\n{j}");
        let c = load_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let s = &c.scrape_configs[0];
        assert_eq!(s.scrape_interval, Duration::from_secs(iv), "{yaml}");
        assert_eq!(s.scrape_timeout, Duration::from_secs(to), "{yaml}");
    }
}

#[test]
fn full_config_parses() {
    let c = load_str(
        r#"
global:
  scrape_interval: 15s
  evaluation_interval: 30s
  external_labels:
    cluster: eu1
    replica: a
scrape_configs:
  - job_name: node
    honor_labels: true
    honor_timestamps: false
    metrics_path: /probe
    params:
      module: [http_2xx, extra]
    sample_limit: 1000
    label_limit: 30
    label_name_length_limit: 100
    label_value_length_limit: 200
    target_limit: 50
    body_size_limit: 10MB
    follow_redirects: false
    enable_http2: false
    basic_auth:
      username: u
      password: p
    static_configs:
      - targets: ['a:9100', 'b:9100']
        labels: {env: prod}
      - targets: ['c:9100']
    file_sd_configs:
      - files: ['/etc/sd/*.json']
        refresh_interval: 1m
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
    metric_relabel_configs:
      - regex: go_.*
        source_labels: [__name__]
        action: drop
  - job_name: token
    bearer_token: secret
"#,
    )
    .unwrap();
    assert_eq!(
        c.global.external_labels,
        Labels::from_pairs(&[("cluster", "eu1"), ("replica", "a")])
    );
    assert_eq!(c.global.evaluation_interval, Duration::from_secs(30));
    let s = &c.scrape_configs[0];
    assert!(s.honor_labels && !s.honor_timestamps && !s.follow_redirects);
    assert_eq!(s.metrics_path, "/probe");
    assert_eq!(s.params["module"], vec!["http_2xx", "extra"]);
    assert_eq!(s.body_size_limit, 10 << 20);
    assert_eq!(
        (
            s.sample_limit,
            s.label_limit,
            s.label_name_length_limit,
            s.label_value_length_limit,
            s.target_limit
        ),
        (1000, 30, 100, 200, 50)
    );
    assert_eq!(
        s.basic_auth,
        Some(BasicAuth {
            username: "u".into(),
            password: Some("p".into()),
            password_file: None
        })
    );
    assert_eq!(s.static_configs.len(), 2);
    assert_eq!(s.static_configs[0].targets, vec!["a:9100", "b:9100"]);
    assert_eq!(
        s.static_configs[0].labels,
        Labels::from_pairs(&[("env", "prod")])
    );
    assert_eq!(s.static_configs[1].source, "1");
    assert_eq!(
        s.file_sd_configs[0].refresh_interval,
        Duration::from_secs(60)
    );
    assert_eq!(s.relabel_configs.len(), 1);
    assert_eq!(s.metric_relabel_configs.len(), 1);
    // Legacy bearer_token maps to authorization, as Prometheus does.
    assert_eq!(
        c.scrape_configs[1].authorization,
        Some(Authorization {
            type_: "Bearer".into(),
            credentials: Some("secret".into()),
            credentials_file: None
        })
    );
    assert_eq!(
        c.scrape_config("token").map(|s| s.job_name.as_str()),
        Some("token")
    );
    assert!(c.original.contains("external_labels"));
}

#[test]
fn unknown_keys_name_the_key_and_position() {
    let cases = [
        (
            "scrape_config:\n  - job_name: a\n",
            "unknown field `scrape_config`",
            1,
            1,
        ),
        (
            "global:\n  scrape_intervall: 1m\n",
            "unknown field `scrape_intervall`",
            2,
            3,
        ),
        (
            "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: []\n        label: {a: b}\n",
            "unknown field `label`",
            5,
            9,
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: keep\n        regexp: x\n",
            "unknown field `regexp`",
            5,
            9,
        ),
        (
            "scrape_configs:\n  - job_name: a\n    basic_auth: {username: u, pass: p}\n",
            "unknown field `pass`",
            3,
            31,
        ),
    ];
    for (yaml, want, line, col) in cases {
        match err(yaml) {
            ConfigError::Yaml {
                message,
                line: l,
                column: c,
                ..
            } => {
                assert!(message.contains(want), "{yaml}: {message}");
                assert_eq!((l, c), (Some(line), Some(col)), "{yaml}: {message}");
                assert!(message.contains(&format!("line {line}")), "{message}");
            }
            e => panic!("{yaml}: wrong error kind {e:?}"),
        }
    }
}

#[test]
fn unsupported_keys_are_explicit_errors() {
    let cases = [
        ("remote_write:\n  - url: http://x\n", "remote_write"),
        ("remote_read:\n  - url: http://x\n", "remote_read"),
        ("alerting:\n  alertmanagers: []\n", "alerting"),
        ("storage:\n  tsdb: {}\n", "storage"),
        ("tracing:\n  endpoint: x\n", "tracing"),
        ("global:\n  query_log_file: q.log\n", "query_log_file"),
        (
            "scrape_configs:\n  - job_name: a\n    kubernetes_sd_configs:\n      - role: pod\n",
            "kubernetes_sd_configs",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    consul_sd_configs: []\n",
            "consul_sd_configs",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    dns_sd_configs: []\n",
            "dns_sd_configs",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    tls_config:\n      insecure_skip_verify: true\n",
            "tls_config",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    proxy_url: http://p\n",
            "proxy_url",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    oauth2: {client_id: x}\n",
            "oauth2",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scrape_classic_histograms: true\n",
            "scrape_classic_histograms",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    native_histogram_bucket_limit: 10\n",
            "native_histogram_bucket_limit",
        ),
    ];
    for (yaml, key) in cases {
        let msg = err(yaml).to_string();
        assert!(
            msg.contains(&format!("`{key}` is not supported by shoal yet")),
            "{yaml}: {msg}"
        );
        assert!(msg.contains("line"), "position missing: {msg}");
    }
    let msg = err("scrape_configs:\n  - job_name: a\n    scheme: https\n").to_string();
    assert!(
        msg.contains("`scheme: https` is not supported by shoal yet (no TLS support)"),
        "{msg}"
    );
}

#[test]
fn semantic_errors() {
    let cases = [
        (
            "global:\n  scrape_interval: 10s\n  scrape_timeout: 20s\n",
            "global scrape timeout greater than scrape interval",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 6s\n",
            "scrape timeout greater than scrape interval for scrape config with job name \"a\"",
        ),
        // A job timeout above the inherited global interval is also caught.
        (
            "global:\n  scrape_interval: 5s\nscrape_configs:\n  - job_name: a\n    scrape_timeout: 6s\n",
            "scrape timeout greater than scrape interval",
        ),
        (
            "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
            "found multiple scrape configs with job name \"a\"",
        ),
        (
            "scrape_configs:\n  - scrape_interval: 5s\n",
            "job_name is empty",
        ),
        ("scrape_configs:\n  - job_name: ''\n", "job_name is empty"),
        (
            "scrape_configs:\n  -\n",
            "empty or null scrape config section",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scheme: ftp\n",
            "invalid scheme \"ftp\"",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    scrape_interval: 1x\n",
            "not a valid duration",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    body_size_limit: 10XB\n",
            "unknown unit",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    sample_limit: -1\n",
            "invalid u64 at line 3",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['http://a:80/metrics']\n",
            "\"http://a:80/metrics\" is not a valid hostname",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: ['a:1']\n        labels: {'bad-name': x}\n",
            "\"bad-name\" is not a valid label name",
        ),
        (
            "global:\n  external_labels: {'1x': a}\n",
            "\"1x\" is not a valid label name",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: []\n",
            "must contain at least one path name",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: ['targets.txt']\n",
            "path name \"targets.txt\" is not valid for file discovery",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: ['*/x.json']\n",
            "is not valid for file discovery",
        ),
        (
            "rule_files: ['a/*/b.yml']\n",
            "invalid rule file path \"a/*/b.yml\"",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      -\n",
            "empty or null target relabeling rule",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: hashmod\n        target_label: x\n",
            "requires non-zero modulus",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    bearer_token: a\n    bearer_token_file: b\n",
            "at most one of bearer_token & bearer_token_file",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    bearer_token: a\n    basic_auth: {username: u}\n",
            "at most one of basic_auth, oauth2, bearer_token & bearer_token_file",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    basic_auth: {username: u, password: p, password_file: f}\n",
            "at most one of basic_auth password & password_file",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    authorization: {type: Basic, credentials: x}\n",
            "authorization type cannot be set to \"basic\"",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    authorization: {credentials: x}\n    basic_auth: {username: u}\n",
            "at most one of basic_auth, oauth2 & authorization",
        ),
        (
            "scrape_configs:\n  - job_name: a\n    authorization: {credentials: x}\n    bearer_token: y\n",
            "authorization is not compatible with bearer_token",
        ),
        ("scrape_configs: [\n", "line 1"),
    ];
    for (yaml, want) in cases {
        let msg = err(yaml).to_string();
        assert!(msg.contains(want), "{yaml}\n got: {msg}\n want: {want}");
    }
}

#[test]
fn relabelled_static_targets_may_hold_urls() {
    // With relabel_configs the address may be rewritten, so Prometheus skips the check.
    load_str(
        "scrape_configs:\n  - job_name: bb\n    static_configs:\n      - targets: ['http://example.com/x']\n    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_target\n",
    )
    .unwrap();
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("conf");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("r1.rules.yml"), "groups: []\n").unwrap();
    let cfg_path = sub.join("prometheus.yml");
    std::fs::write(
        &cfg_path,
        r#"
rule_files: ['*.rules.yml', '/abs/none.yml']
scrape_configs:
  - job_name: a
    file_sd_configs:
      - files: ['sd/*.json', '/etc/abs.yml']
    basic_auth: {username: u, password_file: secret.txt}
  - job_name: b
    authorization: {credentials_file: tok}
  - job_name: c
    bearer_token_file: ../tok2
"#,
    )
    .unwrap();
    let c = load_file(&cfg_path).unwrap();
    let s = sub.to_string_lossy();
    assert_eq!(
        c.rule_files,
        vec![format!("{s}/*.rules.yml"), "/abs/none.yml".into()]
    );
    assert_eq!(c.rule_file_paths().unwrap(), vec![sub.join("r1.rules.yml")]);
    let a = &c.scrape_configs[0];
    assert_eq!(
        a.file_sd_configs[0].files,
        vec![format!("{s}/sd/*.json"), "/etc/abs.yml".into()]
    );
    assert_eq!(
        a.basic_auth.as_ref().unwrap().password_file,
        Some(sub.join("secret.txt"))
    );
    assert_eq!(
        c.scrape_configs[1]
            .authorization
            .as_ref()
            .unwrap()
            .credentials_file,
        Some(sub.join("tok"))
    );
    let auth_c = c.scrape_configs[2].authorization.as_ref().unwrap();
    assert_eq!(auth_c.type_, "Bearer");
    assert_eq!(auth_c.credentials_file, Some(dir.path().join("tok2")));
    assert_eq!(c.dir.as_deref(), Some(sub.as_path()));
}

#[test]
fn load_validates_named_rule_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n  - name: a\n    rules:\n      - record: 'x y'\n        expr: up\n",
    )
    .unwrap();
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, "rule_files: [bad.yml]\n").unwrap();
    let msg = load_file(&cfg_path).unwrap_err().to_string();
    assert!(
        msg.contains("bad.yml") && msg.contains("invalid recording rule name"),
        "{msg}"
    );
    // A missing rule file is skipped, as Prometheus's glob expansion does.
    std::fs::write(&cfg_path, "rule_files: [missing.yml]\n").unwrap();
    assert!(
        load_file(&cfg_path)
            .unwrap()
            .rule_file_paths()
            .unwrap()
            .is_empty()
    );
    // A missing config file is an IO error naming the path.
    let msg = load_file(&dir.path().join("nope.yml"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("nope.yml"), "{msg}");
}

#[test]
fn endless_or_special_rule_files_are_refused_not_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("prometheus.yml");
    // /dev/zero never ends and says it is empty; a /proc file also says it is empty.
    for (path, want) in [
        ("/dev/zero", "not a regular file"),
        ("/proc/self/status", ""),
    ] {
        std::fs::write(&cfg_path, format!("rule_files: ['{path}']\n")).unwrap();
        let r = load_file(&cfg_path);
        if want.is_empty() {
            // Read in full (it is small) and refused as a rule file, not as an IO error.
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains(path) && !msg.contains("regular"), "{msg}");
        } else {
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains(path) && msg.contains(want), "{msg}");
        }
    }
    // A file past the cap is refused while it is read, whatever its size says.
    let big = dir.path().join("big.txt");
    std::fs::write(&big, vec![b'a'; 4097]).unwrap();
    let err = super::read_capped(&big, 4096).unwrap_err();
    assert!(err.to_string().contains("larger than 4096"), "{err}");
    assert_eq!(super::read_capped(&big, 4097).unwrap().len(), 4097);
}

#[test]
fn clean_path_matches_go() {
    let cases = [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/../b", "b"),
        ("../a", "../a"),
        ("a/../../b", "../b"),
        ("/../a", "/a"),
        ("/a/./b/..", "/a"),
        (".", "."),
        ("a/..", "."),
        ("/", "/"),
        ("conf/*.yml", "conf/*.yml"),
    ];
    for (p, want) in cases {
        assert_eq!(clean_path(p), want, "{p}");
    }
    assert_eq!(join_dir(Some(Path::new(".")), "rules/x.yml"), "rules/x.yml");
    assert_eq!(join_dir(Some(Path::new("/etc/p")), "/abs"), "/abs");
    assert_eq!(join_dir(None, "rel"), "rel");
}

mod no_panics {
    use proptest::prelude::*;
    use std::path::Path;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn parsers_never_panic(s in "(?s).{0,200}") {
            let _ = super::load_str(&s);
            let _ = super::rules::parse_rule_file(&s, Path::new("r.yml"));
            let _ = crate::discovery::file::parse_groups(&s, Path::new("t.yml"));
            let _ = crate::discovery::file::parse_groups(&s, Path::new("t.json"));
            let _ = super::glob::matches(&s, "name");
            let _ = super::parse_base2_bytes(&s);
        }

        #[test]
        fn yaml_shaped_input_never_panics(
            key in "[a-z_]{1,12}",
            val in "[-a-z0-9_:./*$\\[\\]{}() ]{0,20}",
        ) {
            let y = format!("scrape_configs:\n  - job_name: j\n    {key}: {val}\n    relabel_configs:\n      - {key}: {val}\n");
            let _ = super::load_str(&y);
        }

        #[test]
        fn relabel_expansion_never_panics(t in ".{0,30}", v in ".{0,30}") {
            let re = regex::Regex::new("^(?:(?P<a>.)(.*))$").unwrap();
            if let Some(caps) = re.captures(&v) {
                let _ = crate::model::relabel::expand(&re, &caps, &t);
            }
        }
    }
}
