//! Federating from the members: `match[]` text for a selector, concurrent
//! `/federate?local=1` requests, and parsing the answers into an in-memory store.

use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::VectorSelector;

use crate::model::labels::METRIC_NAME;
use crate::model::textparse::{Entry, Format, Parser};
use crate::storage::memory::MemStore;

/// What one round of federation brought in.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Bytes of the answers (after decompression).
    pub bytes: u64,
    /// Samples loaded.
    pub series: usize,
    /// Members that did not answer, with the reason.
    pub failed: Vec<(String, String)>,
}

fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The selector as a `match[]` parameter: `{__name__="x",a=~"re",...}` (no offset or
/// `@`: federation serves the latest samples).
pub fn selector_text(vs: &VectorSelector) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &vs.name
        && !vs.matchers.matchers.iter().any(|m| m.name == METRIC_NAME)
    {
        parts.push(format!("{METRIC_NAME}={}", quote(n)));
    }
    for m in &vs.matchers.matchers {
        let op = match &m.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Re(_) => "=~",
            MatchOp::NotRe(_) => "!~",
        };
        parts.push(format!("{}{op}{}", m.name, quote(&m.value)));
    }
    parts.sort();
    format!("{{{}}}", parts.join(","))
}

/// Federates `selectors` from every member address into `store`.
pub async fn federate_all(
    client: &reqwest::Client,
    members: &[String],
    selectors: &[String],
    timeout: Duration,
    store: &MemStore,
) -> Fetched {
    let mut out = Fetched::default();
    if selectors.is_empty() {
        return out;
    }
    let mut query: Vec<(&str, &str)> = vec![("local", "1"), ("external_labels", "0")];
    query.extend(selectors.iter().map(|s| ("match[]", s.as_str())));
    let qs = match serde_urlencoded::to_string(&query) {
        Ok(q) => q,
        Err(e) => {
            out.failed
                .extend(members.iter().map(|m| (m.clone(), e.to_string())));
            return out;
        }
    };
    let futs = members.iter().map(|addr| {
        let req = client
            .get(format!("http://{addr}/federate?{qs}"))
            .timeout(timeout);
        async move {
            let res = async {
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                }
                Ok(body)
            }
            .await;
            (addr.clone(), res)
        }
    });
    let results = futures_util::future::join_all(futs).await;
    let now = crate::rules::now_ms();
    for (addr, res) in results {
        match res {
            Ok(body) => {
                out.bytes += body.len() as u64;
                match load(&body, now, store) {
                    Ok(n) => out.series += n,
                    Err(e) => out.failed.push((addr, e)),
                }
            }
            Err(e) => out.failed.push((addr, e)),
        }
    }
    out
}

/// Parses a federation answer into `store`; samples without a timestamp get `now`.
pub fn load(body: &[u8], now: i64, store: &MemStore) -> Result<usize, String> {
    let mut p = Parser::new(body, Format::PromText);
    let mut n = 0;
    loop {
        match p.next() {
            Ok(None) => return Ok(n),
            Ok(Some(Entry::Series(s))) => {
                store.insert(&s.labels(), s.timestamp.unwrap_or(now), s.value);
                n += 1;
            }
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("bad federation answer: {e}")),
        }
    }
}
