//! `validation/json-schema`: request bodies must match a JSON Schema, or get 400 with
//! the first few violations.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use serde_json::Value;

use super::{Problems, problem};
use crate::proxy::{Body, full};

/// Enough violations to fix a request, few enough to keep the answer short.
const MAX_VIOLATIONS: usize = 5;

/// A compiled `validation/json-schema`.
pub struct BodySchema {
    validator: jsonschema::Validator,
}

impl BodySchema {
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        jsonschema::validator_for(v)
            .map(|validator| Self { validator })
            .map_err(|e| vec![problem(path, format!("is not a valid JSON Schema: {e}"))])
    }

    /// Checks a request body; the refusal lists where and how it does not match.
    pub fn check(&self, body: &[u8]) -> Result<(), Response<Body>> {
        let instance: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Err(bad_request(vec![format!("body is not JSON: {e}")])),
        };
        let violations: Vec<String> = self
            .validator
            .iter_errors(&instance)
            .take(MAX_VIOLATIONS)
            .map(|e| {
                let at = e.instance_path.as_str();
                format!("{}: {e}", if at.is_empty() { "/" } else { at })
            })
            .collect();
        if violations.is_empty() { Ok(()) } else { Err(bad_request(violations)) }
    }
}

fn bad_request(violations: Vec<String>) -> Response<Body> {
    let body = serde_json::json!({"error": "invalid request body", "violations": violations});
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(header::CONTENT_TYPE, crate::proxy::render::JSON);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_violations_with_their_place() {
        let s = BodySchema::compile(
            &json!({"type": "object", "required": ["name"], "properties": {"age": {"type": "integer", "minimum": 0}}}),
            "v",
        )
        .unwrap();
        assert!(s.check(br#"{"name":"a","age":3}"#).is_ok());
        let r = s.check(br#"{"age":-1}"#).unwrap_err();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(s.check(b"not json").is_err());
        assert!(BodySchema::compile(&json!({"type": 5}), "v").is_err());
    }
}
