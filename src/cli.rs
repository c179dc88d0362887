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
    Run(RunArgs),
    /// Start a local demo: a node with an embedded config plus a synthetic target fleet.
    Demo(DemoArgs),
    /// Check files.
    Check {
        #[command(subcommand)]
        what: CheckCommand,
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
pub enum CheckCommand {
    /// Validate a prometheus.yml (and the rule files it names).
    Config {
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
    /// Data directory (sled database and WAL).
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
    /// Maximum time a query may run.
    #[arg(long = "query.timeout", default_value = "2m", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Maximum number of samples a single query may load into memory.
    #[arg(long = "query.max-samples", default_value_t = 50_000_000)]
    pub query_max_samples: usize,
    /// How far back an instant selector looks for a sample.
    #[arg(long = "query.lookback-delta", default_value = "5m", value_parser = parse_duration)]
    pub query_lookback_delta: Duration,
    /// Maximum number of queries evaluated at once.
    #[arg(long = "query.max-concurrency", default_value_t = 20)]
    pub query_max_concurrency: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address the demo node serves HTTP on.
    #[arg(long = "listen", default_value = "127.0.0.1:9090")]
    pub listen: String,
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

/// Parses a Prometheus duration for a flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::duration::parse(s).map_err(|e| e.to_string())
}
