//! The pooled keep-alive HTTP client shared by every backend of a runtime.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The backend client: HTTP/1.1 with keep-alive, HTTPS through rustls.
pub type Client = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Idle backend connections are closed after this; Go's transport uses 90 s, and
/// matching it keeps KrakenD users' backend keep-alive settings valid.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bounded so that a black-holed backend host fails fast instead of eating the whole
/// endpoint timeout in the TCP handshake of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a client keeping at most `max_idle_per_host` idle connections per backend.
pub fn build(max_idle_per_host: usize) -> Result<Client, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
