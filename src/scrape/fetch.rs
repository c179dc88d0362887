//! The HTTP side of a scrape: one GET with Prometheus's headers, a timeout, gzip, the
//! body size limit and redirects as `follow_redirects` says.
//!
//! Scrapes use hyper's pooled client directly (not reqwest) for one setting reqwest does
//! not expose: the connection read buffer's ceiling. A kept-alive connection keeps its
//! read buffer between scrapes, and hyper's default ceiling (~400 KiB) let every idle
//! connection to a big target hold a few hundred KiB — ~130 bytes per scraped series.
//! Bodies are read in [`READ_BUF_MAX`] pieces instead.
//!
//! A target's `Content-Length` is never trusted for an allocation: bodies grow as bytes
//! arrive, up to the job's `body_size_limit` and, always, the node-wide
//! `--scrape.max-body-size` (also after gzip decompression).

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::ScrapeConfig;
use crate::model::textparse::{Format, SCRAPE_ACCEPT_HEADER, format_from_content_type};

use super::ScrapeError;

/// A fetched scrape body and the parser its Content-Type asks for.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub format: Format,
}

/// The user agent shoal scrapes with.
pub const USER_AGENT: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

/// Ceiling of a scrape connection's read buffer (what an idle connection holds at most).
pub const READ_BUF_MAX: usize = 32 * 1024;

/// Redirects followed at most, as Go's HTTP client (Prometheus's) does.
const MAX_REDIRECTS: usize = 10;

/// The node-wide ceiling of a scrape body (decompressed) by default.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 256 << 20;

/// The HTTP client shared by all scrapes of a node (cheap to clone: one pool), with the
/// node-wide body ceiling.
#[derive(Clone)]
pub struct ScrapeClient {
    http: Client<HttpConnector, Empty<Bytes>>,
    max_body_size: u64,
}

/// Builds the node's scrape client: plain HTTP, kept-alive connections (90 s idle, as
/// Go's default transport), bounded read buffers, bodies of at most `max_body_size`
/// bytes whatever the job's `body_size_limit` (0 counts as no ceiling).
pub fn client(max_body_size: u64) -> ScrapeClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    ScrapeClient {
        http: Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http1_max_buf_size(READ_BUF_MAX)
            .build(http),
        max_body_size,
    }
}

/// The body limit in force: the job's `body_size_limit` (0: none) within the node's
/// ceiling (0: none).
fn body_limit(job: u64, node: u64) -> u64 {
    match (job, node) {
        (0, n) | (n, 0) => n,
        (j, n) => j.min(n),
    }
}

/// First allocation for a body: what arrived so far decides the rest.
const FIRST_ALLOC_MAX: usize = 64 * 1024;

fn read_secret(
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<String, ScrapeError> {
    match (inline, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => crate::config::read_capped(f, crate::config::MAX_SECRET_BYTES)
            .map(|s| s.trim().to_string())
            .map_err(|e| ScrapeError::Http(format!("reading {}: {e}", f.display()))),
        (None, None) => Ok(String::new()),
    }
}

/// The `Authorization` header the config asks for (files are read at scrape time, as
/// Prometheus does, so rotated secrets are picked up).
fn authorization(cfg: &ScrapeConfig) -> Result<Option<HeaderValue>, ScrapeError> {
    let value = if let Some(b) = &cfg.basic_auth {
        let password = read_secret(&b.password, &b.password_file)?;
        let raw = format!("{}:{password}", b.username);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    } else if let Some(a) = &cfg.authorization {
        let creds = read_secret(&a.credentials, &a.credentials_file)?;
        format!("{} {creds}", a.type_)
    } else {
        return Ok(None);
    };
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| ScrapeError::Http("credentials are not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// Scrapes `url` once.
pub async fn fetch(
    client: &ScrapeClient,
    url: &str,
    cfg: &ScrapeConfig,
) -> Result<Fetched, ScrapeError> {
    let timeout = cfg.scrape_timeout;
    let fut = fetch_inner(client, url, cfg);
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout),
    }
}

fn parse_uri(url: &str) -> Result<Uri, ScrapeError> {
    url.parse::<Uri>()
        .map_err(|e| ScrapeError::Http(format!("invalid URL {url:?}: {e}")))
}

/// Where a redirect response points, resolved against the URL that answered it.
fn redirect_target(current: &str, resp: &hyper::Response<hyper::body::Incoming>) -> Option<String> {
    let loc = resp.headers().get(header::LOCATION)?.to_str().ok()?;
    let base = url::Url::parse(current).ok()?;
    base.join(loc).ok().map(String::from)
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

async fn fetch_inner(
    client: &ScrapeClient,
    url: &str,
    cfg: &ScrapeConfig,
) -> Result<Fetched, ScrapeError> {
    let first = parse_uri(url)?;
    let auth = authorization(cfg)?;
    let timeout_header = format!("{}", cfg.scrape_timeout.as_secs_f64());
    let mut current = url.to_string();
    let mut uri = first.clone();
    let mut redirects = 0;
    let resp = loop {
        let mut req = Request::get(uri.clone())
            .header(header::ACCEPT, SCRAPE_ACCEPT_HEADER)
            .header(header::ACCEPT_ENCODING, "gzip")
            .header(header::USER_AGENT, USER_AGENT)
            .header("X-Prometheus-Scrape-Timeout-Seconds", &timeout_header);
        // Credentials go to the configured origin only, as Go's client does on redirects.
        if let Some(a) = auth.as_ref().filter(|_| same_origin(&uri, &first)) {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| ScrapeError::Http(format!("invalid request for {current:?}: {e}")))?;
        let resp = client
            .http
            .request(req)
            .await
            .map_err(|e| ScrapeError::Http(format!("Get {current:?}: {}", error_chain(&e))))?;
        if !(cfg.follow_redirects && resp.status().is_redirection()) {
            break resp;
        }
        let Some(next) = redirect_target(&current, &resp) else {
            break resp;
        };
        redirects += 1;
        if redirects > MAX_REDIRECTS {
            return Err(ScrapeError::Http(format!(
                "Get {current:?}: stopped after {MAX_REDIRECTS} redirects"
            )));
        }
        uri = parse_uri(&next)?;
        current = next;
    };
    let status = resp.status();
    if status != StatusCode::OK {
        return Err(ScrapeError::Status(format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let headers = resp.headers();
    let format = format_from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let limit = body_limit(cfg.body_size_limit, client.max_body_size);
    // The limit is on the decompressed body; a gzip body is bounded loosely before
    // decompressing (deflate never grows data by more than a few bytes per 16 KiB).
    let raw_limit = match (limit, gzip) {
        (0, _) => u64::MAX,
        (l, false) => l,
        (l, true) => l.saturating_add(l / 64).saturating_add(1024),
    };
    if declared.is_some_and(|n| n > raw_limit) {
        return Err(ScrapeError::BodySizeLimit);
    }
    // Never sized from the declared length alone: a target may declare 2^63 bytes.
    let first = declared.map_or(0, |n| n.min(FIRST_ALLOC_MAX as u64) as usize);
    let mut raw = Vec::with_capacity(first);
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ScrapeError::Http(error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if (raw.len() + data.len()) as u64 > raw_limit {
                return Err(ScrapeError::BodySizeLimit);
            }
            raw.extend_from_slice(&data);
        }
    }
    // Decompression is CPU work (up to the ceiling): off the actor's thread, where it
    // would delay every other target's scrape.
    let body = if gzip {
        tokio::task::spawn_blocking(move || gunzip(&raw, limit))
            .await
            .map_err(|e| ScrapeError::Http(format!("decompressing gzip body: {e}")))??
    } else {
        raw
    };
    Ok(Fetched { body, format })
}

/// Decompresses a gzip body (all members, as Go's reader), failing past `limit` bytes
/// (0: no limit).
fn gunzip(raw: &[u8], limit: u64) -> Result<Vec<u8>, ScrapeError> {
    let cap = if limit == 0 { u64::MAX } else { limit + 1 };
    let first = raw.len().saturating_mul(4).min(FIRST_ALLOC_MAX * 16);
    let mut out = Vec::with_capacity(first);
    flate2::read::MultiGzDecoder::new(raw)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| ScrapeError::Http(format!("decompressing gzip body: {e}")))?;
    if limit > 0 && out.len() as u64 > limit {
        return Err(ScrapeError::BodySizeLimit);
    }
    Ok(out)
}

/// The error with its causes, like Go's wrapped errors print.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bodies_are_decompressed_within_the_limit() {
        let text = b"a 1\nb 2\n".repeat(1000);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&text).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz, 0).unwrap(), text);
        assert_eq!(gunzip(&gz, text.len() as u64).unwrap(), text);
        assert!(matches!(
            gunzip(&gz, text.len() as u64 - 1),
            Err(ScrapeError::BodySizeLimit)
        ));
        let err = gunzip(b"not gzip at all", 0).unwrap_err().to_string();
        assert!(err.contains("decompressing gzip body"), "{err}");
    }
}
