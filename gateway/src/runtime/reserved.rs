//! The gateway's own endpoints: `/__health`, `/__debug/` and `/__echo/`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use http::{Response, request::Parts};
use serde_json::{Map, Value, json};

use crate::proxy::render::JSON;
use crate::proxy::{Body, full};

fn json_response(v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

/// `{"agents":{},"now":"...","status":"ok"}`, with `now` in Go's `Time.String` form.
pub fn health() -> Response<Body> {
    json_response(&json!({"agents": {}, "now": go_time_string(SystemTime::now()), "status": "ok"}))
}

pub fn debug() -> Response<Body> {
    json_response(&json!({"message": "pong"}))
}

/// Describes the request back to the client, with KrakenD's field names.
pub fn echo(parts: &Parts, body: &Bytes) -> Response<Body> {
    let uri = &parts.uri;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let mut query: Map<String, Value> = Map::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let entry = query
            .entry(decode(k))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(Value::String(decode(v)));
        }
    }
    let mut headers: Map<String, Value> = Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(canonical(name.as_str()))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(Value::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
    }
    json_response(&json!({
        "req_uri": uri.path_and_query().map_or("/", |p| p.as_str()),
        "req_uri_details": {
            "fragment": "",
            "host": host,
            "path": uri.path(),
            "query": uri.query().unwrap_or(""),
            "scheme": uri.scheme_str().unwrap_or(""),
            "user": "",
        },
        "req_method": parts.method.as_str(),
        "req_querystring": query,
        "req_body": String::from_utf8_lossy(body),
        "req_headers": headers,
    }))
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Go's canonical header form: `x-forwarded-for` -> `X-Forwarded-For`.
fn canonical(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c });
        upper = c == '-';
    }
    out
}

/// `2006-01-02 15:04:05.999999999 +0000 UTC`: Go's `Time.String` in UTC.
fn go_time_string(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    let mut s = format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_time_format() {
        let t = UNIX_EPOCH + Duration::new(1_642_614_318, 84_402_000);
        assert_eq!(go_time_string(t), "2022-01-19 17:45:18.084402 +0000 UTC");
        assert_eq!(canonical("x-forwarded-for"), "X-Forwarded-For");
    }
}
