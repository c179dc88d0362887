//! Label sets. A [`Labels`] is always sorted by name, with unique names and no empty
//! values (an empty value means "label absent", as in Prometheus).

use std::fmt;

/// The label that holds the metric name.
pub const METRIC_NAME: &str = "__name__";

/// One label pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A sorted set of labels with unique names.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from pairs in any order. Later duplicates win; empty values are
    /// dropped.
    pub fn new(mut labels: Vec<Label>) -> Labels {
        // Stable sort keeps insertion order among equal names, so "later wins" holds.
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out: Vec<Label> = Vec::with_capacity(labels.len());
        for l in labels {
            match out.last_mut() {
                Some(last) if last.name == l.name => *last = l,
                _ => out.push(l),
            }
        }
        out.retain(|l| !l.value.is_empty());
        Labels(out)
    }

    /// Builds a label set from `(name, value)` pairs.
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(n, v)| Label::new(n.as_ref(), v.as_ref()))
                .collect(),
        )
    }

    /// Wraps labels that are already sorted, unique and non-empty. Checked in debug builds.
    pub fn from_sorted(labels: Vec<Label>) -> Labels {
        debug_assert!(labels.windows(2).all(|w| w[0].name < w[1].name));
        Labels(labels)
    }

    pub fn empty() -> Labels {
        Labels(Vec::new())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].value.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The metric name (`__name__`), if any.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A builder starting from these labels.
    pub fn builder(&self) -> LabelsBuilder {
        LabelsBuilder::new(self.clone())
    }

    /// The same labels without the metric name.
    pub fn without_metric_name(&self) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| l.name != METRIC_NAME)
                .cloned()
                .collect(),
        )
    }

    /// Only the labels whose names are in `names` (`by (...)`).
    pub fn keep_only(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| names.contains(&l.name))
                .cloned()
                .collect(),
        )
    }

    /// All labels except those whose names are in `names` (`without (...)`).
    pub fn drop_names(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|l| !names.contains(&l.name))
                .cloned()
                .collect(),
        )
    }

    /// A stable 64-bit hash of the label set (xxh3 over name/value bytes with
    /// separators). Stable across Rust releases and processes: safe to persist and to
    /// compare between nodes.
    pub fn stable_hash(&self) -> u64 {
        let mut buf = Vec::with_capacity(self.0.len() * 24);
        for l in &self.0 {
            buf.extend_from_slice(l.name.as_bytes());
            buf.push(0xff);
            buf.extend_from_slice(l.value.as_bytes());
            buf.push(0xff);
        }
        xxhash_rust::xxh3::xxh3_64(&buf)
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Formats as Prometheus does: `name{a="1", b="2"}`, or `{a="1"}` without a name.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        if let Some(n) = name {
            f.write_str(n)?;
        }
        let mut rest = self.0.iter().filter(|l| l.name != METRIC_NAME).peekable();
        if name.is_some() && rest.peek().is_none() {
            return Ok(());
        }
        f.write_str("{")?;
        let mut first = true;
        for l in rest {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}=\"{}\"", l.name, escape_label_value(&l.value))?;
        }
        f.write_str("}")
    }
}

/// Escapes `\`, `"` and newline as the text exposition format does.
pub fn escape_label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut s = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    std::borrow::Cow::Owned(s)
}

/// Edits a label set: set, delete, then build a sorted [`Labels`].
#[derive(Debug, Clone)]
pub struct LabelsBuilder {
    labels: Vec<Label>,
}

impl LabelsBuilder {
    pub fn new(base: Labels) -> LabelsBuilder {
        LabelsBuilder { labels: base.0 }
    }

    /// Sets `name` to `value`; an empty value deletes the label.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        match self.labels.iter_mut().find(|l| l.name == name) {
            Some(l) => l.value = value.to_string(),
            None => self.labels.push(Label::new(name, value)),
        }
        self
    }

    pub fn del(&mut self, name: &str) -> &mut Self {
        self.labels.retain(|l| l.name != name);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name && !l.value.is_empty())
            .map(|l| l.value.as_str())
    }

    /// Keeps only the labels for which `f` is true.
    pub fn retain(&mut self, f: impl FnMut(&Label) -> bool) -> &mut Self {
        self.labels.retain(f);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = &Label> {
        self.labels.iter().filter(|l| !l.value.is_empty())
    }

    pub fn labels(&self) -> Labels {
        Labels::new(self.labels.clone())
    }

    pub fn build(self) -> Labels {
        Labels::new(self.labels)
    }
}

/// True for a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    match b.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' => {}
        _ => return false,
    }
    b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// True for a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    match b.next() {
        Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {}
        _ => return false,
    }
    b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sorts_dedups_later_wins_and_drops_empty() {
        let l = Labels::new(vec![
            Label::new("b", "1"),
            Label::new("a", "x"),
            Label::new("b", "2"),
            Label::new("c", ""),
        ]);
        assert_eq!(l, Labels::from_pairs(&[("a", "x"), ("b", "2")]));
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn display_matches_prometheus() {
        let l = Labels::from_pairs(&[("__name__", "up"), ("job", "a\"b"), ("i", "x")]);
        assert_eq!(l.to_string(), r#"up{i="x", job="a\"b"}"#);
        assert_eq!(Labels::from_pairs(&[("__name__", "up")]).to_string(), "up");
        assert_eq!(Labels::from_pairs(&[("a", "1")]).to_string(), r#"{a="1"}"#);
    }

    #[test]
    fn stable_hash_is_order_independent_and_distinguishes_boundaries() {
        let a = Labels::from_pairs(&[("a", "1"), ("b", "2")]);
        let b = Labels::from_pairs(&[("b", "2"), ("a", "1")]);
        assert_eq!(a.stable_hash(), b.stable_hash());
        let c = Labels::from_pairs(&[("a", "1b"), ("", "2")]);
        assert_ne!(a.stable_hash(), c.stable_hash());
    }

    #[test]
    fn builder_sets_and_deletes() {
        let base = Labels::from_pairs(&[("a", "1"), ("b", "2")]);
        let mut b = base.builder();
        b.set("c", "3").del("a").set("b", "");
        assert_eq!(b.labels(), Labels::from_pairs(&[("c", "3")]));
    }

    #[test]
    fn name_validation() {
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("1a"));
        assert!(!is_valid_label_name("a:b"));
        assert!(is_valid_metric_name("job:rate5m"));
        assert!(!is_valid_metric_name(""));
    }
}
