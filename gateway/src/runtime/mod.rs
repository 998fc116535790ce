//! The compiled, immutable runtime: a routing table and one pipeline per endpoint,
//! built once from a validated config and swapped whole on reload.

mod reserved;
mod router;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::config::Service;
use crate::proxy::backend::Inbound;
use crate::proxy::client::{self, Client};
use crate::proxy::pipeline::{COMPLETED, Common};
use crate::proxy::{Body, full};
use router::{Lookup, Router, Target};

/// Header naming the gateway build on every response, unless `hide_version_header`.
pub static VERSION_HEADER: HeaderName = HeaderName::from_static("x-weir");

/// Why a config could not be turned into a runtime.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot route {path}: {reason}")]
    Route { path: String, reason: String },
    #[error("cannot set up the backend client: {0}")]
    Client(#[from] rustls::Error),
    #[error("{0}")]
    Policy(String),
}

/// Switches chosen on the command line rather than in the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// `run -d`: turn on `/__debug/` whatever the config says.
    pub debug: bool,
}

/// Everything needed to answer requests for one config.
pub struct Runtime {
    router: Router,
    client: Client,
    common: Common,
    max_body_bytes: usize,
    read_timeout: Option<std::time::Duration>,
    max_idle_per_host: usize,
    front: crate::policy::Front,
    metrics: crate::telemetry::Registry,
    /// The service's `auth/api-keys`, where a bundle's keyring goes.
    api_keys: Option<Arc<crate::policy::apikeys::ApiKeys>>,
    access_log: Option<crate::telemetry::access::AccessLog>,
    /// Traces, when a collector takes them.
    tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
}

impl Runtime {
    /// Compiles a validated config.
    pub fn compile(service: &Service, flags: Flags) -> Result<Self, CompileError> {
        Self::compile_after(service, flags, None)
    }

    /// Compiles a config that replaces `previous`, keeping its backend connection pool
    /// when the pool settings did not change, so a reload does not reconnect.
    pub fn compile_after(service: &Service, flags: Flags, previous: Option<&Runtime>) -> Result<Self, CompileError> {
        let client = match previous {
            Some(p) if p.max_idle_per_host == service.max_idle_connections_per_host => p.client.clone(),
            _ => client::build(service.max_idle_connections_per_host)?,
        };
        let version_header = (!service.router.hide_version_header).then(|| {
            (VERSION_HEADER.clone(), HeaderValue::from_static(concat!("Version ", env!("CARGO_PKG_VERSION"))))
        });
        let common = Common {
            return_error_msg: service.router.return_error_msg,
            version_header,
            max_response_bytes: service.server.max_backend_response_bytes,
            compression: match service.extra_config.get("weir/compression") {
                Some(v) => Some(std::sync::Arc::new(
                    crate::policy::compress::Compression::compile(v, "extra_config.weir/compression").map_err(|p| {
                        CompileError::Policy(p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
                    })?,
                )),
                None => None,
            },
        };
        let policies = crate::policy::ServicePolicies::build(&service.extra_config).map_err(CompileError::Policy)?;
        let mut router = Router::compile(service, flags, &common, &policies)?;
        let tracer = crate::telemetry::trace::Tracer::from_service(
            &service.extra_config,
            previous.and_then(|p| p.tracer.as_ref()),
        );
        let mut metrics = match previous {
            Some(p) => {
                router.adopt_state(&p.router);
                router.adopt_stats(&p.metrics);
                let mut registry = router.registry();
                // The counters go on, so their cumulative series keep their start.
                registry.started = p.metrics.started;
                registry
            }
            None => router.registry(),
        };
        metrics.spans = tracer.as_ref().map(|t| t.queue().clone());
        Ok(Self {
            router,
            client,
            common,
            max_body_bytes: service.server.max_body_bytes,
            read_timeout: service.server.read_timeout,
            max_idle_per_host: service.max_idle_connections_per_host,
            front: crate::policy::Front::build(&service.extra_config).map_err(CompileError::Policy)?,
            metrics,
            api_keys: policies.api_keys().cloned(),
            access_log: crate::telemetry::access::AccessLog::from_service(service),
            tracer,
        })
    }

    /// Installs a bundle's keyring (keys issued at run time), keeping the plan counters
    /// of keys that `previous` already had. Returns false when the config declares no
    /// `auth/api-keys` for the keys to serve.
    pub fn install_keyring(
        &self,
        entries: &[crate::bundle::KeyringEntry],
        plans: &std::collections::BTreeMap<String, crate::bundle::PlanLimits>,
        previous: Option<&Runtime>,
    ) -> bool {
        let Some(keys) = &self.api_keys else {
            return entries.is_empty();
        };
        let before = previous.and_then(|p| p.api_keys.as_ref()).map(|k| k.keyring());
        keys.install(crate::policy::keyring::Keyring::build(entries, plans, before.as_deref(), keys.shares_quotas()));
        true
    }

    /// Answers one request. Never fails: every problem becomes a response. The body is
    /// hyper's (TLS, HTTP/2) or the gateway's own HTTP/1.1 connection's; it is read only
    /// by an endpoint that takes one.
    pub async fn handle<B: RequestBody>(&self, request: Request<B>, remote: SocketAddr) -> Response<Body> {
        let started = self.access_log.as_ref().map(|_| std::time::Instant::now());
        let (parts, body) = request.into_parts();
        let client_ip = self.front.client_ip(remote.ip(), &parts.headers);
        let response = match self.front.intercept(&parts, client_ip) {
            Some(answer) => {
                if answer.status().is_client_error() || answer.status().is_server_error() {
                    self.metrics.front.refused(crate::telemetry::Refusal::from_status(answer.status().as_u16()));
                }
                answer
            }
            None => {
                let mut response = self.route(&parts, body, client_ip).await;
                if self.front.decorates() {
                    crate::proxy::settle(&mut response);
                    self.front.decorate(&parts.headers, response.headers_mut());
                }
                response
            }
        };
        if let (Some(log), Some(started)) = (&self.access_log, started) {
            let status = response.status().as_u16();
            log.record(&parts.method, parts.uri.path(), status, started.elapsed(), client_ip);
        }
        response
    }

    async fn route<B: RequestBody>(
        &self,
        parts: &http::request::Parts,
        body: B,
        client_ip: std::net::IpAddr,
    ) -> Response<Body> {
        let route = match self.router.lookup(parts.uri.path(), &parts.method) {
            Lookup::Found(route) => route,
            Lookup::Redirect(location) => return self.redirect(parts, location),
            Lookup::MethodNotAllowed(allow) => {
                return self.error_page(StatusCode::METHOD_NOT_ALLOWED, Some(allow));
            }
            Lookup::NotFound => return self.error_page(StatusCode::NOT_FOUND, None),
            Lookup::Options(allow) => {
                let mut r = Response::new(full(Bytes::new()));
                r.headers_mut().insert(header::ALLOW, allow);
                return r;
            }
        };
        match route.target {
            Target::Health => reserved::health(),
            Target::Debug => reserved::debug(),
            Target::Echo => match self.read_body(body, None).await {
                Ok(body) => reserved::echo(parts, &body),
                Err(status) => self.error_page(status, None),
            },
            Target::Endpoint(pipeline) => {
                let started = std::time::Instant::now();
                let trace = self.tracer.as_ref().map(|t| t.start(&parts.headers));
                let response = self.endpoint(pipeline, &route.params, parts, body, client_ip, trace.as_ref()).await;
                let status = response.status().as_u16();
                pipeline.stats().record(status, started.elapsed());
                if let Some(trace) = trace {
                    trace.finish(&parts.method, pipeline.stats(), status);
                }
                response
            }
        }
    }

    async fn endpoint<B: RequestBody>(
        &self,
        pipeline: &crate::proxy::pipeline::Pipeline,
        params: &[&str],
        parts: &http::request::Parts,
        body: B,
        client_ip: std::net::IpAddr,
        trace: Option<&crate::telemetry::trace::TraceContext<'_>>,
    ) -> Response<Body> {
        let admitted = match pipeline.admit(parts, client_ip, params).await {
            Ok(a) => a,
            Err(refusal) => return refusal,
        };
        let body = match self.read_body(body, pipeline.max_body()).await {
            Ok(b) => b,
            Err(status) => {
                pipeline.stats().refused(crate::telemetry::Refusal::from_status(status.as_u16()));
                return self.error_page(status, None);
            }
        };
        if let Err(refusal) = pipeline.check_body(&body) {
            return refusal;
        }
        let host = parts
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        let inbound = Inbound {
            method: &parts.method,
            params,
            query: parts.uri.query(),
            headers: &parts.headers,
            host: host.as_ref(),
            body,
            client_ip,
            claims: admitted.claims.as_deref(),
            extra_headers: &admitted.backend_headers,
            trace,
        };
        let mut response = pipeline.serve(&self.client, &inbound, parts.headers.get(header::ACCEPT)).await;
        if !admitted.response_headers.is_empty() {
            crate::proxy::settle(&mut response);
        }
        for (name, value) in admitted.response_headers {
            response.headers_mut().insert(name, value);
        }
        response
    }

    /// Every counter in the Prometheus text format.
    /// This runtime's counters.
    /// The tracer, when traces are exported.
    pub fn tracer(&self) -> Option<&Arc<crate::telemetry::trace::Tracer>> {
        self.tracer.as_ref()
    }

    pub fn metrics(&self) -> &crate::telemetry::Registry {
        &self.metrics
    }

    /// Requests per API-key consumer (keyring keys), cumulative since each one's start.
    pub fn consumer_usage(&self) -> Vec<std::sync::Arc<crate::policy::keyring::Usage>> {
        self.api_keys.as_ref().map(|k| k.keyring().usage().to_vec()).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Reads a request body up to the configured limit: 413 above it, 408 when it
    /// takes longer than `read_timeout`, 400 when the client breaks off.
    async fn read_body<B: RequestBody>(&self, body: B, limit: Option<usize>) -> Result<Bytes, StatusCode> {
        let max = limit.unwrap_or(self.max_body_bytes);
        if body.is_end_stream() {
            return Ok(Bytes::new());
        }
        if body.size_hint().lower() > max as u64 {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let read = Limited::new(body, max).collect();
        let result = match self.read_timeout {
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| StatusCode::REQUEST_TIMEOUT)?,
            None => read.await,
        };
        match result {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(StatusCode::PAYLOAD_TOO_LARGE),
            Err(_) => Err(StatusCode::BAD_REQUEST),
        }
    }

    /// 404 and 405 as KrakenD writes them, or the configured `error_body`.
    fn error_page(&self, status: StatusCode, allow: Option<HeaderValue>) -> Response<Body> {
        let custom = match status {
            StatusCode::NOT_FOUND => self.router.error_body_404.as_ref(),
            StatusCode::METHOD_NOT_ALLOWED => self.router.error_body_405.as_ref(),
            _ => None,
        };
        let (body, content_type) = match custom {
            Some(body) => (body.clone(), crate::proxy::render::JSON),
            None => {
                let text = match status {
                    StatusCode::NOT_FOUND => "404 page not found",
                    StatusCode::METHOD_NOT_ALLOWED => "405 method not allowed",
                    StatusCode::PAYLOAD_TOO_LARGE => "413 request body too large",
                    StatusCode::REQUEST_TIMEOUT => "408 request timeout",
                    _ => "400 bad request",
                };
                (Bytes::from_static(text.as_bytes()), HeaderValue::from_static("text/plain"))
            }
        };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(COMPLETED.clone(), HeaderValue::from_static("false"));
        if let Some((name, value)) = &self.common.version_header {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(allow) = allow {
            headers.insert(header::ALLOW, allow);
        }
        response
    }

    /// Redirects to the canonical path: 301 for GET, 307 otherwise (so the method and
    /// body are kept), as KrakenD's router does.
    fn redirect(&self, request: &http::request::Parts, mut location: String) -> Response<Body> {
        if let Some(q) = request.uri.query() {
            location.push('?');
            location.push_str(q);
        }
        let get = request.method == Method::GET;
        let status = if get { StatusCode::MOVED_PERMANENTLY } else { StatusCode::TEMPORARY_REDIRECT };
        let Ok(value) = HeaderValue::try_from(location.as_str()) else {
            return self.error_page(StatusCode::NOT_FOUND, None);
        };
        let body = if get { format!("<a href=\"{location}\">Moved Permanently</a>.\n\n") } else { String::new() };
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(header::LOCATION, value);
        if get {
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        }
        response
    }
}

/// A request body as a server hands it to [`Runtime::handle`].
pub trait RequestBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send {}

impl<B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send> RequestBody for B {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The runtime a server answers with, replaceable while it serves.
pub type Shared = Arc<arc_swap::ArcSwap<Runtime>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_runtime_keeps_counting_into_the_old_counters() {
        let service = |endpoints: &str| {
            let text = format!(r#"{{"version": 3, "host": ["http://127.0.0.1:9"], "endpoints": [{endpoints}]}}"#);
            crate::config::parse(&text, crate::config::Format::Json, |_| None).service.unwrap()
        };
        let a = r#"{"endpoint": "/a", "backend": [{"url_pattern": "/"}]}"#;
        let b = r#"{"endpoint": "/b", "backend": [{"url_pattern": "/"}]}"#;
        let first = Runtime::compile(&service(a), Flags::default()).unwrap();
        first.metrics.endpoints[0].record(200, std::time::Duration::from_millis(1));
        let second = Runtime::compile_after(&service(&format!("{a}, {b}")), Flags::default(), Some(&first)).unwrap();
        assert_eq!(second.metrics.started, first.metrics.started, "the cumulative series go on");
        let count = |rt: &Runtime, route: &str| {
            rt.metrics.endpoints.iter().find(|e| e.route() == route).map(|e| e.latency(2).snapshot().0)
        };
        assert_eq!(count(&second, "/a"), Some(1), "/a kept its count");
        assert_eq!(count(&second, "/b"), Some(0), "/b is new");
    }
}
