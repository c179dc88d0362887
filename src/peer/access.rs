//! Who may use a node's internal routes, decided once at start ([`PeerAccess::decide`]),
//! and the secure default: a node never forms or joins a cluster on a non-loopback
//! address without authentication unless told to with `--cluster.insecure`.
//!
//! | listen address | secret or mTLS | seeds | result |
//! |---|---|---|---|
//! | loopback only | any | any | open as configured (a developer's machine, `shoal demo`) |
//! | reachable | yes | any | internal routes need the secret and/or a cluster certificate |
//! | reachable | no | yes | refuses to start (the message says how to fix it) |
//! | reachable | no | no | runs alone: the internal routes are closed (403) |
//! | reachable | no, `--cluster.insecure` | any | open: anyone who reaches the port is a peer |

use std::sync::Arc;

use super::secret::SecretStore;
use super::tls::ClusterTls;

/// What a node's internal routes accept.
#[derive(Clone, Debug, Default)]
pub struct PeerAccess {
    /// The accepted cluster secrets (none set: no secret needed).
    pub secrets: SecretStore,
    /// With cluster mutual TLS, a peer must present a certificate of the cluster CA.
    pub tls: Option<Arc<ClusterTls>>,
    /// A lone node reachable from the network without authentication: every internal
    /// route is refused (no one can join it, vote in it or read through it).
    pub closed: bool,
}

/// What the start-up check needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Exposure {
    /// Every address the node listens on is a loopback address.
    pub loopback_only: bool,
    /// `--cluster.seeds` names other nodes.
    pub has_seeds: bool,
    /// `--cluster.insecure`.
    pub insecure: bool,
}

impl PeerAccess {
    /// Applies the secure default to `secrets` and `tls` (see the module docs).
    pub fn decide(
        secrets: SecretStore,
        tls: Option<Arc<ClusterTls>>,
        exposure: Exposure,
    ) -> Result<PeerAccess, String> {
        let authenticated = secrets.is_set() || tls.is_some();
        let closed = !authenticated && !exposure.loopback_only && !exposure.insecure;
        if closed && exposure.has_seeds {
            return Err(UNAUTHENTICATED_CLUSTER.to_owned());
        }
        Ok(PeerAccess {
            secrets,
            tls,
            closed,
        })
    }

    /// Whether peers must authenticate at all.
    pub fn authenticated(&self) -> bool {
        self.secrets.is_set() || self.tls.is_some()
    }
}

/// The start-up error of an unauthenticated cluster on a reachable address.
pub const UNAUTHENTICATED_CLUSTER: &str = "refusing to form or join a cluster on a non-loopback address without authentication: anyone who can reach this port could make nodes leave, take over members' addresses and read every series. Give every node the same --cluster.secret-file (make one with `shoal cluster new-secret FILE`), and/or mutual TLS (--cluster.tls.cert-file, --cluster.tls.key-file, --cluster.tls.ca-file; docs/security.md). To run without authentication anyway (a private network you trust), add --cluster.insecure.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Secrets;

    fn exposure(loopback_only: bool, has_seeds: bool, insecure: bool) -> Exposure {
        Exposure {
            loopback_only,
            has_seeds,
            insecure,
        }
    }

    #[test]
    fn the_secure_default() {
        let none = SecretStore::none;
        let secret = || SecretStore::fixed(Secrets::single("s"));
        // Loopback: open as configured.
        let a = PeerAccess::decide(none(), None, exposure(true, true, false)).unwrap();
        assert!(!a.closed && !a.authenticated());
        // Reachable with a secret: authenticated, with or without seeds.
        let a = PeerAccess::decide(secret(), None, exposure(false, true, false)).unwrap();
        assert!(!a.closed && a.authenticated());
        // Reachable, no secret, seeds: refused with the way out in the message.
        let e = PeerAccess::decide(none(), None, exposure(false, true, false)).unwrap_err();
        assert!(e.contains("--cluster.secret-file") && e.contains("--cluster.insecure"));
        // Reachable, no secret, alone: runs, internal routes closed.
        let a = PeerAccess::decide(none(), None, exposure(false, false, false)).unwrap();
        assert!(a.closed);
        // --cluster.insecure: open.
        let a = PeerAccess::decide(none(), None, exposure(false, true, true)).unwrap();
        assert!(!a.closed && !a.authenticated());
    }
}
