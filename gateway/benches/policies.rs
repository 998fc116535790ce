//! What each policy costs per request: JWT validation (first sight and cached), API
//! key lookup, rate-limit check, CORS headers and compression.

#![allow(clippy::expect_used, reason = "fixed bench inputs: a failure is a broken bench, not bad input")]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use weir_gateway::policy::apikeys::{ApiKeyGuard, ApiKeys};
use weir_gateway::policy::compress::Compression;
use weir_gateway::policy::cors::Cors;
use weir_gateway::policy::jwt::{JwtSettings, JwtValidator};
use weir_gateway::policy::ratelimit::{RouterLimit, Who};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt").join(name)
}

fn jwt(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let settings =
        JwtSettings::parse(&json!({"alg": "RS256", "jwk_local_path": fixture("jwks.json"), "roles": ["admin"]}), "b")
            .expect("settings");
    let validator = JwtValidator::build(settings.clone()).expect("validator");
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa.pem")).expect("key")).expect("rsa");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa".into());
    let token = |n: u64| {
        encode(&h, &json!({"sub": format!("user-{n}"), "roles": ["admin"], "exp": 4_000_000_000u64}), &key)
            .expect("sign")
    };
    let headers = |t: &str| {
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, HeaderValue::try_from(format!("Bearer {t}")).expect("header"));
        m
    };
    let cached = headers(&token(0));
    rt.block_on(validator.validate(&cached)).expect("valid");
    c.bench_function("jwt_rs256_cached", |b| {
        b.iter(|| rt.block_on(validator.validate(black_box(&cached))).expect("valid"))
    });
    // A validator that has never seen the token: a full RS256 verification each time.
    let fresh = headers(&token(1));
    c.bench_function("jwt_rs256_first_sight", |b| {
        b.iter_batched(
            || JwtValidator::build(settings.clone()).expect("validator"),
            |v| rt.block_on(v.validate(black_box(&fresh))).expect("valid"),
            BatchSize::PerIteration,
        )
    });
}

fn api_keys(c: &mut Criterion) {
    let keys: Vec<_> = (0..10_000).map(|i| json!({"key": format!("key-{i}"), "roles": ["user"]})).collect();
    let table = std::sync::Arc::new(ApiKeys::compile(&json!({"keys": keys, "hash": "sha256"}), "k").expect("keys"));
    let guard = ApiKeyGuard::compile(&json!({"roles": ["user"]}), "e", Some(&table)).expect("guard");
    let mut h = HeaderMap::new();
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer not-a-known-key"));
    c.bench_function("api_key_lookup_10k_keys", |b| b.iter(|| black_box(guard.check(black_box(&h), None)).is_err()));
}

fn rate_limit(c: &mut Criterion) {
    let limit =
        RouterLimit::compile(&json!({"max_rate": 1e9, "client_max_rate": 1e9, "every": "1s"}), "r").expect("limit");
    let headers = HeaderMap::new();
    let who = Who { ip: "10.1.2.3".parse().expect("ip"), headers: &headers, params: &[], claims: None };
    c.bench_function("rate_limit_endpoint_and_client", |b| b.iter(|| limit.check(black_box(&who)).is_ok()));
}

fn cors(c: &mut Criterion) {
    let cors = Cors::compile(&json!({"allow_origins": ["https://app.example"], "expose_headers": ["X-A"]}), "c")
        .expect("cors");
    let mut request = HeaderMap::new();
    request.insert(header::ORIGIN, HeaderValue::from_static("https://app.example"));
    c.bench_function("cors_decorate", |b| {
        b.iter(|| {
            let mut response = HeaderMap::new();
            cors.decorate(black_box(&request), &mut response);
            response
        })
    });
}

fn compression(c: &mut Criterion) {
    let body = serde_json::to_vec(&(0..100).map(|i| json!({"id": i, "name": format!("item {i}")})).collect::<Vec<_>>())
        .expect("json");
    let comp = Compression::compile(&json!({}), "z").expect("compression");
    let ct = HeaderValue::from_static("application/json");
    for (name, accept) in [("gzip", "gzip"), ("brotli", "br")] {
        let encoding = comp.negotiate(Some(&HeaderValue::from_static(accept))).expect("encoding");
        c.bench_function(&format!("compress_{name}_{}b", body.len()), |b| {
            b.iter(|| comp.compress(encoding, Some(&ct), black_box(&body)))
        });
    }
}

criterion_group!(benches, jwt, api_keys, rate_limit, cors, compression);
criterion_main!(benches);
