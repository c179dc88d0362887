//! shoal's integration tests: one binary, real `shoal` processes over real HTTP.
//!
//! - `harness`: starting nodes, test targets and waiting on conditions.
//! - `pki`: certificates (openssl), and the cluster TLS test mode
//!   (`SHOAL_TEST_CLUSTER_TLS=1`: every cluster test over mutual TLS).
//! - `scrape`: scraping end to end, bad targets, staleness.
//! - `api`: the HTTP API shapes and errors.
//! - `lifecycle`: config reloads, crash recovery, CLI commands.
//! - `cluster`: membership with several processes: formation, failover, join, leave,
//!   partitions (iptables), bad internal requests.
//! - `demo`: `shoal demo` forms its local cluster and a node added by its printed
//!   command takes over a share of the targets.
//! - `drain`: history follows the target — a leaving node moves its samples to the
//!   new owners (scale down, two leaves at once, the leader leaving, a leaver killed
//!   mid-drain), checked as raw samples from every remaining node.
//! - `backfill`: `shoal tsdb import openmetrics` with a file written by the Python
//!   `prometheus_client`, compared with promtool's blocks served by a real Prometheus;
//!   through a 3-node cluster onto each series' owner; bad files, credentials, metrics.
//! - `sharding`: target assignment over the membership: disjoint split, replication,
//!   movement on join and graceful leave.
//! - `query`: query any node: cluster-wide answers equal to a single node's, dedup with
//!   replication, partial answers when a member is down, the internal read route.
//! - `federate`: `/federate` with a real Prometheus on both sides.
//! - `master`: leader as master: shard rules, global rules committed through Raft.
//! - `shard_rules`: shard-level rules across target moves (a join, a leave): the
//!   master's `job:` sums equal the direct aggregate over all raw data.
//! - `rules`: recording and alerting rules, `/api/v1/rules`, `/api/v1/alerts`, reloads.
//! - `limits`: query limits (max samples, timeout, concurrency) on every read route,
//!   on members, and a huge query against a node with a million series.
//! - `security`: attacks on a cluster with a secret — every internal and admin route
//!   refused to a stranger, oversized bodies refused from the headers, nothing changed.
//! - `web_security`: `--web.config.file` — HTTPS, client certificates, basic auth and
//!   headers with curl, promtool and a real Prometheus; reloads; `check web-config`.

mod api;
mod backfill;
mod cluster;
mod cluster_tls;
mod demo;
mod drain;
mod federate;
mod hardening;
mod harness;
mod lifecycle;
mod limits;
mod master;
mod pki;
mod promtool;
mod query;
mod rules;
mod scrape;
mod secure_default;
mod security;
mod shard_rules;
mod sharding;
mod web_security;
