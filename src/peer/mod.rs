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

/// rustls's *ring* provider, the one shoal builds with (for the web listener's TLS
/// and the peers' mutual TLS alike). rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange; the alternative, aws-lc-rs, builds a large C library on
/// every clean build, and Prometheus's web config does not ask for post-quantum
/// curves (its `curve_preferences` are classical). Recorded in docs/architecture.md.
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Makes [`ring_provider`] the process default (once; later calls do nothing). Every
/// HTTP client of the node (reqwest, built without a provider of its own) panics
/// without one; `main` calls this first, and [`PeerClient::new`] again for library
/// users and tests.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means another provider was installed first: that one is used.
        let _ = ring_provider().install_default();
    });
}
