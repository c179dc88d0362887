//! Zero-copy parsers for the two text exposition formats a scrape can return: the
//! Prometheus text format 0.0.4 and OpenMetrics 1.0 text.
//!
//! This module owns the byte-level grammar of both formats and nothing else: it does no
//! IO, keeps no state between scrapes and makes no decisions about which samples to keep
//! (`_created` series, staleness, limits and relabelling belong to the scraper).
//!
//! [`Parser`] is a pull iterator shaped like Prometheus's `textparse.Parser`: each call to
//! [`Parser::next`] returns one [`Entry`] whose strings borrow from the scrape buffer. The
//! only allocations are for label values and HELP texts that contain escapes (returned as
//! [`Cow::Owned`]) and for [`SeriesEntry::labels`]. A [`SeriesEntry`] keeps the label block
//! as written, already validated, and walks it again on demand, so the cached scrape path
//! (look [`SeriesEntry::raw`] up, skip label building) costs one validating pass — or
//! less: [`Parser::next_with`] asks the caller whether it knows a series' raw text before
//! validating its label block, and skips the validation of one it has seen valid before
//! (the same bytes, so the same verdict).
//!
//! The first error ends the parse: `next` returns it, and every later call returns the same
//! error. Errors carry the 1-based line number. Input is checked for valid UTF-8 once up
//! front; the error for an invalid byte is reported when the parse reaches its line, so
//! earlier lines are still returned in order.

use std::borrow::Cow;
use std::fmt;

use crate::model::labels::{Label, Labels, METRIC_NAME};

/// The `Accept` header a scraper sends. This is the exact string Prometheus 2.42 sends when
/// the protobuf format is off: OpenMetrics 1.0.0 first, then OpenMetrics 0.0.1 (q=0.75),
/// text 0.0.4 (q=0.5), anything (q=0.1).
pub const SCRAPE_ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The NaN bit pattern Prometheus stores for a `NaN` sample value (`value.NormalNaN`). It is
/// never the staleness marker.
pub const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// The text format of a scrape body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    PromText,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

/// Picks the parser from a scrape response's `Content-Type`, as Prometheus does: the media
/// type `application/openmetrics-text` (any parameters, any case) selects OpenMetrics,
/// anything else, including no header, the Prometheus text format.
pub fn format_from_content_type(ct: Option<&str>) -> Format {
    let Some(ct) = ct else {
        return Format::PromText;
    };
    let media_type = ct.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/openmetrics-text") {
        Format::OpenMetrics
    } else {
        Format::PromText
    }
}

/// A metric family's type from a `# TYPE` line. The text format's `untyped` is
/// [`MetricType::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricType {
    /// The type's name as Prometheus reports it in metadata (`"unknown"` for untyped).
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::GaugeHistogram => "gaugehistogram",
            MetricType::Summary => "summary",
            MetricType::Info => "info",
            MetricType::StateSet => "stateset",
            MetricType::Unknown => "unknown",
        }
    }

    fn parse(s: &str, format: Format) -> Option<MetricType> {
        Some(match (s, format) {
            ("counter", _) => MetricType::Counter,
            ("gauge", _) => MetricType::Gauge,
            ("histogram", _) => MetricType::Histogram,
            ("summary", _) => MetricType::Summary,
            ("untyped", Format::PromText) => MetricType::Unknown,
            ("unknown", Format::OpenMetrics) => MetricType::Unknown,
            ("gaugehistogram", Format::OpenMetrics) => MetricType::GaugeHistogram,
            ("info", Format::OpenMetrics) => MetricType::Info,
            ("stateset", Format::OpenMetrics) => MetricType::StateSet,
            _ => return None,
        })
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed line (or, for blank lines in the text format, nothing: they are skipped).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry<'a> {
    /// `# HELP metric text`, with escapes resolved.
    Help { metric: &'a str, text: Cow<'a, str> },
    /// `# TYPE metric type`.
    Type { metric: &'a str, kind: MetricType },
    /// `# UNIT metric unit` (OpenMetrics only).
    Unit { metric: &'a str, unit: &'a str },
    /// Any other `#` line (text format only; OpenMetrics has no free comments).
    Comment,
    /// A sample.
    Series(SeriesEntry<'a>),
}

/// One sample line. Strings borrow from the scrape buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesEntry<'a> {
    /// The exact bytes of the series identity (metric name + label block as written),
    /// used by the scraper as a cache key so known series skip label building.
    pub raw: &'a [u8],
    /// The metric name.
    pub name: &'a str,
    /// The sample value. A `NaN` in the input is stored with [`NORMAL_NAN_BITS`].
    pub value: f64,
    /// Milliseconds since the epoch, if the line had a timestamp (OpenMetrics float seconds
    /// are converted, truncating below the millisecond as Prometheus does).
    pub timestamp: Option<i64>,
    /// The text between `{` and `}` (validated), or empty.
    label_block: &'a str,
    /// Whether any label value in `label_block` contains a backslash escape.
    escaped: bool,
}

impl<'a> SeriesEntry<'a> {
    /// Builds the series' Labels (with `__name__`). Label values are unescaped; labels with
    /// empty values are dropped, as everywhere in [`Labels`].
    pub fn labels(&self) -> Labels {
        let mut v = Vec::with_capacity(1 + self.label_block.len() / 8);
        v.push(Label::new(METRIC_NAME, self.name));
        for (name, value) in self.label_pairs() {
            if !value.is_empty() {
                v.push(Label {
                    name: name.to_string(),
                    value: value.into_owned(),
                });
            }
        }
        // The parser rejected duplicate names and `__name__` in the block, so the names
        // are unique and an unstable sort gives the one sorted order.
        v.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Labels::from_sorted(v)
    }

    /// Iterates the label pairs in written order (without `__name__`), borrowing every value
    /// that has no escapes. Empty values are included.
    pub fn label_pairs(&self) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
        LabelPairs {
            src: self.label_block,
            pos: 0,
            escaped: self.escaped,
        }
    }
}

/// Walks a label block that the parser has already validated.
struct LabelPairs<'a> {
    src: &'a str,
    pos: usize,
    escaped: bool,
}

impl<'a> Iterator for LabelPairs<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.src.as_bytes();
        let mut pos = self.pos;
        while pos < b.len() && matches!(b[pos], b' ' | b'\t' | b',') {
            pos += 1;
        }
        if pos >= b.len() {
            self.pos = pos;
            return None;
        }
        let name_start = pos;
        while pos < b.len() && is_label_char(b[pos]) {
            pos += 1;
        }
        let name = self.src.get(name_start..pos).unwrap_or("");
        while pos < b.len() && b[pos] != b'"' {
            pos += 1;
        }
        pos += 1;
        let value_start = pos.min(b.len());
        let mut has_escape = false;
        if self.escaped {
            while pos < b.len() {
                match b[pos] {
                    b'"' => break,
                    b'\\' => {
                        has_escape = true;
                        pos += 2;
                    }
                    _ => pos += 1,
                }
            }
        } else {
            pos += b
                .get(value_start..)
                .and_then(|rest| rest.iter().position(|&c| c == b'"'))
                .unwrap_or(b.len() - value_start);
        }
        let value_end = pos.min(b.len());
        let raw = self.src.get(value_start..value_end).unwrap_or("");
        self.pos = (pos + 1).min(b.len());
        let value = if has_escape {
            Cow::Owned(unescape(raw, true))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name, value))
    }
}

/// A parse error: the 1-based line it occurred on and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

enum State {
    Running,
    Done,
    Failed(ParseError),
}

const INVALID_UTF8: &str = "invalid UTF-8 in input";
/// Prometheus's text for an invalid sequence inside a quoted label value.
const INVALID_UTF8_LABEL_VALUE: &str = "invalid UTF-8 label value";

/// A pull parser over one scrape body. See the module docs.
pub struct Parser<'a> {
    /// The longest valid UTF-8 prefix of the input.
    src: &'a str,
    /// `src` as bytes.
    b: &'a [u8],
    /// True when the input continues past `src` with an invalid UTF-8 sequence.
    truncated: bool,
    pos: usize,
    /// 1-based number of the line `pos` is on.
    line: usize,
    format: Format,
    state: State,
    /// Label names of the series being parsed, for the duplicate check (reused).
    names: Vec<&'a str>,
}

type PResult<T> = Result<T, String>;

/// What [`Parser::next_with`] asks before validating a label block.
type Known<'k> = Option<&'k mut dyn FnMut(&[u8]) -> bool>;

impl<'a> Parser<'a> {
    pub fn new(buf: &'a [u8], format: Format) -> Parser<'a> {
        let (src, truncated) = match std::str::from_utf8(buf) {
            Ok(s) => (s, false),
            Err(e) => {
                let valid = &buf[..e.valid_up_to()];
                // The prefix up to `valid_up_to` is valid by definition of that index.
                (std::str::from_utf8(valid).unwrap_or(""), true)
            }
        };
        Parser {
            src,
            b: src.as_bytes(),
            truncated,
            pos: 0,
            line: 1,
            format,
            state: State::Running,
            names: Vec::new(),
        }
    }

    /// The format this parser reads.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Pull the next entry; Ok(None) at the end. Errors carry the 1-based line number
    /// and a message like Prometheus's ("expected equal, got ...").
    #[allow(clippy::should_implement_trait)] // fallible, so not an Iterator
    pub fn next(&mut self) -> Result<Option<Entry<'a>>, ParseError> {
        self.next_inner(None)
    }

    /// [`Parser::next`], asking `known` about a series with a label block before that
    /// block is validated: `known` gets the series' [`SeriesEntry::raw`] (at most once per
    /// series, and not for every series) and answers whether these exact bytes passed
    /// this format's validation before; then their validation is skipped. Everything else
    /// on the line (value, timestamp, exemplar) is always checked.
    pub fn next_with(
        &mut self,
        known: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<Option<Entry<'a>>, ParseError> {
        self.next_inner(Some(known))
    }

    fn next_inner(&mut self, known: Known<'_>) -> Result<Option<Entry<'a>>, ParseError> {
        match &self.state {
            State::Running => {}
            State::Done => return Ok(None),
            State::Failed(e) => return Err(e.clone()),
        }
        let res = match self.format {
            Format::PromText => self.next_text(known),
            Format::OpenMetrics => self.next_om(known),
        };
        match res {
            Ok(Some(e)) => Ok(Some(e)),
            Ok(None) => {
                self.state = State::Done;
                Ok(None)
            }
            Err(msg) => {
                let e = ParseError {
                    line: self.line,
                    msg,
                };
                self.state = State::Failed(e.clone());
                Err(e)
            }
        }
    }

    // ---- Prometheus text 0.0.4 ----

    fn next_text(&mut self, known: Known<'_>) -> PResult<Option<Entry<'a>>> {
        loop {
            self.skip_ws();
            match self.peek() {
                None => {
                    return if self.truncated {
                        Err(INVALID_UTF8.to_string())
                    } else {
                        Ok(None)
                    };
                }
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                }
                Some(b'#') => return self.comment_text(),
                // Prometheus's text lexer reads a NUL where a line starts as the end.
                Some(0) => return Ok(None),
                Some(c) if is_metric_start(c) => return self.series(known).map(Some),
                Some(_) => return Err(self.fail("expected a valid start token")),
            }
        }
    }

    fn comment_text(&mut self) -> PResult<Option<Entry<'a>>> {
        self.pos += 1; // '#'
        if matches!(self.peek(), Some(b' ' | b'\t')) {
            self.skip_ws();
            if self.keyword(b"HELP") {
                return self.meta(Meta::Help).map(Some);
            }
            if self.keyword(b"TYPE") {
                return self.meta(Meta::Type).map(Some);
            }
        }
        let comment = self.rest_of_line()?;
        if comment.contains('\0') {
            // Prometheus's lexer stops at a NUL inside a comment: the input ends there.
            return Ok(None);
        }
        self.finish_line();
        Ok(Some(Entry::Comment))
    }

    // ---- OpenMetrics 1.0 ----

    fn next_om(&mut self, known: Known<'_>) -> PResult<Option<Entry<'a>>> {
        match self.peek() {
            None if self.truncated => Err(INVALID_UTF8.to_string()),
            None => Err("data does not end with # EOF".to_string()),
            Some(b'#') => self.comment_om(),
            Some(c) if is_metric_start(c) => self.series(known).map(Some),
            Some(_) => Err(self.fail("expected a valid start token")),
        }
    }

    fn comment_om(&mut self) -> PResult<Option<Entry<'a>>> {
        self.pos += 1; // '#'
        if self.peek() != Some(b' ') {
            return Err(self.fail("expected space after #"));
        }
        self.skip_ws();
        if self.keyword(b"HELP") {
            return self.meta(Meta::Help).map(Some);
        }
        if self.keyword(b"TYPE") {
            return self.meta(Meta::Type).map(Some);
        }
        if self.keyword(b"UNIT") {
            return self.meta(Meta::Unit).map(Some);
        }
        if self.b[self.pos..].starts_with(b"EOF") {
            self.pos += 3;
            if self.peek() == Some(b'\n') {
                self.pos += 1;
            }
            if self.pos < self.b.len() || self.truncated {
                return Err("unexpected data after # EOF".to_string());
            }
            return Ok(None);
        }
        Err(self.fail("expected HELP, TYPE, UNIT or EOF after #"))
    }

    // ---- shared pieces ----

    /// The rest of a `# HELP`, `# TYPE` or `# UNIT` line, after the keyword.
    fn meta(&mut self, kind: Meta) -> PResult<Entry<'a>> {
        let kw = kind.keyword();
        let Some(metric) = self.scan_metric_name() else {
            return Err(self.fail(&format!("expected metric name after {kw}")));
        };
        let text = if self.at_eol()? {
            ""
        } else if self.format == Format::PromText || matches!(self.peek(), Some(b' ' | b'\t')) {
            // One separator, then the rest of the line is the text. Prometheus's text
            // lexer drops whatever character follows the name.
            let rest = self.rest_of_line()?;
            let skip = rest.chars().next().map_or(0, char::len_utf8);
            &rest[skip..]
        } else {
            return Err(self.fail(&format!("expected text in {kw}")));
        };
        let entry = match kind {
            Meta::Help => {
                let text = if text.contains('\\') {
                    // OpenMetrics escapes HELP like label values; the text format only
                    // knows `\\` and `\n` there.
                    Cow::Owned(unescape(text, self.format == Format::OpenMetrics))
                } else {
                    Cow::Borrowed(text)
                };
                Entry::Help { metric, text }
            }
            Meta::Type => {
                let word = text.trim_matches([' ', '\t']);
                let Some(kind) = MetricType::parse(word, self.format) else {
                    return Err(format!("invalid metric type {word:?}"));
                };
                Entry::Type { metric, kind }
            }
            Meta::Unit => {
                let unit = text;
                let is_suffix = metric
                    .strip_suffix(unit)
                    .is_some_and(|prefix| prefix.ends_with('_'));
                if !unit.is_empty() && !is_suffix {
                    return Err(format!("unit {unit:?} not a suffix of metric {metric:?}"));
                }
                Entry::Unit { metric, unit }
            }
        };
        self.finish_line();
        Ok(entry)
    }

    fn series(&mut self, known: Known<'_>) -> PResult<Entry<'a>> {
        let start = self.pos;
        let name = self.scan_metric_name().unwrap_or("");
        let name_end = self.pos;
        self.skip_ws();
        let mut label_block = "";
        let mut escaped = false;
        let raw_end = if self.peek() == Some(b'{') {
            self.pos += 1;
            let block_start = self.pos;
            let seen = known.and_then(|known| {
                self.block_end(block_start)
                    .filter(|&(end, _)| known(&self.b[start..end]))
            });
            match seen {
                Some((end, esc)) => {
                    self.pos = end;
                    escaped = esc;
                }
                None => {
                    escaped = self.label_block()?;
                    self.check_duplicates()?;
                }
            }
            label_block = self.src.get(block_start..self.pos - 1).unwrap_or("");
            let end = self.pos;
            self.skip_ws();
            end
        } else {
            // The text lexer needs no blank between a bare name and its value
            // (`m-1` is `m` with value -1); OpenMetrics needs a space.
            if self.format == Format::OpenMetrics && self.pos == name_end && !self.at_eol()? {
                return Err(self.fail("expected whitespace after metric name"));
            }
            name_end
        };
        let raw = &self.b[start..raw_end];

        if self.at_eol()? {
            return Err(self.fail("expected value after metric"));
        }
        let tok = self.token()?;
        let Some(value) = parse_go_float(tok) else {
            return Err(format!(
                "invalid float value {tok:?} while parsing: {:?}",
                snippet(&self.src[start..self.pos])
            ));
        };
        self.skip_ws();

        let mut timestamp = None;
        match self.format {
            Format::PromText => {
                if !self.at_eol()? {
                    let tok = self.token()?;
                    let Some(ts) = parse_int_timestamp(tok) else {
                        return Err(format!(
                            "expected timestamp or new record, got {tok:?} while parsing: {:?}",
                            snippet(&self.src[start..self.pos])
                        ));
                    };
                    timestamp = Some(ts);
                    self.skip_ws();
                    if !self.at_eol()? {
                        return Err(self.fail("expected next entry after timestamp"));
                    }
                }
            }
            Format::OpenMetrics => {
                if !self.at_eol()? && self.peek() != Some(b'#') {
                    let tok = self.token()?;
                    let Some(secs) = parse_go_float(tok) else {
                        return Err(format!(
                            "invalid timestamp {tok:?} while parsing: {:?}",
                            snippet(&self.src[start..self.pos])
                        ));
                    };
                    if !secs.is_finite() {
                        return Err("invalid timestamp".to_string());
                    }
                    timestamp = Some(seconds_to_ms(tok, secs));
                    self.skip_ws();
                }
                if self.peek() == Some(b'#') {
                    self.exemplar(name)?;
                } else if !self.at_eol()? {
                    return Err(self.fail(if timestamp.is_some() {
                        "expected next entry after timestamp"
                    } else {
                        "expected timestamp or # symbol"
                    }));
                }
            }
        }
        self.finish_line();
        Ok(Entry::Series(SeriesEntry {
            raw,
            name,
            value,
            timestamp,
            label_block,
            escaped,
        }))
    }

    /// ` # {labels} value [timestamp]` after an OpenMetrics sample: validated, then dropped.
    fn exemplar(&mut self, metric: &str) -> PResult<()> {
        if !(metric.ends_with("_total") || metric.ends_with("_bucket")) {
            return Err(format!("metric name {metric} does not support exemplars"));
        }
        self.pos += 1; // '#'
        let before = self.pos;
        self.skip_ws();
        if self.pos == before || self.peek() != Some(b'{') {
            return Err(self.fail("expected exemplar labels after #"));
        }
        self.pos += 1;
        self.label_block()?;
        self.skip_ws();
        if self.at_eol()? {
            return Err(self.fail("expected value after exemplar labels"));
        }
        let tok = self.token()?;
        if parse_go_float(tok).is_none() {
            return Err(format!("invalid exemplar value {tok:?}"));
        }
        self.skip_ws();
        if !self.at_eol()? {
            let tok = self.token()?;
            match parse_go_float(tok) {
                Some(ts) if ts.is_finite() => {}
                _ => return Err(format!("invalid exemplar timestamp {tok:?}")),
            }
            self.skip_ws();
            if !self.at_eol()? {
                return Err(self.fail("expected next entry after exemplar timestamp"));
            }
        }
        Ok(())
    }

    /// Parses a label block after its `{` up to and including `}`; fills `self.names`.
    /// Returns whether any value contains an escape.
    fn label_block(&mut self) -> PResult<bool> {
        self.names.clear();
        let om = self.format == Format::OpenMetrics;
        let mut escaped = false;
        // After a pair: a separator may come (text: optional; OpenMetrics: required).
        let mut after_pair = false;
        let mut after_comma = false;
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'}') => {
                    if om && after_comma {
                        return Err(self.fail("expected label name"));
                    }
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b',') if after_pair => {
                    self.pos += 1;
                    after_pair = false;
                    after_comma = true;
                    continue;
                }
                _ => {}
            }
            if om && after_pair {
                return Err(self.fail("expected comma"));
            }
            let Some(name) = self.scan_label_name() else {
                return Err(self.fail("expected label name"));
            };
            self.skip_ws();
            if self.peek() != Some(b'=') {
                return Err(self.fail("expected equal"));
            }
            self.pos += 1;
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.fail("expected label value"));
            }
            self.pos += 1;
            escaped |= self.scan_quoted()?;
            self.names.push(name);
            after_pair = true;
            after_comma = false;
        }
    }

    /// Where the label block starting at `from` (after its `{`) ends — just after its
    /// `}` — and whether a value in it has a backslash, found without validating it:
    /// quoted values are skipped whole, so a `}` in one does not end the block. `None`
    /// at a line feed or the end of the input (left to [`Parser::label_block`], which
    /// counts lines and reports errors).
    fn block_end(&self, from: usize) -> Option<(usize, bool)> {
        let b = self.b;
        let mut pos = from;
        let mut escaped = false;
        loop {
            pos += b
                .get(pos..)?
                .iter()
                .position(|&c| class(c) & BLOCK_STOP != 0)?;
            match b[pos] {
                b'}' => return Some((pos + 1, escaped)),
                b'"' => loop {
                    pos += 1;
                    pos += b
                        .get(pos..)?
                        .iter()
                        .position(|&c| class(c) & VALUE_STOP != 0)?;
                    match b[pos] {
                        b'"' => {
                            pos += 1;
                            break;
                        }
                        b'\\' => {
                            escaped = true;
                            pos += 1;
                            if b.get(pos).is_none_or(|&c| c == b'\n') {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                },
                _ => return None,
            }
        }
    }

    /// Scans a quoted label value after its opening quote, through the closing one. The
    /// text format (like Prometheus's lexer) lets a raw line feed stand in a value.
    fn scan_quoted(&mut self) -> PResult<bool> {
        let mut escaped = false;
        loop {
            let rest = &self.b[self.pos..];
            let Some(i) = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c == b'\n')
            else {
                self.pos = self.b.len();
                return Err(if self.truncated {
                    INVALID_UTF8_LABEL_VALUE.to_string()
                } else {
                    "unterminated label value, got EOF".to_string()
                });
            };
            self.pos += i;
            match self.b[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.pos + 1) {
                        Some(b'\n') => {
                            return Err("unterminated label value, got LINEBREAK".to_string());
                        }
                        None if self.truncated => {
                            return Err(INVALID_UTF8_LABEL_VALUE.to_string());
                        }
                        None => return Err("unterminated label value, got EOF".to_string()),
                        Some(_) => self.pos += 2,
                    }
                }
                _ if self.format == Format::PromText => {
                    self.pos += 1;
                    self.line += 1;
                }
                _ => return Err("unterminated label value, got LINEBREAK".to_string()),
            }
        }
    }

    fn check_duplicates(&mut self) -> PResult<()> {
        let names = &mut self.names;
        let dup = if names.len() <= 8 {
            let mut dup = None;
            'outer: for i in 0..names.len() {
                if names[i] == METRIC_NAME {
                    dup = Some(names[i]);
                    break;
                }
                for j in 0..i {
                    if names[i] == names[j] {
                        dup = Some(names[i]);
                        break 'outer;
                    }
                }
            }
            dup
        } else {
            names.sort_unstable();
            names
                .windows(2)
                .find(|w| w[0] == w[1])
                .map(|w| w[0])
                .or_else(|| names.iter().copied().find(|n| *n == METRIC_NAME))
        };
        match dup {
            Some(n) => Err(format!("label name {n:?} is not unique")),
            None => Ok(()),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    /// True at a line feed or at the end of the input. The end of the valid UTF-8 prefix
    /// of a longer input is an error.
    fn at_eol(&self) -> PResult<bool> {
        match self.peek() {
            Some(b'\n') => Ok(true),
            Some(_) => Ok(false),
            None if self.truncated => Err(INVALID_UTF8.to_string()),
            None => Ok(true),
        }
    }

    fn finish_line(&mut self) {
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }

    /// Consumes `kw` when it is followed by a space or tab (and those).
    fn keyword(&mut self, kw: &[u8]) -> bool {
        let rest = &self.b[self.pos..];
        if rest.starts_with(kw) && matches!(rest.get(kw.len()), Some(b' ' | b'\t')) {
            self.pos += kw.len();
            self.skip_ws();
            true
        } else {
            false
        }
    }

    /// Everything up to (not including) the next line feed.
    fn rest_of_line(&mut self) -> PResult<&'a str> {
        let start = self.pos;
        let len = self.b[start..]
            .iter()
            .position(|&c| c == b'\n')
            .unwrap_or(self.b.len() - start);
        self.pos = start + len;
        if self.pos == self.b.len() && self.truncated {
            return Err(INVALID_UTF8.to_string());
        }
        Ok(snippet(&self.src[start..self.pos]))
    }

    /// A run of bytes up to whitespace or the end of the line.
    fn token(&mut self) -> PResult<&'a str> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if matches!(c, b' ' | b'\t' | b'\n') {
                break;
            }
            self.pos += 1;
        }
        if self.pos == self.b.len() && self.truncated {
            return Err(INVALID_UTF8.to_string());
        }
        Ok(snippet(&self.src[start..self.pos]))
    }

    fn scan_metric_name(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.peek().is_some_and(is_metric_start) {
            return None;
        }
        self.pos += 1;
        self.pos += self.b[self.pos..]
            .iter()
            .position(|&c| !is_metric_char(c))
            .unwrap_or(self.b.len() - self.pos);
        Some(snippet(&self.src[start..self.pos]))
    }

    fn scan_label_name(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.peek().is_some_and(is_label_start) {
            return None;
        }
        self.pos += 1;
        self.pos += self.b[self.pos..]
            .iter()
            .position(|&c| !is_label_char(c))
            .unwrap_or(self.b.len() - self.pos);
        Some(snippet(&self.src[start..self.pos]))
    }

    /// "`expected`, got `what is here`", in the shape of Prometheus's messages.
    fn fail(&self, expected: &str) -> String {
        let got = match self.peek() {
            None if self.truncated => return INVALID_UTF8.to_string(),
            None => "EOF".to_string(),
            Some(b'\n') => "LINEBREAK".to_string(),
            Some(_) => {
                let mut p = self.pos;
                while !self.src.is_char_boundary(p) {
                    p -= 1;
                }
                let rest = &self.src[p..];
                let end = rest
                    .char_indices()
                    .take_while(|&(i, c)| i == 0 || !matches!(c, ' ' | '\t' | '\n'))
                    .take(24)
                    .last()
                    .map_or(0, |(i, c)| i + c.len_utf8());
                format!("{:?}", &rest[..end])
            }
        };
        format!("{expected}, got {got}")
    }
}

#[derive(Clone, Copy)]
enum Meta {
    Help,
    Type,
    Unit,
}

impl Meta {
    fn keyword(self) -> &'static str {
        match self {
            Meta::Help => "HELP",
            Meta::Type => "TYPE",
            Meta::Unit => "UNIT",
        }
    }
}

/// At most 100 bytes of `s` (cut at a character boundary), for error messages.
fn snippet(s: &str) -> &str {
    let mut end = s.len().min(100);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Character classes, one table lookup per byte (the scans of names and label blocks
/// are a large part of a scrape's parse; label values are too short for `memchr`).
const METRIC_START: u8 = 1;
const METRIC_CHAR: u8 = 2;
const LABEL_START: u8 = 4;
const LABEL_CHAR: u8 = 8;
/// What ends a step of [`Parser::block_end`] outside a quoted value ...
const BLOCK_STOP: u8 = 16;
/// ... and inside one.
const VALUE_STOP: u8 = 32;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alpha = b.is_ascii_alphabetic() || b == b'_';
        let digit = b.is_ascii_digit();
        t[c] = if alpha { METRIC_START | LABEL_START } else { 0 }
            | if alpha || digit || b == b':' {
                METRIC_CHAR
            } else {
                0
            }
            | if b == b':' { METRIC_START } else { 0 }
            | if alpha || digit { LABEL_CHAR } else { 0 }
            | if matches!(b, b'"' | b'}' | b'\n') {
                BLOCK_STOP
            } else {
                0
            }
            | if matches!(b, b'"' | b'\\' | b'\n') {
                VALUE_STOP
            } else {
                0
            };
        c += 1;
    }
    t
};

fn class(c: u8) -> u8 {
    CLASS[c as usize]
}

fn is_metric_start(c: u8) -> bool {
    class(c) & METRIC_START != 0
}

fn is_metric_char(c: u8) -> bool {
    class(c) & METRIC_CHAR != 0
}

fn is_label_start(c: u8) -> bool {
    class(c) & LABEL_START != 0
}

fn is_label_char(c: u8) -> bool {
    class(c) & LABEL_CHAR != 0
}

/// Resolves `\\` and `\n` (and `\"` when `quote` is set); any other backslash stays as
/// written, like Go's `strings.Replacer` that Prometheus uses.
fn unescape(s: &str, quote: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let mut look = chars.clone();
        match look.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quote => out.push('"'),
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars = look;
    }
    out
}

/// Parses a float as Go's `strconv.ParseFloat` does for the forms Prometheus accepts:
/// decimal with optional sign, fraction and exponent; `Inf`/`Infinity` with optional sign
/// and `NaN`, case-insensitive. No hex, no underscores. Values that overflow are errors.
fn parse_go_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let (neg, rest) = match b.first()? {
        b'+' => (false, &b[1..]),
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"infinity") {
        return Some(if neg {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if b.eq_ignore_ascii_case(b"nan") {
        return Some(f64::from_bits(NORMAL_NAN_BITS));
    }
    let mut i = 0;
    let mut digits = 0;
    while i < rest.len() && rest[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < rest.len() && rest[i] == b'.' {
        i += 1;
        while i < rest.len() && rest[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    if i < rest.len() && (rest[i] == b'e' || rest[i] == b'E') {
        i += 1;
        if i < rest.len() && (rest[i] == b'+' || rest[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < rest.len() && rest[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    if i != rest.len() {
        return None;
    }
    // Plain integers of up to 15 digits (counters, buckets) are exact in an f64: skip
    // the general decimal parser for them.
    if digits == i && digits <= 15 {
        let n = rest.iter().fold(0u64, |n, &c| n * 10 + u64::from(c - b'0')) as f64;
        return Some(if neg { -n } else { n });
    }
    let v: f64 = s.parse().ok()?;
    if v.is_infinite() {
        return None; // out of range, as Go reports it
    }
    Some(v)
}

/// A text-format timestamp: an optionally signed decimal integer of milliseconds.
fn parse_int_timestamp(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Float seconds (already parsed as `secs`, finite) to integer milliseconds, truncating
/// toward zero. Plain decimals are converted exactly from their digits, so `1.001` is
/// 1001 ms, not 1000 from a float product just below it.
fn seconds_to_ms(tok: &str, secs: f64) -> i64 {
    let (neg, body) = match tok.as_bytes().first() {
        Some(b'-') => (true, &tok[1..]),
        Some(b'+') => (false, &tok[1..]),
        _ => (false, tok),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if int.len() <= 15
        && all_digits(int)
        && all_digits(frac)
        && !(int.is_empty() && frac.is_empty())
    {
        let mut ms: i64 = if int.is_empty() {
            0
        } else {
            int.parse::<i64>().unwrap_or(0) * 1000
        };
        let mut scale = 100;
        for d in frac.bytes().take(3) {
            ms += i64::from(d - b'0') * scale;
            scale /= 10;
        }
        return if neg { -ms } else { ms };
    }
    // Exponent forms and huge values: the float product, saturating.
    (secs * 1000.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &str, format: Format) -> Result<Vec<Entry<'_>>, ParseError> {
        let mut p = Parser::new(input.as_bytes(), format);
        let mut out = Vec::new();
        while let Some(e) = p.next()? {
            out.push(e);
        }
        Ok(out)
    }

    fn series(input: &str, format: Format) -> Vec<SeriesEntry<'_>> {
        all(input, format)
            .unwrap_or_else(|e| panic!("parse failed: {e}"))
            .into_iter()
            .filter_map(|e| match e {
                Entry::Series(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn one(input: &str) -> SeriesEntry<'_> {
        let mut s = series(input, Format::PromText);
        assert_eq!(s.len(), 1, "{input:?}");
        s.remove(0)
    }

    fn err(input: &[u8], format: Format) -> ParseError {
        let mut p = Parser::new(input, format);
        loop {
            match p.next() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("expected an error for {:?}", String::from_utf8_lossy(input)),
                Err(e) => return e,
            }
        }
    }

    fn pairs(s: &SeriesEntry<'_>) -> Vec<(String, String)> {
        s.label_pairs()
            .map(|(n, v)| (n.to_string(), v.into_owned()))
            .collect()
    }

    #[test]
    fn content_type_and_accept_header() {
        assert_eq!(format_from_content_type(None), Format::PromText);
        assert_eq!(
            format_from_content_type(Some("text/plain; version=0.0.4; charset=utf-8")),
            Format::PromText
        );
        assert_eq!(
            format_from_content_type(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            format_from_content_type(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        assert_eq!(format_from_content_type(Some("")), Format::PromText);
        assert_eq!(
            format_from_content_type(Some("application/json")),
            Format::PromText
        );
        assert!(SCRAPE_ACCEPT_HEADER.starts_with("application/openmetrics-text;version=1.0.0,"));
        assert!(SCRAPE_ACCEPT_HEADER.ends_with("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"));
    }

    #[test]
    fn full_text_exposition() {
        let input = "# HELP go_gc_duration_seconds A summary of the GC invocation durations.\n\
# \tTYPE go_gc_duration_seconds summary\n\
go_gc_duration_seconds{quantile=\"0\"} 4.9351e-05\n\
go_gc_duration_seconds{quantile=\"0.25\",} 7.424100000000001e-05\n\
go_gc_duration_seconds_sum 0.0001\n\
go_gc_duration_seconds_count 3\n\
\n\
# A normal comment.\n\
#\n\
# TYPE nohelp untyped\n\
nohelp{a=\"b\"} 1 1520879607789\n\
   \t\n\
# HELP esc Escaped \\\\ backslash and \\n newline and \\\" quote\n\
esc NaN\n\
pinf +Inf\n\
ninf -Inf\n\
inf Inf\n\
neg -1.5e-3   -42\n\
tabs\t\t7\t\t8";
        let e = all(input, Format::PromText).unwrap();
        assert_eq!(e.len(), 17, "{e:#?}");
        assert_eq!(
            e[0],
            Entry::Help {
                metric: "go_gc_duration_seconds",
                text: Cow::Borrowed("A summary of the GC invocation durations.")
            }
        );
        assert_eq!(
            e[1],
            Entry::Type {
                metric: "go_gc_duration_seconds",
                kind: MetricType::Summary
            }
        );
        let Entry::Series(s) = &e[3] else { panic!() };
        assert_eq!(s.raw, b"go_gc_duration_seconds{quantile=\"0.25\",}");
        assert_eq!(s.value, 7.424100000000001e-05);
        assert_eq!(pairs(s), vec![("quantile".into(), "0.25".into())]);
        assert_eq!(e[6], Entry::Comment);
        assert_eq!(e[7], Entry::Comment);
        assert_eq!(
            e[8],
            Entry::Type {
                metric: "nohelp",
                kind: MetricType::Unknown
            }
        );
        let Entry::Series(s) = &e[9] else { panic!() };
        assert_eq!(s.timestamp, Some(1520879607789));
        // Text-format HELP knows only \\ and \n; \" stays as written.
        assert_eq!(
            e[10],
            Entry::Help {
                metric: "esc",
                text: Cow::Owned("Escaped \\ backslash and \n newline and \\\" quote".into())
            }
        );
        let vals: Vec<(&str, f64, Option<i64>)> = e[11..]
            .iter()
            .map(|e| match e {
                Entry::Series(s) => (s.name, s.value, s.timestamp),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(vals[0].0, "esc");
        assert_eq!(vals[0].1.to_bits(), NORMAL_NAN_BITS);
        assert!(!crate::model::is_stale_nan(vals[0].1));
        assert_eq!(vals[1].1, f64::INFINITY);
        assert_eq!(vals[2].1, f64::NEG_INFINITY);
        assert_eq!(vals[3].1, f64::INFINITY);
        assert_eq!(vals[4], ("neg", -1.5e-3, Some(-42)));
        assert_eq!(vals[5], ("tabs", 7.0, Some(8)));
    }

    #[test]
    fn dependencies_note_correctness_probes() {
        let s = one("m{path=\"/a,b\",x=\"1\"} 1\n");
        assert_eq!(
            pairs(&s),
            vec![("path".into(), "/a,b".into()), ("x".into(), "1".into())]
        );
        let s = one("m{q=\"a=b\"} 1\n");
        assert_eq!(pairs(&s), vec![("q".into(), "a=b".into())]);
        let s = one("m{q=\"say \\\"hi\\\"\"} 1\n");
        assert_eq!(pairs(&s), vec![("q".into(), "say \"hi\"".into())]);
        let s = one("m{q=\"}\"} 1\n");
        assert_eq!(pairs(&s), vec![("q".into(), "}".into())]);
        assert_eq!(s.value, 1.0);
        let s = one("job:rate5m{job=\"a\"} 1\n");
        assert_eq!(s.name, "job:rate5m");
        assert_eq!(
            s.labels(),
            Labels::from_pairs(&[("__name__", "job:rate5m"), ("job", "a")])
        );
        // The same family with different label names is fine.
        let s = series(
            "# TYPE f counter\nf{a=\"1\"} 1\nf{b=\"2\",c=\"3\"} 2\nf 3\n",
            Format::PromText,
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].labels(), Labels::from_pairs(&[("__name__", "f")]));
    }

    #[test]
    fn label_value_escapes_and_unicode() {
        let s = one(
            "m{a=\"back\\\\slash\",b=\"new\\nline\",c=\"q\\\"\",d=\"{,=}\",e=\"ünï ☃\",f=\"\\x\"} 1",
        );
        assert_eq!(
            pairs(&s),
            vec![
                ("a".into(), "back\\slash".into()),
                ("b".into(), "new\nline".into()),
                ("c".into(), "q\"".into()),
                ("d".into(), "{,=}".into()),
                ("e".into(), "ünï ☃".into()),
                ("f".into(), "\\x".into()),
            ]
        );
        // Unescaped values are borrowed.
        let s = one("m{a=\"plain\",b=\"x\\\\\"} 1");
        let p: Vec<_> = s.label_pairs().collect();
        assert!(matches!(p[0].1, Cow::Borrowed("plain")));
        assert!(matches!(&p[1].1, Cow::Owned(v) if v == "x\\"));
        // \\n is a backslash then n, not a newline.
        let s = one("m{a=\"\\\\n\"} 1");
        assert_eq!(pairs(&s), vec![("a".into(), "\\n".into())]);
    }

    #[test]
    fn labels_builds_sorted_set_with_name_and_drops_empty() {
        let s = one("m{z=\"1\",a=\"2\",e=\"\"} 1");
        assert_eq!(
            s.labels(),
            Labels::from_pairs(&[("__name__", "m"), ("a", "2"), ("z", "1")])
        );
        assert_eq!(pairs(&s).len(), 3);
    }

    #[test]
    fn whitespace_variants_prometheus_accepts() {
        let s = one("  m { a = \"1\" , b=\"2\" } 5 10 \n");
        assert_eq!(s.name, "m");
        assert_eq!(s.raw, b"m { a = \"1\" , b=\"2\" }");
        assert_eq!(
            pairs(&s),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!((s.value, s.timestamp), (5.0, Some(10)));
        // No comma between pairs and no space after the block: the text lexer allows both.
        let s = one("m{a=\"1\" b=\"2\"}3");
        assert_eq!(pairs(&s).len(), 2);
        assert_eq!(s.value, 3.0);
        let s = one("m{} 1");
        assert_eq!(s.raw, b"m{}");
        assert_eq!(pairs(&s), vec![]);
        let s = one("m 1");
        assert_eq!(s.raw, b"m");
    }

    #[test]
    fn go_float_syntax() {
        for (s, v) in [
            ("1", 1.0),
            ("-0", -0.0),
            ("+1.5", 1.5),
            ("1.", 1.0),
            (".5", 0.5),
            ("1e3", 1000.0),
            ("1E+3", 1000.0),
            ("2.5e-3", 0.0025),
            ("inf", f64::INFINITY),
            ("-infinity", f64::NEG_INFINITY),
            ("+INF", f64::INFINITY),
            ("1e-400", 0.0),
        ] {
            assert_eq!(parse_go_float(s), Some(v), "{s}");
        }
        assert!(parse_go_float("nan").unwrap().is_nan());
        assert!(parse_go_float("NaN").unwrap().is_nan());
        // Integers take a shortcut; it must give the general parser's bits (sign of
        // zero included), and long ones still go the general way.
        for s in [
            "0",
            "-0",
            "+0",
            "7",
            "-42",
            "007",
            "999999999999999",
            "-123456789012345",
            "1234567890123456",
            "9007199254740993",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_go_float(s).map(f64::to_bits),
                s.parse::<f64>().ok().map(f64::to_bits),
                "{s}"
            );
        }
        for s in [
            "", ".", "+", "e5", "1e", "1e+", "0x1p3", "0x10", "1_000", "+nan", "1.2.3", "1e400",
            "--1", "1 ", "infinite", "in",
        ] {
            assert_eq!(parse_go_float(s), None, "{s}");
        }
    }

    #[test]
    fn text_errors_with_line_numbers() {
        let cases: &[(&[u8], usize, &str)] = &[
            (
                b"a 1\nm{a\"b\"} 1\n",
                2,
                "expected equal, got \"\\\"b\\\"}\"",
            ),
            (b"m{a=b} 1", 1, "expected label value, got \"b}\""),
            (
                b"m{1a=\"b\"} 1",
                1,
                "expected label name, got \"1a=\\\"b\\\"}\"",
            ),
            (b"m{,} 1", 1, "expected label name"),
            (b"m{a=\"1\",,b=\"2\"} 1", 1, "expected label name"),
            (
                b"m{a=\"1\"}\n",
                1,
                "expected value after metric, got LINEBREAK",
            ),
            (b"m{a=\"1", 1, "unterminated label value"),
            (b"\n\nm\n", 3, "expected value after metric, got LINEBREAK"),
            (b"m", 1, "expected value after metric, got EOF"),
            (b"m abc", 1, "invalid float value \"abc\""),
            (
                b"m 1 2 3",
                1,
                "expected next entry after timestamp, got \"3\"",
            ),
            (b"m 1 1.5", 1, "expected timestamp or new record"),
            (
                b"m 1 99999999999999999999",
                1,
                "expected timestamp or new record",
            ),
            (b"m 1\r\n", 1, "invalid float value \"1\\r\""),
            (b"m 0x10", 1, "invalid float value"),
            (b"m 1e999", 1, "invalid float value"),
            (b"m{a=\"1\",a=\"2\"} 1", 1, "label name \"a\" is not unique"),
            (
                b"m{__name__=\"x\"} 1",
                1,
                "label name \"__name__\" is not unique",
            ),
            (b"x 1\n# TYPE m bogus\n", 2, "invalid metric type \"bogus\""),
            (b"# TYPE m gaugehistogram\n", 1, "invalid metric type"),
            (
                b"# HELP\tm\n# HELP 1m x\n",
                2,
                "expected metric name after HELP",
            ),
            (
                b"{a=\"b\"} 1",
                1,
                "expected a valid start token, got \"{a=\\\"b\\\"}\"",
            ),
            (b"m.x 1", 1, "invalid float value \".x\""),
            (b"m{a=\"1\nx} 1\n", 3, "unterminated label value, got EOF"),
        ];
        for (input, line, msg) in cases {
            let e = err(input, Format::PromText);
            assert_eq!(e.line, *line, "{:?}: {e}", String::from_utf8_lossy(input));
            assert!(
                e.msg.contains(msg),
                "{:?}: got {:?}, want {msg:?}",
                String::from_utf8_lossy(input),
                e.msg
            );
        }
        let long = format!("m{{a=\"{}\"}} x", "☃".repeat(200));
        let e = err(long.as_bytes(), Format::PromText);
        assert!(e.msg.len() < 200, "{e}");
        let e = err(b"a 1\nb{", Format::PromText);
        assert_eq!(e.to_string(), "line 2: expected label name, got EOF");
    }

    #[test]
    fn prometheus_text_lexer_quirks() {
        // No blank needed between a bare name and a value that cannot continue the name.
        let s = one("m-1 1");
        assert_eq!((s.name, s.value, s.timestamp), ("m", -1.0, Some(1)));
        // A raw line feed inside a quoted label value is part of the value.
        let mut p = Parser::new(b"m{a=\"x\ny\"} 1\nn{ 2\n", Format::PromText);
        let Some(Entry::Series(s)) = p.next().unwrap() else {
            panic!()
        };
        assert_eq!(pairs(&s), vec![("a".into(), "x\ny".into())]);
        assert_eq!(p.next().unwrap_err().line, 3);
        // NUL: fine inside values and HELP; where a line starts, or in a comment, it ends
        // the input.
        let s = one("m{a=\"abc\0\"} 1");
        assert_eq!(pairs(&s), vec![("a".into(), "abc\0".into())]);
        assert_eq!(
            all("# HELP m foo\0bar\n", Format::PromText).unwrap(),
            vec![Entry::Help {
                metric: "m",
                text: Cow::Borrowed("foo\0bar")
            }]
        );
        assert_eq!(series("a 1\n\0garbage{\nb 2\n", Format::PromText).len(), 1);
        assert_eq!(all("# c\0x\nm{ 1\n", Format::PromText).unwrap(), vec![]);
        // The character after a HELP name is dropped whatever it is.
        assert_eq!(
            all("# HELP m{x} y\n", Format::PromText).unwrap(),
            vec![Entry::Help {
                metric: "m",
                text: Cow::Borrowed("x} y")
            }]
        );
        // Error cases from Prometheus's own parser tests.
        for (input, msg) in [
            (&b"a{b='c'} 1\n"[..], "expected label value"),
            (b"a{b=\n", "expected label value"),
            (b"a{\xff=\"foo\"} 1\n", "UTF-8"),
            (b"a{b=\"\xff\"} 1\n", "UTF-8"),
            (b"a true\n", "invalid float value \"true\""),
            (b"something_weird{problem=\"", "unterminated label value"),
            (b"empty_label_name{=\"\"} 0", "expected label name"),
            (b"foo 1_2\n", "invalid float value"),
            (b"foo 0x1p-3\n", "invalid float value"),
            (b"foo 0x1P-3\n", "invalid float value"),
            (b"foo 0 1_2\n", "expected timestamp or new record"),
            (b"a{b=\0\"ssss\"} 1\n", "expected label value"),
            (b"a{b\0=\"hiih\"}\t1", "expected equal"),
            (b"a\0{b=\"ddd\"} 1", "invalid float value"),
        ] {
            let e = err(input, Format::PromText);
            assert!(e.msg.contains(msg), "{input:?}: {e}");
        }
    }

    #[test]
    fn openmetrics_is_stricter() {
        for (input, msg) in [
            (&b"m{a=\"x\ny\"} 1\n# EOF\n"[..], "unterminated label value"),
            (b"m-1 1\n# EOF\n", "expected whitespace after metric name"),
            (b"# HELP m{x} y\n# EOF\n", "expected text in HELP"),
            (b" m 1\n# EOF\n", "expected a valid start token"),
            (b"\0\n# EOF\n", "expected a valid start token"),
        ] {
            let e = err(input, Format::OpenMetrics);
            assert!(e.msg.contains(msg), "{input:?}: {e}");
        }
    }

    #[test]
    fn many_labels_duplicate_check_uses_sort_path() {
        let mut line = String::from("m{");
        for i in 0..20 {
            line.push_str(&format!("l{i}=\"v\","));
        }
        let ok = format!("{line}}} 1");
        assert_eq!(pairs(&one(&ok)).len(), 20);
        let bad = format!("{line}l7=\"x\"}} 1");
        assert!(
            err(bad.as_bytes(), Format::PromText)
                .msg
                .contains("\"l7\" is not unique")
        );
    }

    #[test]
    fn help_edge_cases() {
        let e = all(
            "# HELP a\n# HELP b \n# HELP c  two\n# HELP d trailing\\\n# HELP e ☃ \\\\n\n",
            Format::PromText,
        )
        .unwrap();
        let texts: Vec<String> = e
            .iter()
            .map(|e| match e {
                Entry::Help { text, .. } => text.to_string(),
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(texts, vec!["", "", " two", "trailing\\", "☃ \\n"]);
        // `#HELP` without a space, and HELP without a following blank, are comments.
        assert_eq!(
            all("#HELP m x\n# HELP\n# HELPER m\n", Format::PromText).unwrap(),
            vec![Entry::Comment, Entry::Comment, Entry::Comment]
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_on_its_line() {
        // Inside a label value the error is Prometheus's.
        let mut p = Parser::new(b"m{a=\"\xff\"} 1\n", Format::PromText);
        assert_eq!(p.next().unwrap_err().msg, "invalid UTF-8 label value");
        let cases: &[(&[u8], usize)] = &[
            (b"a 1\nm{a=\"\xff\"} 1\n", 2),
            (b"a 1\nb 2\n# HELP m \xc3\x28\n", 3),
            (b"# comment \xff\n", 1),
            (b"a 1\nm 1\xff\n", 2),
            (b"m \xff", 1),
            (b"m{a=\"x\\\xff\"} 1", 1),
            (b"a 1\n\xff", 2),
        ];
        for (input, line) in cases {
            let mut p = Parser::new(input, Format::PromText);
            let mut n = 0;
            let e = loop {
                match p.next() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => panic!("no error for {input:?}"),
                    Err(e) => break e,
                }
            };
            assert_eq!(e.line, *line, "{input:?}: {e}");
            assert!(e.msg.contains("UTF-8"), "{input:?}: {e}");
            assert_eq!(
                n,
                line - 1,
                "{input:?}: entries before the bad line are returned"
            );
        }
    }

    fn strs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
    }

    /// Every series with `next_with`, answering `known` from `seen`; also returns the
    /// raw texts `known` was asked about.
    fn with_known(
        input: &str,
        format: Format,
        seen: &[&str],
    ) -> (Result<Vec<SeriesEntry<'static>>, ParseError>, Vec<String>) {
        let input: &'static str = Box::leak(input.to_owned().into_boxed_str());
        let mut p = Parser::new(input.as_bytes(), format);
        let mut asked = Vec::new();
        let mut out = Vec::new();
        loop {
            let mut known = |raw: &[u8]| {
                let raw = std::str::from_utf8(raw).unwrap().to_owned();
                let hit = seen.contains(&raw.as_str());
                asked.push(raw);
                hit
            };
            match p.next_with(&mut known) {
                Ok(Some(Entry::Series(s))) => out.push(s),
                Ok(Some(_)) => {}
                Ok(None) => return (Ok(out), asked),
                Err(e) => return (Err(e), asked),
            }
        }
    }

    #[test]
    fn known_series_skip_label_validation_and_give_the_same_entries() {
        let input = "a{x=\"}{\",y=\"q\\\"}\"} 1\nb 2\nc{z=\"1\\\\\"} 3 17\n";
        let (plain, asked) = with_known(input, Format::PromText, &[]);
        let plain = plain.unwrap();
        // Asked once per series with a label block, with exactly its raw text; a `}` or
        // an escaped quote inside a value does not end the block.
        assert_eq!(asked, ["a{x=\"}{\",y=\"q\\\"}\"}", "c{z=\"1\\\\\"}"]);
        let (fast, _) = with_known(input, Format::PromText, &[&asked[0], &asked[1]]);
        let fast = fast.unwrap();
        assert_eq!(fast, plain);
        assert_eq!(strs(&pairs(&fast[0])), [("x", "}{"), ("y", "q\"}")]);
        assert_eq!(strs(&pairs(&fast[2])), [("z", "1\\")]);
        assert_eq!(fast[2].timestamp, Some(17));

        // Known bytes are not validated again (the caller vouches for them) ...
        let om = "m{a=\"1\" b=\"2\"} 1\n# EOF\n";
        assert!(with_known(om, Format::OpenMetrics, &[]).0.is_err());
        let (r, _) = with_known(om, Format::OpenMetrics, &["m{a=\"1\" b=\"2\"}"]);
        assert_eq!(strs(&pairs(&r.unwrap()[0])), [("a", "1"), ("b", "2")]);
        // ... but the rest of the line is.
        let (r, _) = with_known("m{a=\"1\"} x\n", Format::PromText, &["m{a=\"1\"}"]);
        assert_eq!(r.unwrap_err().line, 1);
        // A value across a line feed (text format) is left to the validating path, which
        // keeps the line count: the error below is on line 4.
        let input = "m{a=\"x\ny\"} 1\nm{a=\"x\ny\"} z\n";
        let (r, asked) = with_known(input, Format::PromText, &["m{a=\"x\ny\"}"]);
        assert!(asked.is_empty());
        assert_eq!(r.unwrap_err().line, 4);
    }

    #[test]
    fn name_classes_are_prometheus_name_rules() {
        for c in 0..=255u8 {
            let alpha = c.is_ascii_alphabetic() || c == b'_';
            assert_eq!(is_metric_start(c), alpha || c == b':', "{c}");
            assert_eq!(
                is_metric_char(c),
                alpha || c == b':' || c.is_ascii_digit(),
                "{c}"
            );
            assert_eq!(is_label_start(c), alpha, "{c}");
            assert_eq!(is_label_char(c), alpha || c.is_ascii_digit(), "{c}");
            assert_eq!(class(c) & BLOCK_STOP != 0, b"\"}\n".contains(&c), "{c}");
            assert_eq!(class(c) & VALUE_STOP != 0, b"\"\\\n".contains(&c), "{c}");
        }
    }

    #[test]
    fn error_stops_iteration() {
        let mut p = Parser::new(b"a 1\nb{ 2\nc 3\n", Format::PromText);
        assert!(matches!(p.next(), Ok(Some(Entry::Series(_)))));
        let e1 = p.next().unwrap_err();
        assert_eq!(e1.line, 2);
        assert_eq!(p.next().unwrap_err(), e1);
        assert_eq!(p.next().unwrap_err(), e1);
        let mut p = Parser::new(b"a 1", Format::PromText);
        assert!(p.next().unwrap().is_some());
        assert_eq!(p.next().unwrap(), None);
        assert_eq!(p.next().unwrap(), None);
        assert_eq!(all("", Format::PromText).unwrap(), vec![]);
        assert_eq!(all("\n\n  \n", Format::PromText).unwrap(), vec![]);
    }

    const OM: &str = "# HELP foo_seconds Time spent in \\\"foo\\\".\n\
# TYPE foo_seconds counter\n\
# UNIT foo_seconds seconds\n\
foo_seconds_total{a=\"1\"} 17.0 1520879607.789 # {id=\"counter-test\"} 5\n\
foo_seconds_created{a=\"1\"} 1520430000.123\n\
# TYPE hist histogram\n\
hist_bucket{le=\"0.5\"} 1 # {trace=\"x\",span=\"y\"} 0.3 1520879607.1\n\
hist_bucket{le=\"+Inf\"} 2\n\
hist_count 2\n\
hist_sum 0.9\n\
# TYPE ss stateset\n\
ss{ss=\"a\"} 1\n\
# TYPE i info\n\
i_info{v=\"1.2\"} 1\n\
# TYPE gh gaugehistogram\n\
gh_gcount 1 -1.5\n\
# TYPE u unknown\n\
u 1 1e3\n\
# EOF\n";

    #[test]
    fn openmetrics_full() {
        let e = all(OM, Format::OpenMetrics).unwrap();
        assert_eq!(
            e[0],
            Entry::Help {
                metric: "foo_seconds",
                text: Cow::Owned("Time spent in \"foo\".".into())
            }
        );
        assert_eq!(
            e[2],
            Entry::Unit {
                metric: "foo_seconds",
                unit: "seconds"
            }
        );
        let s: Vec<_> = e
            .iter()
            .filter_map(|e| match e {
                Entry::Series(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(s.len(), 10);
        assert_eq!(s[0].name, "foo_seconds_total");
        assert_eq!(s[0].raw, b"foo_seconds_total{a=\"1\"}");
        assert_eq!((s[0].value, s[0].timestamp), (17.0, Some(1520879607789)));
        assert_eq!(s[1].name, "foo_seconds_created");
        assert_eq!(s[1].value, 1520430000.123);
        assert_eq!(s[2].timestamp, None);
        assert_eq!(pairs(s[2]), vec![("le".into(), "0.5".into())]);
        assert_eq!(s[3].labels().get("le"), Some("+Inf"));
        assert_eq!(s[8].timestamp, Some(-1500));
        assert_eq!(s[9].timestamp, Some(1_000_000));
        let kinds: Vec<MetricType> = e
            .iter()
            .filter_map(|e| match e {
                Entry::Type { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                MetricType::Counter,
                MetricType::Histogram,
                MetricType::StateSet,
                MetricType::Info,
                MetricType::GaugeHistogram,
                MetricType::Unknown
            ]
        );
        // `# EOF` without a trailing newline is fine too.
        assert_eq!(all("m 1\n# EOF", Format::OpenMetrics).unwrap().len(), 1);
        assert_eq!(all("# EOF\n", Format::OpenMetrics).unwrap(), vec![]);
    }

    #[test]
    fn openmetrics_timestamps_to_ms() {
        for (tok, ms) in [
            ("1.001", 1001),
            ("1520879607.789", 1520879607789),
            ("0.0009", 0),
            ("-0.0019", -1),
            ("12", 12000),
            (".5", 500),
            ("1e3", 1_000_000),
            ("1.5e-3", 1),
        ] {
            let f = parse_go_float(tok).unwrap();
            assert_eq!(seconds_to_ms(tok, f), ms, "{tok}");
        }
    }

    #[test]
    fn openmetrics_errors() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"m 1\n", 2, "data does not end with # EOF"),
            (b"m 1", 1, "data does not end with # EOF"),
            (b"", 1, "data does not end with # EOF"),
            (b"m 1\n# EOF\nm 2\n", 2, "unexpected data after # EOF"),
            (b"m 1\n# EOF\n\n", 2, "unexpected data after # EOF"),
            (
                b"m 1\n\n# EOF\n",
                2,
                "expected a valid start token, got LINEBREAK",
            ),
            (b"# comment\n# EOF\n", 1, "expected HELP, TYPE, UNIT or EOF"),
            (b"#EOF\n", 1, "expected space after #"),
            (b"m{a=\"1\",} 1\n# EOF\n", 1, "expected label name"),
            (b"m{a=\"1\" b=\"2\"} 1\n# EOF\n", 1, "expected comma"),
            (b"m 1 NaN\n# EOF\n", 1, "invalid timestamp"),
            (b"m 1 +Inf\n# EOF\n", 1, "invalid timestamp"),
            (b"m 1 abc\n# EOF\n", 1, "invalid timestamp \"abc\""),
            (
                b"# TYPE m untyped\n# EOF\n",
                1,
                "invalid metric type \"untyped\"",
            ),
            (
                b"# UNIT m_bytes seconds\n# EOF\n",
                1,
                "unit \"seconds\" not a suffix of metric \"m_bytes\"",
            ),
            (b"# UNIT seconds seconds\n# EOF\n", 1, "not a suffix"),
            (
                b"m 1 # {a=\"b\"} 1\n# EOF\n",
                1,
                "metric name m does not support exemplars",
            ),
            (
                b"m_total 1 #{a=\"b\"} 1\n# EOF\n",
                1,
                "expected exemplar labels",
            ),
            (
                b"m_total 1 # {a=\"b\"}\n# EOF\n",
                1,
                "expected value after exemplar labels",
            ),
            (
                b"m_total 1 # {a=\"b\"} x\n# EOF\n",
                1,
                "invalid exemplar value",
            ),
            (
                b"m_total 1 # {a=\"b\"} 1 NaN\n# EOF\n",
                1,
                "invalid exemplar timestamp",
            ),
            (
                b"m_total 1 # {a=\"b\"} 1 2 3\n# EOF\n",
                1,
                "expected next entry after exemplar",
            ),
            (
                b"m_total 1 2 3\n# EOF\n",
                1,
                "expected next entry after timestamp",
            ),
            (b"m{a=\"\xff\"} 1\n# EOF\n", 1, "UTF-8"),
            (b"m 1\n# EOF\n\xff", 2, "unexpected data after # EOF"),
        ];
        for (input, line, msg) in cases {
            let e = err(input, Format::OpenMetrics);
            assert!(
                e.msg.contains(msg) && e.line == *line,
                "{:?}: got {e}, want line {line}: {msg:?}",
                String::from_utf8_lossy(input),
            );
        }
        let mut p = Parser::new(b"m 1\n", Format::OpenMetrics);
        assert!(p.next().unwrap().is_some());
        assert!(p.next().is_err());
        assert!(p.next().is_err());
    }

    #[test]
    fn openmetrics_help_and_unit_edge_cases() {
        let e = all(
            "# HELP m\n# HELP n \n# UNIT m \n# HELP o a\\\\b\\nc\\\"d\\x\n# EOF\n",
            Format::OpenMetrics,
        )
        .unwrap();
        assert_eq!(
            e,
            vec![
                Entry::Help {
                    metric: "m",
                    text: Cow::Borrowed("")
                },
                Entry::Help {
                    metric: "n",
                    text: Cow::Borrowed("")
                },
                Entry::Unit {
                    metric: "m",
                    unit: ""
                },
                Entry::Help {
                    metric: "o",
                    text: Cow::Owned("a\\b\nc\"d\\x".into())
                },
            ]
        );
    }

    #[test]
    fn eof_is_only_a_comment_in_text_format() {
        let e = all("m 1\n# EOF\nn 2\n", Format::PromText).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1], Entry::Comment);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn drain(input: &[u8], format: Format) -> usize {
            let mut p = Parser::new(input, format);
            let mut n = 0;
            loop {
                match p.next() {
                    Ok(Some(Entry::Series(s))) => {
                        let _ = s.labels();
                        n += 1;
                    }
                    Ok(Some(_)) => n += 1,
                    Ok(None) | Err(_) => break,
                }
                assert!(n <= input.len() + 1, "parser did not make progress");
            }
            n
        }

        /// Every result of a parse until the first error (included).
        fn results<'a>(p: &mut Parser<'a>, known: Known<'_>) -> Vec<Result<Entry<'a>, ParseError>> {
            let mut out = Vec::new();
            let mut known = known;
            loop {
                let r = match known.as_deref_mut() {
                    Some(k) => p.next_with(k),
                    None => p.next(),
                };
                match r {
                    Ok(Some(e)) => out.push(Ok(e)),
                    Ok(None) => return out,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }

        /// Skipping the label-block validation of series seen valid before changes
        /// nothing: same entries, same error on the same line.
        fn known_changes_nothing(input: &[u8], format: Format) -> Result<(), TestCaseError> {
            let plain = results(&mut Parser::new(input, format), None);
            let valid: std::collections::HashSet<&[u8]> = plain
                .iter()
                .filter_map(|r| match r {
                    Ok(Entry::Series(s)) => Some(s.raw),
                    _ => None,
                })
                .collect();
            let mut known = |raw: &[u8]| valid.contains(raw);
            let fast = results(&mut Parser::new(input, format), Some(&mut known));
            // Debug forms: NaN values compare equal there.
            prop_assert_eq!(format!("{fast:?}"), format!("{plain:?}"));
            Ok(())
        }

        fn label_value() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just('\\'),
                    Just('"'),
                    Just('\n'),
                    Just(','),
                    Just('}'),
                    Just('='),
                    any::<char>()
                ],
                0..12,
            )
            .prop_map(|v| v.into_iter().collect())
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..256)) {
                drain(&input, Format::PromText);
                drain(&input, Format::OpenMetrics);
            }

            #[test]
            fn near_valid_text_never_panics(
                parts in prop::collection::vec(
                    prop_oneof![
                        Just("m".to_string()), Just("{".to_string()), Just("}".to_string()),
                        Just("a=\"x\"".to_string()), Just(",".to_string()), Just(" ".to_string()),
                        Just("\n".to_string()), Just("# ".to_string()), Just("HELP ".to_string()),
                        Just("TYPE ".to_string()), Just("EOF".to_string()), Just("1.5".to_string()),
                        Just("\\".to_string()), Just("\"".to_string()), Just("# {".to_string()),
                        Just("\u{2603}".to_string()), Just("\r".to_string()),
                    ],
                    0..40,
                )
            ) {
                let input = parts.concat();
                drain(input.as_bytes(), Format::PromText);
                drain(input.as_bytes(), Format::OpenMetrics);
                known_changes_nothing(input.as_bytes(), Format::PromText)?;
                known_changes_nothing(input.as_bytes(), Format::OpenMetrics)?;
            }

            #[test]
            fn known_series_parse_as_validated_ones(
                lines in prop::collection::vec(
                    (
                        prop::sample::select(vec!["m", "n_total", "x:y"]),
                        prop::collection::vec(
                            (prop::sample::select(vec!["a", "b", "le", "__name__", "1x"]), label_value()),
                            0..4,
                        ),
                        prop::sample::select(vec![",", ", ", "", " "]),
                        prop::sample::select(vec![" 1", " 2.5 17", " NaN", " x", ""]),
                    ),
                    0..8,
                ),
                repeat in 1..3usize,
            ) {
                let mut body = String::new();
                for _ in 0..repeat {
                    for (name, labels, sep, rest) in &lines {
                        let block: Vec<String> = labels
                            .iter()
                            .map(|(n, v)| {
                                format!("{n}=\"{}\"", crate::model::labels::escape_label_value(v))
                            })
                            .collect();
                        body += &format!("{name}{{{}}}{rest}\n", block.join(sep));
                    }
                }
                known_changes_nothing(body.as_bytes(), Format::PromText)?;
                body += "# EOF\n";
                known_changes_nothing(body.as_bytes(), Format::OpenMetrics)?;
            }

            #[test]
            fn escaped_label_values_round_trip(
                values in prop::collection::vec(label_value(), 1..5),
                v in any::<f64>(),
                ts in any::<i64>(),
            ) {
                let pairs: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(i, val)| {
                        format!("l{i}=\"{}\"", crate::model::labels::escape_label_value(val))
                    })
                    .collect();
                for format in [Format::PromText, Format::OpenMetrics] {
                    let input = match format {
                        // Trailing comma and integer ms timestamp.
                        Format::PromText => format!("metric_x{{{},}} {v:?} {ts}\n", pairs.join(",")),
                        Format::OpenMetrics => {
                            format!("metric_x{{{}}} {v:?}\n# EOF\n", pairs.join(","))
                        }
                    };
                    let got = series(&input, format);
                    prop_assert_eq!(got.len(), 1);
                    let s = &got[0];
                    let p: Vec<(String, String)> = s
                        .label_pairs()
                        .map(|(n, v)| (n.to_string(), v.into_owned()))
                        .collect();
                    let want: Vec<(String, String)> = values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("l{i}"), v.clone()))
                        .collect();
                    prop_assert_eq!(p, want);
                    if v.is_nan() {
                        prop_assert!(s.value.is_nan());
                    } else {
                        prop_assert_eq!(s.value, v);
                    }
                    if format == Format::PromText {
                        prop_assert_eq!(s.timestamp, Some(ts));
                    }
                }
            }
        }
    }
}
