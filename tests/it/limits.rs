//! Query limits over real HTTP (issue 14, item 6): `--query.max-samples` stops a read
//! while it loads (on the node and on every member, also `/federate`), `timeout` covers
//! the wait for a slot and the member calls, `--query.max-concurrency` covers every read
//! route. Errors are Prometheus's: 422 `execution` for too many samples, 503 `timeout`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::TestCluster;
use crate::harness::*;
use crate::sharding::{fleet_config, wait_settled};

const TOO_MANY: &str =
    "query processing would load too many samples into memory in query execution";

/// GET `path` on `node`: (elapsed, HTTP status, body text).
fn timed_get(node_url: &str) -> (Duration, u16, String) {
    let t = Instant::now();
    let (code, body) = http_get(node_url).unwrap_or_else(|e| panic!("GET {node_url}: {e}"));
    (t.elapsed(), code, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid JSON {e}: {body}"))
}

fn assert_too_many(code: u16, body: &str) {
    assert_eq!(code, 422, "{body}");
    let v = json(body);
    assert_eq!(
        v,
        serde_json::json!({"status": "error", "errorType": "execution", "error": TOO_MANY}),
        "{body}"
    );
}

fn q(expr: &str) -> String {
    format!("/api/v1/query?query={}", urlencode(expr))
}

/// A target exposing `n` series of `many_series`.
fn wide_target(n: usize) -> TargetServer {
    let s = TargetServer::start();
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!("many_series{{i=\"{i}\"}} {i}\n"));
    }
    s.set("/metrics", Reply::text(&body));
    s
}

/// One node: `count_over_time` over everything and `/federate` of everything fail at
/// the limit with Prometheus's answer (`/federate` had no limit at all: a 200), a
/// smaller query still answers.
#[test]
fn max_samples_holds_on_the_query_routes_and_federate() {
    let target = wide_target(1200);
    let dir = tempdir();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: wide\n    static_configs:\n      - targets: ['{}']\n",
        target.target()
    );
    let node = Node::start(dir.path(), &cfg, &["--query.max-samples", "1000"]);
    // Two scrapes: 2400 samples of many_series in the store.
    wait_for("two scrapes", Duration::from_secs(60), || {
        let v = node.get_json(&format!(
            "/api/v1/query?local=1&query={}",
            urlencode("count_over_time(up[1h])")
        ));
        match v["data"]["result"][0]["value"][1].as_str() {
            Some(n) if n.parse::<f64>().unwrap_or(0.0) >= 2.0 => Ok(()),
            _ => Err(v.to_string()),
        }
    });
    let (_, code, body) = timed_get(&node.url(&q("count_over_time({__name__=~\".+\"}[1h])")));
    assert_too_many(code, &body);
    let now = unix_secs();
    let (_, code, body) = timed_get(&node.url(&format!(
        "/api/v1/query_range?query={}&start={}&end={now}&step=60",
        urlencode("sum(count_over_time(many_series[1h]))"),
        now - 600
    )));
    assert_too_many(code, &body);
    // An instant selector loads one sample per series (the latest), not its lookback:
    // 311 series of i=~"1.*", each with two or more samples in the last 5 minutes.
    let (_, code, body) = timed_get(&node.url(&q("count(many_series{i=~\"1.*\"})")));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["data"]["result"][0]["value"][1], "311");
    let (_, code, body) = timed_get(&node.url(&format!(
        "/federate?match[]={}",
        urlencode("{__name__=~\".+\"}")
    )));
    assert_eq!(code, 422, "/federate over the limit: {body}");
    assert!(body.contains(TOO_MANY), "{body}");
    // /federate loads the latest sample of each series only.
    let (_, code, body) = timed_get(&node.url(&format!(
        "/federate?match[]={}",
        urlencode("many_series{i=~\"1.*\"}")
    )));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("many_series{"))
            .count(),
        311
    );
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `shoal_queries_total` of a node (queries that got a slot).
fn queries_total(node: &Node) -> Result<f64, String> {
    let (_, body) = http_get(&node.url("/metrics"))?;
    body.lines()
        .find_map(|l| l.strip_prefix("shoal_queries_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no shoal_queries_total".to_string())
}

/// A cluster of two with `--query.max-concurrency=1`:
/// - a member enforces the limit it is sent (the internal route answers 422), and a
///   cluster query over it fails with Prometheus's 422;
/// - with the member stuck (SIGSTOP), a query with `timeout=8s` holds the node's one
///   slot until its deadline and answers 503 `timeout` — not after the member timeout
///   (30 s) with a partial 200;
/// - meanwhile series, labels, label values and `/federate` (all `local=1`, so they
///   ask no member) wait for the slot, and a query with `timeout=1s` gives up in the
///   queue with 503 "query timed out in query queue".
#[test]
fn members_and_every_read_route_are_held_to_the_limits() {
    use shoal::query::wire::{self, Request, WireHints, WireLimits, WireMatcher};
    let target = TargetServer::start();
    let mut body = String::new();
    for i in 0..50 {
        body.push_str(&format!("fleet_metric{{k=\"{i}\"}} {i}\n"));
    }
    target.set("/metrics", Reply::text(&body));
    let cfg = fleet_config(&target);
    let c = TestCluster::start_with_config(
        &["127.0.0.1"; 2],
        &cfg,
        &[
            "--query.max-concurrency",
            "1",
            "--query.timeout",
            "60s",
            "--query.max-samples",
            "20000",
        ],
    );
    wait_settled(&c, &[0, 1], 1);
    // Until both nodes hold more than 20000 samples (60 targets × 55 series a second
    // between them), which their local reads of everything then refuse.
    // (A range selector: `count_over_time` would drop the names, and `up` and the
    // other report series of a target would collide.)
    let everything = "{__name__=~\".+\"}[1h]";
    wait_for(
        "over 20000 samples on each node",
        Duration::from_secs(90),
        || {
            for n in &c.nodes {
                let (_, code, body) = timed_get(&n.url(&format!("{}&local=1", q(everything))));
                if code != 422 {
                    return Err(format!("{}: {code} {body}", n.addr()));
                }
                assert_too_many(code, &body);
            }
            Ok(())
        },
    );

    // The member enforces the limit in the request, with Prometheus's text.
    let now_ms = unix_secs() as i64 * 1000;
    let select = |limits| {
        wire::encode(&Request::Select {
            hints: WireHints {
                start: now_ms - 3_600_000,
                end: now_ms + 60_000,
                step: 0,
                func: None,
                range: 3_600_000,
                limits,
                grid: None,
            },
            matchers: vec![WireMatcher {
                op: 2,
                name: "__name__".into(),
                value: ".+".into(),
            }],
            exclude_global: true,
        })
        .unwrap()
    };
    let bearer = format!("Bearer {}", crate::cluster::SECRET);
    let post = |body: &[u8]| {
        let a = http_with_headers(
            "POST",
            &c.nodes[1].url(shoal::peer::protocol::MEMBER_READ.path),
            &[
                ("Content-Type", "application/octet-stream"),
                ("Authorization", &bearer),
            ],
            body,
        )
        .unwrap();
        (a.status, a.body)
    };
    let limited = WireLimits {
        max_samples: Some(1000),
        timeout_ms: Some(10_000),
    };
    let (code, text) = post(&select(limited));
    assert_eq!((code, text.trim()), (422, TOO_MANY));
    // Its own flag applies too (20000 < what it holds).
    let (code, text) = post(&select(WireLimits::default()));
    assert_eq!((code, text.trim()), (422, TOO_MANY));
    // Through the cluster, and with the local part alone under the limit.
    let (_, code, body) =
        timed_get(&c.nodes[0].url(&q("count_over_time(fleet_metric{k=\"1\"}[1h])")));
    assert_eq!(code, 200, "the data of one metric fits: {body}");
    let (_, code, body) = timed_get(&c.nodes[0].url(&q(everything)));
    assert_too_many(code, &body);

    // The member is stuck from now on, behind the connection a last read left open: a
    // new connection would fail its TLS handshake within the peer connect timeout
    // (2 s) under cluster TLS, and the member count as unreachable (a partial answer).
    let (_, code, body) = timed_get(&c.nodes[0].url(&q("count(fleet_metric)")));
    assert_eq!(code, 200, "a read through the member: {body}");
    assert!(json(&body)["warnings"].is_null(), "{body}");
    c.nodes[1].signal("STOP");
    let n0 = c.nodes[0].url("");
    let before = queries_total(&c.nodes[0]).unwrap();
    let holder_sent = Instant::now();
    let holder = {
        let url = format!("{n0}{}&timeout=8s", q("count(fleet_metric)"));
        std::thread::spawn(move || timed_get(&url))
    };
    wait_for(
        "the holder to take the slot",
        Duration::from_secs(5),
        || match queries_total(&c.nodes[0])? {
            n if n > before => Ok(()),
            n => Err(format!("{n}")),
        },
    );
    type Answers = Arc<Mutex<Vec<(String, u16, Instant, String)>>>;
    let done: Answers = Arc::default();
    let waiters: Vec<_> = [
        format!("/api/v1/series?local=1&match[]={}", urlencode("up")),
        "/api/v1/labels?local=1".to_string(),
        "/api/v1/label/job/values?local=1".to_string(),
        format!("/federate?local=1&match[]={}", urlencode("up")),
    ]
    .into_iter()
    .map(|path| {
        let (url, done) = (format!("{n0}{path}"), done.clone());
        std::thread::spawn(move || {
            let (_, code, body) = timed_get(&url);
            done.lock()
                .unwrap()
                .push((path, code, Instant::now(), body));
        })
    })
    .collect();
    let (took, code, body) = timed_get(&format!("{n0}{}&local=1&timeout=1s", q("up")));
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({"status": "error", "errorType": "timeout", "error": "query timed out in query queue"})
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(7),
        "{took:?}"
    );

    let (took, code, body) = holder.join().unwrap();
    assert_eq!(
        code, 503,
        "the stuck member's wait ends at the query's deadline: {body}"
    );
    assert_eq!(json(&body)["errorType"], "timeout", "{body}");
    assert!(
        took >= Duration::from_secs(8) && took < Duration::from_secs(20),
        "{took:?}"
    );
    for w in waiters {
        w.join().unwrap();
    }
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 4);
    for (path, code, at, body) in done.iter() {
        assert_eq!(*code, 200, "{path}: {body}");
        assert!(
            *at >= holder_sent + Duration::from_secs(8),
            "{path} answered {:?} after the holder was sent: it did not wait for the slot",
            *at - holder_sent
        );
    }
    c.nodes[1].signal("CONT");
}

/// `VmRSS` and `VmHWM` of a process in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Writes `n` series `m{i="…",job="load"}` with two samples each (30 s apart, the last
/// a minute ago) into a data dir through the storage API, as a node would store them.
fn load(data: &Path, n: usize) {
    use shoal::storage::Appendable;
    let db = shoal::tsdb::Tsdb::open(data, shoal::tsdb::TsdbOptions::default()).unwrap();
    let now = unix_secs() as i64 * 1000;
    for t in [now - 90_000, now - 60_000] {
        for lo in (0..n).step_by(50_000) {
            let mut app = db.appender();
            for i in lo..(lo + 50_000).min(n) {
                let l = shoal::model::Labels::from_pairs(&[
                    ("__name__", "m"),
                    ("i", &i.to_string()),
                    ("job", "load"),
                ]);
                app.append(&l, t, i as f64).unwrap();
            }
            app.commit().unwrap();
        }
    }
    db.close().unwrap();
}

/// The test: a node with many series (`SHOAL_LIMITS_SERIES`, default 1M) and
/// `--query.max-samples=100000` answers `count_over_time` over every series and
/// `/federate` of every series with 422 quickly, its RSS grows by less than 200 MB,
/// and a normal query running at the same time answers.
#[test]
fn a_huge_query_fails_fast_with_bounded_memory() {
    let n: usize = std::env::var("SHOAL_LIMITS_SERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempdir();
    let data = dir.path().join("data");
    let t = Instant::now();
    load(&data, n);
    let loaded = t.elapsed();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n",
    )
    .unwrap();
    let mut node = Node::spawn_on(
        dir.path(),
        &config,
        &data,
        "127.0.0.1",
        free_port(),
        &["--query.max-samples", "100000"],
    );
    let t = Instant::now();
    let pid = node.child.id();
    wait_for("the node to replay", Duration::from_secs(600), || {
        if let Ok(Some(st)) = node.child.try_wait() {
            panic!("shoal exited: {st}");
        }
        match http_get(&node.url("/-/ready")) {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let started = t.elapsed();
    let one = q("m{i=\"7\"}");
    let (_, code, body) = timed_get(&node.url(&one));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["data"]["result"].as_array().unwrap().len(), 1);
    // Reset the high-water mark (Linux: 5 > clear_refs) so that VmHWM is the peak of
    // the queries; RSS is also sampled, in case the reset is not allowed.
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let (base, _) = rss(pid);
    let peak = Arc::new(Mutex::new(base));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (r, _) = rss(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let normal = {
        let url = node.url(&one);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            for _ in 0..5 {
                answers.push(timed_get(&url));
            }
            answers
        })
    };
    let (took_count, code, body) =
        timed_get(&node.url(&q("count_over_time({__name__=~\".+\"}[1d])")));
    assert_too_many(code, &body);
    let (took_fed, code, body) = timed_get(&node.url(&format!(
        "/federate?match[]={}",
        urlencode("{__name__=~\".+\"}")
    )));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(TOO_MANY), "{body}");
    for (took, code, body) in normal.join().unwrap() {
        assert_eq!(
            code, 200,
            "a normal query next to the huge ones ({took:?}): {body}"
        );
        assert_eq!(json(&body)["data"]["result"].as_array().unwrap().len(), 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let (_, hwm) = rss(pid);
    let sampled = *peak.lock().unwrap();
    let top = if reset { hwm.max(sampled) } else { sampled };
    let growth = top.saturating_sub(base);
    eprintln!(
        "{n} series: loaded in {loaded:?}, node ready in {started:?}, RSS {} MB; count_over_time 422 in {took_count:?}, /federate 422 in {took_fed:?}; RSS growth {} MB (VmHWM reset: {reset})",
        base >> 20,
        growth >> 20
    );
    assert!(growth < 200 << 20, "RSS grew by {} MB", growth >> 20);
    assert!(took_count < Duration::from_secs(30), "{took_count:?}");
    assert!(took_fed < Duration::from_secs(30), "{took_fed:?}");
    node.kill9();
}
