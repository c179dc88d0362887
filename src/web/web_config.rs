//! The web configuration file (`--web.config.file`): the format of Prometheus and its
//! exporters (prometheus/exporter-toolkit's `web-config.yml`) — `tls_server_config`,
//! `http_server_config`, `basic_auth_users`.
//!
//! Owns: the YAML shapes, their checks and defaults (exporter-toolkit's), path
//! resolution (relative to the file's directory) and [`WebConfig`], the resolved
//! result; [`load_file`] and [`check_file`] (`shoal check web-config`). Every unknown key
//! is rejected with its name, and the keys exporter-toolkit knows but shoal does not
//! implement with "`key` is not supported by shoal yet". No IO beyond reading the file
//! (certificates are read by `web::tls`); no state.
//!
//! Secrets (bcrypt hashes, an inline key) never appear in an error or in `Debug`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use actix_web::http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};

use crate::config::ConfigError;
use crate::tls::{
    ClientAuth, ClientAuthSettings, Curve, Pem, Protocol, TlsSettings, TlsVersion,
    cipher_suite_from_go_name,
};

/// An error loading a web config file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// Reading the file, its YAML, an unknown or unsupported key.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// A bad value found after parsing.
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    /// The TLS settings' files (certificate, key, CAs) or their combination.
    #[error("{file}: {source}")]
    Tls {
        file: String,
        source: crate::tls::TlsError,
    },
}

/// The headers exporter-toolkit lets a web config set, with their allowed values
/// (empty: any value).
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// A loaded and checked web config.
#[derive(Clone, Default, PartialEq)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// User name → bcrypt hash; empty: no basic authentication.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls)
            .field("headers", &self.headers)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Loads and checks `path` (not the files it names: see `web::security`).
pub fn load_file(path: &Path) -> Result<WebConfig, WebConfigError> {
    let text = crate::config::read_file(path)?;
    let file = path.display().to_string();
    let dir = path.parent().unwrap_or(Path::new(""));
    load_with(&text, &file, dir)
}

/// Loads and checks web config text; relative paths are resolved against `dir`.
pub fn load_with(text: &str, file: &str, dir: &Path) -> Result<WebConfig, WebConfigError> {
    // An empty file (or only comments) is a valid, empty config, as in Go.
    let raw: RawWebConfig = if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        RawWebConfig::default()
    } else {
        crate::config::parse_yaml::<Option<RawWebConfig>>(text, file)?.unwrap_or_default()
    };
    raw.resolve(dir).map_err(|message| WebConfigError::Invalid {
        file: file.to_owned(),
        message,
    })
}

/// `rate_limit`: exporter-toolkit knows it, shoal does not implement it yet.
struct RateLimitNotYet;

impl<'de> Deserialize<'de> for RateLimitNotYet {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "`rate_limit` is not supported by shoal yet",
        ))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)] // exists only to reject its key
    rate_limit: Option<RateLimitNotYet>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Go's `config_util.JoinDir`: a relative path is taken relative to `dir`.
fn join_dir(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// One PEM source out of an inline and a file key, at most one of them set.
fn pem(
    inline: &Option<String>,
    file: &Option<String>,
    names: (&str, &str),
    dir: &Path,
) -> Result<Option<Pem>, String> {
    match (non_empty(inline), non_empty(file)) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: {} and {} are mutually exclusive",
            names.0, names.1
        )),
        (Some(text), None) => Ok(Some(Pem::Inline(text.to_owned()))),
        (None, Some(path)) => Ok(Some(Pem::File(join_dir(dir, path)))),
        (None, None) => Ok(None),
    }
}

impl RawWebConfig {
    fn resolve(self, dir: &Path) -> Result<WebConfig, String> {
        let tls = match self.tls_server_config {
            Some(t) => t.resolve(dir)?,
            None => None,
        };
        let http = self.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            return Err(
                "http_server_config: `http2: true` is not supported by shoal yet (it serves HTTP/1.1 only; `http2: false` is accepted)".into(),
            );
        }
        let mut headers = Vec::new();
        for (name, value) in http.headers.unwrap_or_default() {
            let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(n, _)| *n == name) else {
                return Err(format!(
                    "http_server_config: HTTP header {name:?} can not be configured"
                ));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(format!(
                    "http_server_config: invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}"
                ));
            }
            if value.is_empty() {
                continue; // "Unset if blank".
            }
            let v = HeaderValue::from_str(&value).map_err(|_| {
                format!(
                    "http_server_config: the value of header {name} is not a valid header value"
                )
            })?;
            let n = HeaderName::from_str(&name)
                .map_err(|_| format!("http_server_config: {name:?} is not a header name"))?;
            headers.push((n, v));
        }
        let users = self.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            check_bcrypt_hash(hash).map_err(|why| {
                format!("basic_auth_users: the password hash of user {user:?} is not a bcrypt hash: {why}")
            })?;
        }
        Ok(WebConfig {
            tls,
            headers,
            users,
        })
    }
}

/// Whether `hash` is a usable bcrypt hash (the error never quotes it).
fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    let parts = bcrypt::HashParts::from_str(hash).map_err(|e| match e {
        bcrypt::BcryptError::InvalidHash(why) => why.to_owned(),
        _ => "malformed".to_owned(),
    })?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(format!("cost {cost} is outside 4..=31"));
    }
    Ok(())
}

impl RawTls {
    /// exporter-toolkit's `IsEnabled`: any certificate, key, CA or client auth setting.
    fn enabled(&self) -> bool {
        [
            &self.cert,
            &self.key,
            &self.cert_file,
            &self.key_file,
            &self.client_ca,
            &self.client_ca_file,
            &self.client_auth_type,
        ]
        .iter()
        .any(|v| non_empty(v).is_some())
    }

    fn resolve(self, dir: &Path) -> Result<Option<TlsSettings>, String> {
        if !self.enabled() {
            // Go serves plain HTTP then and ignores the rest; shoal says so instead.
            let set = [
                ("cipher_suites", self.cipher_suites.is_some()),
                ("curve_preferences", self.curve_preferences.is_some()),
                ("min_version", self.min_version.is_some()),
                ("max_version", self.max_version.is_some()),
                (
                    "prefer_server_cipher_suites",
                    self.prefer_server_cipher_suites.is_some(),
                ),
                ("client_allowed_sans", self.client_allowed_sans.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
                return Err(format!(
                    "tls_server_config: {key} is set but TLS is off (no cert_file/cert and key_file/key)"
                ));
            }
            return Ok(None);
        }
        let cert = pem(&self.cert, &self.cert_file, ("cert", "cert_file"), dir)?
            .ok_or_else(|| "tls_server_config: missing one of cert or cert_file".to_owned())?;
        let key = pem(&self.key, &self.key_file, ("key", "key_file"), dir)?
            .ok_or_else(|| "tls_server_config: missing one of key or key_file".to_owned())?;
        let ca = pem(
            &self.client_ca,
            &self.client_ca_file,
            ("client_ca", "client_ca_file"),
            dir,
        )?;
        let mode = ClientAuth::from_go_name(self.client_auth_type.as_deref().unwrap_or(""))
            .map_err(|e| format!("tls_server_config: {e}"))?;
        let version = |v: &Option<String>, default| match v.as_deref() {
            None | Some("") => Ok(default),
            Some(name) => {
                TlsVersion::from_go_name(name).map_err(|e| format!("tls_server_config: {e}"))
            }
        };
        let protocol = Protocol {
            min_version: version(&self.min_version, TlsVersion::Tls12)?,
            max_version: version(&self.max_version, TlsVersion::Tls13)?,
            cipher_suites: self
                .cipher_suites
                .unwrap_or_default()
                .iter()
                .map(|n| cipher_suite_from_go_name(n))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls_server_config: {e}"))?,
            curves: self
                .curve_preferences
                .unwrap_or_default()
                .iter()
                .map(|n| Curve::from_go_name(n))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls_server_config: {e}"))?,
            prefer_server_cipher_suites: self.prefer_server_cipher_suites.unwrap_or(true),
        };
        if protocol.min_version > protocol.max_version {
            return Err("tls_server_config: min_version is greater than max_version".into());
        }
        Ok(Some(TlsSettings {
            cert,
            key,
            client_auth: ClientAuthSettings {
                mode,
                cas: ca.into_iter().collect(),
                allowed_sans: self.client_allowed_sans,
            },
            protocol,
        }))
    }
}

/// `shoal check web-config FILE`: loads `path` and everything it names (certificates,
/// key, CAs) as a node would.
pub fn check_file(path: &Path) -> Result<WebConfig, WebConfigError> {
    let cfg = load_file(path)?;
    if let Some(tls) = &cfg.tls {
        crate::tls::TlsServer::new(tls).map_err(|source| WebConfigError::Tls {
            file: path.display().to_string(),
            source,
        })?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, String> {
        load_with(text, "web.yml", Path::new("/etc/shoal")).map_err(|e| e.to_string())
    }

    /// A well-formed bcrypt hash (cost 4).
    const HASH: &str = "$2y$04$hgsKlR2MjffQn0/T6eKD2.pvBCXtGWhaMpfTuuCCYUfrtRyfDhtvi";

    #[test]
    fn empty_file_is_plain_http_without_users() {
        for text in ["", "# nothing\n", "{}"] {
            assert_eq!(load(text).expect(text), WebConfig::default(), "{text:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for (text, key) in [
            ("tls_config: {}\n", "tls_config"),
            ("tls_server_config:\n  cert_flie: a\n", "cert_flie"),
            ("http_server_config:\n  header: {}\n", "header"),
        ] {
            let e = load(text).expect_err(text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
        let e = load("rate_limit:\n  interval: 1s\n  burst: 2\n").expect_err("rate_limit");
        assert!(
            e.contains("`rate_limit` is not supported by shoal yet"),
            "{e}"
        );
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file() {
        let c = load(
            "tls_server_config:\n  cert_file: certs/server.crt\n  key_file: /abs/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        )
        .expect("load");
        let tls = c.tls.expect("tls on");
        assert_eq!(tls.cert, Pem::File("/etc/shoal/certs/server.crt".into()));
        assert_eq!(tls.key, Pem::File("/abs/server.key".into()));
        assert_eq!(
            tls.client_auth.cas,
            vec![Pem::File("/etc/shoal/ca.crt".into())]
        );
        assert_eq!(tls.client_auth.mode, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.protocol, Protocol::default());
    }

    #[test]
    fn tls_versions_ciphers_and_curves() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let e = load(&format!("{base}  min_version: TLS10\n")).expect_err("TLS10");
        assert!(e.contains("TLS10 is not supported by shoal"), "{e}");
        let e = load(&format!("{base}  max_version: TLS11\n")).expect_err("TLS11");
        assert!(e.contains("TLS11 is not supported by shoal"), "{e}");
        let e = load(&format!("{base}  min_version: TLS14\n")).expect_err("TLS14");
        assert!(e.contains("unknown TLS version: TLS14"), "{e}");
        let e = load(&format!(
            "{base}  min_version: TLS13\n  max_version: TLS12\n"
        ))
        .expect_err("min > max");
        assert!(e.contains("min_version is greater than max_version"), "{e}");
        let e = load(&format!(
            "{base}  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_MADE_UP]\n"
        ))
        .expect_err("made-up cipher");
        assert!(e.contains("unknown cipher: TLS_MADE_UP"), "{e}");
        let e = load(&format!(
            "{base}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"
        ))
        .expect_err("CBC");
        assert!(
            e.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not supported by shoal"),
            "{e}"
        );
        let e = load(&format!("{base}  curve_preferences: [CurveP521]\n")).expect_err("P521");
        assert!(e.contains("CurveP521 is not supported by shoal"), "{e}");
        let c = load(&format!(
            "{base}  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: false\n"
        ))
        .expect("load");
        let p = c.tls.expect("tls").protocol;
        assert_eq!(p.min_version, TlsVersion::Tls13);
        assert_eq!(
            p.cipher_suites,
            vec![rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
        );
        assert_eq!(p.curves, vec![Curve::X25519, Curve::P256]);
        assert!(!p.prefer_server_cipher_suites);
    }

    #[test]
    fn tls_needs_a_certificate_and_a_key() {
        let e = load("tls_server_config:\n  key_file: b\n").expect_err("no cert");
        assert!(e.contains("missing one of cert or cert_file"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n").expect_err("no key");
        assert!(e.contains("missing one of key or key_file"), "{e}");
        let e = load("tls_server_config:\n  cert_file: a\n  cert: x\n  key_file: b\n")
            .expect_err("both");
        assert!(
            e.contains("cert and cert_file are mutually exclusive"),
            "{e}"
        );
        let e = load("tls_server_config:\n  min_version: TLS13\n").expect_err("TLS off");
        assert!(e.contains("min_version is set but TLS is off"), "{e}");
        let e = load(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n",
        )
        .expect_err("bad client auth");
        assert!(e.contains("invalid ClientAuth: Sometimes"), "{e}");
    }

    #[test]
    fn users_need_bcrypt_hashes_never_quoted() {
        let c = load(&format!("basic_auth_users:\n  alice: '{HASH}'\n")).expect("load");
        assert_eq!(c.users.get("alice").map(String::as_str), Some(HASH));
        assert!(!format!("{c:?}").contains(HASH), "{c:?}");
        for bad in [
            "plaintext-password",
            "$1$abcdefgh$abcdefghijklmnopqrstuv",
            &HASH.replace("$04$", "$99$"),
        ] {
            let e = load(&format!("basic_auth_users:\n  bob: '{bad}'\n")).expect_err(bad);
            assert!(e.contains("user \"bob\" is not a bcrypt hash"), "{e}");
            assert!(!e.contains(bad), "the hash leaked: {e}");
        }
    }

    #[test]
    fn headers_are_exporter_toolkits_list() {
        let c = load(
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: ''\n",
        )
        .expect("load");
        let names: Vec<&str> = c.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec!["strict-transport-security", "x-frame-options"],
            "blank values are unset"
        );
        for (h, want) in [
            (
                "Authorization: x",
                "\"Authorization\" can not be configured",
            ),
            (
                "Content-Type: text/html",
                "\"Content-Type\" can not be configured",
            ),
            (
                "x-frame-options: deny",
                "\"x-frame-options\" can not be configured",
            ),
            (
                "X-Frame-Options: allow",
                "invalid value for X-Frame-Options",
            ),
        ] {
            let e = load(&format!("http_server_config:\n  headers:\n    {h}\n")).expect_err(h);
            assert!(e.contains(want), "{h}: {e}");
        }
        let e = load("http_server_config:\n  http2: true\n").expect_err("http2");
        assert!(
            e.contains("`http2: true` is not supported by shoal yet"),
            "{e}"
        );
    }

    #[test]
    fn client_auth_combinations() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let c = load(&format!(
            "{base}  client_auth_type: RequireClientCert\n  client_allowed_sans: [node-1, 10.0.0.1]\n"
        ))
        .expect("load");
        let ca = c.tls.expect("tls").client_auth;
        assert_eq!(ca.mode, ClientAuth::RequireAnyClientCert);
        assert_eq!(
            ca.allowed_sans,
            Some(vec!["node-1".to_owned(), "10.0.0.1".to_owned()])
        );
    }
}
