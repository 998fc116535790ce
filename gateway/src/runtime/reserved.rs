//! The gateway's own endpoints: `/__health`, `/__debug/` and `/__echo/`.

use std::time::SystemTime;

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
/// A managed node listens only once a verified bundle is active, so a health check
/// that answers at all means the node is ready.
pub fn health() -> Response<Body> {
    json_response(&json!({"agents": {}, "now": crate::time::go_string(SystemTime::now()), "status": "ok"}))
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
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let entry = query.entry(decode(k)).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(Value::String(decode(v)));
        }
    }
    let mut headers: Map<String, Value> = Map::new();
    for (name, value) in &parts.headers {
        let entry = headers.entry(canonical(name.as_str())).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
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
    percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_header_names() {
        assert_eq!(canonical("x-forwarded-for"), "X-Forwarded-For");
    }
}
