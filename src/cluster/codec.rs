//! The one binary format of the cluster module: bincode 2 (`config::standard()`, serde)
//! behind a leading format-version byte. Everything the cluster persists in sled and
//! everything it sends between nodes goes through [`encode`] / [`decode`], so swapping
//! the encoding later is a change to this file only.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound on a single decoded value; protects against malformed length prefixes.
const DECODE_LIMIT: usize = 256 << 20;

/// Why bytes could not be turned into a value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input (no format version byte)")]
    Empty,
    #[error("unsupported format version {found} (this build understands {FORMAT_VERSION})")]
    Version { found: u8 },
    #[error("malformed bincode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{trailing} trailing bytes after the value")]
    Trailing { trailing: usize },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes `value` as `[FORMAT_VERSION, bincode...]`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(value, config())?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// `bincode::serde::decode_from_slice` with a limit on the bytes the decoder may claim
/// that grows with the body. bincode allocates (and zeroes) a string's or byte vector's
/// declared length before it reads it, checking only that limit: under a fixed limit a
/// body of a few bytes could make the node allocate up to the whole limit. A value
/// claims at most 16 times its encoded size (a one-byte varint u64 claims 8), so the
/// limit is 16 times the body rounded up to a power of four, at least 64 KiB, at most
/// [`DECODE_LIMIT`].
fn decode_slice<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    crate::model::bounded_decode::decode_slice::<T, DECODE_LIMIT>(body)
}

/// Decodes bytes written by [`encode`]; rejects other versions and trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version });
    }
    let (value, read) = decode_slice(body)?;
    if read != body.len() {
        return Err(CodecError::Trailing {
            trailing: body.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let v = (7u64, String::from("a:1"), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, v);

        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&wrong),
            Err(CodecError::Version { found: 99 })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&trailing),
            Err(CodecError::Trailing { trailing: 1 })
        ));
        // Garbage claiming a huge string length must fail, not allocate or panic.
        let garbage = [
            FORMAT_VERSION,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert!(decode::<String>(&garbage).is_err());
    }

    /// Found by the `query_wire` fuzz target (the same holds here): a few bytes
    /// declaring a 200 MB string made the decoder allocate it before finding the body
    /// short.
    #[test]
    fn a_short_body_cannot_claim_a_big_allocation() {
        let mut body = vec![FORMAT_VERSION, 9, 0xfc];
        body.extend_from_slice(&200_000_000u32.to_le_bytes());
        body.extend_from_slice(b"10.0.0.9:9090");
        assert!(matches!(
            decode::<(u64, String)>(&body),
            Err(CodecError::Decode(
                bincode::error::DecodeError::LimitExceeded
            ))
        ));
        let big = (7u64, "x".repeat(5 << 20), vec![3u64; 1 << 16]);
        let back: (u64, String, Vec<u64>) = decode(&encode(&big).unwrap()).unwrap();
        assert_eq!(back, big);
    }
}
