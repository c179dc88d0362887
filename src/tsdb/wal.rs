//! The write-ahead log's record format. One record per committed batch; the head
//! buffers records and a background thread writes the buffer to the `wal` tree about
//! once a second (group commit) under key `(segment BE u32, sequence BE u32)`, value
//! `[FORMAT_DEFLATE][raw deflate of (uvarint len, record)*]` (values written by older
//! versions, `[FORMAT_V1][(uvarint len, record)*]`, are still read).
//!
//! A record is `flags u8 | uvarint n | [varint t when all samples share it] |
//! uvarint runs | (zigzag gap, uvarint len)* | bit stream`. Series ids are sorted and
//! stored as runs of consecutive ids. The bit stream holds, per sample, the timestamp
//! (when not shared) as a delta-of-delta and the value as: `0` unchanged, `10` + integer
//! delta-of-delta (for integral values, i.e. counters and histogram buckets), `11` +
//! Gorilla XOR. Both sides keep a [`WalCursor`] per series that is reset at every
//! segment start, so a segment decodes on its own once older segments are truncated.

use super::chunkenc::{BitReader, BitWriter, ChunkError, bit_range, read_xor, write_xor};
use super::codec::{U64Map, get_uvarint, get_varint, put_uvarint, put_varint, unzigzag, zigzag};

const FLAG_SHARED_T: u8 = 1;

/// Per-series encoder/decoder state of the WAL. `n == 0` means fresh (next sample is
/// written in full); `t`/`v` hold the series' last sample either way.
#[derive(Debug, Clone, Copy)]
pub struct WalCursor {
    pub t: i64,
    pub v: u64,
    pub t_delta: i64,
    pub v_delta: i64,
    pub leading: u8,
    pub trailing: u8,
    pub n: u8,
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

    /// Writes one sample; `with_t` is false when the record shares one timestamp.
    pub fn encode(&mut self, w: &mut BitWriter<'_>, t: i64, v: f64, with_t: bool) {
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
            let dod = t.wrapping_sub(self.t).wrapping_sub(self.t_delta);
            if dod == 0 {
                w.write_bit(false);
            } else if bit_range(dod, 14) {
                w.write_bits(0b10, 2);
                w.write_bits(dod as u64, 14);
            } else if bit_range(dod, 20) {
                w.write_bits(0b110, 3);
                w.write_bits(dod as u64, 20);
            } else {
                w.write_bits(0b111, 3);
                w.write_bits(dod as u64, 64);
            }
        }
        if vb == self.v {
            w.write_bit(false);
        } else {
            let int_dod = match (as_int(f64::from_bits(self.v)), as_int(v)) {
                (Some(a), Some(b)) => Some(b.wrapping_sub(a).wrapping_sub(self.v_delta)),
                _ => None,
            };
            match int_dod {
                Some(d) if bit_range(d, 24) => {
                    w.write_bits(0b10, 2);
                    if d == 0 {
                        w.write_bit(false);
                    } else if bit_range(d, 4) {
                        w.write_bits(0b10, 2);
                        w.write_bits(d as u64, 4);
                    } else if bit_range(d, 12) {
                        w.write_bits(0b110, 3);
                        w.write_bits(d as u64, 12);
                    } else {
                        w.write_bits(0b111, 3);
                        w.write_bits(d as u64, 24);
                    }
                }
                _ => {
                    w.write_bits(0b11, 2);
                    write_xor(w, self.v, vb, &mut self.leading, &mut self.trailing);
                }
            }
        }
        self.after(t, vb);
    }

    /// Reads one sample written by [`WalCursor::encode`]; `shared_t` is the record's
    /// timestamp when it has one.
    pub fn decode(
        &mut self,
        r: &mut BitReader<'_>,
        shared_t: Option<i64>,
    ) -> Result<(i64, u64), ChunkError> {
        if self.n == 0 {
            let t = match shared_t {
                Some(t) => t,
                None => r.read_bits(64)? as i64,
            };
            let v = r.read_bits(64)?;
            self.after(t, v);
            return Ok((t, v));
        }
        let t = match shared_t {
            Some(t) => t,
            None => {
                let dod = if !r.read_bit()? {
                    0
                } else if !r.read_bit()? {
                    signed(r.read_bits(14)?, 14)
                } else if !r.read_bit()? {
                    signed(r.read_bits(20)?, 20)
                } else {
                    r.read_bits(64)? as i64
                };
                self.t.wrapping_add(self.t_delta).wrapping_add(dod)
            }
        };
        let v = if !r.read_bit()? {
            self.v
        } else if !r.read_bit()? {
            let d = if !r.read_bit()? {
                0
            } else if !r.read_bit()? {
                signed(r.read_bits(4)?, 4)
            } else if !r.read_bit()? {
                signed(r.read_bits(12)?, 12)
            } else {
                signed(r.read_bits(24)?, 24)
            };
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

fn signed(bits: u64, sz: u8) -> i64 {
    let mut b = bits as i64;
    if b > (1i64 << (sz - 1)) {
        b -= 1i64 << sz;
    }
    b
}

/// Builds one record. Feed samples sorted by series id (stable for one series).
pub struct RecordBuilder {
    shared_t: Option<i64>,
    ids: Vec<u64>,
    bits: Vec<u8>,
    free: u8,
}

impl RecordBuilder {
    /// `shared_t`: the timestamp every sample of the record has, if any.
    pub fn new(shared_t: Option<i64>, cap: usize) -> Self {
        RecordBuilder {
            shared_t,
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
        cursor.encode(&mut w, t, v, self.shared_t.is_none());
        self.free = w.free;
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends `uvarint len, record` to `out`. Returns the record's length.
    pub fn finish_into(self, out: &mut Vec<u8>) -> usize {
        let mut rec = Vec::with_capacity(16 + self.bits.len());
        rec.push(if self.shared_t.is_some() {
            FLAG_SHARED_T
        } else {
            0
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
            let (t, v) = c
                .decode(&mut r, shared_t)
                .map_err(|e| format!("wal: series {id}: {e}"))?;
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
        let mut enc: U64Map<WalCursor> = U64Map::default();
        let mut buf = Vec::new();
        for (shared, samples) in batches {
            let mut b = RecordBuilder::new(*shared, samples.len());
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
            (0i64..(1 << 53)).prop_map(|x| x as f64)
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
            let (out, _) = round_trip(&input);
            let want: Vec<(u64, i64, u64)> = input.iter().flat_map(|(_, s)| s.iter().map(|&(id, t, v)| (id, t, v.to_bits()))).collect();
            prop_assert_eq!(out, want);
        }
    }
}
