//! Hostile and failing surroundings: targets with wrong clocks or endless bodies, full
//! disks, corrupt files. Every test here failed on the code before its fix.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Node, Reply, TargetServer, http_get, tempdir, urlencode, wait_for};

/// Sum of the `/metrics` samples named `name` whose label block contains every one of
/// `labels` (`k="v"` pieces).
pub fn metric_value(node: &Node, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = http_get(&node.url("/metrics")).expect("GET /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|p| rest.contains(p)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The raw samples of `sel` in the `range_s` seconds up to `at_ms`: `(t_ms, value)`.
pub fn raw_samples(node: &Node, sel: &str, range_s: u64, at_ms: i64) -> Vec<Vec<(i64, f64)>> {
    raw_query(node, sel, range_s, at_ms, false)
}

/// [`raw_samples`], the whole cluster's or (`local`) the node's own.
fn raw_query(
    node: &Node,
    sel: &str,
    range_s: u64,
    at_ms: i64,
    local: bool,
) -> Vec<Vec<(i64, f64)>> {
    let q = format!("{sel}[{range_s}s]");
    let v = node.get_json(&format!(
        "/api/v1/query?local={}&query={}&time={}",
        u8::from(local),
        urlencode(&q),
        at_ms as f64 / 1000.0
    ));
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let t = (p[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (t, p[1].as_str().unwrap().parse().unwrap())
                })
                .collect()
        })
        .collect()
}

/// Largest gap between consecutive sample times, in ms.
fn max_gap(samples: &[(i64, f64)]) -> i64 {
    samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or(0)
}

/// Year 2100 and year 1990, in ms.
const YEAR_2100: i64 = 4_102_444_800_000;
const YEAR_1990: i64 = 631_152_000_000;

/// Checks that every good target has a complete `up` (no gap over two intervals) and a
/// `good_metric` sample for every `up` sample over `[from_ms, at_ms]`.
fn assert_good_targets_complete(node: &Node, n: usize, from_ms: i64, at_ms: i64) {
    let range = ((at_ms - from_ms) / 1000).max(1) as u64;
    let ups = raw_samples(node, "up{job=\"good\"}", range, at_ms);
    let goods = raw_samples(node, "good_metric", range, at_ms);
    assert_eq!(ups.len(), n, "up of every good target");
    assert_eq!(goods.len(), n, "good_metric of every good target");
    for (up, good) in ups.iter().zip(&goods) {
        assert!(
            up.len() as i64 >= (at_ms - from_ms) / 1000 - 3,
            "{} up samples over {} s",
            up.len(),
            range
        );
        assert!(up.iter().all(|s| s.1 == 1.0), "{up:?}");
        assert!(max_gap(up) <= 2_000, "a hole in up: {up:?}");
        assert_eq!(
            good.iter().map(|s| s.0).collect::<Vec<_>>(),
            up.iter().map(|s| s.0).collect::<Vec<_>>(),
            "a good_metric sample for every up sample"
        );
    }
}

#[test]
fn a_target_from_2100_or_1990_loses_nobody_else_a_sample() {
    let dir = tempdir();
    let goods: Vec<TargetServer> = (0..20)
        .map(|_| {
            let t = TargetServer::start();
            t.set("/metrics", Reply::text("good_metric 1\n"));
            t
        })
        .collect();
    let evil = TargetServer::start();
    evil.set(
        "/metrics",
        Reply::text(&format!(
            "evil_future 1 {YEAR_2100}\nevil_past 1 {YEAR_1990}\nevil_now 1\n"
        )),
    );
    // A target whose every sample is out of bounds: the scrape succeeds, nothing is
    // stored, and lastError says why.
    let only_future = TargetServer::start();
    only_future.set(
        "/metrics",
        Reply::text(&format!("only_future 1 {YEAR_2100}\n")),
    );
    let list = |ts: &[&TargetServer]| {
        ts.iter()
            .map(|t| format!("'{}'", t.target()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cfg = format!(
        concat!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n",
            "  - job_name: good\n    static_configs:\n      - targets: [{}]\n",
            "  - job_name: evil\n    static_configs:\n      - targets: [{}]\n",
            "  - job_name: only_future\n    static_configs:\n      - targets: [{}]\n",
        ),
        list(&goods.iter().collect::<Vec<_>>()),
        list(&[&evil]),
        list(&[&only_future]),
    );
    let flags = ["--storage.tsdb.maintenance-interval", "1s"];
    let mut node = Node::start(dir.path(), &cfg, &flags);
    let started = now_ms();
    // Several maintenance passes (sealing, truncation, retention) after the bad samples.
    wait_for(
        "rejections and maintenance",
        Duration::from_secs(60),
        || {
            let future = metric_value(
                &node,
                "shoal_scrape_samples_out_of_bounds_total",
                &["reason=\"too_far_in_future\"", "job=\"evil\""],
            );
            let old = metric_value(
                &node,
                "shoal_scrape_samples_out_of_bounds_total",
                &["reason=\"too_old\"", "job=\"evil\""],
            );
            let runs = metric_value(&node, "shoal_tsdb_maintenance_runs_total", &[]);
            if future >= 3.0 && old >= 3.0 && runs >= 5.0 && now_ms() - started >= 8_000 {
                Ok(())
            } else {
                Err(format!(
                    "future {future}, old {old}, maintenance runs {runs}"
                ))
            }
        },
    );
    let at = now_ms() - 1_000;
    assert_good_targets_complete(&node, 20, started + 2_000, at);
    assert!(node.query("evil_future").is_empty());
    assert!(node.query("evil_past").is_empty());
    assert_eq!(
        node.query("evil_now").len(),
        1,
        "the bad target's good series"
    );
    let tg = node.get_json("/api/v1/targets");
    let only = tg["data"]["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["labels"]["job"] == "only_future")
        .cloned()
        .unwrap();
    let last = only["lastError"].as_str().unwrap();
    assert!(
        last.contains("too far in the future"),
        "lastError: {last:?}"
    );

    // A restart keeps every sample, and the node goes on taking them.
    assert!(node.terminate().success());
    let restarted_at = now_ms();
    let mut node = Node::start_with(
        dir.path(),
        &node.config.clone(),
        &node.data_dir.clone(),
        node.port,
        &flags,
    );
    wait_for("samples after the restart", Duration::from_secs(60), || {
        let runs = metric_value(&node, "shoal_tsdb_maintenance_runs_total", &[]);
        let ups = raw_samples(&node, "up{job=\"good\"}", 5, now_ms());
        let fresh = ups.len() == 20
            && ups
                .iter()
                .all(|u| u.last().is_some_and(|s| s.0 > restarted_at + 2_000));
        if runs >= 3.0 && fresh {
            Ok(())
        } else {
            Err(format!(
                "maintenance runs {runs}, {} fresh up series",
                ups.len()
            ))
        }
    });
    // Everything from before the restart is still there, sample for sample.
    assert_good_targets_complete(&node, 20, started + 2_000, at);
    let before: usize = raw_samples(&node, "up{job=\"good\"}", 3600, at)
        .iter()
        .map(Vec::len)
        .sum();
    assert!(before >= 20 * 6, "{before} up samples before the restart");
    node.kill9();
}

/// A target server that answers every path with hand-made response heads and bodies
/// streamed as the test says: what `TargetServer` (honest lengths, whole bodies) can't.
struct RawTarget {
    addr: std::net::SocketAddr,
}

#[derive(Clone, Copy)]
enum RawReply {
    /// Declares `Content-Length: 2^63 - 1`, sends one line, closes.
    HugeDeclared,
    /// Streams 1 GB of exposition lines (an honest length).
    Gigabyte,
    /// A 1 MiB gzip body that decompresses to 1 GiB.
    GzipBomb,
}

impl RawTarget {
    fn start(gzip_bomb: Vec<u8>) -> RawTarget {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bomb = std::sync::Arc::new(gzip_bomb);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let bomb = bomb.clone();
                std::thread::spawn(move || {
                    let mut s = stream;
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let reply = match head.split(' ').nth(1).unwrap_or("") {
                        "/huge" => RawReply::HugeDeclared,
                        "/gigabyte" => RawReply::Gigabyte,
                        _ => RawReply::GzipBomb,
                    };
                    let ct = "Content-Type: text/plain; version=0.0.4\r\nConnection: close\r\n";
                    let _ = match reply {
                        RawReply::HugeDeclared => s.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\n{ct}Content-Length: {}\r\n\r\nhuge 1\n",
                                i64::MAX
                            )
                            .as_bytes(),
                        ),
                        RawReply::Gigabyte => {
                            let line = "gigabyte_metric{pad=\"xxxxxxxxxxxxxxxxxxxxxxxx\"} 1\n";
                            let chunk = line.repeat(65_536 / line.len());
                            let total = 1_000_000_000usize;
                            let _ = s.write_all(
                                format!("HTTP/1.1 200 OK\r\n{ct}Content-Length: {total}\r\n\r\n")
                                    .as_bytes(),
                            );
                            let mut sent = 0;
                            while sent < total {
                                let n = chunk.len().min(total - sent);
                                if s.write_all(&chunk.as_bytes()[..n]).is_err() {
                                    break;
                                }
                                sent += n;
                            }
                            Ok(())
                        }
                        RawReply::GzipBomb => s
                            .write_all(
                                format!(
                                    "HTTP/1.1 200 OK\r\n{ct}Content-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                                    bomb.len()
                                )
                                .as_bytes(),
                            )
                            .and_then(|()| s.write_all(&bomb)),
                    };
                });
            }
        });
        RawTarget { addr }
    }
}

/// 1024 gzip members of 1 MiB of zeros each: 1 GiB once decompressed, ~1 MiB on the wire.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&vec![b'0'; 1 << 20]).unwrap();
    let member = enc.finish().unwrap();
    member.repeat(1024)
}

/// Peak and current resident set of a process, in bytes (`VmHWM`, `VmRSS`).
pub fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

#[test]
fn endless_or_lying_bodies_fail_alone_within_bounded_memory() {
    let dir = tempdir();
    let raw = RawTarget::start(gzip_bomb());
    let good = TargetServer::start();
    good.set("/metrics", Reply::text("good_metric 1\n"));
    let job = |name: &str, path: &str, interval: &str, target: String| {
        format!(
            "  - job_name: {name}\n    scrape_interval: {interval}\n    scrape_timeout: {interval}\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{target}']\n"
        )
    };
    let cfg = format!(
        "scrape_configs:\n{}{}{}{}",
        job("good", "/metrics", "1s", good.target()),
        job("huge", "/huge", "1s", raw.addr.to_string()),
        job("gigabyte", "/gigabyte", "5s", raw.addr.to_string()),
        job("bomb", "/bomb", "5s", raw.addr.to_string()),
    );
    // The default --scrape.max-body-size (256 MiB) bounds what a job without
    // body_size_limit (all of these) accepts.
    let node = Node::start(dir.path(), &cfg, &[]);
    let started = now_ms();
    let target_of = |job: &str| -> Option<serde_json::Value> {
        node.get_json("/api/v1/targets")["data"]["activeTargets"]
            .as_array()?
            .iter()
            .find(|t| t["labels"]["job"] == job)
            .cloned()
    };
    for job in ["huge", "gigabyte", "bomb"] {
        // Twice down: the target is scraped again after a failure (a panicked scrape task
        // was never scheduled again).
        let mut seen = 0;
        let mut last_scrape = String::new();
        wait_for(
            &format!("{job} down twice"),
            Duration::from_secs(60),
            || {
                let t = target_of(job).ok_or("no target")?;
                if t["health"] == "down" && t["lastScrape"].as_str() != Some(&last_scrape) {
                    seen += 1;
                    last_scrape = t["lastScrape"].as_str().unwrap_or("").to_string();
                }
                if seen >= 2 { Ok(t) } else { Err(t.to_string()) }
            },
        );
        let t = target_of(job).unwrap();
        assert_eq!(
            t["lastError"], "body size limit exceeded",
            "{job}: Prometheus's error text"
        );
        let up = node.query(&format!("up{{job=\"{job}\"}}"));
        assert_eq!(up.len(), 1, "{job}");
        assert_eq!(up[0]["value"][1], "0", "{job}");
    }
    assert!(node.query("gigabyte_metric").is_empty());
    let at = now_ms() - 1_000;
    let up = raw_samples(
        &node,
        "up{job=\"good\"}",
        ((at - started) / 1000) as u64,
        at,
    );
    assert_eq!(up.len(), 1);
    assert!(
        max_gap(&up[0]) <= 2_000,
        "the good target kept its scrapes: {up:?}"
    );
    let (peak, _) = rss_of(node.child.id());
    assert!(
        peak < 640 << 20,
        "peak RSS {} MiB: bodies must stop at the 256 MiB ceiling",
        peak >> 20
    );
}

/// A size-limited tmpfs mounted by the test (CI runs as root), unmounted on drop.
struct SmallFs {
    path: std::path::PathBuf,
}

impl SmallFs {
    fn mount(path: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a {size} tmpfs at {} failed: the disk-full tests need root (CI runs as root)",
            path.display()
        );
        SmallFs {
            path: path.to_path_buf(),
        }
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let p = self.path.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        p
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

fn ready(node: &Node) -> (u16, String) {
    http_get(&node.url("/-/ready")).unwrap_or((0, String::new()))
}

/// Raw samples of `up{job="good"}` over the hour before `at_ms`, summed over targets.
fn up_count_at(node: &Node, at_ms: i64) -> usize {
    raw_samples(node, "up{job=\"good\"}", 3600, at_ms)
        .iter()
        .map(Vec::len)
        .sum()
}

#[test]
fn a_full_disk_refuses_samples_loses_none_and_recovers_by_itself() {
    let dir = tempdir();
    let fs = SmallFs::mount(&dir.path().join("small"), "48m");
    let goods: Vec<TargetServer> = (0..5)
        .map(|i| {
            let t = TargetServer::start();
            let body: String = (0..50)
                .map(|j| format!("good_metric{{i=\"{i}\",j=\"{j}\"}} {j}\n"))
                .collect();
            t.set("/metrics", Reply::text(&body));
            t
        })
        .collect();
    let targets = goods
        .iter()
        .map(|t| format!("'{}'", t.target()))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: good\n    static_configs:\n      - targets: [{targets}]\n"
    );
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, cfg).unwrap();
    let data = fs.path.join("data");
    let flags = ["--storage.tsdb.maintenance-interval", "1s"];
    let port = crate::harness::free_port();
    let mut node = Node::start_with(dir.path(), &config, &data, port, &flags);
    wait_for("a few scrapes", Duration::from_secs(30), || {
        let n = up_count_at(&node, now_ms());
        if n >= 5 * 4 {
            Ok(())
        } else {
            Err(format!("{n} up samples"))
        }
    });

    // The disk fills up.
    let filled_at = now_ms();
    let before_full = up_count_at(&node, filled_at);
    let filler = fs.fill();
    let (_, why) = wait_for(
        "the node to be not ready",
        Duration::from_secs(30),
        || match ready(&node) {
            (503, body) => Ok((503, body)),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(why.contains("cannot write"), "/-/ready says why: {why:?}");
    assert!(metric_value(&node, "shoal_tsdb_write_failures_total", &[]) >= 1.0);
    wait_for("samples to be refused", Duration::from_secs(30), || {
        let n = metric_value(&node, "shoal_tsdb_appends_refused_total", &[]);
        if n > 0.0 {
            Ok(())
        } else {
            Err(format!("{n} refused"))
        }
    });
    // What is stored can still be read.
    assert_eq!(
        up_count_at(&node, filled_at),
        before_full,
        "reads while full"
    );

    // Space comes back: the node recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "the node to be ready again",
        Duration::from_secs(30),
        || match ready(&node) {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let recovered_at = now_ms();
    wait_for(
        "scrapes after the recovery",
        Duration::from_secs(30),
        || {
            let fresh = raw_samples(&node, "up{job=\"good\"}", 60, now_ms())
                .iter()
                .filter(|s| s.iter().filter(|x| x.0 > recovered_at).count() >= 4)
                .count();
            if fresh == 5 {
                Ok(())
            } else {
                Err(format!("{fresh} targets scraped again"))
            }
        },
    );
    // Acknowledged more than two WAL flush intervals (1 s) ago: must survive a kill -9.
    let acked_at = now_ms() - 2_500;
    let after_recovery = up_count_at(&node, acked_at);
    assert_eq!(up_count_at(&node, filled_at), before_full);
    node.kill9();

    let node = Node::start_with(dir.path(), &config, &data, port, &flags);
    assert_eq!(
        up_count_at(&node, filled_at),
        before_full,
        "every sample stored before the disk filled survives"
    );
    assert_eq!(
        up_count_at(&node, acked_at),
        after_recovery,
        "every sample stored after the recovery survives"
    );
    assert_eq!(
        raw_samples(&node, "good_metric{j=\"7\"}", 3600, acked_at)
            .iter()
            .map(Vec::len)
            .sum::<usize>(),
        after_recovery,
        "a good_metric sample for every up sample"
    );
}

/// `shoal tsdb check DIR [--repair]`: exit code and output.
fn tsdb_check(dir: &std::path::Path, repair: bool) -> (i32, String) {
    let mut cmd = std::process::Command::new(crate::harness::shoal_bin());
    cmd.args(["tsdb", "check"]).arg(dir);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().expect("run shoal tsdb check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn corrupt_records_are_skipped_reported_and_quarantined() {
    let dir = tempdir();
    let t = TargetServer::start();
    t.set(
        "/metrics",
        Reply::text("c_metric{a=\"1\"} 1\nc_metric{a=\"2\"} 2\n"),
    );
    let cfg = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: c\n    static_configs:\n      - targets: ['{}']\n",
        t.target()
    );
    let mut node = Node::start(dir.path(), &cfg, &[]);
    wait_for("some scrapes", Duration::from_secs(30), || {
        let n = up_count(&node, now_ms());
        if n >= 6 { Ok(()) } else { Err(format!("{n}")) }
    });
    // Samples older than two WAL flushes are in earlier frames than the last one.
    let stopped_at = now_ms() - 2_500;
    let before = up_count(&node, stopped_at);
    assert!(node.terminate().success());
    let data = node.data_dir.clone();

    // Corrupt one record of every kind.
    {
        let db = shoal::storage::sled_open::open_path(&data).unwrap();
        db.open_tree("series")
            .unwrap()
            .insert((1u64 << 40).to_be_bytes(), &[3u8, 0xde, 0xad, 0xbe][..])
            .unwrap();
        db.open_tree("sealed")
            .unwrap()
            .insert(7u64.to_be_bytes(), &[1u8, 2, 3][..])
            .unwrap();
        let mut key = Vec::new();
        key.extend_from_slice(&(1u64 << 63).to_be_bytes());
        key.extend_from_slice(&1u64.to_be_bytes());
        key.extend_from_slice(&(1u64 << 63).to_be_bytes());
        db.open_tree("chunks")
            .unwrap()
            .insert(key, &[2u8; 40][..])
            .unwrap();
        db.flush().unwrap();
        let cl = shoal::storage::sled_open::open_path(data.join("cluster")).unwrap();
        let log = cl.open_tree("cluster.log").unwrap();
        let (k, v) = log.last().unwrap().expect("a raft log entry");
        let mut v = v.to_vec();
        v.truncate(v.len() / 2);
        log.insert(k, v).unwrap();
        cl.flush().unwrap();
    }
    // The last WAL frame of the newest segment: a flipped byte in its checksummed body.
    let wal = data.join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().unwrap().len() > 0)
        .map(|e| e.path())
        .collect();
    segs.sort();
    let seg = segs.last().unwrap().clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();

    let (code, out) = tsdb_check(&data, false);
    assert_eq!(code, 1, "{out}");
    for kind in [
        "series batch",
        "chunk record",
        "CORRUPT chunk ",
        "WAL segment",
        "raft log entry",
    ] {
        assert!(out.contains(kind), "{kind:?} missing from:\n{out}");
    }

    // The node starts with the corrupt records, skips them and serves the rest.
    let config = node.config.clone();
    let port = node.port;
    drop(node);
    let node = Node::start_with(dir.path(), &config, &data, port, &[]);
    let after = up_count(&node, stopped_at);
    assert_eq!(
        after, before,
        "every sample outside the corrupt last WAL frame"
    );
    assert!(metric_value(&node, "shoal_tsdb_corrupt_records_skipped_total", &[]) >= 2.0);
    wait_for("scrapes go on", Duration::from_secs(30), || {
        let n = up_count(&node, now_ms());
        if n > after + 2 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    drop(node);

    let (code, out) = tsdb_check(&data, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("quarantined"), "{out}");
    let (code, out) = tsdb_check(&data, false);
    assert_eq!(code, 0, "after --repair: {out}");
    assert!(out.contains("0 corrupt record"), "{out}");
}

/// Raw `up{job="c"}` samples over the hour before `at_ms`.
fn up_count(node: &Node, at_ms: i64) -> usize {
    raw_samples(node, "up{job=\"c\"}", 3600, at_ms)
        .iter()
        .map(Vec::len)
        .sum()
}

/// [`raw_samples`] over the node's own data only (`local=1`) from `from_ms`.
fn raw_local(node: &Node, sel: &str, from_ms: i64, at_ms: i64) -> Vec<Vec<(i64, f64)>> {
    let range_s = ((at_ms - from_ms) / 1000).max(1) as u64;
    raw_query(node, sel, range_s, at_ms, true)
}

/// 59 good targets and a bad one (`sharding`'s 60-target fleet shape) on 3 nodes.
#[test]
fn a_bad_target_moving_through_a_cluster_erases_no_node() {
    use crate::cluster::TestCluster;
    use crate::sharding::wait_settled;
    let good = TargetServer::start();
    good.set("/metrics", Reply::text("fleet_metric 1\n"));
    let evil = TargetServer::start();
    evil.set(
        "/metrics",
        Reply::text(&format!("evil_future 1 {YEAR_2100}\nevil_now 1\n")),
    );
    let mut cfg = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n",
    );
    for i in 0..59 {
        cfg.push_str(&format!(
            "      - targets: ['{}']\n        labels: {{idx: '{i}'}}\n",
            good.target()
        ));
    }
    cfg.push_str(&format!(
        "      - targets: ['{}']\n        labels: {{idx: '59'}}\n",
        evil.target()
    ));
    let flags = ["--storage.tsdb.maintenance-interval", "1s"];
    let mut c = TestCluster::start_with_config(&["127.0.0.1"; 3], &cfg, &flags);
    let first = wait_settled(&c, &[0, 1, 2], 1);
    let started = now_ms();
    let a = *first[&59].iter().next().unwrap();
    let rejected = |n: &Node| {
        metric_value(
            n,
            "shoal_scrape_samples_out_of_bounds_total",
            &["reason=\"too_far_in_future\""],
        )
    };
    wait_for(
        "the first owner to meet the bad target",
        Duration::from_secs(30),
        || {
            let r = rejected(&c.nodes[a]);
            if r >= 2.0 {
                Ok(())
            } else {
                Err(format!("{r}"))
            }
        },
    );
    // Move 1: the owner dies; the bad target goes to the next node.
    c.nodes[a].kill9();
    let rest: Vec<usize> = (0..3).filter(|&i| i != a).collect();
    let second = wait_settled(&c, &rest, 1);
    let b = *second[&59].iter().next().unwrap();
    assert_ne!(a, b);
    wait_for(
        "the second owner to meet the bad target",
        Duration::from_secs(30),
        || {
            let r = rejected(&c.nodes[b]);
            if r >= 3.0 {
                Ok(())
            } else {
                Err(format!("{r}"))
            }
        },
    );
    // Move 2: the first owner comes back and takes the target back.
    c.restart(a);
    let third = wait_settled(&c, &[0, 1, 2], 1);
    assert_eq!(third[&59], first[&59]);
    let settled = now_ms();
    wait_for(
        "several maintenance passes",
        Duration::from_secs(60),
        || {
            let runs: f64 = (0..3)
                .map(|i| metric_value(&c.nodes[i], "shoal_tsdb_maintenance_runs_total", &[]))
                .fold(f64::MAX, f64::min);
            if runs >= 4.0 && now_ms() - settled >= 6_000 && rejected(&c.nodes[a]) >= 2.0 {
                Ok(())
            } else {
                Err(format!("fewest maintenance runs {runs}"))
            }
        },
    );
    let at = now_ms() - 1_500;
    let complete = |i: usize, idx: &[usize], from: i64| {
        for &t in idx {
            let up = raw_local(&c.nodes[i], &format!("up{{idx=\"{t}\"}}"), from, at);
            assert_eq!(up.len(), 1, "node {i}, target {t}: {up:?}");
            assert!(
                max_gap(&up[0]) <= 2_000 && up[0].first().is_some_and(|s| s.0 <= from + 2_000),
                "node {i}, target {t}: a hole since {from}: {:?}",
                up[0]
            );
        }
    };
    // Every node scrapes its good targets now, whoever met the bad one.
    for i in 0..3 {
        let mine: Vec<usize> = (0..59).filter(|t| third[t].contains(&i)).collect();
        complete(i, &mine, settled + 1_000);
    }
    // The node that met the bad target second kept the history of the targets it owned
    // all along: nothing aged out.
    let always: Vec<usize> = (0..59)
        .filter(|t| first[t].contains(&b) && third[t].contains(&b))
        .collect();
    assert!(!always.is_empty());
    complete(b, &always, started + 1_000);
    // Both met the target and stored its good series.
    for i in [a, b] {
        assert_eq!(
            c.nodes[i]
                .query_local("count_over_time(evil_now[10m])")
                .len(),
            1,
            "node {i}"
        );
        assert!(
            c.nodes[i]
                .query_local("count_over_time(evil_future[10m])")
                .is_empty()
        );
    }
}
