//! Node-to-node traffic: the only module that speaks to peers.
//!
//! - [`access`]: who may use the internal routes, and the secure default.
//! - [`protocol`]: every internal route (path, method, body limit) and the typed bodies
//!   that cross it.
//! - [`client`]: [`PeerClient`], the node's one client to its peers (secret, TLS,
//!   source address, timeouts), used by the Raft network, the cluster admin calls,
//!   the query fan-out, federation and handoff.
//! - [`secret`]: the cluster secret — the one sent, the ones accepted (rotation).
//! - [`tls`]: mutual TLS between nodes under a cluster CA.
//!
//! The server side is `crate::web::internal`: one scope holding every route of
//! [`protocol`], behind one guard that authenticates from the headers before a byte of
//! the body is read. **Invariant:** no other module builds an HTTP client for a peer or
//! names an internal path.

pub mod access;
pub mod client;
pub mod protocol;
pub mod secret;
pub mod tls;

pub use access::{Exposure, PeerAccess};
pub use client::{Lane, PeerClient, PeerError, PeerSettings};
pub use secret::{SecretStore, Secrets};
pub use tls::{ClusterTls, ClusterTlsFiles};
