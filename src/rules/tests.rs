use std::path::PathBuf;
use std::time::Duration;

use super::group::{Group, offset_ms, slot_at_or_before};
use super::*;
use crate::config::rules::parse_rule_file;
use crate::model::is_stale_nan;
use crate::storage::memory::MemStore;

fn group(yaml: &str) -> Group {
    let f = parse_rule_file(yaml, std::path::Path::new("r.yml")).unwrap();
    Group::new(
        PathBuf::from("r.yml"),
        &f.groups[0],
        Duration::from_secs(60),
    )
    .unwrap()
}

fn eval(g: &Group, store: &MemStore, ts: i64) -> Vec<(Labels, f64)> {
    let engine = Engine::new(EngineOptions::default());
    let shard = Labels::from_pairs(&[("shard", "7")]);
    let ext = Labels::from_pairs(&[("dc", "eu")]);
    let env = EvalEnv {
        queryable: store,
        engine: &engine,
        extra_labels: &shard,
        external_labels: &ext,
        query_time: None,
    };
    let mut out = g.evaluate(&env, ts);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs)
}

#[test]
fn recording_rule_labels_shard_and_staleness() {
    let s = MemStore::new();
    s.insert(
        &l(&[("__name__", "x"), ("instance", "a"), ("job", "j")]),
        1000,
        1.0,
    );
    s.insert(
        &l(&[("__name__", "x"), ("instance", "b"), ("job", "j")]),
        1000,
        2.0,
    );
    let g = group(
        "groups:\n- name: g\n  rules:\n  - record: 'shard:x:sum'\n    expr: sum by (job, instance) (x)\n    labels: {team: t, shard: wrong}\n",
    );
    let out = eval(&g, &s, 2000);
    assert_eq!(
        out,
        vec![
            (
                l(&[
                    ("__name__", "shard:x:sum"),
                    ("instance", "a"),
                    ("job", "j"),
                    ("shard", "7"),
                    ("team", "t")
                ]),
                1.0
            ),
            (
                l(&[
                    ("__name__", "shard:x:sum"),
                    ("instance", "b"),
                    ("job", "j"),
                    ("shard", "7"),
                    ("team", "t")
                ]),
                2.0
            ),
        ]
    );
    assert_eq!(g.state().rules[0].health, Health::Ok);
    // Series b disappears (stale marker in the store): the rule writes a stale marker
    // for its output once, then nothing.
    s.insert(
        &l(&[("__name__", "x"), ("instance", "b"), ("job", "j")]),
        2500,
        crate::model::stale_nan(),
    );
    let out = eval(&g, &s, 3000);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1, 1.0);
    assert_eq!(out[1].0.get("instance"), Some("b"));
    assert!(is_stale_nan(out[1].1));
    let out = eval(&g, &s, 4000);
    assert_eq!(out.len(), 1);
    // Removing the group marks everything it wrote stale.
    let stale = g.stale_all();
    assert_eq!(stale.len(), 1);
    assert!(is_stale_nan(stale[0].1));
}

#[test]
fn errors_limit_and_scalar_results() {
    let s = MemStore::new();
    for i in 0..3 {
        s.insert(&l(&[("__name__", "x"), ("i", &i.to_string())]), 1000, 1.0);
    }
    let g = group(
        "groups:\n- name: g\n  limit: 2\n  rules:\n  - record: a\n    expr: x\n  - record: b\n    expr: sum(x)\n  - record: c\n    expr: '1 + 2'\n  - record: d\n    expr: label_replace(x, 'i', '1', 'i', '.*')\n",
    );
    let out = eval(&g, &s, 2000);
    let st = g.state();
    assert_eq!(st.rules[0].health, Health::Err);
    assert_eq!(st.rules[0].last_error, "exceeded limit of 2 with 3 series");
    assert_eq!(st.rules[1].health, Health::Ok);
    assert_eq!(st.rules[2].health, Health::Ok);
    assert_eq!(st.rules[3].health, Health::Err);
    assert!(
        st.rules[3].last_error.contains("same labelset"),
        "{}",
        st.rules[3].last_error
    );
    assert_eq!(
        out,
        vec![
            (l(&[("__name__", "b"), ("shard", "7")]), 3.0),
            (l(&[("__name__", "c"), ("shard", "7")]), 3.0),
        ]
    );
}

#[test]
fn alert_pending_firing_keep_firing_and_series() {
    let s = MemStore::new();
    let up = l(&[("__name__", "up"), ("instance", "a"), ("job", "j")]);
    let g = group(
        "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 2s\n    keep_firing_for: 2s\n    labels: {severity: page, who: '{{ $labels.instance }}'}\n    annotations: {summary: '{{ $labels.job }} down, value {{ $value }} in {{ $externalLabels.dc }}'}\n",
    );
    s.insert(&up, 1000, 0.0);
    let out = eval(&g, &s, 1000);
    let alert_labels = l(&[
        ("alertname", "Down"),
        ("instance", "a"),
        ("job", "j"),
        ("severity", "page"),
        ("who", "a"),
    ]);
    let alerts_series = |state: &str| {
        let mut b = alert_labels.builder();
        b.set("__name__", "ALERTS")
            .set("alertstate", state)
            .set("shard", "7");
        b.build()
    };
    let for_state = {
        let mut b = alert_labels.builder();
        b.set("__name__", "ALERTS_FOR_STATE").set("shard", "7");
        b.build()
    };
    assert_eq!(
        out,
        vec![(alerts_series("pending"), 1.0), (for_state.clone(), 1.0)]
    );
    {
        let st = g.state();
        let a = st.rules[0].alerts.values().next().unwrap();
        assert_eq!(a.state, alert::AlertState::Pending);
        assert_eq!(a.annotations.get("summary"), Some("j down, value 0 in eu"));
    }
    s.insert(&up, 3000, 0.0);
    let out = eval(&g, &s, 3000);
    // Pending series goes stale, firing appears.
    assert!(out.contains(&(alerts_series("firing"), 1.0)), "{out:?}");
    assert!(
        out.iter()
            .any(|(l, v)| *l == alerts_series("pending") && is_stale_nan(*v))
    );
    // Recovered: still firing for keep_firing_for.
    s.insert(&up, 4000, 1.0);
    let out = eval(&g, &s, 4000);
    assert!(out.contains(&(alerts_series("firing"), 1.0)), "{out:?}");
    assert_eq!(
        alert::rule_state(&g.state().rules[0]),
        alert::AlertState::Firing
    );
    s.insert(&up, 6000, 1.0);
    let out = eval(&g, &s, 6000);
    assert!(!out.is_empty(), "the resolved alert's series get markers");
    assert!(out.iter().all(|(_, v)| is_stale_nan(*v)), "{out:?}");
    assert_eq!(
        alert::rule_state(&g.state().rules[0]),
        alert::AlertState::Inactive
    );
    assert_eq!(alert::active(&g.state().rules[0]).count(), 0);
}

#[test]
fn schedule_is_aligned_and_stable() {
    assert_eq!(slot_at_or_before(10_500, 1000, 200), 10_200);
    assert_eq!(slot_at_or_before(10_200, 1000, 200), 10_200);
    assert_eq!(slot_at_or_before(10_199, 1000, 200), 9_200);
    let o = offset_ms("f;g", 15_000);
    assert!((0..15_000).contains(&o));
    assert_eq!(o, offset_ms("f;g", 15_000));
}

#[test]
fn load_rejects_bad_templates() {
    let f = parse_rule_file(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    annotations: {x: '{{ range . }}'}\n",
        std::path::Path::new("r.yml"),
    )
    .unwrap();
    let e = Group::new(
        PathBuf::from("r.yml"),
        &f.groups[0],
        Duration::from_secs(60),
    )
    .unwrap_err();
    assert!(e.contains("template of x"), "{e}");
}

#[test]
fn recording_rule_labels_are_literal() {
    let s = MemStore::new();
    s.insert(&l(&[("__name__", "x")]), 1000, 1.0);
    let g = group(
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x\n    labels: {t: '{{ range . }}'}\n",
    );
    let out = eval(&g, &s, 1000);
    assert_eq!(out[0].0.get("t"), Some("{{ range . }}"));
}
