//! bincode decoding with a claim limit that grows with the body (the cluster's and
//! `/internal/query`'s bodies). bincode allocates (and zeroes) a string's or byte vector's
//! declared length before it reads it, checking only the configured limit: under a fixed
//! limit a body of a few bytes could make a node allocate up to the whole limit. A value
//! claims at most 16 times its encoded size (a one-byte varint u64 claims 8), so the
//! limit is 16 times the body rounded up to a power of four, at least 64 KiB, at most
//! `MAX`.

use serde::de::DeserializeOwned;

/// Decodes a `T` from the start of `body` under the growing limit; returns it and the
/// bytes read.
pub fn decode_slice<T: DeserializeOwned, const MAX: usize>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    fn with<T: DeserializeOwned, const L: usize>(
        body: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, bincode::config::standard().with_limit::<L>())
    }
    let need = body.len().saturating_mul(16);
    if need <= 0x1_0000 {
        with::<T, 0x1_0000>(body)
    } else if need <= 0x4_0000 {
        with::<T, 0x4_0000>(body)
    } else if need <= 0x10_0000 {
        with::<T, 0x10_0000>(body)
    } else if need <= 0x40_0000 {
        with::<T, 0x40_0000>(body)
    } else if need <= 0x100_0000 {
        with::<T, 0x100_0000>(body)
    } else if need <= 0x400_0000 {
        with::<T, 0x400_0000>(body)
    } else if need <= 0x1000_0000 && MAX > 0x1000_0000 {
        with::<T, 0x1000_0000>(body)
    } else {
        with::<T, MAX>(body)
    }
}
