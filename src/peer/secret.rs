//! The cluster secret: which one this node sends, which ones it accepts.
//!
//! `--cluster.secret-file` holds one secret per line (blank lines and surrounding
//! whitespace ignored). The first line is the secret this node sends; every line is
//! accepted. Rotation without downtime (docs/security.md): add the new secret as a
//! second line on every node, then make it the first line on every node, then remove
//! the old one — each step a SIGHUP (or a rolling restart), and at every moment every
//! node accepts what every other node sends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

/// Most secrets one file may hold (a rotation needs two).
const MAX_SECRETS: usize = 4;

/// The secrets of one secret file.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    send: String,
    accept: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets(<{} secret(s)>)", self.accept.len())
    }
}

impl Secrets {
    /// Parses the text of a secret file.
    pub fn parse(text: &str) -> Result<Secrets, String> {
        let accept: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if accept.len() > MAX_SECRETS {
            return Err(format!(
                "holds {} secrets; at most {MAX_SECRETS} (one per line) are allowed",
                accept.len()
            ));
        }
        let Some(send) = accept.first().cloned() else {
            return Err("is empty".into());
        };
        if accept
            .iter()
            .any(|s| !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("holds a secret with a character that is not printable ASCII".into());
        }
        Ok(Secrets { send, accept })
    }

    /// Reads and parses a secret file (at most `config::MAX_SECRET_BYTES`).
    pub fn read(path: &Path) -> Result<Secrets, String> {
        let text = crate::config::read_capped(path, crate::config::MAX_SECRET_BYTES)
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
        Secrets::parse(&text).map_err(|e| format!("secret file {} {e}", path.display()))
    }

    /// A secret made of one value (tests, tools).
    pub fn single(secret: &str) -> Secrets {
        Secrets {
            send: secret.to_owned(),
            accept: vec![secret.to_owned()],
        }
    }

    /// The secret this node sends.
    pub fn sending(&self) -> &str {
        &self.send
    }

    /// Whether `given` is one of the accepted secrets, in time independent of where
    /// the strings differ (every accepted secret is compared).
    pub fn accepts(&self, given: &str) -> bool {
        let mut ok = false;
        for s in &self.accept {
            ok |= constant_time_eq(s.as_bytes(), given.as_bytes());
        }
        ok
    }

    /// Whether an `Authorization` header value carries an accepted secret
    /// (`Bearer <secret>`).
    pub fn accepts_header(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|given| self.accepts(given))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The node's current secrets, shared by its peer client and its peer guard, and
/// re-read from the file on reload. `None` inside: no secret (loopback or
/// `--cluster.insecure`).
#[derive(Clone, Default)]
pub struct SecretStore {
    file: Option<PathBuf>,
    current: Arc<RwLock<Option<Arc<Secrets>>>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// No secret: every peer request is accepted, none carries a secret.
    pub fn none() -> SecretStore {
        SecretStore::default()
    }

    /// Fixed secrets (no file to reload from).
    pub fn fixed(secrets: Secrets) -> SecretStore {
        SecretStore {
            file: None,
            current: Arc::new(RwLock::new(Some(Arc::new(secrets)))),
        }
    }

    /// The secrets of `file`, read now.
    pub fn from_file(file: &Path) -> Result<SecretStore, String> {
        let secrets = Secrets::read(file)?;
        Ok(SecretStore {
            file: Some(file.to_path_buf()),
            current: Arc::new(RwLock::new(Some(Arc::new(secrets)))),
        })
    }

    /// Re-reads the file (if any). On error the old secrets stay.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let new = Secrets::read(file)?;
        let mut cur = self.current.write();
        let changed = cur.as_deref() != Some(&new);
        *cur = Some(Arc::new(new));
        Ok(changed)
    }

    /// The current secrets (`None`: no secret configured).
    pub fn get(&self) -> Option<Arc<Secrets>> {
        self.current.read().clone()
    }

    /// Whether a secret is configured.
    pub fn is_set(&self) -> bool {
        self.current.read().is_some()
    }

    /// Whether a request with this `Authorization` header passes: always when no
    /// secret is configured.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        match self.get() {
            None => true,
            Some(s) => s.accepts_header(authorization),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sent_several_accepted() {
        let s = Secrets::parse("  new-one \n\nold-one\n").unwrap();
        assert_eq!(s.sending(), "new-one");
        assert!(s.accepts("new-one") && s.accepts("old-one"));
        assert!(!s.accepts("new-on") && !s.accepts("new-one2") && !s.accepts(""));
        assert!(s.accepts_header(Some("Bearer old-one")));
        assert!(!s.accepts_header(Some("old-one")) && !s.accepts_header(None));
        assert!(!s.accepts_header(Some("Bearer ")));
        assert!(Secrets::parse(" \n").unwrap_err().contains("empty"));
        assert!(Secrets::parse("a\nb\nc\nd\ne").is_err());
        assert!(Secrets::parse("a b").is_err());
        // The Debug form never shows a secret.
        assert!(!format!("{s:?}").contains("new-one"));
    }

    #[test]
    fn a_store_admits_everything_without_a_secret_and_reloads_its_file() {
        assert!(SecretStore::none().admits(None));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "one\n").unwrap();
        let store = SecretStore::from_file(&f).unwrap();
        assert!(store.admits(Some("Bearer one")) && !store.admits(None));
        std::fs::write(&f, "two\none\n").unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.get().unwrap().sending(), "two");
        assert!(store.admits(Some("Bearer one")));
        std::fs::write(&f, "").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(
            store.get().unwrap().sending(),
            "two",
            "a bad file keeps the old"
        );
    }
}
