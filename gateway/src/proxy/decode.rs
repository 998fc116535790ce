//! Backend response decoders (`encoding` of a backend): every one yields an object.

use quick_xml::events::Event;
use serde_json::{Map, Value};

use crate::config::BackendEncoding;

/// Why a backend body could not be decoded; the backend then counts as failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected a JSON object, found {0} (set is_collection for arrays)")]
    NotAnObject(&'static str),
    #[error("expected a JSON array (is_collection is set)")]
    NotAnArray,
    #[error("invalid XML: {0}")]
    Xml(String),
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("body is not UTF-8")]
    NotUtf8,
}

/// Decodes a body into the object that manipulation works on.
pub fn decode(encoding: BackendEncoding, is_collection: bool, body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    match encoding {
        BackendEncoding::Json if is_collection => match serde_json::from_slice(body)? {
            Value::Array(items) => Ok(single("collection", Value::Array(items))),
            _ => Err(DecodeError::NotAnArray),
        },
        BackendEncoding::Json => match serde_json::from_slice(body)? {
            Value::Object(m) => Ok(m),
            other => Err(DecodeError::NotAnObject(kind(&other))),
        },
        BackendEncoding::SafeJson => Ok(safe(serde_json::from_slice(body)?)),
        BackendEncoding::String => {
            let text = String::from_utf8_lossy(body).into_owned();
            Ok(single("content", Value::String(text)))
        }
        BackendEncoding::Yaml => {
            let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
            let v: Value = serde_saphyr::from_str(text).map_err(|e| DecodeError::Yaml(e.to_string()))?;
            Ok(safe(v))
        }
        BackendEncoding::Xml => {
            let v = xml_to_value(body)?;
            Ok(match v {
                Value::Object(m) if is_collection => single("collection", Value::Array(vec![Value::Object(m)])),
                Value::Object(m) => m,
                other => single("content", other),
            })
        }
        BackendEncoding::NoOp => Ok(Map::new()),
    }
}

/// `safejson`: objects as they are, arrays under `collection`, anything else under `result`.
fn safe(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        Value::Array(items) => single("collection", Value::Array(items)),
        other => single("result", other),
    }
}

fn single(key: &str, v: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.to_owned(), v);
    m
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Object(_) => "an object",
    }
}

/// One element being built while reading XML.
struct Element {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

/// XML to JSON the way KrakenD's XML decoder does it: the root element is the only
/// key, attributes become `-name` keys, text of an element with attributes or children
/// goes under `#text`, repeated children become arrays, and every value is a string.
fn xml_to_value(body: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| DecodeError::Xml(e.to_string()))?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) if root.is_none() => {
                let mut el = Element {
                    name: String::from_utf8_lossy(start.name().as_ref()).into_owned(),
                    fields: Map::new(),
                    text: String::new(),
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|e| DecodeError::Xml(e.to_string()))?;
                    let key = format!("-{}", String::from_utf8_lossy(attr.key.as_ref()));
                    let value = attr.unescape_value().map_err(|e| DecodeError::Xml(e.to_string()))?.into_owned();
                    el.fields.insert(key, Value::String(value));
                }
                if matches!(event, Event::Empty(_)) {
                    close(el, &mut stack, &mut root);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let Some(done) = stack.pop() else {
                    return Err(DecodeError::Xml("unbalanced end tag".into()));
                };
                close(done, &mut stack, &mut root);
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let text = t.decode().map_err(|e| DecodeError::Xml(e.to_string()))?;
                    let text = quick_xml::escape::unescape(&text).map_err(|e| DecodeError::Xml(e.to_string()))?;
                    top.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    let name = String::from_utf8_lossy(&r);
                    let entity = format!("&{name};");
                    let text = quick_xml::escape::unescape(&entity).map_err(|e| DecodeError::Xml(e.to_string()))?;
                    top.text.push_str(&text);
                }
            }
            Event::Eof => break,
            Event::Start(_) | Event::Empty(_) => {
                return Err(DecodeError::Xml("content after the root element".into()));
            }
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(DecodeError::Xml("unexpected end of document".into()));
    }
    match root {
        Some((name, v)) => {
            let mut m = Map::new();
            m.insert(name, v);
            Ok(Value::Object(m))
        }
        None => Err(DecodeError::Xml("no root element".into())),
    }
}

fn close(mut done: Element, stack: &mut [Element], root: &mut Option<(String, Value)>) {
    // Whitespace between child elements is layout, not content.
    let trimmed = done.text.trim();
    if trimmed.len() != done.text.len() {
        done.text = trimmed.to_owned();
    }
    let value = if done.fields.is_empty() {
        Value::String(done.text)
    } else {
        let mut fields = done.fields;
        if !done.text.is_empty() {
            fields.insert("#text".into(), Value::String(done.text));
        }
        Value::Object(fields)
    };
    match stack.last_mut() {
        Some(parent) => match parent.fields.get_mut(&done.name) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                parent.fields.insert(done.name, value);
            }
        },
        None => *root = Some((done.name, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_object_array_and_collection() {
        assert_eq!(Value::Object(decode(BackendEncoding::Json, false, br#"{"a":1}"#).unwrap()), json!({"a":1}));
        assert!(decode(BackendEncoding::Json, false, b"[1]").is_err());
        assert_eq!(Value::Object(decode(BackendEncoding::Json, true, b"[1]").unwrap()), json!({"collection":[1]}));
        assert!(decode(BackendEncoding::Json, false, b"{nope").is_err());
    }

    #[test]
    fn safejson_and_string() {
        assert_eq!(Value::Object(decode(BackendEncoding::SafeJson, false, b"[1]").unwrap()), json!({"collection":[1]}));
        assert_eq!(Value::Object(decode(BackendEncoding::SafeJson, false, b"true").unwrap()), json!({"result":true}));
        assert_eq!(Value::Object(decode(BackendEncoding::String, false, b"hi").unwrap()), json!({"content":"hi"}));
    }

    #[test]
    fn xml_like_mxj() {
        let body =
            br#"<?xml version="1.0"?><user id="7"><name>Ada &amp; co</name><tag>a</tag><tag>b</tag><empty/></user>"#;
        let v = Value::Object(decode(BackendEncoding::Xml, false, body).unwrap());
        assert_eq!(v, json!({"user":{"-id":"7","name":"Ada & co","tag":["a","b"],"empty":""}}));
        assert!(decode(BackendEncoding::Xml, false, b"<a><b></a>").is_err());
    }
}
