//! Sealed chunks (`tsdb::chunkenc`, `tsdb::retention`): the input is a value of the
//! `chunks` tree (`[FORMAT_V1][max t][XOR chunk]`), split as the query path splits it
//! and decoded whole and by time range; the input is also decoded as a bare XOR chunk
//! (the wire's chunks are bare). No panic, no hang, and samples in time order re-encode
//! to a chunk that decodes to the same samples.
#![no_main]

#[path = "common/seeds.rs"]
mod seeds;

use libfuzzer_sys::fuzz_target;
use shoal::model::Sample;
use shoal::tsdb::chunkenc::{XorIterator, XorState, decode_range, new_chunk};
use shoal::tsdb::retention::{chunk_value, parse_chunk_value};

fn samples(chunk: &[u8]) -> Option<Vec<(i64, u64)>> {
    XorIterator::new(chunk)
        .map(|s| s.map(|s| (s.t, s.v.to_bits())))
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

fn check(chunk: &[u8], lo: i64, hi: i64) {
    let Some(all) = samples(chunk) else {
        let _ = decode_range(chunk, lo, hi, &mut Vec::new());
        return;
    };
    let mut part: Vec<Sample> = Vec::new();
    decode_range(chunk, lo, hi, &mut part).expect("a chunk that decodes whole decodes by range");
    if all.windows(2).all(|w| w[0].0 < w[1].0) {
        let want: Vec<(i64, u64)> = all
            .iter()
            .copied()
            .filter(|&(t, _)| lo <= t && t <= hi)
            .collect();
        let got: Vec<(i64, u64)> = part.iter().map(|s| (s.t, s.v.to_bits())).collect();
        assert_eq!(got, want, "decode_range keeps the samples in [lo, hi]");
        let mut c = new_chunk();
        let mut st = XorState::default();
        for &(t, v) in &all {
            st.append(&mut c, t, f64::from_bits(v));
        }
        assert_eq!(
            samples(&c).as_ref(),
            Some(&all),
            "re-encoded samples read back"
        );
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (n, step, f) in [
        (120i64, 15_000i64, 0u8),
        (3, 1, 1),
        (200, 60_000, 2),
        (1, 0, 3),
    ] {
        let mut c = new_chunk();
        let mut st = XorState::default();
        let mut t = 1_700_000_000_000i64;
        for i in 0..n {
            t += step + if f == 2 { i % 7 } else { 0 };
            let v = match f {
                0 => 42.0,
                1 => f64::NAN,
                2 => (i * i) as f64 / 3.0,
                _ => -1e-300,
            };
            st.append(&mut c, t, v);
        }
        out.push(chunk_value(t, &c));
    }
    out
}

fuzz_target!(
    init: seeds::write("chunk", seeds),
    |data: &[u8]| {
        if let Ok((max_t, bytes)) = parse_chunk_value(data) {
            check(bytes, i64::MIN, max_t);
            check(bytes, max_t.saturating_sub(3_600_000), max_t);
        }
        check(data, i64::MIN, i64::MAX);
    }
);
