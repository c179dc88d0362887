//! HTTP basic authentication against the bcrypt hashes of a web config's
//! `basic_auth_users`, as exporter-toolkit does it.
//!
//! Owns: [`BasicAuth`] (the users, the cache of successful checks) and [`WebUser`] (the
//! authenticated name, put into the request's extensions by `web::security`).
//!
//! bcrypt is slow on purpose, so a dashboard's many requests must not each pay for it:
//! a successful check is remembered per user as an HMAC-SHA256 (process-random key) of
//! the hash and the password, and later requests are compared with it in constant time
//! (`ring::hmac::verify`). Only successes are remembered, at most one per configured
//! user, so the cache cannot grow. A request for an unknown user still runs bcrypt (on
//! a configured user's hash, its answer ignored), so timing does not tell which names
//! exist. bcrypt runs off the actix arbiter, one at a time (exporter-toolkit's mutex).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use parking_lot::Mutex;

/// The user a request authenticated as (`HttpRequest::extensions()`); absent when the
/// web config has no `basic_auth_users` or on the internal routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUser(pub String);

/// The users of a web config and the cache of their successful checks.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    key: ring::hmac::Key,
    /// User → HMAC of (hash, password) of the last password that passed bcrypt.
    cache: Mutex<HashMap<String, ring::hmac::Tag>>,
    bcrypt_slot: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// `users`: name → bcrypt hash (checked by `web::web_config`). `None` when empty:
    /// no authentication.
    pub fn new(users: BTreeMap<String, String>) -> Option<BasicAuth> {
        if users.is_empty() {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // No OS randomness: a fixed key still hides passwords behind HMAC and
            // bcrypt; the cache only gets easier to probe offline, never online.
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"shoal basic-auth cache")
        });
        Some(BasicAuth {
            users,
            key,
            cache: Mutex::new(HashMap::new()),
            bcrypt_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// The authenticated user of an `Authorization` header value, or `None` (missing,
    /// malformed, unknown user or wrong password).
    pub async fn check(&self, authorization: Option<&[u8]>) -> Option<WebUser> {
        let (user, password) = parse_basic(authorization?)?;
        let known = self.users.get(&user);
        // Unknown users cost a bcrypt too: on a configured hash, so the cost matches.
        let hash = match known {
            Some(h) => h.clone(),
            None => self.users.values().next()?.clone(),
        };
        let msg = cache_message(&hash, &password);
        if known.is_some() && self.cached(&user, &msg) {
            return Some(WebUser(user));
        }
        let _slot = self.bcrypt_slot.acquire().await.ok()?;
        // A request that waited for the slot may find the same check done meanwhile.
        if known.is_some() && self.cached(&user, &msg) {
            return Some(WebUser(user));
        }
        let pw = password.clone();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(&pw, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !(ok && known.is_some()) {
            return None;
        }
        let tag = ring::hmac::sign(&self.key, &msg);
        self.cache.lock().insert(user.clone(), tag);
        Some(WebUser(user))
    }

    fn cached(&self, user: &str, msg: &[u8]) -> bool {
        let tag = self.cache.lock().get(user).copied();
        tag.is_some_and(|t| ring::hmac::verify(&self.key, msg, t.as_ref()).is_ok())
    }
}

/// What the cache's HMAC covers: the hash (a changed hash invalidates the entry) and the
/// password, length-prefixed so that no two pairs share a message.
fn cache_message(hash: &str, password: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + hash.len() + password.len());
    m.extend_from_slice(&(hash.len() as u64).to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m.extend_from_slice(&(password.len() as u64).to_be_bytes());
    m.extend_from_slice(password);
    m
}

/// `Basic base64(user:password)`, as Go's `Request.BasicAuth` reads it.
fn parse_basic(value: &[u8]) -> Option<(String, Vec<u8>)> {
    const PREFIX: &[u8] = b"basic ";
    if value.len() < PREFIX.len() || !value[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&value[PREFIX.len()..])
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, pw: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
        .into_bytes()
    }

    fn auth() -> BasicAuth {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        BasicAuth::new(BTreeMap::from([("alice".to_owned(), hash)])).expect("users")
    }

    #[tokio::test]
    async fn right_password_passes_and_is_cached() {
        let a = auth();
        assert_eq!(
            a.check(Some(&header("alice", "s3cret"))).await,
            Some(WebUser("alice".into()))
        );
        assert_eq!(a.cache.lock().len(), 1);
        // Cached: still checked against the password.
        assert_eq!(
            a.check(Some(&header("alice", "s3cret"))).await,
            Some(WebUser("alice".into()))
        );
        assert_eq!(a.check(Some(&header("alice", "wrong"))).await, None);
        assert_eq!(a.check(Some(&header("alice", "s3cret2"))).await, None);
    }

    #[tokio::test]
    async fn wrong_missing_or_malformed_credentials_fail() {
        let a = auth();
        assert_eq!(a.check(None).await, None);
        assert_eq!(a.check(Some(&header("alice", "nope"))).await, None);
        // An unknown user with a configured user's password.
        assert_eq!(a.check(Some(&header("mallory", "s3cret"))).await, None);
        assert_eq!(a.check(Some(b"Bearer s3cret")).await, None);
        assert_eq!(a.check(Some(b"Basic !!!")).await, None);
        assert_eq!(a.check(Some(b"Basic")).await, None);
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice")
        );
        assert_eq!(a.check(Some(no_colon.as_bytes())).await, None);
        assert!(a.cache.lock().is_empty(), "failures are never cached");
        // The scheme is case-insensitive, the password may hold colons.
        let hash = bcrypt::hash("a:b", 4).expect("hash");
        let b = BasicAuth::new(BTreeMap::from([("u".to_owned(), hash)])).expect("users");
        let h = String::from_utf8(header("u", "a:b")).expect("utf8");
        assert_eq!(
            b.check(Some(h.replacen("Basic", "bAsIc", 1).as_bytes()))
                .await,
            Some(WebUser("u".into()))
        );
    }

    #[test]
    fn no_users_no_auth() {
        assert!(BasicAuth::new(BTreeMap::new()).is_none());
    }
}
