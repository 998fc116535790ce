//! `proxy.sequential` chains and `proxy.static` data.

use serde_json::json;

use crate::support::{Backend, Gateway, Reply, config};

#[tokio::test]
async fn later_backends_use_fields_of_earlier_responses() {
    let orders = Backend::json(json!({"order": {"id": 5, "customer": {"id": "c-9"}}, "tags": ["a", "b"]})).await;
    let customers = Backend::start(|s| Reply::json(json!({"path": s.uri}))).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/orders/{id}",
        "extra_config": {"proxy": {"sequential": true}},
        "backend": [
            {"host": [orders.url], "url_pattern": "/orders/{id}"},
            {"host": [customers.url], "url_pattern": "/customers/{resp0_order.customer.id}?tags={resp0_tags}", "group": "customer"}
        ]}])))
    .await;
    let r = gw.get("/orders/5").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("true"));
    assert_eq!(customers.last().uri, "/customers/c-9?tags=a,b");
    assert_eq!(r.json()["customer"]["path"], "/customers/c-9?tags=a,b");
}

#[tokio::test]
async fn a_failure_stops_the_chain() {
    let ok = Backend::json(json!({"id": 1})).await;
    let broken = Backend::start(|_| Reply::status(500)).await;
    let never = Backend::json(json!({"never": true})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/first-fails", "extra_config": {"proxy": {"sequential": true}},
         "backend": [{"host": [broken.url], "url_pattern": "/"}, {"host": [never.url], "url_pattern": "/{resp0_id}"}]},
        {"endpoint": "/middle-fails", "extra_config": {"proxy": {"sequential": true}},
         "backend": [{"host": [ok.url], "url_pattern": "/"}, {"host": [broken.url], "url_pattern": "/{resp0_id}"},
                     {"host": [never.url], "url_pattern": "/"}]}
    ])))
    .await;
    assert_eq!(gw.get("/first-fails").await.status, 500);
    let r = gw.get("/middle-fails").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(r.json(), json!({"id": 1}));
    assert_eq!(never.hits(), 0);
}

#[tokio::test]
async fn static_data_follows_its_strategy() {
    let ok = Backend::json(json!({"a": 1, "s": "backend"})).await;
    let broken = Backend::start(|_| Reply::status(500)).await;
    let endpoint = |path: &str, strategy: &str, hosts: Vec<&String>| {
        let backends: Vec<_> = hosts.into_iter().map(|h| json!({"host": [h], "url_pattern": "/"})).collect();
        json!({"endpoint": path, "backend": backends,
               "extra_config": {"proxy": {"static": {"strategy": strategy, "data": {"s": "static"}}}}})
    };
    let gw = Gateway::start(config(json!([
        endpoint("/always", "always", vec![&ok.url]),
        endpoint("/success", "success", vec![&ok.url]),
        endpoint("/success-miss", "success", vec![&ok.url, &broken.url]),
        endpoint("/errored", "errored", vec![&ok.url, &broken.url]),
        endpoint("/errored-miss", "errored", vec![&ok.url]),
        endpoint("/complete", "complete", vec![&ok.url]),
        endpoint("/incomplete", "incomplete", vec![&broken.url]),
    ])))
    .await;
    assert_eq!(gw.get("/always").await.json(), json!({"a": 1, "s": "static"}));
    assert_eq!(gw.get("/success").await.json(), json!({"a": 1, "s": "static"}));
    assert_eq!(gw.get("/success-miss").await.json(), json!({"a": 1, "s": "backend"}));
    assert_eq!(gw.get("/errored").await.json(), json!({"a": 1, "s": "static"}));
    assert_eq!(gw.get("/errored-miss").await.json(), json!({"a": 1, "s": "backend"}));
    assert_eq!(gw.get("/complete").await.json(), json!({"a": 1, "s": "static"}));
    let r = gw.get("/incomplete").await;
    assert_eq!(r.status, 200, "static data answers when every backend failed");
    assert_eq!(r.header("x-krakend-completed"), Some("false"));
    assert_eq!(r.json(), json!({"s": "static"}));
}
