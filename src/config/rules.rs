//! Prometheus rule files (`groups:` of recording and alerting rules), parsed strictly
//! (unknown keys are errors) and validated as Prometheus 2.42's `rulefmt` does: every
//! `expr` must parse as PromQL, record names must be valid metric names, label and
//! annotation names must be valid, group names must be unique within a file.
//!
//! shoal extension: a group may say `scope: global` to run on the leader over the
//! federated shard-level series (see DESIGN.md, "Leader as master"); the default is
//! `scope: local` (every node over its own data).
//!
//! Not checked yet: Go template syntax in labels and annotations.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{ConfigError, de_labels, labels_from_map, parse_yaml, read_file};
use crate::model::labels::{METRIC_NAME, is_valid_label_name, is_valid_metric_name};
use crate::model::{Labels, duration};

/// A parsed and validated rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFile {
    pub path: PathBuf,
    pub groups: Vec<RuleGroup>,
}

impl RuleFile {
    /// Number of rules over all groups.
    pub fn rule_count(&self) -> usize {
        self.groups.iter().map(|g| g.rules.len()).sum()
    }
}

/// Where a rule group is evaluated (shoal extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleScope {
    /// Every node, over its own data; results carry the node's `shard` label.
    #[default]
    Local,
    /// The leader only, over the federated shard-level series of all nodes.
    Global,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleGroup {
    pub name: String,
    /// None = the global `evaluation_interval`.
    pub interval: Option<Duration>,
    /// 0 = no limit.
    pub limit: u64,
    pub scope: RuleScope,
    pub rules: Vec<Rule>,
}

/// A recording rule (`record`) or an alerting rule (`alert`); exactly one is set.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub record: Option<String>,
    pub alert: Option<String>,
    pub expr: String,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub labels: Labels,
    pub annotations: Labels,
}

impl Rule {
    /// The record or alert name.
    pub fn name(&self) -> &str {
        self.record
            .as_deref()
            .or(self.alert.as_deref())
            .unwrap_or("")
    }

    pub fn is_alert(&self) -> bool {
        self.alert.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleFile {
    groups: Option<Vec<RawGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<Spanned<String>>,
    interval: Option<String>,
    limit: Option<u64>,
    scope: Option<RuleScope>,
    rules: Option<Vec<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    record: Option<Spanned<String>>,
    alert: Option<Spanned<String>>,
    expr: Option<Spanned<String>>,
    #[serde(rename = "for")]
    for_: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default, deserialize_with = "de_labels")]
    labels: Option<Labels>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Reads and validates one rule file. All problems in the file are reported together.
pub fn load_rule_file(path: &Path) -> Result<RuleFile, ConfigError> {
    let text = read_file(path)?;
    parse_rule_file(&text, path)
}

/// Parses and validates rule file text; `path` is used in messages and kept.
pub fn parse_rule_file(text: &str, path: &Path) -> Result<RuleFile, ConfigError> {
    let file = path.display().to_string();
    let raw: RawRuleFile = parse_yaml(text, &file)?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut names = HashSet::new();
    for g in raw.groups.unwrap_or_default() {
        let (name, pos) = match g.name {
            Some(n) => {
                let pos = format!("{}:{}", n.referenced.line(), n.referenced.column());
                (n.value, pos)
            }
            None => (String::new(), String::from("?")),
        };
        if name.is_empty() {
            errors.push(format!("{pos}: Groupname must not be empty"));
        } else if !names.insert(name.clone()) {
            errors.push(format!(
                "{pos}: groupname: \"{name}\" is repeated in the same file"
            ));
        }
        let interval = match g.interval.as_deref().map(duration::parse) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errors.push(format!("group {name:?}: interval: {e}"));
                None
            }
        };
        let mut rules = Vec::new();
        for (i, r) in g.rules.unwrap_or_default().into_iter().enumerate() {
            match validate_rule(r) {
                Ok(rule) => rules.push(rule),
                Err((pos, rule_name, errs)) => {
                    for e in errs {
                        errors.push(format!(
                            "{pos}: group {name:?}, rule {}, {rule_name:?}: {e}",
                            i + 1
                        ));
                    }
                }
            }
        }
        groups.push(RuleGroup {
            name,
            interval,
            limit: g.limit.unwrap_or(0),
            scope: g.scope.unwrap_or_default(),
            rules,
        });
    }
    if !errors.is_empty() {
        return Err(ConfigError::Rules { file, errors });
    }
    Ok(RuleFile {
        path: path.to_path_buf(),
        groups,
    })
}

type RuleErrors = (String, String, Vec<String>);

/// `RuleNode.Validate` of Prometheus's rulefmt.
fn validate_rule(r: RawRule) -> Result<Rule, RuleErrors> {
    let mut errs = Vec::new();
    let record = r.record.filter(|s| !s.value.is_empty());
    let alert = r.alert.filter(|s| !s.value.is_empty());
    let named = alert.as_ref().or(record.as_ref());
    let pos = named
        .or(r.expr.as_ref())
        .map(|s| format!("{}:{}", s.referenced.line(), s.referenced.column()))
        .unwrap_or_else(|| "?".into());
    let rule_name = named.map(|s| s.value.clone()).unwrap_or_default();
    if record.is_some() && alert.is_some() {
        errs.push("only one of 'record' and 'alert' must be set".to_string());
    }
    if record.is_none() && alert.is_none() {
        errs.push("one of 'record' or 'alert' must be set".to_string());
    }
    let expr = r.expr.map(|s| s.value).unwrap_or_default();
    if expr.is_empty() {
        errs.push("field 'expr' must be set in rule".to_string());
    } else if let Err(e) = promql_parser::parser::parse(&expr) {
        errs.push(format!("could not parse expression: {e}"));
    }
    let mut dur = |what: &str, v: Option<String>| match v.as_deref().map(duration::parse) {
        None => Duration::ZERO,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(format!("{what}: {e}"));
            Duration::ZERO
        }
    };
    let for_ = dur("for", r.for_);
    let keep_firing_for = dur("keep_firing_for", r.keep_firing_for);
    let annotations_raw = r.annotations.unwrap_or_default();
    if let Some(rec) = &record {
        if !annotations_raw.is_empty() {
            errs.push("invalid field 'annotations' in recording rule".to_string());
        }
        if !for_.is_zero() {
            errs.push("invalid field 'for' in recording rule".to_string());
        }
        if !keep_firing_for.is_zero() {
            errs.push("invalid field 'keep_firing_for' in recording rule".to_string());
        }
        if !is_valid_metric_name(&rec.value) {
            errs.push(format!("invalid recording rule name: {}", rec.value));
        }
    }
    let labels = r.labels.unwrap_or_default();
    if labels.has(METRIC_NAME) {
        errs.push(format!("invalid label name: {METRIC_NAME}"));
    }
    for k in annotations_raw.keys() {
        if !is_valid_label_name(k) {
            errs.push(format!("invalid annotation name: {k}"));
        }
    }
    if !errs.is_empty() {
        return Err((pos, rule_name, errs));
    }
    let annotations = labels_from_map(annotations_raw).map_err(|e| (pos, rule_name, vec![e]))?;
    Ok(Rule {
        record: record.map(|s| s.value),
        alert: alert.map(|s| s.value),
        expr,
        for_,
        keep_firing_for,
        labels,
        annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuleFile, ConfigError> {
        parse_rule_file(text, Path::new("rules.yml"))
    }

    fn errs(text: &str) -> Vec<String> {
        match parse(text) {
            Err(ConfigError::Rules { errors, .. }) => errors,
            Err(e) => vec![e.to_string()],
            Ok(f) => panic!("expected errors, got {f:?}"),
        }
    }

    #[test]
    fn parses_groups_and_rules() {
        let f = parse(
            r#"
groups:
  - name: node
    interval: 30s
    limit: 10
    rules:
      - record: instance:node_cpu:rate5m
        expr: sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))
        labels:
          team: infra
      - alert: HighCPU
        expr: instance:node_cpu:rate5m > 0.9
        for: 10m
        keep_firing_for: 5m
        labels: {severity: page}
        annotations:
          summary: "CPU high on {{ $labels.instance }}"
  - name: global
    scope: global
    rules:
      - record: job:up:sum
        expr: sum by (job) (up)
"#,
        )
        .unwrap();
        assert_eq!(f.groups.len(), 2);
        assert_eq!(f.rule_count(), 3);
        let g = &f.groups[0];
        assert_eq!(g.interval, Some(Duration::from_secs(30)));
        assert_eq!(g.limit, 10);
        assert_eq!(g.scope, RuleScope::Local);
        assert_eq!(g.rules[0].name(), "instance:node_cpu:rate5m");
        assert!(!g.rules[0].is_alert());
        assert_eq!(g.rules[0].labels, Labels::from_pairs(&[("team", "infra")]));
        let a = &g.rules[1];
        assert!(a.is_alert());
        assert_eq!(a.for_, Duration::from_secs(600));
        assert_eq!(a.keep_firing_for, Duration::from_secs(300));
        assert_eq!(
            a.annotations.get("summary"),
            Some("CPU high on {{ $labels.instance }}")
        );
        assert_eq!(f.groups[1].scope, RuleScope::Global);
        assert_eq!(f.groups[1].interval, None);
        // An empty file has no groups.
        assert_eq!(parse("").unwrap().groups.len(), 0);
    }

    #[test]
    fn error_table() {
        let cases: &[(&str, &str)] = &[
            (
                "groups:\n  - name: a\n    rules:\n      - record: x\n        expr: 'sum('\n",
                "could not parse expression",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - record: 'bad-name'\n        expr: up\n",
                "invalid recording rule name: bad-name",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - record: x\n        alert: y\n        expr: up\n",
                "only one of 'record' and 'alert' must be set",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - expr: up\n",
                "one of 'record' or 'alert' must be set",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - record: x\n",
                "field 'expr' must be set in rule",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - record: x\n        expr: up\n        for: 1m\n",
                "invalid field 'for' in recording rule",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - record: x\n        expr: up\n        annotations: {a: b}\n",
                "invalid field 'annotations' in recording rule",
            ),
            (
                "groups:\n  - name: a\n    rules: []\n  - name: a\n    rules: []\n",
                "4:11: groupname: \"a\" is repeated in the same file",
            ),
            ("groups:\n  - rules: []\n", "Groupname must not be empty"),
            (
                "groups:\n  - name: a\n    rules:\n      - alert: x\n        expr: up\n        labels: {__name__: y}\n",
                "invalid label name: __name__",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - alert: x\n        expr: up\n        labels: {'a-b': y}\n",
                "\"a-b\" is not a valid label name",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - alert: x\n        expr: up\n        annotations: {'a b': y}\n",
                "invalid annotation name: a b",
            ),
            (
                "groups:\n  - name: a\n    rules:\n      - alert: x\n        expr: up\n        bogus: 1\n",
                "unknown field `bogus`",
            ),
            (
                "groups:\n  - name: a\n    interval: 5x\n",
                "interval: not a valid duration",
            ),
            ("group:\n  - name: a\n", "unknown field `group`"),
        ];
        for (text, want) in cases {
            let e = errs(text);
            assert!(
                e.iter().any(|m| m.contains(want)),
                "{text}\n got {e:?}\n want {want:?}"
            );
        }
    }

    #[test]
    fn rule_errors_name_group_rule_and_position() {
        let e = errs(
            "groups:\n  - name: g1\n    rules:\n      - record: ok\n        expr: up\n      - record: x\n        expr: 'up +'\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("6:17: group \"g1\", rule 2, \"x\": could not parse expression"),
            "{}",
            e[0]
        );
    }
}
