//! Criterion benches of the per-request work between the client and the backends:
//! routing, backend URL building, decoding, response manipulation, merging and encoding.
//!
//! Payloads are realistic rather than minimal: a user record of about 2 KB with a nested
//! address and 20 orders, and a 50-endpoint routing table.
//!
//! `cargo bench -p weir-gateway --bench hot_path` (add `-- --quick` for a fast pass).
#![allow(clippy::expect_used, reason = "fixed bench inputs: a failure is a broken bench, not bad input")]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::Method;
use serde_json::{Map, Value, json};
use weir_gateway::config::{self, Backend, BackendEncoding, FlatmapOp, Format, OutputEncoding};
use weir_gateway::proxy::decode::decode;
use weir_gateway::proxy::flatmap::Flatmap;
use weir_gateway::proxy::render::render;
use weir_gateway::proxy::shape::{Plan, Shape, decode_allowed};
use weir_gateway::proxy::spans::Source;
use weir_gateway::proxy::url::{UrlTemplate, Values};

/// A user with a nested address and 20 orders, serialised to about 2 KB.
fn user() -> Map<String, Value> {
    let orders: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "id": 100_200 + i,
                "total": 19.5 + f64::from(i) * 3.25,
                "status": if i % 3 == 0 { "shipped" } else { "delivered" },
                "items": 1 + i % 4,
                "sku": format!("SKU-{:04}", 7 * i),
            })
        })
        .collect();
    let v = json!({
        "id": 48213,
        "username": "jdoe",
        "email": "jane.doe@example.com",
        "name": "Jane Doe",
        "phone": "+1-202-555-0143",
        "locale": "en-US",
        "status": "active",
        "created_at": "2021-03-14T09:26:53Z",
        "address": {
            "street": "1600 Pennsylvania Ave NW",
            "city": "Washington",
            "postal_code": "20500",
            "country": "US",
            "geo": {"lat": 38.8977, "lng": -77.0365}
        },
        "orders": orders,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("the literal above is an object"),
    }
}

/// A second backend's answer to merge with [`user`].
fn preferences() -> Map<String, Value> {
    let v = json!({
        "theme": "dark",
        "language": "en",
        "notifications": {"email": true, "sms": false, "push": true},
        "roles": ["admin", "editor", "billing"],
        "plan": "premium",
        "score": 4.87,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("the literal above is an object"),
    }
}

/// The first backend of a one-endpoint config, parsed and validated as `weir check` does.
fn backend(backend_json: &str) -> Backend {
    let text = format!(
        r#"{{"version": 3, "host": ["http://127.0.0.1:8080"],
            "endpoints": [{{"endpoint": "/users/{{id}}", "backend": [{backend_json}]}}]}}"#
    );
    let checked = config::parse(&text, Format::Json, |_| None);
    assert!(checked.report.errors.is_empty(), "bench config rejected: {:?}", checked.report.errors);
    let mut service = checked.service.expect("a valid config yields a service");
    service.endpoints.remove(0).backends.remove(0)
}

/// Routing. `runtime::Router` is private, so this measures what it does per request on a
/// 50-endpoint table: one `matchit` lookup, the parameters collected in path order, and
/// the method picked from the route's list.
fn router(c: &mut Criterion) {
    let resources =
        ["users", "orders", "products", "carts", "payments", "invoices", "shipments", "reviews", "coupons", "stores"];
    let mut table = matchit::Router::new();
    let mut routes: Vec<Vec<(Method, usize)>> = Vec::new();
    for r in resources {
        for path in [
            format!("/v1/{r}"),
            format!("/v1/{r}/{{id}}"),
            format!("/v1/{r}/{{id}}/history"),
            format!("/v1/{r}/{{id}}/items/{{item}}"),
            format!("/v2/{r}/search"),
        ] {
            let i = routes.len();
            table.insert(path, i).expect("distinct paths");
            routes.push(vec![(Method::POST, i), (Method::GET, i)]);
        }
    }
    assert_eq!(routes.len(), 50);
    let lookup = |path: &str| -> Option<(usize, usize)> {
        let m = table.at(path).ok()?;
        let params: Vec<&str> = m.params.iter().map(|(_, v)| v).collect();
        let (_, pipeline) = routes[*m.value].iter().find(|(method, _)| method == Method::GET)?;
        Some((*pipeline, params.len()))
    };
    let mut g = c.benchmark_group("router_50_endpoints");
    for (name, path) in [
        ("static", "/v2/shipments/search"),
        ("one_param", "/v1/reviews/98765"),
        ("two_params", "/v1/stores/12/items/sku-0042"),
        ("miss", "/v1/unknown/12"),
    ] {
        g.bench_function(name, |b| b.iter(|| lookup(black_box(path))));
    }
    g.finish();
}

/// Backend URL from `url_pattern` and the request's path parameters, into a fresh
/// `String` sized by the template's hint, as `proxy::backend` does.
fn url(c: &mut Criterion) {
    let template =
        UrlTemplate::compile("/internal/users/{id}/orders?status={status}&limit=20", "/v1/users/{id}/orders/{status}");
    let host = "http://users.svc.cluster.local:8080";
    let params = ["48213", "shipped"];
    c.bench_function("url_render_two_params", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(host.len() + template.len_hint());
            out.push_str(host);
            template.render_into(&mut out, &Values { params: black_box(&params), responses: &[], claims: None });
            out
        })
    });
}

fn decode_json(c: &mut Criterion) {
    let body = serde_json::to_vec(&user()).expect("serialisable");
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("json_user_2kb", |b| b.iter(|| decode(BackendEncoding::Json, false, black_box(&body))));
    g.finish();
}

/// allow + mapping + group on the user. The input clone is outside the measurement.
fn shape(c: &mut Criterion) {
    let b = backend(
        r#"{"url_pattern": "/users/{id}",
            "allow": ["id", "name", "email", "address.city", "address.country", "orders"],
            "mapping": {"email": "contact", "orders": "purchases"},
            "group": "user"}"#,
    );
    let shape = Shape::compile(&b);
    let data = user();
    c.bench_function("shape_allow_mapping_group", |bench| {
        bench.iter_batched(|| data.clone(), |d| shape.apply(d), BatchSize::SmallInput)
    });
}

/// `flatmap_filter` over every item of the 20 orders: one move and one delete.
fn flatmap(c: &mut Criterion) {
    let ops = Flatmap::compile(&[
        FlatmapOp::Move { from: "orders.*.total".into(), to: "orders.*.amount".into() },
        FlatmapOp::Del { path: "orders.*.sku".into() },
    ]);
    let data = Value::Object(user());
    c.bench_function("flatmap_move_del_20_orders", |b| {
        b.iter_batched(
            || data.clone(),
            |mut d| {
                ops.apply(&mut d);
                d
            },
            BatchSize::SmallInput,
        )
    });
}

/// Merging two backends' data the way the pipeline folds results into one map.
fn merge(c: &mut Criterion) {
    let a = user();
    let b = preferences();
    c.bench_function("merge_two_backends", |bench| {
        bench.iter_batched(
            || (a.clone(), b.clone()),
            |(a, b)| {
                let mut merged = Map::new();
                merged.extend(a);
                merged.extend(b);
                merged
            },
            BatchSize::SmallInput,
        )
    });
}

/// Two untouched backend objects of about 500 bytes each (the load benchmark's `/user`
/// and `/profile`) merged from their bytes, as an endpoint without manipulation does.
fn merge_bytes(c: &mut Criterion) {
    let user = br#"{"id":48213,"name":"Ada Lovelace","email":"ada@example.com","active":true,"created_at":"2024-03-01T12:00:00Z","tags":["admin","beta","ops"],"address":{"street":"12 Analytical Row","city":"London","country":"GB","zip":"N1 9GU"},"plan":{"tier":"pro","seats":25,"renews":"2027-01-01"},"stats":{"logins":1289,"last_seen":"2026-11-20T08:15:00Z","score":97.5},"bio":"Mathematician and writer."}"#;
    let profile = br#"{"profile_id":"p-48213","display_name":"Ada L.","address":{"city":"London","country":"GB","street":"12 Analytical Row"},"roles":["admin","ops"],"preferences":{"theme":"dark","language":"en-GB","notifications":{"email":true,"sms":false}},"history":[{"at":"2026-01-01","event":"login"},{"at":"2026-02-01","event":"upgrade"}],"note":"A profile document of about five hundred bytes for the merge scenario."}"#;
    let mut g = c.benchmark_group("merge_bytes");
    g.throughput(Throughput::Bytes((user.len() + profile.len()) as u64));
    let sources = [&user[..], &profile[..]].map(|body| Source { body, plan: Plan::default() });
    g.bench_function("two_500b_objects", |b| b.iter(|| merge_bytes_once(black_box(&sources))));
    g.finish();
}

/// Not inlined, so that a profiler (callgrind's `--toggle-collect`) can count one merge.
#[inline(never)]
fn merge_bytes_once(sources: &[Source<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sources.iter().map(|s| s.body.len()).sum::<usize>() + 16);
    weir_gateway::proxy::spans::merge(sources, &mut out).expect("plain objects");
    out
}

fn render_json(c: &mut Criterion) {
    let data = user();
    let size = serde_json::to_vec(&data).map_or(0, |v| v.len());
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Bytes(size as u64));
    g.bench_function("json_user_2kb", |b| b.iter(|| render(OutputEncoding::Json, None, black_box(&data))));
    g.finish();
}

/// One JSON backend end to end without the network: decode, allow+mapping+group, encode;
/// and the same from the body's bytes, as the gateway does it.
fn decode_shape_render(c: &mut Criterion) {
    let b = backend(
        r#"{"url_pattern": "/users/{id}",
            "allow": ["id", "name", "email", "address.city", "address.country", "orders"],
            "mapping": {"email": "contact"},
            "group": "user"}"#,
    );
    let shape = Shape::compile(&b);
    let allow = shape.allow_first().expect("allow comes first");
    let plan = shape.plan().expect("applies to bytes");
    let body = serde_json::to_vec(&user()).expect("serialisable");
    let mut g = c.benchmark_group("decode_shape_render_user_2kb");
    g.throughput(Throughput::Bytes(body.len() as u64));
    // The general path: decoded pruned by the allow-list, manipulated, encoded.
    g.bench_function("decoded", |bench| {
        bench.iter(|| {
            let data = decode_allowed(black_box(&body), allow).ok()?;
            let data = shape.apply(data);
            Some(render(OutputEncoding::Json, None, &data))
        })
    });
    // The same response written from the body's bytes.
    g.bench_function("from_bytes", |bench| {
        bench.iter(|| {
            let mut out = Vec::with_capacity(body.len());
            weir_gateway::proxy::spans::merge(&[Source { body: black_box(&body), plan }], &mut out)?;
            Some(out)
        })
    });
    g.finish();
}

/// What telemetry adds to every request: reading the clock twice and recording the
/// duration in the endpoint's histogram (atomic adds).
fn telemetry(c: &mut Criterion) {
    let stats = weir_gateway::telemetry::EndpointStats::new("/users/{id}", "GET");
    c.bench_function("telemetry_time_and_record", |b| {
        b.iter(|| {
            let started = std::time::Instant::now();
            stats.record(std::hint::black_box(200), started.elapsed());
        })
    });
}

criterion_group!(
    benches,
    router,
    url,
    decode_json,
    shape,
    flatmap,
    merge,
    merge_bytes,
    render_json,
    decode_shape_render,
    telemetry
);
criterion_main!(benches);
