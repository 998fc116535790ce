//! OTLP/HTTP metrics in the JSON encoding (`POST /v1/metrics`,
//! `ExportMetricsServiceRequest`): request durations per endpoint and status class as
//! cumulative histograms, under OpenTelemetry's `http.server.request.duration` name.
//! Any OpenTelemetry Collector reads them, and so does Weir's control plane.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

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
    .to_string()
}

/// `telemetry/opentelemetry` `exporters.otlp[]` with `use_http: true`: the collectors
/// to send metrics to, and how often (`metric_reporting_period`, seconds, default 30).
pub struct Collectors {
    /// Where metrics go (`/v1/metrics`), unless an exporter sets `disable_metrics`.
    pub urls: Vec<http::Uri>,
    /// Where spans go (`/v1/traces`), unless an exporter sets `disable_traces`.
    pub trace_urls: Vec<http::Uri>,
    pub period: std::time::Duration,
    pub service_name: String,
}

/// KrakenD's default reporting period.
const DEFAULT_PERIOD_SECS: u64 = 30;

pub fn collectors(extra: &serde_json::Map<String, Value>) -> Collectors {
    let otel = extra.get("telemetry/opentelemetry");
    let mut urls = Vec::new();
    let mut trace_urls = Vec::new();
    for e in otel.and_then(|t| t.pointer("/exporters/otlp")).and_then(Value::as_array).into_iter().flatten() {
        let host = e.get("host").and_then(Value::as_str).unwrap_or("localhost");
        if e.get("use_http").and_then(Value::as_bool) != Some(true) {
            tracing::warn!(
                host,
                "OTLP over gRPC is not supported yet: set \"use_http\": true to export to this collector"
            );
            continue;
        }
        let port = e.get("port").and_then(Value::as_u64).unwrap_or(4318);
        let host = if host.contains("://") { host.to_owned() } else { format!("http://{host}") };
        let flag = |key: &str| e.get(key).and_then(Value::as_bool) == Some(true);
        for (disabled, path, into) in
            [(flag("disable_metrics"), "metrics", &mut urls), (flag("disable_traces"), "traces", &mut trace_urls)]
        {
            if disabled {
                continue;
            }
            match format!("{}:{port}/v1/{path}", host.trim_end_matches('/')).parse() {
                Ok(url) => into.push(url),
                Err(e) => tracing::warn!(host, error = %e, "OTLP exporter skipped"),
            }
        }
    }
    Collectors {
        urls,
        trace_urls,
        period: std::time::Duration::from_secs(
            otel.and_then(|t| t.get("metric_reporting_period"))
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_PERIOD_SECS)
                .max(1),
        ),
        service_name: otel.and_then(|t| t.get("service_name")).and_then(Value::as_str).unwrap_or("weir").to_owned(),
    }
}

/// Sends the current runtime's metrics to each collector every period, forever.
pub async fn export_to_collectors(collectors: Collectors, runtime: crate::runtime::Shared) {
    let Ok(client) = crate::proxy::client::build(1) else { return };
    let instance = crate::node::hostname().unwrap_or_default();
    let resource = [("service.name", collectors.service_name.clone()), ("service.instance.id", instance)];
    let mut tick = tokio::time::interval(collectors.period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let current = runtime.load_full();
        let body = bytes::Bytes::from(export_with_usage(
            current.metrics(),
            &current.consumer_usage(),
            &resource,
            SystemTime::now(),
        ));
        for url in &collectors.urls {
            let mut request = http::Request::new(http_body_util::Full::new(body.clone()));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = url.clone();
            request
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            match tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(r)) if r.status().is_success() => {}
                Ok(Ok(r)) => tracing::warn!(%url, status = %r.status(), "OTLP collector refused the metrics"),
                Ok(Err(e)) => tracing::warn!(%url, error = %e, "OTLP collector unreachable"),
                Err(_) => tracing::warn!(%url, "OTLP collector did not answer in 10 s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::telemetry::EndpointStats;

    #[test]
    fn http_collectors_come_from_krakend_settings() {
        let extra = serde_json::json!({"telemetry/opentelemetry": {"service_name": "shop", "metric_reporting_period": 5,
            "exporters": {"otlp": [{"name": "a", "host": "collector", "port": 4318, "use_http": true},
                                   {"name": "b", "host": "grpc-only", "port": 4317}]}}});
        let c = collectors(extra.as_object().unwrap());
        assert_eq!(c.urls.len(), 1, "gRPC exporters are skipped");
        assert_eq!(c.urls[0].to_string(), "http://collector:4318/v1/metrics");
        assert_eq!(c.trace_urls[0].to_string(), "http://collector:4318/v1/traces");
        assert_eq!(c.period, std::time::Duration::from_secs(5));
        assert_eq!(c.service_name, "shop");
        let extra = serde_json::json!({"telemetry/opentelemetry": {"exporters": {"otlp": [
            {"name": "m", "host": "metrics-only", "port": 4318, "use_http": true, "disable_traces": true},
            {"name": "t", "host": "traces-only", "port": 4318, "use_http": true, "disable_metrics": true}]}}});
        let c = collectors(extra.as_object().unwrap());
        assert_eq!(c.urls.iter().map(ToString::to_string).collect::<Vec<_>>(), ["http://metrics-only:4318/v1/metrics"]);
        assert_eq!(
            c.trace_urls.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["http://traces-only:4318/v1/traces"]
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
