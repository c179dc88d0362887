//! The scrape manager: reconciles (config × discovered target groups) with the running
//! scrape actors — starts actors for new targets, stops those whose target left
//! discovery (with staleness markers), restarts those whose scrape config changed — and
//! publishes the [`TargetsView`] that `/api/v1/targets` reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use actix::prelude::*;

use crate::config::{Config, ScrapeConfig, TargetGroup};
use crate::discovery::{self, Target};
use crate::storage::Appendable;
use crate::telemetry::{JobLabels, Metrics};

use super::scrape_loop::{ScrapeActor, StopScrape};
use super::target::{ActiveTarget, DroppedTarget, TargetStatus};

/// What the targets API shows: the targets this node scrapes and those relabelling
/// dropped.
#[derive(Debug, Clone, Default)]
pub struct TargetsSnapshot {
    pub active: Vec<ActiveTarget>,
    pub dropped: Vec<DroppedTarget>,
}

/// A cheap, cloneable read handle on the current targets.
#[derive(Debug, Clone, Default)]
pub struct TargetsView(Arc<RwLock<TargetsSnapshot>>);

impl TargetsView {
    pub fn snapshot(&self) -> TargetsSnapshot {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, s: TargetsSnapshot) {
        match self.0.write() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }
}

struct Running {
    addr: Addr<ScrapeActor>,
    active: ActiveTarget,
    cfg: Arc<ScrapeConfig>,
}

/// The actor that owns all scrape actors of the node.
pub struct ScrapeManager {
    storage: Arc<dyn Appendable>,
    metrics: Metrics,
    client: reqwest::Client,
    config: Arc<Config>,
    groups: Arc<BTreeMap<String, Vec<TargetGroup>>>,
    running: HashMap<(String, u64), Running>,
    view: TargetsView,
}

impl ScrapeManager {
    pub fn new(
        storage: Arc<dyn Appendable>,
        metrics: Metrics,
        config: Arc<Config>,
    ) -> ScrapeManager {
        ScrapeManager {
            storage,
            metrics,
            client: super::fetch::client(),
            config,
            groups: Arc::default(),
            running: HashMap::new(),
            view: TargetsView::default(),
        }
    }

    /// The read handle for the web layer.
    pub fn view(&self) -> TargetsView {
        self.view.clone()
    }

    fn reconcile(&mut self) {
        let mut desired: HashMap<(String, u64), (Target, Arc<ScrapeConfig>)> = HashMap::new();
        let mut dropped = Vec::new();
        for sc in &self.config.scrape_configs {
            let sc = Arc::new(sc.clone());
            let mut job_targets = Vec::new();
            for group in self
                .groups
                .get(&sc.job_name)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                for res in discovery::targets_from_group(&sc, group) {
                    match res {
                        Ok(t) => job_targets.push(t),
                        Err(d) => dropped.push(DroppedTarget {
                            discovered_labels: d.discovered_labels,
                            scrape_pool: sc.job_name.clone(),
                        }),
                    }
                }
            }
            if sc.target_limit > 0 && job_targets.len() as u64 > sc.target_limit {
                tracing::error!(job = %sc.job_name, targets = job_targets.len(), limit = sc.target_limit,
                    "target_limit exceeded: none of the job's targets are scraped");
                continue;
            }
            for t in job_targets {
                desired.insert((sc.job_name.clone(), t.key()), (t, sc.clone()));
            }
        }

        // Stop what is gone (staleness markers) or changed (restarted below).
        let keys: Vec<_> = self.running.keys().cloned().collect();
        for k in keys {
            let keep = match (desired.get(&k), self.running.get(&k)) {
                (Some((t, sc)), Some(r)) => r.cfg == *sc && r.active.target == *t,
                _ => false,
            };
            if !keep {
                let gone = !desired.contains_key(&k);
                if let Some(r) = self.running.remove(&k) {
                    r.addr.do_send(StopScrape { stale: gone });
                }
            }
        }
        for (k, (t, sc)) in desired {
            if self.running.contains_key(&k) {
                continue;
            }
            let status = Arc::new(Mutex::new(TargetStatus::default()));
            let active = ActiveTarget {
                target: t.clone(),
                scrape_pool: sc.job_name.clone(),
                scrape_interval: sc.scrape_interval,
                scrape_timeout: sc.scrape_timeout,
                status: status.clone(),
            };
            let addr = ScrapeActor::new(
                t,
                sc.clone(),
                self.client.clone(),
                self.storage.clone(),
                status,
                self.metrics.clone(),
            )
            .start();
            self.running.insert(
                k,
                Running {
                    addr,
                    active,
                    cfg: sc,
                },
            );
        }
        self.publish(dropped);
    }

    fn publish(&mut self, dropped: Vec<DroppedTarget>) {
        let mut active: Vec<ActiveTarget> =
            self.running.values().map(|r| r.active.clone()).collect();
        active.sort_by(|a, b| {
            (a.scrape_pool.as_str(), a.target.labels.to_string())
                .cmp(&(b.scrape_pool.as_str(), b.target.labels.to_string()))
        });
        self.metrics.targets_active.clear();
        for a in &active {
            self.metrics
                .targets_active
                .get_or_create(&JobLabels {
                    job: a.scrape_pool.clone(),
                })
                .inc();
        }
        self.view.set(TargetsSnapshot { active, dropped });
    }
}

impl Actor for ScrapeManager {
    type Context = Context<Self>;
}

/// A new configuration (reload).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyConfig(pub Arc<Config>);

impl Handler<ApplyConfig> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyConfig, _: &mut Context<Self>) {
        self.config = msg.0;
        self.reconcile();
    }
}

/// New discovery results: target groups per job.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyTargetGroups(pub Arc<BTreeMap<String, Vec<TargetGroup>>>);

impl Handler<ApplyTargetGroups> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyTargetGroups, _: &mut Context<Self>) {
        self.groups = msg.0;
        self.reconcile();
    }
}

/// Stops every scrape actor without staleness markers (node shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

impl Handler<StopAll> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, _: StopAll, ctx: &mut Context<Self>) {
        for (_, r) in self.running.drain() {
            r.addr.do_send(StopScrape { stale: false });
        }
        self.publish(Vec::new());
        ctx.stop();
    }
}
