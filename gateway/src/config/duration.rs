//! Go-style durations (`"3s"`, `"1h30m"`, `"1.5s"`, `"200ms"`), as KrakenD writes them.

use std::time::Duration;

/// Parses a Go `time.ParseDuration` string. Negative durations are refused: no
/// setting in a gateway config has a meaning for them.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} lacks a unit (ns, us, ms, s, m, h)"))?;
        if num_end == 0 {
            return Err(format!("{text:?} is not a duration like \"2s\" or \"1m30s\""));
        }
        let value: f64 = rest[..num_end].parse().map_err(|_| format!("{text:?} has a malformed number"))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => {
                return Err(format!("{text:?} has the unknown unit {other:?} (use ns, us, ms, s, m or h)"));
            }
        };
        total += value * nanos_per_unit;
        rest = &rest[unit_end..];
    }
    // Go's Duration is an int64 of nanoseconds: about 292 years.
    if total > i64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10us"), Ok(Duration::from_micros(10)));
    }

    #[test]
    fn refuses_malformed() {
        for bad in ["", "s", "10", "5x", "-1s", "1..2s", "ms5"] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }
}
