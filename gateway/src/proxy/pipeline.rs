//! An endpoint's pipeline: call its backends (in parallel or in sequence), merge
//! their data, apply endpoint-level options and encode the response.
//!
//! Phases, in order: backends -> merge -> endpoint flatmap -> static data -> encode.
//! Only the backend phase waits on I/O; the whole pipe is bounded by the endpoint
//! timeout, and backends that answered before it count even when others did not.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Either;
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::backend::{BackendCall, Failure, Inbound, is_hop_by_hop};
use super::client::Client;
use super::flatmap::Flatmap;
use super::render::render;
use super::{Body, full};
use crate::config::{Endpoint, OutputEncoding, StaticResponse, StaticStrategy};
use crate::error::{Error, ErrorKind};
use crate::policy::{Admitted, Guards};

pub static COMPLETED: HeaderName = HeaderName::from_static("x-krakend-completed");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const FALSE: HeaderValue = HeaderValue::from_static("false");

/// Options shared by every endpoint of a runtime.
#[derive(Debug, Clone)]
pub struct Common {
    pub return_error_msg: bool,
    /// `(name, value)` of the version header, unless `hide_version_header` is set.
    pub version_header: Option<(HeaderName, HeaderValue)>,
    pub max_response_bytes: usize,
    /// `weir/compression`: encoded responses for clients that accept them.
    pub compression: Option<std::sync::Arc<crate::policy::compress::Compression>>,
}

/// A compiled endpoint.
pub struct Pipeline {
    encoding: OutputEncoding,
    timeout: Duration,
    cache_control: Option<HeaderValue>,
    backends: Box<[BackendCall]>,
    sequential: bool,
    static_response: Option<StaticResponse>,
    flatmap: Option<Flatmap>,
    common: Common,
    guards: Option<Guards>,
    param_names: Box<[Box<str>]>,
    signer: Option<crate::policy::signer::Signer>,
    body_schema: Option<crate::policy::schema::BodySchema>,
    /// `proxy.max_payload`: this endpoint's request body limit, when it has its own.
    max_body: Option<usize>,
    stats: std::sync::Arc<crate::telemetry::EndpointStats>,
    /// The endpoint does not touch the data and its backends manipulate it only in ways
    /// that can be applied to the bytes: the JSON objects the backends send are shaped and
    /// merged from their bytes ([`super::spans`]).
    merge_bytes: bool,
    /// What [`Pipeline::common_headers`] sets on a no-op response, as field lines, for one
    /// whose backend fields stay lines ([`super::h1::RawFields`]).
    own_lines: Bytes,
}

/// What the backends produced together.
struct Merged {
    data: Map<String, Value>,
    /// Whether any backend (or its error details) contributed a response.
    has_response: bool,
    failures: Vec<Failure>,
}

impl Pipeline {
    /// Keeps counting into `stats` (a previous runtime's, for the same endpoint).
    pub(crate) fn adopt_stats(&mut self, stats: std::sync::Arc<crate::telemetry::EndpointStats>) {
        self.stats = stats;
    }

    /// Keeps counting each backend's calls into the previous runtime's counters for the
    /// same backend, where there is one.
    pub(crate) fn adopt_backend_stats(&mut self, previous: &[std::sync::Arc<crate::telemetry::BackendStats>]) {
        for b in &mut self.backends {
            if let Some(same) = previous.iter().find(|p| p.same_backend(b.stats())) {
                b.adopt_stats(same.clone());
            }
        }
    }

    /// Keeps the state of `previous` (the same endpoint in the runtime this one replaces)
    /// where its settings did not change: rate-limit buckets, breakers, caches.
    pub(crate) fn adopt_state(&mut self, previous: &Pipeline) {
        if let (Some(guards), Some(old)) = (&mut self.guards, &previous.guards) {
            guards.adopt_state(old);
        }
        for b in &mut self.backends {
            if let Some(same) = previous.backends.iter().find(|p| p.stats().same_backend(b.stats())) {
                b.adopt_state(same);
            }
        }
    }

    /// The call counters of this endpoint's backends.
    pub fn backend_stats(&self) -> impl Iterator<Item = &std::sync::Arc<crate::telemetry::BackendStats>> {
        self.backends.iter().map(BackendCall::stats)
    }

    pub fn compile(
        e: &Endpoint,
        default_hosts: &[String],
        common: Common,
        guards: Option<Guards>,
        signer: Option<crate::policy::signer::Signer>,
        shared_cache: &std::sync::OnceLock<crate::policy::cache::HttpCache>,
    ) -> Self {
        let backends = e
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendCall::compile(e, i, b, default_hosts, common.max_response_bytes, shared_cache))
            .collect();
        let secs = e.cache_ttl.as_secs();
        let backends: Box<[BackendCall]> = backends;
        let merge_bytes = e.output_encoding == OutputEncoding::Json
            && !e.sequential
            && e.static_response.is_none()
            && (e.backends.len() == 1 || e.flatmap.is_empty())
            && signer.is_none()
            && backends.iter().all(|b| b.byte_plan().is_some());
        let mut own = http::HeaderMap::new();
        let mut own_lines = Vec::new();
        Self::set_common_headers(&common, &mut own, false);
        for (name, value) in &own {
            own_lines.extend_from_slice(name.as_str().as_bytes());
            own_lines.extend_from_slice(b": ");
            own_lines.extend_from_slice(value.as_bytes());
            own_lines.extend_from_slice(b"\r\n");
        }
        Self {
            merge_bytes,
            own_lines: Bytes::from(own_lines),
            encoding: e.output_encoding,
            timeout: e.timeout,
            cache_control: (secs > 0).then(|| HeaderValue::try_from(format!("public, max-age={secs}")).ok()).flatten(),
            backends,
            sequential: e.sequential,
            static_response: e.static_response.clone(),
            // KrakenD runs the endpoint-level flatmap only where there is something merged.
            flatmap: (e.backends.len() > 1 && !e.flatmap.is_empty()).then(|| Flatmap::compile(&e.flatmap)),
            common,
            guards,
            param_names: crate::config::path_params(&e.path).into_iter().map(Box::from).collect(),
            signer,
            body_schema: e
                .extra_config
                .get("validation/json-schema")
                .and_then(|v| crate::policy::schema::BodySchema::compile(v, "").ok()),
            max_body: e.max_payload,
            stats: std::sync::Arc::new(crate::telemetry::EndpointStats::new(&e.path, e.method.as_str())),
        }
    }

    /// This endpoint's counters.
    pub fn stats(&self) -> &std::sync::Arc<crate::telemetry::EndpointStats> {
        &self.stats
    }

    /// Circuit breakers of this endpoint's backends, named for the exporter.
    pub fn breakers(&self) -> impl Iterator<Item = &std::sync::Arc<crate::policy::breaker::CircuitBreaker>> {
        self.backends.iter().filter_map(BackendCall::breaker)
    }

    /// The request body limit of this endpoint, if it sets one.
    pub fn max_body(&self) -> Option<usize> {
        self.max_body
    }

    /// Checks the request body against the endpoint's JSON Schema, if it has one.
    pub fn check_body(&self, body: &[u8]) -> Result<(), Response<Body>> {
        match &self.body_schema {
            Some(schema) => schema.check(body).map_err(|mut r| {
                self.stats.refused(crate::telemetry::Refusal::InvalidBody);
                self.common_headers(r.headers_mut(), false);
                r
            }),
            None => Ok(()),
        }
    }

    /// Runs the endpoint's admission checks (auth, rate limits); a refusal comes
    /// back as the response to send, with the gateway's usual headers.
    pub async fn admit(
        &self,
        parts: &http::request::Parts,
        client_ip: std::net::IpAddr,
        params: &[&str],
    ) -> Result<Admitted, Response<Body>> {
        let Some(guards) = &self.guards else { return Ok(Admitted::default()) };
        let named: Vec<(&str, &str)> = self.param_names.iter().map(|n| &**n).zip(params.iter().copied()).collect();
        // Boxed: the checks' future (JWT keys, cluster rate limits) is the largest of the
        // request path, and inline it would enlarge the future of every request, guarded
        // or not, which is moved and copied whole.
        Box::pin(guards.admit(&crate::policy::Request { parts, client_ip, params: &named })).await.map_err(|mut r| {
            self.stats.refused(crate::telemetry::Refusal::from_status(r.status().as_u16()));
            self.common_headers(r.headers_mut(), false);
            r
        })
    }

    /// Runs the pipeline for one request.
    pub async fn serve(&self, client: &Client, inbound: &Inbound<'_>, accept: Option<&HeaderValue>) -> Response<Body> {
        if self.encoding == OutputEncoding::NoOp {
            return self.passthrough(client, inbound).await;
        }
        let accept_encoding = inbound.headers.get(header::ACCEPT_ENCODING);
        if self.merge_bytes {
            return self.merge_bytes(client, inbound, accept, accept_encoding).await;
        }
        let merged = if self.sequential {
            self.sequential(client, inbound).await
        } else if self.backends.len() == 1 {
            self.single(client, inbound).await
        } else {
            self.parallel(client, inbound).await
        };
        self.respond(merged, accept, accept_encoding)
    }

    /// Calls the backends and merges the JSON objects they send without decoding them,
    /// when they are as usual; otherwise decodes them and goes on as [`Pipeline::serve`].
    async fn merge_bytes(
        &self,
        client: &Client,
        inbound: &Inbound<'_>,
        accept: Option<&HeaderValue>,
        accept_encoding: Option<&HeaderValue>,
    ) -> Response<Body> {
        let results = if let [backend] = &*self.backends {
            let call = tokio::time::timeout(self.timeout, backend.call_for_body(client, inbound, &[]));
            vec![call.await.unwrap_or_else(|_| Err(timeout()))]
        } else {
            self.call_all(|b| b.call_for_body(client, inbound, &[])).await
        };
        let sources: Vec<super::spans::Source<'_>> = results
            .iter()
            .zip(self.backends.iter())
            .filter_map(|(r, b)| Some(super::spans::Source { body: r.as_deref().ok()?, plan: b.byte_plan()? }))
            .collect();
        if !sources.is_empty() {
            let mut out = Vec::with_capacity(sources.iter().map(|s| s.body.len()).sum::<usize>() + 16);
            if super::spans::merge(&sources, &mut out).is_some() {
                let complete = sources.len() == results.len();
                let has_data = out.len() > 2;
                return self.encoded(Bytes::from(out), super::render::JSON, complete, has_data, accept_encoding);
            }
        }
        let mut merged = Merged { data: Map::new(), has_response: false, failures: Vec::new() };
        for (i, result) in results.into_iter().enumerate() {
            self.fold(&mut merged, i, result.and_then(|body| self.backends[i].shape_body(&body)));
        }
        self.respond(merged, accept, accept_encoding)
    }

    async fn single(&self, client: &Client, inbound: &Inbound<'_>) -> Merged {
        let backend = &self.backends[0];
        let result = match tokio::time::timeout(self.timeout, backend.call(client, inbound, &[])).await {
            Ok(r) => r,
            Err(_) => Err(timeout()),
        };
        let mut merged = Merged { data: Map::new(), has_response: false, failures: Vec::new() };
        self.fold(&mut merged, 0, result);
        merged
    }

    async fn parallel(&self, client: &Client, inbound: &Inbound<'_>) -> Merged {
        let results = self.call_all(|b| b.call(client, inbound, &[])).await;
        // Merge in declaration order, so that on a key collision the later backend
        // wins every time instead of whichever happened to answer last.
        let mut merged = Merged { data: Map::new(), has_response: false, failures: Vec::new() };
        for (i, r) in results.into_iter().enumerate() {
            self.fold(&mut merged, i, r);
        }
        merged
    }

    /// Makes `call` to every backend at once and collects the results in declaration
    /// order; a backend that has not answered when the endpoint's time is up has timed out.
    ///
    /// The calls are polled together in one allocation (`join_all`), each putting its
    /// result in its own slot as it ends, so that what answered in time survives the
    /// deadline cancelling the rest.
    async fn call_all<'b, T, F, Fut>(&'b self, call: F) -> Vec<Result<T, Failure>>
    where
        T: Send + Sync,
        F: Fn(&'b BackendCall) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.timeout;
        let slots: Vec<std::sync::OnceLock<Result<T, Failure>>> =
            (0..self.backends.len()).map(|_| std::sync::OnceLock::new()).collect();
        let calls = futures_util::future::join_all(self.backends.iter().zip(&slots).map(|(b, slot)| {
            let call = call(b);
            async move {
                // Each slot is set once, by its own call.
                let _ = slot.set(call.await);
            }
        }));
        let _ = tokio::time::timeout_at(deadline, calls).await;
        slots.into_iter().map(|slot| slot.into_inner().unwrap_or_else(|| Err(timeout()))).collect()
    }

    async fn sequential(&self, client: &Client, inbound: &Inbound<'_>) -> Merged {
        let mut responses: Vec<Option<Map<String, Value>>> = Vec::with_capacity(self.backends.len());
        let mut failure = None;
        // Each call after the first starts late: its breaker must see the endpoint's
        // deadline, or a backend that hangs there would never count as failing.
        let deadline = Instant::now() + self.timeout;
        let chain = async {
            for backend in self.backends.iter() {
                match backend.call_until(client, inbound, &responses, Some(deadline)).await {
                    Ok(data) => responses.push(Some(data)),
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout_at(deadline, chain).await.is_err() {
            failure = Some(timeout());
        }
        let mut merged = Merged { data: Map::new(), has_response: false, failures: Vec::new() };
        let answered = responses.len();
        for (i, data) in responses.into_iter().flatten().enumerate() {
            self.fold(&mut merged, i, Ok(data));
        }
        // A failure stops the chain: the backends after it never run, and what came
        // before is returned, marked incomplete.
        if let Some(f) = failure {
            self.fold(&mut merged, answered, Err(f));
        }
        merged
    }

    fn fold(&self, merged: &mut Merged, index: usize, result: Result<Map<String, Value>, Failure>) {
        match result {
            Ok(data) => {
                merged.has_response = true;
                merged.data.extend(data);
            }
            Err(failure) => {
                if let Some(key) = self.backends.get(index).and_then(|b| b.error_details_key.as_deref()) {
                    merged.has_response = true;
                    merged.data.insert(key.to_owned(), details(&failure));
                }
                merged.failures.push(failure);
            }
        }
    }

    fn respond(
        &self,
        mut merged: Merged,
        accept: Option<&HeaderValue>,
        accept_encoding: Option<&HeaderValue>,
    ) -> Response<Body> {
        let complete = merged.failures.is_empty();
        if let Some(signer) = &self.signer {
            signer.apply(&mut merged.data);
        }
        if merged.has_response
            && let Some(flatmap) = &self.flatmap
        {
            let mut root = Value::Object(std::mem::take(&mut merged.data));
            flatmap.apply(&mut root);
            if let Value::Object(m) = root {
                merged.data = m;
            }
        }
        if let Some(s) = &self.static_response {
            let applies = match s.strategy {
                StaticStrategy::Always => true,
                StaticStrategy::Success => complete,
                StaticStrategy::Errored => !complete,
                StaticStrategy::Complete => complete && merged.has_response,
                StaticStrategy::Incomplete => !complete || !merged.has_response,
            };
            if applies {
                merged.data.extend(s.data.iter().map(|(k, v)| (k.clone(), v.clone())));
                merged.has_response = true;
            }
        }
        if !merged.has_response {
            return self.failure(&merged.failures);
        }
        let (body, content_type) = render(self.encoding, accept, &merged.data);
        self.encoded(body, content_type, complete, !merged.data.is_empty(), accept_encoding)
    }

    /// The response for an encoded body: compressed when the client takes it, with the
    /// gateway's headers; `Cache-Control` only for complete, non-empty data.
    fn encoded(
        &self,
        body: Bytes,
        content_type: HeaderValue,
        complete: bool,
        has_data: bool,
        accept_encoding: Option<&HeaderValue>,
    ) -> Response<Body> {
        let compressed = self.common.compression.as_ref().and_then(|c| {
            let encoding = c.negotiate(accept_encoding)?;
            Some((encoding, c.compress(encoding, Some(&content_type), &body)?))
        });
        let mut response = match compressed {
            Some((encoding, bytes)) => {
                let mut r = Response::new(full(bytes));
                r.headers_mut().insert(header::CONTENT_ENCODING, encoding.header_value());
                r
            }
            None => Response::new(full(body)),
        };
        let headers = response.headers_mut();
        if self.common.compression.is_some() {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        headers.insert(header::CONTENT_TYPE, content_type);
        self.common_headers(headers, complete);
        if complete
            && has_data
            && let Some(cc) = &self.cache_control
        {
            headers.insert(header::CACHE_CONTROL, cc.clone());
        }
        response
    }

    /// The response when no backend produced anything: 500, or the backend's own
    /// status with `return_error_code` on a single backend.
    fn failure(&self, failures: &[Failure]) -> Response<Body> {
        let single = self.backends.len() == 1;
        let first = failures.first();
        let passthrough = single && self.backends[0].return_error_code;
        let status = match first.and_then(|f| f.status) {
            Some(s) if passthrough => s,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = status;
        if self.common.return_error_msg {
            match first {
                Some(f) if passthrough && f.status.is_some() => {
                    *response.body_mut() = full(f.body.clone());
                    if let Some(ct) = &f.content_type {
                        response.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                    }
                }
                _ => {
                    let text: Vec<String> = failures.iter().map(|f| f.error.to_string()).collect();
                    *response.body_mut() = full(Bytes::from(text.join("\n")));
                    response.headers_mut().insert(header::CONTENT_TYPE, super::render::TEXT);
                }
            }
        }
        self.common_headers(response.headers_mut(), false);
        response
    }

    fn common_headers(&self, headers: &mut http::HeaderMap, complete: bool) {
        Self::set_common_headers(&self.common, headers, complete);
    }

    fn set_common_headers(common: &Common, headers: &mut http::HeaderMap, complete: bool) {
        headers.insert(COMPLETED.clone(), if complete { TRUE } else { FALSE });
        if let Some((name, value)) = &common.version_header {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// `no-op`: the backend's status, headers and body go to the client untouched,
    /// the body streamed without buffering.
    async fn passthrough(&self, client: &Client, inbound: &Inbound<'_>) -> Response<Body> {
        let backend = &self.backends[0];
        // The timeout covers the body too, which streams after the head.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = tokio::time::timeout_at(deadline, backend.send(client, inbound, &[])).await;
        match result {
            Ok(Ok(mut response)) => {
                if let Either::Right(streaming) = response.body_mut() {
                    streaming.end_by(deadline);
                }
                if let Some(raw) = super::raw_fields(response.body_mut()).and_then(Option::as_mut) {
                    // The backend's fields stay as it wrote them, and the gateway's follow
                    // as lines too: the map stays empty (see [`Pipeline::own_lines`]).
                    raw.add_own(self.own_lines.clone());
                    return response;
                }
                // The backend's response, with its header map kept: only hop-by-hop
                // headers go, which are rare, so they are looked for before anything moves.
                *response.version_mut() = http::Version::default();
                response.extensions_mut().clear();
                let headers = response.headers_mut();
                if headers.keys().any(is_hop_by_hop) {
                    let hop: Vec<_> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
                    for name in hop {
                        headers.remove(name);
                    }
                }
                // KrakenD marks no-op responses incomplete: it has no data to vouch for.
                self.common_headers(headers, false);
                response
            }
            Ok(Err(f)) => self.failure(&[f]),
            Err(_) => self.failure(&[timeout()]),
        }
    }
}

fn timeout() -> Failure {
    Error::upstream(ErrorKind::Timeout, "context deadline exceeded").into()
}

/// `return_error_details`: what the client learns about a failed backend.
fn details(f: &Failure) -> Value {
    let mut m = Map::new();
    let status = f.status.map_or(0, |s| s.as_u16());
    m.insert("http_status_code".into(), Value::from(status));
    if !f.body.is_empty() {
        m.insert("http_body".into(), Value::String(String::from_utf8_lossy(&f.body).into_owned()));
    }
    if let Some(ct) = f.content_type.as_ref().and_then(|c| c.to_str().ok()) {
        m.insert("http_body_encoding".into(), Value::String(ct.to_owned()));
    }
    if f.status.is_none() {
        m.insert("error".into(), Value::String(f.error.to_string()));
    }
    Value::Object(m)
}
