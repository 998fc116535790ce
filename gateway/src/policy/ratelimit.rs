//! `qos/ratelimit/router` (per endpoint, and per client) and `qos/ratelimit/proxy`
//! (per backend): token buckets from `governor`, with the IETF `RateLimit` and
//! `RateLimit-Policy` headers and `Retry-After` on refusals.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::{Problems, problem};

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;
type Keyed = RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Client buckets unused for this long are dropped, so keyed state cannot grow without bound.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// What a bucket is: `rate` tokens every `every`, holding at most `capacity`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rate {
    pub(super) rate: f64,
    pub(super) every: Duration,
    pub(super) capacity: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let period = self.every.div_f64(self.rate);
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.capacity)?))
    }

    /// `RateLimit-Policy: "name";q=<rate>;w=<seconds>`.
    pub(super) fn policy(self, name: &str) -> HeaderValue {
        let q = self.rate.round().max(1.0) as u64;
        let w = self.every.as_secs().max(1);
        HeaderValue::try_from(format!("\"{name}\";q={q};w={w}")).unwrap_or(HeaderValue::from_static(""))
    }
}

/// `every`, the period rates refer to (default 1 s).
pub(super) fn every(obj: &Map<String, Value>, path: &str, p: &mut Problems) -> Option<Duration> {
    match obj.get("every").and_then(Value::as_str) {
        None => Some(Duration::from_secs(1)),
        Some(s) => match crate::config::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                p.push(problem(&format!("{path}.every"), "must be greater than zero"));
                None
            }
            Err(e) => {
                p.push(problem(&format!("{path}.every"), e));
                None
            }
        },
    }
}

pub(super) fn rate(
    obj: &Map<String, Value>,
    every: Option<Duration>,
    rate_key: &str,
    cap_key: &str,
    path: &str,
    p: &mut Problems,
) -> Option<Rate> {
    let every = every?;
    let r = match obj.get(rate_key) {
        None | Some(Value::Null) => return None,
        Some(v) => match v.as_f64() {
            Some(r) if r > 0.0 => r,
            Some(_) => return None, // 0 means "no limit" in KrakenD
            None => {
                p.push(problem(&format!("{path}.{rate_key}"), "must be a number"));
                return None;
            }
        },
    };
    // KrakenD's default capacity is the rate itself (at least one token).
    let capacity = match obj.get(cap_key).map(Value::as_u64) {
        None => (r.ceil() as u32).max(1),
        Some(Some(c)) if c > 0 && c <= u32::MAX as u64 => c as u32,
        Some(_) => {
            p.push(problem(&format!("{path}.{cap_key}"), "must be a whole number above zero"));
            return None;
        }
    };
    Some(Rate { rate: r, every, capacity })
}

/// How a client is told apart for `client_max_rate`.
#[derive(Debug, Clone)]
pub(super) enum ClientKey {
    Ip,
    Header(HeaderName),
    Param(String),
    /// A JWT claim (dot path): Weir's `strategy: "jwt"`.
    Claim(Vec<String>),
}

struct Bucket {
    limiter: Direct,
    rate: Rate,
    policy: HeaderValue,
}

struct ClientBuckets {
    limiter: Keyed,
    rate: Rate,
    policy: HeaderValue,
    key: ClientKey,
    last_cleanup: AtomicU64,
    started: Instant,
}

/// A refusal: the status (503 endpoint-wide, 429 per client) and its headers.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What identifies the client of a request, for keyed limits.
pub struct Who<'a> {
    pub ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub params: &'a [(&'a str, &'a str)],
    pub claims: Option<&'a Map<String, Value>>,
}

/// A compiled `qos/ratelimit/router`.
pub struct RouterLimit {
    endpoint: Option<Bucket>,
    client: Option<ClientBuckets>,
    /// What it was compiled from: a reload that brings the same keeps this limit, and
    /// with it what its buckets hold.
    source: Value,
}

pub(super) fn remaining_headers(
    policy: &HeaderValue,
    name: &str,
    rate: Rate,
    remaining: u32,
) -> [(HeaderName, HeaderValue); 2] {
    // Seconds until the bucket is full again: each missing token takes one period.
    let missing = rate.capacity.saturating_sub(remaining);
    let reset = rate.every.div_f64(rate.rate).mul_f64(f64::from(missing)).as_secs_f64().ceil() as u64;
    // Written without the formatter: this runs on every admitted request.
    let mut text = String::with_capacity(name.len() + 32);
    text.push('"');
    text.push_str(name);
    text.push_str("\";r=");
    text.push_str(itoa::Buffer::new().format(remaining));
    text.push_str(";t=");
    text.push_str(itoa::Buffer::new().format(reset));
    let value = HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static(""));
    [(RATELIMIT_POLICY.clone(), policy.clone()), (RATELIMIT.clone(), value)]
}

pub(super) fn refusal(status: StatusCode, policy: &HeaderValue, name: &str, wait: Duration) -> Refusal {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Refusal {
        status,
        headers: vec![
            (http::header::RETRY_AFTER, HeaderValue::from(secs)),
            (RATELIMIT_POLICY.clone(), policy.clone()),
            (
                RATELIMIT.clone(),
                HeaderValue::try_from(format!("\"{name}\";r=0;t={secs}")).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    }
}

impl RouterLimit {
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let mut p = Problems::new();
        let period = every(obj, path, &mut p);
        let endpoint = rate(obj, period, "max_rate", "capacity", path, &mut p).and_then(|r| {
            Some(Bucket {
                limiter: RateLimiter::direct(r.quota()?).with_middleware(),
                rate: r,
                policy: r.policy("endpoint"),
            })
        });
        let key = client_key_setting(obj, path, &mut p);
        let client = rate(obj, period, "client_max_rate", "client_capacity", path, &mut p).and_then(|r| {
            Some(ClientBuckets {
                limiter: RateLimiter::dashmap(r.quota()?).with_middleware(),
                rate: r,
                policy: r.policy("client"),
                key: key.clone()?,
                last_cleanup: AtomicU64::new(0),
                started: Instant::now(),
            })
        });
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Self { endpoint, client, source: v.clone() })
    }

    /// Whether `other` was compiled from the same settings.
    pub fn same_settings(&self, other: &Self) -> bool {
        self.source == other.source
    }

    /// Takes a token for this request, or says why not. On success, returns the
    /// headers describing what is left.
    pub fn check(&self, who: &Who<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
        let mut headers = Vec::new();
        if let Some(c) = &self.client {
            self.cleanup(c);
            let key = client_key(&c.key, who).ok_or_else(unidentified)?;
            match c.limiter.check_key(&key) {
                Ok(snapshot) => {
                    headers.extend(remaining_headers(&c.policy, "client", c.rate, snapshot.remaining_burst_capacity()))
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(refusal(StatusCode::TOO_MANY_REQUESTS, &c.policy, "client", wait));
                }
            }
        }
        if let Some(b) = &self.endpoint {
            match b.limiter.check() {
                Ok(snapshot) => {
                    if headers.is_empty() {
                        headers.extend(remaining_headers(
                            &b.policy,
                            "endpoint",
                            b.rate,
                            snapshot.remaining_burst_capacity(),
                        ));
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &b.policy, "endpoint", wait));
                }
            }
        }
        Ok(headers)
    }

    fn cleanup(&self, c: &ClientBuckets) {
        let now = c.started.elapsed().as_secs();
        let last = c.last_cleanup.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= CLEANUP_EVERY.as_secs()
            && c.last_cleanup.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            c.limiter.retain_recent();
            c.limiter.shrink_to_fit();
        }
    }
}

/// What a request whose client cannot be told apart gets: 429, as from KrakenD, without a
/// time to retry after (waiting will not give it a key). Letting it through would let
/// anyone escape a per-client limit by leaving the key out.
pub(super) fn unidentified() -> Refusal {
    Refusal { status: StatusCode::TOO_MANY_REQUESTS, headers: Vec::new() }
}

/// The client of a request under a keyed limit; `None` when its header, parameter or claim
/// is missing or empty.
pub(super) fn client_key(key: &ClientKey, who: &Who<'_>) -> Option<String> {
    let key = client_key_any(key, who)?;
    (!key.is_empty()).then_some(key)
}

fn client_key_any(key: &ClientKey, who: &Who<'_>) -> Option<String> {
    match key {
        ClientKey::Ip => Some(match who.ip {
            std::net::IpAddr::V4(v4) => super::ip::Ipv4Text::new(v4).as_str().to_owned(),
            v6 => v6.to_string(),
        }),
        ClientKey::Header(h) => who.headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_owned),
        ClientKey::Param(name) => who.params.iter().find(|(k, _)| k == name).map(|(_, v)| (*v).to_owned()),
        ClientKey::Claim(path) => {
            let v = super::jwt::lookup(who.claims?, path)?;
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        }
    }
}

/// `strategy` and `key`: how clients are told apart.
pub(super) fn client_key_setting(obj: &Map<String, Value>, path: &str, p: &mut Problems) -> Option<ClientKey> {
    match obj.get("strategy").and_then(Value::as_str) {
        None | Some("ip") => Some(ClientKey::Ip),
        Some(s @ ("header" | "param" | "jwt")) => {
            match obj.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()) {
                None => {
                    p.push(problem(
                        &format!("{path}.key"),
                        format!("strategy {s} needs the key (header name, parameter or claim)"),
                    ));
                    None
                }
                Some(k) => match s {
                    "header" => HeaderName::try_from(k)
                        .map(ClientKey::Header)
                        .map_err(|_| p.push(problem(&format!("{path}.key"), format!("{k:?} is not a header name"))))
                        .ok(),
                    "param" => Some(ClientKey::Param(k.to_owned())),
                    _ => Some(ClientKey::Claim(k.split('.').map(str::to_owned).collect())),
                },
            }
        }
        Some(other) => {
            p.push(problem(&format!("{path}.strategy"), format!("{other:?} is not ip, header, param or jwt")));
            None
        }
    }
}

/// A compiled `qos/ratelimit/proxy`: a bucket in front of one backend.
pub struct BackendLimit {
    limiter: Direct,
}

impl std::fmt::Debug for BackendLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendLimit")
    }
}

impl BackendLimit {
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let mut p = Problems::new();
        let period = every(obj, path, &mut p);
        let r = rate(obj, period, "max_rate", "capacity", path, &mut p);
        match r.and_then(Rate::quota) {
            Some(q) if p.is_empty() => Ok(Self { limiter: RateLimiter::direct(q).with_middleware() }),
            _ if p.is_empty() => Err(vec![problem(&format!("{path}.max_rate"), "is required and must be above zero")]),
            _ => Err(p),
        }
    }

    /// Whether a call to the backend may go out now.
    pub fn allow(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who<'a>(ip: &str, headers: &'a HeaderMap) -> Who<'a> {
        Who { ip: ip.parse().unwrap(), headers, params: &[], claims: None }
    }

    #[test]
    fn client_limit_is_per_client_and_exact_at_the_burst() {
        let l = RouterLimit::compile(&json!({"client_max_rate": 3, "every": "1h"}), "x").unwrap();
        let h = HeaderMap::new();
        for i in 0..3 {
            let headers = l.check(&who("10.0.0.1", &h)).unwrap();
            assert_eq!(headers[1].1, format!("\"client\";r={};t={}", 2 - i, (i + 1) * 1200).as_str());
        }
        let refused = l.check(&who("10.0.0.1", &h)).err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers[0].0, http::header::RETRY_AFTER);
        assert!(l.check(&who("10.0.0.2", &h)).is_ok(), "another client has its own bucket");
        assert_eq!(l.check(&who("10.0.0.2", &h)).unwrap()[0].1, "\"client\";q=3;w=3600");
    }

    #[test]
    fn endpoint_limit_is_shared_and_503() {
        let l = RouterLimit::compile(&json!({"max_rate": 2, "every": "1h", "capacity": 2}), "x").unwrap();
        let h = HeaderMap::new();
        assert!(l.check(&who("10.0.0.1", &h)).is_ok());
        assert!(l.check(&who("10.0.0.2", &h)).is_ok());
        assert_eq!(l.check(&who("10.0.0.3", &h)).err().unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn header_key_and_problems() {
        let l = RouterLimit::compile(
            &json!({"client_max_rate": 1, "every": "1h", "strategy": "header", "key": "x-user"}),
            "x",
        )
        .unwrap();
        let mut a = HeaderMap::new();
        a.insert("x-user", HeaderValue::from_static("a"));
        assert!(l.check(&who("1.1.1.1", &a)).is_ok());
        assert!(l.check(&who("2.2.2.2", &a)).is_err(), "same header value, same bucket");
        let err = RouterLimit::compile(&json!({"client_max_rate": 1, "strategy": "header", "every": "soon"}), "rl")
            .err()
            .unwrap();
        assert_eq!(err.len(), 2, "{err:?}");
    }
}
