//! Node-to-node traffic: the only module that speaks to peers.
//!
//! - [`protocol`]: every internal route (path, method, body limit) and the typed bodies
//!   that cross it.
//! - [`client`]: [`PeerClient`], the node's one client to its peers (secret, TLS,
//!   source address, timeouts), used by the Raft network, the cluster admin calls,
//!   the query fan-out, federation and handoff.
//! - [`secret`]: the cluster secret — the one sent, the ones accepted (rotation).
//!
//! The server side is `crate::web::internal`: one scope holding every route of
//! [`protocol`], behind one guard that authenticates from the headers before a byte of
//! the body is read. **Invariant:** no other module builds an HTTP client for a peer or
//! names an internal path.

pub mod client;
pub mod protocol;
pub mod secret;

pub use client::{Lane, PeerClient, PeerError, PeerSettings};
pub use secret::{SecretStore, Secrets};

/// Makes rustls's `ring` provider the process default (once; later calls do nothing).
/// Every HTTP client of the node (reqwest, built without a provider of its own) and
/// every TLS configuration needs one; `main` calls this first, and [`PeerClient::new`]
/// again for library users and tests.
///
/// rustls 0.23.48 deprecates `ring`'s provider for lacking post-quantum key exchange;
/// the alternative (aws-lc-rs) builds a large C library on every clean build. The
/// choice is recorded in docs/architecture.md ("TLS").
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        // An error means another provider was installed first: that one is used.
        let _ = provider.install_default();
    });
}
