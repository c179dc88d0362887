//! Byte-level encodings owned by the TSDB: Go-compatible varints, big-endian keys that
//! sort like the numbers they hold, the format version byte and a cheap hasher for
//! integer-keyed maps. Pure functions, no IO.

use std::hash::{BuildHasherDefault, Hasher};

/// Version byte in front of every persisted value whose layout this module defines.
pub const FORMAT_V1: u8 = 1;

/// Version byte of a value whose body is [`deflate`]d (WAL values).
pub const FORMAT_DEFLATE: u8 = 2;

/// Largest body [`inflate`] accepts (guards against corrupt or hostile input).
const MAX_INFLATED: u64 = 1 << 30;

/// Raw deflate at the fastest level (the WAL flush runs once a second, off the append
/// path).
pub fn deflate(prefix: u8, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    out.push(prefix);
    let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Inverse of [`deflate`] (without the prefix byte).
pub fn inflate(data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(data.len() * 2);
    flate2::read::DeflateDecoder::new(data)
        .take(MAX_INFLATED)
        .read_to_end(&mut out)
        .map_err(|e| format!("inflate: {e}"))?;
    Ok(out)
}

/// Appends `x` as an unsigned LEB128 varint (Go's `binary.PutUvarint`).
pub fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push((x as u8) | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

/// Appends `x` zig-zag encoded (Go's `binary.PutVarint`).
pub fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, zigzag(x));
}

pub fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

pub fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// Reads a uvarint at `*pos`, advancing it. `None` on truncated or overlong input.
pub fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut x: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        x |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(x);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    get_uvarint(buf, pos).map(unzigzag)
}

/// Maps an `i64` to a `u64` whose big-endian bytes sort in the same order.
pub fn i64_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn i64_from_key(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Reads 8 bytes at `at` as an array; `None` when the slice is too short.
pub fn bytes8(buf: &[u8], at: usize) -> Option<[u8; 8]> {
    buf.get(at..at + 8)?.try_into().ok()
}

/// Fibonacci hashing for `u64` keys that are either dense ids or already hashes.
#[derive(Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type U64Map<V> = std::collections::HashMap<u64, V, BuildHasherDefault<U64Hasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for x in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40] {
            let mut b = Vec::new();
            put_varint(&mut b, x);
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p), Some(x));
            assert_eq!(p, b.len());
        }
        let mut p = 0;
        assert_eq!(get_uvarint(&[0x80, 0x80], &mut p), None);
    }

    #[test]
    fn deflate_round_trips_and_rejects_garbage() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let z = deflate(7, &data);
        assert_eq!(z[0], 7);
        assert!(z.len() < data.len() / 4);
        assert_eq!(inflate(&z[1..]).unwrap(), data);
        assert_eq!(inflate(&deflate(0, &[])[1..]).unwrap(), Vec::<u8>::new());
        assert!(inflate(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn i64_keys_sort_numerically() {
        let mut v = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut keys: Vec<_> = v.iter().map(|&t| i64_key(t)).collect();
        keys.sort();
        v.sort();
        let back: Vec<_> = keys.into_iter().map(i64_from_key).collect();
        assert_eq!(back, v);
    }
}
