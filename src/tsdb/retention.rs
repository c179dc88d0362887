//! The `chunks` tree layout and retention. A sealed chunk is stored under
//! `(block start, series id, chunk min time)` (each big-endian, times sign-flipped so
//! they sort) with value `[FORMAT_V1][max time BE i64][XOR chunk bytes]`. Retention
//! drops whole blocks by deleting every key below the first kept block's prefix.

use sled::Tree;

use super::codec::{FORMAT_V1, bytes8, i64_from_key, i64_key};
use super::index::sled_err;
use crate::storage::StorageError;

pub fn chunk_key(block: i64, id: u64, min_t: i64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&i64_key(block));
    k[8..16].copy_from_slice(&id.to_be_bytes());
    k[16..].copy_from_slice(&i64_key(min_t));
    k
}

pub fn series_prefix(block: i64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i64_key(block));
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn chunk_value(max_t: i64, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(13 + bytes.len());
    v.push(CHUNK_CRC);
    v.extend_from_slice(&max_t.to_be_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&v[1..9]);
    h.update(bytes);
    v.extend_from_slice(&h.finalize().to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// Chunk values with a CRC-32 of max time and chunk bytes (as Prometheus's chunk files
/// have): `2 | max_t | crc | bytes`. Values of format 1 (no checksum) are still read.
const CHUNK_CRC: u8 = 2;

/// Splits a chunk value into `(max time, chunk bytes)`, checking its checksum.
pub fn parse_chunk_value(v: &[u8]) -> Result<(i64, &[u8]), StorageError> {
    let truncated = || StorageError("tsdb: chunk: truncated".into());
    match v.first() {
        Some(&FORMAT_V1) => {
            let max_t = bytes8(v, 1).map(i64::from_be_bytes).ok_or_else(truncated)?;
            Ok((max_t, &v[9..]))
        }
        Some(&CHUNK_CRC) => {
            let max_t = bytes8(v, 1).map(i64::from_be_bytes).ok_or_else(truncated)?;
            let crc = v.get(9..13).ok_or_else(truncated)?;
            let bytes = &v[13..];
            let mut h = crc32fast::Hasher::new();
            h.update(&v[1..9]);
            h.update(bytes);
            if h.finalize().to_be_bytes() != crc {
                return Err(StorageError("tsdb: chunk: checksum mismatch".into()));
            }
            Ok((max_t, bytes))
        }
        b => Err(StorageError(format!(
            "tsdb: chunk: unknown format version {b:?}"
        ))),
    }
}

/// The min time stored in a chunk key.
pub fn key_min_t(k: &[u8]) -> Option<i64> {
    bytes8(k, 16).map(i64_from_key)
}

/// Deletes every chunk of blocks starting before `keep_from`. Returns the number of
/// distinct blocks removed.
pub fn drop_blocks_before(chunks: &Tree, keep_from: i64) -> Result<u64, StorageError> {
    let end = i64_key(keep_from);
    let mut blocks = 0u64;
    let mut last_block: Option<[u8; 8]> = None;
    for r in chunks.range(..end.to_vec()) {
        let (k, _) = r.map_err(|e| sled_err("scan chunks", e))?;
        let b = bytes8(&k, 0);
        if b != last_block {
            blocks += 1;
            last_block = b;
        }
        chunks.remove(&k).map_err(|e| sled_err("drop chunk", e))?;
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_block_then_series_then_time() {
        let mut ks = [
            chunk_key(-7200, 9, -100),
            chunk_key(0, 2, 5),
            chunk_key(0, 1, 9),
            chunk_key(0, 1, -3),
        ];
        ks.sort();
        let got: Vec<_> = ks
            .iter()
            .map(|k| {
                (
                    i64_from_key(k[..8].try_into().unwrap()),
                    key_min_t(k).unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![(-7200, -100), (0, -3), (0, 9), (0, 5)]);
        assert!(chunk_key(0, 1, 9).starts_with(&series_prefix(0, 1)));
        assert!(parse_chunk_value(&[2, 0]).is_err());
        assert_eq!(
            parse_chunk_value(&chunk_value(42, &[1, 2])).unwrap(),
            (42, &[1u8, 2][..])
        );
    }

    #[test]
    fn drops_only_old_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::sled_open::open_path(dir.path()).unwrap();
        let t = db.open_tree("chunks").unwrap();
        for (b, id) in [(-100, 1), (0, 1), (0, 2), (100, 1), (200, 3)] {
            t.insert(chunk_key(b, id, b), chunk_value(b + 1, &[]))
                .unwrap();
        }
        assert_eq!(drop_blocks_before(&t, 100).unwrap(), 2);
        assert_eq!(t.len(), 2);
        assert_eq!(drop_blocks_before(&t, 100).unwrap(), 0);
    }
}
