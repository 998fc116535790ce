//! Cluster-wide rate limits (`qos/ratelimit/router/redis`): the same token buckets
//! as `qos/ratelimit/router`, kept in Redis so that every node draws from them.
//!
//! Each check is one atomic script run (GCRA) using Redis' own clock, so node
//! clocks do not need to agree. If Redis cannot answer in time the request is
//! refused with 503, or let through with `on_failure_allow`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};
use redis::aio::ConnectionManager;
use serde_json::Value;

use super::ratelimit::{
    ClientKey, Rate, Refusal, Who, client_key, client_key_setting, every, rate, refusal, unidentified,
};
use super::{Problems, problem};

/// A Redis call slower than this counts as a failure: a limit check must not add
/// more latency than the backend call it guards.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// GCRA: the bucket is a "theoretical arrival time"; a request fits if it does not
/// push that time more than `capacity` intervals past now. Returns
/// {allowed, remaining, microseconds until retry (refused) or until full (allowed)}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, 0, new_tat - now - tolerance}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now}
";

/// A named connection to Redis, opened on first use and re-opened after failures.
pub struct Pool {
    client: redis::Client,
    manager: tokio::sync::OnceCell<ConnectionManager>,
}

impl Pool {
    async fn connection(&self) -> Option<ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        self.manager
            .get_or_try_init(|| async { self.client.get_connection_manager_with_config(config).await })
            .await
            .ok()
            .cloned()
    }
}

/// Counts one request in a quota window shared by every node: returns the window's
/// count so far, or `None` when Redis cannot answer in time.
const WINDOW: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl Pool {
    pub async fn count_in_window(&self, key: &str, window_secs: u64) -> Option<u64> {
        let mut conn = self.connection().await?;
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let mut invocation = SCRIPT.get_or_init(|| redis::Script::new(WINDOW)).key(key);
        invocation.arg(window_secs);
        tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<u64>(&mut conn)).await.ok()?.ok()
    }
}

/// The service's `redis.connection_pools`, by name.
#[derive(Default)]
pub struct Pools {
    pools: HashMap<String, Arc<Pool>>,
}

impl Pools {
    pub fn get(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut p = Problems::new();
        let mut pools = HashMap::new();
        let list = v.get("connection_pools").and_then(Value::as_array).cloned().unwrap_or_default();
        for (i, pool) in list.iter().enumerate() {
            let at = format!("{path}.connection_pools[{i}]");
            let name = pool.get("name").and_then(Value::as_str);
            let address = pool.get("address").and_then(Value::as_str);
            let (Some(name), Some(address)) = (name, address) else {
                p.push(problem(&at, "needs a name and an address (host:port)"));
                continue;
            };
            let mut url = String::from("redis://");
            if let Some(password) = pool.get("password").and_then(Value::as_str) {
                let user = pool.get("username").and_then(Value::as_str).unwrap_or("");
                url.push_str(&format!("{user}:{password}@"));
            }
            url.push_str(address);
            if let Some(db) = pool.get("db").and_then(Value::as_u64) {
                url.push_str(&format!("/{db}"));
            }
            match redis::Client::open(url) {
                Ok(client) => {
                    pools.insert(name.to_owned(), Arc::new(Pool { client, manager: tokio::sync::OnceCell::new() }));
                }
                Err(e) => p.push(problem(&format!("{at}.address"), e.to_string())),
            }
        }
        if v.get("clusters").and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
            p.push(problem(&format!("{path}.clusters"), "Redis Cluster is not supported yet: use connection_pools"));
        }
        if p.is_empty() { Ok(Self { pools }) } else { Err(p) }
    }
}

struct Limit {
    interval_us: u64,
    rate: Rate,
    policy: HeaderValue,
}

impl Limit {
    fn new(r: Rate, name: &str) -> Self {
        Self { interval_us: (r.every.div_f64(r.rate).as_micros() as u64).max(1), rate: r, policy: r.policy(name) }
    }
}

/// A compiled `qos/ratelimit/router/redis`.
pub struct RedisLimit {
    pool: Arc<Pool>,
    prefix: String,
    endpoint: Option<Limit>,
    client: Option<(Limit, ClientKey)>,
    on_failure_allow: bool,
    script: redis::Script,
}

/// The settings of `qos/ratelimit/router/redis` before its pool is looked up.
struct Settings<'a> {
    endpoint: Option<Limit>,
    client: Option<(Limit, ClientKey)>,
    pool: Option<&'a str>,
    on_failure_allow: bool,
}

fn settings<'a>(v: &'a Value, path: &str, p: &mut Problems) -> Option<Settings<'a>> {
    let Value::Object(obj) = v else {
        p.push(problem(path, "must be an object"));
        return None;
    };
    let period = every(obj, path, p);
    let endpoint = rate(obj, period, "max_rate", "capacity", path, p).map(|r| Limit::new(r, "endpoint"));
    let key = client_key_setting(obj, path, p);
    let client = rate(obj, period, "client_max_rate", "client_capacity", path, p)
        .and_then(|r| Some((Limit::new(r, "client"), key?)));
    let pool = obj.get("connection_pool").or_else(|| obj.get("connection_name")).and_then(Value::as_str);
    if pool.is_none() {
        p.push(problem(
            &format!("{path}.connection_pool"),
            "is required: the name of a service redis.connection_pools entry",
        ));
    }
    if endpoint.is_none() && client.is_none() && p.is_empty() {
        p.push(problem(path, "sets neither max_rate nor client_max_rate"));
    }
    let on_failure_allow = obj.get("on_failure_allow").and_then(Value::as_bool).unwrap_or(false);
    Some(Settings { endpoint, client, pool, on_failure_allow })
}

fn undeclared(path: &str, name: &str) -> crate::config::Problem {
    problem(
        &format!("{path}.connection_pool"),
        format!("{name:?} is not declared in the service redis.connection_pools"),
    )
}

/// Checks the settings against the names of the service's pools, without connecting.
pub fn validate(v: &Value, path: &str, pool_names: &[String]) -> Problems {
    let mut p = Problems::new();
    if let Some(s) = settings(v, path, &mut p)
        && let Some(name) = s.pool
        && !pool_names.iter().any(|n| n == name)
    {
        p.push(undeclared(path, name));
    }
    p
}

impl RedisLimit {
    /// `name` identifies the endpoint in Redis keys; `pools` are the service's.
    pub fn compile(v: &Value, path: &str, name: &str, pools: &Pools) -> Result<Self, Problems> {
        let mut p = Problems::new();
        let s = settings(v, path, &mut p);
        let pool = s.as_ref().and_then(|s| s.pool).and_then(|n| {
            pools.pools.get(n).cloned().or_else(|| {
                p.push(undeclared(path, n));
                None
            })
        });
        match (s, pool) {
            (Some(s), Some(pool)) if p.is_empty() => Ok(Self {
                pool,
                prefix: format!("weir:rl:{name}"),
                endpoint: s.endpoint,
                client: s.client,
                on_failure_allow: s.on_failure_allow,
                script: redis::Script::new(GCRA),
            }),
            _ => Err(p),
        }
    }

    async fn take(&self, key: &str, limit: &Limit) -> Option<(bool, u64, u64)> {
        let mut conn = self.pool.connection().await?;
        let mut invocation = self.script.key(key);
        invocation.arg(limit.interval_us).arg(limit.rate.capacity);
        let call = invocation.invoke_async::<(i64, i64, i64)>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok((allowed, remaining, micros))) => Some((allowed == 1, remaining.max(0) as u64, micros.max(0) as u64)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis rate limit check failed");
                None
            }
            Err(_) => {
                tracing::warn!("redis rate limit check timed out");
                None
            }
        }
    }

    /// Takes a token from the shared buckets, or refuses the request.
    pub async fn check(&self, who: &Who<'_>) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
        let mut headers = Vec::new();
        if let Some((limit, key)) = &self.client {
            let id = client_key(key, who).ok_or_else(unidentified)?;
            let redis_key = format!("{}:client:{id}", self.prefix);
            headers = self.decide(&redis_key, limit, "client", StatusCode::TOO_MANY_REQUESTS).await?;
        }
        if let Some(limit) = &self.endpoint {
            let redis_key = format!("{}:endpoint", self.prefix);
            let h = self.decide(&redis_key, limit, "endpoint", StatusCode::SERVICE_UNAVAILABLE).await?;
            if headers.is_empty() {
                headers = h;
            }
        }
        Ok(headers)
    }

    async fn decide(
        &self,
        key: &str,
        limit: &Limit,
        name: &str,
        status: StatusCode,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
        match self.take(key, limit).await {
            Some((true, remaining, _)) => {
                Ok(super::ratelimit::remaining_headers(&limit.policy, name, limit.rate, remaining as u32).to_vec())
            }
            Some((false, _, retry_us)) => Err(refusal(status, &limit.policy, name, Duration::from_micros(retry_us))),
            None if self.on_failure_allow => Ok(Vec::new()),
            None => Err(Refusal { status: StatusCode::SERVICE_UNAVAILABLE, headers: Vec::new() }),
        }
    }
}
