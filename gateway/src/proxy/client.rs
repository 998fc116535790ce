//! The pooled keep-alive HTTP client shared by every backend of a runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::upstream::Upstreams;

/// hyper's pooled client: HTTPS, and bodies streamed through to clients (`no-op`).
type Pooled = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The backend client: HTTP/1.1 with keep-alive, HTTPS through rustls. Buffered calls
/// to plain-HTTP backends go through [`Upstreams`], driven by the request's own task.
#[derive(Clone)]
pub struct Client {
    pooled: Pooled,
    upstreams: Arc<Upstreams>,
}

impl Client {
    /// Sends a request through hyper's pooled client; the body streams as it arrives.
    pub fn request(&self, request: http::Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        self.pooled.request(request)
    }

    /// The plain-HTTP connections driven by request tasks.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }
}

/// Idle backend connections are closed after this; Go's transport uses 90 s, and
/// matching it keeps KrakenD users' backend keep-alive settings valid.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bounded so that a black-holed backend host fails fast instead of eating the whole
/// endpoint timeout in the TCP handshake of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP version a connector negotiates.
pub enum Protocol {
    Http1,
    /// HTTP/2 only: prior knowledge on cleartext, ALPN `h2` with TLS (gRPC).
    Http2,
}

/// Plain TCP (no delay, bounded connect) or TLS with the Mozilla roots, by the URL's scheme.
pub fn connector(
    connect_timeout: Duration,
    protocol: Protocol,
) -> Result<HttpsConnector<HttpConnector>, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http();
    Ok(match protocol {
        Protocol::Http1 => builder.enable_http1().wrap_connector(http),
        Protocol::Http2 => builder.enable_http2().wrap_connector(http),
    })
}

/// Builds a client keeping at most `max_idle_per_host` idle connections per backend.
pub fn build(max_idle_per_host: usize) -> Result<Client, rustls::Error> {
    let https = connector(CONNECT_TIMEOUT, Protocol::Http1)?;
    let pooled = HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https);
    Ok(Client { pooled, upstreams: Arc::new(Upstreams::new(max_idle_per_host, CONNECT_TIMEOUT, POOL_IDLE_TIMEOUT)) })
}
