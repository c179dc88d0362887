//! Label matchers (`=`, `!=`, `=~`, `!~`) with Prometheus's fully anchored regexes.

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// One label matcher. A regex matcher matches the whole value (`^(?s:re)$`).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub op: MatchOp,
    pub name: String,
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.name == other.name && self.value == other.value
    }
}

impl Matcher {
    pub fn new(
        op: MatchOp,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Matcher, regex::Error> {
        let value = value.into();
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(Regex::new(&format!("^(?s:{value})$"))?),
            _ => None,
        };
        Ok(Matcher {
            op,
            name: name.into(),
            value,
            re,
        })
    }

    /// `name="value"`.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            op: MatchOp::Equal,
            name: name.into(),
            value: value.into(),
            re: None,
        }
    }

    /// Whether a label value (empty = label absent) matches.
    pub fn matches(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    /// Whether this matcher matches the empty string (i.e. also series without the label).
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// Whether every matcher matches `labels`.
    pub fn all_match(matchers: &[Matcher], labels: &super::Labels) -> bool {
        matchers
            .iter()
            .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(
            f,
            "{}{}\"{}\"",
            self.name,
            op,
            super::labels::escape_label_value(&self.value)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_is_anchored_and_dot_matches_newline() {
        let m = Matcher::new(MatchOp::Regex, "a", "fo+").unwrap();
        assert!(m.matches("foo"));
        assert!(!m.matches("xfoo"));
        assert!(!m.matches("foox"));
        let m = Matcher::new(MatchOp::Regex, "a", "a.b").unwrap();
        assert!(m.matches("a\nb"));
        let m = Matcher::new(MatchOp::NotRegex, "a", "x|y").unwrap();
        assert!(m.matches(""));
        assert!(!m.matches("x"));
    }

    #[test]
    fn bad_regex_is_an_error() {
        assert!(Matcher::new(MatchOp::Regex, "a", "(").is_err());
    }
}
