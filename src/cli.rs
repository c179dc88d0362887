//! Command-line flags (clap). Names follow Prometheus's flags where one exists
//! (`--storage.retention`, `--query.timeout`, ...).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A Prometheus-compatible monitoring system that shards itself"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log level (or a tracing filter such as `shoal=debug,info`).
    #[arg(long = "log.level", default_value = "info", global = true)]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Logfmt,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: scrape the configured targets, store samples, serve the API.
    Run(Box<RunArgs>),
    /// Start a local demo: a node with an embedded config plus a synthetic target fleet.
    Demo(DemoArgs),
    /// Check files.
    Check {
        #[command(subcommand)]
        what: CheckCommand,
    },
    /// Inspect a stopped node's data directory; import (backfill) samples from a file.
    Tsdb {
        #[command(subcommand)]
        what: TsdbCommand,
    },
    /// Inspect or change the cluster membership through a node's HTTP API.
    Cluster {
        #[command(subcommand)]
        what: ClusterCommand,
    },
    /// Serve only the demo's synthetic target fleet (for a container of its own).
    Fleet(FleetArgs),
    /// Probe a URL (default: a local node's `/-/healthy`); exit 0 on a 2xx answer,
    /// 1 otherwise. The container image's HEALTHCHECK, which has no curl.
    Healthcheck {
        /// URL to GET.
        #[arg(default_value = "http://127.0.0.1:9090/-/healthy")]
        url: String,
        /// Longest wait for the answer.
        #[arg(long = "timeout", default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Run PromQL test scripts (Prometheus's promqltest format).
    #[command(name = "promql-test")]
    PromqlTest {
        /// Test script files (`.test`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TsdbCommand {
    /// Read every record of a stopped node's data dir (series, chunks, WAL, Raft log) and
    /// report the corrupt ones; exit 1 when there are any (and `--repair` was not given).
    Check {
        /// The node's `--data-dir`.
        dir: PathBuf,
        /// Move corrupt records aside (the `quarantine` tree, `DIR/quarantine/`) so the
        /// node stops skipping them at every start.
        #[arg(long)]
        repair: bool,
    },
    /// Import (backfill) historical samples from a file through a running node, which
    /// stores each series on its owners in the cluster.
    Import {
        #[command(subcommand)]
        format: ImportFormat,
    },
}

/// The file formats `shoal tsdb import` reads.
#[derive(Debug, Subcommand)]
pub enum ImportFormat {
    /// OpenMetrics text, as `promtool tsdb create-blocks-from openmetrics` reads it:
    /// every sample with a timestamp, increasing within each series, `# EOF` at the end.
    /// The whole file is checked first (an error names the line and nothing is
    /// stored), then sent to the node in batches. Needs the node's
    /// `--web.enable-admin-api`.
    Openmetrics {
        /// The file to import.
        file: PathBuf,
        #[command(flatten)]
        target: ClusterTarget,
        /// Bytes of file text per request (at most 16MiB).
        #[arg(long = "batch-size", default_value = "4MiB", value_parser = parse_batch_size)]
        batch_size: u64,
    },
}

/// Validates `--batch-size`: 1 KiB to 16 MiB.
fn parse_batch_size(s: &str) -> Result<u64, String> {
    let n = crate::config::parse_base2_bytes(s)?;
    if !(1 << 10..=16 << 20).contains(&n) {
        return Err(format!("must be between 1KiB and 16MiB, got {s}"));
    }
    Ok(n)
}

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// Validate a prometheus.yml (and the rule files it names).
    Config {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate web configuration files (`--web.config.file`) and the certificates,
    /// keys and CAs they name, like `promtool check web-config`.
    #[command(name = "web-config")]
    WebConfig {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Configuration file (prometheus.yml format).
    #[arg(
        long = "config",
        alias = "config.file",
        default_value = "prometheus.yml"
    )]
    pub config: PathBuf,
    /// Data directory (sled database of index and chunks, `wal/` segment files).
    #[arg(
        long = "data-dir",
        alias = "storage.tsdb.path",
        default_value = "data/"
    )]
    pub data_dir: PathBuf,
    /// Address to serve HTTP on.
    #[arg(
        long = "listen",
        alias = "web.listen-address",
        default_value = "0.0.0.0:9090"
    )]
    pub listen: String,
    /// How long to keep samples (e.g. 15d, 12h).
    #[arg(long = "storage.retention", alias = "storage.tsdb.retention.time", default_value = "15d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Samples more than this ahead of the node's clock are rejected (per series,
    /// counted in `shoal_scrape_samples_out_of_bounds_total{reason="too_far_in_future"}`).
    #[arg(long = "storage.tsdb.max-future", default_value = "10m", value_parser = parse_duration)]
    pub max_future: Duration,
    /// How often the TSDB seals head chunks that can no longer grow, truncates the WAL
    /// and applies retention.
    #[arg(long = "storage.tsdb.maintenance-interval", default_value = "1m", value_parser = parse_duration)]
    pub maintenance_interval: Duration,
    /// Maximum time a query may run.
    #[arg(long = "query.timeout", default_value = "2m", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Maximum number of samples a single query may load into memory.
    #[arg(long = "query.max-samples", default_value_t = 50_000_000)]
    pub query_max_samples: usize,
    /// How far back an instant selector looks for a sample.
    #[arg(long = "query.lookback-delta", default_value = "5m", value_parser = parse_duration)]
    pub query_lookback_delta: Duration,
    /// Aggregation pushdown in a cluster (members aggregate their own series); `false`
    /// evaluates every query over the members' raw samples (for comparisons).
    #[arg(long = "query.pushdown", default_value_t = true, action = clap::ArgAction::Set)]
    pub query_pushdown: bool,
    /// Maximum number of queries evaluated at once.
    #[arg(long = "query.max-concurrency", default_value_t = 20)]
    pub query_max_concurrency: usize,
    /// Record a scrape at its scheduled instant when it started within
    /// `--scrape.timestamp-tolerance` of it (Prometheus's default): regular timestamps
    /// compress to a bit each instead of two bytes.
    #[arg(long = "scrape.adjust-timestamps", default_value_t = true, action = clap::ArgAction::Set)]
    pub scrape_adjust_timestamps: bool,
    /// How far from its scheduled instant a scrape may start and still be recorded at it.
    #[arg(long = "scrape.timestamp-tolerance", default_value = "2ms", value_parser = parse_duration)]
    pub scrape_timestamp_tolerance: Duration,
    /// Largest scrape body accepted from any target (after gzip decompression), also
    /// for jobs whose `body_size_limit` is 0 (none); 0 lifts the ceiling.
    #[arg(long = "scrape.max-body-size", default_value = "256MiB", value_parser = crate::config::parse_base2_bytes)]
    pub scrape_max_body_size: u64,
    /// Enable `POST /-/reload` and `POST /-/quit` (Prometheus's lifecycle API); without
    /// it they answer 403 and the config reloads on SIGHUP only.
    #[arg(long = "web.enable-lifecycle")]
    pub web_enable_lifecycle: bool,
    /// Enable the admin API (`/api/v1/admin/tsdb/*`, as Prometheus's
    /// `--web.enable-admin-api`); without it those routes answer 503.
    #[arg(long = "web.enable-admin-api")]
    pub web_enable_admin_api: bool,
    /// Web configuration file (Prometheus's format): TLS, basic authentication and
    /// response headers of the HTTP API. Reloaded with the configuration; turning TLS
    /// on or off needs a restart.
    #[arg(long = "web.config.file")]
    pub web_config_file: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Cluster flags of `shoal run`. Without `--cluster.seeds` the node is a one-node
/// cluster of its own.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Seed nodes, `host:port,...`; a host may be a DNS name resolving to several nodes.
    #[arg(long = "cluster.seeds", value_delimiter = ',')]
    pub seeds: Vec<String>,
    /// `host:port` other nodes reach this node at. Default: the listen address; when
    /// the listen host is unspecified (0.0.0.0, [::]), this machine's hostname.
    #[arg(long = "cluster.advertise")]
    pub advertise: Option<String>,
    /// File holding the shared cluster secret (same file on every node), one per line:
    /// the first is sent, every line is accepted (rotation, docs/security.md). When
    /// set, internal and admin cluster routes require it.
    #[arg(long = "cluster.secret-file")]
    pub secret_file: Option<PathBuf>,
    /// This node's certificate (PEM, leaf first) for mutual TLS between nodes, signed by
    /// the cluster CA with the advertised host as a SAN. With `--cluster.tls.key-file`
    /// and `--cluster.tls.ca-file`: nodes speak HTTPS to each other and the internal
    /// routes need a client certificate of the cluster CA (docs/security.md).
    #[arg(long = "cluster.tls.cert-file", requires_all = ["tls_key_file", "tls_ca_file"])]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `--cluster.tls.cert-file`.
    #[arg(long = "cluster.tls.key-file", requires_all = ["tls_cert_file", "tls_ca_file"])]
    pub tls_key_file: Option<PathBuf>,
    /// The cluster CA's certificate: peers' certificates must chain to it.
    #[arg(long = "cluster.tls.ca-file", requires_all = ["tls_cert_file", "tls_key_file"])]
    pub tls_ca_file: Option<PathBuf>,
    /// Form or join a cluster on a non-loopback address without a secret or mutual TLS
    /// (anyone who reaches the port can then change the membership and read the data).
    #[arg(long = "cluster.insecure")]
    pub insecure: bool,
    /// Most voters in the Raft group (odd); further nodes join as learners.
    #[arg(long = "cluster.max-voters", default_value_t = 5, value_parser = parse_max_voters)]
    pub max_voters: usize,
    /// A member silent this long is committed as down.
    #[arg(long = "cluster.down-after", default_value = "10s", value_parser = parse_duration)]
    pub down_after: Duration,
    /// How fast a leaving node moves its samples to their new owners, in bytes of
    /// chunks per second (0: no limit). Bounds the load a leave puts on the receivers.
    #[arg(long = "cluster.drain-rate", default_value = "64MiB", value_parser = crate::config::parse_base2_bytes)]
    pub drain_rate: u64,
    /// How many nodes scrape each target (the top R members by rendezvous hash).
    #[arg(long = "cluster.replication-factor", default_value_t = 1, value_parser = parse_replication_factor)]
    pub replication_factor: usize,
    /// Raft heartbeat interval (advanced).
    #[arg(long = "cluster.heartbeat-interval", default_value = "200ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Minimum Raft election timeout; the maximum is twice this (advanced). A follower
    /// campaigns after the leader has been silent for the maximum plus a random
    /// timeout in [minimum, maximum] (openraft's leader lease), i.e. 1.8–2.4 s by default.
    #[arg(long = "cluster.election-timeout", default_value = "600ms", value_parser = parse_duration)]
    pub election_timeout: Duration,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        ClusterArgs {
            seeds: Vec::new(),
            advertise: None,
            secret_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            insecure: false,
            max_voters: 5,
            down_after: Duration::from_secs(10),
            replication_factor: 1,
            drain_rate: 64 << 20,
            heartbeat_interval: Duration::from_millis(200),
            election_timeout: Duration::from_millis(600),
        }
    }
}

/// `shoal cluster ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Print a node's view of the cluster as a table.
    Status {
        #[command(flatten)]
        target: ClusterTarget,
        /// Print the `GET /api/v1/cluster` data as JSON instead of a table.
        #[arg(long = "json")]
        json: bool,
    },
    /// Make a node leave the cluster gracefully (it leaves, then exits).
    Leave(ClusterTarget),
    /// Remove a member that is gone for good (sent to any node; forwarded to the leader).
    /// With replication factor 1 the samples only that member holds are lost with it:
    /// the command says so and acts only with `--yes`.
    Remove {
        /// Id of the member to remove (as shown by `shoal cluster status`).
        node_id: String,
        /// Remove it even though its samples are lost (replication factor 1).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: ClusterTarget,
    },
    /// Write a new random cluster secret (256 bits) to FILE, readable by its owner
    /// only, for `--cluster.secret-file`. An existing FILE is kept as it is (so that
    /// every node started from the same volume shares one secret).
    NewSecret {
        /// Where to write the secret.
        file: PathBuf,
    },
}

/// Which node a `shoal cluster` command talks to.
#[derive(Debug, Clone, Args)]
pub struct ClusterTarget {
    /// `host:port` (or `http://host:port`, `https://host:port`) of a node's HTTP API.
    /// A node with cluster TLS serves HTTPS: give `https://` and
    /// `--cluster.tls.ca-file`.
    #[arg(long = "node", default_value = "127.0.0.1:9090")]
    pub node: String,
    /// File holding the cluster secret, for the admin routes (leave, remove, import).
    #[arg(long = "cluster.secret-file")]
    pub secret_file: Option<PathBuf>,
    /// CA certificate to verify an HTTPS node with (its cluster CA or web CA).
    #[arg(long = "cluster.tls.ca-file")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate to present (a node certificate of the cluster CA: what
    /// the admin routes accept instead of the secret under cluster TLS).
    #[arg(long = "cluster.tls.cert-file", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of `--cluster.tls.cert-file`.
    #[arg(long = "cluster.tls.key-file", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

/// Validates `--cluster.replication-factor`: a positive number.
pub fn parse_replication_factor(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a positive integer: {e}")),
    }
}

/// Validates `--cluster.max-voters`: a positive odd number.
pub fn parse_max_voters(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("not a positive integer: {e}"))?;
    if n == 0 || n.is_multiple_of(2) {
        return Err(format!(
            "must be odd and at least 1 (an even number of voters tolerates no more failures than one less), got {n}"
        ));
    }
    Ok(n)
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address of the first node; node N listens on the port after node N-1's.
    #[arg(long = "listen", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Number of nodes (`shoal run` processes) in the demo cluster.
    #[arg(long = "nodes", default_value_t = 3)]
    pub nodes: usize,
    /// Data directory (default: a fresh temporary directory, removed on exit).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Number of synthetic targets.
    #[arg(long = "targets", default_value_t = 10)]
    pub targets: usize,
    /// Series per synthetic target.
    #[arg(long = "series-per-target", default_value_t = 300)]
    pub series_per_target: usize,
    /// First port of the synthetic targets.
    #[arg(long = "fleet-port", default_value_t = 19100)]
    pub fleet_port: u16,
}

/// `shoal fleet`: the demo's synthetic targets without a node.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Host (address) to bind the targets on.
    #[arg(long = "host", default_value = "0.0.0.0")]
    pub host: String,
    /// Number of synthetic targets, on consecutive ports from `--first-port`.
    #[arg(long = "targets", default_value_t = 10)]
    pub targets: usize,
    /// Series per synthetic target.
    #[arg(long = "series-per-target", default_value_t = 300)]
    pub series_per_target: usize,
    /// Port of the first target.
    #[arg(long = "first-port", default_value_t = 19100)]
    pub first_port: u16,
}

/// Parses a Prometheus duration for a flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::duration::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_factor_must_be_positive() {
        assert_eq!(parse_replication_factor("2"), Ok(2));
        assert!(parse_replication_factor("0").is_err());
        assert!(parse_replication_factor("-1").is_err());
    }

    #[test]
    fn max_voters_must_be_odd() {
        assert_eq!(parse_max_voters("5"), Ok(5));
        assert_eq!(parse_max_voters("1"), Ok(1));
        assert!(parse_max_voters("4").is_err());
        assert!(parse_max_voters("0").is_err());
        assert!(parse_max_voters("x").is_err());
    }

    #[test]
    fn cluster_flags_parse() {
        let cli = Cli::try_parse_from([
            "shoal",
            "run",
            "--cluster.seeds",
            "a:1,b:2",
            "--cluster.down-after",
            "3s",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.cluster.seeds, vec!["a:1", "b:2"]);
        assert_eq!(args.cluster.down_after, Duration::from_secs(3));
        assert_eq!(args.cluster.max_voters, 5);
        assert!(
            Cli::try_parse_from(["shoal", "run", "--cluster.max-voters", "4"]).is_err(),
            "even max-voters accepted"
        );
        let cli = Cli::try_parse_from(["shoal", "cluster", "remove", "42", "--node", "h:1"])
            .expect("parse remove");
        let Command::Cluster {
            what: ClusterCommand::Remove {
                node_id, target, ..
            },
        } = cli.command
        else {
            panic!("not cluster remove");
        };
        assert_eq!(node_id, "42");
        assert_eq!(target.node, "h:1");
    }

    #[test]
    fn container_subcommands_parse() {
        let cli = Cli::try_parse_from(["shoal", "healthcheck"]).expect("parse");
        let Command::Healthcheck { url, timeout } = cli.command else {
            panic!("not healthcheck");
        };
        assert_eq!(url, "http://127.0.0.1:9090/-/healthy");
        assert_eq!(timeout, Duration::from_secs(5));
        let cli =
            Cli::try_parse_from(["shoal", "fleet", "--targets", "60", "--first-port", "19200"])
                .expect("parse fleet");
        let Command::Fleet(f) = cli.command else {
            panic!("not fleet");
        };
        assert_eq!(
            (f.targets, f.first_port, f.series_per_target),
            (60, 19200, 300)
        );
        assert_eq!(f.host, "0.0.0.0");
        let cli = Cli::try_parse_from(["shoal", "cluster", "status", "--json", "--node", "h:1"])
            .expect("parse status");
        let Command::Cluster {
            what: ClusterCommand::Status { target, json },
        } = cli.command
        else {
            panic!("not cluster status");
        };
        assert!(json);
        assert_eq!(target.node, "h:1");
    }
}
