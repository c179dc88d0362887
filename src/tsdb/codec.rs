//! Byte-level encodings owned by the TSDB: Go-compatible varints, big-endian keys that
//! sort like the numbers they hold, the format version byte and a cheap hasher for
//! integer-keyed maps. Pure functions, no IO.

use std::hash::{BuildHasherDefault, Hasher};

/// Version byte in front of every persisted value whose layout this module defines.
pub const FORMAT_V1: u8 = 1;

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
    fn i64_keys_sort_numerically() {
        let mut v = [-5i64, 3, i64::MIN, 0, i64::MAX, -1];
        let mut keys: Vec<_> = v.iter().map(|&t| i64_key(t)).collect();
        keys.sort();
        v.sort();
        let back: Vec<_> = keys.into_iter().map(i64_from_key).collect();
        assert_eq!(back, v);
    }
}
