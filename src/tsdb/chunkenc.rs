//! Prometheus-compatible XOR ("Gorilla") chunks, hand-written (the `tsz` crate truncates
//! millisecond timestamps). Layout, as in Prometheus's `tsdb/chunkenc/xor.go`:
//!
//! - 2 bytes big-endian sample count, then a bit stream;
//! - sample 0: varint timestamp, 64 raw value bits;
//! - sample 1: uvarint timestamp delta, XOR value;
//! - later samples: delta-of-delta in buckets `0` / `10`+14 / `110`+17 / `1110`+20 /
//!   `1111`+64 bits, XOR value.
//!
//! XOR value: `0` when equal to the previous value; otherwise `1`, then `0` + the
//! meaningful bits when they fit the previous leading/trailing-zero window, or `1` +
//! 5 bits leading zeros + 6 bits length (0 meaning 64) + the bits.
//!
//! [`BitWriter`]/[`BitReader`] are shared with the WAL encoding.

use crate::model::Sample;
use crate::storage::chunks::RawChunk;

/// Encodes time-sorted samples (distinct times) into chunks of at most
/// [`SAMPLES_PER_CHUNK`] samples, cut where a sample falls into another block of
/// `block_range` milliseconds (chunks never cross blocks). Pure: the TSDB's import and a
/// backfill's forwarding (`crate::backfill`) share it.
pub fn encode(samples: &[Sample], block_range: i64) -> Vec<RawChunk> {
    let block_of = |t: i64| t.div_euclid(block_range.max(1));
    let mut out = Vec::new();
    let mut cur: Option<(RawChunk, XorState, u16)> = None;
    for s in samples {
        if let Some((c, _, n)) = &cur
            && (*n >= SAMPLES_PER_CHUNK || block_of(s.t) != block_of(c.min_t))
            && let Some((c, _, _)) = cur.take()
        {
            out.push(c);
        }
        let (c, st, n) = cur.get_or_insert_with(|| {
            (
                RawChunk {
                    min_t: s.t,
                    max_t: s.t,
                    bytes: new_chunk(),
                },
                XorState::default(),
                0,
            )
        });
        st.append(&mut c.bytes, s.t, s.v);
        c.max_t = s.t;
        *n += 1;
    }
    out.extend(cur.map(|(mut c, _, _)| {
        c.bytes.shrink_to_fit();
        c
    }));
    out
}

/// Samples per chunk before the head seals it (as Prometheus).
pub const SAMPLES_PER_CHUNK: u16 = 120;

/// Why a chunk could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("corrupt chunk: {0}")]
pub struct ChunkError(pub &'static str);

/// Appends bits to a byte vector. `free` is the number of unused low bits in the last
/// byte (0 when a new byte is needed); it is kept outside so that a head chunk can store
/// it compactly.
pub struct BitWriter<'a> {
    pub buf: &'a mut Vec<u8>,
    pub free: u8,
}

impl BitWriter<'_> {
    #[inline]
    pub fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.buf.push(0);
            self.free = 8;
        }
        if bit && let Some(last) = self.buf.last_mut() {
            *last |= 1 << (self.free - 1);
        }
        self.free -= 1;
    }

    /// Writes the low `n` (≤ 64) bits of `v`, most significant first: the rest of the
    /// last byte, then whole bytes in one copy.
    #[inline]
    pub fn write_bits(&mut self, v: u64, n: u8) {
        let mut n = u32::from(n.min(64));
        if n == 0 {
            return;
        }
        if self.free > 0 {
            let free = u32::from(self.free);
            let take = n.min(free);
            let chunk = (v >> (n - take)) & ((1u64 << take) - 1);
            if let Some(last) = self.buf.last_mut() {
                *last |= (chunk << (free - take)) as u8;
            }
            self.free -= take as u8;
            n -= take;
            if n == 0 {
                return;
            }
        }
        // Byte-aligned: the low `n` bits of `v`, left-aligned, as big-endian bytes.
        let bytes = (v << (64 - n)).to_be_bytes();
        let len = n.div_ceil(8) as usize;
        self.buf.extend_from_slice(&bytes[..len]);
        self.free = ((8 - n % 8) % 8) as u8;
    }

    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_bits(u64::from(b), 8);
        }
    }
}

/// Reads bits from a byte slice.
pub struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    #[inline]
    pub fn read_bit(&mut self) -> Result<bool, ChunkError> {
        let b = *self
            .buf
            .get(self.pos / 8)
            .ok_or(ChunkError("unexpected end"))?;
        let bit = (b >> (7 - (self.pos % 8))) & 1 == 1;
        self.pos += 1;
        Ok(bit)
    }

    /// Reads `n` (≤ 64) bits, most significant first.
    #[inline]
    pub fn read_bits(&mut self, n: u8) -> Result<u64, ChunkError> {
        if n > 56 {
            let hi = self.read_bits(n - 32)?;
            let lo = self.read_bits(32)?;
            return Ok((hi << 32) | lo);
        }
        if n == 0 {
            return Ok(0);
        }
        let end = self.pos + usize::from(n);
        if end > self.buf.len() * 8 {
            return Err(ChunkError("unexpected end"));
        }
        // One big-endian word load holds all n bits (offset ≤ 7, n ≤ 56).
        let byte = self.pos / 8;
        let word = match super::codec::bytes8(self.buf, byte) {
            Some(w) => u64::from_be_bytes(w),
            None => {
                let mut w = [0u8; 8];
                let rest = self.buf.get(byte..).unwrap_or(&[]);
                w[..rest.len().min(8)].copy_from_slice(&rest[..rest.len().min(8)]);
                u64::from_be_bytes(w)
            }
        };
        let v = (word << (self.pos % 8)) >> (64 - u32::from(n));
        self.pos = end;
        Ok(v)
    }

    pub fn read_byte(&mut self) -> Result<u8, ChunkError> {
        Ok(self.read_bits(8)? as u8)
    }

    pub fn read_uvarint(&mut self) -> Result<u64, ChunkError> {
        let mut x: u64 = 0;
        let mut shift = 0u32;
        loop {
            let b = self.read_byte()?;
            if shift == 63 && b > 1 {
                return Err(ChunkError("varint overflow"));
            }
            x |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(x);
            }
            shift += 7;
            if shift > 63 {
                return Err(ChunkError("varint overflow"));
            }
        }
    }

    pub fn read_varint(&mut self) -> Result<i64, ChunkError> {
        self.read_uvarint().map(super::codec::unzigzag)
    }

    /// Skips to the next byte boundary.
    pub fn align(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }

    pub fn byte_pos(&self) -> usize {
        self.pos.div_ceil(8)
    }
}

fn write_uvarint_bits(w: &mut BitWriter<'_>, x: u64) {
    let mut tmp = Vec::with_capacity(10);
    super::codec::put_uvarint(&mut tmp, x);
    w.write_bytes(&tmp);
}

/// Whether `x` fits a signed bucket of `nbits` as Prometheus's `bitRange` defines it.
#[inline]
pub fn bit_range(x: i64, nbits: u8) -> bool {
    -((1i64 << (nbits - 1)) - 1) <= x && x <= (1i64 << (nbits - 1))
}

/// Writes `d` in Prometheus's bucketed form: a `0` bit for zero, else the first bucket
/// `(prefix, prefix bits, value bits)` of `fits` whose width holds it (as
/// [`bit_range`] defines it), else `last` (which must be wide enough).
#[inline]
pub fn write_bucketed(w: &mut BitWriter<'_>, d: i64, fits: &[(u64, u8, u8)], last: (u64, u8, u8)) {
    if d == 0 {
        w.write_bit(false);
        return;
    }
    let (prefix, prefix_bits, bits) = fits
        .iter()
        .copied()
        .find(|&(_, _, bits)| bit_range(d, bits))
        .unwrap_or(last);
    w.write_bits(prefix, prefix_bits);
    w.write_bits(d as u64, bits);
}

/// Reads a value written by [`write_bucketed`] with the same bucket widths: `fits` are
/// the value bits of the prefixed buckets, `last` those of the final one (64: raw).
#[inline]
pub fn read_bucketed(r: &mut BitReader<'_>, fits: &[u8], last: u8) -> Result<i64, ChunkError> {
    if !r.read_bit()? {
        return Ok(0);
    }
    let mut bits = last;
    for &b in fits {
        if !r.read_bit()? {
            bits = b;
            break;
        }
    }
    let x = r.read_bits(bits)?;
    if bits >= 64 {
        return Ok(x as i64);
    }
    // The signed range of Prometheus's `bitRange`: up to +2^(bits-1) inclusive.
    let mut v = x as i64;
    if v > (1i64 << (bits - 1)) {
        v -= 1i64 << bits;
    }
    Ok(v)
}

/// Writes an XOR-encoded value against `prev`, updating the leading/trailing window
/// (`leading == 0xff` means no window yet).
#[inline]
pub fn write_xor(w: &mut BitWriter<'_>, prev: u64, v: u64, leading: &mut u8, trailing: &mut u8) {
    let delta = v ^ prev;
    if delta == 0 {
        w.write_bit(false);
        return;
    }
    w.write_bit(true);
    let mut lz = delta.leading_zeros() as u8;
    let tz = delta.trailing_zeros() as u8;
    if lz >= 32 {
        lz = 31;
    }
    if *leading != 0xff && lz >= *leading && tz >= *trailing {
        w.write_bit(false);
        w.write_bits(delta >> *trailing, 64 - *leading - *trailing);
        return;
    }
    *leading = lz;
    *trailing = tz;
    w.write_bit(true);
    w.write_bits(u64::from(lz), 5);
    let sig = 64 - lz - tz;
    // 64 significant bits are written as 0 in the 6-bit field.
    w.write_bits(u64::from(sig & 63), 6);
    w.write_bits(delta >> tz, sig);
}

/// Reads a value written by [`write_xor`].
#[inline]
pub fn read_xor(
    r: &mut BitReader<'_>,
    prev: u64,
    leading: &mut u8,
    trailing: &mut u8,
) -> Result<u64, ChunkError> {
    if !r.read_bit()? {
        return Ok(prev);
    }
    if r.read_bit()? {
        let lz = r.read_bits(5)? as u8;
        let mut sig = r.read_bits(6)? as u8;
        if sig == 0 {
            sig = 64;
        }
        if lz + sig > 64 {
            return Err(ChunkError("bad xor window"));
        }
        *leading = lz;
        *trailing = 64 - lz - sig;
    } else if *leading == 0xff {
        return Err(ChunkError("xor window reused before set"));
    }
    let sig = 64 - *leading - *trailing;
    let bits = r.read_bits(sig)?;
    let delta = if *trailing >= 64 {
        0
    } else {
        bits << *trailing
    };
    Ok(prev ^ delta)
}

/// Appender state of an open XOR chunk, without the last sample (which the caller
/// passes in: the head keeps it once per series, in its WAL cursor). The chunk's bytes
/// live in a `Vec<u8>` owned by the caller.
#[derive(Debug, Clone, Copy)]
pub struct XorAppender {
    pub t_delta: u64,
    pub num: u16,
    pub leading: u8,
    pub trailing: u8,
    /// Unused bits in the last byte of the chunk.
    pub free: u8,
}

impl Default for XorAppender {
    fn default() -> Self {
        XorAppender {
            t_delta: 0,
            num: 0,
            leading: 0xff,
            trailing: 0,
            free: 0,
        }
    }
}

/// A new, empty chunk (just the sample-count header).
pub fn new_chunk() -> Vec<u8> {
    vec![0, 0]
}

impl XorAppender {
    /// Appends one sample to `chunk` (which must hold only what this state wrote);
    /// `prev` is the chunk's last sample `(t, value bits)` (unused for the first).
    pub fn append(&mut self, chunk: &mut Vec<u8>, prev: (i64, u64), t: i64, v: f64) {
        // Worst case is ~19 bytes per sample; grow in small exact steps to keep head
        // memory tight.
        if chunk.capacity() - chunk.len() < 20 {
            chunk.reserve_exact(if self.num < 8 { 24 } else { 48 });
        }
        let (prev_t, prev_v) = prev;
        let vb = v.to_bits();
        let mut w = BitWriter {
            buf: chunk,
            free: self.free,
        };
        match self.num {
            0 => {
                let mut tmp = Vec::with_capacity(10);
                super::codec::put_varint(&mut tmp, t);
                w.write_bytes(&tmp);
                w.write_bits(vb, 64);
            }
            1 => {
                let delta = t.wrapping_sub(prev_t) as u64;
                write_uvarint_bits(&mut w, delta);
                write_xor(&mut w, prev_v, vb, &mut self.leading, &mut self.trailing);
                self.t_delta = delta;
            }
            _ => {
                let delta = t.wrapping_sub(prev_t) as u64;
                let dod = delta.wrapping_sub(self.t_delta) as i64;
                write_bucketed(
                    &mut w,
                    dod,
                    &[(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)],
                    (0b1111, 4, 64),
                );
                write_xor(&mut w, prev_v, vb, &mut self.leading, &mut self.trailing);
                self.t_delta = delta;
            }
        }
        self.free = w.free;
        self.num = self.num.saturating_add(1);
        let n = self.num.to_be_bytes();
        if let Some(h) = chunk.get_mut(0..2) {
            h.copy_from_slice(&n);
        }
    }
}

/// An XOR chunk appender that keeps the last sample itself (for chunks built in one go).
#[derive(Debug, Clone, Copy, Default)]
pub struct XorState {
    pub t: i64,
    pub v: u64,
    pub app: XorAppender,
}

impl XorState {
    /// Appends one sample to `chunk` (which must hold only what this state wrote).
    pub fn append(&mut self, chunk: &mut Vec<u8>, t: i64, v: f64) {
        self.app.append(chunk, (self.t, self.v), t, v);
        self.t = t;
        self.v = v.to_bits();
    }
}

/// Iterates over the samples of an encoded chunk.
pub struct XorIterator<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    v: u64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
    failed: bool,
}

impl<'a> XorIterator<'a> {
    pub fn new(chunk: &'a [u8]) -> Self {
        let (total, body, failed) = match chunk.get(0..2) {
            Some(h) => (u16::from_be_bytes([h[0], h[1]]), &chunk[2..], false),
            None => (0, &chunk[..0], true),
        };
        XorIterator {
            r: BitReader::new(body),
            total,
            read: 0,
            t: 0,
            v: 0,
            t_delta: 0,
            leading: 0xff,
            trailing: 0,
            failed,
        }
    }

    /// Number of samples the chunk header claims.
    pub fn len(&self) -> u16 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    fn step(&mut self) -> Result<Sample, ChunkError> {
        match self.read {
            0 => {
                self.t = self.r.read_varint()?;
                self.v = self.r.read_bits(64)?;
            }
            1 => {
                self.t_delta = self.r.read_uvarint()?;
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.v = read_xor(&mut self.r, self.v, &mut self.leading, &mut self.trailing)?;
            }
            _ => {
                let dod = read_bucketed(&mut self.r, &[14, 17, 20], 64)?;
                self.t_delta = self.t_delta.wrapping_add(dod as u64);
                self.t = self.t.wrapping_add(self.t_delta as i64);
                self.v = read_xor(&mut self.r, self.v, &mut self.leading, &mut self.trailing)?;
            }
        }
        self.read += 1;
        Ok(Sample {
            t: self.t,
            v: f64::from_bits(self.v),
        })
    }
}

impl Iterator for XorIterator<'_> {
    type Item = Result<Sample, ChunkError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            self.failed = false;
            self.read = self.total;
            return Some(Err(ChunkError("missing header")));
        }
        if self.read >= self.total {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.read = self.total;
        }
        Some(r)
    }
}

/// Decodes the samples of `chunk` with `mint <= t <= maxt` into `out`.
pub fn decode_range(
    chunk: &[u8],
    mint: i64,
    maxt: i64,
    out: &mut Vec<Sample>,
) -> Result<(), ChunkError> {
    for s in XorIterator::new(chunk) {
        let s = s?;
        if s.t > maxt {
            break;
        }
        if s.t >= mint {
            out.push(s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{STALE_NAN_BITS, stale_nan};
    use proptest::prelude::*;

    fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut c = new_chunk();
        let mut st = XorState::default();
        for &(t, v) in samples {
            st.append(&mut c, t, v);
        }
        c
    }

    fn decode(c: &[u8]) -> Vec<(i64, u64)> {
        XorIterator::new(c)
            .map(|s| s.map(|s| (s.t, s.v.to_bits())).unwrap())
            .collect()
    }

    #[test]
    fn regular_scrape_is_compact_and_exact() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, 42.0))
            .collect();
        let c = encode(&samples);
        // Header + first sample (varint t + 8 bytes) + ~2 bits per later sample.
        assert!(c.len() < 50, "chunk is {} bytes", c.len());
        let got = decode(&c);
        assert_eq!(got.len(), 120);
        assert!(
            got.iter()
                .zip(&samples)
                .all(|(g, s)| g.0 == s.0 && g.1 == s.1.to_bits())
        );
    }

    #[test]
    fn special_values_survive_bit_exactly() {
        let vals = [
            stale_nan(),
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            1.5,
            stale_nan(),
        ];
        let samples: Vec<(i64, f64)> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 1000 - 3000, v))
            .collect();
        let got = decode(&encode(&samples));
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
        assert_eq!(got[0].1, STALE_NAN_BITS);
    }

    #[test]
    fn prometheus_reference_bytes() {
        // Two samples: t=1000 v=1, t=2000 v=1 → header, varint(1000)=d0 0f, 64 bits of
        // 1.0, uvarint(1000)=e8 07, then a single 0 bit for the unchanged value.
        let c = encode(&[(1000, 1.0), (2000, 1.0)]);
        let mut want = vec![0, 2, 0xd0, 0x0f];
        want.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        want.extend_from_slice(&[0xe8, 0x07, 0x00]);
        assert_eq!(c, want);
    }

    #[test]
    fn truncated_chunk_is_an_error_not_a_panic() {
        let c = encode(&[(1, 1.0), (2, 2.0), (5, 3.0), (100, 9.0)]);
        for cut in 0..c.len() {
            let r: Result<Vec<_>, _> = XorIterator::new(&c[..cut]).collect();
            assert!(r.is_err() || cut >= c.len() - 1, "cut {cut} decoded");
        }
        assert!(XorIterator::new(&[]).next().unwrap().is_err());
    }

    #[test]
    fn decode_range_is_inclusive() {
        let c = encode(&[(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)]);
        let mut out = Vec::new();
        decode_range(&c, 20, 30, &mut out).unwrap();
        assert_eq!(out.iter().map(|s| s.t).collect::<Vec<_>>(), vec![20, 30]);
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(stale_nan()),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            (0i64..1000).prop_map(|x| x as f64),
        ]
    }

    fn gap() -> impl Strategy<Value = i64> {
        prop_oneof![
            0i64..3,
            14_990i64..15_010,
            1i64..(1 << 21),
            1i64..(1 << 40),
            Just(15_000i64)
        ]
    }

    proptest! {
        #[test]
        fn round_trip(start in -(1i64 << 45)..(1i64 << 45), gaps in proptest::collection::vec(gap(), 0..130), vals in proptest::collection::vec(value(), 131)) {
            let mut t = start;
            let mut samples = vec![(t, vals[0])];
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                samples.push((t, vals[i + 1]));
            }
            let got = decode(&encode(&samples));
            let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for s in XorIterator::new(&bytes).take(200) {
                let _ = s;
            }
        }
    }
}
