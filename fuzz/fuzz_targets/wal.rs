//! A WAL segment file (`tsdb::segments`, `tsdb::wal`): the input is written as segment
//! `00000000` and replayed as `Tsdb::open` does: frames (`len | crc32 | value`), each
//! value by its format byte (v1 raw, v2 deflate), its records decoded with per-segment
//! cursors, every sample of series ids 1..=8 appended to a head series
//! (`tsdb::head::MemSeries::append`, which cuts chunks). No panic, no huge allocation,
//! and every sample the head accepted reads back bit for bit from its chunks.
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal::tsdb::chunkenc::XorIterator;
use shoal::tsdb::codec::{self, FORMAT_DEFLATE, FORMAT_V1, U64Map};
use shoal::tsdb::head::{Appended, MemSeries, SealedChunk};
use shoal::tsdb::segments::SegmentFiles;
use shoal::tsdb::wal::{self, RecordBuilder, WalCursor};

/// The TSDB's default block range (2 h).
const BLOCK_RANGE: i64 = 2 * 3600 * 1000;
const SERIES: u64 = 8;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("shoal-fuzz-wal-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the WAL directory");
        d
    })
}

fn seeds() -> Vec<Vec<u8>> {
    let d = std::env::temp_dir().join(format!("shoal-fuzz-wal-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let mut files = SegmentFiles::open(&d).unwrap();
    let mut cursors: U64Map<WalCursor> = U64Map::default();
    for commit in 0..4i64 {
        let mut buf = Vec::new();
        for batch in 0..3i64 {
            let t = 1_700_000_000_000 + (commit * 3 + batch) * 15_000;
            let shared = (batch % 2 == 0).then_some(t);
            let mut rb = RecordBuilder::new(shared, 8);
            for id in [1u64, 2, 3, 5, 8] {
                let v = match id {
                    1 => (commit * 3 + batch) as f64,
                    2 => 0.25 * batch as f64,
                    3 => f64::NAN,
                    5 => 1e300 / (1 + batch) as f64,
                    _ => -0.0,
                };
                let t = if shared.is_some() { t } else { t + id as i64 };
                rb.push(id, cursors.entry(id).or_default(), t, v);
            }
            rb.finish_into(&mut buf);
        }
        let value = if commit == 0 {
            let mut v = vec![FORMAT_V1];
            v.extend(&buf);
            v
        } else {
            codec::deflate(FORMAT_DEFLATE, &buf)
        };
        files.append(0, &value).unwrap();
    }
    drop(files);
    let bytes = std::fs::read(d.join("00000000")).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    vec![bytes]
}

fuzz_target!(
    init: seeds::write("wal", seeds),
    |data: &[u8]| {
        let d = dir();
        std::fs::write(d.join("00000000"), data).expect("write the segment");
        let files = SegmentFiles::open(d).expect("open the WAL directory");

        let mut head: Vec<MemSeries> = (0..=SERIES).map(|_| MemSeries::default()).collect();
        let mut accepted: Vec<Vec<(i64, u64)>> = vec![Vec::new(); head.len()];
        let mut sealed: Vec<SealedChunk> = Vec::new();
        let mut cursors: U64Map<WalCursor> = U64Map::default();
        let mut broken = false;
        let _stop = files
            .read(0, |v| {
                if broken {
                    return;
                }
                let body = match v.first() {
                    Some(&FORMAT_V1) => std::borrow::Cow::Borrowed(&v[1..]),
                    Some(&FORMAT_DEFLATE) => match codec::inflate(&v[1..]) {
                        Ok(b) => std::borrow::Cow::Owned(b),
                        Err(_) => {
                            broken = true;
                            return;
                        }
                    },
                    _ => {
                        broken = true;
                        return;
                    }
                };
                let res = wal::decode_records(&body, &mut cursors, |id, t, vb| {
                    let Some(ms) = usize::try_from(id)
                        .ok()
                        .filter(|&i| i > 0)
                        .and_then(|i| head.get_mut(i))
                    else {
                        return;
                    };
                    if let Ok(Appended::Stored(s)) =
                        ms.append(id, t, f64::from_bits(vb), BLOCK_RANGE, 0, None)
                    {
                        sealed.extend(s);
                        accepted[id as usize].push((t, vb));
                    }
                });
                if res.is_err() {
                    broken = true;
                }
            })
            .expect("read the segment");

        // Every accepted sample is in the series' chunks, in order, bit for bit.
        for (id, ms) in head.iter().enumerate() {
            let mut got = Vec::new();
            let chunks = sealed
                .iter()
                .filter(|c| c.id == id as u64)
                .map(|c| c.bytes.as_slice())
                .chain((ms.open_samples() > 0).then_some(ms.chunk.as_slice()));
            for c in chunks {
                for s in XorIterator::new(c) {
                    let s = s.expect("a chunk the head wrote decodes");
                    got.push((s.t, s.v.to_bits()));
                }
            }
            assert_eq!(got, accepted[id], "series {id}");
        }
    }
);
