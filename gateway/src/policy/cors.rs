//! Cross-origin resource sharing (`security/cors`), answered the way KrakenD does:
//! KrakenD hands its settings to rs/cors v1.11, so that library's behaviour is the
//! reference here.
//!
//! * A preflight is an `OPTIONS` request with a non-empty `Access-Control-Request-Method`.
//!   It is answered at once with `options_success_status` (204) and never reaches an
//!   endpoint. When the origin, the method or one of the requested headers is not
//!   allowed, the answer carries only `Vary`: the browser then refuses the real request.
//! * Actual requests always get `Vary: Origin`; an allowed `Origin` adds
//!   `Access-Control-Allow-Origin`, `-Expose-Headers` and `-Allow-Credentials`.
//! * Origins are matched without regard to case and may hold one `*` that stands for
//!   any text (`https://*.example.com`).

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use serde_json::Value;

use super::Problems;
use super::settings::Settings;
use crate::proxy::{Body, full};

/// The `extra_config` namespace this component reads.
pub const NAMESPACE: &str = "security/cors";

/// Every key of the namespace in KrakenD's schema; `debug` is accepted and has no effect.
pub const KEYS: &[&str] = &[
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "allow_credentials",
    "max_age",
    "allow_private_network",
    "options_passthrough",
    "options_success_status",
    "debug",
];

const ANY_ORIGIN: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ACTUAL: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue =
    HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
const VARY_PREFLIGHT_PRIVATE: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network",
);
const REQUEST_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-request-private-network");
const ALLOW_PRIVATE_NETWORK: HeaderName = HeaderName::from_static("access-control-allow-private-network");

/// rs/cors' methods when `allow_methods` is absent or empty: the CORS "simple" methods.
const DEFAULT_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];
/// rs/cors' headers when `allow_headers` is absent or empty. `origin` is added to
/// every list because some browsers always ask for it.
const DEFAULT_HEADERS: &[&str] = &["accept", "content-type", "x-requested-with"];

/// A compiled `security/cors` policy.
#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    methods: Vec<Method>,
    headers: AllowedHeaders,
    credentials: bool,
    private_network: bool,
    passthrough: bool,
    status: StatusCode,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    vary_preflight: HeaderValue,
}

#[derive(Debug)]
enum Origins {
    Any,
    Listed { exact: Vec<Box<str>>, wildcards: Vec<Wildcard> },
}

/// An origin with one `*`: anything that starts with `prefix` and ends with `suffix`.
#[derive(Debug)]
struct Wildcard {
    prefix: Box<str>,
    suffix: Box<str>,
}

#[derive(Debug)]
enum AllowedHeaders {
    Any,
    /// Lower-case names.
    Listed(Vec<Box<str>>),
}

impl Cors {
    /// Compiles the namespace value found at `path`, reporting every bad key.
    pub fn compile(v: &Value, path: &str) -> Result<Cors, Problems> {
        let mut s = Settings::new(v, path);
        let origins = origins(&mut s);
        let methods = methods(&mut s);
        let headers = allowed_headers(&mut s);
        let expose = expose_headers(&mut s);
        let credentials = s.flag("allow_credentials").unwrap_or(false);
        let private_network = s.flag("allow_private_network").unwrap_or(false);
        let passthrough = s.flag("options_passthrough").unwrap_or(false);
        // rs/cors logs through its own logger with `debug`; Weir's request logs already
        // show what a preflight got, so the flag is only type-checked.
        s.flag("debug");
        // KrakenD passes whole seconds to rs/cors, which leaves the header out for 0.
        let max_age = s.duration("max_age").map(|d| d.as_secs()).filter(|&secs| secs > 0).map(HeaderValue::from);
        let status = s
            .uint("options_success_status", 100, 599)
            .and_then(|n| u16::try_from(n).ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .unwrap_or(StatusCode::NO_CONTENT);
        let vary_preflight = if private_network { VARY_PREFLIGHT_PRIVATE } else { VARY_PREFLIGHT };
        s.finish(Cors {
            origins,
            methods,
            headers,
            credentials,
            private_network,
            passthrough,
            status,
            expose,
            max_age,
            vary_preflight,
        })
    }

    /// Answers a CORS preflight: `Some` for an `OPTIONS` request carrying
    /// `Access-Control-Request-Method`, `None` for anything else (and for every request
    /// with `options_passthrough`, whose preflight headers [`Cors::decorate`] adds).
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
        if *method != Method::OPTIONS || self.passthrough {
            return None;
        }
        let requested = requested_method(headers)?;
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = self.status;
        self.preflight_headers(requested, headers, response.headers_mut());
        Some(response)
    }

    /// Adds the CORS headers of an actual request's response. Not for responses made
    /// by [`Cors::preflight`]. With `options_passthrough`, a request carrying
    /// `Access-Control-Request-Method` is a preflight the endpoint answered, and gets
    /// the preflight headers instead.
    pub fn decorate(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        if self.passthrough
            && let Some(requested) = requested_method(request_headers)
        {
            self.preflight_headers(requested, request_headers, response_headers);
            return;
        }
        // Always, so that caches keep apart the answers for different origins.
        response_headers.append(VARY, VARY_ACTUAL);
        let Some(origin) = request_headers.get(ORIGIN) else { return };
        if !self.origin_allowed(origin) {
            return;
        }
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if let Some(expose) = &self.expose {
            response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
        if self.credentials {
            response_headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
    }

    fn preflight_headers(&self, requested: &HeaderValue, request: &HeaderMap, out: &mut HeaderMap) {
        out.append(VARY, self.vary_preflight.clone());
        let Some(origin) = request.get(ORIGIN) else { return };
        if !self.origin_allowed(origin) || !self.method_allowed(requested) || !self.headers_allowed(request) {
            return;
        }
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        // The requested method and headers are echoed, as the Fetch standard allows,
        // rather than the whole configured lists.
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, requested.clone());
        for asked in request.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            if !asked.is_empty() {
                out.append(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
        }
        if self.credentials {
            out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if self.private_network && request.get(REQUEST_PRIVATE_NETWORK).is_some_and(|v| v.as_bytes() == b"true") {
            out.insert(ALLOW_PRIVATE_NETWORK, TRUE);
        }
        if let Some(max_age) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
    }

    /// `*` only for any origin without credentials: browsers refuse `*` on a
    /// credentialed request, so the origin is echoed then.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if matches!(self.origins, Origins::Any) && !self.credentials { ANY_ORIGIN } else { origin.clone() }
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        if origin.is_empty() {
            return false;
        }
        match &self.origins {
            Origins::Any => true,
            Origins::Listed { exact, wildcards } => {
                exact.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
                    || wildcards.iter().any(|w| w.matches(origin))
            }
        }
    }

    fn method_allowed(&self, requested: &HeaderValue) -> bool {
        let requested = requested.as_bytes();
        // rs/cors always lets a preflight ask for OPTIONS itself.
        b"OPTIONS".eq_ignore_ascii_case(requested)
            || self.methods.iter().any(|m| m.as_str().as_bytes().eq_ignore_ascii_case(requested))
    }

    fn headers_allowed(&self, request: &HeaderMap) -> bool {
        let AllowedHeaders::Listed(allowed) = &self.headers else { return true };
        request.get_all(ACCESS_CONTROL_REQUEST_HEADERS).iter().all(|line| {
            let Ok(line) = line.to_str() else { return false };
            line.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .all(|name| name.eq_ignore_ascii_case("origin") || allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
        })
    }
}

impl Wildcard {
    fn matches(&self, origin: &[u8]) -> bool {
        let (prefix, suffix) = (self.prefix.as_bytes(), self.suffix.as_bytes());
        origin.len() >= prefix.len() + suffix.len()
            && origin[..prefix.len()].eq_ignore_ascii_case(prefix)
            && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    }
}

fn requested_method(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(ACCESS_CONTROL_REQUEST_METHOD).filter(|v| !v.is_empty())
}

fn origins(s: &mut Settings<'_>) -> Origins {
    let Some(list) = s.strings("allow_origins") else { return Origins::Any };
    // An empty list means any origin in rs/cors, as does a `*` anywhere in the list.
    if list.is_empty() || list.iter().any(|(_, o)| *o == "*") {
        return Origins::Any;
    }
    let mut exact = Vec::new();
    let mut wildcards = Vec::new();
    for (i, origin) in list {
        let origin = origin.trim().to_ascii_lowercase();
        match origin.split_once('*') {
            None if origin.is_empty() => s.error_at(s.item("allow_origins", i), "must not be empty"),
            None => exact.push(origin.into_boxed_str()),
            Some((_, suffix)) if suffix.contains('*') => {
                // rs/cors would take the second `*` literally and never match.
                s.error_at(s.item("allow_origins", i), format!("{origin:?} has more than one *, only one is allowed"));
            }
            Some((prefix, suffix)) => wildcards.push(Wildcard { prefix: prefix.into(), suffix: suffix.into() }),
        }
    }
    Origins::Listed { exact, wildcards }
}

fn methods(s: &mut Settings<'_>) -> Vec<Method> {
    let list = s.strings("allow_methods").unwrap_or_default();
    if list.is_empty() {
        return DEFAULT_METHODS.to_vec();
    }
    let mut methods = Vec::with_capacity(list.len());
    for (i, name) in list {
        // KrakenD documents upper case; accepting any case spares a confusing mismatch.
        match Method::from_bytes(name.trim().to_ascii_uppercase().as_bytes()) {
            Ok(m) if !name.trim().is_empty() => methods.push(m),
            _ => s.error_at(s.item("allow_methods", i), format!("{name:?} is not an HTTP method")),
        }
    }
    methods
}

fn allowed_headers(s: &mut Settings<'_>) -> AllowedHeaders {
    let list = s.strings("allow_headers").unwrap_or_default();
    if list.is_empty() {
        return AllowedHeaders::Listed(DEFAULT_HEADERS.iter().map(|&h| h.into()).collect());
    }
    if list.iter().any(|(_, h)| *h == "*") {
        return AllowedHeaders::Any;
    }
    let mut names = Vec::with_capacity(list.len());
    for (i, name) in list {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) => names.push(h.as_str().into()),
            Err(_) => s.error_at(s.item("allow_headers", i), format!("{name:?} is not a header name")),
        }
    }
    AllowedHeaders::Listed(names)
}

/// The precomputed `Access-Control-Expose-Headers` value, names in canonical case as
/// rs/cors sends them.
fn expose_headers(s: &mut Settings<'_>) -> Option<HeaderValue> {
    let list = s.strings("expose_headers")?;
    let mut joined = String::new();
    for (i, name) in list {
        let name = name.trim();
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            s.error_at(s.item("expose_headers", i), format!("{name:?} is not a header name"));
            continue;
        }
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        canonical_name(name, &mut joined);
    }
    // Valid header names joined by ", " always make a valid value.
    HeaderValue::from_str(&joined).ok().filter(|v| !v.is_empty())
}

/// `x-request-id` -> `X-Request-Id`, like Go's `http.CanonicalHeaderKey`.
fn canonical_name(name: &str, out: &mut String) {
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        upper = c == '-';
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::*;

    fn cors(v: Value) -> Cors {
        Cors::compile(&v, "extra_config.security/cors").unwrap()
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn preflight(c: &Cors, pairs: &[(&str, &str)]) -> Response<Body> {
        c.preflight(&Method::OPTIONS, &request(pairs)).expect("a preflight")
    }

    fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    fn cors_headers(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).filter(|k| k.starts_with("access-control-")).collect()
    }

    #[test]
    fn defaults_allow_any_origin_with_simple_methods() {
        let c = cors(json!({}));
        let r = preflight(&c, &[("origin", "https://app.example"), ("access-control-request-method", "POST")]);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(header(h, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(h, "access-control-allow-methods"), Some("POST"));
        assert_eq!(header(h, "vary"), Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"));
        assert_eq!(header(h, "access-control-max-age"), None, "no max_age, no header");
        assert_eq!(header(h, "access-control-allow-credentials"), None);
        let body = r.into_body().collect().now_or_never().unwrap().unwrap().to_bytes();
        assert!(body.is_empty());

        // PUT is not a simple method, so the default list refuses it.
        let r = preflight(&c, &[("origin", "https://app.example"), ("access-control-request-method", "PUT")]);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(cors_headers(r.headers()).is_empty());
        // rs/cors' default headers cover what fetch() sends for JSON.
        let r = preflight(
            &c,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "content-type,x-requested-with"),
            ],
        );
        assert_eq!(header(r.headers(), "access-control-allow-headers"), Some("content-type,x-requested-with"));
    }

    #[test]
    fn allowed_preflight_gets_every_configured_header() {
        let c = cors(json!({
            "allow_origins": ["https://app.example"],
            "allow_methods": ["GET", "PUT"],
            "allow_headers": ["Authorization", "X-Tenant"],
            "allow_credentials": true,
            "max_age": "12h",
        }));
        let r = preflight(
            &c,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization,x-tenant"),
            ],
        );
        let h = r.headers();
        assert_eq!(header(h, "access-control-allow-origin"), Some("https://app.example"));
        assert_eq!(header(h, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(header(h, "access-control-allow-headers"), Some("authorization,x-tenant"));
        assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(header(h, "access-control-max-age"), Some("43200"));
    }

    #[test]
    fn refused_preflight_is_204_without_cors_headers() {
        let c = cors(json!({"allow_origins": ["https://app.example"], "allow_headers": ["X-Tenant"]}));
        let cases: [&[(&str, &str)]; 4] = [
            &[("origin", "https://evil.example"), ("access-control-request-method", "GET")],
            &[("access-control-request-method", "GET")],
            &[("origin", "https://app.example"), ("access-control-request-method", "DELETE")],
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-tenant,x-other"),
            ],
        ];
        for pairs in cases {
            let r = preflight(&c, pairs);
            assert_eq!(r.status(), StatusCode::NO_CONTENT, "{pairs:?}");
            assert!(cors_headers(r.headers()).is_empty(), "{pairs:?}: {:?}", r.headers());
            assert!(r.headers().contains_key(VARY), "{pairs:?}");
        }
        // Origin is always allowed, whatever the list says.
        let r = preflight(
            &c,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "origin, X-Tenant"),
            ],
        );
        assert_eq!(header(r.headers(), "access-control-allow-origin"), Some("https://app.example"));
    }

    #[test]
    fn only_options_with_a_requested_method_is_a_preflight() {
        let c = cors(json!({}));
        let h = request(&[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert!(c.preflight(&Method::GET, &h).is_none());
        let plain_options = request(&[("origin", "https://app.example")]);
        assert!(c.preflight(&Method::OPTIONS, &plain_options).is_none());
        let empty = request(&[("origin", "https://app.example"), ("access-control-request-method", "")]);
        assert!(c.preflight(&Method::OPTIONS, &empty).is_none());
    }

    #[test]
    fn wildcard_origins_match_like_rs_cors() {
        let c = cors(json!({"allow_origins": ["https://*.example.com", "HTTP://Local.Test"]}));
        let allowed = |origin: &str| {
            let r = preflight(&c, &[("origin", origin), ("access-control-request-method", "GET")]);
            r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(allowed("https://api.example.com").as_deref(), Some("https://api.example.com"));
        assert_eq!(allowed("https://a.b.example.com").as_deref(), Some("https://a.b.example.com"));
        assert_eq!(allowed("HTTPS://API.EXAMPLE.COM").as_deref(), Some("HTTPS://API.EXAMPLE.COM"));
        assert_eq!(allowed("http://local.test").as_deref(), Some("http://local.test"));
        assert_eq!(allowed("https://example.com"), None, "the * needs the dot before example.com");
        assert_eq!(allowed("https://example.com.evil.net"), None);
        assert_eq!(allowed("http://api.example.com"), None);
    }

    #[test]
    fn any_origin_with_credentials_echoes_the_origin() {
        let c = cors(json!({"allow_origins": ["*"], "allow_credentials": true}));
        let r = preflight(&c, &[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert_eq!(header(r.headers(), "access-control-allow-origin"), Some("https://app.example"));
        assert_eq!(header(r.headers(), "access-control-allow-credentials"), Some("true"));
    }

    #[test]
    fn private_network_and_success_status() {
        let c = cors(json!({"allow_private_network": true, "options_success_status": 200}));
        let r = preflight(
            &c,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-private-network", "true"),
            ],
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(r.headers(), "access-control-allow-private-network"), Some("true"));
        assert!(header(r.headers(), "vary").unwrap().ends_with("Access-Control-Request-Private-Network"));
        let r = preflight(&c, &[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert_eq!(header(r.headers(), "access-control-allow-private-network"), None);
    }

    #[test]
    fn decorate_marks_allowed_actual_responses() {
        let c = cors(json!({
            "allow_origins": ["https://app.example"],
            "expose_headers": ["x-request-id", "Content-Length"],
            "allow_credentials": true,
        }));
        let mut out = request(&[("vary", "Accept-Encoding")]);
        c.decorate(&request(&[("origin", "https://app.example")]), &mut out);
        assert_eq!(header(&out, "access-control-allow-origin"), Some("https://app.example"));
        assert_eq!(header(&out, "access-control-expose-headers"), Some("X-Request-Id, Content-Length"));
        assert_eq!(header(&out, "access-control-allow-credentials"), Some("true"));
        let vary: Vec<_> = out.get_all(VARY).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"], "the backend's Vary is kept");

        for req in [request(&[("origin", "https://evil.example")]), request(&[])] {
            let mut out = HeaderMap::new();
            c.decorate(&req, &mut out);
            assert!(cors_headers(&out).is_empty(), "{req:?}");
            assert_eq!(header(&out, "vary"), Some("Origin"));
        }

        let any = cors(json!({}));
        let mut out = HeaderMap::new();
        any.decorate(&request(&[("origin", "https://app.example")]), &mut out);
        assert_eq!(header(&out, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&out, "access-control-expose-headers"), None, "nothing exposed unless configured");
    }

    #[test]
    fn passthrough_leaves_preflights_to_the_endpoint() {
        let c = cors(json!({"options_passthrough": true, "max_age": "10m"}));
        let req = request(&[("origin", "https://app.example"), ("access-control-request-method", "GET")]);
        assert!(c.preflight(&Method::OPTIONS, &req).is_none());
        let mut out = HeaderMap::new();
        c.decorate(&req, &mut out);
        assert_eq!(header(&out, "access-control-allow-methods"), Some("GET"));
        assert_eq!(header(&out, "access-control-max-age"), Some("600"));
    }

    #[test]
    fn reports_every_bad_key() {
        let v = json!({
            "allow_origins": ["https://a.example", "https://*.*.example", 3],
            "allow_methods": ["GET", "NOT A METHOD"],
            "allow_headers": "X-Tenant",
            "expose_headers": ["bad header"],
            "allow_credentials": "yes",
            "max_age": "x",
            "options_success_status": 42,
            "@comment": "ignored",
        });
        let problems = Cors::compile(&v, "extra_config.security/cors").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let p = "extra_config.security/cors";
        assert_eq!(
            text,
            [
                format!("{p}.allow_origins[2]: must be a string, found a number"),
                format!("{p}.allow_origins[1]: \"https://*.*.example\" has more than one *, only one is allowed"),
                format!("{p}.allow_methods[1]: \"NOT A METHOD\" is not an HTTP method"),
                format!("{p}.allow_headers: must be an array of strings, found a string"),
                format!("{p}.expose_headers[0]: \"bad header\" is not a header name"),
                format!("{p}.allow_credentials: must be true or false, found a string"),
                format!("{p}.max_age: \"x\" is not a duration like \"2s\" or \"1m30s\""),
                format!("{p}.options_success_status: 42 is outside the range 100 to 599"),
            ]
        );
    }

    #[test]
    fn schema_keys_without_an_effect_are_accepted() {
        let c = cors(json!({"debug": true, "max_age": "0h", "allow_methods": []}));
        let r = preflight(&c, &[("origin", "https://x.example"), ("access-control-request-method", "HEAD")]);
        assert_eq!(header(r.headers(), "access-control-allow-methods"), Some("HEAD"));
        assert_eq!(header(r.headers(), "access-control-max-age"), None);
    }
}
