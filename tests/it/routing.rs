//! Routing as KrakenD does it: 404/405, redirects, and the gateway's own paths.

use http::Method;
use serde_json::json;
use weir_gateway::runtime::Flags;

use crate::support::{Backend, Gateway, config};

async fn two_endpoints(extra: serde_json::Value) -> (Backend, Gateway) {
    let b = Backend::json(json!({"ok": true})).await;
    let mut c = config(json!([
        {"endpoint": "/users/{id}", "backend": [{"host": [b.url], "url_pattern": "/u/{id}"}]},
        {"endpoint": "/users/{id}", "method": "DELETE", "backend": [{"host": [b.url], "url_pattern": "/u/{id}"}]},
        {"endpoint": "/Items/list", "backend": [{"host": [b.url], "url_pattern": "/items"}]}
    ]));
    c["extra_config"] = extra;
    (b, Gateway::start(c).await)
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let (_b, gw) = two_endpoints(json!({})).await;
    let r = gw.get("/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "404 page not found");
    assert_eq!(r.header("x-krakend-completed"), Some("false"));

    let r = gw.send(Method::PUT, "/users/1", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.text(), "405 method not allowed");
    assert_eq!(r.header("allow"), Some("GET, DELETE"));

    assert_eq!(gw.send(Method::DELETE, "/users/1", &[], "").await.status, 200);
}

#[tokio::test]
async fn method_not_allowed_can_be_turned_into_404() {
    let (_b, gw) = two_endpoints(json!({"router": {"disable_handle_method_not_allowed": true}})).await;
    assert_eq!(gw.send(Method::PUT, "/users/1", &[], "").await.status, 404);
}

#[tokio::test]
async fn trailing_slash_and_case_redirect_like_krakend() {
    let (_b, gw) = two_endpoints(json!({})).await;
    let r = gw.get("/users/7/?x=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/users/7?x=1"));

    let r = gw.send(Method::DELETE, "/users/7/", &[], "").await;
    assert_eq!(r.status, 307, "non-GET redirects keep the method");

    let r = gw.get("/items/LIST").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/Items/list"));

    let r = gw.get("/USERS/AbC").await;
    assert_eq!(r.header("location"), Some("/users/AbC"), "parameter values keep their case");

    let r = gw.get("/Items//list").await;
    assert_eq!(r.header("location"), Some("/Items/list"));
}

#[tokio::test]
async fn redirects_can_be_disabled() {
    let (_b, gw) = two_endpoints(json!({"router": {
        "disable_redirect_trailing_slash": true, "disable_redirect_fixed_path": true}}))
    .await;
    assert_eq!(gw.get("/users/7/").await.status, 404);
    assert_eq!(gw.get("/items/LIST").await.status, 404);
}

#[tokio::test]
async fn health_debug_and_echo() {
    let b = Backend::json(json!({})).await;
    let mut c = config(json!([{"endpoint": "/a", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["echo_endpoint"] = json!(true);
    let gw = Gateway::start(c.clone()).await;
    let h = gw.get("/__health").await;
    assert_eq!(h.status, 200);
    let v = h.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["agents"], json!({}));
    assert!(v["now"].as_str().unwrap().ends_with("+0000 UTC"));

    assert_eq!(gw.get("/__debug/").await.status, 404, "debug is off unless asked for");

    let e = gw.send(Method::POST, "/__echo/x/y?a=1&a=2", &[("X-Thing", "v")], "payload").await;
    let v = e.json();
    assert_eq!(v["req_method"], "POST");
    assert_eq!(v["req_uri"], "/__echo/x/y?a=1&a=2");
    assert_eq!(v["req_querystring"]["a"], json!(["1", "2"]));
    assert_eq!(v["req_body"], "payload");
    assert_eq!(v["req_headers"]["X-Thing"], json!(["v"]));

    let gw = Gateway::start_with(c, Flags { debug: true }).await;
    for (m, p) in [(Method::GET, "/__debug/"), (Method::POST, "/__debug/any/path")] {
        let r = gw.send(m, p, &[], "").await;
        assert_eq!(r.json(), json!({"message": "pong"}));
    }
}

#[tokio::test]
async fn health_path_and_version_header_options() {
    let b = Backend::json(json!({"a": 1})).await;
    let mut c = config(json!([{"endpoint": "/a", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    let gw = Gateway::start(c.clone()).await;
    assert!(gw.get("/a").await.header("x-weir").unwrap().starts_with("Version "));

    c["extra_config"] = json!({"router": {"health_path": "/healthz", "hide_version_header": true}});
    let gw = Gateway::start(c).await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(gw.get("/__health").await.status, 404);
    assert_eq!(gw.get("/a").await.header("x-weir"), None);
}

#[tokio::test]
async fn custom_error_bodies() {
    let b = Backend::json(json!({})).await;
    let mut c = config(json!([{"endpoint": "/a", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["extra_config"] = json!({"router": {"error_body": {"404": {"error": "nope"}, "405": {"error": "method"}}}});
    let gw = Gateway::start(c).await;
    assert_eq!(gw.get("/zzz").await.json(), json!({"error": "nope"}));
    assert_eq!(gw.send(Method::POST, "/a", &[], "").await.json(), json!({"error": "method"}));
}
