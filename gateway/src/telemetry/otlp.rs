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

/// The request body of one export. `resource` are the resource attributes (service,
/// gateway, environment, node, config serial).
pub fn export_json(registry: &Registry, resource: &[(&str, String)], now: SystemTime) -> String {
    // Bounds in seconds, as the semantic conventions want durations.
    #[allow(clippy::cast_precision_loss)]
    let bounds: Vec<f64> = LATENCY_BOUNDS_MS.iter().map(|ms| *ms as f64 / 1000.0).collect();
    let start = nanos(registry.started);
    let now = nanos(now);
    let mut points = Vec::new();
    for e in &registry.endpoints {
        for class in 1..=5 {
            let (count, sum, buckets) = e.latency(class).snapshot();
            if count == 0 {
                continue;
            }
            points.push(json!({
                "attributes": [
                    attribute("http.route", e.route()),
                    attribute("http.request.method", e.method()),
                    attribute("weir.status_class", &format!("{class}xx")),
                ],
                "startTimeUnixNano": start,
                "timeUnixNano": now,
                // OTLP's JSON encoding writes 64-bit integers as strings.
                "count": count.to_string(),
                "sum": sum,
                "bucketCounts": buckets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "explicitBounds": bounds,
            }));
        }
    }
    let attributes: Vec<Value> = resource.iter().map(|(k, v)| attribute(k, v)).collect();
    json!({"resourceMetrics": [{
        "resource": {"attributes": attributes},
        "scopeMetrics": [{
            "scope": {"name": "weir", "version": crate::VERSION},
            "metrics": [{
                "name": DURATION_METRIC,
                "unit": "s",
                "description": "Time to response headers, by route and status class",
                "histogram": {"aggregationTemporality": 2, "dataPoints": points},
            }],
        }],
    }]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::telemetry::EndpointStats;

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
}
