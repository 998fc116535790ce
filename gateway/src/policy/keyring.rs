//! API keys issued at run time: the signed keyring of a bundle, with each key's plan.
//!
//! The control plane sends only SHA-256 hashes of keys. A presented key is hashed once
//! and looked up; the entry says whom it belongs to, which roles (products) it opens,
//! when it expires, whether it was revoked, and what its plan allows. Plans are
//! enforced per key: rates (governor, per second and per minute) on this node, and
//! quotas per UTC day and calendar month either on this node (a fleet of N nodes then
//! lets a key through up to N times its quota in the worst case) or, with
//! `weir/keyring.quota_redis`, in Redis, shared by every node.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use sha2::{Digest as _, Sha256};

use crate::bundle::{KeyringEntry, PlanLimits};

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Why a keyring key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Revoked,
    Expired,
    /// The plan's rate or quota is used up; retry after this many seconds.
    Exhausted {
        retry_after: u64,
    },
}

/// A counter that starts again with each window (a UTC day or calendar month).
struct Quota_ {
    limit: u64,
    /// (window number, requests counted in it)
    used: Mutex<(u64, u64)>,
    monthly: bool,
}

/// The window number and the seconds until it ends, for a UTC day or calendar month.
fn window(now: SystemTime, monthly: bool) -> (u64, u64) {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let day = secs / 86_400;
    if !monthly {
        return (day, 86_400 - secs % 86_400);
    }
    let (y, m, _) = crate::time::civil_from_days(i64::try_from(day).unwrap_or(0));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = u64::try_from(crate::time::days_from_civil(ny, nm, 1)).unwrap_or(day + 1) * 86_400;
    (u64::try_from(y).unwrap_or(0) * 12 + u64::from(m), next.saturating_sub(secs).max(1))
}

impl Quota_ {
    fn take(&self, now: SystemTime) -> Result<(), u64> {
        let (id, left) = window(now, self.monthly);
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.0 != id {
            *used = (id, 0);
        }
        if used.1 >= self.limit {
            return Err(left);
        }
        used.1 += 1;
        Ok(())
    }
}

/// `weir/keyring` (service level): where quotas are counted.
pub struct KeyringSettings {
    /// The `redis.connection_pools` name that counts quotas for the whole fleet.
    pub quota_redis: Option<String>,
}

impl KeyringSettings {
    pub fn parse(v: &serde_json::Value, path: &str, redis_pools: &[String]) -> Result<Self, super::Problems> {
        let Some(obj) = v.as_object() else { return Err(vec![super::problem(path, "must be an object")]) };
        let mut p = super::Problems::new();
        for key in obj.keys().filter(|k| *k != "quota_redis" && !crate::config::is_comment_key(k)) {
            p.push(super::problem(&format!("{path}.{key}"), "unknown key (weir/keyring takes quota_redis)"));
        }
        let quota_redis = match obj.get("quota_redis") {
            None => None,
            Some(serde_json::Value::String(name)) if redis_pools.contains(name) => Some(name.clone()),
            Some(serde_json::Value::String(name)) => {
                p.push(super::problem(
                    &format!("{path}.quota_redis"),
                    format!("{name:?} is not a pool of the service's redis.connection_pools"),
                ));
                None
            }
            Some(_) => {
                p.push(super::problem(&format!("{path}.quota_redis"), "must be a redis pool name"));
                None
            }
        };
        if p.is_empty() { Ok(Self { quota_redis }) } else { Err(p) }
    }
}

/// Quotas of one request still to count in Redis, shared by the fleet.
pub struct SharedQuota {
    pool: Arc<super::redis_limit::Pool>,
    /// (Redis key, limit, seconds left in the window)
    windows: Vec<(String, u64, u64)>,
}

impl SharedQuota {
    /// Counts the request; `Err(retry_after)` when a window is used up. When Redis
    /// cannot answer, the request goes through: quotas meter use, and a Redis outage
    /// must not take the API down (the rates, counted locally, still apply).
    pub async fn take(&self) -> Result<(), u64> {
        for (key, limit, left) in &self.windows {
            match self.pool.count_in_window(key, *left).await {
                Some(n) if n > *limit => return Err(*left),
                Some(_) => {}
                None => {
                    tracing::warn!("redis did not answer a quota count; letting the request through");
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// One key's running limits.
struct Limits {
    plan: PlanLimits,
    per_second: Option<Direct>,
    per_minute: Option<Direct>,
    day: Option<Quota_>,
    month: Option<Quota_>,
}

impl Limits {
    fn new(plan: &PlanLimits, shared_quotas: bool) -> Self {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            plan: plan.clone(),
            per_second: plan.rate_per_second.map(|n| RateLimiter::direct(Quota::per_second(nz(n)))),
            per_minute: plan.rate_per_minute.map(|n| RateLimiter::direct(Quota::per_minute(nz(n)))),
            day: plan.quota_per_day.filter(|_| !shared_quotas).map(|limit| Quota_ {
                limit,
                used: Mutex::new((0, 0)),
                monthly: false,
            }),
            month: plan.quota_per_month.filter(|_| !shared_quotas).map(|limit| Quota_ {
                limit,
                used: Mutex::new((0, 0)),
                monthly: true,
            }),
        }
    }

    fn take(&self, now: SystemTime) -> Result<(), u64> {
        for limiter in [&self.per_second, &self.per_minute].into_iter().flatten() {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
                return Err(wait.as_secs() + 1);
            }
        }
        // Quotas count only requests the rates let through.
        for quota in [&self.day, &self.month].into_iter().flatten() {
            quota.take(now)?;
        }
        Ok(())
    }
}

/// Requests a consumer (an app) made with its keys, since `started`. Shared by all of
/// the consumer's keys and carried from keyring to keyring, so the count is cumulative.
pub struct Usage {
    pub consumer: String,
    pub started: SystemTime,
    pub requests: std::sync::atomic::AtomicU64,
}

/// A key of the keyring.
pub struct Key {
    pub consumer: String,
    usage: Arc<Usage>,
    pub roles: Vec<String>,
    expires_at: Option<SystemTime>,
    revoked: bool,
    limits: Option<Arc<Limits>>,
    /// Hex SHA-256 of the key, naming its shared quota counters.
    hash: String,
}

impl Key {
    /// Checks expiry, revocation and the plan; counts the request against the plan.
    pub fn admit(&self, now: SystemTime) -> Result<(), KeyRefusal> {
        if self.revoked {
            return Err(KeyRefusal::Revoked);
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            return Err(KeyRefusal::Expired);
        }
        if let Some(limits) = &self.limits {
            limits.take(now).map_err(|retry_after| KeyRefusal::Exhausted { retry_after })?;
        }
        self.usage.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The quotas to count in Redis for this request, when the keyring shares them.
    pub fn shared_quota(&self, pool: &Arc<super::redis_limit::Pool>, now: SystemTime) -> Option<SharedQuota> {
        let limits = self.limits.as_ref()?;
        let mut windows = Vec::new();
        for (limit, monthly) in [(limits.plan.quota_per_day, false), (limits.plan.quota_per_month, true)] {
            if let Some(limit) = limit {
                let (id, left) = window(now, monthly);
                let span = if monthly { "month" } else { "day" };
                windows.push((format!("weir:quota:{}:{span}:{id}", self.hash), limit, left));
            }
        }
        (!windows.is_empty()).then(|| SharedQuota { pool: pool.clone(), windows })
    }
}

/// The keys of a bundle, by the SHA-256 of the key.
#[derive(Default)]
pub struct Keyring {
    keys: HashMap<[u8; 32], Key>,
    usage: Vec<Arc<Usage>>,
}

fn parse_hash(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Keyring {
    /// Builds a keyring. Keys that keep their plan keep their counters from `previous`,
    /// so a new bundle (another key issued, say) does not reset anyone's limits.
    /// With `shared_quotas`, quotas are left to Redis ([`Key::shared_quota`]) and only
    /// rates are counted here.
    pub fn build(
        entries: &[KeyringEntry],
        plans: &BTreeMap<String, PlanLimits>,
        previous: Option<&Keyring>,
        shared_quotas: bool,
    ) -> Self {
        let mut keys = HashMap::with_capacity(entries.len());
        let mut usage: HashMap<String, Arc<Usage>> = HashMap::new();
        for e in entries {
            let Some(hash) = parse_hash(&e.hash) else {
                tracing::warn!(consumer = %e.consumer, "keyring entry with an unreadable hash skipped");
                continue;
            };
            let plan = e.plan.as_ref().and_then(|p| plans.get(p));
            let limits = plan.map(|plan| {
                previous
                    .and_then(|prev| prev.keys.get(&hash))
                    .and_then(|k| k.limits.clone())
                    .filter(|l| l.plan == *plan)
                    .unwrap_or_else(|| Arc::new(Limits::new(plan, shared_quotas)))
            });
            let expires_at = e.expires_at.as_deref().and_then(crate::time::parse_rfc3339);
            let hex = e.hash.trim_start_matches("sha256:").to_ascii_lowercase();
            let counter = usage
                .entry(e.consumer.clone())
                .or_insert_with(|| {
                    previous
                        .and_then(|prev| prev.usage.iter().find(|u| u.consumer == e.consumer).cloned())
                        .unwrap_or_else(|| {
                            Arc::new(Usage {
                                consumer: e.consumer.clone(),
                                started: SystemTime::now(),
                                requests: std::sync::atomic::AtomicU64::new(0),
                            })
                        })
                })
                .clone();
            keys.insert(
                hash,
                Key {
                    usage: counter,
                    consumer: e.consumer.clone(),
                    roles: e.roles.clone(),
                    expires_at,
                    revoked: e.revoked,
                    limits,
                    hash: hex,
                },
            );
        }
        Self { keys, usage: usage.into_values().collect() }
    }

    /// Requests per consumer, for the exporters.
    pub fn usage(&self) -> &[Arc<Usage>] {
        &self.usage
    }

    /// The entry for a presented key.
    pub fn find(&self, presented: &str) -> Option<&Key> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.keys.get(&hash)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn entry(key: &str, plan: Option<&str>) -> KeyringEntry {
        let hex: String = Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        KeyringEntry {
            hash: format!("sha256:{hex}"),
            consumer: "app-1".into(),
            plan: plan.map(str::to_owned),
            roles: vec!["orders".into()],
            expires_at: None,
            revoked: false,
        }
    }

    #[test]
    fn keys_are_found_by_hash_and_refused_when_revoked_or_expired() {
        let mut revoked = entry("k-revoked", None);
        revoked.revoked = true;
        let mut expired = entry("k-expired", None);
        expired.expires_at = Some("2020-01-01T00:00:00Z".into());
        let ring = Keyring::build(&[entry("k-live", None), revoked, expired], &BTreeMap::new(), None, false);
        let now = SystemTime::now();
        assert_eq!(ring.find("k-live").unwrap().admit(now), Ok(()));
        assert_eq!(ring.find("k-live").unwrap().roles, vec!["orders"]);
        assert_eq!(ring.find("k-revoked").unwrap().admit(now), Err(KeyRefusal::Revoked));
        assert_eq!(ring.find("k-expired").unwrap().admit(now), Err(KeyRefusal::Expired));
        assert!(ring.find("k-unknown").is_none());
    }

    #[test]
    fn plans_limit_each_key_and_survive_a_new_keyring() {
        let plans =
            BTreeMap::from([("free".to_owned(), PlanLimits { quota_per_day: Some(3), ..PlanLimits::default() })]);
        let ring = Keyring::build(&[entry("k1", Some("free")), entry("k2", Some("free"))], &plans, None, false);
        let now = SystemTime::now();
        for _ in 0..3 {
            assert_eq!(ring.find("k1").unwrap().admit(now), Ok(()));
        }
        let Err(KeyRefusal::Exhausted { retry_after }) = ring.find("k1").unwrap().admit(now) else {
            panic!("the fourth request of the day is refused");
        };
        assert!(retry_after > 0 && retry_after <= 86_400);
        assert_eq!(ring.find("k2").unwrap().admit(now), Ok(()), "limits are per key");
        let used = |r: &Keyring| r.usage()[0].requests.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(used(&ring), 4, "both keys are app-1's; refused requests are not counted");
        // A new keyring with the same plan keeps the count.
        let next = Keyring::build(&[entry("k1", Some("free"))], &plans, Some(&ring), false);
        assert_eq!(used(&next), 4, "usage carries over to the next keyring");
        assert!(next.find("k1").unwrap().admit(now).is_err());
        // The next day starts afresh.
        let tomorrow = now + Duration::from_secs(86_400);
        assert_eq!(next.find("k1").unwrap().admit(tomorrow), Ok(()));
    }

    #[test]
    fn rates_refuse_bursts_with_a_retry_after() {
        let plans =
            BTreeMap::from([("burst".to_owned(), PlanLimits { rate_per_second: Some(2), ..PlanLimits::default() })]);
        let ring = Keyring::build(&[entry("k", Some("burst"))], &plans, None, false);
        let now = SystemTime::now();
        assert!(ring.find("k").unwrap().admit(now).is_ok());
        assert!(ring.find("k").unwrap().admit(now).is_ok());
        assert!(matches!(ring.find("k").unwrap().admit(now), Err(KeyRefusal::Exhausted { retry_after: 1 })));
    }

    #[test]
    fn shared_quotas_name_a_declared_redis_pool() {
        let pools = vec!["quotas".to_owned()];
        let ok = KeyringSettings::parse(&serde_json::json!({"quota_redis": "quotas"}), "k", &pools).unwrap();
        assert_eq!(ok.quota_redis.as_deref(), Some("quotas"));
        let err = KeyringSettings::parse(&serde_json::json!({"quota_redis": "nope"}), "k", &pools).err().unwrap();
        assert_eq!(err[0].path, "k.quota_redis");
        let err = KeyringSettings::parse(&serde_json::json!({"quota": 1}), "k", &pools).err().unwrap();
        assert_eq!(err[0].path, "k.quota");
    }

    #[test]
    fn month_windows_end_at_the_calendar_month() {
        // 2026-02-27T00:00:00Z: two days left in February.
        let t = UNIX_EPOCH + Duration::from_secs(1772150400);
        let (_, left) = window(t, true);
        assert_eq!(left, 2 * 86_400);
        let (day, left) = window(t + Duration::from_secs(3600), false);
        assert_eq!(left, 23 * 3600);
        assert_eq!(day, 1772150400 / 86_400);
    }
}
