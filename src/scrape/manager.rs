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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::config::{Config, ScrapeConfig, TargetGroup};
use crate::discovery::{self, Target};
use crate::peer::PeerClient;
use crate::peer::protocol::{HANDOFF, HandoffNotice};
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
    /// Every discovered target's key by its `job` and `instance` label values: where a
    /// moved series belongs ([`crate::shard::placement`]).
    pub instance_keys: Arc<crate::shard::placement::InstanceKeys>,
    /// `(job, instance)` pairs that several discovered targets share (their series do
    /// not tell which target they came from; `instance_keys` holds one of them).
    pub ambiguous_instances: Arc<HashSet<(String, String)>>,
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

    /// The assignment alone (cheap: no target list is copied).
    pub fn assignment(&self) -> Option<AssignmentSnapshot> {
        match self.0.read() {
            Ok(s) => s.assignment.clone(),
            Err(p) => p.into_inner().assignment.clone(),
        }
    }

    fn set(&self, s: TargetsSnapshot) {
        match self.0.write() {
            Ok(mut g) => *g = s,
            Err(p) => *p.into_inner() = s,
        }
    }
}

/// How long a moved target is scraped by its previous owner at most, in scrape
/// intervals, when the new owner does not report.
const HANDOFF_INTERVALS: u32 = 3;
/// How long a "the new owner has scraped it" notice is remembered when it arrives before
/// this node learned that the target moved.
const HANDOFF_NOTICE_TTL: Duration = Duration::from_secs(60);
/// Timeout of one handoff notice to a previous owner.
const HANDOFF_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

struct Running {
    addr: Addr<ScrapeActor>,
    active: ActiveTarget,
    cfg: Arc<ScrapeConfig>,
    /// Set while the target moved away and is handed off: the bound's timer and the
    /// view index of the move.
    handoff: Option<(SpawnHandle, u64)>,
}

/// The actor that owns all scrape actors of the node.
pub struct ScrapeManager {
    storage: Arc<dyn Appendable>,
    metrics: Metrics,
    client: super::fetch::ScrapeClient,
    /// The node's client to its peers, for handoff notices (set in a cluster).
    peer: Option<PeerClient>,
    config: Arc<Config>,
    groups: Arc<BTreeMap<String, Vec<TargetGroup>>>,
    running: HashMap<(String, u64), Running>,
    view: TargetsView,
    replication_factor: usize,
    membership: Option<Membership>,
    /// The membership before the current one (whose owners a gained target tells).
    prev_membership: Option<Membership>,
    /// Targets discovered at the previous reconcile, and those this node owned then.
    prev_discovered: HashSet<(String, u64)>,
    prev_owned: HashSet<(String, u64)>,
    /// Keys whose new owner already reported, with when and the view index the new
    /// owner gained them at (notices that came before this node saw the move).
    handoff_notices: HashMap<u64, (Instant, u64)>,
    dropped: Vec<DroppedTarget>,
    assignment: Option<AssignmentSnapshot>,
}

/// The members targets are assigned over, as the cluster committed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// This node's id.
    pub node_id: u64,
    /// Log index of the view.
    pub index: u64,
    /// Up members: id → advertised address.
    pub members: BTreeMap<u64, String>,
}

impl Membership {
    fn owners(&self, key: u64, replicas: usize) -> Vec<u64> {
        Assigner::new(self.members.keys().copied()).owners(key, replicas)
    }
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
            client: super::fetch::client(super::fetch::DEFAULT_MAX_BODY_SIZE),
            peer: None,
            config,
            groups: Arc::default(),
            running: HashMap::new(),
            view: TargetsView::default(),
            replication_factor: replication_factor.max(1),
            membership: None,
            prev_membership: None,
            prev_discovered: HashSet::new(),
            prev_owned: HashSet::new(),
            handoff_notices: HashMap::new(),
            dropped: Vec::new(),
            assignment: None,
        }
    }

    /// Sets the node-wide ceiling of scrape bodies (`--scrape.max-body-size`; 0: none).
    pub fn with_max_body_size(mut self, bytes: u64) -> ScrapeManager {
        self.client = super::fetch::client(bytes);
        self
    }

    /// The read handle for the web layer.
    pub fn view(&self) -> TargetsView {
        self.view.clone()
    }

    fn reconcile(&mut self, ctx: &mut Context<Self>) {
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
            .map(|m| (m, Assigner::new(m.members.keys().copied())));
        // Several targets may share a `job` and `instance` (other labels tell them
        // apart): such a pair places by its smallest target key, the same on every
        // node whatever the discovery order, and is listed as ambiguous.
        let mut instance_keys = crate::shard::placement::InstanceKeys::new();
        let mut ambiguous_instances: HashSet<(String, String)> = HashSet::new();
        for (t, _) in desired.values() {
            let (Some(job), Some(instance)) = (t.labels.get("job"), t.labels.get("instance"))
            else {
                continue;
            };
            let pair = (job.to_owned(), instance.to_owned());
            match instance_keys.get_mut(&pair) {
                Some(k) if *k != t.key() => {
                    *k = (*k).min(t.key());
                    ambiguous_instances.insert(pair);
                }
                Some(_) => {}
                None => {
                    instance_keys.insert(pair, t.key());
                }
            }
        }
        let mut assignment = assigner.as_ref().map(|(m, _)| AssignmentSnapshot {
            view_index: m.index,
            targets_per_member: m.members.keys().map(|&id| (id, 0)).collect(),
            discovered: desired.len(),
            instance_keys: Arc::new(instance_keys),
            ambiguous_instances: Arc::new(ambiguous_instances),
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
            if m.members.contains_key(&m.node_id) && owners.contains(&m.node_id) {
                owned.insert(k.clone());
            }
        }
        let discovered: HashSet<(String, u64)> = desired.keys().cloned().collect();
        let gained: HashSet<(String, u64)> = owned
            .iter()
            .filter(|k| !self.prev_owned.contains(*k) && self.prev_discovered.contains(*k))
            .cloned()
            .collect();
        let lost = self
            .prev_owned
            .iter()
            .filter(|k| !owned.contains(*k) && discovered.contains(*k))
            .count();
        self.metrics
            .targets_gained_total
            .inc_by(gained.len() as u64);
        self.metrics.targets_lost_total.inc_by(lost as u64);
        if !gained.is_empty() || lost > 0 {
            tracing::info!(
                gained = gained.len(),
                lost,
                owned = owned.len(),
                discovered = discovered.len(),
                view_index = self.membership.as_ref().map(|m| m.index),
                "target assignment changed"
            );
        }

        let now = Instant::now();
        self.handoff_notices
            .retain(|_, (at, _)| now.duration_since(*at) < HANDOFF_NOTICE_TTL);
        let view_index = self.membership.as_ref().map_or(0, |m| m.index);
        let keys: Vec<_> = self.running.keys().cloned().collect();
        for k in keys {
            let Some(r) = self.running.get_mut(&k) else {
                continue;
            };
            let Some((t, sc)) = desired.get(&k) else {
                // Left discovery: staleness markers, as Prometheus.
                self.stop(&k, true, ctx);
                continue;
            };
            if r.cfg != *sc || r.active.target != *t {
                // Changed: restarted below when still owned; the series continue.
                self.stop(&k, false, ctx);
                continue;
            }
            if owned.contains(&k) {
                if let Some((h, _)) = r.handoff.take() {
                    ctx.cancel_future(h);
                    r.active.handing_off = false;
                }
                continue;
            }
            if r.handoff.is_some() {
                continue;
            }
            // Moved to another node: make before break. Keep scraping until the new
            // owner reports its first scrape, at most a few intervals; then stop without
            // staleness markers (the target did not vanish).
            // A notice of this move (same view or later) that came early ends it at once;
            // one of an older move does not count.
            if self
                .handoff_notices
                .remove(&k.1)
                .is_some_and(|(_, idx)| idx >= view_index)
            {
                self.metrics.targets_handed_off_total.inc();
                self.stop(&k, false, ctx);
                continue;
            }
            let bound = sc.scrape_interval * HANDOFF_INTERVALS;
            let key = k.clone();
            let timer = ctx.run_later(bound, move |act, ctx| {
                tracing::debug!(job = %key.0, key = key.1, "handoff bound passed; stopping the moved target");
                act.stop(&key, false, ctx);
                act.publish();
            });
            r.handoff = Some((timer, view_index));
            r.active.handing_off = true;
        }
        for (k, (t, sc)) in desired {
            if self.running.contains_key(&k) || !owned.contains(&k) {
                continue;
            }
            let status = Arc::new(Mutex::new(TargetStatus::default()));
            let active = ActiveTarget {
                target: t.clone(),
                scrape_pool: sc.job_name.clone(),
                scrape_interval: sc.scrape_interval,
                scrape_timeout: sc.scrape_timeout,
                status: status.clone(),
                handing_off: false,
            };
            let mut actor = ScrapeActor::new(
                t,
                sc.clone(),
                self.client.clone(),
                self.storage.clone(),
                status,
                self.metrics.clone(),
            );
            if gained.contains(&k) {
                actor = actor.on_first_success(self.notify_previous_owners(k.1));
            }
            let addr = actor.start();
            self.running.insert(
                k,
                Running {
                    addr,
                    active,
                    cfg: sc,
                    handoff: None,
                },
            );
        }
        self.prev_discovered = discovered;
        self.prev_owned = owned;
        self.dropped = dropped;
        self.assignment = assignment;
        self.publish();
    }

    /// Starts again every scrape actor that died without being stopped (a panic in its
    /// scrape): a target is never silently left unscraped.
    fn revive_dead(&mut self) {
        let dead: Vec<(String, u64)> = self
            .running
            .iter()
            .filter(|(_, r)| !r.addr.connected())
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            let Some(r) = self.running.get_mut(&k) else {
                continue;
            };
            tracing::error!(job = %k.0, target = %r.active.target.url(), "scrape actor died; starting it again");
            self.metrics.scrape_actor_restarts_total.inc();
            r.addr = ScrapeActor::new(
                r.active.target.clone(),
                r.cfg.clone(),
                self.client.clone(),
                self.storage.clone(),
                r.active.status.clone(),
                self.metrics.clone(),
            )
            .start();
        }
    }

    /// Stops the scrape actor of `k` (when running).
    fn stop(&mut self, k: &(String, u64), stale: bool, ctx: &mut Context<Self>) {
        if let Some(r) = self.running.remove(k) {
            if let Some((h, _)) = r.handoff {
                ctx.cancel_future(h);
            }
            r.addr.do_send(StopScrape { stale });
        }
    }

    /// A channel that, once told (the first successful scrape of a gained target), tells
    /// the nodes that may have scraped the target before — its owners in the previous
    /// membership, and the owners among the other members now (for a node that was not
    /// in the cluster before) — that they can stop.
    fn notify_previous_owners(&self, key: u64) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut peers: BTreeMap<u64, String> = BTreeMap::new();
        if let Some(m) = &self.membership {
            let me = m.node_id;
            if let Some(prev) = &self.prev_membership {
                for o in prev.owners(key, self.replication_factor) {
                    if let Some(a) = prev.members.get(&o) {
                        peers.insert(o, a.clone());
                    }
                }
            }
            let mut others = m.clone();
            others.members.remove(&me);
            for o in others.owners(key, self.replication_factor) {
                if let Some(a) = others.members.get(&o) {
                    peers.insert(o, a.clone());
                }
            }
            peers.remove(&me);
        }
        let Some(peer) = self.peer.clone() else {
            return tx;
        };
        let notice = HandoffNotice {
            key,
            view_index: self.membership.as_ref().map_or(0, |m| m.index),
        };
        actix::spawn(async move {
            if rx.await.is_err() || peers.is_empty() {
                return;
            }
            for (id, addr) in peers {
                match peer
                    .call::<_, ()>(&addr, HANDOFF, &notice, HANDOFF_NOTICE_TIMEOUT)
                    .await
                {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::debug!(node = id, %addr, error = %e, "handoff notice failed")
                    }
                }
            }
        });
        tx
    }

    fn publish(&mut self) {
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
            dropped: self.dropped.clone(),
            assignment: self.assignment.clone(),
        });
    }
}

/// How often the manager looks for scrape actors that died.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

impl Actor for ScrapeManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SUPERVISE_EVERY, |act, _| act.revive_dead());
    }
}

/// A new configuration (reload).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyConfig(pub Arc<Config>);

impl Handler<ApplyConfig> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyConfig, ctx: &mut Context<Self>) {
        self.config = msg.0;
        self.reconcile(ctx);
    }
}

/// New discovery results: target groups per job.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyTargetGroups(pub Arc<BTreeMap<String, Vec<TargetGroup>>>);

impl Handler<ApplyTargetGroups> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyTargetGroups, ctx: &mut Context<Self>) {
        self.groups = msg.0;
        self.reconcile(ctx);
    }
}

/// A new committed membership view: targets are reassigned over its up members.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyMembership(pub Membership);

impl Handler<ApplyMembership> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: ApplyMembership, ctx: &mut Context<Self>) {
        if self.membership.as_ref() == Some(&msg.0) {
            return;
        }
        if self
            .membership
            .as_ref()
            .is_some_and(|m| !m.members.is_empty())
        {
            self.prev_membership = self.membership.take();
        }
        self.membership = Some(msg.0);
        self.reconcile(ctx);
    }
}

/// The node's peer client, for handoff notices (a cluster node sends it once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPeerClient(pub PeerClient);

impl Handler<SetPeerClient> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: SetPeerClient, _: &mut Context<Self>) {
        self.peer = Some(msg.0);
    }
}

/// The new owner of the target with this key has scraped it: a handoff of it ends here
/// (or, when this node has not seen the move yet, as soon as it does).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandoffDone {
    pub key: u64,
    /// The view index at which the sender gained the target.
    pub view_index: u64,
}

impl Handler<HandoffDone> for ScrapeManager {
    type Result = ();
    fn handle(&mut self, msg: HandoffDone, ctx: &mut Context<Self>) {
        let handing_off = self
            .running
            .iter()
            .find(|(k, r)| {
                k.1 == msg.key
                    && r.handoff
                        .as_ref()
                        .is_some_and(|(_, i)| *i <= msg.view_index)
            })
            .map(|(k, _)| k.clone());
        match handing_off {
            Some(k) => {
                tracing::debug!(job = %k.0, key = k.1, "new owner scraped the target; handoff done");
                self.metrics.targets_handed_off_total.inc();
                self.stop(&k, false, ctx);
                self.publish();
            }
            None => {
                // Not (yet) moving away here; remember in case the new view comes later.
                if self.running.keys().any(|k| k.1 == msg.key) {
                    self.handoff_notices
                        .insert(msg.key, (Instant::now(), msg.view_index));
                }
            }
        }
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
        self.dropped.clear();
        self.assignment = None;
        self.publish();
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::Labels;

    /// 30 static targets on a port nobody listens on (scrapes fail; ownership is what
    /// these tests look at).
    fn setup() -> (Arc<Config>, Arc<BTreeMap<String, Vec<TargetGroup>>>) {
        let cfg = crate::config::load_str(
            "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: ['127.0.0.1:1']\n",
        )
        .expect("valid config");
        let groups: Vec<TargetGroup> = (0..30)
            .map(|i| TargetGroup {
                targets: vec![format!("127.0.0.1:{}", 10_000 + i)],
                labels: Labels::default(),
                source: i.to_string(),
            })
            .collect();
        (
            Arc::new(cfg),
            Arc::new(BTreeMap::from([("j".to_owned(), groups)])),
        )
    }

    fn membership(me: u64, index: u64, ids: &[u64]) -> ApplyMembership {
        ApplyMembership(Membership {
            node_id: me,
            index,
            members: ids.iter().map(|&i| (i, "127.0.0.1:1".to_owned())).collect(),
        })
    }

    /// Stops every scrape actor behind the manager's back: what a panic in a scrape does.
    #[derive(Message)]
    #[rtype(result = "usize")]
    struct KillActors;

    impl Handler<KillActors> for ScrapeManager {
        type Result = usize;
        fn handle(&mut self, _: KillActors, _: &mut Context<Self>) -> usize {
            for r in self.running.values() {
                r.addr.do_send(StopScrape { stale: false });
            }
            self.running.len()
        }
    }

    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Alive;

    impl Handler<Alive> for ScrapeManager {
        type Result = usize;
        fn handle(&mut self, _: Alive, _: &mut Context<Self>) -> usize {
            self.running.values().filter(|r| r.addr.connected()).count()
        }
    }

    #[actix_web::test]
    async fn dead_scrape_actors_are_started_again() {
        let (cfg, groups) = setup();
        let metrics = Metrics::new();
        let mgr = ScrapeManager::new(
            Arc::new(crate::storage::memory::MemStore::new()),
            metrics.clone(),
            cfg.clone(),
            1,
        )
        .start();
        mgr.send(ApplyConfig(cfg)).await.unwrap();
        mgr.send(ApplyTargetGroups(groups)).await.unwrap();
        mgr.send(membership(1, 5, &[1])).await.unwrap();
        let n = mgr.send(KillActors).await.unwrap();
        assert_eq!(n, 30);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let alive = mgr.send(Alive).await.unwrap();
            if alive == n && metrics.scrape_actor_restarts_total.get() == n as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{alive} of {n} alive, {} restarts",
                metrics.scrape_actor_restarts_total.get()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn keys(s: &TargetsSnapshot, handing_off: bool) -> BTreeSet<u64> {
        s.active
            .iter()
            .filter(|a| a.handing_off == handing_off)
            .map(|a| a.target.key())
            .collect()
    }

    #[actix_web::test]
    async fn owns_its_share_hands_off_moved_targets_and_marks_nothing_before_a_view() {
        let (cfg, groups) = setup();
        let metrics = Metrics::new();
        let mgr = ScrapeManager::new(
            Arc::new(crate::storage::memory::MemStore::new()),
            metrics.clone(),
            cfg.clone(),
            1,
        );
        let view = mgr.view();
        let mgr = mgr.start();
        mgr.send(ApplyConfig(cfg)).await.unwrap();
        mgr.send(ApplyTargetGroups(groups)).await.unwrap();
        let s = view.snapshot();
        assert!(s.active.is_empty(), "no membership: nothing is scraped");
        assert!(s.assignment.is_none());

        mgr.send(membership(1, 5, &[1, 2, 3])).await.unwrap();
        let s = view.snapshot();
        let all: Vec<u64> = {
            let a = Assigner::new([1, 2, 3]);
            let asg = s.assignment.clone().expect("assignment");
            assert_eq!(asg.view_index, 5);
            assert_eq!(asg.discovered, 30);
            assert_eq!(asg.targets_per_member.values().sum::<usize>(), 30);
            assert_eq!(asg.targets_per_member[&1], s.active.len());
            for t in &s.active {
                assert_eq!(a.owners(t.target.key(), 1), vec![1]);
            }
            s.active.iter().map(|t| t.target.key()).collect()
        };
        assert!(!all.is_empty());
        assert_eq!(metrics.targets_gained_total.get(), all.len() as u64);

        // Node 4 joins: the targets it wins stay here, handing off, until it reports.
        mgr.send(membership(1, 6, &[1, 2, 3, 4])).await.unwrap();
        let s = view.snapshot();
        let four = Assigner::new([1, 2, 3, 4]);
        let moving: BTreeSet<u64> = all
            .iter()
            .copied()
            .filter(|&k| four.owners(k, 1) == vec![4])
            .collect();
        assert_eq!(keys(&s, true), moving);
        assert_eq!(keys(&s, false).len() + moving.len(), all.len());
        assert_eq!(metrics.targets_lost_total.get(), moving.len() as u64);
        if let Some(&k) = moving.iter().next() {
            mgr.send(HandoffDone {
                key: k,
                view_index: 5,
            })
            .await
            .unwrap();
            assert_eq!(
                keys(&view.snapshot(), true),
                moving,
                "a notice of an older view"
            );
            mgr.send(HandoffDone {
                key: k,
                view_index: 6,
            })
            .await
            .unwrap();
            let s = view.snapshot();
            assert!(!keys(&s, true).contains(&k) && !keys(&s, false).contains(&k));
            assert_eq!(metrics.targets_handed_off_total.get(), 1);
        }
        // A notice for a target this node keeps changes nothing.
        let kept = *keys(&view.snapshot(), false).iter().next().expect("kept");
        mgr.send(HandoffDone {
            key: kept,
            view_index: 6,
        })
        .await
        .unwrap();
        assert!(keys(&view.snapshot(), false).contains(&kept));

        // Node 4 leaves again before the handoffs end: they are cancelled, and the
        // target already handed off is started again.
        mgr.send(membership(1, 7, &[1, 2, 3])).await.unwrap();
        let s = view.snapshot();
        assert!(keys(&s, true).is_empty());
        assert_eq!(keys(&s, false), all.iter().copied().collect());

        // This node is not among the members (it left): everything is handed off (the
        // early notice above was for view 6, not this move).
        mgr.send(membership(1, 8, &[2, 3])).await.unwrap();
        assert_eq!(keys(&view.snapshot(), true).len(), all.len());
        // Targets that leave discovery stop at once, handing off or not.
        mgr.send(ApplyTargetGroups(Arc::default())).await.unwrap();
        assert!(view.snapshot().active.is_empty());
        assert_eq!(view.snapshot().assignment.map(|a| a.discovered), Some(0));
    }
}
