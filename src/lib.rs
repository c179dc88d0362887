//! shoal — a Prometheus-compatible monitoring system that shards itself.
//!
//! # Layout
//! - [`model`]: pure data types and parsers — labels, matchers, samples, relabelling,
//!   the exposition-format parsers. No IO.
//! - [`config`]: `prometheus.yml` structs, defaults and validation.
//! - [`discovery`]: static and file-based service discovery → target groups → targets.
//! - [`storage`]: the storage traits (`Appendable`, `Queryable`) that scraping and PromQL
//!   use; nothing above names the TSDB directly.
//! - [`tsdb`]: the sled-backed implementation of the storage traits (head, XOR chunks,
//!   WAL, index, retention).
//! - [`promql`]: the PromQL engine (over `storage::Queryable`) and the test-script runner.
//! - [`rules`]: recording and alerting rule groups (local groups run on every node).
//! - [`scrape`]: the actix actors that scrape targets.
//! - [`cluster`]: Raft membership (openraft): who is in the cluster and who is up.
//! - [`peer`]: node-to-node traffic — the internal routes and their bodies, the one
//!   client to peers, the cluster secret (the only module that speaks to peers).
//! - [`query`]: the distributed select: fan-out to every member, merge and dedup.
//! - [`drain`]: a leaving node moves its samples to their new owners.
//! - [`backfill`]: samples from a file (`shoal tsdb import openmetrics`) stored on their
//!   owners: the file's rules (the CLI's side) and the routing of a batch (the node's).
//! - [`federation`]: the leader's master loop: global rule groups over the members'
//!   federated data, results committed through Raft.
//! - [`web`]: the HTTP API (the only module that names actix-web).
//! - [`telemetry`]: logging set-up and shoal's own metrics.
//! - [`tls`]: rustls configurations from PEM files (the web listener's, the peers'
//!   mutual TLS) and the crypto provider.
//! - [`app`]: the composition root that wires the parts of a node together.
//! - [`cli`]: command-line flags.
//! - [`ctl`]: `shoal cluster …`, `shoal tsdb import` and `shoal healthcheck`, clients of
//!   a node's public API.
#![forbid(unsafe_code)]

pub mod app;
pub mod backfill;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod federation;
pub mod model;
pub mod peer;
pub mod promql;
pub mod query;
pub mod rules;
pub mod scrape;
pub mod shard;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod tsdb;
pub mod web;
