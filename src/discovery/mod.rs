//! Service discovery and target construction: static and file-based discovery produce
//! [`TargetGroup`]s per job ([`DiscoveryManager`]), and [`targets_from_group`] turns a
//! group into scrape [`Target`]s exactly as Prometheus 2.42's `populateLabels` does
//! (job/scheme/path/param defaults, `relabel_configs`, default port, `instance`).
//!
//! Owns: [`Target`], [`DroppedTarget`], [`targets_from_group`], [`targets_for_job`], the
//! file_sd file format ([`file`]) and the [`DiscoveryManager`] tokio task. Does no
//! scraping and knows nothing about sharding.

pub mod file;
pub mod manager;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{ScrapeConfig, TargetGroup, check_target_address};
use crate::model::{Label, Labels, duration, relabel};

pub use manager::{DiscoveryManager, DiscoveryOptions, TargetGroups};

pub const ADDRESS_LABEL: &str = "__address__";
pub const SCHEME_LABEL: &str = "__scheme__";
pub const METRICS_PATH_LABEL: &str = "__metrics_path__";
pub const SCRAPE_INTERVAL_LABEL: &str = "__scrape_interval__";
pub const SCRAPE_TIMEOUT_LABEL: &str = "__scrape_timeout__";
pub const PARAM_LABEL_PREFIX: &str = "__param_";
pub const META_LABEL_PREFIX: &str = "__meta_";
pub const RESERVED_LABEL_PREFIX: &str = "__";
pub const JOB_LABEL: &str = "job";
pub const INSTANCE_LABEL: &str = "instance";

/// A target to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Labels after relabelling, still with `__address__`, `__scheme__`,
    /// `__metrics_path__`, `__scrape_interval__`, `__scrape_timeout__` and `__param_*`
    /// (but no `__meta_*`).
    pub labels: Labels,
    /// Labels before relabelling (shown by `/api/v1/targets`).
    pub discovered_labels: Labels,
    /// The job's configured `params`; `__param_*` labels override their first values.
    pub params: BTreeMap<String, Vec<String>>,
}

/// Why a discovered target is not scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// `relabel_configs` dropped it (Prometheus lists it under "dropped targets").
    Relabelled,
    /// Its labels are invalid (no address, bad interval, ...).
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTarget {
    /// Labels before relabelling (empty for some invalid targets, as in Prometheus).
    pub discovered_labels: Labels,
    pub reason: DropReason,
}

impl Target {
    pub fn job(&self) -> &str {
        self.labels.get(JOB_LABEL).unwrap_or("")
    }

    pub fn instance(&self) -> &str {
        self.labels.get(INSTANCE_LABEL).unwrap_or("")
    }

    pub fn address(&self) -> &str {
        self.labels.get(ADDRESS_LABEL).unwrap_or("")
    }

    pub fn scheme(&self) -> &str {
        self.labels.get(SCHEME_LABEL).unwrap_or("")
    }

    pub fn metrics_path(&self) -> &str {
        self.labels.get(METRICS_PATH_LABEL).unwrap_or("")
    }

    /// The scrape interval from `__scrape_interval__` (validated when built).
    pub fn interval(&self) -> Duration {
        duration_label(&self.labels, SCRAPE_INTERVAL_LABEL)
    }

    /// The scrape timeout from `__scrape_timeout__` (validated when built).
    pub fn timeout(&self) -> Duration {
        duration_label(&self.labels, SCRAPE_TIMEOUT_LABEL)
    }

    /// The labels put on scraped series: all labels not starting with `__`.
    pub fn output_labels(&self) -> Labels {
        Labels::from_sorted(
            self.labels
                .iter()
                .filter(|l| !l.name.starts_with(RESERVED_LABEL_PREFIX))
                .cloned()
                .collect(),
        )
    }

    /// The scrape URL as Prometheus builds it: `scheme://address/path?params`, where the
    /// query is the config's params with each `__param_<name>` label replacing the first
    /// value of `<name>`, encoded with keys sorted.
    pub fn url(&self) -> String {
        let mut params = self.params.clone();
        for l in self.labels.iter() {
            if let Some(k) = l.name.strip_prefix(PARAM_LABEL_PREFIX) {
                match params.get_mut(k) {
                    Some(v) if !v.is_empty() => v[0] = l.value.clone(),
                    _ => {
                        params.insert(k.to_string(), vec![l.value.clone()]);
                    }
                }
            }
        }
        let mut url = format!("{}://{}", self.scheme(), self.address());
        let path = self.metrics_path();
        if !path.is_empty() && !path.starts_with('/') {
            url.push('/');
        }
        escape_path(path, &mut url);
        let mut first = true;
        for (k, vs) in &params {
            for v in vs {
                url.push(if first { '?' } else { '&' });
                first = false;
                query_escape(k, &mut url);
                url.push('=');
                query_escape(v, &mut url);
            }
        }
        url
    }

    /// A stable 64-bit identity of the target: xxh3 over the job, the output labels and
    /// the URL, with explicit separators. Identical on every node and across restarts
    /// and Rust releases.
    pub fn key(&self) -> u64 {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(b"shoal/target/v1\xff");
        buf.extend_from_slice(self.job().as_bytes());
        buf.push(0xff);
        for l in self.output_labels().iter() {
            buf.extend_from_slice(l.name.as_bytes());
            buf.push(0xff);
            buf.extend_from_slice(l.value.as_bytes());
            buf.push(0xff);
        }
        buf.push(0xfe);
        buf.extend_from_slice(self.url().as_bytes());
        xxhash_rust::xxh3::xxh3_64(&buf)
    }
}

fn duration_label(labels: &Labels, name: &str) -> Duration {
    labels
        .get(name)
        .and_then(|v| duration::parse(v).ok())
        .unwrap_or_default()
}

/// Go's `url.URL.EscapedPath` for a path without a raw form: escapes everything but
/// unreserved characters and `$&+,/:;=@`.
fn escape_path(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Go's `url.QueryEscape`: unreserved characters kept, space as `+`, the rest `%XX`.
fn query_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push('+');
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Builds the targets of one group: for every address, the group labels plus
/// `__address__`, through [`populate_labels`].
pub fn targets_from_group(
    cfg: &ScrapeConfig,
    group: &TargetGroup,
) -> Vec<Result<Target, DroppedTarget>> {
    group
        .targets
        .iter()
        .map(|addr| {
            let mut labels: Vec<Label> = group.labels.iter().cloned().collect();
            labels.push(Label::new(ADDRESS_LABEL, addr.as_str()));
            populate_labels(&Labels::new(labels), cfg)
        })
        .collect()
}

/// All targets of a job's groups, split into active and dropped. Duplicate targets
/// (same labels) are kept once, as Prometheus's scrape pool does.
pub fn targets_for_job(
    cfg: &ScrapeConfig,
    groups: &[TargetGroup],
) -> (Vec<Target>, Vec<DroppedTarget>) {
    let mut active: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut dropped = Vec::new();
    for g in groups {
        for r in targets_from_group(cfg, g) {
            match r {
                Ok(t) => {
                    if seen.insert(t.labels.clone()) {
                        active.push(t);
                    }
                }
                Err(d) => dropped.push(d),
            }
        }
    }
    (active, dropped)
}

/// Prometheus 2.42's `PopulateLabels` for one discovered label set.
pub fn populate_labels(lset: &Labels, cfg: &ScrapeConfig) -> Result<Target, DroppedTarget> {
    let invalid = |discovered: Labels, msg: String| DroppedTarget {
        discovered_labels: discovered,
        reason: DropReason::Invalid(msg),
    };
    let mut lb = lset.builder();
    let defaults = [
        (JOB_LABEL, cfg.job_name.clone()),
        (SCRAPE_INTERVAL_LABEL, duration::format(cfg.scrape_interval)),
        (SCRAPE_TIMEOUT_LABEL, duration::format(cfg.scrape_timeout)),
        (METRICS_PATH_LABEL, cfg.metrics_path.clone()),
        (SCHEME_LABEL, cfg.scheme.clone()),
    ];
    for (name, value) in &defaults {
        if lset.get(name).is_none() {
            lb.set(name, value);
        }
    }
    for (k, v) in &cfg.params {
        if let Some(first) = v.first() {
            lb.set(&format!("{PARAM_LABEL_PREFIX}{k}"), first);
        }
    }
    let pre = lb.labels();
    let Some(relabelled) = relabel::process(&pre, &cfg.relabel_configs) else {
        return Err(DroppedTarget {
            discovered_labels: pre,
            reason: DropReason::Relabelled,
        });
    };
    let mut lb = relabelled.builder();
    let Some(mut addr) = relabelled.get(ADDRESS_LABEL).map(str::to_string) else {
        return Err(invalid(pre, "no address".into()));
    };
    let scheme = relabelled.get(SCHEME_LABEL).unwrap_or("").to_string();
    if add_port(&addr) {
        match scheme.as_str() {
            "http" | "" => addr.push_str(":80"),
            "https" => addr.push_str(":443"),
            _ => return Err(invalid(pre, format!("invalid scheme: {:?}", cfg.scheme))),
        }
        lb.set(ADDRESS_LABEL, &addr);
    }
    match scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(invalid(
                pre,
                "scheme \"https\" is not supported by shoal yet (no TLS support)".into(),
            ));
        }
        other => return Err(invalid(pre, format!("invalid scheme: {other:?}"))),
    }
    if let Err(e) = check_target_address(&addr) {
        return Err(invalid(pre, e));
    }
    let interval = relabelled.get(SCRAPE_INTERVAL_LABEL).unwrap_or("");
    let iv = match duration::parse(interval) {
        Ok(d) if d.is_zero() => return Err(invalid(pre, "scrape interval cannot be 0".into())),
        Ok(d) => d,
        Err(e) => return Err(invalid(pre, format!("error parsing scrape interval: {e}"))),
    };
    let timeout = relabelled.get(SCRAPE_TIMEOUT_LABEL).unwrap_or("");
    let to = match duration::parse(timeout) {
        Ok(d) if d.is_zero() => return Err(invalid(pre, "scrape timeout cannot be 0".into())),
        Ok(d) => d,
        Err(e) => return Err(invalid(pre, format!("error parsing scrape timeout: {e}"))),
    };
    if to > iv {
        return Err(invalid(
            pre,
            format!(
                "scrape timeout cannot be greater than scrape interval ({timeout:?} > {interval:?})"
            ),
        ));
    }
    lb.retain(|l| !l.name.starts_with(META_LABEL_PREFIX));
    if relabelled.get(INSTANCE_LABEL).is_none() {
        lb.set(INSTANCE_LABEL, &addr);
    }
    Ok(Target {
        labels: lb.build(),
        discovered_labels: pre,
        params: cfg.params.clone(),
    })
}

/// Whether Prometheus 2.42 appends a default port: the address has none, and adding
/// one makes it a valid `host:port`.
fn add_port(addr: &str) -> bool {
    if split_host_port(addr).is_some() {
        return false;
    }
    split_host_port(&format!("{addr}:1234")).is_some()
}

/// Go's `net.SplitHostPort`.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(':')?;
    let (host, j, k) = if s.starts_with('[') {
        let end = s.find(']')?;
        if end + 1 != i {
            return None;
        }
        (&s[1..end], 1, end + 1)
    } else {
        let host = &s[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if s[j..].contains('[') || s[k..].contains(']') {
        return None;
    }
    Some((host, &s[i + 1..]))
}

#[cfg(test)]
mod tests;
