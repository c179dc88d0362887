//! Prometheus durations: `1y2w3d4h5m6s7ms` (units in that order, each at most once).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid duration string: {0:?}")]
pub struct DurationError(pub String);

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a Prometheus duration. `0` alone is allowed, as in Prometheus.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut rest = s;
    let mut total: u64 = 0;
    let mut last_unit = None::<usize>;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        // "ms" must be tried before "m".
        let (idx, len) = if rest.starts_with("ms") {
            (6, 2)
        } else {
            let idx = UNITS[..6]
                .iter()
                .position(|(u, _)| rest.starts_with(u))
                .ok_or_else(err)?;
            (idx, 1)
        };
        if last_unit.is_some_and(|l| l >= idx) {
            return Err(err());
        }
        last_unit = Some(idx);
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        rest = &rest[len..];
    }
    Ok(Duration::from_millis(total))
}

/// Formats as Prometheus does (`1h30m`, `15s`, `0s`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (u, f) in UNITS {
        if ms >= f {
            out.push_str(&format!("{}{}", ms / f, u));
            ms %= f;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "1", "s", "1m1h", "1s1s", "-1s", "1.5s", "1x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_prometheus() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(15)), "15s");
        assert_eq!(format(Duration::from_secs(14 * 86400)), "2w");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
