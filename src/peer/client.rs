//! [`PeerClient`]: the one client of node-to-node traffic, built once per node from
//! [`PeerSettings`] (secret, TLS, source address, timeouts) and shared by the Raft
//! network, the cluster admin calls, the query fan-out, federation and handoff.
//!
//! It keeps two connection pools, [`Lane::Control`] and [`Lane::Reads`], built from
//! the same settings. A pooled HTTP connection is driven by a task on the runtime
//! that opened it; the member reads run on the query runtime, which threads block on
//! while they evaluate a query, and everything else on the node's main runtime. Two
//! pools keep a read from ever waiting on a connection whose task lives on a runtime
//! that waits for the read.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{Method, Route};
use super::secret::SecretStore;
use crate::cluster::codec::{self, CodecError};

/// What the peer client is built from.
#[derive(Clone)]
pub struct PeerSettings {
    /// The cluster secret sent as `Authorization: Bearer` (none: nothing sent).
    pub secrets: SecretStore,
    /// Mutual TLS to peers (`https://`); `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Source address of outgoing connections (the advertised address's IP, so that
    /// a peer sees this node come from where it says it is).
    pub local_address: Option<IpAddr>,
    pub connect_timeout: Duration,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            secrets: SecretStore::none(),
            tls: None,
            local_address: None,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// The TLS config of a peer client without cluster TLS. It never dials https (peer
/// URLs are built as http://), but reqwest builds a TLS backend regardless, and its
/// default one loads the platform's root store: this avoids that work and that
/// dependency on the host.
fn plain_client_tls() -> Result<rustls::ClientConfig, String> {
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("peer http client: {e}"))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    )
}

/// Which connection pool a call uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Raft, cluster admin, federation, handoff: the node's main runtime.
    Control,
    /// Member reads of the query fan-out: the query runtime.
    Reads,
}

/// Why a peer call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: reqwest::Error,
    },
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: String,
        source: reqwest::Error,
    },
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        /// The start of the answer's text.
        body: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("refusing to call {0} over plain HTTP: cluster TLS is on")]
    Plaintext(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// The node's client to its peers. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    control: reqwest::Client,
    reads: reqwest::Client,
    secrets: SecretStore,
    scheme: &'static str,
}

impl PeerClient {
    /// Builds the client (no connection is made here).
    pub fn new(settings: PeerSettings) -> Result<PeerClient, String> {
        crate::tls::install_crypto_provider();
        let build = |idle: Duration| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .pool_idle_timeout(idle)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none());
            if let Some(ip) = settings.local_address {
                b = b.local_address(ip);
            }
            if let Some(tls) = &settings.tls {
                b = b.tls_backend_preconfigured(tls.as_ref().clone());
            } else {
                // A peer address is host:port, dialled as http://: nothing to verify.
                b = b.tls_backend_preconfigured(plain_client_tls()?);
            }
            b.build().map_err(|e| format!("peer http client: {e}"))
        };
        Ok(PeerClient {
            inner: Arc::new(Inner {
                control: build(Duration::from_secs(30))?,
                reads: build(Duration::from_secs(60))?,
                secrets: settings.secrets,
                scheme: if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                },
            }),
        })
    }

    /// The secrets this client sends (and the node's guard accepts).
    pub fn secrets(&self) -> &SecretStore {
        &self.inner.secrets
    }

    /// Whether calls go over TLS.
    pub fn tls(&self) -> bool {
        self.inner.scheme == "https"
    }

    /// The URL of `path` on the peer at `addr` (`host:port`, or a URL base).
    pub fn url(&self, addr: &str, path: &str) -> String {
        if addr.contains("://") {
            format!("{}{path}", addr.trim_end_matches('/'))
        } else {
            format!("{}://{addr}{path}", self.inner.scheme)
        }
    }

    /// Sends `body` (or nothing, on a GET route) to `route` on `addr`; returns the
    /// body of a 2xx answer. Bounded by `timeout` when given.
    pub async fn send(
        &self,
        lane: Lane,
        addr: &str,
        route: Route,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<bytes::Bytes, PeerError> {
        let client = match lane {
            Lane::Control => &self.inner.control,
            Lane::Reads => &self.inner.reads,
        };
        let url = self.url(addr, route.path);
        if self.tls() && !url.starts_with("https://") {
            // The secret and the data never cross the network in clear text.
            return Err(PeerError::Plaintext(url));
        }
        let mut request = match route.method {
            Method::Get => client.get(&url),
            Method::Post => client
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(body),
        };
        if let Some(s) = self.inner.secrets.get() {
            request = request.bearer_auth(s.sending());
        }
        let fut = async {
            let response = request.send().await.map_err(|source| {
                if source.is_connect() {
                    PeerError::Connect {
                        addr: addr.to_owned(),
                        source,
                    }
                } else {
                    PeerError::Request {
                        addr: addr.to_owned(),
                        source,
                    }
                }
            })?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|source| PeerError::Request {
                    addr: addr.to_owned(),
                    source,
                })?;
            if !status.is_success() {
                return Err(PeerError::Status {
                    addr: addr.to_owned(),
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                        .trim()
                        .to_owned(),
                });
            }
            Ok(bytes)
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| PeerError::Timeout(t))?,
            None => fut.await,
        }
    }

    /// Sends `req` encoded with the cluster codec and decodes the answer as `Resp`
    /// (control lane).
    pub async fn call<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        route: Route,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let body = match route.method {
            Method::Get => Vec::new(),
            Method::Post => codec::encode(req)?,
        };
        let bytes = self
            .send(Lane::Control, addr, route, body, Some(timeout))
            .await?;
        Ok(codec::decode(&bytes)?)
    }
}
