//! Merging several backends, and KrakenD's contract for partial and total failure.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Backend, Gateway, Reply, config};

#[tokio::test]
async fn backends_merge_with_manipulation_and_cache_header() {
    let user =
        Backend::json(json!({"data": {"id": 1, "name": "Ada", "password": "x", "address": {"city": "L", "zip": "1"}}}))
            .await;
    let posts = Backend::start(|_| Reply::json(json!([{"id": 10}, {"id": 11}]))).await;
    let gw = Gateway::start(config(json!([{
        "endpoint": "/profile/{id}", "cache_ttl": "1m",
        "backend": [
            {"host": [user.url], "url_pattern": "/users/{id}", "target": "data",
             "allow": ["id", "name", "address.city"], "mapping": {"name": "full_name"}},
            {"host": [posts.url], "url_pattern": "/posts?user={id}", "is_collection": true, "group": "posts"}
        ]
    }])))
    .await;
    let r = gw.get("/profile/1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("true"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(
        r.json(),
        json!({"id": 1, "full_name": "Ada", "address": {"city": "L"}, "posts": {"collection": [{"id": 10}, {"id": 11}]}})
    );
    assert_eq!(
        r.text(),
        r#"{"address":{"city":"L"},"full_name":"Ada","id":1,"posts":{"collection":[{"id":10},{"id":11}]}}"#,
        "keys are sorted"
    );
}

#[tokio::test]
async fn partial_failure_is_200_incomplete_without_cache_header() {
    let ok = Backend::json(json!({"a": 1})).await;
    let broken = Backend::start(|_| Reply::status(404)).await;
    let wrong = Backend::start(|_| Reply::status(204)).await;
    let gw = Gateway::start(config(json!([{
        "endpoint": "/p", "cache_ttl": "30s",
        "backend": [{"host": [ok.url], "url_pattern": "/"}, {"host": [broken.url], "url_pattern": "/"},
                    {"host": [wrong.url], "url_pattern": "/"}]
    }])))
    .await;
    let r = gw.get("/p").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(r.header("cache-control"), None);
    assert_eq!(r.json(), json!({"a": 1}));
}

#[tokio::test]
async fn total_failure_is_500_with_error_text_only_when_asked() {
    let broken = Backend::start(|_| Reply::status(503)).await;
    let endpoints = json!([{"endpoint": "/f", "backend": [{"host": [broken.url], "url_pattern": "/"}, {"host": [broken.url], "url_pattern": "/"}]}]);
    let gw = Gateway::start(config(endpoints.clone())).await;
    let r = gw.get("/f").await;
    assert_eq!((r.status, r.body.len()), (500, 0));
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(r.header("cache-control"), None);

    let mut c = config(endpoints);
    c["extra_config"] = json!({"router": {"return_error_msg": true}});
    let gw = Gateway::start(c).await;
    let r = gw.get("/f").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "invalid status code: 503\ninvalid status code: 503");
}

#[tokio::test]
async fn return_error_code_passes_the_backend_status() {
    let nf = Backend::start(|_| Reply::raw(404, "application/json", r#"{"msg":"no such user"}"#)).await;
    let mut c = config(json!([{"endpoint": "/u", "backend": [{"host": [nf.url], "url_pattern": "/",
        "extra_config": {"backend/http": {"return_error_code": true}}}]}]));
    let gw = Gateway::start(c.clone()).await;
    let r = gw.get("/u").await;
    assert_eq!((r.status, r.body.len()), (404, 0));

    c["extra_config"] = json!({"router": {"return_error_msg": true}});
    let gw = Gateway::start(c).await;
    let r = gw.get("/u").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), r#"{"msg":"no such user"}"#);
}

#[tokio::test]
async fn return_error_details_adds_the_failure_to_the_body() {
    let ok = Backend::json(json!({"a": 1})).await;
    let nf = Backend::start(|_| Reply::raw(404, "text/plain", "gone")).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/d", "backend": [
        {"host": [ok.url], "url_pattern": "/"},
        {"host": [nf.url], "url_pattern": "/", "group": "ignored", "extra_config": {"backend/http": {"return_error_details": "legacy"}}}
    ]}])))
    .await;
    let r = gw.get("/d").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(
        r.json(),
        json!({"a": 1, "error_legacy": {"http_status_code": 404, "http_body": "gone", "http_body_encoding": "text/plain"}})
    );
}

#[tokio::test]
async fn timeout_keeps_what_arrived_in_time() {
    let fast = Backend::json(json!({"fast": true})).await;
    let slow = Backend::start(|_| Reply::json(json!({"slow": true})).after(Duration::from_secs(3))).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/t", "timeout": "400ms", "backend": [
        {"host": [fast.url], "url_pattern": "/"}, {"host": [slow.url], "url_pattern": "/"}]}])))
    .await;
    let r = gw.get("/t").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(r.json(), json!({"fast": true}));
}

#[tokio::test]
async fn collisions_go_to_the_later_backend_and_endpoint_flatmap_runs_after_merge() {
    let a = Backend::json(json!({"k": "a", "items": [{"x": 1, "drop": 0}]})).await;
    let b = Backend::start(|_| Reply::json(json!({"k": "b"})).after(Duration::from_millis(1))).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/m",
        "extra_config": {"proxy": {"flatmap_filter": [
            {"type": "del", "args": ["items.*.drop"]}, {"type": "move", "args": ["items.*.x", "items.*.y"]}]}},
        "backend": [{"host": [a.url], "url_pattern": "/"}, {"host": [b.url], "url_pattern": "/"}]}])))
    .await;
    assert_eq!(gw.get("/m").await.json(), json!({"k": "b", "items": [{"y": 1}]}));
}

/// JSON objects are manipulated and merged from their bytes; the result, headers and
/// failure handling are those of decoding, manipulating, merging and encoding (forced here
/// by `concurrent_calls`, which the byte path does not take).
#[tokio::test]
async fn objects_merge_from_bytes_exactly_as_decoded_ones() {
    let a = Backend::start(|_| {
        Reply::raw(
            200,
            "application/json",
            r#" {"z": 1.50, "b": {"y": "\u00e9\/", "x": [1e2, -0, 12345678901234567890]}, "k": "a"} "#,
        )
    })
    .await;
    let b =
        Backend::start(|_| Reply::raw(200, "application/json", r#"{"k": "from b", "c": "tab\there", "k": "last"}"#))
            .await;
    let broken = Backend::start(|_| Reply::raw(200, "application/json", r#"{"half": "#)).await;
    let down = Backend::start(|_| Reply::status(503)).await;
    let endpoint = |path: &str, backends: &[(&str, Value)], general: bool| {
        let backends: Vec<_> = backends
            .iter()
            .map(|(h, manipulation)| {
                let mut b = json!({"host": [h], "url_pattern": "/"});
                for (key, value) in manipulation.as_object().into_iter().flatten() {
                    b[key] = value.clone();
                }
                if general {
                    b["concurrent_calls"] = json!(2);
                }
                b
            })
            .collect();
        json!({"endpoint": path, "cache_ttl": "30s", "backend": backends})
    };
    let none = json!({});
    let grouped = json!({"allow": ["b.y", "z", "k"], "mapping": {"z": "zed", "k": "b"}, "group": "first"});
    let targeted = json!({"target": "b", "allow": ["x"], "mapping": {"x": "k"}});
    let renamed = json!({"mapping": {"c": "k"}});
    let cases: [(&str, Vec<(&str, Value)>); 6] = [
        ("both", vec![(&a.url, none.clone()), (&b.url, none.clone())]),
        ("one", vec![(&a.url, none.clone())]),
        ("partial", vec![(&a.url, none.clone()), (&down.url, none.clone())]),
        ("invalid", vec![(&broken.url, none.clone()), (&b.url, none.clone())]),
        ("shaped", vec![(&a.url, grouped.clone()), (&b.url, renamed.clone())]),
        ("targeted", vec![(&b.url, renamed), (&a.url, targeted), (&down.url, grouped)]),
    ];
    let mut endpoints = Vec::new();
    for (name, backends) in &cases {
        endpoints.push(endpoint(&format!("/fast/{name}"), backends, false));
        endpoints.push(endpoint(&format!("/slow/{name}"), backends, true));
    }
    let gw = Gateway::start(config(json!(endpoints))).await;
    for (name, _) in &cases {
        let (fast, slow) = (gw.get(&format!("/fast/{name}")).await, gw.get(&format!("/slow/{name}")).await);
        assert_eq!((fast.status, fast.text()), (slow.status, slow.text()), "/{name}");
        for header in ["content-type", "x-krakend-completed", "cache-control"] {
            assert_eq!(fast.header(header), slow.header(header), "/{name} {header}");
        }
    }
    let shaped = gw.get("/fast/shaped").await;
    assert_eq!(shaped.text(), r#"{"first":{"b":"a","zed":1.5},"k":"tab\there"}"#);
    let targeted = gw.get("/fast/targeted").await;
    assert_eq!(
        (targeted.text().as_str(), targeted.header("x-krakend-completed")),
        (r#"{"k":[100.0,-0.0,12345678901234567890]}"#, Some("false"))
    );
    let both = gw.get("/fast/both").await;
    assert_eq!(
        both.text(),
        r#"{"b":{"x":[100.0,-0.0,12345678901234567890],"y":"é/"},"c":"tab\there","k":"last","z":1.5}"#
    );
    let partial = gw.get("/fast/partial").await;
    assert_eq!((partial.status, partial.header("x-krakend-completed")), (200, Some("false")));
    assert_eq!(partial.header("cache-control"), None, "incomplete answers are not cacheable");
}
