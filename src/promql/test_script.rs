//! Runner for Prometheus's PromQL test-script format (`promqltest`): `load`, `clear`,
//! `eval instant`/`eval range` with their `expect` lines, compared as the upstream runner
//! does (see `../shared/promql-tests/README.md`). Native-histogram and experimental
//! cases are reported as skipped, never as passed or failed.
//!
//! Annotation texts are checked loosely: an `expect warn`/`info` needs at least one
//! annotation of that kind, `no_warn`/`no_info` none. `expect fail` needs the query to
//! fail; with `msg:` (or `expected_fail_message`) the error text must equal the given
//! one, with `regex:` (or `expected_fail_regexp`) the regex must match it, as
//! upstream.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::{AtModifier, Expr};
use regex::Regex;

use super::engine::{Engine, EngineOptions};
use super::value::{EvalError, QueryResult, Value, format_value};
use crate::model::{Label, Labels, Sample, is_stale_nan, stale_nan};
use crate::storage::memory::MemStore;

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    fn add(&mut self, o: Summary) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Functions and aggregators newer than Prometheus v2.42 or behind feature flags.
const EXPERIMENTAL_WORDS: &[&str] = &[
    "info",
    "sort_by_label",
    "sort_by_label_desc",
    "mad_over_time",
    "first_over_time",
    "ts_of_min_over_time",
    "ts_of_max_over_time",
    "ts_of_first_over_time",
    "ts_of_last_over_time",
    "double_exponential_smoothing",
    "start",
    "end",
    "range",
    "step",
    "min_of",
    "max_of",
    "start_timestamp",
    "histogram_quantiles",
    "limitk",
    "limit_ratio",
];

const HISTOGRAM_FUNCS: &[&str] = &[
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_fraction",
];

/// Why a case of `path` with query `expr` is skipped, if it is: cases in
/// `native-histograms/` and `experimental/` folders, and queries that use an
/// experimental or native-histogram-only function.
pub fn skip_reason(path: &Path, expr: &str) -> Option<String> {
    for comp in path.components() {
        let c = comp.as_os_str().to_string_lossy();
        if c == "native-histograms" {
            return Some("native histograms are not supported".into());
        }
        if c == "experimental" {
            return Some("experimental PromQL features are not supported".into());
        }
    }
    for w in EXPERIMENTAL_WORDS {
        if calls(expr, w) {
            return Some(format!("uses experimental `{w}`"));
        }
    }
    for w in HISTOGRAM_FUNCS {
        if calls(expr, w) {
            return Some(format!("uses native-histogram function `{w}`"));
        }
    }
    None
}

/// Whether `expr` contains `word` followed by `(` (as a whole identifier).
fn calls(expr: &str, word: &str) -> bool {
    let b = expr.as_bytes();
    let mut from = 0;
    while let Some(p) = expr[from..].find(word) {
        let s = from + p;
        let e = s + word.len();
        let before_ok = (s == 0 || !is_ident(b[s - 1])) && !expr[..s].trim_end().ends_with('@');
        let rest = expr[e..].trim_start();
        if before_ok && (e >= b.len() || !is_ident(b[e])) && rest.starts_with('(') {
            return true;
        }
        from = e;
    }
    false
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// Every skipped case of `paths` as `("file:line: expr", reason)`, without running
/// anything.
pub fn skipped_reasons(paths: &[PathBuf]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in paths {
        let name = p.display().to_string();
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        match parse_script(&text) {
            Ok(cmds) => {
                for c in cmds {
                    if let Cmd::Eval(e) = c {
                        let r = skip_reason(p, &e.expr).or_else(|| {
                            e.histogram
                                .then(|| "expects native-histogram values".to_string())
                        });
                        if let Some(r) = r {
                            out.push((format!("{name}:{}: {}", e.line, e.expr), r));
                        }
                    }
                }
            }
            Err((line, msg)) => {
                if let Some(r) = skip_reason(p, "") {
                    out.push((
                        format!("{name}:{line}"),
                        format!("{r} (parse error: {msg})"),
                    ));
                }
            }
        }
    }
    out
}

/// Runs every file; prints one line per failing case and a closing summary line.
pub fn run_files(paths: &[PathBuf], out: &mut dyn Write) -> Summary {
    let mut total = Summary::default();
    for p in paths {
        total.add(run_file(p, out));
    }
    let _ = if total.skipped > 0 {
        writeln!(
            out,
            "{} passed, {} failed, {} skipped",
            total.passed, total.failed, total.skipped
        )
    } else {
        writeln!(out, "{} passed, {} failed", total.passed, total.failed)
    };
    total
}

/// Runs one file (no closing line).
pub fn run_file(path: &Path, out: &mut dyn Write) -> Summary {
    let mut sum = Summary::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "{}:0: cannot read file: {e}", path.display());
            sum.failed += 1;
            return sum;
        }
    };
    let name = path.display().to_string();
    let cmds = match parse_script(&text) {
        Ok(c) => c,
        Err((line, msg)) => {
            if let Some(reason) = skip_reason(path, "") {
                let _ = writeln!(out, "{name}:{line}: skipped ({reason}): parse error: {msg}");
                sum.skipped += 1;
            } else {
                let _ = writeln!(out, "{name}:{line}: parse error: {msg}");
                sum.failed += 1;
            }
            return sum;
        }
    };
    let store = MemStore::new();
    // Skipped cases are summarised per file and reason (one line each, not one per case).
    let mut skips: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let engine = Engine::new(EngineOptions {
        lookback_delta: Duration::from_secs(300),
        timeout: Duration::from_secs(100),
        max_samples: 50_000_000,
        default_subquery_step: Duration::from_secs(60),
        deadline: None,
    });
    for cmd in cmds {
        match cmd {
            Cmd::Clear => store.clear(),
            Cmd::Load { interval, series } => {
                for (labels, vals) in series {
                    for (i, v) in vals.iter().enumerate() {
                        if let Some(v) = v {
                            store.insert(&labels, i as i64 * interval, *v);
                        }
                    }
                }
            }
            Cmd::Eval(e) => {
                let reason = skip_reason(path, &e.expr).or_else(|| {
                    e.histogram
                        .then(|| "expects native-histogram values".to_string())
                });
                if let Some(r) = reason {
                    sum.skipped += 1;
                    *skips.entry(r).or_default() += 1;
                    continue;
                }
                match run_eval(&engine, &store, &e) {
                    Ok(()) => sum.passed += 1,
                    Err(msg) => {
                        sum.failed += 1;
                        let _ = writeln!(out, "{name}:{}: {}: {msg}", e.line, e.expr);
                    }
                }
            }
        }
    }
    for (reason, n) in skips {
        let _ = writeln!(out, "{name}: {n} skipped: {reason}");
    }
    sum
}

#[derive(Debug)]
enum Cmd {
    Clear,
    Load {
        interval: i64,
        series: Vec<(Labels, Vec<Option<f64>>)>,
    },
    Eval(EvalCase),
}

#[derive(Debug, Default)]
struct EvalCase {
    line: usize,
    expr: String,
    /// `None` = instant at `start`.
    range: Option<(i64, i64, i64)>,
    start: i64,
    fail: bool,
    /// The error text an `expect fail` wants (`msg:`), or a regex it must match.
    fail_text: Option<FailText>,
    ordered: bool,
    warn: Option<bool>,
    info: Option<bool>,
    range_vector: Option<(i64, i64, i64)>,
    string: Option<String>,
    scalar: Option<f64>,
    series: Vec<(Labels, Vec<Option<f64>>)>,
    /// Expects a native-histogram value (skipped).
    histogram: bool,
}

/// What the error of an `expect fail` must look like.
#[derive(Debug, Clone)]
enum FailText {
    Msg(String),
    Regex(Regex),
}

impl FailText {
    fn parse(kind: &str, text: &str) -> Result<FailText, String> {
        let text = text.trim();
        match kind {
            "msg" => Ok(FailText::Msg(text.to_string())),
            _ => Regex::new(text)
                .map(FailText::Regex)
                .map_err(|e| format!("invalid regex {text:?}: {e}")),
        }
    }

    fn check(&self, err: &str) -> Result<(), String> {
        match self {
            FailText::Msg(m) if m != err => Err(format!("expected error {m:?}, got {err:?}")),
            FailText::Regex(r) if !r.is_match(err) => Err(format!(
                "expected an error matching {:?}, got {err:?}",
                r.as_str()
            )),
            _ => Ok(()),
        }
    }
}

/// `metric{...}@st <seq>` lines of `start_timestamps.test`.
fn is_start_timestamp_line(l: &str) -> bool {
    l.split_whitespace()
        .next()
        .is_some_and(|w| w.ends_with("@st"))
}

type ParseErr = (usize, String);

fn parse_time(s: &str) -> Result<i64, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let d = crate::model::duration::parse(body).map_err(|_| format!("invalid duration {s:?}"))?;
    let ms = d.as_millis() as i64;
    Ok(if neg { -ms } else { ms })
}

fn parse_script(text: &str) -> Result<Vec<Cmd>, ParseErr> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| {
            let l = l.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
            if l.starts_with('#') { "" } else { l }
        })
        .collect();
    let pat_instant =
        Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
            .map_err(|e| (0, e.to_string()))?;
    let pat_range = Regex::new(
        r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$",
    )
    .map_err(|e| (0, e.to_string()))?;
    let pat_expect =
        Regex::new(r"^expect\s+(ordered|fail|warn|no_warn|info|no_info)(?:\s+(regex|msg):(.+))?$")
            .map_err(|e| (0, e.to_string()))?;
    let pat_rv =
        Regex::new(r"^expect\s+range\s+vector\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+)$")
            .map_err(|e| (0, e.to_string()))?;

    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let lno = i + 1;
        i += 1;
        if line.is_empty() {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("").to_lowercase();
        if first == "clear" {
            cmds.push(Cmd::Clear);
        } else if first.starts_with("load") {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() != 2 {
                return Err((lno, format!("invalid load command: {line}")));
            }
            let interval = parse_time(parts[1]).map_err(|e| (lno, e))?;
            let mut series: Vec<(Labels, Vec<Option<f64>>)> = Vec::new();
            while i < lines.len() && !lines[i].is_empty() {
                let l = lines[i];
                i += 1;
                if l.contains("{{") || is_start_timestamp_line(l) {
                    // Native-histogram samples and start timestamps: not supported, not
                    // loaded (the evals that need them are skipped).
                    continue;
                }
                let (labels, vals) = parse_series(l).map_err(|e| (i, e))?;
                if let Some(pos) = series.iter().position(|(x, _)| *x == labels) {
                    series[pos].1 = vals;
                } else {
                    series.push((labels, vals));
                }
            }
            cmds.push(Cmd::Load { interval, series });
        } else if first.starts_with("eval") {
            let mut case = EvalCase {
                line: lno,
                ..Default::default()
            };
            let modifier;
            if let Some(c) = pat_instant.captures(line) {
                modifier = c.get(1).map(|m| m.as_str().to_string());
                let at = c.get(2).map(|m| m.as_str()).unwrap_or("0");
                case.start = parse_time(at.trim()).map_err(|e| (lno, e))?;
                case.expr = c[3].to_string();
            } else if let Some(c) = pat_range.captures(line) {
                modifier = c.get(1).map(|m| m.as_str().to_string());
                let s = parse_time(c[2].trim()).map_err(|e| (lno, e))?;
                let e = parse_time(c[3].trim()).map_err(|e| (lno, e))?;
                let st = parse_time(c[4].trim()).map_err(|e| (lno, e))?;
                if e < s {
                    return Err((
                        lno,
                        "invalid test definition, end timestamp is before start timestamp".into(),
                    ));
                }
                case.range = Some((s, e, st));
                case.expr = c[5].to_string();
            } else {
                return Err((lno, format!("invalid eval command: {line}")));
            }
            match modifier.as_deref() {
                Some("fail") => case.fail = true,
                Some("warn") => case.warn = Some(true),
                Some("info") => case.info = Some(true),
                Some("ordered") => case.ordered = true,
                _ => {}
            }
            while i < lines.len() && !lines[i].is_empty() {
                let l = lines[i];
                i += 1;
                if let Some(c) = pat_expect.captures(l) {
                    match &c[1] {
                        "ordered" => case.ordered = true,
                        "fail" => {
                            case.fail = true;
                            if let (Some(kind), Some(text)) = (c.get(2), c.get(3)) {
                                case.fail_text = Some(
                                    FailText::parse(kind.as_str(), text.as_str())
                                        .map_err(|e| (i, e))?,
                                );
                            }
                        }
                        "warn" => case.warn = Some(true),
                        "no_warn" => case.warn = Some(false),
                        "info" => case.info = Some(true),
                        "no_info" => case.info = Some(false),
                        _ => {}
                    }
                    continue;
                }
                if let Some(c) = pat_rv.captures(l) {
                    let s = parse_time(&c[1]).map_err(|e| (i, e))?;
                    let e = parse_time(&c[2]).map_err(|e| (i, e))?;
                    let st = parse_time(&c[3]).map_err(|e| (i, e))?;
                    case.range_vector = Some((s, e, st));
                    continue;
                }
                if let Some(rest) = l.strip_prefix("expect string") {
                    case.string = Some(unquote(rest.trim()).map_err(|e| (i, e))?);
                    continue;
                }
                if let Some(text) = l.strip_prefix("expected_fail_message") {
                    case.fail_text = Some(FailText::Msg(text.trim().to_string()));
                    continue;
                }
                if let Some(text) = l.strip_prefix("expected_fail_regexp") {
                    case.fail_text = Some(FailText::parse("regex", text).map_err(|e| (i, e))?);
                    continue;
                }
                if let Some(v) = parse_number(l) {
                    case.scalar = Some(v);
                    break;
                }
                if l.contains("{{") {
                    case.histogram = true;
                    continue;
                }
                let s = parse_series(l).map_err(|e| (i, e))?;
                case.series.push(s);
            }
            cmds.push(Cmd::Eval(case));
        } else {
            return Err((lno, format!("invalid command {first:?}")));
        }
    }
    Ok(cmds)
}

/// Parses a number as Go's `strconv.ParseFloat` (plus hex integers).
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    let (sign, body) = match t.as_bytes()[0] {
        b'+' => (1.0, &t[1..]),
        b'-' => (-1.0, &t[1..]),
        _ => (1.0, t),
    };
    if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok().map(|v| sign * v as f64);
    }
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(sign * f64::INFINITY);
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    if !body
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

/// Go-style unquoting of `"..."`, `'...'` and `` `...` ``.
fn unquote(s: &str) -> Result<String, String> {
    let mut it = s.chars();
    let q = it.next().ok_or("empty string")?;
    if !(q == '"' || q == '\'' || q == '`') || !s.ends_with(q) || s.len() < 2 {
        return Err(format!("invalid quoted string {s}"));
    }
    let inner = &s[1..s.len() - 1];
    if q == '`' {
        return Ok(inner.to_string());
    }
    let (v, rest) = read_escaped(inner, None)?;
    if !rest.is_empty() {
        return Err(format!("invalid quoted string {s}"));
    }
    Ok(v)
}

/// Reads an escaped string body up to (not including) `end`, or to the end of input.
fn read_escaped(s: &str, end: Option<char>) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if Some(c) == end {
            return Ok((out, &s[i..]));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next().ok_or("unterminated escape")?;
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'v' => out.push('\x0b'),
            '\\' | '"' | '\'' => out.push(e),
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let mut h = String::new();
                for _ in 0..n {
                    h.push(chars.next().ok_or("short escape")?.1);
                }
                let v = u32::from_str_radix(&h, 16).map_err(|_| "bad escape")?;
                out.push(char::from_u32(v).ok_or("bad escape")?);
            }
            '0'..='7' => {
                let mut h = String::from(e);
                for _ in 0..2 {
                    h.push(chars.next().ok_or("short escape")?.1);
                }
                let v = u32::from_str_radix(&h, 8).map_err(|_| "bad escape")?;
                out.push(char::from_u32(v).ok_or("bad escape")?);
            }
            other => return Err(format!("unknown escape \\{other}")),
        }
    }
    match end {
        Some(_) => Err("unterminated string".into()),
        None => Ok((out, "")),
    }
}

/// Parses `metric{labels} values...`.
fn parse_series(line: &str) -> Result<(Labels, Vec<Option<f64>>), String> {
    let (labels, rest) = parse_metric(line)?;
    let vals = parse_values(rest)?;
    Ok((labels, vals))
}

fn parse_metric(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let name_len = s
        .bytes()
        .take_while(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        .count();
    let mut labels: Vec<Label> = Vec::new();
    if name_len > 0 {
        labels.push(Label::new("__name__", &s[..name_len]));
    }
    let mut rest = &s[name_len..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (lname, r) = if let Some(quoted) = rest.strip_prefix('"') {
                let (v, r) = read_escaped(quoted, Some('"'))?;
                (v, &r[1..])
            } else {
                let n = rest
                    .bytes()
                    .take_while(|&c| c.is_ascii_alphanumeric() || c == b'_')
                    .count();
                if n == 0 {
                    return Err(format!("invalid label name in {s:?}"));
                }
                (rest[..n].to_string(), &rest[n..])
            };
            let r = r.trim_start();
            let r = r
                .strip_prefix('=')
                .ok_or_else(|| format!("expected '=' in {s:?}"))?
                .trim_start();
            let q = r.chars().next().ok_or("unexpected end of labels")?;
            let (val, r) = match q {
                '"' | '\'' => {
                    let (v, r) = read_escaped(&r[1..], Some(q))?;
                    (v, &r[1..])
                }
                '`' => {
                    let end = r[1..].find('`').ok_or("unterminated raw string")?;
                    (r[1..1 + end].to_string(), &r[2 + end..])
                }
                _ => return Err(format!("expected quoted label value in {s:?}")),
            };
            labels.push(Label::new(lname, val));
            rest = r.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            }
        }
    } else if name_len == 0 {
        return Err(format!("invalid series description {s:?}"));
    }
    Ok((Labels::new(labels), rest))
}

fn parse_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("invalid item {item}"))?;
            out.extend(std::iter::repeat_n(None, n));
            continue;
        }
        if item == "stale" {
            out.push(Some(stale_nan()));
            continue;
        }
        if let Some(xpos) = item.rfind('x') {
            let head = &item[..xpos];
            let n: usize = item[xpos + 1..]
                .parse()
                .map_err(|_| format!("invalid item {item}"))?;
            // Split `a+b` / `a-b` at an operator not at the start and not after an exponent.
            let hb = head.as_bytes();
            let mut op = None;
            for k in 1..hb.len() {
                if (hb[k] == b'+' || hb[k] == b'-') && !matches!(hb[k - 1], b'e' | b'E') {
                    op = Some(k);
                    break;
                }
            }
            let (a, b) = match op {
                Some(k) => {
                    let a =
                        parse_number(&head[..k]).ok_or_else(|| format!("invalid item {item}"))?;
                    let b = parse_number(&head[k + 1..])
                        .ok_or_else(|| format!("invalid item {item}"))?;
                    (a, if hb[k] == b'-' { -b } else { b })
                }
                None => (
                    parse_number(head).ok_or_else(|| format!("invalid item {item}"))?,
                    0.0,
                ),
            };
            let mut v = a;
            out.push(Some(v));
            for _ in 0..n {
                v += b;
                out.push(Some(v));
            }
            continue;
        }
        out.push(Some(
            parse_number(item).ok_or_else(|| format!("invalid value {item}"))?,
        ));
    }
    Ok(out)
}

/// `util/almost.Equal` with ε = 1e-6 (stale markers only equal stale markers).
pub fn almost_equal(a: f64, b: f64) -> bool {
    const EPS: f64 = 1e-6;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let (sum, diff) = (a.abs() + b.abs(), (a - b).abs());
    if a == 0.0 || b == 0.0 || sum < f64::MIN_POSITIVE {
        return diff < EPS * f64::MIN_POSITIVE;
    }
    diff / sum.min(f64::MAX) < EPS
}

/// Functions whose result depends on the evaluation time even with pinned arguments.
const AT_UNSAFE_FUNCS: &[&str] = &[
    "time",
    "timestamp",
    "predict_linear",
    "year",
    "month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "hour",
    "minute",
    "start",
    "end",
    "range",
    "step",
];

/// Pins every selector and subquery without `@` (and not inside a subquery with one)
/// to `t`.
fn pin_at(e: &mut Expr, t: std::time::SystemTime) {
    match e {
        Expr::VectorSelector(vs) => {
            if vs.at.is_none() {
                vs.at = Some(AtModifier::At(t));
            }
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.at.is_none() {
                ms.vs.at = Some(AtModifier::At(t));
            }
        }
        Expr::Subquery(sq) => {
            if sq.at.is_none() {
                sq.at = Some(AtModifier::At(t));
            }
        }
        Expr::Aggregate(a) => {
            pin_at(&mut a.expr, t);
            if let Some(p) = a.param.as_mut() {
                pin_at(p, t);
            }
        }
        Expr::Unary(u) => pin_at(&mut u.expr, t),
        Expr::Binary(b) => {
            pin_at(&mut b.lhs, t);
            pin_at(&mut b.rhs, t);
        }
        Expr::Paren(p) => pin_at(&mut p.expr, t),
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| pin_at(a, t)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn ms_to_system_time(ms: i64) -> std::time::SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

fn run_eval(engine: &Engine, store: &MemStore, c: &EvalCase) -> Result<(), String> {
    run_eval_main(engine, store, c)?;
    // Like the upstream runner: with every selector pinned to `@ t`, the result must not
    // depend on the evaluation time.
    if c.range.is_none()
        && c.range_vector.is_none()
        && !c.fail
        && !AT_UNSAFE_FUNCS.iter().any(|f| calls(&c.expr, f))
        && let Ok(mut e) = super::engine::parse_expr(&c.expr)
    {
        let t = c.start;
        pin_at(&mut e, ms_to_system_time(t));
        let times: Vec<i64> = if t == 0 {
            vec![-1000, 0, 1000]
        } else {
            vec![-10 * t, 0, t / 5, t, 10 * t]
        };
        for tt in times {
            let res = engine.instant_query_expr(store, &e, tt);
            check_result(c, res, false).map_err(|m| format!("@-pinned check at {tt}ms: {m}"))?;
        }
    }
    // Like the upstream runner: an instant eval must also hold as a range query
    // `t-1m..t+1m` step 1m at its middle point.
    if c.range.is_none() && c.range_vector.is_none() && c.string.is_none() && !c.fail && !c.ordered
    {
        let t = c.start;
        let r = engine
            .range_query(store, &c.expr, t - 60_000, t + 60_000, 60_000)
            .map_err(|e| format!("range-query check: unexpected error: {e}"))?;
        let Value::Matrix(m) = r.value else {
            return Err("range-query check: expected a matrix".into());
        };
        let at_t: Vec<(Labels, f64)> = m
            .iter()
            .filter_map(|s| {
                s.samples
                    .iter()
                    .find(|p| p.t == t)
                    .map(|p| (s.labels.clone(), p.v))
            })
            .collect();
        let want: Vec<(Labels, f64)> = match c.scalar {
            Some(v) => vec![(Labels::empty(), v)],
            None => c
                .series
                .iter()
                .map(|(l, v)| (l.clone(), v.first().copied().flatten().unwrap_or(f64::NAN)))
                .collect(),
        };
        let ok = at_t.len() == want.len()
            && want
                .iter()
                .all(|(l, v)| at_t.iter().any(|(gl, gv)| gl == l && almost_equal(*gv, *v)));
        if !ok {
            let got: Vec<String> = at_t
                .iter()
                .map(|(l, v)| format!("{l} => {}", format_value(*v)))
                .collect();
            return Err(format!(
                "range-query check at t: expected {} series, got [{}]",
                want.len(),
                got.join(", ")
            ));
        }
    }
    Ok(())
}

fn run_eval_main(engine: &Engine, store: &MemStore, c: &EvalCase) -> Result<(), String> {
    let res: Result<QueryResult, EvalError> = match (c.range, c.range_vector) {
        (Some((s, e, st)), _) => engine.range_query(store, &c.expr, s, e, st),
        (None, Some((_, e, _))) => engine.instant_query(store, &c.expr, e),
        (None, None) => engine.instant_query(store, &c.expr, c.start),
    };
    check_result(c, res, true)
}

/// Compares a query result with the case's expectations (annotations only when
/// `annotations` is set).
fn check_result(
    c: &EvalCase,
    res: Result<QueryResult, EvalError>,
    annotations: bool,
) -> Result<(), String> {
    if c.fail {
        return match res {
            Err(e) => match &c.fail_text {
                Some(t) => t.check(&e.to_string()),
                None => Ok(()),
            },
            Ok(r) => Err(format!("expected error, got {}", describe(&r.value))),
        };
    }
    let r = res.map_err(|e| format!("unexpected error: {e}"))?;
    let warns = r.warns().count();
    let infos = r.infos().count();
    match c.warn.filter(|_| annotations) {
        Some(true) if warns == 0 => return Err("expected a warning, got none".into()),
        Some(false) if warns > 0 => {
            return Err(format!("expected no warnings, got {:?}", r.warnings));
        }
        _ => {}
    }
    match c.info.filter(|_| annotations) {
        Some(true) if infos == 0 => return Err("expected an info annotation, got none".into()),
        Some(false) if infos > 0 => {
            return Err(format!(
                "expected no info annotations, got {:?}",
                r.warnings
            ));
        }
        _ => {}
    }
    if let Some(want) = &c.string {
        return match &r.value {
            Value::String { v, .. } if v == want => Ok(()),
            other => Err(format!("expected string {want:?}, got {}", describe(other))),
        };
    }
    if let Some(want) = c.scalar {
        return match &r.value {
            Value::Scalar { v, .. } if almost_equal(*v, want) => Ok(()),
            other => Err(format!(
                "expected scalar {}, got {}",
                format_value(want),
                describe(other)
            )),
        };
    }
    match &r.value {
        Value::Vector(got) => {
            if c.range.is_some() || c.range_vector.is_some() {
                return Err(format!("expected matrix, got {}", describe(&r.value)));
            }
            if got.len() != c.series.len() {
                return Err(format!(
                    "expected {} series, got {}: {}",
                    c.series.len(),
                    got.len(),
                    describe(&r.value)
                ));
            }
            for (k, (labels, vals)) in c.series.iter().enumerate() {
                let want = vals.first().copied().flatten().unwrap_or(f64::NAN);
                let pos = if c.ordered {
                    (got[k].labels == *labels).then_some(k)
                } else {
                    got.iter().position(|s| s.labels == *labels)
                };
                let Some(pos) = pos else {
                    return Err(format!(
                        "expected series {labels} (at position {k}), got {}",
                        describe(&r.value)
                    ));
                };
                if !almost_equal(got[pos].v, want) {
                    return Err(format!(
                        "expected {labels} => {}, got {}",
                        format_value(want),
                        format_value(got[pos].v)
                    ));
                }
            }
            Ok(())
        }
        Value::Matrix(got) => {
            if c.ordered {
                return Err("expected ordered result, but query returned a matrix".into());
            }
            let (s, st) = match (c.range, c.range_vector) {
                (Some((s, _, st)), _) => (s, st),
                (None, Some((s, _, st))) => (s, st),
                _ => return Err(format!("expected vector, got {}", describe(&r.value))),
            };
            if got.len() != c.series.len() {
                return Err(format!(
                    "expected {} series, got {}: {}",
                    c.series.len(),
                    got.len(),
                    describe(&r.value)
                ));
            }
            if c.range.is_some() && got.windows(2).any(|w| w[0].labels > w[1].labels) {
                return Err("range query result is not sorted by labels".into());
            }
            for (labels, vals) in &c.series {
                let Some(g) = got.iter().find(|x| x.labels == *labels) else {
                    return Err(format!(
                        "expected series {labels}, got {}",
                        describe(&r.value)
                    ));
                };
                let want: Vec<Sample> = vals
                    .iter()
                    .enumerate()
                    .filter_map(|(k, v)| {
                        v.map(|v| Sample {
                            t: s + k as i64 * st,
                            v,
                        })
                    })
                    .collect();
                let ok = want.len() == g.samples.len()
                    && want
                        .iter()
                        .zip(&g.samples)
                        .all(|(a, b)| a.t == b.t && almost_equal(a.v, b.v));
                if !ok {
                    return Err(format!(
                        "expected {labels} => {}, got {}",
                        fmt_points(&want),
                        fmt_points(&g.samples)
                    ));
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected result {}", describe(other))),
    }
}

fn fmt_points(p: &[Sample]) -> String {
    let v: Vec<String> = p
        .iter()
        .map(|s| format!("{} @{}", format_value(s.v), s.t))
        .collect();
    format!("[{}]", v.join(", "))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Scalar { v, .. } => format!("scalar {}", format_value(*v)),
        Value::String { v, .. } => format!("string {v:?}"),
        Value::Vector(s) => {
            let v: Vec<String> = s
                .iter()
                .map(|x| format!("{} => {}", x.labels, format_value(x.v)))
                .collect();
            format!("vector [{}]", v.join(", "))
        }
        Value::Matrix(m) => {
            let v: Vec<String> = m
                .iter()
                .map(|x| format!("{} => {}", x.labels, fmt_points(&x.samples)))
                .collect();
            format!("matrix [{}]", v.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_values_expand() {
        let (l, v) =
            parse_series(r#"foo{a="b", c='d',} 1 _ 0+10x2 5-1x1 _x2 stale Inf -nan 1e-3+1x1"#)
                .unwrap();
        assert_eq!(
            l,
            Labels::from_pairs(&[("__name__", "foo"), ("a", "b"), ("c", "d")])
        );
        let f: Vec<String> = v
            .iter()
            .map(|x| match x {
                None => "_".into(),
                Some(v) if is_stale_nan(*v) => "stale".into(),
                Some(v) => format_value(*v),
            })
            .collect();
        assert_eq!(
            f,
            vec![
                "1", "_", "0", "10", "20", "5", "4", "_", "_", "stale", "+Inf", "NaN", "0.001",
                "1.001"
            ]
        );
        let (l, v) = parse_series("{} 3").unwrap();
        assert!(l.is_empty());
        assert_eq!(v, vec![Some(3.0)]);
    }

    #[test]
    fn numbers_parse_like_go() {
        assert_eq!(parse_number("0x1f"), Some(31.0));
        assert_eq!(parse_number("-0.2e-6"), Some(-0.2e-6));
        assert_eq!(parse_number("+Inf"), Some(f64::INFINITY));
        assert!(parse_number("NaN").unwrap().is_nan());
        assert_eq!(parse_number("foo"), None);
        assert_eq!(parse_number("{}"), None);
    }

    #[test]
    fn skips_experimental_and_histogram_cases() {
        assert!(skip_reason(Path::new("x/experimental/a.test"), "foo").is_some());
        assert!(skip_reason(Path::new("x/native-histograms/a.test"), "foo").is_some());
        assert!(skip_reason(Path::new("a.test"), "sort_by_label(foo, \"a\")").is_some());
        assert!(skip_reason(Path::new("a.test"), "rate(foo[5m])").is_none());
        assert!(skip_reason(Path::new("a.test"), "foo_info").is_none());
        assert!(skip_reason(Path::new("a.test"), "foo @ start()").is_none());
        assert!(skip_reason(Path::new("a.test"), "foo @ end() + step()").is_some());
    }

    #[test]
    fn expect_fail_checks_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fail.test");
        let case = |expect: &str| {
            format!("load 1m\n  x 1\n\neval instant at 0m topk(NaN, x)\n  {expect}\n\n")
        };
        let script = [
            // Prometheus's text, exactly or by regex: passes.
            case("expect fail msg: Parameter value is NaN"),
            case("expect fail regex: value is N.N$"),
            case("expect fail"),
            // Another text: fails.
            case("expect fail msg: Parameter value is not NaN"),
            case("expect fail msg: Parameter value"),
            case("expect fail regex: ^Param$"),
            "eval_fail instant at 0m topk(NaN, x)\n  expected_fail_message something else\n\n"
                .into(),
        ]
        .concat();
        std::fs::write(&path, script).unwrap();
        let s = run_file(&path, &mut std::io::sink());
        assert_eq!((s.passed, s.failed), (3, 4), "{s:?}");
    }

    #[test]
    fn almost_equal_rules() {
        assert!(almost_equal(f64::NAN, f64::NAN));
        assert!(!almost_equal(f64::NAN, stale_nan()));
        assert!(almost_equal(1.0, 1.000_000_1));
        assert!(!almost_equal(0.0, 1e-300));
    }

    #[test]
    fn subfolders_are_skipped() {
        let dir = conformance_dir();
        let mut files = run_dir_files(&dir.join("experimental"));
        files.extend(run_dir_files(&dir.join("native-histograms")));
        assert!(
            !files.is_empty(),
            "no scripts under {}/{{experimental,native-histograms}}",
            dir.display()
        );
        let mut out = Vec::new();
        let s = run_files(&files, &mut out);
        let text = String::from_utf8_lossy(&out);
        eprintln!("{text}");
        assert_eq!(s.failed, 0, "{text}");
        assert_eq!(s.passed, 0, "{text}");
        let reasons = skipped_reasons(&files);
        assert_eq!(reasons.len(), s.skipped);
    }

    fn run_dir_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "test"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Prometheus's test scripts: `$SHOAL_PROMQL_TESTS`, or `../shared/promql-tests`
    /// beside the checkout (where the team's machines and CI have them).
    fn conformance_dir() -> PathBuf {
        match std::env::var_os("SHOAL_PROMQL_TESTS") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/promql-tests"),
        }
    }

    #[test]
    fn conformance_top_level_files_pass() {
        let dir = conformance_dir();
        let files = run_dir_files(&dir);
        // Missing scripts are a failure, never a silent pass.
        assert!(
            !files.is_empty(),
            "the PromQL conformance scripts are missing from {} ({} found): put them \
             there (the team's shared/promql-tests beside the checkout) or set \
             SHOAL_PROMQL_TESTS",
            dir.display(),
            files.len()
        );
        for f in &files {
            let s = run_file(f, &mut std::io::sink());
            eprintln!(
                "{}: {} passed, {} failed, {} skipped",
                f.display(),
                s.passed,
                s.failed,
                s.skipped
            );
        }
        let mut out = Vec::new();
        let s = run_files(&files, &mut out);
        let text = String::from_utf8_lossy(&out);
        eprintln!("{text}");
        assert_eq!(s.failed, 0, "{text}");
        assert_eq!(
            s.skipped, 0,
            "nothing in the top-level files may be skipped: {text}"
        );
        assert!(s.passed >= 536, "{s:?}");
    }

    #[test]
    fn team_scripts_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/promql");
        let files = run_dir_files(&dir);
        assert!(!files.is_empty(), "no scripts in {}", dir.display());
        let mut out = Vec::new();
        let s = run_files(&files, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(s.failed, 0, "{text}");
        assert!(s.passed > 0);
    }
}
