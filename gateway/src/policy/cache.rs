//! `qos/http-cache` (backend): keeps backend responses to GET and HEAD for as long as
//! their own headers allow (RFC 9111), and sends a single request to the backend for
//! concurrent misses of the same response.
//!
//! KrakenD keys its cache by method and final backend URL, reads the freshness from
//! the backend's `Cache-Control`, stores nothing without it, and skips requests with
//! a `Range` header. Weir does the same with these rules:
//!
//! * Only explicit freshness: `s-maxage` (shared mode), else `max-age`, else `Expires`
//!   minus `Date`. No heuristic freshness, and no revalidation: a response that needs
//!   revalidation (`no-cache`) is not stored, and a stale entry is simply replaced.
//! * Not stored: `no-store` (unless `must-understand` with a status we understand),
//!   `no-cache`, `Vary: *`, 206 and 304, responses already stale on arrival, entries
//!   over the per-entry size limit; in shared mode also `private` responses, and
//!   responses to requests with `Authorization` unless `public`, `s-maxage` or
//!   `must-revalidate` allow them (RFC 9111, section 3.5).
//! * Age: the `Age` header, the `Date` header and the time the request took all
//!   count (section 4.2.3); `max-age=60` with `Age: 50` is fresh for 10 more seconds.
//! * `Vary`: the listed request headers' values are a secondary key.
//! * Requests: `no-store` bypasses the cache, `no-cache` (or `Pragma: no-cache`)
//!   skips the stored response but stores the new one, `max-age` bounds the age of
//!   a stored response it accepts. An unsafe method that succeeds removes the stored
//!   GET and HEAD responses of its URL (section 4.4).
//!
//! KrakenD's `shared: true` means "one store for every backend with the flag". Here
//! it also makes the cache a *shared* cache in RFC 9111 terms, the stricter rules
//! above. [`HttpCache`] is a cheap handle to its store: the runtime gives every
//! backend with `shared: true` a clone of the same one.

use crate::config::{is_comment_key, join as at, kind};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, GetAll, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};
use moka::Expiry;
use moka::future::Cache;
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{Problems, problem};
use crate::proxy::backend::is_hop_by_hop;

/// The `extra_config` key of this component.
pub const NAMESPACE: &str = "qos/http-cache";

/// The store's size without `max_size`. KrakenD sets no limit at all; an unbounded
/// store lets one backend with many URLs and a long `max-age` grow until the process
/// is killed, while eviction only costs hits.
const DEFAULT_MAX_SIZE: u64 = 128 * 1024 * 1024;
/// The largest entry stored without `max_size`: a few large bodies would otherwise
/// push out thousands of small ones.
const DEFAULT_MAX_ENTRY: u64 = 1024 * 1024;
/// With `max_size`, one entry may take at most this fraction of it, for the same reason.
const MAX_ENTRY_SHARE: u64 = 10;
/// What an entry costs beyond its bytes (key, map node, `Arc`, `HeaderMap` tables), so
/// that many tiny entries do not look free.
const ENTRY_OVERHEAD: usize = 256;
/// How long concurrent misses on a URL stop waiting for one another after it answered
/// with something not storable: waiting would only add the leader's latency to
/// theirs. Long enough to cover a burst; storing is never disabled by it.
const PASS_TTL: Duration = Duration::from_secs(10);
/// URLs remembered as not storable; each costs a few dozen bytes.
const PASS_CAPACITY: u64 = 10_000;
/// RFC 9111, section 1.2.2: a delta-seconds too large to represent counts as 2^31.
const DELTA_SECONDS_MAX: u64 = 1 << 31;
/// Status codes whose caching semantics this cache knows (RFC 9110, section 15.1,
/// heuristically cacheable); the others may still be stored with explicit freshness,
/// except under `must-understand`.
const UNDERSTOOD: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// A backend response as the cache hands it out.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the response arrived; set when it is stored.
    stored_at: Instant,
    /// How old it already was on arrival (RFC 9111 `corrected_initial_age`).
    initial_age: Duration,
    /// Its freshness lifetime; zero when it was not stored.
    lifetime: Duration,
    /// The request headers named by its `Vary`, with the values it was selected by.
    vary: Box<[(HeaderName, Option<HeaderValue>)]>,
}

impl CachedResponse {
    /// A response as the backend sent it; the cache fills in the rest if it stores it.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            lifetime: Duration::ZERO,
            vary: Box::new([]),
        }
    }

    /// Its age at `now` (RFC 9111, section 4.2.3), e.g. for an `Age` header.
    pub fn current_age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// How long it is fresh, counted from its generation at the origin.
    pub fn freshness_lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Whether it may still be used at `now` without asking the backend.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.current_age(now) < self.lifetime
    }

    /// The request headers its `Vary` names, with the values it was selected by.
    pub fn vary(&self) -> &[(HeaderName, Option<HeaderValue>)] {
        &self.vary
    }

    /// Whether a request with these headers may be answered with it (section 4.1).
    fn selected_by(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, value)| request_value(request, name) == *value)
    }

    /// The freshness left when it was stored.
    fn remaining(&self) -> Duration {
        self.lifetime.saturating_sub(self.initial_age)
    }

    fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        self.body.len() + headers + ENTRY_OVERHEAD
    }
}

/// How a response was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the store, without calling the backend (also when another request's
    /// concurrent call to the backend produced it).
    Hit,
    /// From the backend, and stored.
    Miss,
    /// From the backend, and not storable (or the request bypassed the cache).
    Uncacheable,
}

/// Compiled `qos/http-cache` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// One store for all backends with the flag, and RFC 9111 shared-cache rules.
    pub shared: bool,
    /// The store's size in bytes.
    pub max_size: Option<u64>,
    /// How many responses the store holds at most.
    pub max_items: Option<u64>,
}

/// A response cache for one backend (or, with `shared`, for all that share it).
/// Cloning is cheap and shares the store.
#[derive(Clone)]
pub struct HttpCache {
    inner: Arc<Inner>,
}

struct Inner {
    settings: CacheSettings,
    max_entry_bytes: u64,
    store: Cache<Key, Slot>,
    /// URLs whose last response was not storable: their misses are not collapsed.
    passes: Cache<Arc<str>, ()>,
    /// Misses being loaded, by the key they were looked up with.
    flights: Flights,
    next_flight: AtomicU64,
    /// Variant sets are numbered so that replacing one makes its variants unreachable.
    next_generation: AtomicU64,
}

impl fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCache")
            .field("settings", &self.inner.settings)
            .field("entries", &self.inner.store.entry_count())
            .finish()
    }
}

/// What a miss's loader hands its waiters: the response it stored, if any.
type Landing = Option<Arc<CachedResponse>>;

/// Misses in flight: a number telling the flights of one key apart, and where the
/// response will land.
type Flights = Mutex<HashMap<Key, (u64, watch::Receiver<Landing>)>>;

/// A store key: method and URL, plus the `Vary` values for a variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    primary: Arc<str>,
    variant: Option<Variant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Variant {
    generation: u64,
    values: Box<[Option<HeaderValue>]>,
}

impl Key {
    fn size(&self) -> usize {
        let values = self.variant.as_ref().map_or(0, |v| v.values.iter().flatten().map(HeaderValue::len).sum());
        self.primary.len() + values
    }
}

/// What the store holds under a key: a response, or (under the primary key of a
/// response with `Vary`) which request headers select among its variants.
#[derive(Debug, Clone)]
enum Slot {
    Response(Arc<CachedResponse>),
    Variants(Arc<Variants>),
}

#[derive(Debug)]
struct Variants {
    generation: u64,
    names: Box<[HeaderName]>,
    /// When the freshest variant goes stale; the record is useless after that.
    until: Instant,
}

/// Removes entries from memory when they go stale, since they are never used again.
struct StaleAfter;

impl StaleAfter {
    fn ttl(slot: &Slot, at: Instant) -> Duration {
        match slot {
            Slot::Response(r) => r.remaining(),
            Slot::Variants(v) => v.until.saturating_duration_since(at),
        }
    }
}

impl Expiry<Key, Slot> for StaleAfter {
    fn expire_after_create(&self, _: &Key, slot: &Slot, created_at: Instant) -> Option<Duration> {
        Some(Self::ttl(slot, created_at))
    }

    fn expire_after_update(&self, _: &Key, slot: &Slot, updated_at: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(Self::ttl(slot, updated_at))
    }
}

/// The loader of a miss. While it is alive, concurrent misses with the same key
/// wait for it; dropping it (done, failed or cancelled) releases them.
struct Leader<'a> {
    flights: &'a Flights,
    key: Key,
    id: u64,
    landed: watch::Sender<Landing>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<Landing>),
}

enum Lookup {
    Hit(Arc<CachedResponse>),
    /// Not there or stale; the key a new response would be stored under, as far as
    /// the store knows.
    Miss(Key),
}

/// A clock read twice per miss: before and after the load.
type Now<'a> = &'a (dyn Fn() -> (Instant, SystemTime) + Sync);

fn system_now() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

impl HttpCache {
    /// Whether `other` was made with the same settings.
    pub fn same_settings(&self, other: &HttpCache) -> bool {
        self.inner.settings == other.inner.settings
    }

    /// Reads the `qos/http-cache` object found at `path`; `{}` is valid (KrakenD's
    /// usual form).
    pub fn compile(v: &Value, path: &str) -> Result<HttpCache, Problems> {
        let Value::Object(obj) = v else {
            return Err(vec![problem(path, format!("must be an object, found {}", kind(v)))]);
        };
        let mut problems = Problems::new();
        for key in obj.keys() {
            if !is_comment_key(key) && !["shared", "max_size", "max_items"].contains(&key.as_str()) {
                problems.push(problem(&at(path, key), "unknown key (expected shared, max_size or max_items)"));
            }
        }
        let shared = match present(obj, "shared") {
            // KrakenD's default: each backend has a store of its own.
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                problems.push(problem(&at(path, "shared"), format!("must be true or false, found {}", kind(other))));
                false
            }
        };
        // The schema's minimums.
        let max_size = at_least(obj, path, "max_size", 1024, &mut problems);
        let max_items = at_least(obj, path, "max_items", 1, &mut problems);
        match (present(obj, "max_size"), present(obj, "max_items")) {
            (Some(_), None) => problems.push(problem(
                &at(path, "max_items"),
                "is required with max_size (KrakenD uses the two limits together)",
            )),
            (None, Some(_)) => problems.push(problem(
                &at(path, "max_size"),
                "is required with max_items (KrakenD uses the two limits together)",
            )),
            _ => {}
        }
        if problems.is_empty() { Ok(Self::new(CacheSettings { shared, max_size, max_items })) } else { Err(problems) }
    }

    /// An empty cache.
    pub fn new(settings: CacheSettings) -> Self {
        let max_size = settings.max_size.unwrap_or(DEFAULT_MAX_SIZE);
        let max_entry_bytes = settings.max_size.map_or(DEFAULT_MAX_ENTRY, |s| s / MAX_ENTRY_SHARE);
        // moka bounds either bytes or items, not both: giving every response a weight
        // of at least max_size / max_items makes the byte bound imply the item bound.
        let min_weight = match (settings.max_size, settings.max_items) {
            (Some(size), Some(items)) => usize::try_from(size / items.max(1)).unwrap_or(usize::MAX),
            _ => 0,
        };
        let store = Cache::builder()
            .max_capacity(max_size)
            .weigher(move |key: &Key, slot: &Slot| {
                let weight = match slot {
                    Slot::Response(r) => (key.size() + r.size()).max(min_weight),
                    Slot::Variants(v) => {
                        key.size() + ENTRY_OVERHEAD + v.names.iter().map(|n| n.as_str().len()).sum::<usize>()
                    }
                };
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(StaleAfter)
            .build();
        let passes = Cache::builder().max_capacity(PASS_CAPACITY).time_to_live(PASS_TTL).build();
        Self {
            inner: Arc::new(Inner {
                settings,
                max_entry_bytes,
                store,
                passes,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                next_generation: AtomicU64::new(0),
            }),
        }
    }

    /// The settings it was built with.
    pub fn settings(&self) -> CacheSettings {
        self.inner.settings
    }

    /// Whether backends with `shared: true` should use this one store.
    pub fn is_shared(&self) -> bool {
        self.inner.settings.shared
    }

    /// Answers a backend request from the store when a fresh response matching its
    /// `Vary` headers is there; otherwise calls `load` (at most once, and not at all
    /// when a concurrent identical miss brings a response this request may use),
    /// stores the result if it may, and returns it. `load`'s errors are returned as
    /// they are and never stored. `uri` is the final backend URL and, with `method`,
    /// the key; `request_headers` are the headers sent to the backend.
    pub async fn fetch<F, Fut, E>(
        &self,
        method: &Method,
        uri: &Uri,
        request_headers: &HeaderMap,
        load: F,
    ) -> Result<(Arc<CachedResponse>, CacheStatus), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedResponse, E>>,
    {
        self.fetch_with(&system_now, method, uri, request_headers, load).await
    }

    async fn fetch_with<F, Fut, E>(
        &self,
        now: Now<'_>,
        method: &Method,
        uri: &Uri,
        request_headers: &HeaderMap,
        load: F,
    ) -> Result<(Arc<CachedResponse>, CacheStatus), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedResponse, E>>,
    {
        if method != Method::GET && method != Method::HEAD {
            let response = load().await?;
            if !method.is_safe() && (response.status.is_success() || response.status.is_redirection()) {
                self.invalidate(uri).await;
            }
            return Ok((Arc::new(response), CacheStatus::Uncacheable));
        }
        let request = Directives::of_request(request_headers);
        // KrakenD skips the cache for ranges too; stored partial responses would need
        // Content-Range bookkeeping.
        if request.no_store || request_headers.contains_key(header::RANGE) {
            return Ok((Arc::new(load().await?), CacheStatus::Uncacheable));
        }
        let primary: Arc<str> = Arc::from(format!("{method} {uri}"));
        if request.no_cache {
            return self.load_and_store(now, &primary, request_headers, load).await;
        }
        let key = match self.lookup(&primary, request_headers, &request, now().0).await {
            Lookup::Hit(response) => return Ok((response, CacheStatus::Hit)),
            Lookup::Miss(key) => key,
        };
        if self.inner.passes.contains_key(&primary) {
            return self.load_and_store(now, &primary, request_headers, load).await;
        }
        match self.join_or_lead(key) {
            Role::Leader(leader) => {
                let result = self.load_and_store(now, &primary, request_headers, load).await;
                if let Ok((response, CacheStatus::Miss)) = &result {
                    leader.landed.send_replace(Some(response.clone()));
                }
                result
            }
            Role::Waiter(mut landed) => {
                let response = landed.wait_for(Option::is_some).await.ok().and_then(|r| (*r).clone());
                if let Some(response) = response
                    && response.selected_by(request_headers)
                    && usable(&response, &request, now().0)
                {
                    return Ok((response, CacheStatus::Hit));
                }
                // The leader failed, was cancelled, got something not storable or a
                // variant for other request headers: load for ourselves, uncollapsed,
                // so that failures are not serialised behind one another.
                self.load_and_store(now, &primary, request_headers, load).await
            }
        }
    }

    async fn lookup(
        &self,
        primary: &Arc<str>,
        request_headers: &HeaderMap,
        request: &Directives,
        now: Instant,
    ) -> Lookup {
        let base = Key { primary: primary.clone(), variant: None };
        match self.inner.store.get(&base).await {
            None => Lookup::Miss(base),
            Some(Slot::Response(r)) => {
                if usable(&r, request, now) {
                    Lookup::Hit(r)
                } else {
                    Lookup::Miss(base)
                }
            }
            Some(Slot::Variants(v)) => {
                let values = v.names.iter().map(|n| request_value(request_headers, n)).collect();
                let key = Key { primary: primary.clone(), variant: Some(Variant { generation: v.generation, values }) };
                match self.inner.store.get(&key).await {
                    Some(Slot::Response(r)) if usable(&r, request, now) => Lookup::Hit(r),
                    _ => Lookup::Miss(key),
                }
            }
        }
    }

    fn join_or_lead(&self, key: Key) -> Role<'_> {
        let mut flights = self.inner.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, landed)) = flights.get(&key) {
            return Role::Waiter(landed.clone());
        }
        let (landed, receiver) = watch::channel(None);
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(key.clone(), (id, receiver));
        Role::Leader(Leader { flights: &self.inner.flights, key, id, landed })
    }

    async fn load_and_store<F, Fut, E>(
        &self,
        now: Now<'_>,
        primary: &Arc<str>,
        request_headers: &HeaderMap,
        load: F,
    ) -> Result<(Arc<CachedResponse>, CacheStatus), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedResponse, E>>,
    {
        let (requested_at, _) = now();
        let mut response = load().await?;
        let (arrived_at, wall) = now();
        let delay = arrived_at.saturating_duration_since(requested_at);
        if self.prepare(&mut response, request_headers, arrived_at, wall, delay) {
            let response = Arc::new(response);
            self.store(primary, response.clone(), arrived_at).await;
            Ok((response, CacheStatus::Miss))
        } else {
            self.inner.passes.insert(primary.clone(), ()).await;
            Ok((Arc::new(response), CacheStatus::Uncacheable))
        }
    }

    /// Whether `response` may be stored; if so, fills in the cache's fields (and
    /// drops connection headers), otherwise leaves it untouched.
    fn prepare(
        &self,
        response: &mut CachedResponse,
        request_headers: &HeaderMap,
        arrived_at: Instant,
        wall: SystemTime,
        delay: Duration,
    ) -> bool {
        if response.size() as u64 > self.inner.max_entry_bytes {
            return false;
        }
        let shared = self.inner.settings.shared;
        let Some((lifetime, initial_age)) =
            freshness(response.status, &response.headers, request_headers, shared, wall, delay)
        else {
            return false;
        };
        let Some(names) = vary_names(&response.headers) else {
            return false;
        };
        strip_connection_headers(&mut response.headers);
        response.stored_at = arrived_at;
        response.initial_age = initial_age;
        response.lifetime = lifetime;
        response.vary = names
            .into_iter()
            .map(|n| {
                let value = request_value(request_headers, &n);
                (n, value)
            })
            .collect();
        true
    }

    async fn store(&self, primary: &Arc<str>, response: Arc<CachedResponse>, now: Instant) {
        let store = &self.inner.store;
        self.inner.passes.invalidate(primary).await;
        let base = Key { primary: primary.clone(), variant: None };
        if response.vary.is_empty() {
            store.insert(base, Slot::Response(response)).await;
            return;
        }
        let names: Box<[HeaderName]> = response.vary.iter().map(|(n, _)| n.clone()).collect();
        let stale_at = now.checked_add(response.remaining()).unwrap_or(now);
        // Same header names: keep the other variants reachable. Other names: a new
        // generation, so that the old variants are never matched with the new names.
        let (generation, until) = match store.get(&base).await {
            Some(Slot::Variants(v)) if v.names == names => (v.generation, v.until.max(stale_at)),
            _ => (self.inner.next_generation.fetch_add(1, Ordering::Relaxed), stale_at),
        };
        let values = response.vary.iter().map(|(_, v)| v.clone()).collect();
        store.insert(base, Slot::Variants(Arc::new(Variants { generation, names, until }))).await;
        let key = Key { primary: primary.clone(), variant: Some(Variant { generation, values }) };
        store.insert(key, Slot::Response(response)).await;
    }

    /// Forgets the GET and HEAD responses of `uri`; their variants become unreachable
    /// because the next variant set gets a new generation.
    async fn invalidate(&self, uri: &Uri) {
        for method in [Method::GET, Method::HEAD] {
            let key = Key { primary: Arc::from(format!("{method} {uri}")), variant: None };
            self.inner.store.invalidate(&key).await;
        }
    }
}

/// Whether a stored response may answer a request at `now`.
fn usable(response: &CachedResponse, request: &Directives, now: Instant) -> bool {
    response.is_fresh(now) && request.max_age.is_none_or(|max| response.current_age(now) <= Duration::from_secs(max))
}

/// The freshness lifetime and the age on arrival of a response that may be stored,
/// or `None` (RFC 9111, sections 3, 3.5, 4.2.1 and 4.2.3). `arrived` is when it
/// arrived by the wall clock, `delay` how long the request took.
fn freshness(
    status: StatusCode,
    headers: &HeaderMap,
    request_headers: &HeaderMap,
    shared: bool,
    arrived: SystemTime,
    delay: Duration,
) -> Option<(Duration, Duration)> {
    // Partial content needs range bookkeeping; 304 is an answer to a validation.
    if status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED || status.is_informational() {
        return None;
    }
    let cc = Directives::of(headers.get_all(header::CACHE_CONTROL));
    if cc.must_understand {
        // It overrides no-store, for status codes whose caching rules we know.
        if !UNDERSTOOD.contains(&status.as_u16()) {
            return None;
        }
    } else if cc.no_store {
        return None;
    }
    // no-cache: may be stored but not used without revalidation, which we never do.
    if cc.no_cache || (shared && cc.private) {
        return None;
    }
    if shared
        && request_headers.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
    {
        return None;
    }
    let date = headers.get(header::DATE).and_then(http_date).unwrap_or(arrived);
    let lifetime = match (cc.s_maxage.filter(|_| shared), cc.max_age) {
        (Some(s), _) => Duration::from_secs(s),
        (None, Some(m)) => Duration::from_secs(m),
        (None, None) => {
            // An Expires that is not a date means "already expired" (section 5.3).
            let expires = headers.get(header::EXPIRES)?;
            http_date(expires).and_then(|e| e.duration_since(date).ok()).unwrap_or_default()
        }
    };
    let apparent_age = arrived.duration_since(date).unwrap_or_default();
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.trim()))
        .map_or(Duration::ZERO, Duration::from_secs);
    let initial_age = apparent_age.max(age_value + delay);
    (lifetime > initial_age).then_some((lifetime, initial_age))
}

fn http_date(v: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// The request headers a response's `Vary` names, sorted and without repeats;
/// `None` for `Vary: *` or a name that is not a header name (no request can match).
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for token in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let token = token.trim();
            if token == "*" {
                return None;
            }
            if !token.is_empty() {
                names.push(HeaderName::from_bytes(token.as_bytes()).ok()?);
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// A request header's value for `Vary` matching, with repeated lines combined the way
/// RFC 9110 (section 5.3) says they may be.
fn request_value(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Stored responses keep no connection-specific fields (RFC 9111, section 3.1).
fn strip_connection_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| String::from_utf8_lossy(v.as_bytes()).split(',').map(|t| t.trim().to_owned()).collect::<Vec<_>>())
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let hop_by_hop: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in hop_by_hop {
        headers.remove(name);
    }
}

/// The `Cache-Control` directives the cache acts on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    must_understand: bool,
    /// Seconds; an invalid value counts as 0 (stale), as RFC 9111 section 4.2.1 allows.
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl Directives {
    /// Every `Cache-Control` line, in order; for repeated directives the first wins.
    fn of(lines: GetAll<'_, HeaderValue>) -> Self {
        let mut d = Self::default();
        for line in lines {
            let text = String::from_utf8_lossy(line.as_bytes());
            for_each_directive(&text, |name, arg| {
                let seconds = || Some(arg.and_then(delta_seconds).unwrap_or(0));
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // Also the qualified form (no-cache="Set-Cookie"): storing without
                    // those fields is allowed, but simply not storing is correct too.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    "must-understand" => d.must_understand = true,
                    "max-age" => d.max_age = d.max_age.or_else(seconds),
                    "s-maxage" => d.s_maxage = d.s_maxage.or_else(seconds),
                    _ => {}
                }
            });
        }
        d
    }

    /// A request's directives; `Pragma: no-cache` counts as `no-cache` when there is
    /// no `Cache-Control` (RFC 9111, section 5.4).
    fn of_request(headers: &HeaderMap) -> Self {
        let mut d = Self::of(headers.get_all(header::CACHE_CONTROL));
        if !headers.contains_key(header::CACHE_CONTROL) {
            d.no_cache = headers.get_all(header::PRAGMA).iter().any(|v| {
                String::from_utf8_lossy(v.as_bytes()).split(',').any(|t| t.trim().eq_ignore_ascii_case("no-cache"))
            });
        }
        d
    }
}

/// Calls `f` with each `name[=argument]` of a directive list; quoted arguments may
/// contain commas and come without their quotes.
fn for_each_directive(text: &str, mut f: impl FnMut(&str, Option<&str>)) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let name = text[start..i].trim();
        let mut arg = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let from = i;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let to = i.min(bytes.len());
                arg = Some(&text[from..to]);
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
            } else {
                let from = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                arg = Some(text[from..i].trim());
            }
        }
        if !name.is_empty() {
            f(name, arg);
        }
        i += 1;
    }
}

/// RFC 9111 delta-seconds: digits only, saturating at 2^31.
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)))
}

fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// An optional whole number of at least `min`.
fn at_least(obj: &Map<String, Value>, path: &str, key: &str, min: u64, problems: &mut Problems) -> Option<u64> {
    let v = present(obj, key)?;
    match v.as_u64() {
        Some(n) if n >= min => Some(n),
        _ => {
            let found = if let Value::Number(n) = v { n.to_string() } else { kind(v).to_owned() };
            problems.push(problem(&at(path, key), format!("must be a whole number of at least {min}, found {found}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;
    use std::time::UNIX_EPOCH;

    /// 2023-11-14T22:13:20Z: a whole second, so that HTTP dates are exact.
    const WALL0: u64 = 1_700_000_000;

    /// A monotonic and a wall clock moved together by hand.
    struct TestTime {
        start: Instant,
        offset_ms: AtomicU64,
    }

    impl TestTime {
        fn new() -> Self {
            Self { start: Instant::now(), offset_ms: AtomicU64::new(0) }
        }

        fn advance(&self, secs: u64) {
            self.offset_ms.fetch_add(secs * 1000, Ordering::SeqCst);
        }

        fn now(&self) -> (Instant, SystemTime) {
            let d = Duration::from_millis(self.offset_ms.load(Ordering::SeqCst));
            (self.start + d, UNIX_EPOCH + Duration::from_secs(WALL0) + d)
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn response(pairs: &[(&str, &str)]) -> CachedResponse {
        CachedResponse::new(StatusCode::OK, headers(pairs), Bytes::from_static(b"{\"a\":1}"))
    }

    fn cache(shared: bool) -> HttpCache {
        HttpCache::new(CacheSettings { shared, max_size: None, max_items: None })
    }

    fn http_date(secs_after_wall0: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_secs(WALL0.saturating_add_signed(secs_after_wall0));
        httpdate::fmt_http_date(t)
    }

    /// A cache, its time, and a backend that counts its calls.
    struct Bench {
        cache: HttpCache,
        time: TestTime,
        calls: AtomicUsize,
    }

    impl Bench {
        fn new(cache: HttpCache) -> Self {
            Self { cache, time: TestTime::new(), calls: AtomicUsize::new(0) }
        }

        /// Requests `uri` with `method` and `request` headers; the backend answers 200
        /// with `reply` headers.
        async fn call(
            &self,
            method: Method,
            uri: &str,
            request: &[(&str, &str)],
            reply: &[(&str, &str)],
        ) -> CacheStatus {
            let uri: Uri = uri.parse().unwrap();
            let clock = || self.time.now();
            let load = || async {
                self.calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(response(reply))
            };
            self.cache.fetch_with(&clock, &method, &uri, &headers(request), load).await.unwrap().1
        }

        async fn get(&self, request: &[(&str, &str)], reply: &[(&str, &str)]) -> CacheStatus {
            self.call(Method::GET, "http://backend/items?page=1", request, reply).await
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    use CacheStatus::{Hit, Miss, Uncacheable};

    /// `freshness` in whole seconds, for a response arriving at WALL0.
    fn fresh(status: u16, reply: &[(&str, &str)], request: &[(&str, &str)], shared: bool) -> Option<(u64, u64)> {
        fresh_after(status, reply, request, shared, 0)
    }

    fn fresh_after(
        status: u16,
        reply: &[(&str, &str)],
        request: &[(&str, &str)],
        shared: bool,
        delay: u64,
    ) -> Option<(u64, u64)> {
        let arrived = UNIX_EPOCH + Duration::from_secs(WALL0);
        let status = StatusCode::from_u16(status).unwrap();
        freshness(status, &headers(reply), &headers(request), shared, arrived, Duration::from_secs(delay))
            .map(|(lifetime, age)| (lifetime.as_secs(), age.as_secs()))
    }

    #[test]
    fn compiles_the_krakend_forms() {
        let c = HttpCache::compile(&json!({}), "p").unwrap();
        assert_eq!(c.settings(), CacheSettings { shared: false, max_size: None, max_items: None });
        assert!(HttpCache::compile(&json!({"shared": true}), "p").unwrap().is_shared());
        let c = HttpCache::compile(&json!({"max_size": 1_048_576, "max_items": 100, "@comment": "x"}), "p").unwrap();
        assert_eq!(c.settings(), CacheSettings { shared: false, max_size: Some(1_048_576), max_items: Some(100) });
    }

    #[test]
    fn compile_reports_every_problem_with_its_path() {
        let text = |v: Value| -> Vec<String> {
            HttpCache::compile(&v, "b.qos/http-cache").unwrap_err().iter().map(ToString::to_string).collect()
        };
        let problems = text(json!({"shared": "yes", "max_size": 10, "ttl": 5}));
        assert_eq!(
            problems,
            [
                "b.qos/http-cache.ttl: unknown key (expected shared, max_size or max_items)",
                "b.qos/http-cache.shared: must be true or false, found a string",
                "b.qos/http-cache.max_size: must be a whole number of at least 1024, found 10",
                "b.qos/http-cache.max_items: is required with max_size (KrakenD uses the two limits together)",
            ]
        );
        let problems = text(json!({"max_items": 0}));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(text(json!(true)), ["b.qos/http-cache: must be an object, found a boolean"]);
    }

    #[test]
    fn lifetime_comes_from_s_maxage_max_age_or_expires() {
        assert_eq!(fresh(200, &[("cache-control", "max-age=60")], &[], false), Some((60, 0)));
        let both = [("cache-control", "max-age=60, s-maxage=120")];
        assert_eq!(fresh(200, &both, &[], true), Some((120, 0)), "a shared cache prefers s-maxage");
        assert_eq!(fresh(200, &both, &[], false), Some((60, 0)), "a private cache ignores s-maxage");
        let expires = [("date", http_date(0)), ("expires", http_date(300))];
        let expires: Vec<(&str, &str)> = expires.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(fresh(200, &expires, &[], false), Some((300, 0)));
        let mut with_max_age = expires.clone();
        with_max_age.push(("cache-control", "max-age=10"));
        assert_eq!(fresh(200, &with_max_age, &[], false), Some((10, 0)), "max-age wins over Expires");
        assert_eq!(fresh(200, &[("expires", "0")], &[], false), None, "an invalid Expires is in the past");
        assert_eq!(fresh(200, &[("cache-control", "max-age=abc")], &[], false), None);
        assert_eq!(fresh(200, &[("cache-control", "public")], &[], false), None, "no explicit freshness");
        assert_eq!(fresh(200, &[], &[], false), None);
        // Any final status may be stored with explicit freshness (RFC 9111, section 3).
        assert_eq!(fresh(404, &[("cache-control", "max-age=5")], &[], true), Some((5, 0)));
        assert_eq!(fresh(500, &[("cache-control", "max-age=5")], &[], true), Some((5, 0)));
    }

    #[test]
    fn refuses_what_rfc_9111_forbids_to_store() {
        let cc = |v: &'static str| [("cache-control", v)];
        assert_eq!(fresh(200, &cc("max-age=60, no-store"), &[], false), None);
        assert_eq!(fresh(200, &cc("max-age=60, no-cache"), &[], false), None);
        assert_eq!(fresh(200, &cc("max-age=60, no-cache=\"set-cookie\""), &[], false), None);
        assert_eq!(fresh(200, &cc("max-age=60, private"), &[], true), None);
        assert_eq!(fresh(200, &cc("max-age=60, private"), &[], false), Some((60, 0)), "a private cache stores private");
        assert_eq!(fresh(206, &cc("max-age=60"), &[], false), None);
        assert_eq!(fresh(304, &cc("max-age=60"), &[], false), None);
        // must-understand overrides no-store for status codes we understand only.
        assert_eq!(fresh(200, &cc("max-age=60, no-store, must-understand"), &[], true), Some((60, 0)));
        assert_eq!(fresh(299, &cc("max-age=60, no-store, must-understand"), &[], true), None);
        // Authorization: a shared cache needs the response's explicit consent.
        let auth = [("authorization", "Bearer x")];
        assert_eq!(fresh(200, &cc("max-age=60"), &auth, true), None);
        assert_eq!(fresh(200, &cc("max-age=60"), &auth, false), Some((60, 0)));
        for consent in ["max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"] {
            assert_eq!(fresh(200, &cc(consent), &auth, true), Some((60, 0)), "{consent}");
        }
    }

    #[test]
    fn age_on_arrival_counts_age_date_and_delay() {
        let reply = [("cache-control", "max-age=60"), ("age", "50")];
        assert_eq!(fresh(200, &reply, &[], false), Some((60, 50)));
        assert_eq!(fresh_after(200, &reply, &[], false, 5), Some((60, 55)), "the request's round trip adds to Age");
        let date = http_date(-30);
        assert_eq!(fresh(200, &[("cache-control", "max-age=60"), ("date", &date)], &[], false), Some((60, 30)));
        assert_eq!(fresh(200, &[("cache-control", "max-age=60"), ("age", "60")], &[], false), None, "stale on arrival");
        let date = http_date(30);
        assert_eq!(
            fresh(200, &[("cache-control", "max-age=60"), ("date", &date)], &[], false),
            Some((60, 0)),
            "a Date ahead of our clock is not a negative age"
        );
    }

    #[test]
    fn parses_cache_control_syntax() {
        let d = Directives::of(
            headers(&[
                ("cache-control", "Max-Age=\"60\", no-cache=\"Set-Cookie, X-Foo\""),
                ("cache-control", "PRIVATE, max-age=5"),
            ])
            .get_all(header::CACHE_CONTROL),
        );
        assert_eq!(d, Directives { no_cache: true, private: true, max_age: Some(60), ..Directives::default() });
        let d = Directives::of(
            headers(&[("cache-control", "s-maxage=99999999999999999999999")]).get_all(header::CACHE_CONTROL),
        );
        assert_eq!(d.s_maxage, Some(DELTA_SECONDS_MAX));
        let d =
            Directives::of(headers(&[("cache-control", " , max-age = 7 ,,no-store")]).get_all(header::CACHE_CONTROL));
        assert_eq!(d, Directives { no_store: true, max_age: Some(7), ..Directives::default() });
        assert!(Directives::of_request(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(!Directives::of_request(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")])).no_cache);
    }

    #[tokio::test]
    async fn serves_a_stored_response_until_it_is_stale() {
        let b = Bench::new(cache(false));
        let reply = [("cache-control", "max-age=60")];
        assert_eq!(b.get(&[], &reply).await, Miss);
        assert_eq!(b.get(&[], &reply).await, Hit);
        b.time.advance(59);
        assert_eq!(b.get(&[], &reply).await, Hit);
        b.time.advance(1);
        assert_eq!(b.get(&[], &reply).await, Miss);
        assert_eq!(b.calls(), 2);
    }

    #[tokio::test]
    async fn the_age_header_shortens_the_stay() {
        let b = Bench::new(cache(false));
        let reply = [("cache-control", "max-age=60"), ("age", "50")];
        assert_eq!(b.get(&[], &reply).await, Miss);
        b.time.advance(9);
        assert_eq!(b.get(&[], &reply).await, Hit);
        b.time.advance(1);
        assert_eq!(b.get(&[], &reply).await, Miss);
    }

    #[tokio::test]
    async fn returns_current_age_and_lifetime() {
        let b = Bench::new(cache(false));
        let uri: Uri = "http://backend/a".parse().unwrap();
        let clock = || b.time.now();
        let load = || async { Ok::<_, Infallible>(response(&[("cache-control", "max-age=60"), ("age", "5")])) };
        b.cache.fetch_with(&clock, &Method::GET, &uri, &HeaderMap::new(), load).await.unwrap();
        b.time.advance(10);
        let load = || async { Ok::<_, Infallible>(response(&[])) };
        let (r, status) = b.cache.fetch_with(&clock, &Method::GET, &uri, &HeaderMap::new(), load).await.unwrap();
        assert_eq!(status, Hit);
        assert_eq!(r.current_age(b.time.now().0), Duration::from_secs(15));
        assert_eq!(r.freshness_lifetime(), Duration::from_secs(60));
        assert!(r.is_fresh(b.time.now().0));
    }

    #[tokio::test]
    async fn vary_selects_among_variants() {
        let b = Bench::new(cache(true));
        let reply = [("cache-control", "max-age=60"), ("vary", "Accept-Language, accept-encoding")];
        let en = [("accept-language", "en")];
        let fr = [("accept-language", "fr")];
        assert_eq!(b.get(&en, &reply).await, Miss);
        assert_eq!(b.get(&fr, &reply).await, Miss);
        assert_eq!(b.get(&en, &reply).await, Hit);
        assert_eq!(b.get(&fr, &reply).await, Hit);
        assert_eq!(b.get(&[], &reply).await, Miss, "no header is a value of its own");
        assert_eq!(b.get(&[], &reply).await, Hit);
        assert_eq!(b.get(&[("accept-language", "en"), ("accept-encoding", "gzip")], &reply).await, Miss);
        assert_eq!(b.calls(), 4);
    }

    #[tokio::test]
    async fn a_new_vary_makes_old_variants_unreachable() {
        let b = Bench::new(cache(false));
        let en = [("accept-language", "en"), ("accept", "text/html")];
        assert_eq!(b.get(&en, &[("cache-control", "max-age=60"), ("vary", "accept-language")]).await, Miss);
        assert_eq!(b.get(&en, &[("cache-control", "max-age=60"), ("vary", "accept")]).await, Hit);
        b.time.advance(61);
        assert_eq!(b.get(&en, &[("cache-control", "max-age=60"), ("vary", "accept")]).await, Miss);
        assert_eq!(b.get(&en, &[]).await, Hit);
        assert_eq!(b.get(&[("accept-language", "en"), ("accept", "text/plain")], &[]).await, Uncacheable);
    }

    #[tokio::test]
    async fn vary_star_and_no_store_are_never_stored() {
        for reply in
            [[("cache-control", "max-age=60"), ("vary", "*")], [("cache-control", "max-age=60, no-store"), ("x", "y")]]
        {
            let b = Bench::new(cache(false));
            assert_eq!(b.get(&[], &reply).await, Uncacheable);
            assert_eq!(b.get(&[], &reply).await, Uncacheable);
            assert_eq!(b.calls(), 2);
        }
    }

    #[tokio::test]
    async fn request_directives_bypass_or_refresh() {
        let b = Bench::new(cache(false));
        let reply = [("cache-control", "max-age=60")];
        assert_eq!(b.get(&[], &reply).await, Miss);
        assert_eq!(b.get(&[("cache-control", "no-store")], &reply).await, Uncacheable);
        assert_eq!(b.calls(), 2);
        assert_eq!(b.get(&[], &reply).await, Hit, "a no-store request leaves the store alone");
        b.time.advance(30);
        assert_eq!(b.get(&[("cache-control", "no-cache")], &reply).await, Miss, "no-cache goes to the backend");
        b.time.advance(45);
        assert_eq!(b.get(&[], &reply).await, Hit, "and stores what it got");
        assert_eq!(b.get(&[("cache-control", "max-age=30")], &reply).await, Miss, "45 s old is too old for it");
        assert_eq!(b.get(&[("pragma", "no-cache")], &reply).await, Miss);
        assert_eq!(b.get(&[("range", "bytes=0-10")], &reply).await, Uncacheable);
        assert_eq!(b.calls(), 6);
    }

    #[tokio::test]
    async fn s_maxage_applies_to_the_shared_cache_only() {
        let reply = [("cache-control", "max-age=10, s-maxage=100")];
        let shared = Bench::new(cache(true));
        let private = Bench::new(cache(false));
        for b in [&shared, &private] {
            assert_eq!(b.get(&[], &reply).await, Miss);
            b.time.advance(50);
        }
        assert_eq!(shared.get(&[], &reply).await, Hit);
        assert_eq!(private.get(&[], &reply).await, Miss);
    }

    #[tokio::test]
    async fn private_responses_stay_out_of_a_shared_cache() {
        let reply = [("cache-control", "private, max-age=60")];
        let shared = Bench::new(cache(true));
        assert_eq!(shared.get(&[], &reply).await, Uncacheable);
        assert_eq!(shared.get(&[], &reply).await, Uncacheable);
        let private = Bench::new(cache(false));
        assert_eq!(private.get(&[], &reply).await, Miss);
        assert_eq!(private.get(&[], &reply).await, Hit);
    }

    #[tokio::test]
    async fn a_successful_unsafe_request_invalidates_the_url() {
        let b = Bench::new(cache(false));
        for vary in ["", "accept"] {
            let url = &format!("http://backend/items?vary={vary}");
            let reply = [("cache-control", "max-age=60"), ("vary", vary)];
            assert_eq!(b.call(Method::GET, url, &[], &reply).await, Miss);
            assert_eq!(b.call(Method::HEAD, url, &[], &reply).await, Miss, "HEAD has its own entry");
            assert_eq!(b.call(Method::GET, url, &[], &reply).await, Hit);
            assert_eq!(b.call(Method::POST, "http://backend/items?page=2", &[], &reply).await, Uncacheable);
            assert_eq!(b.call(Method::GET, url, &[], &reply).await, Hit, "another URL");
            assert_eq!(b.call(Method::DELETE, url, &[], &reply).await, Uncacheable);
            assert_eq!(b.call(Method::GET, url, &[], &reply).await, Miss);
            assert_eq!(b.call(Method::HEAD, url, &[], &reply).await, Miss);
        }
    }

    #[tokio::test]
    async fn entries_over_the_size_limit_are_not_stored() {
        let b =
            Bench::new(HttpCache::new(CacheSettings { shared: false, max_size: Some(20_000), max_items: Some(10) }));
        let uri: Uri = "http://backend/big".parse().unwrap();
        let clock = || b.time.now();
        let big = || async {
            let mut r = response(&[("cache-control", "max-age=60")]);
            r.body = Bytes::from(vec![b'x'; 2_000]);
            Ok::<_, Infallible>(r)
        };
        let (_, status) = b.cache.fetch_with(&clock, &Method::GET, &uri, &HeaderMap::new(), big).await.unwrap();
        assert_eq!(status, Uncacheable, "a tenth of max_size at most");
        assert_eq!(b.get(&[], &[("cache-control", "max-age=60")]).await, Miss);
    }

    #[tokio::test]
    async fn max_items_bounds_the_number_of_responses() {
        let b =
            Bench::new(HttpCache::new(CacheSettings { shared: false, max_size: Some(1 << 20), max_items: Some(3) }));
        for i in 0..20 {
            let uri = format!("http://backend/items/{i}");
            assert_eq!(b.call(Method::GET, &uri, &[], &[("cache-control", "max-age=60")]).await, Miss);
        }
        b.cache.inner.store.run_pending_tasks().await;
        assert!(b.cache.inner.store.entry_count() <= 3, "{}", b.cache.inner.store.entry_count());
    }

    #[tokio::test]
    async fn errors_are_returned_and_never_stored() {
        let b = Bench::new(cache(false));
        let uri: Uri = "http://backend/down".parse().unwrap();
        let clock = || b.time.now();
        for _ in 0..2 {
            let failing = || async {
                b.calls.fetch_add(1, Ordering::SeqCst);
                Err::<CachedResponse, _>("connection refused")
            };
            let result = b.cache.fetch_with(&clock, &Method::GET, &uri, &HeaderMap::new(), failing).await;
            assert_eq!(result.err(), Some("connection refused"));
        }
        assert_eq!(b.calls(), 2);
    }

    #[tokio::test]
    async fn connection_headers_are_not_stored() {
        let b = Bench::new(cache(false));
        let reply = [
            ("cache-control", "max-age=60"),
            ("connection", "x-trace"),
            ("x-trace", "1"),
            ("keep-alive", "5"),
            ("etag", "\"v1\""),
        ];
        let uri: Uri = "http://backend/h".parse().unwrap();
        let clock = || b.time.now();
        let load = || async { Ok::<_, Infallible>(response(&reply)) };
        let (r, status) = b.cache.fetch_with(&clock, &Method::GET, &uri, &HeaderMap::new(), load).await.unwrap();
        assert_eq!(status, Miss);
        let names: Vec<&str> = r.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["cache-control", "etag"]);
    }

    #[tokio::test]
    async fn an_uncacheable_url_stops_collapsing_until_it_stores_again() {
        let b = Bench::new(cache(false));
        assert_eq!(b.get(&[], &[("cache-control", "no-store")]).await, Uncacheable);
        let primary: Arc<str> = Arc::from("GET http://backend/items?page=1");
        assert!(b.cache.inner.passes.contains_key(&primary));
        assert_eq!(b.get(&[], &[("cache-control", "max-age=60")]).await, Miss);
        assert!(!b.cache.inner.passes.contains_key(&primary));
    }

    /// `fetch` from `n` tasks at once on one URL; `load` gets the call's number.
    async fn concurrent<F, Fut>(
        cache: &HttpCache,
        n: usize,
        request: &'static [(&'static str, &'static str)],
        load: F,
    ) -> Vec<Result<CacheStatus, String>>
    where
        F: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CachedResponse, String>> + Send + 'static,
    {
        let load = Arc::new(load);
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (cache, load, calls) = (cache.clone(), load.clone(), calls.clone());
                tokio::spawn(async move {
                    let uri: Uri = "http://backend/slow".parse().unwrap();
                    let load = || load(calls.fetch_add(1, Ordering::SeqCst));
                    cache.fetch(&Method::GET, &uri, &headers(request), load).await.map(|(_, status)| status)
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    fn count(results: &[Result<CacheStatus, String>], wanted: Result<CacheStatus, String>) -> usize {
        results.iter().filter(|r| **r == wanted).count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_concurrent_misses_call_the_backend_once() {
        let cache = cache(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let results = concurrent(&cache, 10, &[], move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(response(&[("cache-control", "max-age=60")]))
            }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(count(&results, Ok(Miss)), 1, "{results:?}");
        assert_eq!(count(&results, Ok(Hit)), 9, "{results:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_load_for_themselves_when_the_leader_fails() {
        let cache = cache(false);
        let results = concurrent(&cache, 10, &[], |call| async move {
            if call == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err("backend down".to_owned())
            } else {
                Ok(response(&[("cache-control", "max-age=60")]))
            }
        })
        .await;
        assert_eq!(count(&results, Err("backend down".to_owned())), 1, "{results:?}");
        assert!(results.iter().all(|r| r.is_err() || matches!(r, Ok(Miss | Hit))), "{results:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_never_take_an_unstorable_response() {
        let cache = cache(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let results = concurrent(&cache, 10, &[], move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(response(&[("cache-control", "no-store")]))
            }
        })
        .await;
        assert_eq!(count(&results, Ok(Uncacheable)), 10, "{results:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_cancelled_leader_releases_its_waiters() {
        let cache = cache(false);
        let uri: Uri = "http://backend/stuck".parse().unwrap();
        let leader = {
            let (cache, uri) = (cache.clone(), uri.clone());
            tokio::spawn(async move {
                let never = || std::future::pending::<Result<CachedResponse, Infallible>>();
                cache.fetch(&Method::GET, &uri, &HeaderMap::new(), never).await.map(|(_, s)| s)
            })
        };
        while cache.inner.flights.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let (cache, uri) = (cache.clone(), uri.clone());
            tokio::spawn(async move {
                let load = || async { Ok::<_, Infallible>(response(&[("cache-control", "max-age=60")])) };
                cache.fetch(&Method::GET, &uri, &HeaderMap::new(), load).await.map(|(_, s)| s)
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let status = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("the waiter was released");
        assert_eq!(status.unwrap().unwrap(), Miss);
        assert!(cache.inner.flights.lock().unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collapsed_variant_for_other_headers_is_not_served() {
        let cache = cache(false);
        let served = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = ["en", "fr", "en", "fr"]
            .into_iter()
            .map(|lang| {
                let (cache, served) = (cache.clone(), served.clone());
                tokio::spawn(async move {
                    let uri: Uri = "http://backend/greeting".parse().unwrap();
                    let load = || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let mut r = response(&[("cache-control", "max-age=60"), ("vary", "accept-language")]);
                        r.body = Bytes::from(lang);
                        Ok::<_, Infallible>(r)
                    };
                    let (r, _) =
                        cache.fetch(&Method::GET, &uri, &headers(&[("accept-language", lang)]), load).await.unwrap();
                    served.lock().unwrap().push((lang, r.body.clone()));
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let served = served.lock().unwrap();
        assert_eq!(served.len(), 4);
        assert!(served.iter().all(|(lang, body)| body == lang.as_bytes()), "{served:?}");
    }
}
