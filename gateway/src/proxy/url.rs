//! `url_pattern` templates, parsed once at compile time and rendered per request by
//! appending literal pieces and parameter values into one buffer.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::config::{path_params, resp_placeholder};

/// Characters escaped when a value from a backend response is put into a URL path,
/// so that a response cannot add path segments, a query or a fragment.
const UNSAFE_IN_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

#[derive(Debug, Clone)]
enum Piece {
    Literal(Box<str>),
    /// Index of the endpoint parameter, in path order.
    Param(usize),
    /// `{resp0_a.b}`: a field of an earlier backend's response (sequential mode).
    Resp {
        backend: usize,
        path: Box<[Box<str>]>,
        raw: Box<str>,
    },
    /// `{JWT.claim.path}`: a claim of the validated token; sent literally without one.
    Jwt {
        path: Box<[Box<str>]>,
        raw: Box<str>,
    },
}

/// A compiled `url_pattern`.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    pieces: Box<[Piece]>,
    len_hint: usize,
}

/// What a template is rendered with.
pub struct Values<'a> {
    /// Endpoint parameter values, in the order of the endpoint path.
    pub params: &'a [&'a str],
    /// Responses of earlier backends, for sequential endpoints.
    pub responses: &'a [Option<Map<String, Value>>],
    /// Claims of the request's validated JWT.
    pub claims: Option<&'a Map<String, Value>>,
}

impl UrlTemplate {
    /// Compiles `pattern` for an endpoint whose path is `endpoint_path`.
    pub fn compile(pattern: &str, endpoint_path: &str) -> Self {
        let params = path_params(endpoint_path);
        let mut pieces = Vec::new();
        let mut rest = pattern;
        while let Some(start) = rest.find('{') {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            if start > 0 {
                pieces.push(Piece::Literal(rest[..start].into()));
            }
            let name = &rest[start + 1..start + len];
            let piece = if let Some(i) = params.iter().position(|p| p == name) {
                Piece::Param(i)
            } else if let Some((backend, field)) = resp_placeholder(name) {
                Piece::Resp {
                    backend,
                    path: field.split('.').map(Box::from).collect(),
                    raw: rest[start..=start + len].into(),
                }
            } else {
                let claim = name.strip_prefix("JWT.").unwrap_or(name);
                Piece::Jwt { path: claim.split('.').map(Box::from).collect(), raw: rest[start..=start + len].into() }
            };
            pieces.push(piece);
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.into()));
        }
        Self { len_hint: pattern.len() + 16, pieces: pieces.into() }
    }

    /// Whether the pattern has a query string of its own.
    pub fn has_query(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Literal(l) if l.contains('?')))
    }

    /// The rendered path when the pattern has no placeholders: then it is the same for
    /// every request.
    pub fn fixed(&self) -> Option<&str> {
        match &*self.pieces {
            [] => Some(""),
            [Piece::Literal(text)] => Some(text),
            _ => None,
        }
    }

    pub fn len_hint(&self) -> usize {
        self.len_hint
    }

    /// Appends the rendered path (and the pattern's own query) to `out`.
    pub fn render_into(&self, out: &mut String, values: &Values<'_>) {
        for piece in self.pieces.iter() {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Param(i) => out.push_str(values.params.get(*i).copied().unwrap_or("")),
                Piece::Resp { backend, path, raw } => {
                    match values.responses.get(*backend).and_then(Option::as_ref).and_then(|m| lookup(m, path)) {
                        Some(v) => {
                            let text = format_value(v);
                            out.extend(utf8_percent_encode(&text, UNSAFE_IN_SEGMENT));
                        }
                        None => out.push_str(raw),
                    }
                }
                Piece::Jwt { path, raw } => match values.claims.and_then(|c| lookup(c, path)) {
                    Some(v) => out.extend(utf8_percent_encode(&format_value(v), UNSAFE_IN_SEGMENT)),
                    None => out.push_str(raw),
                },
            }
        }
    }
}

fn lookup<'a>(m: &'a Map<String, Value>, path: &[Box<str>]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = m.get(&**first)?;
    for key in rest {
        v = v.as_object()?.get(&**key)?;
    }
    Some(v)
}

/// Formats a response value as KrakenD does in URLs: strings as they are, numbers as
/// written, arrays joined with commas.
fn format_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(format_value).collect::<Vec<_>>().join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_params_query_and_responses() {
        let t = UrlTemplate::compile("/u/{id}/posts?limit=5&s={slug}", "/users/{id}/{slug}");
        let mut out = String::new();
        t.render_into(&mut out, &Values { params: &["7", "a-b"], responses: &[], claims: None });
        assert_eq!(out, "/u/7/posts?limit=5&s=a-b");
        assert!(t.has_query());

        let t = UrlTemplate::compile("/x/{resp0_user.id}/{resp0_tags}/{resp0_missing}/{JWT.sub}", "/a");
        let resp = json!({"user":{"id":42},"tags":["a","b c"]});
        let responses = [resp.as_object().cloned()];
        let mut out = String::new();
        t.render_into(&mut out, &Values { params: &[], responses: &responses, claims: None });
        assert_eq!(out, "/x/42/a,b%20c/{resp0_missing}/{JWT.sub}");
        let claims = json!({"sub": "user/1"});
        let mut out = String::new();
        t.render_into(&mut out, &Values { params: &[], responses: &responses, claims: claims.as_object() });
        assert_eq!(out, "/x/42/a,b%20c/{resp0_missing}/user%2F1");
    }
}
