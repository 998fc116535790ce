//! OTLP metrics (`ExportMetricsServiceRequest`): request durations per endpoint and status
//! class as cumulative histograms, under OpenTelemetry's `http.server.request.duration`
//! name, with backend calls, connections, refusals and breakers beside them. Sent as
//! OTLP/HTTP JSON (`POST /v1/metrics`) or over gRPC; any OpenTelemetry Collector reads
//! them, and so does Weir's control plane.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Value, json};

use super::otlp_proto::Signal;
use super::{LATENCY_BOUNDS_MS, Registry};

/// The metric name OpenTelemetry's HTTP semantic conventions give server durations.
pub const DURATION_METRIC: &str = "http.server.request.duration";

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

/// Backend calls: OpenTelemetry's name for client request durations.
pub const BACKEND_DURATION_METRIC: &str = "http.client.request.duration";

/// Client connections open now, a gauge.
pub const OPEN_CONNECTIONS_METRIC: &str = "weir.server.open_connections";

/// Requests refused by auth, rate limits and the other checks, a cumulative sum.
pub const REFUSALS_METRIC: &str = "weir.requests.refused";

/// Each circuit breaker's state, a gauge.
pub const BREAKER_METRIC: &str = "weir.circuit_breaker.state";

/// Finished spans dropped because the export queue was full, a cumulative sum.
pub const SPANS_DROPPED_METRIC: &str = "weir.traces.spans_dropped";

/// Requests made with each consumer's API keys (keyring keys), a cumulative sum.
pub const CONSUMER_METRIC: &str = "weir.consumer.requests";

/// The request body of one export. `resource` are the resource attributes (service,
/// gateway, environment, node, config serial).
pub fn export_json(registry: &Registry, resource: &[(&str, String)], now: SystemTime) -> String {
    export_with_usage(registry, &[], resource, now)
}

/// The same, with the requests of each API-key consumer.
pub fn export_with_usage(
    registry: &Registry,
    usage: &[std::sync::Arc<crate::policy::keyring::Usage>],
    resource: &[(&str, String)],
    now: SystemTime,
) -> String {
    export_value(registry, usage, resource, now).to_string()
}

/// The export as an OTLP/JSON value, which both encodings are written from.
fn export_value(
    registry: &Registry,
    usage: &[std::sync::Arc<crate::policy::keyring::Usage>],
    resource: &[(&str, String)],
    now: SystemTime,
) -> Value {
    // Bounds in seconds, as the semantic conventions want durations.
    #[allow(clippy::cast_precision_loss)]
    let bounds: Vec<f64> = LATENCY_BOUNDS_MS.iter().map(|ms| *ms as f64 / 1000.0).collect();
    let start = nanos(registry.started);
    let now = nanos(now);
    let histogram = |count: u64, sum: f64, buckets: &[u64], attributes: Vec<Value>| {
        json!({
            "attributes": attributes,
            "startTimeUnixNano": start,
            "timeUnixNano": now,
            // OTLP's JSON encoding writes 64-bit integers as strings.
            "count": count.to_string(),
            "sum": sum,
            "bucketCounts": buckets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "explicitBounds": bounds,
        })
    };
    let mut points = Vec::new();
    for e in &registry.endpoints {
        for class in 1..=5 {
            let (count, sum, buckets) = e.latency(class).snapshot();
            if count == 0 {
                continue;
            }
            points.push(histogram(
                count,
                sum,
                &buckets,
                vec![
                    attribute("http.route", e.route()),
                    attribute("http.request.method", e.method()),
                    attribute("weir.status_class", &format!("{class}xx")),
                ],
            ));
        }
    }
    let mut backend_points = Vec::new();
    for b in &registry.backends {
        for (outcome, latency) in b.outcomes() {
            let (count, sum, buckets) = latency.snapshot();
            if count == 0 {
                continue;
            }
            backend_points.push(histogram(
                count,
                sum,
                &buckets,
                vec![
                    attribute("http.route", b.route()),
                    attribute("http.request.method", b.method()),
                    attribute("weir.backend", b.url_pattern()),
                    attribute("server.address", b.host()),
                    attribute("weir.status_class", outcome),
                ],
            ));
        }
    }
    let mut refusal_points = Vec::new();
    for e in &registry.endpoints {
        for (reason, n) in e.refusals() {
            if n > 0 {
                refusal_points.push(json!({
                    "attributes": [
                        attribute("http.route", e.route()),
                        attribute("http.request.method", e.method()),
                        attribute("weir.reason", reason),
                    ],
                    "startTimeUnixNano": start,
                    "timeUnixNano": now,
                    "asInt": n.to_string(),
                }));
            }
        }
    }
    for (reason, n) in registry.front.refusals() {
        if n > 0 {
            refusal_points.push(json!({
                "attributes": [attribute("weir.reason", reason)],
                "startTimeUnixNano": start,
                "timeUnixNano": now,
                "asInt": n.to_string(),
            }));
        }
    }
    let breaker_points: Vec<Value> = registry
        .breakers
        .iter()
        .map(|(name, b)| {
            let state = match b.state() {
                crate::policy::breaker::BreakerState::Closed => 0,
                crate::policy::breaker::BreakerState::Open => 1,
                crate::policy::breaker::BreakerState::HalfOpen => 2,
            };
            json!({"attributes": [attribute("weir.backend", name)], "timeUnixNano": now, "asInt": state.to_string()})
        })
        .collect();
    let attributes: Vec<Value> = resource.iter().map(|(k, v)| attribute(k, v)).collect();
    let mut metrics = vec![
        json!({
            "name": DURATION_METRIC,
            "unit": "s",
            "description": "Time to response headers, by route and status class",
            "histogram": {"aggregationTemporality": 2, "dataPoints": points},
        }),
        json!({
            "name": BACKEND_DURATION_METRIC,
            "unit": "s",
            "description": "Time of each backend call, by backend and status class (error: no answer)",
            "histogram": {"aggregationTemporality": 2, "dataPoints": backend_points},
        }),
        json!({
            "name": OPEN_CONNECTIONS_METRIC,
            "unit": "{connection}",
            "description": "Client connections open now",
            "gauge": {"dataPoints": [{"timeUnixNano": now, "asInt": super::OpenConnection::count().to_string()}]},
        }),
        json!({
            "name": REFUSALS_METRIC,
            "unit": "{request}",
            "description": "Requests refused by a policy before reaching backends, by reason",
            "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": refusal_points},
        }),
    ];
    if !breaker_points.is_empty() {
        metrics.push(json!({
            "name": BREAKER_METRIC,
            "unit": "1",
            "description": "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            "gauge": {"dataPoints": breaker_points},
        }));
    }
    if let Some(spans) = &registry.spans {
        metrics.push(json!({
            "name": SPANS_DROPPED_METRIC,
            "unit": "{span}",
            "description": "Finished spans dropped because the export queue was full",
            "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [
                {"startTimeUnixNano": start, "timeUnixNano": now, "asInt": spans.dropped().to_string()}]},
        }));
    }
    if !usage.is_empty() {
        let points: Vec<Value> = usage
            .iter()
            .map(|u| {
                json!({
                    "attributes": [attribute("weir.consumer", &u.consumer)],
                    "startTimeUnixNano": nanos(u.started),
                    "timeUnixNano": now,
                    "asInt": u.requests.load(std::sync::atomic::Ordering::Relaxed).to_string(),
                })
            })
            .collect();
        metrics.push(json!({
            "name": CONSUMER_METRIC,
            "unit": "{request}",
            "description": "Requests admitted with each consumer's API keys",
            "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": points},
        }));
    }
    json!({"resourceMetrics": [{
        "resource": {"attributes": attributes},
        "scopeMetrics": [{"scope": {"name": "weir", "version": crate::VERSION}, "metrics": metrics}],
    }]})
}

/// How an exporter talks to its collector: KrakenD's `use_http` picks OTLP/HTTP (JSON),
/// its absence OTLP over gRPC (protobuf on HTTP/2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// Where one signal of one `exporters.otlp[]` entry goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The OTLP/HTTP path (`/v1/metrics`) or the gRPC method.
    pub uri: http::Uri,
    pub protocol: Protocol,
    /// How often metrics are sent: `custom_metric_reporting_period`, else
    /// `metric_reporting_period`. (Spans go as they finish.)
    pub period: Duration,
}

/// `telemetry/opentelemetry` `exporters.otlp[]`: the collectors to send metrics and
/// spans to.
pub struct Collectors {
    /// Where metrics go, unless an exporter sets `disable_metrics`.
    pub metrics: Vec<Target>,
    /// Where spans go, unless an exporter sets `disable_traces`.
    pub traces: Vec<Target>,
    pub service_name: String,
}

/// KrakenD's default reporting period.
const DEFAULT_PERIOD_SECS: u64 = 30;
/// The collectors' standard ports.
const GRPC_PORT: u64 = 4317;
const HTTP_PORT: u64 = 4318;

pub fn collectors(extra: &serde_json::Map<String, Value>) -> Collectors {
    let otel = extra.get("telemetry/opentelemetry");
    let period = otel
        .and_then(|t| t.get("metric_reporting_period"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_PERIOD_SECS)
        .max(1);
    let mut metrics = Vec::new();
    let mut traces = Vec::new();
    for e in otel.and_then(|t| t.pointer("/exporters/otlp")).and_then(Value::as_array).into_iter().flatten() {
        let host = e.get("host").and_then(Value::as_str).unwrap_or("localhost");
        let protocol =
            if e.get("use_http").and_then(Value::as_bool) == Some(true) { Protocol::Http } else { Protocol::Grpc };
        let default_port = if protocol == Protocol::Http { HTTP_PORT } else { GRPC_PORT };
        let port = e.get("port").and_then(Value::as_u64).filter(|p| *p > 0).unwrap_or(default_port);
        let host = if host.contains("://") { host.to_owned() } else { format!("http://{host}") };
        let flag = |key: &str| e.get(key).and_then(Value::as_bool) == Some(true);
        let own_period = e.get("custom_metric_reporting_period").and_then(Value::as_u64).filter(|p| *p > 0);
        for (disabled, signal, into) in [
            (flag("disable_metrics"), Signal::Metrics, &mut metrics),
            (flag("disable_traces"), Signal::Traces, &mut traces),
        ] {
            if disabled {
                continue;
            }
            let path = if protocol == Protocol::Http { signal.http_path() } else { signal.grpc_path() };
            match format!("{}:{port}{path}", host.trim_end_matches('/')).parse() {
                Ok(uri) => {
                    into.push(Target { uri, protocol, period: Duration::from_secs(own_period.unwrap_or(period)) })
                }
                Err(e) => tracing::warn!(host, error = %e, "OTLP exporter skipped"),
            }
        }
    }
    Collectors {
        metrics,
        traces,
        service_name: otel.and_then(|t| t.get("service_name")).and_then(Value::as_str).unwrap_or("weir").to_owned(),
    }
}

/// One export, in the forms its collectors take.
pub struct Payload {
    json: Bytes,
    /// The framed protobuf message, when a gRPC collector takes it (or why it could not
    /// be written).
    grpc: Option<Result<Bytes, String>>,
}

impl Payload {
    /// `json` is the OTLP/JSON export request, already written; `grpc` whether to write the
    /// protobuf too (from the JSON read back).
    pub fn new(signal: Signal, json: String, grpc: bool) -> Self {
        let grpc = grpc.then(|| {
            let export: Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            Self::framed(signal, &export)
        });
        Payload { json: Bytes::from(json), grpc }
    }

    /// The same from the export as a value: each encoding is written from it once.
    pub fn from_value(signal: Signal, export: &Value, grpc: bool) -> Self {
        Payload { json: Bytes::from(export.to_string()), grpc: grpc.then(|| Self::framed(signal, export)) }
    }

    fn framed(signal: Signal, export: &Value) -> Result<Bytes, String> {
        Ok(Bytes::from(super::otlp_proto::grpc_frame(&super::otlp_proto::encode(signal, export)?)?))
    }
}

type GrpcClient = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends exports to collectors: OTLP/HTTP over the pooled HTTP/1.1 client, OTLP/gRPC over
/// HTTP/2 (cleartext, or TLS for `https://` hosts).
pub struct Sender {
    http: crate::proxy::client::Client,
    grpc: GrpcClient,
}

/// A collector that takes longer than this to answer an export is given up on.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Sender {
    pub fn new() -> Option<Self> {
        let http = crate::proxy::client::build(1).ok()?;
        let https = crate::proxy::client::connector(EXPORT_TIMEOUT, crate::proxy::client::Protocol::Http2).ok()?;
        let grpc = HyperClient::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Some(Sender { http, grpc })
    }

    /// Sends `payload` to `target`; failures are logged (the next export carries the
    /// cumulative figures, and spans are best-effort).
    pub async fn send(&self, target: &Target, signal: Signal, payload: &Payload) {
        let what = match signal {
            Signal::Metrics => "metrics",
            Signal::Traces => "spans",
        };
        let url = &target.uri;
        let outcome = match target.protocol {
            Protocol::Http => tokio::time::timeout(EXPORT_TIMEOUT, self.post_json(url, payload.json.clone())).await,
            Protocol::Grpc => match &payload.grpc {
                Some(Ok(body)) => tokio::time::timeout(EXPORT_TIMEOUT, self.grpc_call(url, body.clone())).await,
                Some(Err(e)) => Ok(Err(format!("could not be written as protobuf: {e}"))),
                None => Ok(Err("no protobuf form was prepared".to_owned())),
            },
        };
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%url, error = %e, "OTLP collector did not take the {what}"),
            Err(_) => tracing::warn!(%url, "OTLP collector did not answer in {} s", EXPORT_TIMEOUT.as_secs()),
        }
    }

    async fn post_json(&self, url: &http::Uri, body: Bytes) -> Result<(), String> {
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = url.clone();
        request.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let response = self.http.request(request).await.map_err(|e| format!("unreachable: {e}"))?;
        if response.status().is_success() { Ok(()) } else { Err(format!("status {}", response.status())) }
    }

    /// A unary gRPC call: the status is in the trailers (or, for an immediate error, in
    /// the headers).
    async fn grpc_call(&self, url: &http::Uri, framed: Bytes) -> Result<(), String> {
        let mut request = http::Request::new(Full::new(framed));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = url.clone();
        let headers = request.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("weir/", env!("CARGO_PKG_VERSION"))),
        );
        let response = self.grpc.request(request).await.map_err(|e| format!("unreachable: {e}"))?;
        let (parts, body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        let collected = body.collect().await.map_err(|e| format!("broken answer: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let header = |name: &str| trailers.get(name).or_else(|| parts.headers.get(name)).and_then(|v| v.to_str().ok());
        match header("grpc-status") {
            Some("0") => Ok(()),
            Some(code) => Err(format!(
                "gRPC status {code}: {}",
                percent_encoding::percent_decode_str(header("grpc-message").unwrap_or("")).decode_utf8_lossy()
            )),
            None => Err("no gRPC status in the answer".to_owned()),
        }
    }
}

/// Sends the current runtime's metrics to `target` every period, forever.
pub async fn export_metrics(target: Target, service_name: String, runtime: crate::runtime::Shared) {
    let Some(sender) = Sender::new() else { return };
    let instance = crate::node::hostname().unwrap_or_default();
    let resource = [("service.name", service_name), ("service.instance.id", instance)];
    let mut tick = tokio::time::interval(target.period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let current = runtime.load_full();
        let export = export_value(current.metrics(), &current.consumer_usage(), &resource, SystemTime::now());
        let payload = Payload::from_value(Signal::Metrics, &export, target.protocol == Protocol::Grpc);
        sender.send(&target, Signal::Metrics, &payload).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::telemetry::EndpointStats;

    #[test]
    fn collectors_come_from_krakend_settings() {
        let extra = serde_json::json!({"telemetry/opentelemetry": {"service_name": "shop", "metric_reporting_period": 5,
            "exporters": {"otlp": [{"name": "a", "host": "collector", "port": 4318, "use_http": true},
                                   {"name": "b", "host": "agent", "custom_metric_reporting_period": 60},
                                   {"name": "c", "host": "https://otlp.example.com", "port": 443, "use_http": false}]}}});
        let c = collectors(extra.as_object().unwrap());
        let shown = |targets: &[Target]| {
            targets.iter().map(|t| (t.uri.to_string(), t.protocol, t.period.as_secs())).collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&c.metrics),
            [
                ("http://collector:4318/v1/metrics".to_owned(), Protocol::Http, 5),
                // gRPC without use_http, on its standard port unless one is given.
                (
                    "http://agent:4317/opentelemetry.proto.collector.metrics.v1.MetricsService/Export".to_owned(),
                    Protocol::Grpc,
                    60
                ),
                (
                    "https://otlp.example.com:443/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                        .to_owned(),
                    Protocol::Grpc,
                    5
                ),
            ]
        );
        assert_eq!(c.traces[0].uri.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(
            c.traces[1].uri.to_string(),
            "http://agent:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert_eq!(c.service_name, "shop");
        let extra = serde_json::json!({"telemetry/opentelemetry": {"exporters": {"otlp": [
            {"name": "m", "host": "metrics-only", "port": 4318, "use_http": true, "disable_traces": true},
            {"name": "t", "host": "traces-only", "port": 4318, "use_http": true, "disable_metrics": true}]}}});
        let c = collectors(extra.as_object().unwrap());
        assert_eq!(shown(&c.metrics), [("http://metrics-only:4318/v1/metrics".to_owned(), Protocol::Http, 30)]);
        assert_eq!(shown(&c.traces), [("http://traces-only:4318/v1/traces".to_owned(), Protocol::Http, 30)]);
    }

    #[test]
    fn a_real_export_is_written_as_protobuf_for_grpc_collectors() {
        let stats = Arc::new(EndpointStats::new("/orders/{id}", "GET"));
        stats.record(200, Duration::from_millis(3));
        let registry = Registry { endpoints: vec![stats], ..Registry::default() };
        let json = export_json(&registry, &[("service.name", "weir".into())], SystemTime::now());
        let payload = Payload::new(Signal::Metrics, json.clone(), true);
        let framed = payload.grpc.unwrap().unwrap();
        assert_eq!(framed[0], 0, "not compressed");
        let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, framed.len() - 5);
        assert_eq!(payload.json, json.as_bytes(), "HTTP collectors get the JSON unchanged");
        let value: Value = serde_json::from_str(&json).unwrap();
        let direct = Payload::from_value(Signal::Metrics, &value, true);
        assert_eq!(direct.json, payload.json);
        assert_eq!(direct.grpc.unwrap().unwrap(), framed, "the same bytes from the value as from the text");
        assert!(
            Payload::new(Signal::Metrics, json, false).grpc.is_none(),
            "protobuf only when a gRPC collector wants it"
        );
    }

    #[test]
    fn exports_cumulative_histograms_per_route_and_status_class() {
        let stats = Arc::new(EndpointStats::new("/orders/{id}", "GET"));
        stats.record(200, Duration::from_millis(3));
        stats.record(200, Duration::from_millis(40));
        stats.record(503, Duration::from_millis(2000));
        let registry = Registry { endpoints: vec![stats], ..Registry::default() };
        let body: Value =
            serde_json::from_str(&export_json(&registry, &[("service.name", "weir".into())], SystemTime::now()))
                .unwrap();
        let metric = &body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0];
        assert_eq!(metric["name"], DURATION_METRIC);
        assert_eq!(metric["histogram"]["aggregationTemporality"], 2);
        let points = metric["histogram"]["dataPoints"].as_array().unwrap();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0]["count"], "2");
        assert_eq!(points[0]["bucketCounts"][0], "1", "3 ms is in the first bucket");
        assert_eq!(points[0]["bucketCounts"][3], "1", "40 ms is in the 50 ms bucket");
        assert_eq!(points[1]["attributes"][2]["value"]["stringValue"], "5xx");
        assert_eq!(points[1]["bucketCounts"].as_array().unwrap().len(), LATENCY_BOUNDS_MS.len() + 1);
        assert_eq!(body["resourceMetrics"][0]["resource"]["attributes"][0]["value"]["stringValue"], "weir");
    }

    #[test]
    fn backend_calls_count_by_outcome_and_unanswered_calls_as_errors() {
        let stats = Arc::new(crate::telemetry::BackendStats::new("/orders/{id}", "GET", 0, "/o/{id}", "db:80"));
        stats.start().answered(200);
        stats.start().answered(404);
        // A call abandoned before an answer (a reset, a timeout): the timer is dropped.
        drop(stats.start());
        let registry = Registry { backends: vec![stats], ..Registry::default() };
        let body: Value = serde_json::from_str(&export_json(&registry, &[], SystemTime::now())).unwrap();
        let metrics = body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].as_array().unwrap();
        let calls = metrics.iter().find(|m| m["name"] == BACKEND_DURATION_METRIC).unwrap();
        let outcomes: Vec<(&str, &str)> = calls["histogram"]["dataPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["attributes"][4]["value"]["stringValue"].as_str().unwrap(), p["count"].as_str().unwrap()))
            .collect();
        assert_eq!(outcomes, [("2xx", "1"), ("4xx", "1"), ("error", "1")]);
        let text = registry.render();
        assert!(text.contains(
            "weir_backend_request_duration_seconds_count{route=\"/orders/{id}\",method=\"GET\",backend=\"/o/{id}\",host=\"db:80\",outcome=\"error\"} 1"
        ), "{text}");
    }
}
