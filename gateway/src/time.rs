//! Wall-clock formatting without a date library: the two formats the gateway writes.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-27T17:45:18Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (date, secs) = split(t);
    format!("{date}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// `2006-01-02 15:04:05.999999999 +0000 UTC`: Go's `Time.String` in UTC, which
/// KrakenD's `/__health` shows.
pub fn go_string(t: SystemTime) -> String {
    let (date, secs) = split(t);
    let mut s = format!("{date} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = t.duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Parses the `rfc3339` form back (UTC `Z` only), for expiry checks.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.split('.').next().unwrap_or(p).parse::<u64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, m as u32, day as u32);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn split(t: SystemTime) -> (String, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    (format!("{y:04}-{m:02}-{d:02}"), secs % 86_400)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_and_parses() {
        let t = UNIX_EPOCH + Duration::new(1_642_614_318, 84_402_000);
        assert_eq!(go_string(t), "2022-01-19 17:45:18.084402 +0000 UTC");
        assert_eq!(rfc3339(t), "2022-01-19T17:45:18Z");
        assert_eq!(parse_rfc3339("2022-01-19T17:45:18Z"), Some(UNIX_EPOCH + Duration::from_secs(1_642_614_318)));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(rfc3339).as_deref(), Some("2024-02-29T00:00:00Z"));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
