//! The HTTP side of a scrape: one GET with Prometheus's headers, a timeout, transparent
//! gzip and the body size limit.

use std::time::Duration;

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

/// Builds the HTTP client shared by all scrapes of a node.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .gzip(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("a plain-HTTP reqwest client with static settings always builds")
}

fn read_secret(
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<String, ScrapeError> {
    match (inline, file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| ScrapeError::Http(format!("reading {}: {e}", f.display()))),
        (None, None) => Ok(String::new()),
    }
}

/// Adds the configured credentials (files are read at scrape time, as Prometheus does,
/// so rotated secrets are picked up).
fn with_auth(
    req: reqwest::RequestBuilder,
    cfg: &ScrapeConfig,
) -> Result<reqwest::RequestBuilder, ScrapeError> {
    if let Some(b) = &cfg.basic_auth {
        let password = read_secret(&b.password, &b.password_file)?;
        return Ok(req.basic_auth(&b.username, Some(password)));
    }
    if let Some(a) = &cfg.authorization {
        let creds = read_secret(&a.credentials, &a.credentials_file)?;
        return Ok(req.header("Authorization", format!("{} {}", a.type_, creds)));
    }
    Ok(req)
}

/// Scrapes `url` once.
pub async fn fetch(
    client: &reqwest::Client,
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

async fn fetch_inner(
    client: &reqwest::Client,
    url: &str,
    cfg: &ScrapeConfig,
) -> Result<Fetched, ScrapeError> {
    let mut req = client
        .get(url)
        .header("Accept", SCRAPE_ACCEPT_HEADER)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", cfg.scrape_timeout.as_secs_f64()),
        );
    req = with_auth(req, cfg)?;
    let mut resp = req
        .send()
        .await
        .map_err(|e| ScrapeError::Http(error_chain(&e)))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        return Err(ScrapeError::Status(format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let format = format_from_content_type(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let limit = cfg.body_size_limit;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ScrapeError::Http(error_chain(&e)))?
    {
        body.extend_from_slice(&chunk);
        if limit > 0 && body.len() as u64 > limit {
            return Err(ScrapeError::BodySizeLimit);
        }
    }
    Ok(Fetched { body, format })
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
