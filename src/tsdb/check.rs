//! `shoal tsdb check DIR [--repair]`: reads every record of a stopped node's TSDB (series
//! batches, per-series chunk records, sealed chunks, WAL segments), reports the corrupt
//! ones and, with `repair`, quarantines them: sled records move to the `quarantine` tree
//! (key `<tree>/<hex key>`), a WAL segment's bad tail is copied to
//! `<dir>/quarantine/wal-<segment>-<offset>` and cut off. A node opens a data dir with
//! corrupt records anyway (it skips and counts them); repairing stops the warnings and
//! keeps the bad bytes for a post-mortem.

use std::path::Path;

use super::codec::FORMAT_V1;
use super::index::{Index, sled_err};
use super::segments::SegmentFiles;
use super::{chunkenc, open_sled, retention};
use crate::storage::StorageError;

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One line per corrupt record.
    pub problems: Vec<String>,
    pub series_batches: u64,
    pub chunks: u64,
    pub wal_segments: u64,
    /// Whether the problems were quarantined.
    pub repaired: bool,
}

const QUARANTINE: &str = "quarantine";

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a per-series chunk record (`sealed` tree) is well formed.
pub(super) fn sealed_record_ok(k: &[u8], v: &[u8]) -> bool {
    let t = |o| super::codec::bytes8(v, o).map(i64::from_be_bytes);
    k.len() == 8
        && v.len() == 25
        && v[0] == FORMAT_V1
        && matches!((t(1), t(9)), (Some(min), Some(max)) if min <= max)
}

/// Checks the TSDB in `dir` (the node must be stopped: sled's lock).
pub fn check(dir: &Path, repair: bool) -> Result<CheckReport, StorageError> {
    let db = open_sled(dir, 4 << 20)?;
    let quarantine = db
        .open_tree(QUARANTINE)
        .map_err(|e| sled_err("open tree", e))?;
    let mut r = CheckReport {
        repaired: repair,
        ..CheckReport::default()
    };
    let tree = |n: &str| db.open_tree(n).map_err(|e| sled_err("open tree", e));
    let move_aside = |name: &str, t: &sled::Tree, k: &[u8], v: &[u8]| {
        let qk = format!("{name}/{}", hex(k));
        quarantine
            .insert(qk.as_bytes(), v)
            .and_then(|_| t.remove(k))
            .map(|_| ())
            .map_err(|e| sled_err("quarantine", e))
    };

    // Series batches.
    let series = tree("series")?;
    r.series_batches = series.len() as u64;
    let (index, _) = Index::open(&db)?;
    for (key, why) in &index.corrupt_batches {
        r.problems
            .push(format!("series batch {key}: {why} (its series are lost)"));
        if repair
            && let Some(v) = series
                .get(key.to_be_bytes())
                .map_err(|e| sled_err("read", e))?
        {
            move_aside("series", &series, &key.to_be_bytes(), &v)?;
        }
    }
    let lost_series = index.skipped_at_open - index.corrupt_batches.len() as u64;
    if lost_series > 0 {
        r.problems.push(format!(
            "{lost_series} series name a label of a corrupt batch (lost with it)"
        ));
    }
    drop(index);

    // Per-series chunk records.
    let sealed = tree("sealed")?;
    for item in sealed.iter() {
        let (k, v) = item.map_err(|e| sled_err("scan sealed", e))?;
        if !sealed_record_ok(&k, &v) {
            r.problems
                .push(format!("chunk record {}: malformed", hex(&k)));
            if repair {
                move_aside("sealed", &sealed, &k, &v)?;
            }
        }
    }

    // Sealed chunks.
    let chunks = tree("chunks")?;
    let mut scratch = Vec::new();
    for item in chunks.iter() {
        let (k, v) = item.map_err(|e| sled_err("scan chunks", e))?;
        r.chunks += 1;
        let bad = match retention::parse_chunk_value(&v) {
            Err(e) => Some(e.0),
            Ok((_, bytes)) => {
                scratch.clear();
                chunkenc::decode_range(bytes, i64::MIN, i64::MAX, &mut scratch)
                    .err()
                    .map(|e| e.to_string())
            }
        };
        if let Some(why) = bad {
            r.problems.push(format!("chunk {}: {why}", hex(&k)));
            if repair {
                move_aside("chunks", &chunks, &k, &v)?;
            }
        }
    }
    db.flush().map_err(|e| sled_err("flush", e))?;

    // WAL segments.
    let io = |e: std::io::Error| StorageError(format!("tsdb: WAL: {e}"));
    let mut files = SegmentFiles::open(&dir.join("wal")).map_err(io)?;
    for seg in files.list().map_err(io)? {
        r.wal_segments += 1;
        let (good, stop) = files.read_frames(seg, |_| {}).map_err(io)?;
        let Some(why) = stop else { continue };
        r.problems.push(format!("WAL segment {seg}: {why}"));
        if repair {
            let qdir = dir.join(QUARANTINE);
            std::fs::create_dir_all(&qdir).map_err(io)?;
            let bytes = std::fs::read(files.path(seg)).map_err(io)?;
            let tail = bytes.get(good as usize..).unwrap_or(&[]);
            std::fs::write(qdir.join(format!("wal-{seg:08}-{good}")), tail).map_err(io)?;
            files.truncate(seg, good).map_err(io)?;
        }
    }
    Ok(r)
}
