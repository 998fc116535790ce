//! Backend URLs: an endpoint path and a backend `url_pattern` compiled into a template
//! and rendered with path parameters, earlier backends' responses and JWT claims, as
//! `proxy::backend` does for every call.
//!
//! Input, one item per line: the endpoint path, the `url_pattern`, the responses of
//! earlier backends (a JSON array of objects, or one object), the JWT claims (a JSON
//! object), then one line per path parameter value.
//!
//! Invariant, the one `proxy::url` states: values from responses and claims are escaped
//! so that they cannot add path segments, a query or a fragment. Rendering with the
//! fuzzed values and with every such value replaced by `x` gives URLs with the same
//! `/`, `?` and `#`. Path parameters are put in as they are, so they are restricted to
//! what a request path segment can hold.

use serde_json::{Map, Value};
use weir_gateway::config::{self, Format};
use weir_gateway::proxy::url::{UrlTemplate, Values};

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let endpoint = lines.next().unwrap_or("");
    let pattern = lines.next().unwrap_or("");
    let responses: Vec<Option<Map<String, Value>>> = match lines.next().map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Array(items))) => items.into_iter().map(object).collect(),
        Some(Ok(v)) => vec![object(v)],
        _ => Vec::new(),
    };
    let claims = lines.next().and_then(|l| serde_json::from_str::<Value>(l).ok()).and_then(object);
    let params: Vec<String> = lines.map(segment).collect();
    let params: Vec<&str> = params.iter().map(String::as_str).collect();

    let _ = config::path_params(endpoint);
    let _ = config::resp_placeholder(pattern.trim_matches(|c| c == '{' || c == '}'));
    let template = UrlTemplate::compile(pattern, endpoint);
    let _ = template.has_query();
    let values = Values { params: &params, responses: &responses, claims: claims.as_ref() };
    let mut url = String::with_capacity(template.len_hint());
    template.render_into(&mut url, &values);
    let _ = http::uri::PathAndQuery::try_from(url.as_str());

    let plain_responses: Vec<Option<Map<String, Value>>> =
        responses.iter().map(|r| r.as_ref().map(neutral_map)).collect();
    let plain_claims = claims.as_ref().map(neutral_map);
    let plain = Values { params: &params, responses: &plain_responses, claims: plain_claims.as_ref() };
    let mut expected = String::new();
    template.render_into(&mut expected, &plain);
    for delimiter in ['/', '?', '#'] {
        assert_eq!(
            url.matches(delimiter).count(),
            expected.matches(delimiter).count(),
            "a value changed the URL's structure ({delimiter:?}): {url:?}"
        );
    }

    // The same pair through validation, as a config would carry it.
    let config = serde_json::json!({
        "version": 3,
        "host": ["http://127.0.0.1:1"],
        "endpoints": [{"endpoint": endpoint, "backend": [{"url_pattern": pattern}]}],
    });
    let _ = config::parse(&config.to_string(), Format::Json, |_| None);
}

fn object(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// What a router can hand over as one path segment: visible ASCII without the
/// delimiters of a path, a query or a fragment.
fn segment(line: &str) -> String {
    line.chars().filter(|c| c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#')).collect()
}

/// The same shape with every scalar replaced by `x`, so lookups find the same fields.
fn neutral(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(neutral_map(m)),
        Value::Array(items) => Value::Array(items.iter().map(neutral).collect()),
        _ => Value::String("x".into()),
    }
}

fn neutral_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter().map(|(k, v)| (k.clone(), neutral(v))).collect()
}
