//! Security and traffic policies: KrakenD's `security/*`, `auth/*` and `qos/*`
//! components, plus Weir's own.
//!
//! Each component is compiled once from its `extra_config` namespace into an
//! immutable value; per request it only reads headers and shared counters. A
//! component's `compile` reports every problem of its settings with the config
//! path, so `weir check` shows them together with the rest of the config.

pub mod apikeys;
pub mod basic;
pub mod bot;
pub mod breaker;
pub mod cache;
pub mod compress;
pub mod cors;
pub mod ip;
pub mod jwt;
pub mod keyring;
pub mod ratelimit;
pub mod redis_limit;
pub mod schema;
pub mod security;
mod settings;
pub mod signer;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::config::Problem;
use crate::proxy::{Body, full};

/// Problems found while compiling a component's settings.
pub type Problems = Vec<Problem>;

/// A problem at `path` (the namespace path plus the key).
pub fn problem(path: &str, message: impl Into<String>) -> Problem {
    Problem { path: path.to_owned(), message: message.into() }
}

/// Where a namespace appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Service,
    Endpoint,
    Backend,
}

/// Whether Weir implements a namespace at a scope.
pub fn supports(scope: Scope, ns: &str) -> bool {
    match scope {
        Scope::Service => matches!(
            ns,
            "auth/api-keys"
                | "auth/basic"
                | "redis"
                | "security/cors"
                | "security/http"
                | "security/bot-detector"
                | "weir/ip-filter"
                | "weir/compression"
                | "weir/keyring"
                | "telemetry/opentelemetry"
                | "telemetry/logging"
        ),
        Scope::Endpoint => matches!(
            ns,
            "auth/validator"
                | "auth/api-keys"
                | "auth/basic"
                | "auth/signer"
                | "qos/ratelimit/router"
                | "qos/ratelimit/router/redis"
                | "security/bot-detector"
                | "validation/json-schema"
        ),
        Scope::Backend => matches!(ns, "qos/ratelimit/proxy" | "qos/circuit-breaker" | "qos/http-cache"),
    }
}

/// What the service declares that endpoints may refer to.
#[derive(Debug, Clone, Default)]
pub struct ServiceDeclares {
    pub api_keys: bool,
    pub basic: bool,
    /// Names of `redis.connection_pools`.
    pub redis_pools: Vec<String>,
}

/// Checks a supported namespace's settings without I/O: what `weir check` reports.
pub fn validate(scope: Scope, ns: &str, v: &serde_json::Value, path: &str, declares: &ServiceDeclares) -> Problems {
    let result = match (scope, ns) {
        (_, "auth/validator") => jwt::JwtSettings::parse(v, path).map(drop),
        (Scope::Service, "auth/api-keys") => apikeys::ApiKeys::compile(v, path).map(drop),
        (_, "auth/api-keys") if !declares.api_keys => {
            Err(vec![problem(path, "needs the keys declared in the service extra_config \"auth/api-keys\"")])
        }
        (_, "auth/api-keys") => Ok(()),
        (Scope::Endpoint, "auth/basic")
            if declares.basic && v.get("users").is_none() && v.get("htpasswd_path").is_none() =>
        {
            Ok(())
        }
        (_, "auth/basic") => basic::BasicSettings::parse(v, path).map(drop),
        (_, "qos/ratelimit/router") => ratelimit::RouterLimit::compile(v, path).map(drop),
        (_, "qos/ratelimit/proxy") => ratelimit::BackendLimit::compile(v, path).map(drop),
        (_, "redis") => redis_limit::Pools::compile(v, path).map(drop),
        (_, "auth/signer") => signer::SignerSettings::parse(v, path).map(drop),
        (_, "qos/circuit-breaker") => breaker::CircuitBreaker::compile(v, path).map(drop),
        (_, "qos/http-cache") => cache::HttpCache::compile(v, path).map(drop),
        (_, "validation/json-schema") => schema::BodySchema::compile(v, path).map(drop),
        (_, "telemetry/opentelemetry") => {
            let p = crate::telemetry::validate(v, path);
            if p.is_empty() { Ok(()) } else { Err(p) }
        }
        (_, "telemetry/logging") => {
            let p = crate::telemetry::access::validate(v, path);
            if p.is_empty() { Ok(()) } else { Err(p) }
        }
        (_, "security/cors") => cors::Cors::compile(v, path).map(drop),
        (_, "security/http") => security::HttpSecurity::compile(v, path).map(drop),
        (_, "security/bot-detector") => bot::BotDetector::compile(v, path).map(drop),
        (_, "weir/ip-filter") => ip::IpFilter::compile(v, path).map(drop),
        (_, "weir/compression") => compress::Compression::compile(v, path).map(drop),
        (_, "weir/keyring") => keyring::KeyringSettings::parse(v, path, &declares.redis_pools).map(drop),
        (_, "qos/ratelimit/router/redis") => {
            let p = redis_limit::validate(v, path, &declares.redis_pools);
            if p.is_empty() { Ok(()) } else { Err(p) }
        }
        _ => Ok(()),
    };
    result.err().unwrap_or_default()
}

/// Service-level components that endpoints refer to.
#[derive(Default)]
pub struct ServicePolicies {
    api_keys: Option<Arc<apikeys::ApiKeys>>,
    basic: Option<Arc<basic::BasicAuth>>,
    redis: redis_limit::Pools,
}

fn joined(problems: Problems) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl ServicePolicies {
    /// The service's API-key table, where a bundle's keyring is installed.
    pub fn api_keys(&self) -> Option<&Arc<apikeys::ApiKeys>> {
        self.api_keys.as_ref()
    }

    /// Builds the service-level components (reads htpasswd files).
    pub fn build(extra: &Map<String, Value>) -> Result<Self, String> {
        let redis = match extra.get("redis") {
            Some(v) => redis_limit::Pools::compile(v, "extra_config.redis").map_err(joined)?,
            None => redis_limit::Pools::default(),
        };
        let api_keys = match extra.get("auth/api-keys") {
            Some(v) => {
                let mut keys = apikeys::ApiKeys::compile(v, "extra_config.auth/api-keys").map_err(joined)?;
                if let Some(settings) = extra.get("weir/keyring") {
                    let names: Vec<String> = extra
                        .get("redis")
                        .and_then(|r| r.get("connection_pools"))
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter().filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
                        })
                        .unwrap_or_default();
                    let settings = keyring::KeyringSettings::parse(settings, "extra_config.weir/keyring", &names)
                        .map_err(joined)?;
                    if let Some(pool) = settings.quota_redis.as_deref().and_then(|n| redis.get(n)) {
                        keys.share_quotas(pool.clone());
                    }
                }
                Some(Arc::new(keys))
            }
            None => None,
        };
        let basic = match extra.get("auth/basic") {
            Some(v) => {
                let settings = basic::BasicSettings::parse(v, "extra_config.auth/basic").map_err(joined)?;
                Some(Arc::new(basic::BasicAuth::build(settings)?))
            }
            None => None,
        };
        Ok(Self { api_keys, basic, redis })
    }
}

/// Service-wide checks that run before routing, in KrakenD's order: CORS preflights,
/// allowed hosts, bots, then client addresses; and the headers they add to every response.
#[derive(Default)]
pub struct Front {
    cors: Option<cors::Cors>,
    security: Option<security::HttpSecurity>,
    bots: Option<bot::BotDetector>,
    ip: Option<ip::IpFilter>,
}

impl Front {
    pub fn build(extra: &Map<String, Value>) -> Result<Self, String> {
        fn one<T>(
            extra: &Map<String, Value>,
            ns: &str,
            compile: impl Fn(&Value, &str) -> Result<T, Problems>,
        ) -> Result<Option<T>, String> {
            extra.get(ns).map(|v| compile(v, &format!("extra_config.{ns}")).map_err(joined)).transpose()
        }
        Ok(Self {
            cors: one(extra, "security/cors", cors::Cors::compile)?,
            security: one(extra, "security/http", security::HttpSecurity::compile)?,
            bots: one(extra, "security/bot-detector", bot::BotDetector::compile)?,
            ip: one(extra, "weir/ip-filter", ip::IpFilter::compile)?,
        })
    }

    /// The client's address: the peer, or a forwarded one from a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        self.ip.as_ref().map_or(peer, |f| f.client_ip(peer, headers))
    }

    /// Answers requests the front policies decide alone (preflights, refusals), with
    /// the headers they need: a preflight carries its own CORS headers and gets only
    /// the security ones; a refusal gets both, like any other response.
    pub fn intercept(&self, parts: &http::request::Parts, client_ip: IpAddr) -> Option<Response<Body>> {
        if let Some(cors) = &self.cors
            && let Some(mut preflight) = cors.preflight(&parts.method, &parts.headers)
        {
            if let Some(security) = &self.security {
                security.decorate(preflight.headers_mut());
            }
            return Some(preflight);
        }
        let mut refused = self.refusal(parts, client_ip)?;
        self.decorate(&parts.headers, refused.headers_mut());
        Some(refused)
    }

    fn refusal(&self, parts: &http::request::Parts, client_ip: IpAddr) -> Option<Response<Body>> {
        if let Some(security) = &self.security
            && let Err(refused) = security.check(&parts.headers, &parts.uri)
        {
            return Some(refused);
        }
        let forbidden = self.bots.as_ref().is_some_and(|b| b.is_bot(&parts.headers))
            || self.ip.as_ref().is_some_and(|f| !f.allows(client_ip));
        forbidden.then(|| json_error(StatusCode::FORBIDDEN, r#"{"error":"forbidden"}"#))
    }

    /// Whether [`Front::decorate`] changes responses at all.
    pub fn decorates(&self) -> bool {
        self.cors.is_some() || self.security.is_some()
    }

    /// Adds CORS and security headers to a response.
    pub fn decorate(&self, request: &http::HeaderMap, response: &mut http::HeaderMap) {
        if let Some(cors) = &self.cors {
            cors.decorate(request, response);
        }
        if let Some(security) = &self.security {
            security.decorate(response);
        }
    }
}

/// An endpoint's admission checks, run in KrakenD's order before its body is read:
/// authentication (JWT, API key, basic), then rate limits.
pub struct Guards {
    jwt: Option<jwt::JwtValidator>,
    api_keys: Option<apikeys::ApiKeyGuard>,
    basic: Option<Arc<basic::BasicAuth>>,
    rate_limit: Option<Arc<ratelimit::RouterLimit>>,
    cluster_limit: Option<redis_limit::RedisLimit>,
    bots: Option<bot::BotDetector>,
}

/// What admission learned about a request.
#[derive(Default)]
pub struct Admitted {
    pub claims: Option<jwt::Claims>,
    /// Headers for every backend request (propagated claims and roles).
    pub backend_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers for the client's response (rate-limit state).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

/// The request facts admission looks at.
pub struct Request<'a> {
    pub parts: &'a http::request::Parts,
    pub client_ip: IpAddr,
    pub params: &'a [(&'a str, &'a str)],
}

impl Guards {
    /// Compiles an endpoint's guards; `None` when it has none.
    /// `id` names the endpoint in shared (Redis) state: method and path.
    pub fn build(
        extra: &Map<String, Value>,
        path: &str,
        id: &str,
        service: &ServicePolicies,
    ) -> Result<Option<Self>, String> {
        let at = |ns: &str| format!("{path}.extra_config.{ns}");
        let jwt = match extra.get("auth/validator") {
            Some(v) => {
                Some(jwt::JwtValidator::build(jwt::JwtSettings::parse(v, &at("auth/validator")).map_err(joined)?)?)
            }
            None => None,
        };
        let api_keys = match extra.get("auth/api-keys") {
            Some(v) => Some(
                apikeys::ApiKeyGuard::compile(v, &at("auth/api-keys"), service.api_keys.as_ref()).map_err(joined)?,
            ),
            None => None,
        };
        let basic = match extra.get("auth/basic") {
            Some(v) if v.get("users").is_some() || v.get("htpasswd_path").is_some() => {
                let settings = basic::BasicSettings::parse(v, &at("auth/basic")).map_err(joined)?;
                Some(Arc::new(basic::BasicAuth::build(settings)?))
            }
            Some(_) => Some(service.basic.clone().ok_or_else(|| format!("{}: no users declared", at("auth/basic")))?),
            None => None,
        };
        let rate_limit = match extra.get("qos/ratelimit/router") {
            Some(v) => Some(Arc::new(ratelimit::RouterLimit::compile(v, &at("qos/ratelimit/router")).map_err(joined)?)),
            None => None,
        };
        let cluster_limit = match extra.get("qos/ratelimit/router/redis") {
            Some(v) => Some(
                redis_limit::RedisLimit::compile(v, &at("qos/ratelimit/router/redis"), id, &service.redis)
                    .map_err(joined)?,
            ),
            None => None,
        };
        let bots = match extra.get("security/bot-detector") {
            Some(v) => Some(bot::BotDetector::compile(v, &at("security/bot-detector")).map_err(joined)?),
            None => None,
        };
        if jwt.is_none()
            && api_keys.is_none()
            && basic.is_none()
            && rate_limit.is_none()
            && cluster_limit.is_none()
            && bots.is_none()
        {
            return Ok(None);
        }
        Ok(Some(Self { jwt, api_keys, basic, rate_limit, cluster_limit, bots }))
    }

    /// Keeps `previous`'s rate limit, buckets and all, when its settings did not change:
    /// a reload (a new bundle, a key issued in the portal) must not refill every client's
    /// bucket. Cluster limits keep their counts in Redis anyway.
    pub fn adopt_state(&mut self, previous: &Guards) {
        if let (Some(new), Some(old)) = (&self.rate_limit, &previous.rate_limit)
            && new.same_settings(old)
        {
            self.rate_limit = Some(old.clone());
        }
    }

    /// Admits a request, or answers it with the refusal.
    pub async fn admit(&self, req: &Request<'_>) -> Result<Admitted, Response<Body>> {
        let headers = &req.parts.headers;
        if self.bots.as_ref().is_some_and(|b| b.is_bot(headers)) {
            return Err(json_error(StatusCode::FORBIDDEN, r#"{"error":"forbidden"}"#));
        }
        let mut admitted = Admitted::default();
        if let Some(jwt) = &self.jwt {
            let claims = jwt.validate(headers).await.map_err(|d| denied(d, "Bearer"))?;
            admitted.backend_headers.extend(jwt.propagated(&claims));
            admitted.claims = Some(claims);
        }
        if let Some(keys) = &self.api_keys {
            let admission = keys.check(headers, req.parts.uri.query()).map_err(|d| denied(d, "ApiKey"))?;
            admitted.backend_headers.extend(admission.headers);
            if let Some(quota) = admission.shared_quota {
                quota.take().await.map_err(|retry| denied(jwt::Denied::Exhausted(retry), "ApiKey"))?;
            }
        }
        if let Some(basic) = &self.basic {
            basic.check(headers).await.map_err(|d| denied(d, "Basic realm=\"weir\""))?;
        }
        let who = ratelimit::Who { ip: req.client_ip, headers, params: req.params, claims: admitted.claims.as_deref() };
        if let Some(limit) = &self.rate_limit {
            admitted.response_headers.extend(limit.check(&who).map_err(limited)?);
        }
        if let Some(limit) = &self.cluster_limit {
            let h = limit.check(&who).await.map_err(limited)?;
            if admitted.response_headers.is_empty() {
                admitted.response_headers.extend(h);
            }
        }
        Ok(admitted)
    }
}

fn limited(refusal: ratelimit::Refusal) -> Response<Body> {
    let body = match refusal.status {
        StatusCode::TOO_MANY_REQUESTS => r#"{"error":"too many requests"}"#,
        _ if refusal.headers.is_empty() => r#"{"error":"rate limit unavailable"}"#,
        _ => r#"{"error":"endpoint rate limit exceeded"}"#,
    };
    let mut r = json_error(refusal.status, body);
    for (name, value) in refusal.headers {
        r.headers_mut().insert(name, value);
    }
    r
}

fn json_error(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, crate::proxy::render::JSON);
    r
}

/// 401 with a challenge, or 403; the body never says which check failed or why.
fn denied(d: jwt::Denied, scheme: &'static str) -> Response<Body> {
    match d {
        jwt::Denied::Unauthorized => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
            r
        }
        jwt::Denied::Forbidden => json_error(StatusCode::FORBIDDEN, r#"{"error":"forbidden"}"#),
        // Distinct answers tell a developer what to do about their key; they reveal nothing
        // to someone without one (keys are 256 random bits: there is nothing to guess).
        jwt::Denied::KeyRevoked => json_error(StatusCode::UNAUTHORIZED, r#"{"error":"api key revoked"}"#),
        jwt::Denied::KeyExpired => json_error(StatusCode::UNAUTHORIZED, r#"{"error":"api key expired"}"#),
        jwt::Denied::Exhausted(secs) => {
            let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, r#"{"error":"plan limit reached"}"#);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}
