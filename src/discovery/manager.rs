//! [`DiscoveryManager`]: a tokio task that keeps the target groups of every job up to
//! date and publishes them on a `watch` channel.
//!
//! - `static_configs` are published at once.
//! - `file_sd_configs` files (globs allowed) are read at start and polled: a file is
//!   re-read when its modification time or size changes, or when its
//!   `refresh_interval` has passed. A file that fails to parse keeps its last good
//!   groups (logged once per change); a file that disappears loses its groups.
//! - [`DiscoveryManager::update_config`] swaps the config (reload); unchanged files
//!   keep their cached groups.
//! - Dropping the manager (or [`DiscoveryManager::shutdown`]) stops the task; the
//!   receivers then see the channel close.
//!
//! File IO runs on tokio's blocking pool, never on the async worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::file;
use crate::config::{Config, FileSdConfig, TargetGroup, glob};

/// Target groups per job name, in config order within a job (static groups first, then
/// file groups by file path).
pub type TargetGroups = Arc<BTreeMap<String, Vec<TargetGroup>>>;

#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// How often file_sd files are checked for changes.
    pub poll_interval: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> DiscoveryOptions {
        DiscoveryOptions {
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// The discovery inputs of one job.
#[derive(Debug, Clone, PartialEq)]
struct JobSd {
    job: String,
    static_groups: Vec<TargetGroup>,
    file_sd: Vec<FileSdConfig>,
}

fn jobs_of(cfg: &Config) -> Vec<JobSd> {
    cfg.scrape_configs
        .iter()
        .map(|s| JobSd {
            job: s.job_name.clone(),
            static_groups: s.static_configs.clone(),
            file_sd: s.file_sd_configs.clone(),
        })
        .collect()
}

/// Handle to the discovery task. Requires a tokio runtime to start.
pub struct DiscoveryManager {
    config_tx: watch::Sender<Arc<Vec<JobSd>>>,
    groups_rx: watch::Receiver<TargetGroups>,
    task: Option<JoinHandle<()>>,
}

impl DiscoveryManager {
    /// Starts discovery for `cfg` with default options. The first snapshot (static
    /// groups and the first read of every file_sd file) is available from
    /// [`DiscoveryManager::subscribe`] as soon as this returns.
    pub fn start(cfg: &Config) -> DiscoveryManager {
        DiscoveryManager::start_with(cfg, DiscoveryOptions::default())
    }

    pub fn start_with(cfg: &Config, opts: DiscoveryOptions) -> DiscoveryManager {
        let jobs = Arc::new(jobs_of(cfg));
        let mut state = FileState::default();
        // The first scan runs here so the initial snapshot is complete; it reads only
        // the (small) files the config names.
        let initial = Arc::new(state.scan(&jobs, Instant::now()));
        let (groups_tx, groups_rx) = watch::channel(initial);
        let (config_tx, config_rx) = watch::channel(jobs);
        let task = tokio::spawn(run(state, config_rx, groups_tx, opts));
        DiscoveryManager {
            config_tx,
            groups_rx,
            task: Some(task),
        }
    }

    /// A receiver of the current target groups; `changed()` fires on every update.
    pub fn subscribe(&self) -> watch::Receiver<TargetGroups> {
        self.groups_rx.clone()
    }

    /// The current target groups.
    pub fn current(&self) -> TargetGroups {
        self.groups_rx.borrow().clone()
    }

    /// Switches to a new config (reload). Static groups are published on the task's
    /// next turn; file groups after their files are read.
    pub fn update_config(&self, cfg: &Config) {
        let jobs = jobs_of(cfg);
        self.config_tx.send_if_modified(|cur| {
            if **cur == jobs {
                false
            } else {
                *cur = Arc::new(jobs);
                true
            }
        });
    }

    /// Stops the task and waits for it to finish.
    pub async fn shutdown(mut self) {
        let task = self.task.take();
        drop(self);
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for DiscoveryManager {
    fn drop(&mut self) {
        // Dropping `config_tx` (with self) ends the task's loop; aborting covers a task
        // that is blocked in a file scan.
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn run(
    mut state: FileState,
    mut config_rx: watch::Receiver<Arc<Vec<JobSd>>>,
    groups_tx: watch::Sender<TargetGroups>,
    opts: DiscoveryOptions,
) {
    let mut tick = tokio::time::interval(opts.poll_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the initial scan is done already
    let mut jobs = config_rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            changed = config_rx.changed() => {
                if changed.is_err() {
                    break; // manager dropped
                }
                jobs = config_rx.borrow_and_update().clone();
            }
            _ = tick.tick() => {}
        }
        let scan_jobs = jobs.clone();
        let res = tokio::task::spawn_blocking(move || {
            let groups = state.scan(&scan_jobs, Instant::now());
            (state, groups)
        })
        .await;
        let groups = match res {
            Ok((s, g)) => {
                state = s;
                g
            }
            Err(e) => {
                tracing::error!(error = %e, "file discovery scan failed; restarting with an empty cache");
                state = FileState::default();
                continue;
            }
        };
        groups_tx.send_if_modified(|cur| {
            if **cur == groups {
                false
            } else {
                *cur = Arc::new(groups);
                true
            }
        });
    }
}

/// What we know about one file_sd file.
#[derive(Debug, Clone)]
struct CachedFile {
    modified: Option<SystemTime>,
    len: u64,
    read_at: Instant,
    /// The last good groups (empty if the file never parsed).
    groups: Vec<TargetGroup>,
    /// Whether the last read failed (to log a broken file once per change).
    failed: bool,
}

#[derive(Debug, Default)]
struct FileState {
    files: HashMap<PathBuf, CachedFile>,
}

impl FileState {
    /// Builds the groups of every job, (re)reading file_sd files as needed.
    fn scan(&mut self, jobs: &[JobSd], now: Instant) -> BTreeMap<String, Vec<TargetGroup>> {
        let mut seen: HashSet<PathBuf> = HashSet::new();
        let mut out = BTreeMap::new();
        for job in jobs {
            let mut groups = job.static_groups.clone();
            let mut job_files: BTreeMap<PathBuf, Duration> = BTreeMap::new();
            for sd in &job.file_sd {
                for pattern in &sd.files {
                    match glob::expand(pattern) {
                        Ok(paths) => {
                            for p in paths {
                                let e = job_files.entry(p).or_insert(sd.refresh_interval);
                                *e = (*e).min(sd.refresh_interval);
                            }
                        }
                        Err(e) => {
                            tracing::error!(job = %job.job, pattern = %pattern, error = %e, "file discovery: bad pattern");
                        }
                    }
                }
            }
            for (path, refresh) in job_files {
                if let Some(g) = self.refresh_file(&path, refresh, now) {
                    groups.extend(g.iter().cloned());
                }
                seen.insert(path);
            }
            out.insert(job.job.clone(), groups);
        }
        self.files.retain(|p, _| seen.contains(p));
        out
    }

    /// The groups of `path`, re-read if it changed or is due for a refresh. None if the
    /// file is gone.
    fn refresh_file(
        &mut self,
        path: &PathBuf,
        refresh: Duration,
        now: Instant,
    ) -> Option<&Vec<TargetGroup>> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(_) => {
                self.files.remove(path);
                return None;
            }
        };
        let modified = meta.modified().ok();
        let len = meta.len();
        let stale = match self.files.get(path) {
            None => true,
            Some(c) => {
                c.modified != modified
                    || c.len != len
                    || now.saturating_duration_since(c.read_at) >= refresh
            }
        };
        if stale {
            let prev = self.files.remove(path);
            let changed = prev
                .as_ref()
                .is_none_or(|c| c.modified != modified || c.len != len);
            let entry = match file::read_groups(path) {
                Ok(groups) => CachedFile {
                    modified,
                    len,
                    read_at: now,
                    groups,
                    failed: false,
                },
                Err(e) => {
                    if changed || !prev.as_ref().is_some_and(|c| c.failed) {
                        tracing::error!(file = %path.display(), error = %e, "file discovery: cannot read file; keeping its last good target groups");
                    }
                    CachedFile {
                        modified,
                        len,
                        read_at: now,
                        groups: prev.map(|c| c.groups).unwrap_or_default(),
                        failed: true,
                    }
                }
            };
            self.files.insert(path.clone(), entry);
        }
        self.files.get(path).map(|c| &c.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn config(dir: &Path, extra: &str) -> Config {
        load_str(&format!(
            "scrape_configs:\n  - job_name: static\n    static_configs:\n      - targets: ['s:1']\n  - job_name: files\n    file_sd_configs:\n      - files: ['{}/*.json', '{}/*.yml']\n{extra}",
            dir.display(),
            dir.display()
        ))
        .unwrap()
    }

    fn opts() -> DiscoveryOptions {
        DiscoveryOptions {
            poll_interval: Duration::from_millis(20),
        }
    }

    /// Waits until `pred` holds for the published groups, failing after a deadline.
    async fn wait_for(
        rx: &mut watch::Receiver<TargetGroups>,
        what: &str,
        pred: impl Fn(&BTreeMap<String, Vec<TargetGroup>>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("channel closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; last: {:?}", rx.borrow()),
            }
        }
    }

    fn targets(g: &BTreeMap<String, Vec<TargetGroup>>, job: &str) -> Vec<String> {
        let mut t: Vec<String> = g
            .get(job)
            .map(|gs| gs.iter().flat_map(|g| g.targets.clone()).collect())
            .unwrap_or_default();
        t.sort();
        t
    }

    /// Writes through a temp file and rename, so the poller never sees half a file.
    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn static_and_file_groups_follow_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        write(&a, r#"[{"targets": ["a:1"], "labels": {"env": "x"}}]"#);
        let mgr = DiscoveryManager::start_with(&config(dir.path(), ""), opts());
        let mut rx = mgr.subscribe();

        // Initial snapshot is complete at once.
        let now = mgr.current();
        assert_eq!(targets(&now, "static"), vec!["s:1"]);
        assert_eq!(targets(&now, "files"), vec!["a:1"]);
        let g = &now["files"][0];
        assert_eq!(g.labels.get("__meta_filepath"), Some(a.to_str().unwrap()));
        assert_eq!(g.labels.get("env"), Some("x"));
        assert_eq!(g.source, format!("{}:0", a.display()));

        // Change a file.
        write(&a, r#"[{"targets": ["a:1", "a:2"]}]"#);
        wait_for(&mut rx, "a:2", |g| targets(g, "files") == ["a:1", "a:2"]).await;

        // A new file matching the glob (YAML).
        let b = dir.path().join("b.yml");
        write(&b, "- targets: ['b:1']\n");
        wait_for(&mut rx, "b.yml", |g| {
            targets(g, "files") == ["a:1", "a:2", "b:1"]
        })
        .await;

        // A broken file keeps its last good groups.
        write(&b, "- targets: ['b:1'\n");
        // Then a valid change to a proves a scan ran after the breakage.
        write(&a, r#"[{"targets": ["a:3"]}]"#);
        wait_for(&mut rx, "a:3 with b kept", |g| {
            targets(g, "files") == ["a:3", "b:1"]
        })
        .await;

        // Fixing it publishes the new content.
        write(&b, "- targets: ['b:2']\n");
        wait_for(&mut rx, "b:2", |g| targets(g, "files") == ["a:3", "b:2"]).await;

        // Deleting a file removes its groups.
        std::fs::remove_file(&a).unwrap();
        wait_for(&mut rx, "a removed", |g| targets(g, "files") == ["b:2"]).await;
        assert_eq!(targets(&rx.borrow(), "static"), vec!["s:1"]);

        mgr.shutdown().await;
        // The task is gone: the channel reports closed.
        assert!(rx.changed().await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_config_swaps_jobs_and_drop_stops() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a.json"), r#"[{"targets": ["a:1"]}]"#);
        let mgr = DiscoveryManager::start_with(&config(dir.path(), ""), opts());
        let mut rx = mgr.subscribe();
        let extra = "  - job_name: more\n    static_configs:\n      - targets: ['m:1']\n        labels: {k: v}\n";
        mgr.update_config(&config(dir.path(), extra));
        wait_for(&mut rx, "job more", |g| targets(g, "more") == ["m:1"]).await;
        assert_eq!(targets(&rx.borrow(), "files"), vec!["a:1"]);

        // Removing a job removes its groups.
        let only_static =
            load_str("scrape_configs:\n  - job_name: static\n    static_configs:\n      - targets: ['s:2']\n")
                .unwrap();
        mgr.update_config(&only_static);
        wait_for(&mut rx, "only static", |g| {
            g.len() == 1 && targets(g, "static") == ["s:2"]
        })
        .await;

        drop(mgr);
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "task did not stop after drop");
    }

    #[test]
    fn refresh_interval_forces_reread_even_without_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, r#"[{"targets": ["a:1"]}]"#).unwrap();
        let cfg = config(dir.path(), "");
        let jobs = jobs_of(&cfg);
        let mut st = FileState::default();
        let t0 = Instant::now();
        assert_eq!(targets(&st.scan(&jobs, t0), "files"), vec!["a:1"]);
        // Make the cached copy stale while keeping mtime and size equal: poke the cache.
        if let Some(c) = st.files.get_mut(&a) {
            c.groups[0].targets = vec!["cached:0".into()];
        }
        // Before the refresh interval the cache is used ...
        let soon = t0 + Duration::from_secs(1);
        assert_eq!(targets(&st.scan(&jobs, soon), "files"), vec!["cached:0"]);
        // ... after it (default 5m) the file is read again.
        let later = t0 + Duration::from_secs(301);
        assert_eq!(targets(&st.scan(&jobs, later), "files"), vec!["a:1"]);
    }
}
