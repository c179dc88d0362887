//! The write-ahead log's record format. One record per committed batch; the head
//! buffers records and a background thread writes the buffer to the `wal` tree about
//! once a second (group commit) under key `(segment BE u32, sequence BE u32)`, value
//! `[FORMAT_DEFLATE][raw deflate of (uvarint len, record)*]` (values written by older
//! versions, `[FORMAT_V1][(uvarint len, record)*]`, are still read).
//!
//! A record is `flags u8 | uvarint n | [varint t when all samples share it] |
//! uvarint runs | (zigzag gap, uvarint len)* | bit stream`. Series ids are sorted and
//! stored as runs of consecutive ids. The bit stream holds, per sample, the timestamp
//! (when not shared) as a delta-of-delta, then the value. Both sides keep a
//! [`WalCursor`] per series that is reset at every segment start, so a segment decodes
//! on its own once older segments are truncated. The first value of a series in a
//! segment is written as its 64 bits.
//!
//! Values, format 2 (flag [`FLAG_DECIMAL`], what is written): exposition values are
//! decimals (`17`, `0.734521`, `1234.56789012345`), so a value is taken as an integer
//! mantissa `m` at a decimal exponent `e` (`v == m / 10^e` exactly, `|m| ≤ 2^53`) and
//! the mantissa's delta-of-delta is written: `0` unchanged, `10` + dod at the series'
//! exponent, `110` + 5-bit new exponent + dod, `111` + Gorilla XOR for values that are
//! no such decimal (NaN, ±Inf, -0, 17-digit floats). dods: `0` zero, `10`+sign ±1,
//! `110`+7 bits, `1110`+14 bits, `11110`+28 bits, `11111`+64 bits. Counters, histogram
//! buckets and printed gauges thus cost a few bits where XOR costs tens.
//!
//! Format 1 (records without the flag, from older versions, still read): `0`
//! unchanged, `10` + integer delta-of-delta (integral values only), `11` + Gorilla XOR.

use super::chunkenc::{
    BitReader, BitWriter, ChunkError, read_bucketed, read_xor, write_bucketed, write_xor,
};
use super::codec::{U64Map, get_uvarint, get_varint, put_uvarint, put_varint, unzigzag, zigzag};

const FLAG_SHARED_T: u8 = 1;
/// The record's values use the decimal encoding (format 2).
const FLAG_DECIMAL: u8 = 2;

/// Exponent of a cursor whose last value was not written as a decimal.
const NO_EXP: u8 = u8::MAX;
/// Largest decimal exponent tried (10^18 is exact in an f64).
const MAX_EXP: u8 = 18;
const POW10: [f64; MAX_EXP as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];
/// Mantissas stay within f64's exact integers.
const MAX_MANTISSA: f64 = 9_007_199_254_740_992.0;

/// `m` with `v == m / 10^e` bit for bit, if there is one. IEEE division is correctly
/// rounded, so `m / 10^e` is exactly what parsing the decimal `m`e-`e` gives.
fn mantissa_at(v: f64, e: u8) -> Option<i64> {
    let p = *POW10.get(usize::from(e))?;
    let s = (v * p).round();
    // NaN fails this too.
    if s.is_nan() || s.abs() > MAX_MANTISSA {
        return None;
    }
    let m = s as i64;
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// The smallest exponent (at least `from`) `v` is a decimal at.
fn decimal_from(v: f64, from: u8) -> Option<(u8, i64)> {
    (from..=MAX_EXP).find_map(|e| mantissa_at(v, e).map(|m| (e, m)))
}

/// Writes a mantissa delta-of-delta.
fn write_dod(w: &mut BitWriter<'_>, d: i64) {
    let fits = |bits: u32| d >= -(1i64 << (bits - 1)) && d < (1i64 << (bits - 1));
    let mask = |bits: u32| (d as u64) & ((1u64 << bits) - 1);
    match d {
        0 => w.write_bit(false),
        1 | -1 => {
            w.write_bits(0b10, 2);
            w.write_bit(d < 0);
        }
        _ if fits(7) => {
            w.write_bits(0b110, 3);
            w.write_bits(mask(7), 7);
        }
        _ if fits(14) => {
            w.write_bits(0b1110, 4);
            w.write_bits(mask(14), 14);
        }
        _ if fits(28) => {
            w.write_bits(0b11110, 5);
            w.write_bits(mask(28), 28);
        }
        _ => {
            w.write_bits(0b11111, 5);
            w.write_bits(d as u64, 64);
        }
    }
}

fn read_dod(r: &mut BitReader<'_>) -> Result<i64, ChunkError> {
    let sext = |x: u64, bits: u32| ((x << (64 - bits)) as i64) >> (64 - bits);
    if !r.read_bit()? {
        return Ok(0);
    }
    if !r.read_bit()? {
        return Ok(if r.read_bit()? { -1 } else { 1 });
    }
    for bits in [7u8, 14, 28] {
        if !r.read_bit()? {
            return Ok(sext(r.read_bits(bits)?, u32::from(bits)));
        }
    }
    Ok(r.read_bits(64)? as i64)
}

/// Per-series encoder/decoder state of the WAL. `n == 0` means fresh (next sample is
/// written in full); `t`/`v` hold the series' last sample either way.
#[derive(Debug, Clone, Copy)]
pub struct WalCursor {
    pub t: i64,
    pub v: u64,
    pub t_delta: i64,
    /// Format 2: the last mantissa delta at `exp`. Format 1: the last integer delta.
    pub v_delta: i64,
    pub leading: u8,
    pub trailing: u8,
    pub n: u8,
    /// Format 2: the decimal exponent of the last value ([`NO_EXP`] when it had none).
    pub exp: u8,
}

impl Default for WalCursor {
    fn default() -> Self {
        WalCursor {
            t: i64::MIN,
            v: 0,
            t_delta: 0,
            v_delta: 0,
            leading: 0xff,
            trailing: 0,
            n: 0,
            exp: NO_EXP,
        }
    }
}

/// The value as an integer when it is one exactly (sign of zero included).
fn as_int(x: f64) -> Option<i64> {
    if x.is_finite() && x.abs() <= 9_007_199_254_740_992.0 {
        let i = x as i64;
        if (i as f64).to_bits() == x.to_bits() {
            return Some(i);
        }
    }
    None
}

impl WalCursor {
    /// Forgets the encoding state (segment start) but keeps the last sample.
    pub fn reset(&mut self) {
        *self = WalCursor {
            t: self.t,
            v: self.v,
            ..WalCursor::default()
        };
    }

    fn after(&mut self, t: i64, v: u64) {
        if self.n > 0 {
            self.t_delta = t.wrapping_sub(self.t);
            self.v_delta = match (as_int(f64::from_bits(self.v)), as_int(f64::from_bits(v))) {
                (Some(a), Some(b)) => b.wrapping_sub(a),
                _ => 0,
            };
        }
        self.t = t;
        self.v = v;
        self.n = self.n.saturating_add(1).min(2);
    }

    fn encode_t(&self, w: &mut BitWriter<'_>, t: i64) {
        let dod = t.wrapping_sub(self.t).wrapping_sub(self.t_delta);
        write_bucketed(w, dod, &[(0b10, 2, 14), (0b110, 3, 20)], (0b111, 3, 64));
    }

    fn decode_t(&self, r: &mut BitReader<'_>) -> Result<i64, ChunkError> {
        let dod = read_bucketed(r, &[14, 20], 64)?;
        Ok(self.t.wrapping_add(self.t_delta).wrapping_add(dod))
    }

    /// State after a sample (format 2); `exp`/`v_delta` as the value was written.
    fn after_v2(&mut self, t: i64, v: u64, exp: u8, v_delta: i64) {
        if self.n > 0 {
            self.t_delta = t.wrapping_sub(self.t);
        }
        self.t = t;
        self.v = v;
        self.exp = exp;
        self.v_delta = v_delta;
        self.n = self.n.saturating_add(1).min(2);
    }

    /// Writes one sample (format 2); `with_t` is false when the record shares one
    /// timestamp.
    pub fn encode(&mut self, w: &mut BitWriter<'_>, t: i64, v: f64, with_t: bool) {
        let vb = v.to_bits();
        if self.n == 0 {
            if with_t {
                w.write_bits(t as u64, 64);
            }
            w.write_bits(vb, 64);
            let exp = decimal_from(v, 0).map_or(NO_EXP, |(e, _)| e);
            self.after_v2(t, vb, exp, 0);
            return;
        }
        if with_t {
            self.encode_t(w, t);
        }
        let prev = f64::from_bits(self.v);
        if vb == self.v {
            w.write_bit(false);
            let exp = self.exp;
            self.after_v2(t, vb, exp, 0);
            return;
        }
        // At the series' exponent (the previous value is a decimal there by construction).
        if self.exp != NO_EXP
            && let (Some(m), Some(m0)) = (mantissa_at(v, self.exp), mantissa_at(prev, self.exp))
        {
            let delta = m.wrapping_sub(m0);
            w.write_bits(0b10, 2);
            write_dod(w, delta.wrapping_sub(self.v_delta));
            let exp = self.exp;
            self.after_v2(t, vb, exp, delta);
            return;
        }
        let from = if self.exp == NO_EXP { 0 } else { self.exp };
        if let Some((e, m)) = decimal_from(v, from) {
            let delta = mantissa_at(prev, e).map_or(0, |m0| m.wrapping_sub(m0));
            w.write_bits(0b110, 3);
            w.write_bits(u64::from(e), 5);
            // With no previous mantissa at `e`, the "delta" written is `m` itself.
            write_dod(w, if delta == 0 { m } else { delta });
            self.after_v2(t, vb, e, delta);
            return;
        }
        w.write_bits(0b111, 3);
        write_xor(w, self.v, vb, &mut self.leading, &mut self.trailing);
        self.after_v2(t, vb, NO_EXP, 0);
    }

    /// Reads one sample written by [`WalCursor::encode`]; `shared_t` is the record's
    /// timestamp when it has one.
    pub fn decode(
        &mut self,
        r: &mut BitReader<'_>,
        shared_t: Option<i64>,
    ) -> Result<(i64, u64), ChunkError> {
        if self.n == 0 {
            let (t, vb) = read_first(r, shared_t)?;
            let exp = decimal_from(f64::from_bits(vb), 0).map_or(NO_EXP, |(e, _)| e);
            self.after_v2(t, vb, exp, 0);
            return Ok((t, vb));
        }
        let t = match shared_t {
            Some(t) => t,
            None => self.decode_t(r)?,
        };
        let prev = f64::from_bits(self.v);
        if !r.read_bit()? {
            let (vb, exp) = (self.v, self.exp);
            self.after_v2(t, vb, exp, 0);
            return Ok((t, vb));
        }
        if !r.read_bit()? {
            let m0 = mantissa_at(prev, self.exp)
                .ok_or(ChunkError("decimal delta without a decimal exponent"))?;
            let delta = self.v_delta.wrapping_add(read_dod(r)?);
            let vb = (m0.wrapping_add(delta) as f64 / POW10[usize::from(self.exp)]).to_bits();
            let exp = self.exp;
            self.after_v2(t, vb, exp, delta);
            return Ok((t, vb));
        }
        if !r.read_bit()? {
            let e = r.read_bits(5)? as u8;
            let p = *POW10
                .get(usize::from(e))
                .ok_or(ChunkError("decimal exponent out of range"))?;
            let written = read_dod(r)?;
            // The encoder wrote the delta when the previous value is a decimal at `e`
            // (never 0: the value changed), else the mantissa itself.
            let (m, delta) = match mantissa_at(prev, e) {
                Some(m0) => (m0.wrapping_add(written), written),
                None => (written, 0),
            };
            let vb = (m as f64 / p).to_bits();
            self.after_v2(t, vb, e, delta);
            return Ok((t, vb));
        }
        let vb = read_xor(r, self.v, &mut self.leading, &mut self.trailing)?;
        self.after_v2(t, vb, NO_EXP, 0);
        Ok((t, vb))
    }

    /// Writes one sample in format 1 (tests of reading older WALs).
    #[cfg(test)]
    pub fn encode_v1(&mut self, w: &mut BitWriter<'_>, t: i64, v: f64, with_t: bool) {
        let vb = v.to_bits();
        if self.n == 0 {
            if with_t {
                w.write_bits(t as u64, 64);
            }
            w.write_bits(vb, 64);
            self.after(t, vb);
            return;
        }
        if with_t {
            self.encode_t(w, t);
        }
        if vb == self.v {
            w.write_bit(false);
        } else {
            let int_dod = match (as_int(f64::from_bits(self.v)), as_int(v)) {
                (Some(a), Some(b)) => Some(b.wrapping_sub(a).wrapping_sub(self.v_delta)),
                _ => None,
            };
            match int_dod {
                Some(d) if super::chunkenc::bit_range(d, 24) => {
                    w.write_bits(0b10, 2);
                    write_bucketed(w, d, &[(0b10, 2, 4), (0b110, 3, 12)], (0b111, 3, 24));
                }
                _ => {
                    w.write_bits(0b11, 2);
                    write_xor(w, self.v, vb, &mut self.leading, &mut self.trailing);
                }
            }
        }
        self.after(t, vb);
    }

    /// Reads one sample in format 1 (records of older versions).
    pub fn decode_v1(
        &mut self,
        r: &mut BitReader<'_>,
        shared_t: Option<i64>,
    ) -> Result<(i64, u64), ChunkError> {
        if self.n == 0 {
            let (t, v) = read_first(r, shared_t)?;
            self.after(t, v);
            return Ok((t, v));
        }
        let t = match shared_t {
            Some(t) => t,
            None => self.decode_t(r)?,
        };
        let v = if !r.read_bit()? {
            self.v
        } else if !r.read_bit()? {
            let d = read_bucketed(r, &[4, 12], 24)?;
            let prev = as_int(f64::from_bits(self.v))
                .ok_or(ChunkError("integer delta on a non-integer value"))?;
            (prev.wrapping_add(self.v_delta).wrapping_add(d) as f64).to_bits()
        } else {
            // write_xor's own "changed" bit.
            read_xor(r, self.v, &mut self.leading, &mut self.trailing)?
        };
        self.after(t, v);
        Ok((t, v))
    }
}

/// A series' first sample in a segment: its timestamp (unless shared) and value, in full.
fn read_first(r: &mut BitReader<'_>, shared_t: Option<i64>) -> Result<(i64, u64), ChunkError> {
    let t = match shared_t {
        Some(t) => t,
        None => r.read_bits(64)? as i64,
    };
    Ok((t, r.read_bits(64)?))
}

/// Builds one record. Feed samples sorted by series id (stable for one series).
pub struct RecordBuilder {
    shared_t: Option<i64>,
    /// Format 1 (only tests of reading older WALs write it).
    v1: bool,
    ids: Vec<u64>,
    bits: Vec<u8>,
    free: u8,
}

impl RecordBuilder {
    /// `shared_t`: the timestamp every sample of the record has, if any.
    pub fn new(shared_t: Option<i64>, cap: usize) -> Self {
        RecordBuilder {
            shared_t,
            v1: false,
            ids: Vec::with_capacity(cap),
            bits: Vec::with_capacity(cap * 2),
            free: 0,
        }
    }

    pub fn push(&mut self, id: u64, cursor: &mut WalCursor, t: i64, v: f64) {
        self.ids.push(id);
        let mut w = BitWriter {
            buf: &mut self.bits,
            free: self.free,
        };
        if self.v1 {
            #[cfg(test)]
            cursor.encode_v1(&mut w, t, v, self.shared_t.is_none());
        } else {
            cursor.encode(&mut w, t, v, self.shared_t.is_none());
        }
        self.free = w.free;
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends `uvarint len, record` to `out`. Returns the record's length.
    pub fn finish_into(self, out: &mut Vec<u8>) -> usize {
        let mut rec = Vec::with_capacity(16 + self.bits.len());
        let shared = if self.shared_t.is_some() {
            FLAG_SHARED_T
        } else {
            0
        };
        rec.push(if self.v1 {
            shared
        } else {
            shared | FLAG_DECIMAL
        });
        put_uvarint(&mut rec, self.ids.len() as u64);
        if let Some(t) = self.shared_t {
            put_varint(&mut rec, t);
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &id in &self.ids {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == id => *len += 1,
                _ => runs.push((id, 1)),
            }
        }
        put_uvarint(&mut rec, runs.len() as u64);
        let mut expected: u64 = 0;
        for (start, len) in runs {
            put_uvarint(&mut rec, zigzag(start.wrapping_sub(expected) as i64));
            put_uvarint(&mut rec, len);
            expected = start + len;
        }
        rec.extend_from_slice(&self.bits);
        put_uvarint(out, rec.len() as u64);
        out.extend_from_slice(&rec);
        rec.len()
    }
}

/// Decodes the records of one WAL value (without its version byte), calling `f` for
/// every sample `(series id, t, value bits)` in order. `cursors` is the per-segment
/// decoder state.
pub fn decode_records(
    buf: &[u8],
    cursors: &mut U64Map<WalCursor>,
    mut f: impl FnMut(u64, i64, u64),
) -> Result<(), String> {
    let mut pos = 0;
    while pos < buf.len() {
        let len = get_uvarint(buf, &mut pos).ok_or("wal: truncated record length")? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or("wal: truncated record")?;
        decode_record(&buf[pos..end], cursors, &mut f)?;
        pos = end;
    }
    Ok(())
}

fn decode_record(
    rec: &[u8],
    cursors: &mut U64Map<WalCursor>,
    f: &mut impl FnMut(u64, i64, u64),
) -> Result<(), String> {
    let flags = *rec.first().ok_or("wal: empty record")?;
    let mut pos = 1;
    let n = get_uvarint(rec, &mut pos).ok_or("wal: bad sample count")?;
    let shared_t = if flags & FLAG_SHARED_T != 0 {
        Some(get_varint(rec, &mut pos).ok_or("wal: bad timestamp")?)
    } else {
        None
    };
    let nruns = get_uvarint(rec, &mut pos).ok_or("wal: bad run count")?;
    let mut runs = Vec::with_capacity((nruns as usize).min(1 << 16));
    let mut expected: u64 = 0;
    let mut total: u64 = 0;
    for _ in 0..nruns {
        let gap = unzigzag(get_uvarint(rec, &mut pos).ok_or("wal: bad run")?);
        let len = get_uvarint(rec, &mut pos).ok_or("wal: bad run")?;
        let start = expected.wrapping_add(gap as u64);
        total = total.saturating_add(len);
        runs.push((start, len));
        expected = start.wrapping_add(len);
    }
    if total != n {
        return Err(format!(
            "wal: record has {n} samples but runs cover {total}"
        ));
    }
    let mut r = BitReader::new(&rec[pos..]);
    for (start, len) in runs {
        for id in start..start.wrapping_add(len) {
            let c = cursors.entry(id).or_default();
            let res = if flags & FLAG_DECIMAL != 0 {
                c.decode(&mut r, shared_t)
            } else {
                c.decode_v1(&mut r, shared_t)
            };
            let (t, v) = res.map_err(|e| format!("wal: series {id}: {e}"))?;
            f(id, t, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;
    use proptest::prelude::*;

    type Batch = (Option<i64>, Vec<(u64, i64, f64)>);

    fn round_trip(batches: &[Batch]) -> (Vec<(u64, i64, u64)>, usize) {
        round_trip_as(batches, false)
    }

    fn round_trip_as(batches: &[Batch], v1: bool) -> (Vec<(u64, i64, u64)>, usize) {
        let mut enc: U64Map<WalCursor> = U64Map::default();
        let mut buf = Vec::new();
        for (shared, samples) in batches {
            let mut b = RecordBuilder::new(*shared, samples.len());
            b.v1 = v1;
            for &(id, t, v) in samples {
                b.push(id, enc.entry(id).or_default(), t, v);
            }
            b.finish_into(&mut buf);
        }
        let mut dec = U64Map::default();
        let mut out = Vec::new();
        decode_records(&buf, &mut dec, |id, t, v| out.push((id, t, v))).unwrap();
        (out, buf.len())
    }

    #[test]
    fn scrape_batches_of_counters_are_small() {
        let mut batches = Vec::new();
        for s in 0..60i64 {
            let t = 1_700_000_000_000 + s * 5000;
            let samples = (1..=1000u64)
                .map(|id| {
                    (
                        id,
                        t,
                        (1_000_000 * id as i64 + s * (id as i64 % 7) * 5) as f64,
                    )
                })
                .collect();
            batches.push((Some(t), samples));
        }
        let (out, bytes) = round_trip(&batches);
        assert_eq!(out.len(), 60_000);
        let want: Vec<(u64, i64, u64)> = batches
            .iter()
            .flat_map(|(_, s)| s.iter().map(|&(id, t, v)| (id, t, v.to_bits())))
            .collect();
        assert_eq!(out, want);
        let per = bytes as f64 / 60_000.0;
        assert!(per < 0.6, "{per} bytes per sample");
    }

    #[test]
    fn printed_gauges_and_float_counters_cost_far_less_than_xor() {
        // As targets print them: gauges with 6 significant digits, float counters
        // (histogram sums) with 15, integer counters.
        let mut batches = Vec::new();
        for s in 0..60i64 {
            let t = 1_700_000_000_000 + s * 5000;
            let x = s as f64 * 5.0;
            let samples: Vec<(u64, i64, f64)> = (1..=900u64)
                .map(|id| {
                    let a = id as f64 / 7.0;
                    let v: f64 = match id % 3 {
                        0 => format!("{:.6}", 0.5 + 0.3 * (x / 600.0 + a).sin())
                            .parse()
                            .unwrap(),
                        1 => format!("{:.14e}", a * (1e6 + x)).parse().unwrap(),
                        _ => (a * (1e6 + x)).floor(),
                    };
                    (id, t, v)
                })
                .collect();
            batches.push((Some(t), samples));
        }
        let want: Vec<(u64, i64, u64)> = batches
            .iter()
            .flat_map(|(_, s)| s.iter().map(|&(id, t, v)| (id, t, v.to_bits())))
            .collect();
        let (out, v2) = round_trip(&batches);
        assert_eq!(out, want);
        let (out, v1) = round_trip_as(&batches, true);
        assert_eq!(out, want);
        let (v1, v2) = (v1 as f64 / 54_000.0, v2 as f64 / 54_000.0);
        eprintln!("format 2: {v2:.3} B/sample, format 1: {v1:.3}");
        assert!(v2 < 0.5 * v1, "format 2: {v2} B/sample, format 1: {v1}");
    }

    #[test]
    fn truncated_records_are_errors() {
        let mut enc = WalCursor::default();
        let mut b = RecordBuilder::new(None, 2);
        b.push(5, &mut enc, 10, 1.5);
        let mut buf = Vec::new();
        b.finish_into(&mut buf);
        for cut in 0..buf.len() {
            let r = decode_records(&buf[..cut], &mut U64Map::default(), |_, _, _| {});
            assert!(r.is_err() || cut == 0, "cut {cut}");
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(stale_nan()),
            Just(-0.0),
            Just(f64::INFINITY),
            (-1000i64..1000).prop_map(|x| x as f64),
            (0i64..(1 << 53)).prop_map(|x| x as f64),
            // Printed decimals, as expositions hold them.
            (-10_000_000i64..10_000_000, 0usize..19).prop_map(|(m, e)| m as f64 / POW10[e]),
            (0.0f64..1.0).prop_map(|x| format!("{x:.6}").parse().unwrap()),
            Just(9_007_199_254_740_993.0),
            Just(1e300),
        ]
    }

    proptest! {
        #[test]
        fn any_samples_round_trip(batches in proptest::collection::vec((any::<bool>(), -(1i64 << 50)..(1i64 << 50), proptest::collection::vec((0u64..20, -100_000i64..100_000, value()), 0..30)), 0..8)) {
            let mut input = Vec::new();
            for (shared, t0, mut samples) in batches {
                samples.sort_by_key(|s| s.0);
                let samples: Vec<(u64, i64, f64)> = samples.into_iter().map(|(id, dt, v)| (id, if shared { t0 } else { t0 + dt }, v)).collect();
                input.push((if shared { Some(t0) } else { None }, samples));
            }
            let want: Vec<(u64, i64, u64)> = input.iter().flat_map(|(_, s)| s.iter().map(|&(id, t, v)| (id, t, v.to_bits()))).collect();
            prop_assert_eq!(&round_trip(&input).0, &want);
            // Records of older versions (format 1) still read.
            prop_assert_eq!(&round_trip_as(&input, true).0, &want);
        }
    }
}
