//! Mutual TLS between nodes (`--cluster.tls.cert-file`, `--cluster.tls.key-file`,
//! `--cluster.tls.ca-file`): every node holds a certificate signed by the cluster CA,
//! with its advertised host as a SAN. A node's peer client speaks `https://` to the
//! others, verifies their certificates against the cluster CA (and the host it dialled)
//! and presents its own; its listener serves its certificate and asks every client for
//! one (not required: browsers and Prometheus reach the public API without). The
//! internal routes' guard then requires a client certificate that chains to the
//! cluster CA ([`ClusterTls::verify_peer`]) — a member with a certificate of another
//! CA cannot join, vote or read.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore};

use crate::tls::{
    ClientAuth, ClientAuthSettings, Pem, Protocol, TlsError, TlsSettings, parse_certs,
    ring_provider,
};

/// The ALPN protocol a node offers when it calls a peer over TLS: a listener whose web
/// config serves another certificate shows peers their cluster certificate for it.
pub const PEER_ALPN: &[u8] = b"shoal-peer/1";

/// The three files of a node's cluster TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// This node's certificate chain (leaf first), signed by the cluster CA.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA's certificate(s).
    pub ca: PathBuf,
}

/// A node's cluster TLS, loaded.
pub struct ClusterTls {
    files: ClusterTlsFiles,
    client: Arc<ClientConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Reads the files and builds the client side and the peer verifier.
    pub fn load(files: ClusterTlsFiles) -> Result<ClusterTls, TlsError> {
        let provider = Arc::new(ring_provider());
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(&Pem::File(files.ca.clone()).read("ca_file")?, "ca")? {
            roots.add(cert).map_err(|source| TlsError::Rustls {
                what: "cluster CA: not a usable CA certificate",
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let chain = parse_certs(&Pem::File(files.cert.clone()).read("cert_file")?, "cert")?;
        let key_pem = Pem::File(files.key.clone()).read("key_file")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
            what: "key",
            message: "no usable PEM private key found".into(),
        })?;
        // The node's own certificate must chain to the cluster CA: a mistake here would
        // otherwise show up only as every peer refusing this node.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Invalid(format!("cluster CA verifier: {e}")))?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|source| TlsError::Rustls {
                what: "the node certificate (--cluster.tls.cert-file) is not valid under the cluster CA (--cluster.tls.ca-file)",
                source,
            })?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                what: "cluster TLS client",
                source,
            })?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Rustls {
                what: "the node certificate and key do not make a pair",
                source,
            })?;
        // Tells a listener that also serves a web certificate to show this node's.
        client.alpn_protocols = vec![PEER_ALPN.to_vec(), b"http/1.1".to_vec()];
        Ok(ClusterTls {
            files,
            client: Arc::new(client),
            verifier,
        })
    }

    /// The peer client's TLS (https to the other nodes, this node's certificate).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The listener's TLS when no web config gives one: this node's certificate, and
    /// client certificates asked for and verified against the cluster CA when given.
    pub fn server_settings(&self) -> TlsSettings {
        TlsSettings {
            cert: Pem::File(self.files.cert.clone()),
            key: Pem::File(self.files.key.clone()),
            client_auth: ClientAuthSettings {
                mode: ClientAuth::VerifyClientCertIfGiven,
                cas: vec![Pem::File(self.files.ca.clone())],
                allowed_sans: None,
            },
            protocol: Protocol::default(),
        }
    }

    /// What a listener whose web config serves TLS needs to serve peers too: their
    /// certificate (this node's) for the peers' ALPN protocol, and a verifier of the
    /// cluster CA for their client certificates.
    pub fn listener(&self) -> Result<crate::tls::PeerListener, TlsError> {
        let provider = Arc::new(ring_provider());
        let cert = crate::tls::load_certified_key(
            &Pem::File(self.files.cert.clone()),
            &Pem::File(self.files.key.clone()),
            &provider,
        )?;
        let mut roots = RootCertStore::empty();
        for c in parse_certs(&Pem::File(self.files.ca.clone()).read("ca_file")?, "ca")? {
            roots.add(c).map_err(|source| TlsError::Rustls {
                what: "cluster CA: not a usable CA certificate",
                source,
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Invalid(format!("cluster CA verifier: {e}")))?;
        Ok(crate::tls::PeerListener {
            alpn: PEER_ALPN,
            cert: Arc::new(cert),
            verifier,
        })
    }

    /// Whether a connection's client certificates (leaf first) chain to the cluster CA.
    pub fn verify_peer(&self, certs: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = certs.split_first() else {
            return Err("no client certificate".into());
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("client certificate not valid under the cluster CA: {e}"))
    }
}
