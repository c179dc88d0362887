//! Relabelling (`relabel_configs`, `metric_relabel_configs`) with the exact semantics of
//! Prometheus 2.42: every action (`replace`, `keep`, `drop`, `hashmod`, `labelmap`,
//! `labeldrop`, `labelkeep`, `lowercase`, `uppercase`, `keepequal`, `dropequal`), its
//! defaults and its configuration checks.
//!
//! Owns: [`RelabelConfig`] (the YAML shape, validated while it is deserialized), the
//! anchored [`Regex`] wrapper, Go-style `$1`/`${1}`/`$name` template expansion
//! ([`expand`]) and [`process`]. Pure: no IO.

use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Deserializer};

use crate::model::labels::is_valid_label_name;
use crate::model::{Labels, LabelsBuilder};

/// A relabel action. Parsed case-insensitively, as Prometheus does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    /// The lower-case name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }

    fn parse(s: &str) -> Result<Action, String> {
        const ALL: [Action; 11] = [
            Action::Replace,
            Action::Keep,
            Action::Drop,
            Action::KeepEqual,
            Action::DropEqual,
            Action::HashMod,
            Action::LabelMap,
            Action::LabelDrop,
            Action::LabelKeep,
            Action::Lowercase,
            Action::Uppercase,
        ];
        let lower = s.to_lowercase();
        ALL.into_iter()
            .find(|a| a.as_str() == lower)
            .ok_or_else(|| format!("unknown relabel action {s:?}"))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A regular expression anchored at both ends (`^(?:re)$`), as Prometheus compiles
/// relabel regexes. Keeps the original text for display and comparisons.
#[derive(Clone)]
pub struct Regex {
    original: String,
    re: regex::Regex,
}

/// The default relabel regex.
pub const DEFAULT_REGEX: &str = "(.*)";

impl Regex {
    pub fn new(s: &str) -> Result<Regex, String> {
        let re = regex::Regex::new(&format!("^(?:{s})$"))
            .map_err(|e| format!("invalid regular expression {s:?}: {e}"))?;
        Ok(Regex {
            original: s.to_string(),
            re,
        })
    }

    /// The regex as written in the config (without the anchors).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }

    /// Expands `template` against the match of this regex on `s`, or `None` if it does
    /// not match.
    pub fn expand_match(&self, template: &str, s: &str) -> Option<String> {
        let caps = self.re.captures(s)?;
        Some(expand(&self.re, &caps, template))
    }
}

impl Default for Regex {
    fn default() -> Regex {
        // The default pattern is a constant known to compile.
        Regex::new(DEFAULT_REGEX).expect("default relabel regex compiles")
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.original == other.original
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.original)
    }
}

/// Expands a Go `regexp.Expand` template: `$1`, `${1}`, `$name`, `${name}`; `$$` is a
/// literal `$`; an unknown or non-participating group expands to nothing; a malformed
/// `$` is copied literally. As in Go, `$1x` names the group `1x` (which is empty).
pub fn expand(re: &regex::Regex, caps: &regex::Captures<'_>, template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let Some((name, num, after)) = extract_group_ref(rest) else {
            out.push('$');
            continue;
        };
        rest = after;
        let m = match num {
            Some(n) => caps.get(n),
            None => re
                .capture_names()
                .position(|n| n == Some(name))
                .and_then(|i| caps.get(i)),
        };
        if let Some(m) = m {
            out.push_str(m.as_str());
        }
    }
    out.push_str(rest);
    out
}

/// Parses the group reference after a `$`: `(name, number if numeric, rest)`.
fn extract_group_ref(s: &str) -> Option<(&str, Option<usize>, &str)> {
    let (brace, body) = match s.strip_prefix('{') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !(c.is_alphabetic() || c.is_numeric() || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let name = &body[..end];
    let rest = if brace {
        body[end..].strip_prefix('}')?
    } else {
        &body[end..]
    };
    let numeric = name.bytes().all(|b| b.is_ascii_digit())
        && !(name.len() > 1 && name.starts_with('0'))
        && name.len() <= 8;
    let num = if numeric { name.parse().ok() } else { None };
    Some((name, num, rest))
}

/// True if `s` is a valid `target_label` template for `replace` (Prometheus's
/// `relabelTarget`: `^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$`).
fn is_valid_target_template(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$")
            .expect("relabel target pattern compiles")
    })
    .is_match(s)
}

/// One relabelling step, validated as Prometheus validates it on load.
#[derive(Debug, Clone, PartialEq)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    pub regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

impl Default for RelabelConfig {
    fn default() -> RelabelConfig {
        RelabelConfig {
            source_labels: Vec::new(),
            separator: ";".into(),
            regex: Regex::default(),
            modulus: 0,
            target_label: String::new(),
            replacement: "$1".into(),
            action: Action::Replace,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelabelConfig {
    source_labels: Option<Vec<String>>,
    separator: Option<String>,
    // Outer None = absent (default); inner None = explicit null (empty regex, as Go).
    #[serde(default, deserialize_with = "present")]
    regex: Option<Option<String>>,
    modulus: Option<u64>,
    target_label: Option<String>,
    replacement: Option<String>,
    action: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for RelabelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRelabelConfig::deserialize(d)?;
        RelabelConfig::from_raw(raw).map_err(serde::de::Error::custom)
    }
}

impl RelabelConfig {
    fn from_raw(raw: RawRelabelConfig) -> Result<RelabelConfig, String> {
        let d = RelabelConfig::default();
        let action = match raw.action.as_deref() {
            None => d.action,
            Some("") => return Err("relabel action cannot be empty".into()),
            Some(a) => Action::parse(a)?,
        };
        let regex = match raw.regex {
            None => d.regex.clone(),
            Some(None) => Regex::new("")?,
            Some(Some(r)) => Regex::new(&r)?,
        };
        let source_labels_set = raw.source_labels.is_some();
        let cfg = RelabelConfig {
            source_labels: raw.source_labels.unwrap_or_default(),
            separator: raw.separator.unwrap_or(d.separator),
            regex,
            modulus: raw.modulus.unwrap_or(0),
            target_label: raw.target_label.unwrap_or_default(),
            replacement: raw.replacement.unwrap_or(d.replacement),
            action,
        };
        cfg.validate_inner(source_labels_set)?;
        Ok(cfg)
    }

    /// Checks the rules Prometheus applies when it loads a relabel config.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_inner(!self.source_labels.is_empty())
    }

    fn validate_inner(&self, source_labels_set: bool) -> Result<(), String> {
        use Action::*;
        let a = self.action;
        let d = RelabelConfig::default();
        for l in &self.source_labels {
            if !is_valid_label_name(l) {
                return Err(format!("{l:?} is not a valid label name"));
            }
        }
        if a == HashMod && self.modulus == 0 {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        let needs_target = matches!(
            a,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        );
        if needs_target && self.target_label.is_empty() {
            return Err(format!(
                "relabel configuration for {a} action requires 'target_label' value"
            ));
        }
        let invalid_target = || {
            format!(
                "{:?} is invalid 'target_label' for {a} action",
                self.target_label
            )
        };
        if matches!(a, Replace | Lowercase | Uppercase | KeepEqual | DropEqual)
            && !is_valid_target_template(&self.target_label)
        {
            return Err(invalid_target());
        }
        let plain_target = matches!(a, Lowercase | Uppercase | KeepEqual | DropEqual);
        if plain_target && !is_valid_label_name(&self.target_label) {
            return Err(invalid_target());
        }
        if plain_target && self.replacement != d.replacement {
            return Err(format!("'replacement' can not be set for {a} action"));
        }
        if a == LabelMap && !is_valid_target_template(&self.replacement) {
            return Err(format!(
                "{:?} is invalid 'replacement' for {a} action",
                self.replacement
            ));
        }
        if a == HashMod && !is_valid_label_name(&self.target_label) {
            return Err(invalid_target());
        }
        if matches!(a, KeepEqual | DropEqual)
            && (self.regex != d.regex
                || self.modulus != d.modulus
                || self.separator != d.separator
                || self.replacement != d.replacement)
        {
            return Err(format!(
                "{a} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        if matches!(a, LabelDrop | LabelKeep)
            && (source_labels_set
                || !self.target_label.is_empty()
                || self.modulus != d.modulus
                || self.separator != d.separator
                || self.replacement != d.replacement)
        {
            return Err(format!(
                "{a} action requires only 'regex', and no other fields"
            ));
        }
        Ok(())
    }
}

/// Applies `cfgs` in order. `None` means the label set was dropped.
pub fn process(labels: &Labels, cfgs: &[RelabelConfig]) -> Option<Labels> {
    let mut lset = labels.clone();
    for cfg in cfgs {
        lset = relabel(lset, cfg)?;
    }
    Some(lset)
}

fn relabel(lset: Labels, cfg: &RelabelConfig) -> Option<Labels> {
    let val = cfg
        .source_labels
        .iter()
        .map(|n| lset.get(n).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(&cfg.separator);
    let mut lb: LabelsBuilder = lset.builder();
    match cfg.action {
        Action::Drop => {
            if cfg.regex.is_match(&val) {
                return None;
            }
        }
        Action::Keep => {
            if !cfg.regex.is_match(&val) {
                return None;
            }
        }
        Action::DropEqual => {
            if lset.get(&cfg.target_label).unwrap_or("") == val {
                return None;
            }
        }
        Action::KeepEqual => {
            if lset.get(&cfg.target_label).unwrap_or("") != val {
                return None;
            }
        }
        Action::Replace => {
            if let Some(caps) = cfg.regex.re.captures(&val) {
                let target = expand(&cfg.regex.re, &caps, &cfg.target_label);
                if !is_valid_label_name(&target) {
                    // Prometheus deletes the unexpanded target name here.
                    lb.del(&cfg.target_label);
                } else {
                    let res = expand(&cfg.regex.re, &caps, &cfg.replacement);
                    if res.is_empty() {
                        lb.del(&cfg.target_label);
                    } else {
                        lb.set(&target, &res);
                    }
                }
            }
        }
        Action::Lowercase => {
            lb.set(&cfg.target_label, &val.to_lowercase());
        }
        Action::Uppercase => {
            lb.set(&cfg.target_label, &val.to_uppercase());
        }
        Action::HashMod => {
            let m = hashmod(&val, cfg.modulus);
            lb.set(&cfg.target_label, &m.to_string());
        }
        Action::LabelMap => {
            for l in lset.iter() {
                if let Some(name) = cfg.regex.expand_match(&cfg.replacement, &l.name) {
                    lb.set(&name, &l.value);
                }
            }
        }
        Action::LabelDrop => {
            for l in lset.iter() {
                if cfg.regex.is_match(&l.name) {
                    lb.del(&l.name);
                }
            }
        }
        Action::LabelKeep => {
            for l in lset.iter() {
                if !cfg.regex.is_match(&l.name) {
                    lb.del(&l.name);
                }
            }
        }
    }
    Some(lb.build())
}

/// Prometheus's hashmod: the md5 digest of `val`, its last 8 bytes read as a big-endian
/// `u64`, modulo `modulus` (0 when `modulus` is 0, which validation forbids).
pub fn hashmod(val: &str, modulus: u64) -> u64 {
    let digest = Md5::digest(val.as_bytes());
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&digest[8..16]);
    u64::from_be_bytes(tail).checked_rem(modulus).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> RelabelConfig {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn cfg_err(yaml: &str) -> String {
        match serde_saphyr::from_str::<RelabelConfig>(yaml) {
            Ok(c) => panic!("{yaml}: expected an error, got {c:?}"),
            Err(e) => e.without_snippet().to_string(),
        }
    }

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs)
    }

    #[test]
    fn defaults() {
        let c = cfg("target_label: foo\n");
        assert_eq!(c.action, Action::Replace);
        assert_eq!(c.separator, ";");
        assert_eq!(c.regex.as_str(), "(.*)");
        assert_eq!(c.replacement, "$1");
        assert!(c.source_labels.is_empty());
        assert_eq!(cfg("action: KEEP\n").action, Action::Keep);
        assert_eq!(cfg("action: LabelMap\n").action, Action::LabelMap);
    }

    #[test]
    fn hashmod_vectors() {
        // python3 -c "import hashlib; d=hashlib.md5(b'').digest(); print(int.from_bytes(d[8:],'big'))"
        //   -> 16825458760271544958
        assert_eq!(hashmod("", u64::MAX), 16825458760271544958);
        assert_eq!(hashmod("", 10), 8);
        // python3 -c "import hashlib; print(int.from_bytes(hashlib.md5(b'foo').digest()[8:],'big'))"
        //   -> 17145033699835028696
        assert_eq!(hashmod("foo", 10), 6);
        assert_eq!(hashmod("foo", 3), 2);
        // python3 -c "import hashlib; print(int.from_bytes(hashlib.md5(b'localhost:9100').digest()[8:],'big'))"
        //   -> 9302587803962748751
        assert_eq!(hashmod("localhost:9100", 1000), 751);
        // ... b'a;b' -> 2420134994223480074; b'node-1:9100;prod' -> 5267312907198225254
        assert_eq!(hashmod("a;b", 1000), 74);
        assert_eq!(hashmod("node-1:9100;prod", 10), 4);
    }

    #[test]
    fn go_template_expansion() {
        let re = regex::Regex::new("^(?:(?P<host>[a-z]+):(\\d+))$").unwrap();
        let caps = re.captures("web:8080").unwrap();
        let cases = [
            ("$1", "web"),
            ("${1}", "web"),
            ("$2", "8080"),
            ("$host", "web"),
            ("${host}_x", "web_x"),
            ("$host_x", ""), // `host_x` is not a group
            ("$1x", ""),     // Go reads the name `1x`
            ("${1}x", "webx"),
            ("$3", ""), // out of range
            ("$$1", "$1"),
            ("a$", "a$"),
            ("${1", "${1"),
            ("$-", "$-"),
            ("$01", ""), // leading zero: a name, not a number
            ("no refs", "no refs"),
        ];
        for (t, want) in cases {
            assert_eq!(expand(&re, &caps, t), want, "template {t:?}");
        }
    }

    #[test]
    fn process_table() {
        let base = ls(&[
            ("__address__", "web-1:9100"),
            ("a", "foo"),
            ("b", "bar"),
            ("env", "Prod"),
        ]);
        // (relabel configs as YAML list, expected result)
        let cases: Vec<(&str, Option<Labels>)> = vec![
            // replace with defaults copies source to target
            (
                "- source_labels: [a]\n  target_label: c\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("c", "foo"),
                    ("env", "Prod"),
                ])),
            ),
            // regex with groups, separator, replacement template
            (
                "- source_labels: [a, b]\n  separator: '-'\n  regex: '(f.*)-(b.*)'\n  replacement: '${2}_$1'\n  target_label: c\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("c", "bar_foo"),
                    ("env", "Prod"),
                ])),
            ),
            // no match: unchanged
            (
                "- source_labels: [a]\n  regex: 'x.*'\n  target_label: c\n",
                Some(base.clone()),
            ),
            // anchored: 'fo' does not match 'foo'
            ("- source_labels: [a]\n  regex: fo\n  action: keep\n", None),
            // empty replacement deletes the target
            (
                "- source_labels: [a]\n  target_label: b\n  replacement: ''\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("env", "Prod"),
                ])),
            ),
            // target label template expansion
            (
                "- source_labels: [a]\n  regex: '(.*)'\n  target_label: 'lbl_$1'\n  replacement: x\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("env", "Prod"),
                    ("lbl_foo", "x"),
                ])),
            ),
            // invalid target after expansion: skipped
            (
                "- source_labels: [__address__]\n  regex: '(.*)'\n  target_label: '$1'\n",
                Some(base.clone()),
            ),
            // missing source labels join as empty strings
            (
                "- source_labels: [nope, a]\n  target_label: c\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("c", ";foo"),
                    ("env", "Prod"),
                ])),
            ),
            (
                "- source_labels: [a]\n  regex: foo|baz\n  action: keep\n",
                Some(base.clone()),
            ),
            ("- source_labels: [a]\n  regex: foo\n  action: drop\n", None),
            (
                "- source_labels: [a]\n  regex: bar\n  action: drop\n",
                Some(base.clone()),
            ),
            // keep on a missing label matches the empty string
            (
                "- source_labels: [nope]\n  regex: ''\n  action: keep\n",
                Some(base.clone()),
            ),
            (
                "- source_labels: [a]\n  target_label: b\n  action: keepequal\n",
                None,
            ),
            (
                "- source_labels: [a]\n  target_label: b\n  action: dropequal\n",
                Some(base.clone()),
            ),
            (
                "- source_labels: [a]\n  target_label: a\n  action: dropequal\n",
                None,
            ),
            (
                "- source_labels: [a]\n  target_label: a\n  action: keepequal\n",
                Some(base.clone()),
            ),
            (
                "- source_labels: [__address__]\n  modulus: 10\n  target_label: __tmp_hash\n  action: hashmod\n",
                // python3 -c "import hashlib; print(int.from_bytes(hashlib.md5(b'web-1:9100').digest()[8:],'big') % 10)" -> 3
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("__tmp_hash", "3"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("env", "Prod"),
                ])),
            ),
            (
                "- source_labels: [env]\n  target_label: env\n  action: lowercase\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("env", "prod"),
                ])),
            ),
            (
                "- source_labels: [a, b]\n  target_label: up\n  action: uppercase\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("env", "Prod"),
                    ("up", "FOO;BAR"),
                ])),
            ),
            (
                "- regex: '(a|b)'\n  replacement: 'x_$1'\n  action: labelmap\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("b", "bar"),
                    ("env", "Prod"),
                    ("x_a", "foo"),
                    ("x_b", "bar"),
                ])),
            ),
            (
                "- regex: '__(.*)__'\n  action: labelmap\n",
                Some(ls(&[
                    ("__address__", "web-1:9100"),
                    ("a", "foo"),
                    ("address", "web-1:9100"),
                    ("b", "bar"),
                    ("env", "Prod"),
                ])),
            ),
            (
                "- regex: 'a|b'\n  action: labeldrop\n",
                Some(ls(&[("__address__", "web-1:9100"), ("env", "Prod")])),
            ),
            (
                "- regex: 'a|b'\n  action: labelkeep\n",
                Some(ls(&[("a", "foo"), ("b", "bar")])),
            ),
            // steps see the previous step's output
            (
                "- source_labels: [a]\n  target_label: c\n- source_labels: [c]\n  regex: foo\n  action: keep\n- regex: c\n  action: labeldrop\n",
                Some(base.clone()),
            ),
        ];
        for (yaml, want) in cases {
            let cfgs: Vec<RelabelConfig> =
                serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            assert_eq!(process(&base, &cfgs), want, "{yaml}");
        }
    }

    #[test]
    fn hashmod_in_process_matches_vector() {
        // python3 -c "import hashlib; print(int.from_bytes(hashlib.md5(b'web-1:9100').digest()[8:],'big'))"
        //   -> 1352492279173402203
        assert_eq!(hashmod("web-1:9100", 10), 3);
    }

    #[test]
    fn validation_errors() {
        let cases = [
            (
                "action: hashmod\ntarget_label: x\n",
                "requires non-zero modulus",
            ),
            ("action: replace\n", "requires 'target_label' value"),
            (
                "action: hashmod\nmodulus: 2\n",
                "requires 'target_label' value",
            ),
            ("action: lowercase\n", "requires 'target_label' value"),
            ("action: keepequal\n", "requires 'target_label' value"),
            (
                "target_label: '1abc'\n",
                "is invalid 'target_label' for replace action",
            ),
            (
                "target_label: '${1}'\naction: uppercase\n",
                "is invalid 'target_label' for uppercase",
            ),
            (
                "target_label: x\naction: lowercase\nreplacement: y\n",
                "'replacement' can not be set",
            ),
            (
                "action: labelmap\nreplacement: '1x'\n",
                "is invalid 'replacement' for labelmap",
            ),
            (
                "action: hashmod\nmodulus: 3\ntarget_label: '$1'\n",
                "is invalid 'target_label' for hashmod",
            ),
            (
                "action: keepequal\ntarget_label: x\nregex: a\n",
                "requires only 'source_labels'",
            ),
            (
                "action: labeldrop\nsource_labels: [a]\n",
                "requires only 'regex'",
            ),
            (
                "action: labelkeep\ntarget_label: a\n",
                "requires only 'regex'",
            ),
            (
                "action: frobnicate\n",
                "unknown relabel action \"frobnicate\"",
            ),
            ("action: ''\n", "relabel action cannot be empty"),
            (
                "regex: '('\ntarget_label: x\n",
                "invalid regular expression",
            ),
            (
                "source_labels: ['a-b']\ntarget_label: x\n",
                "\"a-b\" is not a valid label name",
            ),
            ("target_label: x\nbogus: 1\n", "unknown field `bogus`"),
        ];
        for (yaml, want) in cases {
            let e = cfg_err(yaml);
            assert!(e.contains(want), "{yaml}: got {e:?}, want {want:?}");
        }
        // valid edge cases
        cfg("action: labeldrop\nregex: tmp_.*\n");
        cfg("action: labelkeep\n");
        cfg("target_label: 'x_${1}'\n");
        cfg("action: drop\nsource_labels: [a]\n");
    }

    #[test]
    fn null_regex_is_empty_regex() {
        let c = cfg("source_labels: [a]\nregex:\naction: keep\n");
        assert_eq!(c.regex.as_str(), "");
        assert_eq!(
            process(&ls(&[("b", "1")]), std::slice::from_ref(&c)),
            Some(ls(&[("b", "1")]))
        );
        assert_eq!(process(&ls(&[("a", "1")]), &[c]), None);
    }
}
