//! Federating from the members: selector text for a selector, concurrent requests to
//! the members' internal federation route, and parsing the answers (text format) into
//! an in-memory store.

use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::VectorSelector;

use crate::cluster::codec;
use crate::model::labels::METRIC_NAME;
use crate::model::textparse::{Entry, Format, Parser};
use crate::peer::protocol::{FEDERATE, FederateRequest};
use crate::peer::{Lane, PeerClient};
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

/// Federates `selectors` from every member address into `store` (the members'
/// `peer::protocol::FEDERATE` route, through the node's peer client).
pub async fn federate_all(
    peer: &PeerClient,
    members: &[String],
    selectors: &[String],
    timeout: Duration,
    store: &MemStore,
) -> Fetched {
    let mut out = Fetched::default();
    if selectors.is_empty() {
        return out;
    }
    let body = match codec::encode(&FederateRequest {
        selectors: selectors.to_vec(),
    }) {
        Ok(b) => b,
        Err(e) => {
            out.failed
                .extend(members.iter().map(|m| (m.clone(), e.to_string())));
            return out;
        }
    };
    let futs = members.iter().map(|addr| {
        let body = body.clone();
        async move {
            let res = peer
                .send(Lane::Control, addr, FEDERATE, body, Some(timeout))
                .await
                .map_err(|e| e.to_string());
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
