//! Parsing of API parameters as Prometheus's API does: times (unix seconds or RFC 3339),
//! durations (seconds or Prometheus durations), and `match[]` series selectors.

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::Expr;

use crate::model::{MatchOp, Matcher};

/// The smallest and largest times the API accepts, as Prometheus's `minTime`/`maxTime`.
pub const MIN_TIME_MS: i64 = -9_223_372_036_854_775 + 1;
pub const MAX_TIME_MS: i64 = 9_223_372_036_854_775 - 1;

/// Parses a time parameter: float unix seconds or RFC 3339. Returns milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        let ms = (f * 1000.0).round();
        if ms < MIN_TIME_MS as f64 || ms > MAX_TIME_MS as f64 {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        return Ok(ms as i64);
    }
    // Prometheus clients send these exact strings for "no bound".
    if s == "-292273086-05-16T16:47:06Z" {
        return Ok(MIN_TIME_MS);
    }
    if s == "292277025-08-18T07:12:54.999999999Z" {
        return Ok(MAX_TIME_MS);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Parses a duration parameter: float seconds or a Prometheus duration. Returns ms.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        let ms = f * 1000.0;
        if !ms.is_finite() || ms.abs() > i64::MAX as f64 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ms.round() as i64);
    }
    crate::model::duration::parse(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("cannot parse {s:?} to a valid duration"))
}

/// Parses a boolean parameter as Go's `strconv.ParseBool` (`1`, `t`, `true`, `0`, `f`,
/// `false`, any case of the words).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("cannot parse {s:?} as a boolean")),
    }
}

/// Parses one `match[]` selector into alternatives of matcher lists (a selector with
/// `or` gives several).
pub fn parse_selector(s: &str) -> Result<Vec<Vec<Matcher>>, String> {
    let expr = promql_parser::parser::parse(s).map_err(|e| format!("1:1: parse error: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!(
            "invalid parameter \"match[]\": 1:1: parse error: expected vector selector, got {s}"
        ));
    };
    let convert = |ms: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>, String> {
        let mut out = Vec::with_capacity(ms.len() + 1);
        if let Some(n) = &vs.name {
            out.push(Matcher::equal(crate::model::labels::METRIC_NAME, n.clone()));
        }
        for m in ms {
            let op = match m.op {
                PMatchOp::Equal => MatchOp::Equal,
                PMatchOp::NotEqual => MatchOp::NotEqual,
                PMatchOp::Re(_) => MatchOp::Regex,
                PMatchOp::NotRe(_) => MatchOp::NotRegex,
            };
            out.push(Matcher::new(op, m.name.clone(), m.value.clone()).map_err(|e| e.to_string())?);
        }
        Ok(out)
    };
    let mut alts = Vec::new();
    if vs.matchers.or_matchers.is_empty() {
        alts.push(convert(&vs.matchers.matchers)?);
    } else {
        for ms in &vs.matchers.or_matchers {
            alts.push(convert(ms)?);
        }
    }
    for ms in &alts {
        if ms.iter().all(|m| m.matches_empty()) {
            return Err("match[] must contain at least one non-empty matcher".into());
        }
    }
    Ok(alts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1435781451.781").unwrap(), 1_435_781_451_781);
        assert_eq!(
            parse_time("2015-07-01T20:10:51.781Z").unwrap(),
            1_435_781_451_781
        );
        assert_eq!(
            parse_time("2015-07-01T22:10:51.781+02:00").unwrap(),
            1_435_781_451_781
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("NaN").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15").unwrap(), 15_000);
        assert_eq!(parse_duration_ms("0.5").unwrap(), 500);
        assert_eq!(parse_duration_ms("1m").unwrap(), 60_000);
        assert!(parse_duration_ms("1x").is_err());
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("1"), Ok(true));
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("False"), Ok(false));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn selectors() {
        let alts = parse_selector(r#"up{job=~"a.*"}"#).unwrap();
        assert_eq!(alts.len(), 1);
        assert_eq!(alts[0].len(), 2);
        assert!(parse_selector(r#"{job=~".*"}"#).is_err());
        assert!(parse_selector("sum(up)").is_err());
        assert!(parse_selector("up{").is_err());
    }
}
