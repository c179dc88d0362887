//! `/federate` against a real Prometheus 2.42 (Debian package `prometheus`; tests/run.sh
//! installs it): Prometheus federates from shoal with the classic config shape, shoal
//! federates from Prometheus, plus the endpoint's errors, gzip and staleness.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const T: Duration = Duration::from_secs(60);

/// A `prometheus` child process on a loopback port, killed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with `config_yaml`, its TSDB in `dir`, and waits until ready.
    pub fn start(dir: &Path, config_yaml: &str) -> Prometheus {
        let cfg = dir.join("prom.yml");
        std::fs::write(&cfg, config_yaml).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("prom-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("prometheus is needed for this test (Debian package `prometheus`; tests/run.sh installs it): {e}")
            });
        let mut p = Prometheus { child, port, log };
        let url = p.url("/-/ready");
        wait_for("prometheus to become ready", T, || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "prometheus exited with {st}: {}",
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                );
            }
            match http_get(&url) {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn query(&self, q: &str) -> Vec<Value> {
        let (code, body) =
            http_get(&self.url(&format!("/api/v1/query?query={}", urlencode(q)))).unwrap();
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code} {e}: {body}"));
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shoal_config(target: &str) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  external_labels: {{dc: eu}}\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
    )
}

/// Raw GET with extra request headers; returns (status, lower-cased head, body bytes).
fn get_with_headers(url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = resp[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + n]);
            rest = &rest[i + 4 + n..];
        }
        body = out;
    }
    (code, head, body)
}

#[test]
fn federate_endpoint_text_errors_gzip_and_staleness() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("x{path=\"/a\"} 1.5\nx{path=\"/b\"} 2\ny 3\n"),
    );
    let node = Node::start(dir.path(), &shoal_config(&t.target()), &[]);
    let node_id = node.get_json("/api/v1/cluster")["data"]["nodeId"]
        .as_str()
        .unwrap()
        .to_string();
    let body = wait_for("x on /federate", T, || {
        let (code, body) = http_get(&node.url("/federate?match[]=x")).map_err(|e| e.to_string())?;
        if code == 200 && body.lines().filter(|l| l.starts_with("x{")).count() == 2 {
            Ok(body)
        } else {
            Err(format!("{code} {body}"))
        }
    });
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "# TYPE x untyped", "{body}");
    let prefix = format!(
        "x{{dc=\"eu\",instance=\"{}\",job=\"app\",path=\"/a\"}} 1.5 ",
        t.target()
    );
    assert!(lines[1].starts_with(&prefix), "{body}");
    let ts: i64 = lines[1].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ts > 1_600_000_000_000, "{body}");
    assert!(!body.contains("y{") && !body.contains("\ny "), "{body}");

    // Several match[], regex matchers; local=1 adds the shard label.
    let (code, body) = http_get(&node.url(&format!(
        "/federate?local=1&match[]={}&match[]=y",
        urlencode("{__name__=~\"x\",path=\"/b\"}")
    )))
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body.lines().filter(|l| !l.starts_with('#')).count(),
        2,
        "{body}"
    );
    assert!(body.contains("# TYPE y untyped\ny{dc=\"eu\","), "{body}");
    assert!(body.contains(&format!("shard=\"{node_id}\"")), "{body}");
    let (_, body) = http_get(&node.url("/federate?match[]=y&external_labels=0")).unwrap();
    assert!(body.contains("\ny{instance="), "{body}");
    assert!(!body.contains("dc="), "{body}");

    // Errors.
    let (code, body) = http_get(&node.url("/federate")).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("no match[]"), "{body}");
    let (code, body) =
        http_get(&node.url(&format!("/federate?match[]={}", urlencode("x{")))).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("parse error"), "{body}");
    let (code, _) = http_get(&node.url("/federate?match[]=x&local=maybe")).unwrap();
    assert_eq!(code, 400);

    // gzip when asked.
    let (code, head, gz) = get_with_headers(
        &node.url("/federate?match[]=x"),
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(code, 200);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.starts_with("# TYPE x untyped\n"), "{text}");

    // A series that disappears from the target gets a staleness marker and leaves
    // /federate at once (not after the lookback delta).
    t.set("/metrics", Reply::text("x{path=\"/a\"} 1.5\ny 3\n"));
    wait_for("x{path=/b} to leave /federate", T, || {
        let (_, body) = http_get(&node.url("/federate?match[]=x")).map_err(|e| e.to_string())?;
        if body.contains("/a") && !body.contains("/b") {
            Ok(())
        } else {
            Err(body)
        }
    });
}

#[test]
fn prometheus_federates_from_shoal_and_shoal_from_prometheus() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("x{path=\"/a\"} 1.5\nx{path=\"/b\"} 2\n"),
    );
    let node = Node::start(dir.path(), &shoal_config(&t.target()), &[]);
    let node_id = node.get_json("/api/v1/cluster")["data"]["nodeId"]
        .as_str()
        .unwrap()
        .to_string();

    // Prometheus with the classic federation job, once cluster-wide and once per shard.
    let prom = Prometheus::start(
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  external_labels: {{origin: prom}}\nscrape_configs:\n  - job_name: federate\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['{{job=\"app\"}}']\n    static_configs:\n      - targets: ['{}']\n  - job_name: federate-shard\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['x{{path=\"/a\"}}']\n      local: ['1']\n    static_configs:\n      - targets: ['{}']\n        labels: {{via: shard}}\n  - job_name: own\n    static_configs:\n      - targets: ['{}']\n",
            node.addr(),
            node.addr(),
            t.target()
        ),
    );
    let r = wait_for("federated series in Prometheus", T, || {
        let r = prom.query("x{job=\"app\"}");
        if r.len() == 3 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let plain: Vec<&Value> = r
        .iter()
        .filter(|s| s["metric"].get("shard").is_none())
        .collect();
    assert_eq!(plain.len(), 2, "{r:?}");
    for s in &plain {
        // honor_labels keeps shoal's job/instance; shoal's external label came along.
        assert_eq!(s["metric"]["dc"], "eu", "{s}");
        assert_eq!(s["metric"]["instance"], t.target().as_str(), "{s}");
    }
    let a = plain.iter().find(|s| s["metric"]["path"] == "/a").unwrap();
    assert_eq!(a["value"][1], "1.5");
    let shard = r
        .iter()
        .find(|s| s["metric"].get("shard").is_some())
        .unwrap();
    assert_eq!(shard["metric"]["shard"], node_id.as_str(), "{shard}");
    assert_eq!(shard["metric"]["via"], "shard", "{shard}");
    let up = prom.query("up{job=~\"federate.*\"}");
    assert_eq!(up.len(), 2, "both federation jobs: {up:?}");
    assert!(up.iter().all(|s| s["value"][1] == "1"), "{up:?}");

    // shoal federates Prometheus's own scrape of the target (job "own").
    let dir2 = tempdir();
    let fed = Node::start(
        dir2.path(),
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: from-prom\n    honor_labels: true\n    metrics_path: /federate\n    params:\n      'match[]': ['{{job=\"own\"}}']\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            prom.port
        ),
        &[],
    );
    let r = wait_for("series federated from Prometheus", T, || {
        let r = fed.query("x");
        if r.len() == 2 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    for s in &r {
        assert_eq!(s["metric"]["job"], "own", "{s}");
        assert_eq!(s["metric"]["origin"], "prom", "{s}");
        assert_eq!(s["metric"]["instance"], t.target().as_str(), "{s}");
    }
    let up = fed.query("up{job=\"from-prom\"}");
    assert_eq!(up.len(), 1);
    assert_eq!(value_of(&up[0]), 1.0);
}
