//! The CLI's side of the management API (`push`, `promote`): what a CI pipeline runs.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

pub struct ApiClient {
    base: String,
    token: String,
    client: weir_gateway::proxy::client::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> Result<Self, String> {
        let client = weir_gateway::proxy::client::build(1).map_err(|e| e.to_string())?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), token: token.trim().to_owned(), client })
    }

    /// Sends a request and returns the status and the JSON body (`null` when empty).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Value), String> {
        let url = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("{url}: {e}"))?;
        let response = tokio::time::timeout(std::time::Duration::from_secs(60), self.client.request(request))
            .await
            .map_err(|_| format!("{url}: no answer within 60 s"))?
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| format!("{url}: {e}"))?.to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }
}

/// The `message` of an API error body, or the body itself.
pub fn error_message(value: &Value) -> String {
    value.get("message").and_then(Value::as_str).map_or_else(|| value.to_string(), str::to_owned)
}
