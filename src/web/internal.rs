//! The node-to-node routes of `crate::peer::protocol`, all in one `/internal` scope
//! behind one guard ([`guard`]). The guard decides from the request line and headers
//! alone, before a byte of the body is read:
//! - a path that is not an internal route: 404; a wrong method: 405;
//! - on a lone node reachable without authentication (`peer::access`): 403;
//! - with cluster mutual TLS, without a client certificate of the cluster CA: 401;
//! - without an accepted cluster secret (`Authorization: Bearer`, when a secret is
//!   set): 401;
//! - a declared body over the route's limit: 413 (a chunked body is cut at the same
//!   limit by the route's payload config, also 413).
//!
//! Refused requests are logged (path, peer address, never the header) and counted in
//! `shoal_peer_requests_refused_total{reason}`; the connection is closed with the body
//! unread.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};

use super::AppState;
use crate::cluster::ClusterHandle;
use crate::cluster::rpc::{self, RpcError};
use crate::peer::PeerAccess;
use crate::peer::protocol::{self, HandoffNotice, Method, Route};
use crate::telemetry::Metrics;
use crate::tls::PeerCertificates;

/// What the guard checks requests against.
#[derive(Clone)]
pub struct PeerGuard {
    pub access: PeerAccess,
    pub metrics: Metrics,
}

/// Registers the `/internal` scope (every route of `peer::protocol::ROUTES`). The
/// cluster routes answer from `cluster` (404 without); the member read, federation
/// and handoff routes need the server's [`AppState`].
pub fn routes(
    cfg: &mut web::ServiceConfig,
    guard_state: PeerGuard,
    cluster: Option<ClusterHandle>,
) {
    let mut scope = web::scope(protocol::PREFIX)
        .app_data(web::Data::new(guard_state))
        .app_data(web::Data::new(cluster))
        .wrap(from_fn(guard));
    for r in protocol::ROUTES {
        let res = web::resource(strip(r.path)).app_data(web::PayloadConfig::new(r.max_body));
        let res = match r.method {
            Method::Get => res.route(web::get().to(cluster_info)),
            Method::Post => {
                if r == protocol::MEMBER_READ {
                    res.route(web::post().to(super::api::member_read))
                } else if r == protocol::FEDERATE {
                    res.route(web::post().to(super::federate::member_federate))
                } else if r == protocol::HANDOFF {
                    res.route(web::post().to(handoff))
                } else if r == protocol::TSDB_IMPORT {
                    res.route(web::post().to(tsdb_import))
                } else {
                    res.route(web::post().to(move |body, st| cluster_rpc(r, body, st)))
                }
            }
        };
        scope = scope.service(res);
    }
    cfg.service(scope);
}

fn strip(path: &'static str) -> &'static str {
    path.strip_prefix(protocol::PREFIX).unwrap_or(path)
}

/// Why the guard refused a request (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownRoute,
    WrongMethod,
    /// A lone node reachable without authentication (`peer::access`).
    Closed,
    /// Cluster mutual TLS is on and the client sent no certificate of the cluster CA.
    Certificate,
    Unauthorized,
    TooLarge,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::UnknownRoute => "unknown_route",
            Refusal::WrongMethod => "wrong_method",
            Refusal::Closed => "closed",
            Refusal::Certificate => "certificate",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TooLarge => "too_large",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::UnknownRoute => StatusCode::NOT_FOUND,
            Refusal::WrongMethod => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Closed => StatusCode::FORBIDDEN,
            Refusal::Certificate | Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    fn message(self, route: Option<Route>) -> String {
        match self {
            Refusal::UnknownRoute => "no such internal route".into(),
            Refusal::WrongMethod => "method not allowed".into(),
            Refusal::Closed => "this node runs alone without a cluster secret: its internal routes are closed (see --cluster.secret-file)".into(),
            Refusal::Certificate => "a client certificate of the cluster CA is required".into(),
            Refusal::Unauthorized => "missing or wrong cluster secret".into(),
            Refusal::TooLarge => format!(
                "request body larger than {} bytes",
                route.map_or(0, |r| r.max_body)
            ),
        }
    }
}

/// What the guard decides for a request line, its headers and the connection's client
/// certificates (pure, for tests).
pub fn check(
    access: &PeerAccess,
    path: &str,
    method: &actix_web::http::Method,
    authorization: Option<&str>,
    content_length: Option<&str>,
    certificates: Option<&PeerCertificates>,
) -> Result<Route, (Refusal, Option<Route>)> {
    let Some(route) = protocol::route(path) else {
        return Err((Refusal::UnknownRoute, None));
    };
    let method_ok = match route.method {
        Method::Get => method == actix_web::http::Method::GET,
        Method::Post => method == actix_web::http::Method::POST,
    };
    if !method_ok {
        return Err((Refusal::WrongMethod, Some(route)));
    }
    if access.closed {
        return Err((Refusal::Closed, Some(route)));
    }
    if let Some(tls) = &access.tls {
        let certs = certificates.map_or(&[][..], |c| c.0.as_slice());
        if tls.verify_peer(certs).is_err() {
            return Err((Refusal::Certificate, Some(route)));
        }
    }
    if !access.secrets.admits(authorization) {
        return Err((Refusal::Unauthorized, Some(route)));
    }
    if let Some(len) = content_length {
        match len.trim().parse::<u64>() {
            Ok(n) if n <= route.max_body as u64 => {}
            _ => return Err((Refusal::TooLarge, Some(route))),
        }
    }
    Ok(route)
}

async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<PeerGuard>>() {
        None => Err((Refusal::UnknownRoute, None)),
        Some(st) => {
            let header = |name| {
                req.headers()
                    .get(name)
                    .and_then(|v: &actix_web::http::header::HeaderValue| v.to_str().ok())
            };
            check(
                &st.access,
                req.path(),
                req.method(),
                header(actix_web::http::header::AUTHORIZATION),
                header(actix_web::http::header::CONTENT_LENGTH),
                req.conn_data::<PeerCertificates>(),
            )
            .inspect_err(|(why, _)| {
                st.metrics
                    .peer_requests_refused_total
                    .get_or_create(&crate::telemetry::ReasonLabels {
                        reason: why.label().to_owned(),
                    })
                    .inc();
            })
        }
    };
    match verdict {
        Ok(_) => Ok(next.call(req).await?.map_into_left_body()),
        Err((why, route)) => {
            tracing::warn!(
                path = req.path(),
                peer = ?req.peer_addr(),
                reason = why.label(),
                "refused an internal request"
            );
            let mut req = req;
            let unread = actix_web::HttpMessage::take_payload(&mut req);
            let res = HttpResponse::build(why.status())
                .content_type("text/plain; charset=utf-8")
                .force_close()
                .body(Refused {
                    message: Some(why.message(route).into()),
                    _unread: unread,
                });
            Ok(req.into_response(res).map_into_right_body())
        }
    }
}

/// A refusal's answer, holding the request's unread body until the answer is sent:
/// actix-http then closes the connection. Were the body dropped before, a chunked
/// one would be drained (read to its end, however long) first.
struct Refused {
    message: Option<actix_web::web::Bytes>,
    _unread: actix_web::dev::Payload,
}

impl MessageBody for Refused {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        std::task::Poll::Ready(self.get_mut().message.take().map(Ok))
    }
}

fn respond(result: Result<Vec<u8>, RpcError>) -> HttpResponse {
    match result {
        Ok(bytes) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        Err(e) => HttpResponse::build(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .content_type("text/plain; charset=utf-8")
        .body(e.to_string()),
    }
}

fn not_in_a_cluster() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("this node is not in a cluster")
}

async fn cluster_info(cluster: web::Data<Option<ClusterHandle>>) -> HttpResponse {
    match cluster.as_ref() {
        Some(h) => respond(rpc::handle_info(h).await),
        None => not_in_a_cluster(),
    }
}

async fn cluster_rpc(
    route: Route,
    body: web::Bytes,
    cluster: web::Data<Option<ClusterHandle>>,
) -> HttpResponse {
    let Some(h) = cluster.as_ref() else {
        return not_in_a_cluster();
    };
    let result = match route {
        r if r == protocol::RAFT_APPEND => rpc::handle_append(h, &body).await,
        r if r == protocol::RAFT_VOTE => rpc::handle_vote(h, &body).await,
        r if r == protocol::RAFT_SNAPSHOT => rpc::handle_snapshot(h, &body).await,
        r if r == protocol::CLUSTER_JOIN => rpc::handle_join(h, &body).await,
        r if r == protocol::CLUSTER_REMOVE => rpc::handle_remove(h, &body).await,
        r if r == protocol::CLUSTER_LEAVING => rpc::handle_leaving(h, &body).await,
        r => Err(RpcError::Internal(format!("no handler for {}", r.path))),
    };
    respond(result)
}

/// `peer::protocol::TSDB_IMPORT`: a leaving member moves chunks here, or the node a
/// backfill came through sends this node its share (answered once they are durable).
async fn tsdb_import(body: web::Bytes, st: web::Data<AppState>) -> HttpResponse {
    let Some(receiver) = &st.drain_receiver else {
        return not_in_a_cluster();
    };
    let (req, legacy) = match protocol::decode_import_request(&body) {
        Ok(r) => r,
        Err(e) => {
            st.metrics.count_import_request("drain", false);
            return respond(Err(RpcError::BadRequest(format!(
                "invalid import request: {e}"
            ))));
        }
    };
    let source = match req.mode {
        protocol::WireImportMode::Replica => "drain",
        protocol::WireImportMode::Exact => "backfill",
    };
    let result = match receiver.receive(req).await {
        Ok(a) if legacy => crate::cluster::codec::encode(&protocol::LegacyImportAnswer {
            stored: a.stored,
            duplicate: a.duplicate + a.conflicting,
            dropped: a.dropped,
        })
        .map_err(|e| RpcError::Internal(e.to_string())),
        Ok(answer) => {
            crate::cluster::codec::encode(&answer).map_err(|e| RpcError::Internal(e.to_string()))
        }
        Err(e @ crate::drain::receive::ReceiveError::Invalid(_)) => {
            Err(RpcError::BadRequest(e.to_string()))
        }
        Err(e) => Err(RpcError::Unavailable(e.to_string())),
    };
    st.metrics.count_import_request(source, result.is_ok());
    respond(result)
}

/// Decodes a [`HandoffNotice`] body (public for the `handoff` fuzz target).
#[doc(hidden)]
pub fn parse_handoff_notice(body: &[u8]) -> Result<HandoffNotice, String> {
    crate::cluster::codec::decode(body).map_err(|e| format!("invalid handoff notice: {e}"))
}

/// `peer::protocol::HANDOFF`: a new owner of a target tells this node (a previous
/// owner, still scraping it) that it can stop.
async fn handoff(body: web::Bytes, st: web::Data<AppState>) -> HttpResponse {
    if st.cluster.is_none() {
        return not_in_a_cluster();
    }
    let notice = match parse_handoff_notice(&body) {
        Ok(n) => n,
        Err(e) => return respond(Err(RpcError::BadRequest(e))),
    };
    if let Some(h) = &st.handoff {
        h(notice.key, notice.view_index);
    }
    respond(crate::cluster::codec::encode(&()).map_err(|e| RpcError::Internal(e.to_string())))
}
