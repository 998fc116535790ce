//! Turns the raw JSON tree of a config into a [`Service`], reporting every problem
//! at once with its path instead of stopping at the first.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde_json::{Map, Value};

use super::duration;
use super::model::*;
use super::report::{Problem, Report, Unsupported};
use crate::policy;

type Obj = Map<String, Value>;

const ROOT_KEYS: &[&str] = &[
    "version",
    "name",
    "port",
    "listen_ip",
    "host",
    "timeout",
    "cache_ttl",
    "output_encoding",
    "endpoints",
    "extra_config",
    "tls",
    "use_h2c",
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "read_header_timeout",
    "max_header_bytes",
    "max_idle_connections_per_host",
    "debug_endpoint",
    "echo_endpoint",
    "max_shutdown_wait_time",
];
/// Go transport knobs KrakenD exposes that have no counterpart in Weir's client;
/// accepted so that configs run unchanged, with a warning so nobody relies on them.
const ROOT_IGNORED: &[&str] = &[
    "dialer_timeout",
    "dialer_keep_alive",
    "dialer_fallback_delay",
    "disable_compression",
    "disable_keep_alives",
    "expect_continue_timeout",
    "idle_connection_timeout",
    "max_idle_connections",
    "response_header_timeout",
    "dns_cache_ttl",
    "sequential_start",
    "disable_rest",
    "client_tls",
];
const ROOT_UNSUPPORTED: &[&str] = &["plugin", "async_agent"];
const ENDPOINT_KEYS: &[&str] = &[
    "endpoint",
    "method",
    "backend",
    "timeout",
    "cache_ttl",
    "output_encoding",
    "concurrent_calls",
    "input_headers",
    "input_query_strings",
    "extra_config",
];
const BACKEND_KEYS: &[&str] = &[
    "url_pattern",
    "host",
    "method",
    "encoding",
    "target",
    "allow",
    "deny",
    "mapping",
    "group",
    "is_collection",
    "input_headers",
    "input_query_strings",
    "sd",
    "sd_scheme",
    "disable_host_sanitize",
    "extra_config",
];
const ROUTER_KEYS: &[&str] = &[
    "return_error_msg",
    "health_path",
    "disable_health",
    "hide_version_header",
    "auto_options",
    "disable_redirect_fixed_path",
    "disable_redirect_trailing_slash",
    "disable_handle_method_not_allowed",
    "error_body",
    "disable_access_log",
    "logger_skip_paths",
];
/// `router` options about logging and client IPs that later components read.
const ROUTER_IGNORED: &[&str] = &[
    "forwarded_by_client_ip",
    "remote_ip_headers",
    "trusted_proxies",
    "app_engine",
    "max_multipart_memory",
    "remove_extra_slash",
    "disable_path_decoding",
    "disable_gzip",
    "decompress_gzip",
    "max_payload",
    "use_h2c",
];

/// Weir's own service namespace for limits KrakenD does not let users set.
pub const LIMITS_NAMESPACE: &str = "weir/limits";

/// Namespaces KrakenD knows, per scope, that Weir does not implement yet.
const KNOWN_SERVICE: &[&str] = &[
    "ai/mcp",
    "auth/api-keys",
    "auth/basic",
    "auth/revoker",
    "auth/validator",
    "documentation/openapi",
    "documentation/postman",
    "governance/processors",
    "governance/quota",
    "grpc",
    "modifier/lua-endpoint",
    "modifier/request-body-extractor",
    "modifier/response-headers",
    "plugin/http-server",
    "qos/ratelimit/service",
    "qos/ratelimit/service/redis",
    "qos/ratelimit/tiered",
    "redis",
    "security/bot-detector",
    "security/cors",
    "security/http",
    "server/static-filesystem",
    "server/virtualhost",
    "telemetry/gelf",
    "telemetry/influx",
    "telemetry/logging",
    "telemetry/logstash",
    "telemetry/metrics",
    "telemetry/moesif",
    "telemetry/newrelic",
    "telemetry/opencensus",
    "telemetry/opentelemetry",
    "telemetry/opentelemetry-security",
];
const KNOWN_ENDPOINT: &[&str] = &[
    "ai/mcp",
    "auth/api-keys",
    "auth/basic",
    "auth/signer",
    "auth/validator",
    "documentation/openapi",
    "documentation/postman",
    "governance/quota",
    "modifier/jmespath",
    "modifier/lua-endpoint",
    "modifier/lua-proxy",
    "modifier/request-body-extractor",
    "modifier/request-body-extractor/early",
    "modifier/request-body-generator",
    "modifier/response-body",
    "modifier/response-body-generator",
    "plugin/middleware",
    "plugin/req-resp-modifier",
    "qos/ratelimit/router",
    "qos/ratelimit/router/redis",
    "qos/ratelimit/tiered",
    "security/bot-detector",
    "security/cors",
    "security/http",
    "security/policies",
    "telemetry/opentelemetry",
    "validation/cel",
    "validation/json-schema",
    "validation/response-json-schema",
    "websocket",
];
const KNOWN_BACKEND: &[&str] = &[
    "ai/llm",
    "auth/aws-sigv4",
    "auth/client-credentials",
    "auth/gcp",
    "auth/ntlm",
    "backend/amqp/consumer",
    "backend/amqp/producer",
    "backend/conditional",
    "backend/graphql",
    "backend/grpc",
    "backend/lambda",
    "backend/pubsub/publisher",
    "backend/pubsub/publisher/kafka",
    "backend/pubsub/subscriber",
    "backend/pubsub/subscriber/kafka",
    "backend/soap",
    "backend/static-filesystem",
    "governance/quota",
    "modifier/body-generator",
    "modifier/jmespath",
    "modifier/lua-backend",
    "modifier/martian",
    "modifier/request-body-generator",
    "modifier/response-body",
    "modifier/response-body-generator",
    "plugin/http-client",
    "plugin/middleware",
    "plugin/req-resp-modifier",
    "qos/circuit-breaker",
    "qos/circuit-breaker/http",
    "qos/http-cache",
    "qos/ratelimit/proxy",
    "security/policies",
    "telemetry/logging",
    "telemetry/opentelemetry",
    "validation/cel",
    "validation/response-json-schema",
    "workflow",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Service,
    Endpoint,
    Backend,
}

/// Keys starting with these characters are comments in KrakenD configs (`$schema`, `@comment`).
pub(crate) fn is_comment_key(key: &str) -> bool {
    key.starts_with(['@', '$', '_', '#'])
}

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// A JSON value's type in words, for messages ("a string", "an array").
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads typed values out of one JSON object, recording problems under its path.
struct Reader<'a, 'r> {
    obj: &'a Obj,
    path: String,
    report: &'r mut Report,
}

impl<'a, 'r> Reader<'a, 'r> {
    fn new(obj: &'a Obj, path: String, report: &'r mut Report) -> Self {
        Self { obj, path, report }
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        let path = self.at(key);
        self.report.error(&path, message);
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn string(&mut self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                let k = kind(other);
                self.error(key, format!("must be a string, found {k}"));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            other => {
                let k = kind(other);
                self.error(key, format!("must be true or false, found {k}"));
                None
            }
        }
    }

    fn uint(&mut self, key: &str, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if n <= max => Some(n),
            Some(n) => {
                self.error(key, format!("{n} is larger than the maximum {max}"));
                None
            }
            None => {
                let k = kind(v);
                self.error(key, format!("must be a whole number from 0 to {max}, found {k}"));
                None
            }
        }
    }

    fn duration(&mut self, key: &str) -> Option<Duration> {
        let v = self.get(key)?;
        match v {
            Value::String(s) => match duration::parse(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(key, e);
                    None
                }
            },
            other => {
                let k = kind(other);
                self.error(key, format!("must be a duration string like \"2s\", found {k}"));
                None
            }
        }
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let Value::Array(items) = v else {
            let k = kind(v);
            self.error(key, format!("must be an array of strings, found {k}"));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => {
                    let path = format!("{}[{i}]", self.at(key));
                    self.report.error(&path, format!("must be a string, found {}", kind(other)));
                }
            }
        }
        Some(out)
    }

    fn object(&mut self, key: &str) -> Option<&'a Obj> {
        match self.get(key)? {
            Value::Object(m) => Some(m),
            other => {
                let k = kind(other);
                self.error(key, format!("must be an object, found {k}"));
                None
            }
        }
    }

    /// Reports keys outside `known` (and outside `ignored`, which only warn).
    fn check_keys(&mut self, known: &[&str], ignored: &[&str], unsupported: &[&str]) {
        for key in self.obj.keys() {
            if is_comment_key(key) || known.contains(&key.as_str()) {
                continue;
            }
            let path = self.at(key);
            if ignored.contains(&key.as_str()) {
                self.report.warn(&path, "accepted for compatibility and ignored by Weir");
            } else if unsupported.contains(&key.as_str()) {
                self.report.unsupported.push(Unsupported { path, namespace: key.clone(), blocking: false });
            } else {
                self.report.unknown_keys.push(Problem { path, message: "unknown key".into() });
            }
        }
    }
}

/// Validates a whole config tree. Returns the service only when there is no error.
pub fn validate(root: &Value) -> (Option<Service>, Report) {
    let mut report = Report::default();
    let Value::Object(obj) = root else {
        report.error("", format!("the config must be an object, found {}", kind(root)));
        return (None, report);
    };
    let service = service(obj, &mut report);
    if report.errors.is_empty() { (Some(service), report) } else { (None, report) }
}

fn service(obj: &Obj, report: &mut Report) -> Service {
    let mut r = Reader::new(obj, String::new(), report);
    match r.get("version") {
        None => r.error("version", "is required and must be 3"),
        Some(v) if v.as_u64() == Some(3) => {}
        Some(v) => r.error("version", format!("must be 3 (the KrakenD v2 format), found {v}")),
    }
    r.check_keys(ROOT_KEYS, ROOT_IGNORED, ROOT_UNSUPPORTED);
    let name = r.string("name").unwrap_or("").to_owned();
    let port = r.uint("port", u16::MAX as u64).map_or(8080, |p| p as u16);
    let listen_ip = r.string("listen_ip").filter(|s| !s.is_empty()).and_then(|s| {
        s.parse::<IpAddr>().map_err(|_| r.error("listen_ip", format!("{s:?} is not an IP address"))).ok()
    });
    let host = hosts(&mut r, "host");
    let timeout = r.duration("timeout").unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        r.error("timeout", "must be greater than zero");
    }
    let cache_ttl = r.duration("cache_ttl").unwrap_or_default();
    let output_encoding = output_encoding(&mut r).unwrap_or(OutputEncoding::Json);
    let extra = r.object("extra_config").cloned().unwrap_or_default();
    let limits = extra.get(LIMITS_NAMESPACE).and_then(Value::as_object);
    let mut server = ServerLimits {
        read_timeout: r.duration("read_timeout").filter(|d| !d.is_zero()),
        write_timeout: r.duration("write_timeout").filter(|d| !d.is_zero()),
        idle_timeout: r.duration("idle_timeout").filter(|d| !d.is_zero()),
        read_header_timeout: r.duration("read_header_timeout").filter(|d| !d.is_zero()),
        max_header_bytes: r.uint("max_header_bytes", u32::MAX as u64).map_or(DEFAULT_MAX_HEADER_BYTES, |n| n as usize),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        max_backend_response_bytes: DEFAULT_MAX_BODY_BYTES,
        shutdown_wait: r.duration("max_shutdown_wait_time").filter(|d| !d.is_zero()).unwrap_or(DEFAULT_SHUTDOWN_WAIT),
    };
    let max_idle = r.uint("max_idle_connections_per_host", 1_000_000).map_or(DEFAULT_IDLE_PER_HOST, |n| n as usize);
    let use_h2c = r.boolean("use_h2c").unwrap_or(false);
    let debug_endpoint = r.boolean("debug_endpoint").unwrap_or(false);
    let echo_endpoint = r.boolean("echo_endpoint").unwrap_or(false);
    let tls = r.object("tls").and_then(|t| tls(t, "tls", r.report));

    if let Some(limits) = limits {
        let mut l = Reader::new(limits, format!("extra_config.{LIMITS_NAMESPACE}"), r.report);
        l.check_keys(&["max_body_bytes", "max_backend_response_bytes"], &[], &[]);
        if let Some(n) = l.uint("max_body_bytes", u32::MAX as u64) {
            server.max_body_bytes = n as usize;
        }
        if let Some(n) = l.uint("max_backend_response_bytes", u32::MAX as u64) {
            server.max_backend_response_bytes = n as usize;
        }
    }
    let router = extra.get("router").map(|v| router(v, "extra_config.router", r.report)).unwrap_or_default();
    let declares = policy::ServiceDeclares {
        api_keys: extra.contains_key("auth/api-keys"),
        basic: extra.contains_key("auth/basic"),
        redis_pools: extra
            .get("redis")
            .and_then(|r| r.get("connection_pools"))
            .and_then(Value::as_array)
            .map(|pools| pools.iter().filter_map(|p| p.get("name")?.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    };
    namespaces(&extra, "extra_config", Scope::Service, &declares, r.report);

    let defaults = EndpointDefaults { timeout, cache_ttl, output_encoding, has_host: !host.is_empty(), declares };
    let mut endpoints = Vec::new();
    match r.get("endpoints") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("endpoints[{i}]");
                match item {
                    Value::Object(o) => {
                        if let Some(e) = endpoint(o, &path, &defaults, r.report) {
                            endpoints.push((i, e));
                        }
                    }
                    other => r.report.error(&path, format!("must be an object, found {}", kind(other))),
                }
            }
        }
        Some(other) => {
            let k = kind(other);
            r.error("endpoints", format!("must be an array, found {k}"));
        }
    }
    check_routes(&endpoints, &router, debug_endpoint, echo_endpoint, r.report);

    Service {
        name,
        port,
        listen_ip,
        host,
        timeout,
        cache_ttl,
        output_encoding,
        server,
        max_idle_connections_per_host: max_idle,
        tls,
        // KrakenD once read `use_h2c` under `router`; old configs still carry it there.
        use_h2c: use_h2c
            || extra.get("router").and_then(|r| r.get("use_h2c")).and_then(Value::as_bool).unwrap_or(false),
        debug_endpoint,
        echo_endpoint,
        router,
        endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
        extra_config: extra,
    }
}

struct EndpointDefaults {
    timeout: Duration,
    cache_ttl: Duration,
    output_encoding: OutputEncoding,
    has_host: bool,
    declares: policy::ServiceDeclares,
}

fn hosts(r: &mut Reader<'_, '_>, key: &str) -> Vec<String> {
    let list = r.strings(key).unwrap_or_default();
    let mut out = Vec::with_capacity(list.len());
    for (i, h) in list.into_iter().enumerate() {
        let trimmed = h.trim_end_matches('/');
        let with_scheme = if trimmed.contains("://") { trimmed.to_owned() } else { format!("http://{trimmed}") };
        match with_scheme.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty()) =>
            {
                out.push(with_scheme)
            }
            _ => {
                let path = format!("{}[{i}]", r.at(key));
                r.report.error(&path, format!("{h:?} is not a host like \"http://10.0.0.1:8000\""));
            }
        }
    }
    out
}

fn output_encoding(r: &mut Reader<'_, '_>) -> Option<OutputEncoding> {
    let s = r.string("output_encoding")?;
    let e = match s {
        "json" => OutputEncoding::Json,
        "json-collection" => OutputEncoding::JsonCollection,
        "string" => OutputEncoding::String,
        "xml" => OutputEncoding::Xml,
        "yaml" => OutputEncoding::Yaml,
        "negotiate" => OutputEncoding::Negotiate,
        "no-op" => OutputEncoding::NoOp,
        other => {
            r.error(
                "output_encoding",
                format!("{other:?} is not one of json, json-collection, string, xml, yaml, negotiate, no-op"),
            );
            return None;
        }
    };
    Some(e)
}

fn tls(obj: &Obj, path: &str, report: &mut Report) -> Option<Tls> {
    let mut r = Reader::new(obj, path.to_owned(), report);
    r.check_keys(
        &[
            "public_key",
            "private_key",
            "keys",
            "min_version",
            "max_version",
            "enable_mtls",
            "ca_certs",
            "disabled",
            "disable_system_ca_pool",
        ],
        &["cipher_suites", "curve_preferences", "prefer_server_cipher_suites"],
        &[],
    );
    if r.boolean("disabled").unwrap_or(false) {
        return None;
    }
    let mut keys = Vec::new();
    match (r.string("public_key"), r.string("private_key")) {
        (Some(c), Some(k)) => keys.push(KeyPair { public_key: c.into(), private_key: k.into() }),
        (None, None) => {}
        _ => r.error("private_key", "public_key and private_key must be set together"),
    }
    if let Some(Value::Array(items)) = r.get("keys") {
        for (i, item) in items.iter().enumerate() {
            let c = item.get("public_key").and_then(Value::as_str);
            let k = item.get("private_key").and_then(Value::as_str);
            match (c, k) {
                (Some(c), Some(k)) => keys.push(KeyPair { public_key: c.into(), private_key: k.into() }),
                _ => {
                    let p = format!("{}[{i}]", r.at("keys"));
                    r.report.error(&p, "needs both public_key and private_key (PEM file paths)");
                }
            }
        }
    }
    if keys.is_empty() {
        r.error("public_key", "TLS is enabled but no certificate is set (public_key/private_key or keys[])");
    }
    let version = |r: &mut Reader<'_, '_>, key: &str, default: TlsVersion| match r.string(key) {
        None => default,
        Some("TLS12") => TlsVersion::Tls12,
        Some("TLS13") => TlsVersion::Tls13,
        Some(other) => {
            r.error(key, format!("{other:?} is not supported: use TLS12 or TLS13 (older versions are insecure)"));
            default
        }
    };
    let min_version = version(&mut r, "min_version", TlsVersion::Tls13);
    let max_version = version(&mut r, "max_version", TlsVersion::Tls13);
    if min_version > max_version {
        r.error("min_version", "is higher than max_version");
    }
    let enable_mtls = r.boolean("enable_mtls").unwrap_or(false);
    let client_ca_certs: Vec<PathBuf> =
        r.strings("ca_certs").unwrap_or_default().into_iter().map(PathBuf::from).collect();
    if enable_mtls && client_ca_certs.is_empty() {
        r.error("ca_certs", "enable_mtls needs at least one CA certificate to verify clients with");
    }
    Some(Tls { keys, min_version, max_version, client_ca_certs, enable_mtls })
}

fn router(v: &Value, path: &str, report: &mut Report) -> RouterOptions {
    let Value::Object(obj) = v else {
        report.error(path, format!("must be an object, found {}", kind(v)));
        return RouterOptions::default();
    };
    let mut r = Reader::new(obj, path.to_owned(), report);
    r.check_keys(ROUTER_KEYS, ROUTER_IGNORED, &[]);
    let defaults = RouterOptions::default();
    let health_path = match r.string("health_path") {
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => {
            r.error("health_path", format!("{p:?} must start with /"));
            defaults.health_path
        }
        None => defaults.health_path,
    };
    let flag = |r: &mut Reader<'_, '_>, key: &str| r.boolean(key).unwrap_or(false);
    let bodies = r.object("error_body");
    RouterOptions {
        return_error_msg: flag(&mut r, "return_error_msg"),
        health_path,
        disable_health: flag(&mut r, "disable_health"),
        hide_version_header: flag(&mut r, "hide_version_header"),
        auto_options: flag(&mut r, "auto_options"),
        disable_redirect_fixed_path: flag(&mut r, "disable_redirect_fixed_path"),
        disable_redirect_trailing_slash: flag(&mut r, "disable_redirect_trailing_slash"),
        disable_handle_method_not_allowed: flag(&mut r, "disable_handle_method_not_allowed"),
        error_body_404: bodies.and_then(|b| b.get("404").cloned()),
        error_body_405: bodies.and_then(|b| b.get("405").cloned()),
        disable_access_log: flag(&mut r, "disable_access_log"),
        logger_skip_paths: r.strings("logger_skip_paths").unwrap_or_default(),
    }
}

/// Sorts `extra_config` namespaces into supported, unsupported and unknown.
fn namespaces(extra: &Obj, path: &str, scope: Scope, declares: &policy::ServiceDeclares, report: &mut Report) {
    for ns in extra.keys() {
        if is_comment_key(ns) {
            continue;
        }
        let core = match scope {
            Scope::Service => matches!(ns.as_str(), "router" | LIMITS_NAMESPACE),
            Scope::Endpoint => ns == "proxy",
            Scope::Backend => matches!(ns.as_str(), "proxy" | "backend/http" | "backend/http/client"),
        };
        if core {
            continue;
        }
        let policy_scope = match scope {
            Scope::Service => policy::Scope::Service,
            Scope::Endpoint => policy::Scope::Endpoint,
            Scope::Backend => policy::Scope::Backend,
        };
        if policy::supports(policy_scope, ns) {
            let at = join(path, ns);
            report.errors.extend(policy::validate(policy_scope, ns, &extra[ns], &at, declares));
            continue;
        }
        let known = match scope {
            Scope::Service => KNOWN_SERVICE,
            Scope::Endpoint => KNOWN_ENDPOINT,
            Scope::Backend => KNOWN_BACKEND,
        };
        if known.contains(&ns.as_str()) {
            // Service-wide telemetry and docs change nothing a client may do; anything
            // else (auth, limits, policies, other backends) would fail open if ignored.
            let harmless =
                scope == Scope::Service && (ns.starts_with("telemetry/") || ns.starts_with("documentation/"));
            report.unsupported.push(Unsupported { path: path.to_owned(), namespace: ns.clone(), blocking: !harmless });
        } else {
            report
                .unknown_keys
                .push(Problem { path: join(path, ns), message: "unknown extra_config namespace".into() });
        }
    }
}

fn method(r: &mut Reader<'_, '_>, key: &str, default: Method) -> Method {
    match r.string(key) {
        None => default,
        Some(m) => match m.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "HEAD" => Method::HEAD,
            "OPTIONS" => Method::OPTIONS,
            _ => {
                r.error(key, format!("{m:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"));
                default
            }
        },
    }
}

/// The most `{var}` segments one endpoint path may have: the router's tree renames each
/// parameter to a single letter while it stores the path.
pub const MAX_PATH_PARAMS: usize = 25;

/// Names of the `{var}` segments of an endpoint path, in order.
pub fn path_params(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + 1..start + len];
        out.push(name.trim_start_matches('*').to_owned());
        rest = &rest[start + len + 1..];
    }
    out
}

fn endpoint(obj: &Obj, path: &str, defaults: &EndpointDefaults, report: &mut Report) -> Option<Endpoint> {
    let mut r = Reader::new(obj, path.to_owned(), report);
    r.check_keys(ENDPOINT_KEYS, &[], &[]);
    let route = match r.string("endpoint") {
        None => {
            r.error("endpoint", "is required (the path clients call, e.g. \"/users/{id}\")");
            String::new()
        }
        Some(p) if !p.starts_with('/') => {
            r.error("endpoint", format!("{p:?} must start with /"));
            p.to_owned()
        }
        Some(p) => p.to_owned(),
    };
    check_path_syntax(&route, &r.at("endpoint"), r.report);
    let method = method(&mut r, "method", Method::GET);
    let timeout = r.duration("timeout").unwrap_or(defaults.timeout);
    if timeout.is_zero() {
        r.error("timeout", "must be greater than zero");
    }
    let cache_ttl = r.duration("cache_ttl").unwrap_or(defaults.cache_ttl);
    let output_encoding = output_encoding(&mut r).unwrap_or(defaults.output_encoding);
    let concurrent_calls = r.uint("concurrent_calls", 32).map_or(1, |n| n.max(1) as usize);
    let input_headers =
        name_filter(&mut r, "input_headers").unwrap_or_else(|| NameFilter::Only(vec!["Content-Type".into()]));
    let input_query_strings = name_filter(&mut r, "input_query_strings").unwrap_or(NameFilter::Only(Vec::new()));
    let extra = r.object("extra_config").cloned().unwrap_or_default();
    let extra_path = r.at("extra_config");
    namespaces(&extra, &extra_path, Scope::Endpoint, &defaults.declares, r.report);
    let (sequential, static_response, flatmap) = endpoint_proxy(&extra, &extra_path, r.report);
    let max_payload = match extra.get("proxy").and_then(|p| p.get("max_payload")) {
        None => None,
        Some(v) => match v.as_u64() {
            Some(0) => None, // KrakenD: 0 means no limit of its own
            Some(n) => Some(n as usize),
            None => {
                r.report.error(&format!("{extra_path}.proxy.max_payload"), "must be a whole number of bytes");
                None
            }
        },
    };

    let params = path_params(&route);
    let mut backends = Vec::new();
    match r.get("backend") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let bpath = format!("{path}.backend[{i}]");
                match item {
                    Value::Object(o) => {
                        let cx = BackendContext {
                            index: i,
                            params: &params,
                            route: &route,
                            sequential,
                            method: &method,
                            defaults,
                        };
                        if let Some(b) = backend(o, &bpath, &cx, r.report) {
                            backends.push(b);
                        }
                    }
                    other => r.report.error(&bpath, format!("must be an object, found {}", kind(other))),
                }
            }
        }
        Some(Value::Array(_)) | None => r.error("backend", "needs at least one backend"),
        Some(other) => {
            let k = kind(other);
            r.error("backend", format!("must be an array of backends, found {k}"));
        }
    }
    if output_encoding == OutputEncoding::NoOp && backends.len() > 1 {
        r.error("output_encoding", "no-op endpoints pass one backend response through: they take exactly one backend");
    }
    if output_encoding == OutputEncoding::NoOp && (sequential || static_response.is_some() || !flatmap.is_empty()) {
        r.error("extra_config.proxy", "no-op endpoints pass the backend response through untouched: sequential, static and flatmap_filter do not apply");
    }
    Some(Endpoint {
        path: route,
        method,
        backends,
        timeout,
        cache_ttl,
        output_encoding,
        concurrent_calls,
        input_headers,
        input_query_strings,
        sequential,
        static_response,
        flatmap,
        max_payload,
        extra_config: extra,
    })
}

fn check_path_syntax(route: &str, path: &str, report: &mut Report) {
    let mut depth = 0;
    for c in route.chars() {
        match c {
            '{' if depth == 0 => depth = 1,
            '}' if depth == 1 => depth = 0,
            '{' | '}' => {
                report.error(path, format!("{route:?} has unbalanced braces"));
                return;
            }
            _ => {}
        }
    }
    if depth != 0 {
        report.error(path, format!("{route:?} has an unclosed {{"));
    }
    if route.contains("/:") {
        report.error(path, format!("{route:?} uses :param; KrakenD v3 configs write parameters as {{param}}"));
    }
    let params = path_params(route);
    if params.len() > MAX_PATH_PARAMS {
        report.error(path, format!("{route:?} has {} parameters; at most {MAX_PATH_PARAMS} are allowed", params.len()));
    }
    let mut seen = HashSet::new();
    for p in params {
        if p.is_empty() {
            report.error(path, format!("{route:?} has an empty parameter name"));
        } else if !seen.insert(p.clone()) {
            report.error(path, format!("parameter {{{p}}} appears twice in {route:?}"));
        }
    }
}

fn name_filter(r: &mut Reader<'_, '_>, key: &str) -> Option<NameFilter> {
    let list = r.strings(key)?;
    if list.iter().any(|s| s == "*") { Some(NameFilter::All) } else { Some(NameFilter::Only(list)) }
}

fn endpoint_proxy(
    extra: &Obj,
    extra_path: &str,
    report: &mut Report,
) -> (bool, Option<StaticResponse>, Vec<FlatmapOp>) {
    let Some(v) = extra.get("proxy") else {
        return (false, None, Vec::new());
    };
    let path = join(extra_path, "proxy");
    let Value::Object(obj) = v else {
        report.error(&path, format!("must be an object, found {}", kind(v)));
        return (false, None, Vec::new());
    };
    let mut r = Reader::new(obj, path, report);
    r.check_keys(
        &["sequential", "static", "flatmap_filter", "max_payload"],
        &["sequential_propagated_params", "decompress_gzip"],
        &["combiner"],
    );
    let sequential = r.boolean("sequential").unwrap_or(false);
    let static_response = r.object("static").and_then(|s| {
        let spath = r.at("static");
        let mut sr = Reader::new(s, spath, r.report);
        sr.check_keys(&["strategy", "data"], &[], &[]);
        let strategy = match sr.string("strategy") {
            Some("always") => StaticStrategy::Always,
            Some("success") => StaticStrategy::Success,
            Some("errored") => StaticStrategy::Errored,
            Some("complete") => StaticStrategy::Complete,
            Some("incomplete") => StaticStrategy::Incomplete,
            Some(other) => {
                sr.error("strategy", format!("{other:?} is not one of always, success, errored, complete, incomplete"));
                return None;
            }
            None => {
                sr.error("strategy", "is required (always, success, errored, complete or incomplete)");
                return None;
            }
        };
        let data = sr.object("data").cloned().unwrap_or_default();
        Some(StaticResponse { strategy, data })
    });
    let flatmap = flatmap(&mut r);
    (sequential, static_response, flatmap)
}

fn flatmap(r: &mut Reader<'_, '_>) -> Vec<FlatmapOp> {
    let Some(v) = r.get("flatmap_filter") else {
        return Vec::new();
    };
    let base = r.at("flatmap_filter");
    let Value::Array(items) = v else {
        r.report.error(&base, format!("must be an array of operations, found {}", kind(v)));
        return Vec::new();
    };
    let mut ops = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{base}[{i}]");
        let Value::Object(o) = item else {
            r.report.error(&path, format!("must be an object with type and args, found {}", kind(item)));
            continue;
        };
        let mut or = Reader::new(o, path, r.report);
        or.check_keys(&["type", "args"], &[], &[]);
        let args = or.strings("args").unwrap_or_default();
        let want = |or: &mut Reader<'_, '_>, n: usize, what: &str| {
            if args.len() == n && args.iter().all(|a| !a.is_empty()) {
                true
            } else {
                or.error("args", format!("{what} takes {n} non-empty path(s), found {}", args.len()));
                false
            }
        };
        match or.string("type") {
            Some("move") if want(&mut or, 2, "move") => {
                let stars = |p: &str| p.split('.').filter(|s| *s == "*").count();
                if stars(&args[1]) > stars(&args[0]) {
                    or.error(
                        "args",
                        format!(
                            "{:?} has more * than {:?}: each * of the destination takes the index a * of the source matched",
                            args[1], args[0]
                        ),
                    );
                } else {
                    ops.push(FlatmapOp::Move { from: args[0].clone(), to: args[1].clone() });
                }
            }
            Some("append") if want(&mut or, 2, "append") => {
                ops.push(FlatmapOp::Append { from: args[0].clone(), to: args[1].clone() })
            }
            Some("del") if want(&mut or, 1, "del") => ops.push(FlatmapOp::Del { path: args[0].clone() }),
            Some("move" | "append" | "del") => {}
            Some(other) => or.error("type", format!("{other:?} is not one of move, del, append")),
            None => or.error("type", "is required (move, del or append)"),
        }
    }
    ops
}

struct BackendContext<'a> {
    index: usize,
    params: &'a [String],
    route: &'a str,
    sequential: bool,
    method: &'a Method,
    defaults: &'a EndpointDefaults,
}

fn backend(obj: &Obj, path: &str, cx: &BackendContext<'_>, report: &mut Report) -> Option<Backend> {
    let mut r = Reader::new(obj, path.to_owned(), report);
    r.check_keys(BACKEND_KEYS, &[], &[]);
    let url_pattern = match r.string("url_pattern") {
        Some(u) => u.to_owned(),
        None => {
            r.error("url_pattern", "is required (the path on the backend, e.g. \"/users/{id}\")");
            String::new()
        }
    };
    if !url_pattern.is_empty() && !url_pattern.starts_with('/') {
        r.error("url_pattern", format!("{url_pattern:?} must start with / (the host goes in host)"));
    }
    check_placeholders(&url_pattern, &r.at("url_pattern"), cx, r.report);
    let host = hosts(&mut r, "host");
    if host.is_empty() && !cx.defaults.has_host && obj.get("host").is_none() {
        r.error("host", "no host: set host here or a default host at the root");
    }
    let method = method(&mut r, "method", cx.method.clone());
    let encoding = match r.string("encoding") {
        None | Some("json") => BackendEncoding::Json,
        Some("safejson") => BackendEncoding::SafeJson,
        Some("string") => BackendEncoding::String,
        Some("no-op") => BackendEncoding::NoOp,
        Some("xml") => BackendEncoding::Xml,
        Some("yaml") => BackendEncoding::Yaml,
        Some(other) => {
            r.error("encoding", format!("{other:?} is not one of json, safejson, string, no-op, xml, yaml"));
            BackendEncoding::Json
        }
    };
    let is_collection = r.boolean("is_collection").unwrap_or(false);
    let target = r.string("target").filter(|t| !t.is_empty()).map(str::to_owned);
    let allow = r.strings("allow").unwrap_or_default();
    let deny = r.strings("deny").unwrap_or_default();
    if !allow.is_empty() && !deny.is_empty() {
        r.report.warn(&r.at("deny"), "ignored: allow is set, and KrakenD applies allow instead of deny");
    }
    let mapping = r
        .object("mapping")
        .map(|m| {
            let mpath = r.at("mapping");
            m.iter()
                .filter_map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    other => {
                        r.report
                            .error(&join(&mpath, k), format!("must be the new name (a string), found {}", kind(other)));
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let group = r.string("group").filter(|g| !g.is_empty()).map(str::to_owned);
    let input_headers = name_filter(&mut r, "input_headers");
    let input_query_strings = name_filter(&mut r, "input_query_strings");
    match r.string("sd") {
        None | Some("static") => {}
        Some("dns") => {
            r.report.unsupported.push(Unsupported { path: r.at("sd"), namespace: "sd: dns".into(), blocking: true })
        }
        Some(other) => r.error("sd", format!("{other:?} is not a service discovery Weir knows (static)")),
    }
    let _ = r.string("sd_scheme");
    let _ = r.boolean("disable_host_sanitize");

    let extra = r.object("extra_config").cloned().unwrap_or_default();
    let extra_path = r.at("extra_config");
    namespaces(&extra, &extra_path, Scope::Backend, &cx.defaults.declares, r.report);
    let mut flatmap_ops = Vec::new();
    if let Some(v) = extra.get("proxy") {
        let ppath = join(&extra_path, "proxy");
        match v {
            Value::Object(p) => {
                let mut pr = Reader::new(p, ppath, r.report);
                pr.check_keys(&["flatmap_filter"], &[], &["shadow"]);
                if p.get("shadow").and_then(Value::as_bool) == Some(true) {
                    pr.report.unsupported.push(Unsupported {
                        path: pr.at("shadow"),
                        namespace: "proxy.shadow".into(),
                        blocking: true,
                    });
                }
                flatmap_ops = flatmap(&mut pr);
            }
            other => r.report.error(&ppath, format!("must be an object, found {}", kind(other))),
        }
    }
    let (mut return_error_code, mut return_error_details) = (false, None);
    if let Some(v) = extra.get("backend/http") {
        let hpath = join(&extra_path, "backend/http");
        match v {
            Value::Object(h) => {
                let mut hr = Reader::new(h, hpath, r.report);
                hr.check_keys(&["return_error_code", "return_error_details"], &[], &[]);
                return_error_code = hr.boolean("return_error_code").unwrap_or(false);
                return_error_details = hr.string("return_error_details").filter(|s| !s.is_empty()).map(str::to_owned);
            }
            other => r.report.error(&hpath, format!("must be an object, found {}", kind(other))),
        }
    }
    let mut follow_redirects = true;
    if let Some(v) = extra.get("backend/http/client") {
        let cpath = join(&extra_path, "backend/http/client");
        match v {
            Value::Object(c) => {
                let mut cr = Reader::new(c, cpath, r.report);
                cr.check_keys(&["no_redirect"], &[], &["client_tls", "proxy_address", "send_body_on_redirect"]);
                follow_redirects = !cr.boolean("no_redirect").unwrap_or(false);
            }
            other => r.report.error(&cpath, format!("must be an object, found {}", kind(other))),
        }
    }
    Some(Backend {
        url_pattern,
        host,
        method,
        encoding,
        is_collection,
        target,
        allow,
        deny,
        mapping,
        group,
        input_headers,
        input_query_strings,
        flatmap: flatmap_ops,
        return_error_code,
        return_error_details,
        follow_redirects,
        extra_config: extra,
    })
}

/// Every `{x}` in a url_pattern must name an endpoint parameter, a JWT claim or, in
/// sequential mode, a field of an earlier backend's response.
fn check_placeholders(pattern: &str, path: &str, cx: &BackendContext<'_>, report: &mut Report) {
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            report.error(path, format!("{pattern:?} has an unclosed {{"));
            return;
        };
        let name = &rest[start + 1..start + len];
        rest = &rest[start + len + 1..];
        if cx.params.iter().any(|p| p == name) || name.starts_with("JWT.") {
            continue;
        }
        if let Some((n, _)) = resp_placeholder(name) {
            if !cx.sequential {
                report.error(path, format!("{{{name}}} needs extra_config.proxy.sequential: true on the endpoint"));
            } else if n >= cx.index {
                report.error(
                    path,
                    format!("{{{name}}} refers to backend {n}, which runs after this one (backend {})", cx.index),
                );
            }
            continue;
        }
        let hint = if cx.params.is_empty() {
            format!("{} has no parameters", cx.route)
        } else {
            format!(
                "parameters of {} are {}",
                cx.route,
                cx.params.iter().map(|p| format!("{{{p}}}")).collect::<Vec<_>>().join(", ")
            )
        };
        report.error(path, format!("{{{name}}} is not a parameter of {} ({hint})", cx.route));
    }
}

/// Splits `resp0_user.id` into `(0, "user.id")`.
pub fn resp_placeholder(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("resp")?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    if digits == 0 {
        return None;
    }
    let n = rest[..digits].parse().ok()?;
    let field = rest[digits..].strip_prefix('_')?;
    (!field.is_empty()).then_some((n, field))
}

/// Duplicate endpoints and paths the router cannot tell apart are config errors.
fn check_routes(endpoints: &[(usize, Endpoint)], router: &RouterOptions, debug: bool, echo: bool, report: &mut Report) {
    let mut seen = HashSet::new();
    let mut matcher = matchit::Router::new();
    let mut inserted = HashSet::new();
    let mut reserved = Vec::new();
    if !router.disable_health {
        reserved.push(router.health_path.clone());
    }
    if debug {
        reserved.push("/__debug/".into());
    }
    if echo {
        reserved.push("/__echo/".into());
    }
    for r in &reserved {
        inserted.insert(r.clone());
        let _ = matcher.insert(r.clone(), ());
    }
    for (i, e) in endpoints {
        let path = format!("endpoints[{i}].endpoint");
        if e.path.is_empty() {
            continue;
        }
        if reserved.contains(&e.path) {
            report.error(&path, format!("{} is reserved by the gateway", e.path));
            continue;
        }
        if !seen.insert((e.path.clone(), e.method.clone())) {
            report.error(&path, format!("{} {} is declared twice", e.method, e.path));
            continue;
        }
        // Already reported by `check_path_syntax`, and the router would refuse it.
        if path_params(&e.path).len() > MAX_PATH_PARAMS {
            continue;
        }
        if inserted.insert(e.path.clone())
            && let Err(err) = matcher.insert(e.path.clone(), ())
        {
            report.error(&path, format!("{} cannot be routed: {err}", e.path));
        }
    }
}
