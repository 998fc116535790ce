//! One backend of an endpoint: building its request, calling it, and turning its
//! response into data.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::client::Client;
use super::decode::decode;
use super::h1::Keep;
use super::shape::Shape;
use super::upstream::BodyError;
use super::url::{UrlTemplate, Values};
use super::{Deadline, Streaming};
use crate::config::{Backend, BackendEncoding, Endpoint, NameFilter};
use crate::error::{Error, ErrorKind};
use crate::policy::breaker::{CircuitBreaker, Permit, SystemClock};
use crate::policy::cache::{CachedResponse, HttpCache};
use crate::policy::ratelimit::BackendLimit;
use crate::telemetry::BackendStats;

/// Go's client gives up after ten redirects; so do we.
const MAX_REDIRECTS: usize = 10;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_VIA: HeaderName = HeaderName::from_static("x-forwarded-via");

/// What a client request contributes to backend requests.
pub struct Inbound<'a> {
    pub method: &'a Method,
    pub params: &'a [&'a str],
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub host: Option<&'a HeaderValue>,
    pub body: Bytes,
    pub client_ip: IpAddr,
    /// Claims of the validated JWT, for `{JWT.x}` placeholders.
    pub claims: Option<&'a Map<String, Value>>,
    /// Headers every backend request carries (propagated claims, roles).
    pub extra_headers: &'a [(HeaderName, HeaderValue)],
    /// The request's trace, when traces are exported.
    pub trace: Option<&'a crate::telemetry::trace::TraceContext<'a>>,
}

/// A backend that failed, with what it answered when it answered at all.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub status: Option<StatusCode>,
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self { error, status: None, body: Bytes::new(), content_type: None }
    }
}

/// Client headers a backend receives.
#[derive(Debug)]
enum HeaderRule {
    All,
    Only(Box<[HeaderName]>),
}

/// Client query-string parameters a backend receives.
#[derive(Debug)]
enum QueryRule {
    All,
    Only(Box<[Box<str>]>),
}

#[derive(Debug)]
struct Host {
    scheme: Scheme,
    authority: Authority,
    /// The backend's URI on this host when its `url_pattern` has no placeholders, for
    /// requests without a query string: built once instead of for every call.
    fixed: Option<Uri>,
    /// This host's idle plain-HTTP connections, once a call has looked them up.
    pool: std::sync::OnceLock<Arc<super::upstream::HostPool>>,
}

/// A compiled backend.
#[derive(Debug)]
pub struct BackendCall {
    hosts: Box<[Host]>,
    next_host: AtomicUsize,
    method: Method,
    url: UrlTemplate,
    headers: HeaderRule,
    forwards_user_agent: bool,
    query: QueryRule,
    encoding: BackendEncoding,
    is_collection: bool,
    shape: Shape,
    pub return_error_code: bool,
    /// `error_<name>` when `return_error_details` is set.
    pub error_details_key: Option<Box<str>>,
    follow_redirects: bool,
    max_response_bytes: usize,
    concurrent_calls: usize,
    user_agent: HeaderValue,
    /// `qos/ratelimit/proxy`: calls beyond it fail without reaching the backend.
    limit: Option<BackendLimit>,
    /// `qos/circuit-breaker`, and how long a call may take before it counts as failed.
    breaker: Option<Arc<CircuitBreaker>>,
    breaker_timeout: std::time::Duration,
    /// `qos/http-cache` for GET and HEAD calls.
    cache: Option<HttpCache>,
    /// Calls made and how long each took to answer.
    stats: Arc<BackendStats>,
}

/// A backend request as built: written straight to the wire for plain-HTTP backends,
/// made a hyper request for HTTPS ones.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: Fields,
    pub body: Bytes,
}

impl Outgoing {
    fn into_request(self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        let headers = request.headers_mut();
        headers.reserve(self.headers.0.len());
        for (name, value) in self.headers.0 {
            headers.append(name, value);
        }
        request
    }
}

/// A backend request's header fields in order: a handful of them, so a list scanned by
/// name costs less than a hashed map built only to be written out once.
pub struct Fields(Vec<(HeaderName, HeaderValue)>);

impl Fields {
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.0.push((name, value));
    }

    /// Replaces every field of this name.
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(&name);
        self.0.push((name, value));
    }

    fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(n, _)| n != name);
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub fn as_slice(&self) -> &[(HeaderName, HeaderValue)] {
        &self.0
    }
}

/// Intersection of the endpoint's and the backend's allow-lists.
fn intersect(endpoint: &NameFilter, backend: Option<&NameFilter>, case_insensitive: bool) -> NameFilter {
    match (endpoint, backend) {
        (e, None) => e.clone(),
        (NameFilter::All, Some(b)) => b.clone(),
        (NameFilter::Only(e), Some(b)) => {
            NameFilter::Only(e.iter().filter(|n| b.allows(n, case_insensitive)).cloned().collect())
        }
    }
}

impl BackendCall {
    /// Compiles a backend; `default_hosts` is the service `host` list. Hosts were
    /// validated with the config, so a host that does not parse is skipped. is the backend's place in the endpoint's list.
    pub fn compile(
        endpoint: &Endpoint,
        index: usize,
        b: &Backend,
        default_hosts: &[String],
        max_response_bytes: usize,
        shared_cache: &std::sync::OnceLock<HttpCache>,
    ) -> Self {
        let url = UrlTemplate::compile(&b.url_pattern, &endpoint.path);
        let hosts = if b.host.is_empty() { default_hosts } else { &b.host };
        let hosts = hosts
            .iter()
            .filter_map(|h| {
                let uri: Uri = h.parse().ok()?;
                let (scheme, authority) = (uri.scheme()?.clone(), uri.authority()?.clone());
                let fixed = url.fixed().and_then(|path| build_uri(&scheme, &authority, path.to_owned()).ok());
                Some(Host { scheme, authority, fixed, pool: std::sync::OnceLock::new() })
            })
            .collect::<Box<[Host]>>();
        let stats = Arc::new(BackendStats::new(
            &endpoint.path,
            endpoint.method.as_str(),
            index,
            &b.url_pattern,
            hosts.first().map_or("", |h| h.authority.as_str()),
        ));
        let header_filter = intersect(&endpoint.input_headers, b.input_headers.as_ref(), true);
        let (headers, forwards_user_agent) = match header_filter {
            NameFilter::All => (HeaderRule::All, true),
            NameFilter::Only(names) => {
                let names: Vec<HeaderName> =
                    names.iter().filter_map(|n| HeaderName::try_from(n.as_str()).ok()).collect();
                let ua = names.contains(&header::USER_AGENT);
                (HeaderRule::Only(names.into()), ua)
            }
        };
        let query = match intersect(&endpoint.input_query_strings, b.input_query_strings.as_ref(), false) {
            NameFilter::All => QueryRule::All,
            NameFilter::Only(names) => QueryRule::Only(names.iter().map(|n| Box::from(n.as_str())).collect()),
        };
        Self {
            hosts,
            next_host: AtomicUsize::new(0),
            method: b.method.clone(),
            url,
            headers,
            forwards_user_agent,
            query,
            encoding: b.encoding,
            is_collection: b.is_collection,
            shape: Shape::compile(b),
            return_error_code: b.return_error_code,
            error_details_key: b.return_error_details.as_ref().map(|n| format!("error_{n}").into()),
            follow_redirects: b.follow_redirects,
            max_response_bytes,
            concurrent_calls: endpoint.concurrent_calls,
            user_agent: HeaderValue::from_static(concat!("Weir Version ", env!("CARGO_PKG_VERSION"))),
            limit: b.extra_config.get("qos/ratelimit/proxy").and_then(|v| BackendLimit::compile(v, "").ok()),
            breaker: b
                .extra_config
                .get("qos/circuit-breaker")
                .and_then(|v| CircuitBreaker::compile(v, &format!("{} {}", endpoint.path, b.url_pattern)).ok())
                .map(|settings| Arc::new(CircuitBreaker::new(settings, Arc::new(SystemClock)))),
            // A little under the endpoint timeout, so that a backend that hangs is
            // recorded as failing before the endpoint gives up on it.
            breaker_timeout: endpoint.timeout.mul_f64(0.95),
            cache: b.extra_config.get("qos/http-cache").and_then(|v| HttpCache::compile(v, "").ok()).map(|c| {
                // KrakenD's `shared`: one store for every backend that asks for it.
                if c.is_shared() { shared_cache.get_or_init(|| c).clone() } else { c }
            }),
            stats,
        }
    }

    /// This backend's call counters.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    /// Keeps counting into `stats` (a previous runtime's, for the same backend).
    pub(crate) fn adopt_stats(&mut self, stats: Arc<BackendStats>) {
        self.stats = stats;
    }

    /// Keeps `previous`'s circuit breaker and cache (the same backend in the runtime
    /// this one replaces) when their settings did not change: a reload must not close
    /// an open breaker, sending traffic straight back to a backend that is down, nor
    /// empty the cache.
    pub(crate) fn adopt_state(&mut self, previous: &BackendCall) {
        if let (Some(new), Some(old)) = (&self.breaker, &previous.breaker)
            && new.settings() == old.settings()
        {
            self.breaker = Some(old.clone());
        }
        if let (Some(new), Some(old)) = (&self.cache, &previous.cache)
            && new.same_settings(old)
        {
            self.cache = Some(old.clone());
        }
    }

    /// The backend's circuit breaker, for the metrics exporter.
    pub fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// Calls the backend (`concurrent_calls` times at once when configured) and
    /// returns its shaped data.
    pub async fn call(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
    ) -> Result<Map<String, Value>, Failure> {
        self.call_until(client, inbound, responses, None).await
    }

    /// [`BackendCall::call`] for a call that starts after others, with the endpoint's
    /// deadline (`until`): a circuit breaker then counts a call still running at that
    /// deadline as failed, where the endpoint's own timeout would drop it uncounted.
    pub async fn call_until(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
        until: Option<Instant>,
    ) -> Result<Map<String, Value>, Failure> {
        if self.concurrent_calls <= 1 {
            return self.call_once(client, inbound, responses, until).await;
        }
        let mut calls: FuturesUnordered<_> =
            (0..self.concurrent_calls).map(|_| self.call_once(client, inbound, responses, until)).collect();
        let mut last = None;
        while let Some(result) = calls.next().await {
            match result {
                Ok(data) => return Ok(data),
                Err(f) => last = Some(f),
            }
        }
        Err(last.unwrap_or_else(|| Error::upstream(ErrorKind::Connect, "no call was made").into()))
    }

    /// One call, through the circuit breaker when there is one. A call that takes
    /// too long counts as a failure; one abandoned by the client counts as nothing.
    async fn call_once(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
        until: Option<Instant>,
    ) -> Result<Map<String, Value>, Failure> {
        let Some(breaker) = &self.breaker else { return self.call_unguarded(client, inbound, responses).await };
        let permit = breaker.try_acquire().ok_or_else(|| unavailable("circuit breaker open"))?;
        let limit = Instant::now() + self.breaker_timeout;
        let limit = until.map_or(limit, |until| until.min(limit));
        // Boxed: rare, and inline it would enlarge every request's future.
        Box::pin(guarded(permit, limit, self.call_unguarded(client, inbound, responses))).await
    }

    async fn call_unguarded(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
    ) -> Result<Map<String, Value>, Failure> {
        let body = self.call_for_body(client, inbound, responses).await?;
        self.shape_body(&body)
    }

    /// Calls the backend and returns the body of a successful answer, undecoded.
    pub async fn call_for_body(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
    ) -> Result<Bytes, Failure> {
        let uri = self.uri(inbound, responses)?;
        let (status, content_type, body) = match self.cache() {
            Some(cache) => {
                // Boxed, like the circuit breaker's path: both are rare, and inline they
                // would enlarge every request's future (moved and copied as a whole).
                let cached = Box::pin(self.cached(cache, client, inbound, uri)).await?;
                (cached.status, cached.headers.get(header::CONTENT_TYPE).cloned(), Ok(cached.body.clone()))
            }
            _ => {
                let fetched = self.fetch(client, inbound, uri).await?;
                (fetched.status, fetched.headers.get(header::CONTENT_TYPE).cloned(), fetched.body)
            }
        };
        // Only 200 and 201 count as success, as in KrakenD.
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(Failure {
                error: Error::upstream(ErrorKind::Status, "invalid status code").with_detail(status.as_u16()),
                status: Some(status),
                body: body.unwrap_or_default(),
                content_type,
            });
        }
        body
    }

    /// The `qos/http-cache` store, for a method it applies to (GET, HEAD).
    fn cache(&self) -> Option<&HttpCache> {
        self.cache.as_ref().filter(|_| self.method == Method::GET || self.method == Method::HEAD)
    }

    /// The backend's whole answer from the cache, or fetched (up to the response size
    /// limit) and stored when it may be.
    async fn cached(
        &self,
        cache: &HttpCache,
        client: &Client,
        inbound: &Inbound<'_>,
        uri: Uri,
    ) -> Result<Arc<CachedResponse>, Failure> {
        let load = || async {
            let fetched = self.fetch(client, inbound, uri.clone()).await?;
            Ok::<_, Failure>(CachedResponse::new(fetched.status, fetched.headers, fetched.body?))
        };
        // `Vary` is matched against what the backend is sent: the client's fields that are
        // let through and those the gateway sets (propagated claims among them), not what
        // the client sent, or one user's answer could be served to another.
        let sent = self.request(inbound, self.method.clone(), uri.clone(), Bytes::new(), true).into_request();
        let (cached, _) = cache.fetch(&self.method, &uri, sent.headers(), load).await?;
        Ok(cached)
    }

    /// Decodes a successful answer's body and applies the backend's manipulation.
    pub fn shape_body(&self, body: &[u8]) -> Result<Map<String, Value>, Failure> {
        let data = match self.shape.allow_first() {
            Some(allow) if self.encoding == BackendEncoding::Json && !self.is_collection => {
                super::shape::decode_allowed(body, allow)
            }
            _ => decode(self.encoding, self.is_collection, body),
        }
        .map_err(|e| Error::upstream(ErrorKind::Decode, "cannot decode the backend response").with_detail(e))?;
        Ok(if self.shape.is_identity() { data } else { self.shape.apply(data) })
    }

    /// How the backend's answer is used when it is a JSON object manipulated only in ways
    /// [`super::spans`] applies to the bytes, with one call, no breaker and no error
    /// details: then the answers are merged from their bytes. `None` otherwise.
    pub fn byte_plan(&self) -> Option<super::shape::Plan<'_>> {
        let plain = self.encoding == BackendEncoding::Json
            && !self.is_collection
            && self.breaker.is_none()
            && self.concurrent_calls <= 1
            && self.error_details_key.is_none();
        if plain { self.shape.plan() } else { None }
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, Failure> {
        match Limited::new(body, self.max_response_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(Error::upstream(ErrorKind::Io, "reading the backend response failed").with_detail(e).into()),
        }
    }

    /// Sends the request, following redirects, and returns the final response with
    /// its body unread (`no-op`), through the circuit breaker when there is one: there
    /// any answer counts as a success, whatever its status, as in KrakenD, and no answer
    /// (no connection, a broken one, the deadline) as a failure. With `qos/http-cache`
    /// the answer is read whole, from the cache or into it.
    pub async fn send(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        responses: &[Option<Map<String, Value>>],
    ) -> Result<Response<super::Body>, Failure> {
        let uri = self.uri(inbound, responses)?;
        let Some(breaker) = &self.breaker else { return self.send_uri(client, inbound, uri).await };
        let permit = breaker.try_acquire().ok_or_else(|| unavailable("circuit breaker open"))?;
        let limit = Instant::now() + self.breaker_timeout;
        // Boxed, as in `call_once`. These steps are written out in both rather than in a
        // helper taking the call: a future passed as an argument is copied once more, on
        // every call (about 940 instructions per no-op request, measured).
        Box::pin(guarded(permit, limit, self.send_uri(client, inbound, uri))).await
    }

    async fn send_uri(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        uri: Uri,
    ) -> Result<Response<super::Body>, Failure> {
        let Some(cache) = self.cache() else {
            return Ok(self.send_to(client, inbound, uri).await?.map(Either::Right));
        };
        // Boxed: rare, and inline it would enlarge every no-op request's future.
        let cached = Box::pin(self.cached(cache, client, inbound, uri)).await?;
        let mut response = Response::new(super::full(cached.body.clone()));
        *response.status_mut() = cached.status;
        *response.headers_mut() = cached.headers.clone();
        Ok(response)
    }

    /// Calls the backend, following redirects: `exchange` makes one call and its answer
    /// tells whether to go on (a redirect) or stop. The backend's rate limit is taken
    /// once per client request.
    async fn follow<T, F, Fut>(&self, inbound: &Inbound<'_>, mut uri: Uri, exchange: F) -> Result<T, Failure>
    where
        T: Head,
        F: Fn(Outgoing, Uri) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if let Some(limit) = &self.limit
            && !limit.allow()
        {
            return Err(unavailable("backend rate limit exceeded"));
        }
        let mut method = self.method.clone();
        let mut body = inbound.body.clone();
        // The first host's authority, once a redirect has left it (compared only then: a
        // case-blind comparison of two authorities costs more than the rest of the loop).
        let mut origin: Option<Option<Authority>> = None;
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = origin.as_ref().is_none_or(|o| uri.authority() == o.as_ref());
            let mut request = self.request(inbound, method.clone(), uri.clone(), body.clone(), same_origin);
            let span = inbound.trace.map(crate::telemetry::trace::TraceContext::client_span);
            if let Some(span) = &span {
                request.headers.insert(crate::telemetry::trace::TRACEPARENT.clone(), span.traceparent());
            }
            let timer = self.stats.start();
            let answer = exchange(request, uri.clone()).await;
            if let Some(span) = span {
                span.finish(&method, &uri, answer.as_ref().ok().map(|a| a.status().as_u16()));
            }
            let answer = answer?;
            timer.answered(answer.status().as_u16());
            match self.redirect(answer.status(), answer.headers(), &uri, &mut method, &mut body) {
                Some(next) => {
                    origin.get_or_insert_with(|| uri.authority().cloned());
                    uri = next;
                }
                None => return Ok(answer),
            }
        }
        Err(Error::upstream(ErrorKind::Redirect, "stopped after 10 redirects").into())
    }

    /// Calls the backend and returns as soon as the response head arrived, the body
    /// streaming behind it (`no-op`).
    ///
    /// Not `async` itself (nor [`BackendCall::fetch`]): a layer of future around
    /// [`BackendCall::follow`]'s would hold a copy of `uri` for nothing.
    fn send_to<'a>(
        &'a self,
        client: &'a Client,
        inbound: &'a Inbound<'_>,
        uri: Uri,
    ) -> impl Future<Output = Result<Response<Streaming>, Failure>> + 'a {
        self.follow(inbound, uri, move |request, uri| async move {
            let response = match (uri.scheme_str(), uri.authority()) {
                (Some("http"), Some(authority)) => {
                    let pool = self.pool(client, authority);
                    let call = client.upstreams().call_streaming(authority, pool, request);
                    call.await.map_err(failed)?.map(Either::Right)
                }
                // Boxed (HTTPS, through hyper's client): inline, its future would enlarge
                // every plain call's too.
                _ => Box::pin(client.request(request.into_request())).await.map_err(failed)?.map(Either::Left),
            }
            .map(Deadline::new);
            Ok(response)
        })
    }

    /// Calls the backend and reads its whole answer. Plain-HTTP hosts are driven from
    /// this task ([`super::upstream`]); HTTPS goes through the pooled client.
    fn fetch<'a>(
        &'a self,
        client: &'a Client,
        inbound: &'a Inbound<'_>,
        uri: Uri,
    ) -> impl Future<Output = Result<Fetched, Failure>> + 'a {
        self.follow(inbound, uri, move |request, uri| async move {
            match (uri.scheme_str(), uri.authority()) {
                (Some("http"), Some(authority)) => {
                    // A cache stores the response's fields; otherwise only its type and a
                    // redirect's target are read.
                    let keep = if self.cache.is_some() { Keep::All } else { Keep::TypeAndLocation };
                    let pool = self.pool(client, authority);
                    let answer = client
                        .upstreams()
                        .call(authority, pool, request, self.max_response_bytes, keep)
                        .await
                        .map_err(failed)?;
                    let body = answer.body.map_err(|e| match e {
                        BodyError::TooLarge => too_large(),
                        BodyError::Broken(detail) => {
                            Error::upstream(ErrorKind::Io, "reading the backend response failed")
                                .with_detail(detail)
                                .into()
                        }
                    });
                    Ok(Fetched { status: answer.status, headers: answer.headers, body })
                }
                // Boxed, as in `send_to`.
                _ => {
                    Box::pin(async {
                        let response = client.request(request.into_request()).await.map_err(failed)?;
                        let (parts, incoming) = response.into_parts();
                        Ok(Fetched {
                            status: parts.status,
                            headers: parts.headers,
                            body: self.read_body(incoming).await,
                        })
                    })
                    .await
                }
            }
        })
    }

    /// The idle connections to `authority`: one of this backend's hosts keeps its pool
    /// (a redirect elsewhere looks one up).
    fn pool(&self, client: &Client, authority: &Authority) -> Arc<super::upstream::HostPool> {
        // A call to a host of the backend's own carries a copy of its authority: the same
        // bytes, found without comparing them.
        let kept = self
            .hosts
            .iter()
            .find(|h| std::ptr::eq(h.authority.as_str(), authority.as_str()))
            .or_else(|| self.hosts.iter().find(|h| h.authority == *authority && h.scheme == Scheme::HTTP));
        client.upstreams().pool(authority, kept.map(|h| &h.pool))
    }

    /// Where a redirect leads, adjusting method and body like Go's client: 303, and
    /// 301/302 after anything but GET/HEAD, become a GET without body. `None`: this is
    /// the final answer.
    fn redirect(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        uri: &Uri,
        method: &mut Method,
        body: &mut Bytes,
    ) -> Option<Uri> {
        if !self.follow_redirects || !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
            return None;
        }
        let next = headers.get(header::LOCATION).and_then(|l| resolve(uri, l))?;
        if status == StatusCode::SEE_OTHER
            || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                && *method != Method::GET
                && *method != Method::HEAD)
        {
            *method = Method::GET;
            *body = Bytes::new();
        }
        Some(next)
    }

    fn uri(&self, inbound: &Inbound<'_>, responses: &[Option<Map<String, Value>>]) -> Result<Uri, Failure> {
        let host = match self.hosts.len() {
            0 => return Err(Error::upstream(ErrorKind::Connect, "backend has no host").into()),
            1 => &self.hosts[0],
            n => &self.hosts[self.next_host.fetch_add(1, Ordering::Relaxed) % n],
        };
        let query = inbound.query.filter(|q| !q.is_empty());
        if let (Some(uri), None) = (&host.fixed, query) {
            return Ok(uri.clone());
        }
        let mut path = String::with_capacity(self.url.len_hint() + query.map_or(0, str::len));
        self.url.render_into(&mut path, &Values { params: inbound.params, responses, claims: inbound.claims });
        if let Some(query) = query {
            self.append_query(&mut path, query);
        }
        build_uri(&host.scheme, &host.authority, path)
    }

    /// Appends the allowed client query parameters after the pattern's own, sorted by
    /// name as Go's `url.Values.Encode` does.
    fn append_query(&self, out: &mut String, query: &str) {
        let mut pairs: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| (p.split('=').next().unwrap_or(p), p))
            .filter(|(name, _)| match &self.query {
                QueryRule::All => true,
                QueryRule::Only(allowed) => allowed.iter().any(|a| **a == **name || decoded_eq(name, a)),
            })
            .collect();
        if pairs.is_empty() {
            return;
        }
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        out.push(if self.url.has_query() { '&' } else { '?' });
        for (i, (_, pair)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(pair);
        }
    }

    fn request(&self, inbound: &Inbound<'_>, method: Method, uri: Uri, body: Bytes, same_origin: bool) -> Outgoing {
        let mut headers = Fields(Vec::with_capacity(8));
        match &self.headers {
            HeaderRule::All => {
                for (name, value) in inbound.headers {
                    if !is_hop_by_hop(name) && name != header::HOST && name != header::CONTENT_LENGTH {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
            HeaderRule::Only(names) => {
                for name in names.iter() {
                    for value in inbound.headers.get_all(name) {
                        headers.append(name.clone(), value.clone());
                    }
                }
            }
        }
        if !same_origin {
            // Credentials are for the host the client meant, not wherever a redirect points.
            headers.remove(&header::AUTHORIZATION);
            headers.remove(&header::COOKIE);
        }
        if self.forwards_user_agent && headers.contains(&header::USER_AGENT) {
            headers.insert(X_FORWARDED_VIA.clone(), self.user_agent.clone());
        } else {
            headers.insert(header::USER_AGENT, self.user_agent.clone());
        }
        if let Some(ip) = ip_header(inbound.client_ip) {
            headers.insert(X_FORWARDED_FOR.clone(), ip);
        }
        if let Some(host) = inbound.host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        for (name, value) in inbound.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        Outgoing { method, uri, headers, body }
    }
}

/// Runs a call the circuit breaker let through, until `limit`, and tells the breaker how
/// it went: an answer is a success, an error or the limit a failure. A call dropped before
/// it ends (the client went away) tells it nothing.
async fn guarded<T>(
    permit: Permit<'_>,
    limit: Instant,
    call: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(limit, call).await {
        Ok(Ok(answer)) => {
            permit.success();
            Ok(answer)
        }
        Ok(Err(f)) => {
            permit.failure();
            Err(f)
        }
        Err(_) => {
            permit.failure();
            Err(Error::upstream(ErrorKind::Timeout, "context deadline exceeded").into())
        }
    }
}

fn decoded_eq(raw: &str, name: &str) -> bool {
    raw.contains(['%', '+'])
        && percent_encoding::percent_decode_str(&raw.replace('+', " ")).decode_utf8().is_ok_and(|d| d == name)
}

/// What a redirect decision looks at.
trait Head {
    fn status(&self) -> StatusCode;
    fn headers(&self) -> &HeaderMap;
}

impl Head for Response<Streaming> {
    fn status(&self) -> StatusCode {
        Response::status(self)
    }
    fn headers(&self) -> &HeaderMap {
        Response::headers(self)
    }
}

impl Head for Fetched {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Error::upstream(ErrorKind::Connect, "backend request failed").with_detail(e).into()
}

/// A backend answer read whole.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, Failure>,
}

fn too_large() -> Failure {
    Error::upstream(ErrorKind::TooLarge, "backend response larger than max_backend_response_bytes").into()
}

/// A backend that was not called, answering as KrakenD does when it holds one back.
fn unavailable(context: &'static str) -> Failure {
    Failure {
        error: Error::upstream(ErrorKind::Unavailable, context),
        status: Some(StatusCode::SERVICE_UNAVAILABLE),
        body: Bytes::new(),
        content_type: None,
    }
}

/// An address as a header value.
fn ip_header(ip: std::net::IpAddr) -> Option<HeaderValue> {
    match ip {
        std::net::IpAddr::V4(v4) => HeaderValue::from_str(crate::policy::ip::Ipv4Text::new(v4).as_str()).ok(),
        std::net::IpAddr::V6(_) => HeaderValue::try_from(ip.to_string()).ok(),
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110, section 7.6.1).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    super::h1::is_hop_by_hop(name.as_str())
}

/// Resolves a `Location` header against the URL that answered with it.
fn resolve(base: &Uri, location: &HeaderValue) -> Option<Uri> {
    let loc = location.to_str().ok()?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.parse().ok();
    }
    let path = if loc.starts_with("//") {
        return format!("{}:{loc}", base.scheme_str()?).parse().ok();
    } else if loc.starts_with('/') {
        loc.to_owned()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{loc}")
    };
    Uri::builder().scheme(base.scheme()?.clone()).authority(base.authority()?.clone()).path_and_query(path).build().ok()
}

/// A backend URI from its host's parts and a rendered path (with its query).
fn build_uri(scheme: &Scheme, authority: &Authority, path: String) -> Result<Uri, Failure> {
    let path = PathAndQuery::try_from(path)
        .map_err(|e| Error::upstream(ErrorKind::Connect, "invalid backend URL").with_detail(e))?;
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| Error::upstream(ErrorKind::Connect, "invalid backend URL").with_detail(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_placeholders_is_built_once_per_host() {
        let text = r#"{"version": 3, "host": ["http://a.test:81", "http://b.test:82"], "endpoints": [
            {"endpoint": "/u/{id}", "input_query_strings": ["q"], "backend": [
                {"url_pattern": "/user"}, {"url_pattern": "/user/{id}"}]}]}"#;
        let service = crate::config::parse(text, crate::config::Format::Json, |_| None).service.unwrap();
        let endpoint = &service.endpoints[0];
        let compile = |i: usize| {
            BackendCall::compile(
                endpoint,
                i,
                &endpoint.backends[i],
                &service.host,
                1 << 20,
                &std::sync::OnceLock::new(),
            )
        };
        let (fixed, templated) = (compile(0), compile(1));
        assert!(fixed.hosts.iter().all(|h| h.fixed.is_some()), "built for every host");
        assert!(templated.hosts.iter().all(|h| h.fixed.is_none()), "a placeholder is rendered per request");
        let headers = HeaderMap::new();
        let uri = |call: &BackendCall, query: Option<&str>| {
            let inbound = Inbound {
                method: &Method::GET,
                params: &["7"],
                query,
                headers: &headers,
                host: None,
                body: Bytes::new(),
                client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                claims: None,
                extra_headers: &[],
                trace: None,
            };
            call.uri(&inbound, &[]).unwrap().to_string()
        };
        // Hosts still take turns, and a query string still gets through its filter.
        assert_eq!(uri(&fixed, None), "http://a.test:81/user");
        assert_eq!(uri(&fixed, Some("")), "http://b.test:82/user");
        assert_eq!(uri(&fixed, Some("q=1&r=2")), "http://a.test:81/user?q=1");
        assert_eq!(uri(&templated, None), "http://a.test:81/user/7");
        assert_eq!(uri(&templated, Some("q=1")), "http://b.test:82/user/7?q=1");
    }

    #[test]
    fn client_addresses_are_written_as_the_formatter_writes_them() {
        for ip in
            ["0.0.0.0", "255.255.255.255", "10.0.0.1", "1.2.3.4", "100.20.3.250", "192.168.99.9", "::1", "2001:db8::7"]
        {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header(ip).unwrap(), ip.to_string(), "{ip}");
        }
        // Every octet value, in each position.
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, 255 - n, n / 3, n / 17]);
            assert_eq!(ip_header(ip).unwrap(), ip.to_string());
        }
    }
}
