//! `POST /internal/query` (`query::wire`): with an even first byte the rest is a request
//! body served by `query::MemberServer::handle` over a small in-memory store (decode,
//! matchers, select / series / labels / pushed-down aggregation, encode: what a member
//! runs for any peer); with an odd one it is a member's reply, decoded as the asking
//! node does (series blocks with their XOR chunks, strings, pushdown listings). No
//! panic, no hang, no huge allocation. The engine has the node's default limits but a
//! 5 s timeout (the fuzzer's own is 10 s).
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;
#[path = "common/store.rs"]
mod store;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shoal::config::{self, Config};
use shoal::model::{Labels, MatchOp, Matcher, Sample};
use shoal::promql::engine::{Engine, EngineOptions};
use shoal::query::wire::{self, Request, Response, WireHints};
use shoal::query::{GlobalRecords, MemberServer, pushdown};
use shoal::storage::Series;

fn server() -> &'static MemberServer {
    static SERVER: OnceLock<MemberServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let cfg: Arc<Config> =
            Arc::new(config::load_str("global: {}\n").expect("empty config loads"));
        MemberServer::new(
            Arc::new(store::store().clone()),
            GlobalRecords::new(Arc::new(move || cfg.clone())),
            Engine::new(EngineOptions {
                timeout: Duration::from_secs(5),
                ..EngineOptions::default()
            }),
        )
    })
}

fn decode_reply(body: &[u8]) {
    let Ok(resp) = wire::decode::<Response>(body) else {
        return;
    };
    match resp {
        Response::Series(block) => {
            let _ = block.decode();
        }
        Response::Strings(_) => {}
        Response::Aggregate { listing, results } => {
            let _ = pushdown::unpack(&listing);
            for r in results {
                let _ = r.decode();
            }
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let ms = wire::wire_matchers(&[
        Matcher::new(MatchOp::Equal, "__name__", "http_requests_total").unwrap(),
        Matcher::new(MatchOp::Regex, "code", "5..|200").unwrap(),
    ]);
    let hints = WireHints {
        start: 0,
        end: 600_000,
        step: 15_000,
        func: Some("rate".into()),
        range: 60_000,
        limits: wire::WireLimits {
            max_samples: Some(1_000_000),
            timeout_ms: Some(5_000),
        },
        grid: Some((0, 15_000, 600_000)),
    };
    let requests = [
        Request::Select {
            hints,
            matchers: ms.clone(),
            exclude_global: true,
        },
        Request::Series {
            mint: 0,
            maxt: 600_000,
            matchers: ms.clone(),
        },
        Request::LabelNames {
            mint: 0,
            maxt: 600_000,
            matchers: vec![],
        },
        Request::LabelValues {
            name: "job".into(),
            mint: i64::MIN,
            maxt: i64::MAX,
            matchers: ms.clone(),
        },
        Request::Aggregate {
            queries: vec!["sum by (job) (rate(http_requests_total[1m]))".into()],
            matchers: ms.clone(),
            start: 0,
            end: 600_000,
            step: 30_000,
            window_ms: 60_000,
            limits: wire::WireLimits::default(),
        },
        Request::Aggregate {
            queries: vec!["count(up)".into(), "max(temperature)".into()],
            matchers: wire::wire_matchers(&[
                Matcher::new(MatchOp::Equal, "__name__", "up").unwrap()
            ]),
            start: 300_000,
            end: 300_000,
            step: 0,
            window_ms: 300_000,
            limits: wire::WireLimits::default(),
        },
    ];
    let series = vec![Series {
        labels: Labels::from_pairs(&[("__name__", "x"), ("job", "a")]),
        samples: (0..300)
            .map(|i| Sample {
                t: 1_700_000_000_000 + i * 15_000,
                v: if i == 7 {
                    f64::NAN
                } else {
                    (i * i) as f64 / 7.0
                },
            })
            .collect(),
    }];
    let listing = pushdown::Listing {
        groups: vec![(0, 20, vec![1, 99, 1 << 40]), (3, 3, vec![])],
    };
    let replies = [
        Response::Series(wire::series_block(&series)),
        Response::Series(wire::labels_block(&[Labels::from_pairs(&[("a", "b")])])),
        Response::Strings(vec!["api".into(), "db".into()]),
        Response::Aggregate {
            listing: pushdown::pack(&listing),
            results: vec![wire::series_block(&series)],
        },
    ];
    let mut out = Vec::new();
    for r in &requests {
        let mut v = vec![0];
        v.extend(wire::encode(r).unwrap());
        out.push(v);
    }
    for r in &replies {
        let mut v = vec![1];
        v.extend(wire::encode(r).unwrap());
        out.push(v);
    }
    out
}

fuzz_target!(
    init: seeds::write("query_wire", seeds),
    |data: &[u8]| {
        let Some((&kind, body)) = data.split_first() else {
            return;
        };
        if kind % 2 == 0 {
            if let Ok(reply) = server().handle(body) {
                decode_reply(&reply);
            }
        } else {
            decode_reply(body);
        }
    }
);
