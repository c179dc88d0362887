//! `prometheus.yml`: serde structs, Prometheus 2.42 defaults, validation and path
//! resolution; plus rule files ([`rules`]) and `shoal check config` ([`check`]).
//!
//! Owns: [`Config`], [`GlobalConfig`], [`ScrapeConfig`], [`TargetGroup`],
//! [`FileSdConfig`], [`BasicAuth`], [`Authorization`], [`ConfigError`], [`load_file`] and
//! [`load_str`]. Every YAML struct rejects unknown keys (the error names the key and its
//! line/column), and every key Prometheus knows but shoal does not implement is rejected
//! with "`key` is not supported by shoal yet" — nothing is silently ignored.
//! [`Config::validate`] runs once at load. No long-lived state: reloads build a new
//! [`Config`].

pub mod check;
pub mod glob;
pub mod redact;
pub mod rules;
mod units;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::model::labels::is_valid_label_name;
use crate::model::relabel::RelabelConfig;
use crate::model::{Label, Labels, duration};

pub use check::{CheckReport, check_config_file};
pub use rules::{RuleFile, load_rule_file};
pub use units::parse_base2_bytes;

/// Largest config, rule or file_sd file shoal reads (bytes).
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Largest secret file (password, token, cluster secret) shoal reads (bytes).
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// An error loading or validating a config, rule or file_sd file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax, an unknown or unsupported key, or a bad value; `message` ends with
    /// the position ("at line L, column C") when the parser knows it.
    #[error("{file}: {message}")]
    Yaml {
        file: String,
        message: String,
        line: Option<u64>,
        column: Option<u64>,
    },
    /// A semantic error found after parsing (e.g. scrape timeout > interval).
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// Errors found in a rule file, one line each.
    #[error("{file}: {}", errors.join("; "))]
    Rules { file: String, errors: Vec<String> },
}

impl ConfigError {
    fn yaml(file: &str, e: &serde_saphyr::Error) -> ConfigError {
        let loc = e.location();
        ConfigError::Yaml {
            file: file.to_string(),
            message: e.without_snippet().to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    }

    fn invalid(file: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: file.to_string(),
            message: message.into(),
        }
    }
}

/// Parser options shared by every YAML file shoal reads: one document, bounded depth,
/// aliases and size, so an edited file cannot exhaust memory.
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 64,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_nodes: 2_000_000,
            max_total_scalar_bytes: MAX_FILE_BYTES as usize,
        },
    }
}

/// Parses one YAML document into `T`, mapping errors to [`ConfigError::Yaml`].
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| ConfigError::yaml(file, &e))
}

/// Reads a whole file, refusing files over [`MAX_FILE_BYTES`].
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    read_capped(path, MAX_FILE_BYTES).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole UTF-8 file of at most `max` bytes. Only regular files are read (a FIFO
/// or device named by a config would stall or never end), and the cap holds while
/// reading, so a file that says it is empty (`/proc`) or grows cannot fill the memory.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let too_big = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("file is larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut text = String::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(too_big());
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// Public, resolved shapes.

/// A loaded and validated `prometheus.yml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: GlobalConfig,
    pub scrape_configs: Vec<ScrapeConfig>,
    /// Rule file patterns, resolved against the config file's directory.
    pub rule_files: Vec<String>,
    /// The file's text as read, for `/api/v1/status/config`.
    pub original: String,
    /// The config file's directory (None for [`load_str`]).
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub evaluation_interval: Duration,
    pub external_labels: Labels,
}

impl Default for GlobalConfig {
    fn default() -> GlobalConfig {
        GlobalConfig {
            scrape_interval: Duration::from_secs(60),
            scrape_timeout: Duration::from_secs(10),
            evaluation_interval: Duration::from_secs(60),
            external_labels: Labels::empty(),
        }
    }
}

/// One `scrape_configs` entry with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    pub job_name: String,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub metrics_path: String,
    /// Always `"http"` for now (TLS is not supported yet).
    pub scheme: String,
    pub params: BTreeMap<String, Vec<String>>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub static_configs: Vec<TargetGroup>,
    pub file_sd_configs: Vec<FileSdConfig>,
    pub relabel_configs: Vec<RelabelConfig>,
    pub metric_relabel_configs: Vec<RelabelConfig>,
    pub sample_limit: u64,
    pub label_limit: u64,
    pub label_name_length_limit: u64,
    pub label_value_length_limit: u64,
    /// Bytes; 0 = no limit.
    pub body_size_limit: u64,
    pub target_limit: u64,
    pub basic_auth: Option<BasicAuth>,
    /// Also set from the legacy `bearer_token`/`bearer_token_file` (type `Bearer`).
    pub authorization: Option<Authorization>,
    pub follow_redirects: bool,
    /// Accepted for compatibility; shoal scrapes over HTTP/1.1, which Prometheus also
    /// falls back to.
    pub enable_http2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// `Bearer` unless configured.
    pub type_: String,
    pub credentials: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

/// A group of targets sharing labels: one `static_configs` entry or one entry of a
/// file_sd file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetGroup {
    /// `host:port` addresses.
    pub targets: Vec<String>,
    pub labels: Labels,
    /// Where the group came from: its index for static configs, `path:index` for files.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSdConfig {
    /// Paths or globs (wildcards in the last component), resolved against the config
    /// file's directory.
    pub files: Vec<String>,
    pub refresh_interval: Duration,
}

// ---------------------------------------------------------------------------------------
// Loading.

/// Loads, resolves and validates a config file, including every rule file it names.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = read_file(path)?;
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    load_with(&text, &path.display().to_string(), Some(&dir))
}

/// Parses and validates config text. Relative paths stay relative to the working
/// directory; rule files are validated like [`load_file`] does.
pub fn load_str(s: &str) -> Result<Config, ConfigError> {
    load_with(s, "<input>", None)
}

fn load_with(text: &str, file: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
    let raw: RawConfig = parse_yaml(text, file)?;
    let cfg = Config::from_raw(raw, text, dir).map_err(|m| ConfigError::invalid(file, m))?;
    cfg.validate().map_err(|m| ConfigError::invalid(file, m))?;
    for path in cfg.rule_file_paths()? {
        load_rule_file(&path)?;
    }
    Ok(cfg)
}

/// Prometheus's `JoinDir`: relative paths are joined onto the config's directory and
/// cleaned lexically as Go's `filepath.Join` does; absolute and empty paths are kept.
fn join_dir(dir: Option<&Path>, p: &str) -> String {
    match dir {
        Some(d) if !p.is_empty() && !Path::new(p).is_absolute() => {
            clean_path(&format!("{}/{p}", d.to_string_lossy()))
        }
        _ => p.to_string(),
    }
}

/// Go's `filepath.Clean` (Unix): collapses `//`, drops `.`, resolves `..` lexically.
fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".into(),
        (false, false) => body,
    }
}

impl Config {
    /// The job with this name, if any.
    pub fn scrape_config(&self, job: &str) -> Option<&ScrapeConfig> {
        self.scrape_configs.iter().find(|s| s.job_name == job)
    }

    /// Expands `rule_files` (globs allowed in the last path component) to the existing
    /// files, in order, without duplicates. A pattern matching nothing is not an error,
    /// as in Prometheus.
    pub fn rule_file_paths(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for pat in &self.rule_files {
            let paths = glob::expand(pat).map_err(|m| ConfigError::invalid("rule_files", m))?;
            for p in paths {
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Checks the invariants Prometheus enforces on load. [`load_file`]/[`load_str`]
    /// run it; it is public for configs built in code.
    pub fn validate(&self) -> Result<(), String> {
        let g = &self.global;
        if g.scrape_timeout > g.scrape_interval {
            return Err("global scrape timeout greater than scrape interval".into());
        }
        let mut jobs = HashSet::new();
        for sc in &self.scrape_configs {
            if sc.job_name.is_empty() {
                return Err("job_name is empty".into());
            }
            if !jobs.insert(sc.job_name.as_str()) {
                return Err(format!(
                    "found multiple scrape configs with job name {:?}",
                    sc.job_name
                ));
            }
            if sc.scrape_interval.is_zero() {
                return Err(format!(
                    "scrape interval cannot be 0 for scrape config with job name {:?}",
                    sc.job_name
                ));
            }
            if sc.scrape_timeout > sc.scrape_interval {
                return Err(format!(
                    "scrape timeout greater than scrape interval for scrape config with job name {:?}",
                    sc.job_name
                ));
            }
            if sc.scheme != "http" {
                return Err(format!(
                    "scheme {:?} for job {:?}: only \"http\" is supported by shoal (no TLS support yet)",
                    sc.scheme, sc.job_name
                ));
            }
            for rc in sc.relabel_configs.iter().chain(&sc.metric_relabel_configs) {
                rc.validate()
                    .map_err(|e| format!("job {:?}: {e}", sc.job_name))?;
            }
        }
        for rf in &self.rule_files {
            if !valid_glob_path(rf) {
                return Err(format!("invalid rule file path {rf:?}"));
            }
        }
        Ok(())
    }

    fn from_raw(raw: RawConfig, text: &str, dir: Option<&Path>) -> Result<Config, String> {
        let global = match raw.global {
            Some(g) => g.resolve()?,
            None => GlobalConfig::default(),
        };
        let mut scrape_configs = Vec::new();
        for (i, sc) in raw
            .scrape_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let Some(sc) = sc else {
                return Err(format!("empty or null scrape config section (entry {i})"));
            };
            scrape_configs.push(sc.resolve(&global, dir)?);
        }
        let mut rule_files = Vec::new();
        for rf in raw.rule_files.unwrap_or_default() {
            if !valid_glob_path(&rf) {
                return Err(format!("invalid rule file path {rf:?}"));
            }
            rule_files.push(join_dir(dir, &rf));
        }
        Ok(Config {
            global,
            scrape_configs,
            rule_files,
            original: text.to_string(),
            dir: dir.map(Path::to_path_buf),
        })
    }
}

/// Prometheus's `patRulePath`: `^[^*]*(\*[^/]*)?$` — at most one `*`, only in the last
/// path component.
fn valid_glob_path(p: &str) -> bool {
    match p.find('*') {
        None => true,
        Some(i) => !p[i + 1..].contains(['*', '/']),
    }
}

/// Prometheus's `patFileSDName`: a valid glob path ending in .json/.yml/.yaml.
fn valid_file_sd_name(p: &str) -> bool {
    let lower_ok = [".json", ".yml", ".yaml", ".JSON", ".YML", ".YAML"]
        .iter()
        .any(|ext| p.ends_with(ext));
    lower_ok && valid_glob_path(p)
}

// ---------------------------------------------------------------------------------------
// Raw YAML shapes.

/// A key Prometheus knows but shoal does not implement: deserializing one is an error.
struct Unsupported<K>(PhantomData<K>);

trait UnsupportedKey {
    const NAME: &'static str;
}

impl<'de, K: UnsupportedKey> Deserialize<'de> for Unsupported<K> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(format!(
            "`{}` is not supported by shoal yet",
            K::NAME
        )))
    }
}

macro_rules! unsupported_keys {
    ($($k:ident),* $(,)?) => {
        #[allow(non_camel_case_types)]
        mod keys {
            $(
                pub struct $k;
                impl super::UnsupportedKey for $k {
                    const NAME: &'static str = stringify!($k);
                }
            )*
        }
    };
}

unsupported_keys!(
    // top level
    alerting,
    remote_write,
    remote_read,
    storage,
    tracing,
    scrape_config_files,
    // global (query_log_file in 2.42; the limits are global only in later versions)
    query_log_file,
    keep_dropped_targets,
    scrape_protocols,
    // scrape config
    tls_config,
    proxy_url,
    no_proxy,
    proxy_from_environment,
    proxy_connect_header,
    oauth2,
    native_histogram_bucket_limit,
    native_histogram_min_bucket_factor,
    scrape_classic_histograms,
    enable_compression,
    track_timestamps_staleness,
    // service discovery other than static and file
    azure_sd_configs,
    consul_sd_configs,
    digitalocean_sd_configs,
    docker_sd_configs,
    dockerswarm_sd_configs,
    dns_sd_configs,
    ec2_sd_configs,
    eureka_sd_configs,
    gce_sd_configs,
    hetzner_sd_configs,
    http_sd_configs,
    ionos_sd_configs,
    kubernetes_sd_configs,
    kuma_sd_configs,
    lightsail_sd_configs,
    linode_sd_configs,
    marathon_sd_configs,
    nerve_sd_configs,
    nomad_sd_configs,
    openstack_sd_configs,
    ovhcloud_sd_configs,
    puppetdb_sd_configs,
    scaleway_sd_configs,
    serverset_sd_configs,
    triton_sd_configs,
    uyuni_sd_configs,
    vultr_sd_configs,
);

type U<K> = Option<Unsupported<K>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the `Unsupported` fields exist only to reject their keys
struct RawConfig {
    global: Option<RawGlobal>,
    rule_files: Option<Vec<String>>,
    scrape_configs: Option<Vec<Option<RawScrapeConfig>>>,
    #[serde(default)]
    alerting: U<keys::alerting>,
    #[serde(default)]
    remote_write: U<keys::remote_write>,
    #[serde(default)]
    remote_read: U<keys::remote_read>,
    #[serde(default)]
    storage: U<keys::storage>,
    #[serde(default)]
    tracing: U<keys::tracing>,
    #[serde(default)]
    scrape_config_files: U<keys::scrape_config_files>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawGlobal {
    #[serde(default, deserialize_with = "de_duration")]
    scrape_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    evaluation_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_labels")]
    external_labels: Option<Labels>,
    #[serde(default)]
    query_log_file: U<keys::query_log_file>,
    #[serde(default)]
    keep_dropped_targets: U<keys::keep_dropped_targets>,
    #[serde(default)]
    scrape_protocols: U<keys::scrape_protocols>,
}

impl RawGlobal {
    /// Prometheus's `GlobalConfig.UnmarshalYAML` defaults and checks.
    fn resolve(self) -> Result<GlobalConfig, String> {
        let d = GlobalConfig::default();
        let scrape_interval = self
            .scrape_interval
            .filter(|d| !d.is_zero())
            .unwrap_or(d.scrape_interval);
        let timeout = self.scrape_timeout.unwrap_or(Duration::ZERO);
        if timeout > scrape_interval {
            return Err("global scrape timeout greater than scrape interval".into());
        }
        let scrape_timeout = if !timeout.is_zero() {
            timeout
        } else {
            d.scrape_timeout.min(scrape_interval)
        };
        Ok(GlobalConfig {
            scrape_interval,
            scrape_timeout,
            evaluation_interval: self
                .evaluation_interval
                .filter(|d| !d.is_zero())
                .unwrap_or(d.evaluation_interval),
            external_labels: self.external_labels.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawScrapeConfig {
    job_name: Option<String>,
    honor_labels: Option<bool>,
    honor_timestamps: Option<bool>,
    params: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    scrape_timeout: Option<Duration>,
    metrics_path: Option<String>,
    scheme: Option<String>,
    #[serde(default, deserialize_with = "de_bytes")]
    body_size_limit: Option<u64>,
    sample_limit: Option<u64>,
    target_limit: Option<u64>,
    label_limit: Option<u64>,
    label_name_length_limit: Option<u64>,
    label_value_length_limit: Option<u64>,
    static_configs: Option<Vec<RawTargetGroup>>,
    file_sd_configs: Option<Vec<RawFileSdConfig>>,
    relabel_configs: Option<Vec<Option<RelabelConfig>>>,
    metric_relabel_configs: Option<Vec<Option<RelabelConfig>>>,
    // HTTP client settings.
    basic_auth: Option<RawBasicAuth>,
    authorization: Option<RawAuthorization>,
    bearer_token: Option<String>,
    bearer_token_file: Option<String>,
    follow_redirects: Option<bool>,
    enable_http2: Option<bool>,
    #[serde(default)]
    tls_config: U<keys::tls_config>,
    #[serde(default)]
    proxy_url: U<keys::proxy_url>,
    #[serde(default)]
    no_proxy: U<keys::no_proxy>,
    #[serde(default)]
    proxy_from_environment: U<keys::proxy_from_environment>,
    #[serde(default)]
    proxy_connect_header: U<keys::proxy_connect_header>,
    #[serde(default)]
    oauth2: U<keys::oauth2>,
    #[serde(default)]
    native_histogram_bucket_limit: U<keys::native_histogram_bucket_limit>,
    #[serde(default)]
    native_histogram_min_bucket_factor: U<keys::native_histogram_min_bucket_factor>,
    #[serde(default)]
    scrape_classic_histograms: U<keys::scrape_classic_histograms>,
    #[serde(default)]
    enable_compression: U<keys::enable_compression>,
    #[serde(default)]
    track_timestamps_staleness: U<keys::track_timestamps_staleness>,
    #[serde(default)]
    keep_dropped_targets: U<keys::keep_dropped_targets>,
    #[serde(default)]
    scrape_protocols: U<keys::scrape_protocols>,
    #[serde(default)]
    azure_sd_configs: U<keys::azure_sd_configs>,
    #[serde(default)]
    consul_sd_configs: U<keys::consul_sd_configs>,
    #[serde(default)]
    digitalocean_sd_configs: U<keys::digitalocean_sd_configs>,
    #[serde(default)]
    docker_sd_configs: U<keys::docker_sd_configs>,
    #[serde(default)]
    dockerswarm_sd_configs: U<keys::dockerswarm_sd_configs>,
    #[serde(default)]
    dns_sd_configs: U<keys::dns_sd_configs>,
    #[serde(default)]
    ec2_sd_configs: U<keys::ec2_sd_configs>,
    #[serde(default)]
    eureka_sd_configs: U<keys::eureka_sd_configs>,
    #[serde(default)]
    gce_sd_configs: U<keys::gce_sd_configs>,
    #[serde(default)]
    hetzner_sd_configs: U<keys::hetzner_sd_configs>,
    #[serde(default)]
    http_sd_configs: U<keys::http_sd_configs>,
    #[serde(default)]
    ionos_sd_configs: U<keys::ionos_sd_configs>,
    #[serde(default)]
    kubernetes_sd_configs: U<keys::kubernetes_sd_configs>,
    #[serde(default)]
    kuma_sd_configs: U<keys::kuma_sd_configs>,
    #[serde(default)]
    lightsail_sd_configs: U<keys::lightsail_sd_configs>,
    #[serde(default)]
    linode_sd_configs: U<keys::linode_sd_configs>,
    #[serde(default)]
    marathon_sd_configs: U<keys::marathon_sd_configs>,
    #[serde(default)]
    nerve_sd_configs: U<keys::nerve_sd_configs>,
    #[serde(default)]
    nomad_sd_configs: U<keys::nomad_sd_configs>,
    #[serde(default)]
    openstack_sd_configs: U<keys::openstack_sd_configs>,
    #[serde(default)]
    ovhcloud_sd_configs: U<keys::ovhcloud_sd_configs>,
    #[serde(default)]
    puppetdb_sd_configs: U<keys::puppetdb_sd_configs>,
    #[serde(default)]
    scaleway_sd_configs: U<keys::scaleway_sd_configs>,
    #[serde(default)]
    serverset_sd_configs: U<keys::serverset_sd_configs>,
    #[serde(default)]
    triton_sd_configs: U<keys::triton_sd_configs>,
    #[serde(default)]
    uyuni_sd_configs: U<keys::uyuni_sd_configs>,
    #[serde(default)]
    vultr_sd_configs: U<keys::vultr_sd_configs>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    #[serde(rename = "type")]
    type_: Option<String>,
    credentials: Option<String>,
    credentials_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetGroup {
    targets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_labels")]
    labels: Option<Labels>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSdConfig {
    files: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_duration")]
    refresh_interval: Option<Duration>,
}

impl RawScrapeConfig {
    /// Prometheus's `ScrapeConfig.UnmarshalYAML` + `Validate` + `SetDirectory`.
    fn resolve(self, global: &GlobalConfig, dir: Option<&Path>) -> Result<ScrapeConfig, String> {
        let job_name = self.job_name.unwrap_or_default();
        if job_name.is_empty() {
            return Err("job_name is empty".into());
        }
        let ctx = |m: String| format!("job {job_name:?}: {m}");
        let scrape_interval = self
            .scrape_interval
            .filter(|d| !d.is_zero())
            .unwrap_or(global.scrape_interval);
        let timeout = self.scrape_timeout.unwrap_or(Duration::ZERO);
        if timeout > scrape_interval {
            return Err(format!(
                "scrape timeout greater than scrape interval for scrape config with job name {job_name:?}"
            ));
        }
        let scrape_timeout = if timeout.is_zero() {
            global.scrape_timeout.min(scrape_interval)
        } else {
            timeout
        };
        let scheme = self.scheme.unwrap_or_else(|| "http".into());
        match scheme.as_str() {
            "http" => {}
            "https" => {
                return Err(ctx(
                    "`scheme: https` is not supported by shoal yet (no TLS support)".into(),
                ));
            }
            other => {
                return Err(ctx(format!(
                    "invalid scheme {other:?}: expected \"http\" (or \"https\", not supported yet)"
                )));
            }
        }
        let metrics_path = self.metrics_path.unwrap_or_else(|| "/metrics".into());

        let relabel = |list: Option<Vec<Option<RelabelConfig>>>, what: &str| {
            list.unwrap_or_default()
                .into_iter()
                .map(|r| {
                    r.ok_or_else(|| {
                        ctx(format!(
                            "empty or null {what} relabeling rule in scrape config"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let relabel_configs = relabel(self.relabel_configs, "target")?;
        let metric_relabel_configs = relabel(self.metric_relabel_configs, "metric")?;

        let mut static_configs = Vec::new();
        for (i, g) in self
            .static_configs
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let group = TargetGroup {
                targets: g.targets.unwrap_or_default(),
                labels: g.labels.unwrap_or_default(),
                source: i.to_string(),
            };
            // Users putting URLs in target groups (only checked without relabelling,
            // which could rewrite the address).
            if relabel_configs.is_empty() {
                for t in &group.targets {
                    check_target_address(t).map_err(&ctx)?;
                }
            }
            static_configs.push(group);
        }

        let mut file_sd_configs = Vec::new();
        for f in self.file_sd_configs.unwrap_or_default() {
            let files = f.files.unwrap_or_default();
            if files.is_empty() {
                return Err(ctx(
                    "file service discovery config must contain at least one path name".into(),
                ));
            }
            for name in &files {
                if !valid_file_sd_name(name) {
                    return Err(ctx(format!(
                        "path name {name:?} is not valid for file discovery"
                    )));
                }
            }
            file_sd_configs.push(FileSdConfig {
                files: files.iter().map(|p| join_dir(dir, p)).collect(),
                refresh_interval: f
                    .refresh_interval
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(300)),
            });
        }

        let (basic_auth, authorization) = resolve_http_auth(
            self.basic_auth,
            self.authorization,
            self.bearer_token,
            self.bearer_token_file,
            dir,
        )
        .map_err(&ctx)?;

        for name in self.params.iter().flat_map(|p| p.keys()) {
            if name.is_empty() {
                return Err(ctx("empty parameter name in params".into()));
            }
        }

        Ok(ScrapeConfig {
            job_name: job_name.clone(),
            scrape_interval,
            scrape_timeout,
            metrics_path,
            scheme,
            params: self.params.unwrap_or_default(),
            honor_labels: self.honor_labels.unwrap_or(false),
            honor_timestamps: self.honor_timestamps.unwrap_or(true),
            static_configs,
            file_sd_configs,
            relabel_configs,
            metric_relabel_configs,
            sample_limit: self.sample_limit.unwrap_or(0),
            label_limit: self.label_limit.unwrap_or(0),
            label_name_length_limit: self.label_name_length_limit.unwrap_or(0),
            label_value_length_limit: self.label_value_length_limit.unwrap_or(0),
            body_size_limit: self.body_size_limit.unwrap_or(0),
            target_limit: self.target_limit.unwrap_or(0),
            basic_auth,
            authorization,
            follow_redirects: self.follow_redirects.unwrap_or(true),
            enable_http2: self.enable_http2.unwrap_or(true),
        })
    }
}

/// Prometheus's `CheckTargetAddress`: an address must not contain `/`.
pub fn check_target_address(addr: &str) -> Result<(), String> {
    if addr.contains('/') {
        return Err(format!("{addr:?} is not a valid hostname"));
    }
    Ok(())
}

/// `HTTPClientConfig.Validate` of Prometheus's common library (v0.39, used by 2.42).
fn resolve_http_auth(
    basic: Option<RawBasicAuth>,
    auth: Option<RawAuthorization>,
    bearer_token: Option<String>,
    bearer_token_file: Option<String>,
    dir: Option<&Path>,
) -> Result<(Option<BasicAuth>, Option<Authorization>), String> {
    let bearer_token = bearer_token.filter(|s| !s.is_empty());
    let bearer_token_file = bearer_token_file.filter(|s| !s.is_empty());
    let has_bearer = bearer_token.is_some() || bearer_token_file.is_some();
    if bearer_token.is_some() && bearer_token_file.is_some() {
        return Err("at most one of bearer_token & bearer_token_file must be configured".into());
    }
    if basic.is_some() && has_bearer {
        return Err(
            "at most one of basic_auth, oauth2, bearer_token & bearer_token_file must be configured"
                .into(),
        );
    }
    let path = |p: Option<String>| {
        p.filter(|s| !s.is_empty())
            .map(|p| PathBuf::from(join_dir(dir, &p)))
    };
    let basic_auth = match basic {
        None => None,
        Some(b) => {
            let password = b.password.filter(|s| !s.is_empty());
            let password_file = path(b.password_file);
            if password.is_some() && password_file.is_some() {
                return Err(
                    "at most one of basic_auth password & password_file must be configured".into(),
                );
            }
            Some(BasicAuth {
                username: b.username.unwrap_or_default(),
                password,
                password_file,
            })
        }
    };
    let authorization = match auth {
        Some(a) => {
            if has_bearer {
                return Err(
                    "authorization is not compatible with bearer_token & bearer_token_file".into(),
                );
            }
            let credentials = a.credentials.filter(|s| !s.is_empty());
            let credentials_file = path(a.credentials_file);
            if credentials.is_some() && credentials_file.is_some() {
                return Err(
                    "at most one of authorization credentials & credentials_file must be configured"
                        .into(),
                );
            }
            let mut type_ = a.type_.unwrap_or_default().trim().to_string();
            if type_.is_empty() {
                type_ = "Bearer".into();
            }
            if type_.eq_ignore_ascii_case("basic") {
                return Err(
                    "authorization type cannot be set to \"basic\", use \"basic_auth\" instead"
                        .into(),
                );
            }
            if basic_auth.is_some() {
                return Err(
                    "at most one of basic_auth, oauth2 & authorization must be configured".into(),
                );
            }
            Some(Authorization {
                type_,
                credentials,
                credentials_file,
            })
        }
        None if has_bearer => Some(Authorization {
            type_: "Bearer".into(),
            credentials: bearer_token,
            credentials_file: path(bearer_token_file),
        }),
        None => None,
    };
    Ok((basic_auth, authorization))
}

// ---------------------------------------------------------------------------------------
// Field deserializers.

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => duration::parse(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_base2_bytes(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A YAML mapping of label names to values, names validated.
pub(crate) fn de_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Labels>, D::Error> {
    let Some(map) = Option::<BTreeMap<String, String>>::deserialize(d)? else {
        return Ok(None);
    };
    labels_from_map(map)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(crate) fn labels_from_map(map: BTreeMap<String, String>) -> Result<Labels, String> {
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        if !is_valid_label_name(&k) {
            return Err(format!("{k:?} is not a valid label name"));
        }
        out.push(Label::new(k, v));
    }
    Ok(Labels::new(out))
}

impl fmt::Display for TargetGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests;
