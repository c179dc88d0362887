//! Byte sizes as Prometheus parses `body_size_limit` (`units.ParseBase2Bytes` from
//! alecthomas/units): a sequence of `<number><unit>` with units `B`, `KB`/`KiB`, `MB`/
//! `MiB`, `GB`/`GiB`, `TB`/`TiB`, `PB`/`PiB`, `EB`/`EiB`, all powers of 1024; `0` alone is
//! zero. Negative sizes are rejected (shoal stores limits as `u64`).

const UNITS: [(&str, &str, u32); 7] = [
    ("B", "B", 0),
    ("KB", "KiB", 1),
    ("MB", "MiB", 2),
    ("GB", "GiB", 3),
    ("TB", "TiB", 4),
    ("PB", "PiB", 5),
    ("EB", "EiB", 6),
];

/// Parses a base-2 byte size such as `10MB`, `1.5KiB` or `1GB512MB`.
pub fn parse_base2_bytes(s: &str) -> Result<u64, String> {
    let err = || format!("invalid byte size {s:?} (expected e.g. 10MB, 512KiB, 0)");
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = if let Some(frac) = num.strip_prefix('.') {
            format!("0.{frac}").parse().map_err(|_| err())?
        } else {
            num.trim_end_matches('.').parse().map_err(|_| err())?
        };
        rest = &rest[num_len..];
        let unit_len = rest
            .bytes()
            .take_while(|b| !(b.is_ascii_digit() || *b == b'.'))
            .count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let pow = UNITS
            .iter()
            .find(|(a, b, _)| *a == unit || *b == unit)
            .map(|u| u.2)
            .ok_or_else(|| format!("unknown unit {unit:?} in byte size {s:?}"))?;
        total += value * 1024f64.powi(pow as i32);
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(format!("byte size {s:?} overflows"));
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_prometheus() {
        let cases = [
            ("0", 0),
            ("1B", 1),
            ("10MB", 10 << 20),
            ("10MiB", 10 << 20),
            ("1KB", 1024),
            ("1.5KB", 1536),
            (".5KB", 512),
            ("1GB512MB", (1 << 30) + (512 << 20)),
            ("2TiB", 2 << 40),
        ];
        for (s, want) in cases {
            assert_eq!(parse_base2_bytes(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "10",
            "10XB",
            "MB",
            "-1MB",
            "1..5MB",
            "10 MB",
            "100000000EB",
        ] {
            assert!(parse_base2_bytes(bad).is_err(), "{bad}");
        }
    }
}
