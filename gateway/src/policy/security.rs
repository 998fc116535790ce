//! HTTP security headers and allowed hosts (`security/http`), as KrakenD applies them
//! through unrolled/secure.
//!
//! * `allowed_hosts` (exact, case-insensitive, port included; or anchored regular
//!   expressions with `allowed_hosts_are_regex`) refuses any other host with unrolled's
//!   answer: `500 Bad Host`. The host is the first non-empty `host_proxy_headers`
//!   value, else the request's authority or `Host`.
//! * Responses get `Strict-Transport-Security`, `X-Frame-Options`,
//!   `X-Content-Type-Options`, `X-XSS-Protection`, `Content-Security-Policy`,
//!   `Referrer-Policy` and `Public-Key-Pins` as configured.
//! * `is_development` turns off the host check, HSTS and HPKP, as in unrolled.
//! * The HTTPS redirect keys (`ssl_redirect`, `ssl_host`, `ssl_proxy_headers`) and
//!   `force_sts_header` are type-checked and have no effect: Weir terminates TLS itself
//!   and does not redirect.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Uri};
use regex::RegexSet;
use serde_json::Value;

use super::Problems;
use super::settings::Settings;
use crate::proxy::render::TEXT;
use crate::proxy::{Body, full};

/// The `extra_config` namespace this component reads.
pub const NAMESPACE: &str = "security/http";

/// Every key of the namespace in KrakenD's schema.
pub const KEYS: &[&str] = &[
    "allowed_hosts",
    "allowed_hosts_are_regex",
    "browser_xss_filter",
    "content_security_policy",
    "content_type_nosniff",
    "custom_frame_options_value",
    "force_sts_header",
    "frame_deny",
    "host_proxy_headers",
    "hpkp_public_key",
    "is_development",
    "referrer_policy",
    "ssl_host",
    "ssl_proxy_headers",
    "ssl_redirect",
    "sts_include_subdomains",
    "sts_seconds",
];

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const FRAME_DENY: HeaderValue = HeaderValue::from_static("DENY");
const XSS_BLOCK: HeaderValue = HeaderValue::from_static("1; mode=block");
const PUBLIC_KEY_PINS: HeaderName = HeaderName::from_static("public-key-pins");
/// unrolled/secure's body for a refused host (Go's `http.Error` adds the newline).
const BAD_HOST: &[u8] = b"Bad Host\n";

/// A compiled `security/http` policy.
#[derive(Debug)]
pub struct HttpSecurity {
    hosts: AllowedHosts,
    host_headers: Vec<HeaderName>,
    /// Set on every response by [`HttpSecurity::decorate`].
    headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
enum AllowedHosts {
    Any,
    Exact(Vec<Box<str>>),
    Patterns(RegexSet),
}

impl HttpSecurity {
    /// Compiles the namespace value found at `path`, reporting every bad key.
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut s = Settings::new(v, path);
        let development = s.flag("is_development").unwrap_or(false);
        let as_regex = s.flag("allowed_hosts_are_regex").unwrap_or(false);
        let hosts = allowed_hosts(&mut s, as_regex);
        let host_headers = header_names(&mut s, "host_proxy_headers");

        let mut headers = Vec::new();
        let sts_seconds = s.uint("sts_seconds", 0, i64::MAX as u64).unwrap_or(0);
        let sts_subdomains = s.flag("sts_include_subdomains").unwrap_or(false);
        // unrolled sends HSTS only over TLS (or with force_sts_header); `decorate` cannot
        // tell, and browsers ignore the header over plain HTTP (RFC 6797 §8.1), so it is
        // sent whenever it is configured.
        if sts_seconds > 0 && !development {
            let sub = if sts_subdomains { "; includeSubDomains" } else { "" };
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={sts_seconds}{sub}")) {
                headers.push((http::header::STRICT_TRANSPORT_SECURITY, v));
            }
        }
        let frame_deny = s.flag("frame_deny").unwrap_or(false);
        match value(&mut s, "custom_frame_options_value") {
            Some(custom) => headers.push((http::header::X_FRAME_OPTIONS, custom)),
            None if frame_deny => headers.push((http::header::X_FRAME_OPTIONS, FRAME_DENY)),
            None => {}
        }
        if s.flag("content_type_nosniff").unwrap_or(false) {
            headers.push((X_CONTENT_TYPE_OPTIONS, NOSNIFF));
        }
        if s.flag("browser_xss_filter").unwrap_or(false) {
            headers.push((http::header::X_XSS_PROTECTION, XSS_BLOCK));
        }
        if let Some(pins) = value(&mut s, "hpkp_public_key")
            && !development
        {
            headers.push((PUBLIC_KEY_PINS, pins));
        }
        if let Some(csp) = value(&mut s, "content_security_policy") {
            // unrolled replaces $NONCE with a fresh nonce per request; Weir does not
            // generate nonces, and sending the placeholder would break the policy.
            if csp.as_bytes().windows(6).any(|w| w == b"$NONCE") {
                s.error("content_security_policy", "per-request nonces ($NONCE) are not supported; remove $NONCE");
            } else {
                headers.push((http::header::CONTENT_SECURITY_POLICY, csp));
            }
        }
        if let Some(policy) = value(&mut s, "referrer_policy") {
            headers.push((http::header::REFERRER_POLICY, policy));
        }

        // Accepted for compatibility, without effect (see the module comment).
        s.flag("ssl_redirect");
        s.flag("force_sts_header");
        s.string("ssl_host");
        if let Some(proxy_headers) = s.object("ssl_proxy_headers") {
            for (name, v) in proxy_headers {
                if !v.is_string() {
                    let path = format!("{}.{name}", s.at("ssl_proxy_headers"));
                    s.error_at(path, "must be a string");
                }
            }
        }

        let hosts = if development { AllowedHosts::Any } else { hosts };
        s.finish(HttpSecurity { hosts, host_headers, headers })
    }

    /// Refuses a request whose host is not in `allowed_hosts` (when the list is set)
    /// with `500 Bad Host`, the answer KrakenD gives.
    pub fn check(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Response<Body>> {
        let allowed = match &self.hosts {
            AllowedHosts::Any => return Ok(()),
            AllowedHosts::Exact(hosts) => {
                let host = request_host(&self.host_headers, headers, uri);
                hosts.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(host))
            }
            AllowedHosts::Patterns(set) => {
                let host = request_host(&self.host_headers, headers, uri);
                std::str::from_utf8(host).is_ok_and(|h| set.is_match(h))
            }
        };
        if allowed { Ok(()) } else { Err(bad_host()) }
    }

    /// Sets the configured security headers on a response.
    pub fn decorate(&self, response_headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            response_headers.insert(name.clone(), value.clone());
        }
    }
}

/// The host the request was sent to: a proxy header when configured and present,
/// else the URI's authority (HTTP/2, absolute-form), else `Host`.
fn request_host<'r>(host_headers: &[HeaderName], headers: &'r HeaderMap, uri: &'r Uri) -> &'r [u8] {
    for name in host_headers {
        if let Some(v) = headers.get(name).filter(|v| !v.is_empty()) {
            return v.as_bytes();
        }
    }
    if let Some(authority) = uri.authority() {
        return authority.as_str().as_bytes();
    }
    headers.get(HOST).map_or(&[], HeaderValue::as_bytes)
}

fn bad_host() -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(BAD_HOST)));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(CONTENT_TYPE, TEXT);
    response.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    response
}

fn allowed_hosts(s: &mut Settings<'_>, as_regex: bool) -> AllowedHosts {
    let list = s.strings("allowed_hosts").unwrap_or_default();
    if list.is_empty() {
        return AllowedHosts::Any;
    }
    if !as_regex {
        return AllowedHosts::Exact(list.iter().map(|(_, h)| (*h).into()).collect());
    }
    // unrolled anchors each expression; the group keeps `a|b` from escaping the anchors.
    let anchored: Vec<String> = list.iter().map(|(_, h)| format!("^(?:{h})$")).collect();
    // Compiled one by one first, so that a bad expression is named by its index.
    let mut all_valid = true;
    for ((i, host), pattern) in list.iter().zip(&anchored) {
        if let Err(e) = regex::Regex::new(pattern) {
            s.error_at(s.item("allowed_hosts", *i), format!("{host:?} is not a valid regular expression: {e}"));
            all_valid = false;
        }
    }
    if !all_valid {
        return AllowedHosts::Any;
    }
    match RegexSet::new(&anchored) {
        Ok(set) => AllowedHosts::Patterns(set),
        Err(e) => {
            // Each expression compiled on its own; together they can still be too large.
            s.error("allowed_hosts", format!("the expressions cannot be compiled together: {e}"));
            AllowedHosts::Any
        }
    }
}

fn header_names(s: &mut Settings<'_>, key: &str) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for (i, name) in s.strings(key).unwrap_or_default() {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) => names.push(h),
            Err(_) => s.error_at(s.item(key, i), format!("{name:?} is not a header name")),
        }
    }
    names
}

/// A non-empty string that can be sent as a header value; unrolled treats "" as unset.
fn value(s: &mut Settings<'_>, key: &str) -> Option<HeaderValue> {
    let text = s.string(key).filter(|t| !t.is_empty())?;
    match HeaderValue::from_str(text) {
        Ok(v) => Some(v),
        Err(_) => {
            s.error(key, "cannot be sent as a header value: it holds a line break or another control character");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use serde_json::json;

    use super::*;

    fn security(v: Value) -> HttpSecurity {
        HttpSecurity::compile(&v, "extra_config.security/http").unwrap()
    }

    fn with_host(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    fn origin_form() -> Uri {
        Uri::from_static("/users/1")
    }

    #[test]
    fn allowed_hosts_refuse_others_with_bad_host() {
        let s = security(json!({"allowed_hosts": ["api.example.com", "api.example.com:8443"]}));
        assert!(s.check(&with_host("api.example.com"), &origin_form()).is_ok());
        assert!(s.check(&with_host("API.Example.COM:8443"), &origin_form()).is_ok());
        let refused = s.check(&with_host("api.example.com:8080"), &origin_form()).unwrap_err();
        assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(refused.headers()[CONTENT_TYPE], TEXT);
        let body = refused.into_body().collect().now_or_never().unwrap().unwrap().to_bytes();
        assert_eq!(&body[..], b"Bad Host\n");
        assert!(s.check(&HeaderMap::new(), &origin_form()).is_err(), "no host at all");
        // HTTP/2 and absolute-form requests carry the host in the URI.
        let h2 = Uri::from_static("https://api.example.com/users/1");
        assert!(s.check(&HeaderMap::new(), &h2).is_ok());
    }

    #[test]
    fn no_list_or_development_allows_any_host() {
        for v in [json!({}), json!({"allowed_hosts": []}), json!({"allowed_hosts": ["a"], "is_development": true})] {
            assert!(security(v).check(&with_host("whatever.example"), &origin_form()).is_ok());
        }
    }

    #[test]
    fn regex_hosts_are_anchored() {
        let s = security(
            json!({"allowed_hosts": [r"[a-z]+\.example\.com", "localhost|127.0.0.1"], "allowed_hosts_are_regex": true}),
        );
        assert!(s.check(&with_host("api.example.com"), &origin_form()).is_ok());
        assert!(s.check(&with_host("127.0.0.1"), &origin_form()).is_ok());
        assert!(s.check(&with_host("api.example.com.evil.net"), &origin_form()).is_err());
        assert!(s.check(&with_host("localhost.evil.net"), &origin_form()).is_err());
    }

    #[test]
    fn host_proxy_headers_win_when_present() {
        let s = security(json!({"allowed_hosts": ["public.example.com"], "host_proxy_headers": ["X-Forwarded-Host"]}));
        let mut h = with_host("10.0.0.7:8080");
        assert!(s.check(&h, &origin_form()).is_err());
        h.insert("x-forwarded-host", HeaderValue::from_static("public.example.com"));
        assert!(s.check(&h, &origin_form()).is_ok());
        h.insert("x-forwarded-host", HeaderValue::from_static(""));
        assert!(s.check(&h, &origin_form()).is_err(), "an empty proxy header falls back to Host");
    }

    #[test]
    fn decorate_sets_the_configured_headers() {
        let s = security(json!({
            "sts_seconds": 300,
            "sts_include_subdomains": true,
            "frame_deny": true,
            "content_type_nosniff": true,
            "browser_xss_filter": true,
            "content_security_policy": "default-src 'self';",
            "referrer_policy": "same-origin",
        }));
        let mut h = HeaderMap::new();
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("old"));
        s.decorate(&mut h);
        let get = |name: &str| h.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(get("strict-transport-security"), Some("max-age=300; includeSubDomains"));
        assert_eq!(get("x-frame-options"), Some("DENY"));
        assert_eq!(get("x-content-type-options"), Some("nosniff"));
        assert_eq!(get("x-xss-protection"), Some("1; mode=block"));
        assert_eq!(get("content-security-policy"), Some("default-src 'self';"));
        assert_eq!(get("referrer-policy"), Some("same-origin"));
        assert_eq!(h.get_all(X_CONTENT_TYPE_OPTIONS).iter().count(), 1, "replaced, not added");
    }

    #[test]
    fn custom_frame_options_win_and_unset_means_no_header() {
        let s = security(json!({"frame_deny": true, "custom_frame_options_value": "SAMEORIGIN", "sts_seconds": 0}));
        let mut h = HeaderMap::new();
        s.decorate(&mut h);
        assert_eq!(h.get("x-frame-options").unwrap(), "SAMEORIGIN");
        assert_eq!(h.len(), 1, "sts_seconds 0 sends no HSTS: {h:?}");

        let mut h = HeaderMap::new();
        security(json!({"sts_seconds": 60, "is_development": true, "referrer_policy": ""})).decorate(&mut h);
        assert!(h.is_empty(), "development drops HSTS, an empty policy is unset: {h:?}");
    }

    #[test]
    fn redirect_keys_are_accepted_without_effect() {
        let s = security(json!({
            "ssl_redirect": true,
            "ssl_host": "ssl.host.domain",
            "ssl_proxy_headers": {"X-Forwarded-Proto": "https"},
            "force_sts_header": true,
        }));
        assert!(s.check(&with_host("any"), &Uri::from_static("http://any/x")).is_ok());
        let mut h = HeaderMap::new();
        s.decorate(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn reports_every_bad_key() {
        let v = json!({
            "allowed_hosts": ["ok", "(unclosed"],
            "allowed_hosts_are_regex": true,
            "sts_seconds": -1,
            "frame_deny": "yes",
            "content_security_policy": "script-src $NONCE",
            "referrer_policy": "a\nb",
            "host_proxy_headers": ["X Host"],
            "ssl_proxy_headers": {"X-Forwarded-Proto": 1},
        });
        let problems = HttpSecurity::compile(&v, "extra_config.security/http").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let p = "extra_config.security/http";
        assert_eq!(text.len(), 7, "{text:#?}");
        assert!(text[0].starts_with(&format!("{p}.allowed_hosts[1]: \"(unclosed\" is not a valid regular expression")));
        assert_eq!(
            text[1..],
            [
                format!("{p}.host_proxy_headers[0]: \"X Host\" is not a header name"),
                format!(
                    "{p}.sts_seconds: must be a whole number from 0 to 9223372036854775807, found a negative or fractional number"
                ),
                format!("{p}.frame_deny: must be true or false, found a string"),
                format!("{p}.content_security_policy: per-request nonces ($NONCE) are not supported; remove $NONCE"),
                format!(
                    "{p}.referrer_policy: cannot be sent as a header value: it holds a line break or another control character"
                ),
                format!("{p}.ssl_proxy_headers.X-Forwarded-Proto: must be a string"),
            ]
        );
    }
}
