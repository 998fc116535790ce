//! Output encoders (`output_encoding` of an endpoint).

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Map, Value};

use crate::config::OutputEncoding;

pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
pub const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
pub const XML: HeaderValue = HeaderValue::from_static("application/xml; charset=utf-8");
pub const YAML: HeaderValue = HeaderValue::from_static("application/x-yaml; charset=utf-8");

/// Encodes merged data for the client. `accept` is only read by `negotiate`.
pub fn render(
    encoding: OutputEncoding,
    accept: Option<&HeaderValue>,
    data: &Map<String, Value>,
) -> (Bytes, HeaderValue) {
    match encoding {
        OutputEncoding::Json | OutputEncoding::NoOp => (json(data), JSON),
        OutputEncoding::JsonCollection => {
            let body = match data.get("collection") {
                Some(v @ Value::Array(_)) => serde_json::to_vec(v).map(Bytes::from).unwrap_or_default(),
                _ => Bytes::from_static(b"[]"),
            };
            (body, JSON)
        }
        OutputEncoding::String => {
            let body = match data.get("content") {
                Some(Value::String(s)) => Bytes::copy_from_slice(s.as_bytes()),
                _ => Bytes::new(),
            };
            (body, TEXT)
        }
        OutputEncoding::Xml => (xml(data), XML),
        OutputEncoding::Yaml => (yaml(data), YAML),
        OutputEncoding::Negotiate => {
            let accept = accept.and_then(|a| a.to_str().ok()).unwrap_or("");
            match negotiate(accept) {
                OutputEncoding::Xml => (xml(data), XML),
                OutputEncoding::Yaml => (yaml(data), YAML),
                _ => (json(data), JSON),
            }
        }
    }
}

fn json(data: &Map<String, Value>) -> Bytes {
    // Serialising a map of JSON values cannot fail; an empty object is the safe fallback.
    serde_json::to_vec(data).map(Bytes::from).unwrap_or_else(|_| Bytes::from_static(b"{}"))
}

fn yaml(data: &Map<String, Value>) -> Bytes {
    serde_saphyr::to_string(data).map(Bytes::from).unwrap_or_default()
}

/// Picks an encoding from `Accept` by q-value: XML, YAML (also for `text/plain`, as
/// KrakenD does) or JSON for anything else.
fn negotiate(accept: &str) -> OutputEncoding {
    let mut best = (OutputEncoding::Json, -1.0f32);
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces.find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.parse::<f32>().ok())).unwrap_or(1.0);
        let enc = match media.as_str() {
            "application/json" => OutputEncoding::Json,
            "application/xml" | "text/xml" => OutputEncoding::Xml,
            "application/x-yaml" | "application/yaml" | "text/yaml" | "text/plain" => OutputEncoding::Yaml,
            _ => continue,
        };
        if q > best.1 {
            best = (enc, q);
        }
    }
    best.0
}

/// XML the way KrakenD writes it: a single key becomes the root element, otherwise
/// the keys go under `<doc>`; `-name` keys are attributes and `#text` is text.
pub fn xml(data: &Map<String, Value>) -> Bytes {
    let mut out = String::with_capacity(128);
    if data.len() == 1 {
        if let Some((k, v)) = data.iter().next() {
            element(&mut out, k, v);
        }
    } else if data.is_empty() {
        out.push_str("<doc/>");
    } else {
        out.push_str("<doc>");
        for (k, v) in data {
            element(&mut out, k, v);
        }
        out.push_str("</doc>");
    }
    Bytes::from(out)
}

fn element(out: &mut String, name: &str, v: &Value) {
    let name = xml_name(name);
    match v {
        Value::Array(items) => {
            for item in items {
                element(out, &name, item);
            }
        }
        Value::Object(m) => {
            out.push('<');
            out.push_str(&name);
            for (k, a) in m {
                if let Some(attr) = k.strip_prefix('-') {
                    out.push(' ');
                    out.push_str(&xml_name(attr));
                    out.push_str("=\"");
                    escape(out, &scalar(a));
                    out.push('"');
                }
            }
            out.push('>');
            for (k, child) in m {
                if k == "#text" {
                    escape(out, &scalar(child));
                } else if !k.starts_with('-') {
                    element(out, k, child);
                }
            }
            out.push_str("</");
            out.push_str(&name);
            out.push('>');
        }
        Value::Null => {
            out.push('<');
            out.push_str(&name);
            out.push_str("/>");
        }
        other => {
            out.push('<');
            out.push_str(&name);
            out.push('>');
            escape(out, &scalar(other));
            out.push_str("</");
            out.push_str(&name);
            out.push('>');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Keys that are not valid XML names have their invalid characters replaced.
fn xml_name(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect();
    if s.is_empty() || !s.starts_with(|c: char| c.is_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn json_sorts_keys_and_collection_unwraps() {
        let d = obj(json!({"b":1,"a":[1],"collection":[{"x":1}]}));
        assert_eq!(&render(OutputEncoding::Json, None, &d).0[..], br#"{"a":[1],"b":1,"collection":[{"x":1}]}"#);
        assert_eq!(&render(OutputEncoding::JsonCollection, None, &d).0[..], br#"[{"x":1}]"#);
        assert_eq!(&render(OutputEncoding::JsonCollection, None, &Map::new()).0[..], b"[]");
    }

    #[test]
    fn xml_and_negotiation() {
        let d = obj(json!({"user":{"-id":"7","name":"A&B","tags":["x","y"]}}));
        assert_eq!(&xml(&d)[..], br#"<user id="7"><name>A&amp;B</name><tags>x</tags><tags>y</tags></user>"#);
        let accept = HeaderValue::from_static("text/html, application/xml;q=0.9, application/json;q=0.8");
        assert_eq!(render(OutputEncoding::Negotiate, Some(&accept), &d).1, XML);
        assert_eq!(render(OutputEncoding::Negotiate, None, &d).1, JSON);
    }
}
