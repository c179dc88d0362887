//! The scrape manager: reconciles (config × discovered target groups × cluster
//! membership) with the running scrape actors — starts actors for the targets this node
//! owns, stops those whose target left discovery (with staleness markers) or moved to
//! another node (without: the target did not vanish), restarts those whose scrape config
//! changed — and publishes the [`TargetsView`] that `/api/v1/targets` and
//! `/api/v1/cluster` read.
//!
//! Ownership: a target belongs to the top `replication_factor` up members by rendezvous
//! hash of its key ([`crate::shard::Assigner`]). Every node computes the same owners from
//! the same committed membership, so no per-target coordination is needed. Until the
//! node has a membership that lists it as up, it scrapes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use actix::prelude::*;

use crate::config::{Config, ScrapeConfig, TargetGroup};
use crate::discovery::{self, Target};
use crate::shard::Assigner;
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
    /// How the discovered targets are spread over the members; `None` before the node
    /// has a membership.
    pub assignment: Option<AssignmentSnapshot>,
}

/// The assignment of every discovered target, as this node computes it (every node
/// computes the same from the same view).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentSnapshot {
    /// Log index of the membership view the assignment was computed from.
    pub view_index: u64,
    /// Targets owned per up member (members owning none are listed with 0).
    pub targets_per_member: BTreeMap<u64, usize>,
    /// Targets discovered (after relabelling and target limits).
    pub discovered: usize,
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
    replication_factor: usize,
    membership: Option<Membership>,
    /// Targets discovered at the previous reconcile, and those this node owned then.
    prev_discovered: HashSet<(String, u64)>,
    prev_owned: HashSet<(String, u64)>,
}

/// The members targets are assigned over, as the cluster committed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// This node's id.
    pub node_id: u64,
    /// Log index of the view.
    pub index: u64,
    /// Up members.
    pub members: BTreeSet<u64>,
}

impl ScrapeManager {
    pub fn new(
        storage: Arc<dyn Appendable>,
        metrics: Metrics,
        config: Arc<Config>,
        replication_factor: usize,
    ) -> ScrapeManager {
        ScrapeManager {
            storage,
            metrics,
            client: super::fetch::client(),
            config,
            groups: Arc::default(),
            running: HashMap::new(),
            view: TargetsView::default(),
            replication_factor: replication_factor.max(1),
            membership: None,
            prev_discovered: HashSet::new(),
            prev_owned: HashSet::new(),
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

        // Ownership over the committed membership.
        let assigner = self
            .membership
            .as_ref()
            .map(|m| (m, Assigner::new(m.members.iter().copied())));
        let mut assignment = assigner.as_ref().map(|(m, _)| AssignmentSnapshot {
            view_index: m.index,
            targets_per_member: m.members.iter().map(|&id| (id, 0)).collect(),
            discovered: desired.len(),
        });
        let mut owned: HashSet<(String, u64)> = HashSet::new();
        for (k, (t, _)) in &desired {
            let Some((m, a)) = &assigner else { break };
            let owners = a.owners(t.key(), self.replication_factor);
            if let Some(asg) = assignment.as_mut() {
                for o in &owners {
                    *asg.targets_per_member.entry(*o).or_default() += 1;
                }
            }
            if m.members.contains(&m.node_id) && owners.contains(&m.node_id) {
                owned.insert(k.clone());
            }
        }
        let discovered: HashSet<(String, u64)> = desired.keys().cloned().collect();
        let gained = owned
            .iter()
            .filter(|k| !self.prev_owned.contains(*k) && self.prev_discovered.contains(*k))
            .count();
        let lost = self
            .prev_owned
            .iter()
            .filter(|k| !owned.contains(*k) && discovered.contains(*k))
            .count();
        self.metrics.targets_gained_total.inc_by(gained as u64);
        self.metrics.targets_lost_total.inc_by(lost as u64);
        if gained > 0 || lost > 0 {
            tracing::info!(
                gained,
                lost,
                owned = owned.len(),
                discovered = discovered.len(),
                view_index = self.membership.as_ref().map(|m| m.index),
                "target assignment changed"
            );
        }
        self.prev_discovered = discovered;
        desired.retain(|k, _| owned.contains(k));
        self.prev_owned = owned;

        // Stop what is gone (staleness markers) or changed (restarted below).
        let keys: Vec<_> = self.running.keys().cloned().collect();
        for k in keys {
            let keep = match (desired.get(&k), self.running.get(&k)) {
                (Some((t, sc)), Some(r)) => r.cfg == *sc && r.active.target == *t,
                _ => false,
            };
            if !keep {
                // Staleness markers only when the target left discovery: one that moved
                // to another node did not vanish, and one restarted keeps its series.
                let gone = !self.prev_discovered.contains(&k);
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
        self.publish(dropped, assignment);
    }

    fn publish(&mut self, dropped: Vec<DroppedTarget>, assignment: Option<AssignmentSnapshot>) {
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
        self.view.set(TargetsSnapshot {
            active,
            dropped,
            assignment,
        });
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

/// A new committed membership view: targets are reassigned over its up members.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyMembership(pub Membership);

impl Handler<ApplyMembership> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyMembership, _: &mut Context<Self>) {
        if self.membership.as_ref() == Some(&msg.0) {
            return;
        }
        self.membership = Some(msg.0);
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
        self.publish(Vec::new(), None);
        ctx.stop();
    }
}
