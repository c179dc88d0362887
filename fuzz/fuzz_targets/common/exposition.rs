//! Shared body of the `textparse` and `openmetrics` targets.

use std::collections::HashSet;

use shoal::model::textparse::{Entry, Format, Parser};

/// Entries parsed before giving up (a body of N bytes has at most N lines anyway).
const MAX_ENTRIES: usize = 100_000;

/// Parses `data` twice: with [`Parser::next`], then with [`Parser::next_with`] told that
/// every series block the first pass accepted is known (the scrape cache's fast path).
/// Both passes must agree entry for entry, error for error.
pub fn run(data: &[u8], format: Format) {
    let mut first = Vec::new();
    let mut known: HashSet<Vec<u8>> = HashSet::new();
    let mut p = Parser::new(data, format);
    let end1 = loop {
        if first.len() >= MAX_ENTRIES {
            return;
        }
        match p.next() {
            Ok(Some(e)) => {
                if let Entry::Series(s) = &e {
                    let labels = s.labels();
                    if !s.name.is_empty() {
                        assert_eq!(labels.metric_name(), Some(s.name));
                    }
                    known.insert(s.raw.to_vec());
                }
                first.push(e);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    // A failed parser keeps failing the same way.
    if let Some(e) = &end1 {
        assert_eq!(p.next().as_ref().err(), Some(e));
    } else {
        assert!(matches!(p.next(), Ok(None)));
    }

    let mut p = Parser::new(data, format);
    let mut ask = |raw: &[u8]| known.contains(raw);
    for (i, want) in first.iter().enumerate() {
        match p.next_with(&mut ask) {
            Ok(Some(got)) => {
                // Debug, not ==: a NaN sample value is not equal to itself.
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "entry {i} differs on the known-series path"
                );
                if let (Entry::Series(g), Entry::Series(w)) = (&got, want) {
                    assert_eq!(g.labels(), w.labels());
                }
            }
            other => panic!("entry {i}: first pass had {want:?}, known-series pass {other:?}"),
        }
    }
    match (p.next_with(&mut ask), end1) {
        (Ok(None), None) => {}
        (Err(got), Some(want)) => assert_eq!(got, want),
        (got, want) => panic!("end differs: first pass {want:?}, known-series pass {got:?}"),
    }
}
