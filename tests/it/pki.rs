//! Certificates made with the `openssl` CLI ([`Pki`]; Debian's `openssl`, tests/run.sh
//! installs it), and the cluster TLS test mode ([`cluster_tls`]).
//!
//! **The cluster TLS test mode.** With `SHOAL_TEST_CLUSTER_TLS=1` every node started
//! with `--cluster.seeds` (`Node::spawn_on`, so every `TestCluster`) also gets
//! `--cluster.tls.cert-file/key-file/ca-file`: a certificate of its own (SAN: its
//! host) under a CA made once per test process, next to the cluster secret as usual.
//! Such a node's listener serves HTTPS only, so the harness's HTTP helpers speak HTTPS
//! to it, trusting that CA and presenting a certificate of it as peers do (the internal
//! routes want one); `shoal cluster` gets `https://` and `--cluster.tls.ca-file`
//! (`Node::cli_target`). A test that is about plain HTTP on purpose passes
//! `harness::NO_CLUSTER_TLS`, with a comment saying why.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The environment variable that turns the cluster TLS test mode on (`1`).
pub(crate) const CLUSTER_TLS_VAR: &str = "SHOAL_TEST_CLUSTER_TLS";

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is needed for this test (Debian package `openssl`; tests/run.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CAs and the certificates they sign, as PEM files in a directory.
pub(crate) struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A directory to make CAs and certificates in ([`Pki::ca`], [`Pki::issue`]).
    pub(crate) fn empty(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn ca(&self, name: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// `name.crt`/`name.key` signed by `ca`, with subject CN `cn` and `sans`.
    pub(crate) fn issue(&self, ca: &str, name: &str, cn: &str, sans: &str, usage: &str) {
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// The cluster TLS test mode's PKI and the harness's TLS client.
pub(crate) struct ClusterTlsMode {
    pki: Pki,
    /// Node certificates issued so far (names), under a lock: `openssl x509
    /// -CAcreateserial` rewrites the CA's serial file.
    issued: Mutex<HashSet<String>>,
    client: Arc<rustls::ClientConfig>,
}

/// The cluster TLS test mode, when `SHOAL_TEST_CLUSTER_TLS=1`: its CA and the harness
/// certificate are made on the first call of the test process.
pub(crate) fn cluster_tls() -> Option<&'static ClusterTlsMode> {
    static MODE: OnceLock<Option<ClusterTlsMode>> = OnceLock::new();
    MODE.get_or_init(|| match std::env::var(CLUSTER_TLS_VAR).as_deref() {
        Err(_) | Ok("" | "0") => None,
        Ok("1") => Some(ClusterTlsMode::make()),
        Ok(other) => panic!("{CLUSTER_TLS_VAR}={other:?}: want 1 (on) or 0 (off)"),
    })
    .as_ref()
}

impl ClusterTlsMode {
    fn make() -> ClusterTlsMode {
        let pki = Pki::empty(&process_dir());
        pki.ca("ca");
        // The harness's own certificate: a client of the internal routes like a peer.
        pki.issue("ca", "harness", "harness", "DNS:harness", "clientAuth");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.path("ca.crt")).expect("ca.crt") {
            roots.add(cert.expect("ca.crt")).expect("a CA certificate");
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path("harness.crt"))
                .expect("harness.crt")
                .collect::<Result<_, _>>()
                .expect("harness.crt");
        let key = PrivateKeyDer::from_pem_file(pki.path("harness.key")).expect("harness.key");
        let client =
            rustls::ClientConfig::builder_with_provider(shoal::tls::ring_provider().into())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .expect("the harness certificate and key");
        ClusterTlsMode {
            pki,
            issued: Mutex::default(),
            client: Arc::new(client),
        }
    }

    /// The harness's TLS client: trusts the test CA, presents a certificate of it.
    pub(crate) fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// The test CA's certificate file.
    pub(crate) fn ca_file(&self) -> String {
        self.pki.path("ca.crt")
    }

    /// The `--cluster.tls.*` flags of the node on `host:port`, with a certificate of
    /// its own (made on first use; a restart on the same address reuses it) valid for
    /// `host`, as server and as client.
    pub(crate) fn node_flags(&self, host: &str, port: u16) -> Vec<String> {
        let name = format!("node-{host}-{port}");
        let mut issued = self.issued.lock().unwrap();
        if issued.insert(name.clone()) {
            let san = match host.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{host}"),
                Err(_) => format!("DNS:{host}"),
            };
            self.pki
                .issue("ca", &name, &name, &san, "serverAuth,clientAuth");
        }
        vec![
            "--cluster.tls.cert-file".into(),
            self.pki.path(&format!("{name}.crt")),
            "--cluster.tls.key-file".into(),
            self.pki.path(&format!("{name}.key")),
            "--cluster.tls.ca-file".into(),
            self.ca_file(),
        ]
    }
}

/// A directory of this test process's own under the temp dir, made empty. Directories
/// of test processes that are gone are removed first (the mode's PKI lives as long as
/// the process, which drops no statics).
fn process_dir() -> PathBuf {
    let root = std::env::temp_dir().join("shoal-it-pki");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let gone = e
                .file_name()
                .to_str()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
