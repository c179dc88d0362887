//! Reading a backfill file: OpenMetrics 1.0 text as `promtool tsdb create-blocks-from
//! openmetrics` takes it, in bounded memory (one line at a time, plus the last timestamp
//! of every series).
//!
//! The rules, each a [`FileError::Invalid`] naming the line:
//! - every line parses as OpenMetrics ([`crate::model::textparse`], the scrape parser),
//!   at most [`MAX_LINE`] bytes long;
//! - every sample carries a timestamp (promtool refuses one without);
//! - within a series, timestamps strictly increase (promtool's appender refuses a sample
//!   out of order, and another value at the same timestamp);
//! - the file ends with `# EOF`, and nothing follows it.
//!
//! [`Scanner`] yields the samples one by one, checked; [`check`] reads a whole file
//! (the CLI does, before it sends anything: a bad file stores nothing) and
//! [`Batches`] groups the samples into batches of about a given size of file text.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::model::textparse::{Entry, Format, Parser};
use crate::model::{Labels, Sample};

/// The longest line taken (a longer one is an error, never buffered whole).
pub const MAX_LINE: usize = 1 << 20;

/// Why a file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    #[error("{name}:{line}: {msg}")]
    Invalid {
        name: String,
        /// 1-based line number.
        line: usize,
        msg: String,
    },
}

/// What a file holds (all of it checked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub series: u64,
    pub samples: u64,
    /// Oldest and newest sample time (ms), when there is a sample.
    pub min_t: Option<i64>,
    pub max_t: Option<i64>,
}

/// One checked sample of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSample {
    pub labels: Labels,
    pub sample: Sample,
    /// Bytes of its line (for batch sizes).
    pub bytes: usize,
}

/// A series' 128-bit label hash (the scanner's key of its last timestamp).
fn key_of(labels: &Labels) -> u128 {
    let mut buf = Vec::with_capacity(labels.len() * 24);
    for l in labels {
        buf.extend_from_slice(l.name.as_bytes());
        buf.push(0xff);
        buf.extend_from_slice(l.value.as_bytes());
        buf.push(0xff);
    }
    xxhash_rust::xxh3::xxh3_128(&buf)
}

/// Reads a file's samples one by one, checking the rules of the module docs.
pub struct Scanner<R> {
    reader: R,
    name: String,
    line: usize,
    buf: Vec<u8>,
    eof_seen: bool,
    /// Last timestamp per series.
    last: HashMap<u128, i64>,
    summary: FileSummary,
}

impl Scanner<BufReader<std::fs::File>> {
    /// Opens `path` (named as given in errors).
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let name = path.display().to_string();
        let f = std::fs::File::open(path).map_err(|source| FileError::Io {
            name: name.clone(),
            source,
        })?;
        Ok(Scanner::new(BufReader::with_capacity(1 << 16, f), name))
    }
}

impl<R: BufRead> Scanner<R> {
    pub fn new(reader: R, name: String) -> Scanner<R> {
        Scanner {
            reader,
            name,
            line: 0,
            buf: Vec::new(),
            eof_seen: false,
            last: HashMap::new(),
            summary: FileSummary::default(),
        }
    }

    /// What has been read so far (the whole file once [`Scanner::next_sample`] returned
    /// `None`).
    pub fn summary(&self) -> FileSummary {
        self.summary
    }

    fn invalid(&self, line: usize, msg: impl Into<String>) -> FileError {
        FileError::Invalid {
            name: self.name.clone(),
            line,
            msg: msg.into(),
        }
    }

    /// The next sample, checked; `None` after `# EOF` at the end of the file.
    pub fn next_sample(&mut self) -> Result<Option<FileSample>, FileError> {
        loop {
            self.buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| FileError::Io {
                    name: self.name.clone(),
                    source,
                })?;
            if n == 0 {
                if self.eof_seen {
                    return Ok(None);
                }
                return Err(self.invalid(
                    self.line.max(1),
                    "the file does not end with # EOF (OpenMetrics)",
                ));
            }
            self.line += 1;
            if self.eof_seen {
                return Err(self.invalid(self.line, "unexpected data after # EOF"));
            }
            let content = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
            if content.len() > MAX_LINE || (n > MAX_LINE && !self.buf.ends_with(b"\n")) {
                return Err(self.invalid(self.line, format!("line longer than {MAX_LINE} bytes")));
            }
            let mut p = Parser::new(&self.buf, Format::OpenMetrics);
            let entry = match p.next() {
                Ok(Some(Entry::Series(se))) => se,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    // Only `# EOF` ends a line's parse without an entry.
                    self.eof_seen = true;
                    continue;
                }
                Err(e) => return Err(self.invalid(self.line, e.msg)),
            };
            let labels = entry.labels();
            let Some(t) = entry.timestamp else {
                return Err(self.invalid(
                    self.line,
                    format!("expected a timestamp for series {labels}, got none (every sample of a backfill needs one)"),
                ));
            };
            let sample = Sample { t, v: entry.value };
            match self.last.entry(key_of(&labels)) {
                MapEntry::Occupied(mut o) => {
                    let prev = *o.get();
                    if t <= prev {
                        return Err(self.invalid(
                            self.line,
                            format!("sample of {labels} at {t} ms is not after the previous one at {prev} ms (timestamps must increase within a series)"),
                        ));
                    }
                    o.insert(t);
                }
                MapEntry::Vacant(v) => {
                    v.insert(t);
                    self.summary.series += 1;
                }
            }
            let s = &mut self.summary;
            s.samples += 1;
            s.min_t = Some(s.min_t.map_or(t, |m| m.min(t)));
            s.max_t = Some(s.max_t.map_or(t, |m| m.max(t)));
            return Ok(Some(FileSample {
                labels,
                sample,
                bytes: n,
            }));
        }
    }
}

/// Reads and checks a whole file; the first error ends it.
pub fn check(path: &Path) -> Result<FileSummary, FileError> {
    let mut s = Scanner::open(path)?;
    while s.next_sample()?.is_some() {}
    Ok(s.summary())
}

/// One series' samples in a batch (time order).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSeries {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// A file's samples in batches of about `max_bytes` of file text (at least one sample
/// each), series grouped within a batch; a series may continue in the next batch.
pub struct Batches<R> {
    scanner: Scanner<R>,
    max_bytes: usize,
    done: bool,
}

impl<R: BufRead> Batches<R> {
    pub fn new(scanner: Scanner<R>, max_bytes: usize) -> Batches<R> {
        Batches {
            scanner,
            max_bytes,
            done: false,
        }
    }

    /// What has been read so far.
    pub fn summary(&self) -> FileSummary {
        self.scanner.summary()
    }
}

impl<R: BufRead> Iterator for Batches<R> {
    type Item = Result<Vec<BatchSeries>, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut out: Vec<BatchSeries> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut bytes = 0;
        while bytes < self.max_bytes {
            match self.scanner.next_sample() {
                Ok(Some(s)) => {
                    bytes += s.bytes;
                    match index.get(&s.labels) {
                        Some(&i) => out[i].samples.push(s.sample),
                        None => {
                            index.insert(s.labels.clone(), out.len());
                            out.push(BatchSeries {
                                labels: s.labels,
                                samples: vec![s.sample],
                            });
                        }
                    }
                }
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        (!out.is_empty()).then_some(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(Vec<FileSample>, FileSummary), FileError> {
        let mut s = Scanner::new(text.as_bytes(), "f.om".into());
        let mut out = Vec::new();
        while let Some(x) = s.next_sample()? {
            out.push(x);
        }
        Ok((out, s.summary()))
    }

    fn error_of(text: &str) -> (usize, String) {
        match scan(text) {
            Err(FileError::Invalid { line, msg, .. }) => (line, msg),
            other => panic!("expected an error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_file_yields_every_sample_with_its_labels_and_time() {
        let text = "# HELP temp Temperature\n# TYPE temp gauge\n\
                    temp{room=\"a b\\\"c\"} 20.5 1700000000\n\
                    temp{room=\"a b\\\"c\"} 21.5 1700000015.5\n\
                    # TYPE requests counter\n\
                    requests_total{path=\"/x\"} 1.0 1700000000.0 # {trace=\"1\"} 1 1700000000\n\
                    requests_total{path=\"/x\"} NaN 1700000001\n# EOF\n";
        let (samples, summary) = scan(text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(
            samples[0].labels,
            Labels::from_pairs(&[("__name__", "temp"), ("room", "a b\"c")])
        );
        assert_eq!(samples[1].sample.t, 1_700_000_015_500);
        assert_eq!(samples[1].sample.v, 21.5);
        assert_eq!(
            samples[3].sample.v.to_bits(),
            crate::model::textparse::NORMAL_NAN_BITS
        );
        assert_eq!(summary.series, 2);
        assert_eq!(summary.samples, 4);
        assert_eq!(summary.min_t, Some(1_700_000_000_000));
        assert_eq!(summary.max_t, Some(1_700_000_015_500));
        // `# EOF` without a final newline is the end too.
        assert!(scan("a 1 1\n# EOF").is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let (line, msg) = error_of("a 1 1\na 2\n# EOF\n");
        assert_eq!(line, 2);
        assert!(msg.contains("expected a timestamp"), "{msg}");
        let (line, msg) = error_of("a 1 1\nb 1 1\na 2 1\n# EOF\n");
        assert_eq!(line, 3);
        assert!(msg.contains("not after the previous one"), "{msg}");
        let (line, msg) = error_of("a 1 2\na 2 1\n# EOF\n");
        assert_eq!(line, 2);
        assert!(msg.contains("not after"), "{msg}");
        let (line, msg) = error_of("a 1 1\na{x=\"1\" 2 2\n# EOF\n");
        assert_eq!(line, 2, "{msg}");
        let (line, msg) = error_of("a 1 1\na 2 2\n");
        assert_eq!(line, 2);
        assert!(msg.contains("# EOF"), "{msg}");
        let (line, msg) = error_of("a 1 1\n# EOF\na 2 2\n");
        assert_eq!(line, 3);
        assert!(msg.contains("after # EOF"), "{msg}");
        let (line, _) = error_of("a 1 1\n\na 2 2\n# EOF\n");
        assert_eq!(line, 2, "a blank line is no OpenMetrics");
        let huge = format!("a{{x=\"{}\"}} 1 1\n# EOF\n", "y".repeat(MAX_LINE));
        let (line, msg) = error_of(&huge);
        assert_eq!(line, 1);
        assert!(msg.contains("longer than"), "{msg}");
        // Labels in another order are the same series.
        let (line, _) = error_of("a{x=\"1\",y=\"2\"} 1 5\na{y=\"2\",x=\"1\"} 1 5\n# EOF\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn batches_group_series_and_respect_the_size() {
        let mut text = String::new();
        for i in 0..100 {
            text.push_str(&format!("a{{s=\"1\"}} {i} {i}\na{{s=\"2\"}} {i} {i}\n"));
        }
        text.push_str("# EOF\n");
        let b = Batches::new(Scanner::new(text.as_bytes(), "f".into()), 200);
        let batches: Vec<Vec<BatchSeries>> = b.map(Result::unwrap).collect();
        assert!(batches.len() > 5, "{}", batches.len());
        let mut n = 0;
        for batch in &batches {
            assert!(batch.len() <= 2);
            for s in batch {
                assert!(s.samples.windows(2).all(|w| w[0].t < w[1].t));
                n += s.samples.len();
            }
        }
        assert_eq!(n, 200);
        // A bad line ends the batches with its error.
        let mut b = Batches::new(Scanner::new(&b"a 1 1\na 1\n# EOF\n"[..], "f".into()), 1);
        assert!(b.next().unwrap().is_ok());
        assert!(matches!(
            b.next(),
            Some(Err(FileError::Invalid { line: 2, .. }))
        ));
        assert!(b.next().is_none());
    }
}
