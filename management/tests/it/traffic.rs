//! Request metrics: a real node's OTLP exports, rolled up and read back, on both databases.

use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fleet::{Proc, backend, eventually};
use crate::on_both_databases;
use crate::portal::{call, try_call};
use crate::support::{Db, TestApp, free_port, spawn_app, weir_bin};

on_both_databases!(
    node_traffic_reaches_the_dashboard_figures,
    exports_become_deltas_and_resets_count_from_zero,
    routes_sum_over_nodes_and_nodes_over_routes
);

async fn metrics(app: &TestApp, range: &str) -> Value {
    app.get(&format!("/api/v1/gateways/shop/environments/dev/metrics?range={range}"), &app.admin_token).await.body
}

async fn node_traffic_reaches_the_dashboard_figures(db: Db) {
    let app = spawn_app(db).await;
    let upstream = backend().await;
    let port = free_port();
    app.gateway("shop", &[("dev", None)]).await;
    let config = json!({"version": 3, "port": port, "endpoints": [
        {"endpoint": "/hello", "backend": [{"host": [upstream], "url_pattern": "/v1"}]},
        {"endpoint": "/broken", "backend": [{"host": [upstream], "url_pattern": "/missing"}]},
    ]});
    app.push("shop", &config, "traffic").await;
    app.promote("shop", "dev", 1).await;
    let token_file = app.dir.path().join("node-token");
    std::fs::write(&token_file, app.node_token("shop", "dev", "metrics").await).unwrap();
    let mut cmd = Command::new(weir_bin());
    cmd.args(["run", "--control", &app.url(), "--gateway", "shop", "--env", "dev", "--metrics-interval", "300ms"])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--trust")
        .arg(weir_management::domain::signing::public_path(&app.signing_key))
        .arg("--cache-dir")
        .arg(app.dir.path().join("cache-metrics"))
        .args(["--node-id", "metered", "-p", &port.to_string()]);
    let node = Proc::start(cmd, &app.dir.path().join("metered.log"));
    let up = eventually(Duration::from_secs(15), || async {
        try_call("GET", &format!("http://127.0.0.1:{port}/__health"), &[], None).await.filter(|r| r.0 == StatusCode::OK)
    })
    .await;
    assert!(up.is_some(), "{}", node.log());

    for _ in 0..20 {
        assert_eq!(call("GET", &format!("http://127.0.0.1:{port}/hello"), &[], None).await.0, StatusCode::OK);
    }
    let mut broken_status = StatusCode::OK;
    for _ in 0..5 {
        broken_status = call("GET", &format!("http://127.0.0.1:{port}/broken"), &[], None).await.0;
    }
    assert!(broken_status.is_server_error(), "{broken_status}");

    let figures = eventually(Duration::from_secs(10), || async {
        let m = metrics(&app, "15m").await;
        (m["totals"]["requests"] == 25).then_some(m)
    })
    .await;
    let m = figures.unwrap_or_else(|| panic!("the dashboard never showed 25 requests:\n{}", node.log()));
    assert_eq!(m["totals"]["errors"], 5);
    assert!((m["totals"]["error_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert_eq!(m["status"]["2xx"], 20);
    assert_eq!(m["status"]["5xx"], 5);
    assert_eq!(m["routes"][0]["name"], "GET /hello");
    assert_eq!(m["routes"][0]["requests"], 20);
    assert_eq!(m["nodes"][0]["name"], "metered");
    let p50 = m["totals"]["p50_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= 100.0, "loopback requests take milliseconds: {p50}");
    let series_total: i64 = m["series"].as_array().unwrap().iter().map(|s| s["requests"].as_i64().unwrap()).sum();
    assert_eq!(series_total, 25);
    // More exports of the same counters add nothing.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(metrics(&app, "15m").await["totals"]["requests"], 25);
    assert_eq!(metrics(&app, "7d").await["totals"]["requests"], 25);
    assert_eq!(
        app.get("/api/v1/gateways/shop/environments/dev/metrics?range=2w", &app.admin_token).await.status,
        StatusCode::BAD_REQUEST
    );
}

fn export(start: &str, count: i64, fast: i64) -> Value {
    export_of("n1", "/a", start, count, fast)
}

fn export_of(node: &str, route: &str, start: &str, count: i64, fast: i64) -> Value {
    let now = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()).to_string();
    let mut buckets = vec!["0".to_owned(); 12];
    buckets[0] = fast.to_string();
    buckets[6] = (count - fast).to_string();
    json!({"resourceMetrics": [{"resource": {"attributes": [{"key": "service.instance.id", "value": {"stringValue": node}}]},
        "scopeMetrics": [{"metrics": [{"name": "http.server.request.duration", "histogram": {"aggregationTemporality": 2,
            "dataPoints": [{"attributes": [
                {"key": "http.route", "value": {"stringValue": route}},
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "weir.status_class", "value": {"stringValue": "2xx"}}],
              "startTimeUnixNano": start, "timeUnixNano": now, "count": count.to_string(), "sum": 0.5,
              "bucketCounts": buckets, "explicitBounds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]}]}}]}]}]})
}

async fn exports_become_deltas_and_resets_count_from_zero(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    let node = app.node_token("shop", "dev", "n1").await;
    let post = |body: Value, token: String, headers: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            let mut h = vec![("content-type", "application/json")];
            h.extend(headers);
            app.request(Method::POST, "/v1/metrics", Some(&token), &h, body.to_string()).await
        }
    };
    for (start, count, total) in [("1", 10, 10), ("1", 15, 15), ("2", 4, 19), ("2", 4, 19), ("2", 1, 20)] {
        let a = post(export(start, count, 1), node.clone(), vec![]).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(metrics(&app, "15m").await["totals"]["requests"], total, "after count {count} from start {start}");
    }
    let m = metrics(&app, "1h").await;
    assert!(m["totals"]["p99_ms"].as_f64().unwrap() > 250.0, "most requests were in the 250-500 ms bucket: {m}");

    // gzip is accepted; protobuf, other tokens and oversized bodies are refused.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, export("3", 5, 5).to_string().as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let a = app
        .request(
            Method::POST,
            "/v1/metrics",
            Some(&node),
            &[("content-type", "application/json"), ("content-encoding", "gzip")],
            gz,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(metrics(&app, "15m").await["totals"]["requests"], 25);
    // Protobuf, the OpenTelemetry Collector's default: the same counters, a later
    // cumulative value, answered in protobuf (an empty response message).
    let proto = app
        .request(
            Method::POST,
            "/v1/metrics",
            Some(&node),
            &[("content-type", "application/x-protobuf")],
            protobuf::export("3", 8, 8),
        )
        .await;
    assert_eq!(proto.status, StatusCode::OK, "{}", proto.text);
    assert_eq!(proto.headers["content-type"], "application/x-protobuf");
    assert!(proto.text.is_empty());
    assert_eq!(metrics(&app, "15m").await["totals"]["requests"], 28);
    let truncated = protobuf::export("3", 9, 9);
    let truncated = truncated.slice(..truncated.len() - 3);
    let a = app
        .request(Method::POST, "/v1/metrics", Some(&node), &[("content-type", "application/x-protobuf")], truncated)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.text.contains("protobuf"), "{}", a.text);
    let xml =
        app.request(Method::POST, "/v1/metrics", Some(&node), &[("content-type", "application/xml")], "<a/>").await;
    assert_eq!(xml.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let operator = app.token("ops", "operator").await;
    assert_eq!(post(export("1", 1, 1), operator, vec![]).await.status, StatusCode::FORBIDDEN);
    let none = app.request(Method::POST, "/v1/metrics", None, &[("content-type", "application/json")], "{}").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let huge = vec![b' '; 5 * 1024 * 1024];
    let a = app.request(Method::POST, "/v1/metrics", Some(&node), &[("content-type", "application/json")], huge).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let bad = post(json!({"nothing": true}), node.clone(), vec![]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Counts no node could reach (found by fuzzing: they overflowed the sums) and negative
    // counts are refused whole, and the figures are unchanged.
    for (count, fast) in [(i64::MAX, 0), (-5, -5), (10, -1)] {
        let a = post(export("9", count, fast), node.clone(), vec![]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "count {count}, fast {fast}: {}", a.text);
        assert!(a.text.contains("must be a whole number from 0 to"), "{}", a.text);
    }
    assert_eq!(metrics(&app, "15m").await["totals"]["requests"], 28);

    // The long ranges read hour rows, written beside the minute rows: the same requests.
    assert_eq!(metrics(&app, "24h").await["totals"]["requests"], 28);
    let week = metrics(&app, "7d").await;
    assert_eq!(week["totals"]["requests"], 28);
    assert_eq!(week["routes"][0]["requests"], 28, "{week}");
    assert_eq!(week["nodes"][0]["requests"], 28, "{week}");
    // Retention: minute rows go after a day, hour rows after the retention period.
    let now_minute = weir_management::store::now_ms() / 60_000;
    let dropped = app.store.prune_rollups(now_minute + 1, 0).await.unwrap();
    assert!(dropped > 0);
    assert_eq!(metrics(&app, "15m").await["totals"]["requests"], 0, "minute rows dropped");
    assert_eq!(metrics(&app, "7d").await["totals"]["requests"], 28, "hour rows kept");
    assert_eq!(app.store.prune_rollups(now_minute + 1, 0).await.unwrap(), 0, "nothing left to drop");
    app.store.prune_rollups(now_minute, now_minute / 60 + 2).await.unwrap();
    assert_eq!(metrics(&app, "7d").await["totals"]["requests"], 0, "hours past retention are dropped");
}

/// A collector's export carries many nodes' series at once: the routes' figures sum over
/// the nodes, the nodes' over the routes, at minute and at hour width alike.
async fn routes_sum_over_nodes_and_nodes_over_routes(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    let token = app.node_token("shop", "dev", "collector").await;
    let fleet = |round: i64| {
        let mut resources = Vec::new();
        for (n, node) in ["n1", "n2", "n3"].iter().enumerate() {
            for (r, route) in ["/a", "/b"].iter().enumerate() {
                // Node n, route r: (n + 1) * (r + 1) * round requests so far.
                let count = i64::try_from((n + 1) * (r + 1)).unwrap() * round;
                let one = export_of(node, route, "1", count, count);
                resources.push(one["resourceMetrics"][0].clone());
            }
        }
        json!({"resourceMetrics": resources})
    };
    for round in [1, 2] {
        let a = app
            .request(
                Method::POST,
                "/v1/metrics",
                Some(&token),
                &[("content-type", "application/json")],
                fleet(round).to_string(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    // Cumulative: the second round's counts are the totals, 2 * (1 + 2 + 3) * (1 + 2).
    for range in ["15m", "1h", "24h", "7d"] {
        let m = metrics(&app, range).await;
        assert_eq!(m["totals"]["requests"], 36, "{range}: {m}");
        let routes: Vec<(String, i64)> = m["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_owned(), r["requests"].as_i64().unwrap()))
            .collect();
        assert_eq!(routes, [("GET /b".to_owned(), 24), ("GET /a".to_owned(), 12)], "{range}");
        let nodes: Vec<(String, i64)> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_owned(), r["requests"].as_i64().unwrap()))
            .collect();
        assert_eq!(nodes, [("n3".to_owned(), 18), ("n2".to_owned(), 12), ("n1".to_owned(), 6)], "{range}");
        let p50 = m["totals"]["p50_ms"].as_f64().unwrap();
        assert!(p50 <= 5.0, "every request was in the first bucket: {p50}");
    }
}

/// The export of [`export`] in protobuf, written field by field. The reader is checked
/// against the OpenTelemetry project's own encoder by a unit test with a fixture; this
/// encoder only has to agree with that.
mod protobuf {
    use bytes::Bytes;

    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn message(out: &mut Vec<u8>, field: u64, body: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, body.len() as u64);
        out.extend_from_slice(body);
    }

    fn fixed64(out: &mut Vec<u8>, field: u64, bits: u64) {
        varint(out, field << 3 | 1);
        out.extend_from_slice(&bits.to_le_bytes());
    }

    /// `KeyValue` with a string `AnyValue`.
    fn attribute(key: &str, value: &str) -> Vec<u8> {
        let mut any = Vec::new();
        message(&mut any, 1, value.as_bytes());
        let mut kv = Vec::new();
        message(&mut kv, 1, key.as_bytes());
        message(&mut kv, 2, &any);
        kv
    }

    pub fn export(start: &str, count: u64, fast: u64) -> Bytes {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let mut point = Vec::new();
        for (k, v) in [("http.route", "/a"), ("http.request.method", "GET"), ("weir.status_class", "2xx")] {
            message(&mut point, 9, &attribute(k, v));
        }
        fixed64(&mut point, 2, start.parse().unwrap());
        fixed64(&mut point, 3, now);
        fixed64(&mut point, 4, count);
        fixed64(&mut point, 5, 0.5f64.to_bits());
        let mut buckets = [0u64; 12];
        buckets[0] = fast;
        buckets[6] = count - fast;
        // Packed, as proto3 encoders write repeated numbers.
        message(&mut point, 6, &buckets.iter().flat_map(|b| b.to_le_bytes()).collect::<Vec<u8>>());
        let bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0f64];
        message(&mut point, 7, &bounds.iter().flat_map(|b| b.to_bits().to_le_bytes()).collect::<Vec<u8>>());
        let mut histogram = Vec::new();
        message(&mut histogram, 1, &point);
        varint(&mut histogram, 2 << 3);
        varint(&mut histogram, 2); // cumulative
        let mut metric = Vec::new();
        message(&mut metric, 1, b"http.server.request.duration");
        message(&mut metric, 9, &histogram);
        let mut scope = Vec::new();
        message(&mut scope, 2, &metric);
        let mut resource = Vec::new();
        message(&mut resource, 1, &attribute("service.instance.id", "n1"));
        let mut resource_metrics = Vec::new();
        message(&mut resource_metrics, 1, &resource);
        message(&mut resource_metrics, 2, &scope);
        let mut request = Vec::new();
        message(&mut request, 1, &resource_metrics);
        Bytes::from(request)
    }
}
