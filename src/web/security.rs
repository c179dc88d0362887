//! The running web config of a node (`--web.config.file`): TLS of the listener, basic
//! authentication and extra response headers, and their reload.
//!
//! Owns: [`WebSecurity`] — loaded once at start ([`WebSecurity::load`]), reloaded on
//! SIGHUP and `POST /-/reload` ([`WebSecurity::reload`], all or nothing: a bad file
//! keeps everything as it was) — and the middleware `web::serve` wraps every route in
//! ([`WebSecurity::guard`]). Formats live in `web::web_config`, TLS in `web::tls`,
//! password checks in `web::basic_auth`.
//!
//! Every route needs a valid user when `basic_auth_users` is set, except those under
//! [`INTERNAL_PREFIX`]: node-to-node routes, authenticated by the cluster secret where
//! they are served; and the cluster admin routes may carry the cluster secret instead
//! (a bearer token, which they check themselves). Whether TLS is on is fixed for the listener's life.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage as _, HttpResponse};
use parking_lot::RwLock;

use crate::tls::TlsServer;
use crate::web::basic_auth::BasicAuth;
use crate::web::web_config::{self, WebConfigError};

/// Routes under this prefix are node-to-node: basic authentication does not apply.
pub const INTERNAL_PREFIX: &str = "/internal/";

/// What the middleware applies to each request; replaced as a whole by a reload.
struct Access {
    headers: Vec<(HeaderName, HeaderValue)>,
    auth: Option<BasicAuth>,
}

/// A node's web config, live.
pub struct WebSecurity {
    path: PathBuf,
    tls: Option<TlsServer>,
    access: RwLock<Arc<Access>>,
}

impl std::fmt::Debug for WebSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSecurity")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl WebSecurity {
    /// Loads `path` and everything it names.
    pub fn load(path: &Path) -> Result<WebSecurity, WebConfigError> {
        let cfg = web_config::load_file(path)?;
        let tls = match &cfg.tls {
            Some(t) => Some(TlsServer::new(t).map_err(|source| WebConfigError::Tls {
                file: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        Ok(WebSecurity {
            path: path.to_path_buf(),
            tls,
            access: RwLock::new(Arc::new(Access {
                headers: cfg.headers,
                auth: BasicAuth::new(cfg.users),
            })),
        })
    }

    /// The listener's TLS; `None`: plain HTTP.
    pub fn tls(&self) -> Option<&TlsServer> {
        self.tls.as_ref()
    }

    /// Whether `basic_auth_users` is set (now).
    pub fn has_users(&self) -> bool {
        self.access.read().auth.is_some()
    }

    /// Reads the file again and installs it for new connections and requests; when it
    /// is invalid, or turns TLS on or off (which needs a restart), nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let file = self.path.display().to_string();
        let cfg = web_config::load_file(&self.path).map_err(|e| e.to_string())?;
        let tls_update = match (&self.tls, &cfg.tls) {
            (Some(server), Some(settings)) => Some(
                server
                    .prepare(settings)
                    .map_err(|e| format!("{file}: {e}"))?,
            ),
            (None, None) => None,
            (Some(_), None) => {
                return Err(format!(
                    "{file}: TLS cannot be turned off without a restart (the listener serves HTTPS)"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "{file}: TLS cannot be turned on without a restart (the listener serves plain HTTP)"
                ));
            }
        };
        if let (Some(server), Some(update)) = (&self.tls, tls_update) {
            server.apply(update);
        }
        *self.access.write() = Arc::new(Access {
            headers: cfg.headers,
            auth: BasicAuth::new(cfg.users),
        });
        Ok(())
    }

    /// The middleware: basic authentication (puts [`crate::web::WebUser`] into the
    /// request's extensions), then the configured headers on every response.
    pub async fn guard(
        self: Arc<Self>,
        req: ServiceRequest,
        next: Next<impl MessageBody + 'static>,
    ) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
        let access = self.access.read().clone();
        if let Some(auth) = &access.auth
            && !req.path().starts_with(INTERNAL_PREFIX)
            && !carries_cluster_credential(&req)
        {
            let header = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match auth.check(header).await {
                Some(user) => {
                    req.extensions_mut().insert(user);
                }
                None => {
                    let res = req.into_response(unauthorized());
                    return Ok(with_headers(res, &access.headers));
                }
            }
        }
        // (Handlers' and extractors' errors arrive as responses; an `Err` here is the
        // dispatcher's to render, without the headers.)
        let res = next.call(req).await?.map_into_boxed_body();
        Ok(with_headers(res, &access.headers))
    }
}

/// A request to a cluster admin route (`/api/v1/cluster/leave`, `…/remove/{id}`, the
/// backfill's `/api/v1/admin/tsdb/import`) with a bearer token: it may use the cluster
/// secret instead of a web user, which the route checks itself (`web::cluster`) — so it
/// passes basic authentication unchecked.
fn carries_cluster_credential(req: &ServiceRequest) -> bool {
    let admin = req.path() == "/api/v1/cluster/leave"
        || req.path().starts_with("/api/v1/cluster/remove/")
        || req.path() == "/api/v1/admin/tsdb/import";
    admin
        && req
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "))
}

/// Go's `http.Error(w, "Unauthorized", 401)` with `WWW-Authenticate: Basic`.
fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, "Basic"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .content_type("text/plain; charset=utf-8")
        .body("Unauthorized\n")
}

fn with_headers(
    mut res: ServiceResponse<BoxBody>,
    headers: &[(HeaderName, HeaderValue)],
) -> ServiceResponse<BoxBody> {
    let h = res.headers_mut();
    for (name, value) in headers {
        h.insert(name.clone(), value.clone());
    }
    res
}

#[cfg(test)]
mod tests {
    use actix_web::{App, HttpRequest, test, web};

    use super::*;
    use crate::web::WebUser;

    async fn whoami(req: HttpRequest) -> String {
        match req.extensions().get::<WebUser>() {
            Some(WebUser(name)) => name.clone(),
            None => "-".into(),
        }
    }

    #[actix_web::test]
    async fn guard_authenticates_names_the_user_and_spares_internal_routes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.yml");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        std::fs::write(
            &path,
            format!(
                "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  alice: '{hash}'\n"
            ),
        )
        .expect("write");
        let sec = Arc::new(WebSecurity::load(&path).expect("load"));
        assert!(sec.tls().is_none() && sec.has_users());
        let guard = sec.clone();
        let app = test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(move |req, next| {
                    guard.clone().guard(req, next)
                }))
                .route("/who", web::get().to(whoami))
                .route("/internal/who", web::get().to(whoami)),
        )
        .await;
        let basic = |pw: &str| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
            (header::AUTHORIZATION, format!("Basic {b64}"))
        };

        let res = test::call_service(&app, test::TestRequest::get().uri("/who").to_request()).await;
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Basic"[..])
        );
        let req = test::TestRequest::get()
            .uri("/who")
            .insert_header(basic("nope"))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 401);

        let req = test::TestRequest::get()
            .uri("/who")
            .insert_header(basic("pw"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get(header::X_CONTENT_TYPE_OPTIONS)
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
        assert_eq!(test::read_body(res).await, "alice");

        let req = test::TestRequest::get().uri("/internal/who").to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 200);
        assert_eq!(test::read_body(res).await, "-");

        // A reload without users opens the routes; one that would turn TLS on fails
        // and changes nothing.
        std::fs::write(&path, "tls_server_config:\n  cert_file: a\n  key_file: b\n")
            .expect("write");
        let e = sec.reload().expect_err("TLS on by reload");
        assert!(
            e.contains("TLS cannot be turned on without a restart"),
            "{e}"
        );
        assert!(sec.has_users());
        std::fs::write(&path, "").expect("write");
        sec.reload().expect("reload");
        let res = test::call_service(&app, test::TestRequest::get().uri("/who").to_request()).await;
        assert_eq!(res.status(), 200);
    }
}
