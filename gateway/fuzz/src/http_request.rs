//! Raw bytes from a client, to a real gateway listening on 127.0.0.1.
//!
//! The gateway serves a config of the common shapes (parallel and sequential backends,
//! manipulation, static data, no-op, XML and negotiated output, JWT, CORS, compression,
//! rate limits); its backends are its own `/__echo/` and `/__health` endpoints, so
//! every call stays on loopback. Inputs that start with the HTTP/2 preface go to a
//! second listener with h2c; the rest to the HTTP/1.1 one. The harness writes the
//! bytes, reads the answers, closes its side and reads until the gateway closes.
//!
//! Invariants: no panic in the gateway's tasks, and the gateway closes the connection
//! within `ANSWER_WITHIN`. A task's panic does not reach `run`'s caller: libFuzzer's
//! panic hook aborts on any thread, and the corpus test counts panics on every thread.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weir_gateway::config::{self, Format};
use weir_gateway::runtime::{Flags, Runtime};
use weir_gateway::server::{self, Settings};

/// Far above what a loopback round trip through the echo backends takes, and below
/// libFuzzer's per-input timeout, so that a stuck connection is reported as one.
const ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// How long a complete request may take to start its answer (backend calls included)
/// before the harness closes its side anyway; an incomplete request costs this much.
const FIRST_BYTE_WITHIN: Duration = Duration::from_millis(50);
/// Silence that ends an answer (or a run of pipelined ones).
const QUIET_AFTER: Duration = Duration::from_millis(10);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

struct Harness {
    runtime: tokio::runtime::Runtime,
    http1: SocketAddr,
    h2c: SocketAddr,
}

fn service_config(port: u16) -> String {
    let host = format!("http://127.0.0.1:{port}");
    json!({
        "version": 3,
        "host": [host],
        "timeout": "3s",
        "echo_endpoint": true,
        "extra_config": {
            "security/cors": {"allow_origins": ["https://example.com"], "allow_methods": ["GET", "POST"]},
            "weir/compression": {"algorithms": ["gzip", "br"], "min_size": 16},
        },
        "endpoints": [
            {"endpoint": "/users/{id}", "input_query_strings": ["lang"], "input_headers": ["X-Trace"],
             "backend": [
                {"url_pattern": "/__echo/users/{id}?source=fuzz",
                 "allow": ["req_uri_details.path", "req_querystring", "req_headers"],
                 "mapping": {"req_querystring": "query"}, "group": "user"},
                {"url_pattern": "/__health", "allow": ["status"], "group": "gateway"}]},
            {"endpoint": "/chain/{name}", "extra_config": {"proxy": {"sequential": true}},
             "backend": [
                {"url_pattern": "/__echo/first/{name}", "allow": ["req_uri_details"]},
                {"url_pattern": "/__echo/second/{resp0_req_uri_details.path}", "group": "second"}]},
            {"endpoint": "/fallback",
             "extra_config": {"proxy": {"static": {"strategy": "incomplete", "data": {"note": "static"}}}},
             "backend": [{"url_pattern": "/nowhere"}]},
            {"endpoint": "/raw", "output_encoding": "no-op",
             "backend": [{"url_pattern": "/__health", "encoding": "no-op"}]},
            {"endpoint": "/xml", "output_encoding": "xml",
             "backend": [{"url_pattern": "/__echo/xml", "target": "req_uri_details"}]},
            {"endpoint": "/negotiate", "output_encoding": "negotiate",
             "extra_config": {"proxy": {"flatmap_filter": [{"type": "del", "args": ["req_headers"]}]}},
             "backend": [{"url_pattern": "/__echo/n"}]},
            {"endpoint": "/items", "method": "POST", "input_headers": ["Content-Type"],
             "extra_config": {"qos/ratelimit/router": {"max_rate": 100000, "client_max_rate": 100000}},
             "backend": [{"url_pattern": "/__echo/items", "method": "POST"}]},
            {"endpoint": "/private",
             "extra_config": {"auth/validator": {"alg": "HS512",
                "jwk_local_path": crate::fixture("jwt/jwks.json"),
                "roles": ["admin"], "propagate_claims": [["sub", "x-user"]]}},
             "backend": [{"url_pattern": "/__echo/private", "allow": ["req_headers"]}]},
        ],
    })
    .to_string()
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (http1, h2c) = runtime.block_on(async {
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let http1 = server::bind(loopback).expect("bind 127.0.0.1");
            let h2c = server::bind(loopback).expect("bind 127.0.0.1");
            let http1_addr = http1.local_addr().expect("a bound address");
            let h2c_addr = h2c.local_addr().expect("a bound address");
            let checked = config::parse(&service_config(http1_addr.port()), Format::Json, |_| None);
            let mut service = checked.service.unwrap_or_else(|| panic!("harness config: {:?}", checked.report.errors));
            let compiled = Runtime::compile(&service, Flags::default()).expect("the harness config compiles");
            let shared = Arc::new(arc_swap::ArcSwap::from_pointee(compiled));
            let plain = Settings::from_service(&service).expect("settings without TLS");
            service.use_h2c = true;
            let with_h2c = Settings::from_service(&service).expect("settings without TLS");
            tokio::spawn(server::serve(http1, plain, shared.clone(), std::future::pending()));
            tokio::spawn(server::serve(h2c, with_h2c, shared, std::future::pending()));
            (http1_addr, h2c_addr)
        });
        Harness { runtime, http1, h2c }
    })
}

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    let h = harness();
    let addr = if data.starts_with(H2_PREFACE) { h.h2c } else { h.http1 };
    let mut answer = Vec::new();
    let closed = h.runtime.block_on(exchange(addr, data, &mut answer));
    if crate::replaying() {
        eprintln!("answer:\n{}", String::from_utf8_lossy(&answer));
    }
    assert!(closed, "the gateway kept the connection open for {ANSWER_WITHIN:?} after the client closed");
}

/// Sends `data`, reads what the gateway answers while it keeps answering, then closes
/// the client's side and reads until the gateway closes. Closing at once would make
/// the gateway drop requests still waiting for their backends, so the pipeline would
/// rarely run. Returns false if the gateway did not close in time.
async fn exchange(addr: SocketAddr, data: &[u8], answer: &mut Vec<u8>) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return true };
    // The gateway may close early (a bad request line); writing then fails.
    let _ = stream.write_all(data).await;
    let mut buf = [0u8; 16 * 1024];
    let mut wait = FIRST_BYTE_WITHIN;
    while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut buf)).await {
        if n == 0 {
            return true;
        }
        answer.extend_from_slice(&buf[..n]);
        wait = QUIET_AFTER;
    }
    let _ = stream.shutdown().await;
    tokio::time::timeout(ANSWER_WITHIN, async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .is_ok()
}
