//! `shoal demo`: a synthetic target fleet plus a local cluster of nodes scraping it
//! ([`local_cluster`]), one command. The
//! fleet serves realistic exposition text (counters, gauges, classic histograms) whose
//! values are deterministic functions of wall-clock time, so graphs look alive.

pub mod local_cluster;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, dev::ServerHandle, web};

const HANDLERS: [&str; 5] = ["/", "/api/items", "/api/users", "/login", "/static"];
const METHODS: [&str; 2] = ["GET", "POST"];
const CODES: [&str; 3] = ["200", "404", "500"];
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Deterministic pseudo-random in [0, 1) from a seed (splitmix64).
fn unit(seed: u64) -> f64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Renders one target's exposition at `now_s` with about `series` series.
pub fn render_target(target: usize, series: usize, now_s: f64) -> String {
    let mut out = String::with_capacity(series * 80);
    let seed = target as u64 * 1_000_003;
    let mut n = 0usize;

    out.push_str(
        "# HELP http_requests_total Total HTTP requests.\n# TYPE http_requests_total counter\n",
    );
    'outer: for (hi, h) in HANDLERS.iter().enumerate() {
        for (mi, m) in METHODS.iter().enumerate() {
            for (ci, c) in CODES.iter().enumerate() {
                if n >= series {
                    break 'outer;
                }
                let s = seed + (hi * 100 + mi * 10 + ci) as u64;
                let weight = if *c == "200" { 1.0 } else { 0.05 };
                let rate = (0.5 + 10.0 * unit(s)) * weight;
                let _ = writeln!(
                    out,
                    "http_requests_total{{code=\"{c}\",handler=\"{h}\",method=\"{m}\"}} {}",
                    (rate * now_s).floor()
                );
                n += 1;
            }
        }
    }

    out.push_str(
        "# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n",
    );
    for (hi, h) in HANDLERS.iter().enumerate() {
        if n + BUCKETS.len() + 3 > series {
            break;
        }
        let s = seed + 7_000 + hi as u64;
        let rate = 1.0 + 20.0 * unit(s);
        let count = (rate * now_s).floor();
        let scale = 0.02 + 0.3 * unit(s + 1);
        for b in BUCKETS {
            // Exponential latency distribution: P(x <= b) = 1 - exp(-b/scale).
            let frac = 1.0 - (-b / scale).exp();
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{handler=\"{h}\",le=\"{b}\"}} {}",
                (count * frac).floor()
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{handler=\"{h}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_sum{{handler=\"{h}\"}} {}",
            count * scale
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_count{{handler=\"{h}\"}} {count}"
        );
        n += BUCKETS.len() + 3;
    }

    out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
    if n < series {
        let base = 50e6 + 200e6 * unit(seed + 9);
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            (base * (1.0 + 0.1 * (now_s / 300.0).sin())).floor()
        );
        n += 1;
    }

    out.push_str("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n");
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    let mut cpu = 0;
    while n < series && cpu < 16 {
        for (mi, mode) in modes.iter().enumerate() {
            if n >= series {
                break;
            }
            let share = if *mode == "idle" { 0.7 } else { 0.3 / 7.0 }
                * (0.5 + unit(seed + 11_000 + (cpu * 8 + mi) as u64));
            let _ = writeln!(
                out,
                "node_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"{mode}\"}} {:.2}",
                share * now_s
            );
            n += 1;
        }
        cpu += 1;
    }

    out.push_str(
        "# HELP app_queue_length Items waiting in a work queue.\n# TYPE app_queue_length gauge\n",
    );
    let mut q = 0;
    while n < series {
        let s = seed + 20_000 + q as u64;
        let period = 60.0 + 600.0 * unit(s);
        let v =
            (50.0 * unit(s + 1) * (1.0 + (now_s * std::f64::consts::TAU / period).sin())).round();
        let _ = writeln!(out, "app_queue_length{{queue=\"q{q}\"}} {v}");
        n += 1;
        q += 1;
    }
    out
}

#[derive(Clone)]
struct FleetState {
    first_port: u16,
    series: usize,
}

async fn metrics(req: HttpRequest, st: web::Data<FleetState>) -> HttpResponse {
    let port = req.app_config().local_addr().port();
    let target = port.saturating_sub(st.first_port) as usize;
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render_target(target, st.series, now_s))
}

/// A running synthetic fleet: `targets` HTTP targets on consecutive loopback ports.
pub struct Fleet {
    pub addrs: Vec<SocketAddr>,
    handle: ServerHandle,
}

impl Fleet {
    /// Starts the fleet on `host:first_port..first_port+targets` on the current actix
    /// system.
    pub fn start(
        host: &str,
        first_port: u16,
        targets: usize,
        series: usize,
    ) -> std::io::Result<Fleet> {
        let st = web::Data::new(FleetState { first_port, series });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(st.clone())
                .wrap(actix_web::middleware::Compress::default())
                .route("/metrics", web::get().to(metrics))
        })
        .workers(1)
        .disable_signals();
        for i in 0..targets {
            let port = first_port
                .checked_add(i as u16)
                .ok_or_else(|| std::io::Error::other("fleet port range overflows"))?;
            server = server.bind((host, port))?;
        }
        let addrs = server.addrs();
        let srv = server.run();
        let handle = srv.handle();
        actix_web::rt::spawn(srv);
        Ok(Fleet { addrs, handle })
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// The demo's rule file (written beside its config as `demo-rules.yml`): the classic
/// sharding recipe, so a newcomer sees `shard:` series on every node and `job:` series
/// computed by the leader and committed through Raft.
pub const DEMO_RULES: &str = "\
# shoal demo rules (generated): the classic sharding recipe.
groups:
  - name: shard
    interval: 5s
    rules:
      - record: shard:http_requests:rate1m
        expr: sum without (instance) (rate(http_requests_total[1m]))
  - name: job
    interval: 10s
    scope: global
    rules:
      - record: job:http_requests:rate1m
        expr: sum without (shard) (shard:http_requests:rate1m)
";

/// The embedded demo configuration scraping the fleet's targets.
pub fn demo_config(fleet: &[SocketAddr]) -> String {
    let targets: Vec<String> = fleet.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "# shoal demo configuration (generated)\n\
         global:\n  scrape_interval: 5s\n  evaluation_interval: 15s\n  external_labels:\n    demo: 'true'\n\
         rule_files: ['demo-rules.yml']\n\
         scrape_configs:\n\
         \x20 - job_name: fleet\n    static_configs:\n      - targets: [{}]\n        labels:\n          env: demo\n",
        targets.join(", ")
    )
}

/// `shoal demo`: the fleet and a local cluster of `args.nodes` `shoal run` processes,
/// until Ctrl-C.
pub fn run(args: crate::cli::DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    let tmp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempdir_in_system()?;
            tmp.clone()
        }
    };
    std::fs::create_dir_all(&data_dir)?;
    let first: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {:?} is not an ip:port", args.listen))?;
    let addrs = local_cluster::consecutive(first, args.nodes.max(1))?;
    let exe = std::env::current_exe().context("locating the shoal binary")?;
    let res = actix::System::new().block_on(async {
        let fleet = Fleet::start(
            "127.0.0.1",
            args.fleet_port,
            args.targets,
            args.series_per_target,
        )
        .with_context(|| format!("starting the synthetic fleet on ports {}+", args.fleet_port))?;
        let config_path = data_dir.join("demo-prometheus.yml");
        std::fs::write(data_dir.join("demo-rules.yml"), DEMO_RULES)?;
        std::fs::write(&config_path, demo_config(&fleet.addrs))?;
        // Even on loopback the demo's nodes authenticate each other, as a real
        // cluster's must (docs/security.md).
        crate::ctl::new_secret(&local_cluster::secret_path(&data_dir))?;
        let mut cluster =
            local_cluster::LocalCluster::start(&exe, &config_path, &data_dir, &addrs)?;
        let outcome = tokio::select! {
            r = wait_formed(&mut cluster, &data_dir, args.targets) => r.map(Some),
            _ = crate::app::wait_for_shutdown_signal() => Ok(None),
        };
        if let Ok(Some(table)) = &outcome {
            print_banner(&args, &config_path, &data_dir, &addrs, table);
            crate::app::wait_for_shutdown_signal().await;
        }
        println!("stopping the demo cluster...");
        cluster.stop(Duration::from_secs(30));
        fleet.stop().await;
        outcome.map(|_| ())
    });
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    res.map(|_| std::process::ExitCode::SUCCESS)
}

/// A success answer of `/api/v1/cluster`.
#[derive(serde::Deserialize)]
struct Envelope {
    data: crate::web::cluster::ClusterDoc,
}

/// Polls the first node's `/api/v1/cluster` until every node is up and every target
/// owned; returns the cluster table. Fails when a node exits.
async fn wait_formed(
    cluster: &mut local_cluster::LocalCluster,
    data_dir: &std::path::Path,
    targets: usize,
) -> anyhow::Result<String> {
    let addrs = cluster.addrs();
    let url = format!("http://{}/api/v1/cluster", addrs[0]);
    crate::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .tls_backend_preconfigured(crate::tls::client_config(None, None)?)
        .build()?;
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        if let Some((i, st)) = cluster.exited().into_iter().next() {
            let log = local_cluster::log_path(data_dir, i);
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            anyhow::bail!(
                "node {i} exited with {st}; the end of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Ok(resp) = client.get(&url).send().await
            && let Ok(body) = resp.bytes().await
            && let Ok(v) = serde_json::from_slice::<Envelope>(&body)
            && local_cluster::formed(&v.data, addrs.len(), targets)
        {
            return Ok(crate::ctl::render_table(&v.data));
        }
        if !warned && started.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "the cluster is slow to form; logs: {}/node-*.log",
                data_dir.display()
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_banner(
    args: &crate::cli::DemoArgs,
    config: &std::path::Path,
    data_dir: &std::path::Path,
    addrs: &[SocketAddr],
    table: &str,
) {
    let url = format!("http://{}", addrs[0]);
    println!(
        "shoal demo is running: a {}-node cluster scraping {} targets × {} series every 5s.",
        addrs.len(),
        args.targets,
        args.series_per_target
    );
    let nodes: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    println!("  nodes:    {}", nodes.join("  "));
    println!("  logs:     {}/node-N.log", data_dir.display());
    println!("  config:   {}", config.display());
    println!("  cluster:  {url}/api/v1/cluster");
    println!("  targets:  {url}/api/v1/targets  (each node lists the targets it scrapes)");
    println!(
        "  query:    {url}/api/v1/query?query=sum%20by%20(handler)%20(rate(http_requests_total%5B1m%5D))"
    );
    println!(
        "  rules:    {url}/api/v1/rules  (shard:* on every node, job:* by the leader through Raft)"
    );
    println!(
        "  job level: {url}/api/v1/query?query=sum%20by%20(handler)%20(job:http_requests:rate1m)"
    );
    println!("  Grafana/promtool: use any node as a Prometheus data source.");
    println!();
    print!("{table}");
    println!();
    let next = addrs.len() + 1;
    if let Ok(more) = local_cluster::consecutive(addrs[0], next) {
        let cmd = local_cluster::run_args(config, data_dir, next, more[next - 1], addrs[0]);
        println!(
            "Add node {next} and watch the targets rebalance (about 1/{next} of them move to it):"
        );
        println!("  shoal {}", cmd.join(" "));
        println!("  shoal cluster status --node {}", addrs[0]);
        println!(
            "Stop it with Ctrl-C (it keeps its id) or `shoal cluster leave --node {} --cluster.secret-file {}` (it hands its targets back).",
            more[next - 1],
            local_cluster::secret_path(data_dir).display()
        );
    }
    println!("Press Ctrl-C to stop the demo.");
}

/// `shoal fleet`: only the synthetic targets, until SIGINT or SIGTERM (the demo target
/// service of `docker-compose.yml`).
pub fn run_fleet(args: crate::cli::FleetArgs) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context as _;
    anyhow::ensure!(args.targets > 0, "--targets must be at least 1");
    actix::System::new().block_on(async {
        let fleet = Fleet::start(
            &args.host,
            args.first_port,
            args.targets,
            args.series_per_target,
        )
        .with_context(|| {
            format!(
                "starting {} synthetic targets on {}:{}+",
                args.targets, args.host, args.first_port
            )
        })?;
        tracing::info!(
            targets = fleet.addrs.len(),
            series_per_target = args.series_per_target,
            first = ?fleet.addrs.first(),
            "synthetic fleet is serving /metrics"
        );
        crate::app::wait_for_shutdown_signal().await;
        fleet.stop().await;
        anyhow::Ok(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A fresh directory under the system temp dir for a demo without `--data-dir`.
fn tempdir_in_system() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requested_number_of_series() {
        for series in [10, 100, 300, 1000] {
            let text = render_target(3, series, 1_700_000_000.0);
            let n = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count();
            assert_eq!(n, series, "series={series}");
        }
    }

    #[test]
    fn counters_do_not_decrease() {
        let a = render_target(1, 300, 1_700_000_000.0);
        let b = render_target(1, 300, 1_700_000_015.0);
        for (la, lb) in a.lines().zip(b.lines()) {
            if la.starts_with("http_requests_total{") {
                let va: f64 = la.rsplit(' ').next().unwrap().parse().unwrap();
                let vb: f64 = lb.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(vb >= va);
            }
        }
    }

    #[test]
    fn fleet_without_targets_is_an_error() {
        let args = crate::cli::FleetArgs {
            host: "127.0.0.1".into(),
            targets: 0,
            series_per_target: 10,
            first_port: 19100,
        };
        let err = run_fleet(args).expect_err("zero targets accepted");
        assert!(err.to_string().contains("--targets"), "{err}");
    }
}
