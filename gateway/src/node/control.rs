//! The node's side of the control-plane API: fetch the bundle, report status.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

use crate::proxy::client::{self, Client};

/// A control plane that does not answer within this is treated as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fetch with an ETag asks the control plane to hold it until a new bundle
/// exists (long poll). Control planes that do not long-poll answer at once.
pub const LONG_POLL: Duration = Duration::from_secs(20);
/// Bundles are configs plus keyrings; anything bigger is not a bundle.
const MAX_BUNDLE_BYTES: usize = 32 * 1024 * 1024;

/// Where and as whom a node talks to its control plane.
#[derive(Clone)]
pub struct ControlPlane {
    client: Client,
    bundle_url: Uri,
    long_poll_url: Uri,
    status_url: Uri,
    metrics_url: Uri,
    authorization: HeaderValue,
}

/// The header a control plane sets on answers to long polls (`?wait=`) it supports.
pub const LONG_POLL_HEADER: &str = "x-weir-long-poll";

/// What a bundle fetch returned.
pub enum Fetched {
    /// Unchanged; `held` when the control plane long-polled (asking again at once is fine).
    NotModified { held: bool },
    /// A bundle; `long_poll` when the control plane holds requests (ask again at once).
    Bundle { bytes: Bytes, etag: Option<HeaderValue>, long_poll: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control-plane URL: {0}")]
    Url(String),
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    #[error("the control plane answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

/// What a node reports after every fetch and as a heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node_id: String,
    pub hostname: String,
    pub version: String,
    pub serial: Option<u64>,
    pub config_digest: Option<String>,
    pub last_fetch_at: Option<String>,
    /// `applied`, `unchanged`, or `rejected: <reason>`.
    pub last_result: String,
    pub reported_at: String,
}

impl ControlPlane {
    pub fn new(base: &str, gateway: &str, environment: &str, node_id: &str, token: &str) -> Result<Self, ControlError> {
        let base = base.trim_end_matches('/');
        let env_url = format!("{base}/api/v1/gateways/{gateway}/environments/{environment}");
        let parse = |u: String| u.parse::<Uri>().map_err(|e| ControlError::Url(format!("{u}: {e}")));
        Ok(Self {
            client: client::build(2).map_err(|e| ControlError::Url(e.to_string()))?,
            bundle_url: parse(format!("{env_url}/bundle"))?,
            long_poll_url: parse(format!("{env_url}/bundle?wait={}", LONG_POLL.as_secs()))?,
            status_url: parse(format!("{env_url}/nodes/{node_id}/status"))?,
            metrics_url: parse(format!("{base}/v1/metrics"))?,
            authorization: HeaderValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|_| ControlError::Url("the node token has characters a header cannot carry".into()))?,
        })
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        answer_within: Duration,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ControlError> {
        let response = tokio::time::timeout(answer_within, self.client.request(request))
            .await
            .map_err(|_| ControlError::Unreachable("timed out".into()))?
            .map_err(|e| ControlError::Unreachable(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, MAX_BUNDLE_BYTES).collect())
            .await
            .map_err(|_| ControlError::Unreachable("timed out reading the response".into()))?
            .map_err(|e| ControlError::Unreachable(e.to_string()))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// Fetches the environment's bundle; `etag` makes an unchanged one cost a 304.
    pub async fn fetch(&self, etag: Option<&HeaderValue>) -> Result<Fetched, ControlError> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = if etag.is_some() { self.long_poll_url.clone() } else { self.bundle_url.clone() };
        request.headers_mut().insert(header::AUTHORIZATION, self.authorization.clone());
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/jose+json, application/json"));
        if let Some(etag) = etag {
            request.headers_mut().insert(header::IF_NONE_MATCH, etag.clone());
        }
        let answer_within = if etag.is_some() { REQUEST_TIMEOUT + LONG_POLL } else { REQUEST_TIMEOUT };
        let (status, headers, body) = self.send(request, answer_within).await?;
        match status {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified { held: headers.contains_key(LONG_POLL_HEADER) }),
            StatusCode::OK => Ok(Fetched::Bundle {
                bytes: body,
                etag: headers.get(header::ETAG).cloned(),
                long_poll: headers.contains_key(LONG_POLL_HEADER),
            }),
            status => {
                Err(ControlError::Status { status, body: String::from_utf8_lossy(&body).chars().take(200).collect() })
            }
        }
    }

    /// Sends an OTLP/HTTP JSON metrics export. Failures are returned for logging only.
    pub async fn export_metrics(&self, body: String) -> Result<(), ControlError> {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.metrics_url.clone();
        request.headers_mut().insert(header::AUTHORIZATION, self.authorization.clone());
        request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (status, _, body) = self.send(request, REQUEST_TIMEOUT).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ControlError::Status { status, body: String::from_utf8_lossy(&body).chars().take(200).collect() })
        }
    }

    /// Reports the node's status. Failures are returned for logging; traffic never waits on them.
    pub async fn report(&self, status: &Status) -> Result<(), ControlError> {
        let body = serde_json::to_vec(status).unwrap_or_default();
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.status_url.clone();
        request.headers_mut().insert(header::AUTHORIZATION, self.authorization.clone());
        request.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let (status, _, body) = self.send(request, REQUEST_TIMEOUT).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ControlError::Status { status, body: String::from_utf8_lossy(&body).chars().take(200).collect() })
        }
    }
}
