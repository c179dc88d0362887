//! TLS (rustls 0.23, *ring* provider) for the HTTP listener and the peers: the crypto
//! provider ([`ring_provider`], [`install_crypto_provider`]); for the listener, builds a
//! [`rustls::ServerConfig`] from plain settings ([`TlsSettings`]) and keeps the parts that
//! may change while the listener runs — the certificate and key, and client
//! certificate authentication — in swappable holders, so that a reload takes effect for
//! new connections without restarting the listener.
//!
//! Owns: [`TlsSettings`] and its parts, the Go names of versions, cipher suites and
//! curves (the names of Prometheus's web config file, which also suit future
//! `--cluster.tls.*` flags), [`TlsServer`] (the listener's config and its holders),
//! [`PeerCertificates`] (a connection's client certificates, put into the connection's
//! extensions by `web::serve`). It knows nothing of YAML (`web::web_config`) or of
//! HTTP (`web::security`, `crate::peer`).
//!
//! What is fixed for the listener's life is [`Protocol`] (versions, cipher suites,
//! curves, suite order): rustls takes them once. A reload that changes them is refused
//! ([`TlsServer::prepare`]).
//!
//! Client certificates: the verifier the `ServerConfig` holds is a [`SwappableVerifier`]
//! that delegates to the current one (built by [`build_verifier`] from
//! [`ClientAuthSettings`]). Certificate authorities are a list, so a later cluster-TLS
//! feature can accept the web clients' CA and the cluster CA on the same listener and
//! check [`PeerCertificates`] against the cluster CA on the internal routes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CipherSuite, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme, SupportedCipherSuite,
};

/// Largest certificate, key or CA file read (bytes).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// An error building TLS settings or reading their files. Messages never contain a key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read {what} ({}): {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
}

/// Where PEM text comes from: a file (a path already resolved by the caller) or the
/// text itself (a config's inline `cert`/`key`/`client_ca`).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            // Inline text may be a private key: never printed.
            Pem::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

impl Pem {
    pub(crate) fn read(&self, what: &'static str) -> Result<Vec<u8>, TlsError> {
        match self {
            Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
            Pem::File(p) => read_capped(p).map_err(|source| TlsError::Read {
                what,
                path: p.clone(),
                source,
            }),
        }
    }
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::config::read_capped(path, MAX_PEM_BYTES).map(String::into_bytes)
}

/// A TLS protocol version shoal serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// From Go's name (`TLS12`, `TLS13`); `TLS10`/`TLS11` are known but refused.
    pub fn from_go_name(name: &str) -> Result<TlsVersion, String> {
        match name {
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            "TLS10" | "TLS11" => Err(format!(
                "TLS version {name} is not supported by shoal (rustls implements TLS 1.2 and 1.3 only)"
            )),
            _ => Err(format!("unknown TLS version: {name}")),
        }
    }

    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// Go's cipher suite names (`crypto/tls.CipherSuites()`) and the rustls suites they
/// name; `None`: Go has it, rustls does not (CBC and RSA key exchange).
const GO_CIPHER_SUITES: &[(&str, Option<CipherSuite>)] = &[
    // TLS 1.3: not configurable in Go (always on); accepted with no effect, as in Go.
    (
        "TLS_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        Some(CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
    ),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
];

/// The rustls suite of a Go cipher suite name.
pub fn cipher_suite_from_go_name(name: &str) -> Result<CipherSuite, String> {
    match GO_CIPHER_SUITES.iter().find(|(n, _)| *n == name) {
        Some((_, Some(cs))) => Ok(*cs),
        Some((_, None)) => Err(format!(
            "cipher suite {name} is not supported by shoal (rustls implements only ECDHE suites with AEAD ciphers)"
        )),
        None => Err(format!("unknown cipher: {name}")),
    }
}

/// An ECDHE group (`curve_preferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

impl Curve {
    /// From Go's name (`X25519`, `CurveP256`, `CurveP384`).
    pub fn from_go_name(name: &str) -> Result<Curve, String> {
        match name {
            "X25519" => Ok(Curve::X25519),
            "CurveP256" => Ok(Curve::P256),
            "CurveP384" => Ok(Curve::P384),
            "CurveP521" | "X25519MLKEM768" | "SecP256r1MLKEM768" | "SecP384r1MLKEM1024" => {
                Err(format!(
                    "curve {name} is not supported by shoal (X25519, CurveP256 and CurveP384 are)"
                ))
            }
            _ => Err(format!("unknown curve: {name}")),
        }
    }

    fn rustls(self) -> &'static dyn rustls::crypto::SupportedKxGroup {
        use rustls::crypto::ring::kx_group;
        match self {
            Curve::X25519 => kx_group::X25519,
            Curve::P256 => kx_group::SECP256R1,
            Curve::P384 => kx_group::SECP384R1,
        }
    }
}

/// Go's `tls.ClientAuthType`, same meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified.
    RequireAnyClientCert,
    /// Not required; verified against the client CAs when given.
    VerifyClientCertIfGiven,
    /// Required and verified against the client CAs.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// From Go's name; `RequireClientCert` is exporter-toolkit's old alias of
    /// `RequireAnyClientCert`.
    pub fn from_go_name(name: &str) -> Result<ClientAuth, String> {
        Ok(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return Err(format!("invalid ClientAuth: {name}")),
        })
    }

    fn requires(self) -> bool {
        matches!(
            self,
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// What the listener is built with and cannot change while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order; empty: rustls's defaults. TLS 1.3 suites are
    /// always all on (as in Go); TLS 1.3 names here have no effect.
    pub cipher_suites: Vec<CipherSuite>,
    /// Key exchange groups in preference order; empty: rustls's defaults.
    pub curves: Vec<Curve>,
    /// The server's suite order wins (rustls `ignore_client_order`).
    pub prefer_server_cipher_suites: bool,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
            prefer_server_cipher_suites: true,
        }
    }
}

/// How clients authenticate with certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientAuthSettings {
    pub mode: ClientAuth,
    /// PEM bundles of the certificate authorities that sign client certificates.
    pub cas: Vec<Pem>,
    /// A client certificate must carry one of these SANs (DNS name, IP address or URI,
    /// exact match); `None`: any.
    pub allowed_sans: Option<Vec<String>>,
}

/// Plain TLS server settings (paths already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first.
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuthSettings,
    pub protocol: Protocol,
}

/// The certificates a TLS client presented, leaf first, in the connection's extensions
/// (`HttpRequest::conn_data::<PeerCertificates>()`); absent when it sent none (or on a
/// plain HTTP listener). Whatever the web config's `client_auth_type` checked, a route
/// that trusts a different CA must check them itself.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Vec<CertificateDer<'static>>);

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

/// The TLS of shoal's own HTTP clients (`shoal cluster`, `shoal healthcheck`, the
/// demo): trusts the CA certificates in `ca` when given, else the system's roots where
/// there are any (a container image has none: https then fails verification with a
/// clear error, plain http works — reqwest's default would fail to build the client),
/// and presents `identity` (certificate chain, key) when given.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for cert in parse_certs(&Pem::File(ca.to_path_buf()).read("ca_file")?, "ca")? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    what: "ca: not a usable CA certificate",
                    source,
                })?;
            }
        }
        None => {
            // Unreadable system certificates are skipped (errors hold no secret).
            let _ = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "TLS client",
            source,
        })?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = parse_certs(&Pem::File(cert.to_path_buf()).read("cert_file")?, "cert")?;
            let key =
                PrivateKeyDer::from_pem_slice(&Pem::File(key.to_path_buf()).read("key_file")?)
                    .map_err(|e| TlsError::Pem {
                        what: "key",
                        message: pem_error(e),
                    })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Rustls {
                    what: "the client certificate and key do not make a pair",
                    source,
                })
        }
    }
}

fn provider_for(protocol: &Protocol) -> CryptoProvider {
    let base = crate::tls::ring_provider();
    let tls13 = base
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13);
    let tls12: Vec<SupportedCipherSuite> = if protocol.cipher_suites.is_empty() {
        base.cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect()
    } else {
        protocol
            .cipher_suites
            .iter()
            .filter_map(|cs| {
                base.cipher_suites
                    .iter()
                    .copied()
                    .find(|s| s.suite() == *cs && s.version() == &rustls::version::TLS12)
            })
            .collect()
    };
    let kx_groups = if protocol.curves.is_empty() {
        base.kx_groups.clone()
    } else {
        protocol.curves.iter().map(|c| c.rustls()).collect()
    };
    CryptoProvider {
        cipher_suites: tls13.chain(tls12).collect(),
        kx_groups,
        ..base
    }
}

/// Reads a certificate chain and its key into a rustls [`CertifiedKey`]; fails when the
/// key does not belong to the first certificate.
pub fn load_certified_key(
    cert: &Pem,
    key: &Pem,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs = parse_certs(&cert.read("cert_file")?, "cert")?;
    let key_pem = key.read("key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "key",
        message: pem_error(e),
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|source| TlsError::Rustls {
        what: "the certificate and key do not make a pair",
        source,
    })
}

pub(crate) fn parse_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: pem_error(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

/// A PEM error without the text around it (it may be key material).
fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM item of the expected kind found".into(),
        E::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        E::IllegalSectionStart { .. } => "a PEM section has a malformed BEGIN line".into(),
        E::Base64Decode(_) => "a PEM section is not valid base64".into(),
        E::Io(e) => e.to_string(),
        _ => "not valid PEM".into(),
    }
}

/// A SAN a client certificate may carry.
#[derive(Debug, Clone)]
enum AllowedSan {
    Ip(IpAddr),
    /// A DNS name or a URI, compared as strings.
    Name(String),
}

fn parse_allowed_sans(sans: &[String]) -> Result<Vec<AllowedSan>, TlsError> {
    sans.iter()
        .map(|s| {
            if let Ok(ip) = s.parse::<IpAddr>() {
                Ok(AllowedSan::Ip(ip))
            } else if s.contains('@') && !s.contains(':') {
                Err(TlsError::Invalid(format!(
                    "client_allowed_sans: e-mail address SANs ({s:?}) are not supported by shoal yet (DNS names, IP addresses and URIs are)"
                )))
            } else {
                Ok(AllowedSan::Name(s.clone()))
            }
        })
        .collect()
}

/// Builds the client certificate verifier of `settings` (what [`SwappableVerifier`]
/// delegates to) with the hints (CA subjects) a server sends.
pub fn build_verifier(
    settings: &ClientAuthSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Vec<DistinguishedName>), TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in &settings.cas {
        for cert in parse_certs(&ca.read("client_ca_file")?, "client_ca")? {
            roots.add(cert).map_err(|source| TlsError::Rustls {
                what: "client_ca: not a usable CA certificate",
                source,
            })?;
        }
    }
    if !roots.is_empty() && settings.mode == ClientAuth::NoClientCert {
        return Err(TlsError::Invalid(
            "Client CA's have been configured without a Client Auth Policy".into(),
        ));
    }
    if settings.allowed_sans.is_some() && !settings.mode.requires() {
        return Err(TlsError::Invalid(
            "client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert".into(),
        ));
    }
    let hints = roots.subjects();
    let algs = provider.signature_verification_algorithms;
    let inner: Arc<dyn ClientCertVerifier> = match settings.mode {
        ClientAuth::NoClientCert => Arc::new(NoClientCert { algs }),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(AnyClientCert {
                mandatory: settings.mode.requires(),
                algs,
            })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            if roots.is_empty() {
                return Err(TlsError::Invalid(format!(
                    "client_auth_type {:?} needs the CAs that sign client certificates (client_ca_file or client_ca)",
                    settings.mode
                )));
            }
            let mut b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !settings.mode.requires() {
                b = b.allow_unauthenticated();
            }
            b.build()
                .map_err(|e| TlsError::Invalid(format!("client certificate verifier: {e}")))?
        }
    };
    let verifier = match &settings.allowed_sans {
        Some(sans) => Arc::new(SanCheck {
            inner,
            allowed: parse_allowed_sans(sans)?,
        }),
        None => inner,
    };
    Ok((verifier, hints))
}

/// The listener's TLS: its `ServerConfig` and the holders a reload swaps.
pub struct TlsServer {
    config: Arc<ServerConfig>,
    protocol: Protocol,
    provider: Arc<CryptoProvider>,
    cert: Arc<SwappableCert>,
    verifier: Arc<SwappableVerifier>,
}

/// Everything a reload installs, checked and built beforehand ([`TlsServer::prepare`]).
pub struct TlsUpdate {
    cert: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
}

impl TlsServer {
    /// Reads the certificate, key and CAs and builds the listener's config.
    pub fn new(settings: &TlsSettings) -> Result<TlsServer, TlsError> {
        let p = &settings.protocol;
        if p.min_version > p.max_version {
            return Err(TlsError::Invalid(
                "min_version is greater than max_version".into(),
            ));
        }
        let provider = Arc::new(provider_for(p));
        let cert = Arc::new(load_certified_key(
            &settings.cert,
            &settings.key,
            &provider,
        )?);
        let (verifier, hints) = build_verifier(&settings.client_auth, &provider)?;
        let cert = Arc::new(SwappableCert(RwLock::new(cert)));
        let verifier = Arc::new(SwappableVerifier(RwLock::new(Active::new(verifier, hints))));
        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            [TlsVersion::Tls12, TlsVersion::Tls13]
                .into_iter()
                .filter(|v| (p.min_version..=p.max_version).contains(v))
                .map(TlsVersion::rustls)
                .collect();
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rustls {
                what: "cipher_suites, curve_preferences and the TLS versions do not fit together",
                source,
            })?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        config.ignore_client_order = p.prefer_server_cipher_suites;
        Ok(TlsServer {
            config: Arc::new(config),
            protocol: p.clone(),
            provider,
            cert,
            verifier,
        })
    }

    /// The listener's config (one per listening socket; they share the holders).
    pub fn server_config(&self) -> ServerConfig {
        (*self.config).clone()
    }

    /// The listener's config when the same port also serves peers with a certificate
    /// of their own ([`PeerListener`]): a client that offers the peers' ALPN protocol
    /// gets the peers' certificate, every other client the configured one; a client
    /// certificate the peers' verifier accepts is accepted, any other goes to the
    /// configured client authentication. Reloads of the configured parts still apply.
    pub fn server_config_with_peers(&self, peers: &PeerListener) -> Result<ServerConfig, TlsError> {
        let versions: Vec<&'static rustls::SupportedProtocolVersion> =
            [TlsVersion::Tls12, TlsVersion::Tls13]
                .into_iter()
                .filter(|v| (self.protocol.min_version..=self.protocol.max_version).contains(v))
                .map(TlsVersion::rustls)
                .collect();
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|source| TlsError::Rustls {
                what: "the TLS versions",
                source,
            })?
            .with_client_cert_verifier(Arc::new(EitherVerifier {
                peers: peers.verifier.clone(),
                others: self.verifier.clone(),
            }))
            .with_cert_resolver(Arc::new(AlpnResolver {
                alpn: peers.alpn,
                peers: peers.cert.clone(),
                others: self.cert.clone(),
            }));
        config.ignore_client_order = self.protocol.prefer_server_cipher_suites;
        Ok(config)
    }

    /// Reads and checks new settings without installing them: fails when they cannot
    /// be read, or change what the listener cannot change while it runs.
    pub fn prepare(&self, settings: &TlsSettings) -> Result<TlsUpdate, TlsError> {
        let (old, new) = (&self.protocol, &settings.protocol);
        let fixed = [
            ("min_version", old.min_version != new.min_version),
            ("max_version", old.max_version != new.max_version),
            ("cipher_suites", old.cipher_suites != new.cipher_suites),
            ("curve_preferences", old.curves != new.curves),
            (
                "prefer_server_cipher_suites",
                old.prefer_server_cipher_suites != new.prefer_server_cipher_suites,
            ),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(TlsError::Invalid(format!(
                "{key} cannot change without a restart"
            )));
        }
        let cert = load_certified_key(&settings.cert, &settings.key, &self.provider)?;
        let (verifier, hints) = build_verifier(&settings.client_auth, &self.provider)?;
        Ok(TlsUpdate {
            cert: Arc::new(cert),
            verifier,
            hints,
        })
    }

    /// Installs prepared settings; new connections use them.
    pub fn apply(&self, update: TlsUpdate) {
        *self.cert.0.write() = update.cert;
        *self.verifier.0.write() = Active::new(update.verifier, update.hints);
    }
}

/// What a listener that also serves peers needs of them
/// ([`TlsServer::server_config_with_peers`]).
pub struct PeerListener {
    /// The ALPN protocol peers offer (besides `http/1.1`).
    pub alpn: &'static [u8],
    /// The certificate peers are shown.
    pub cert: Arc<CertifiedKey>,
    /// Verifies peers' client certificates (not mandatory: other clients have none).
    pub verifier: Arc<dyn ClientCertVerifier>,
}

/// Shows peers (who offer `alpn`) their certificate, everyone else the configured one.
#[derive(Debug)]
struct AlpnResolver {
    alpn: &'static [u8],
    peers: Arc<CertifiedKey>,
    others: Arc<SwappableCert>,
}

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let peer = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == self.alpn));
        if peer {
            Some(self.peers.clone())
        } else {
            self.others.resolve(hello)
        }
    }
}

/// Accepts a client certificate the peers' verifier accepts; otherwise the configured
/// client authentication decides.
#[derive(Debug)]
struct EitherVerifier {
    peers: Arc<dyn ClientCertVerifier>,
    others: Arc<SwappableVerifier>,
}

impl ClientCertVerifier for EitherVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.others.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints only guide a client's choice; peers present their one certificate.
        self.others.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .peers
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => Ok(v),
            Err(_) => self
                .others
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.peers.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.peers.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.peers.supported_verify_schemes()
    }
}

/// The server certificate: the current one for every handshake.
#[derive(Debug)]
struct SwappableCert(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

struct Active {
    inner: Arc<dyn ClientCertVerifier>,
    hints: &'static [DistinguishedName],
}

impl Active {
    fn new(inner: Arc<dyn ClientCertVerifier>, hints: Vec<DistinguishedName>) -> Active {
        Active {
            inner,
            hints: intern_hints(hints),
        }
    }
}

/// rustls borrows the hint list from the verifier for a whole handshake, so a list that
/// a reload replaces must outlive it: each distinct list is kept for the process's life
/// (one per distinct set of client CAs ever configured, a few hundred bytes each).
fn intern_hints(hints: Vec<DistinguishedName>) -> &'static [DistinguishedName] {
    static SEEN: Mutex<Vec<&'static [DistinguishedName]>> = Mutex::new(Vec::new());
    let mut seen = match SEEN.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let same = |a: &[DistinguishedName]| {
        a.len() == hints.len() && a.iter().zip(&hints).all(|(x, y)| x.as_ref() == y.as_ref())
    };
    if let Some(found) = seen.iter().find(|s| same(s)) {
        return found;
    }
    let leaked: &'static [DistinguishedName] = Vec::leak(hints);
    seen.push(leaked);
    leaked
}

/// The client certificate verifier the `ServerConfig` holds: delegates to the current
/// one, which a reload swaps.
struct SwappableVerifier(RwLock<Active>);

impl std::fmt::Debug for SwappableVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwappableVerifier")
    }
}

impl SwappableVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().inner.clone()
    }
}

impl ClientCertVerifier for SwappableVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.read().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// `NoClientCert`: never asks.
#[derive(Debug)]
struct NoClientCert {
    algs: WebPkiSupportedAlgorithms,
}

/// `RequestClientCert`, `RequireAnyClientCert`: asks (and maybe requires) a certificate
/// and checks only that the client holds its key, not who signed it (as Go).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

impl ClientCertVerifier for NoClientCert {
    fn offer_client_auth(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "no client certificate was asked for".into(),
        ))
    }

    signature_checks!();
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// `client_allowed_sans`: the inner verifier's checks, then one of the allowed SANs.
#[derive(Debug)]
struct SanCheck {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<AllowedSan>,
}

impl SanCheck {
    fn matches(&self, end_entity: &CertificateDer<'_>) -> bool {
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        self.allowed.iter().any(|want| match want {
            AllowedSan::Ip(ip) => cert
                .verify_is_valid_for_subject_name(&ServerName::IpAddress((*ip).into()))
                .is_ok(),
            AllowedSan::Name(n) => {
                cert.valid_dns_names().any(|d| d == n) || cert.valid_uri_names().any(|u| u == n)
            }
        })
    }
}

impl ClientCertVerifier for SanCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.matches(end_entity) {
            Ok(ok)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
