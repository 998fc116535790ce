//! The developer portal's rules, against real nodes, on both databases.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};

use crate::fleet::{Proc, backend, eventually, start_named_node};
use crate::on_both_databases;
use crate::support::{Db, TestApp, free_port, spawn_app};

on_both_databases!(
    quotas_are_shared_by_the_fleet_through_redis,
    keys_reach_every_node_and_their_revocation_too,
    plans_rotation_and_isolation_between_developers,
    manual_approvals_for_subscriptions_and_sign_ups,
);

/// A JSON call to any of our servers: `(status, headers, body)`.
pub(crate) async fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, http::HeaderMap, Value) {
    try_call(method, url, headers, body).await.unwrap_or_else(|| panic!("no answer from {url}"))
}

/// The same, or `None` when nothing answers (a server still starting).
pub(crate) async fn try_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Option<(StatusCode, http::HeaderMap, Value)> {
    let client = weir_gateway::proxy::client::build(1).ok()?;
    let mut request = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request.body(Full::new(body)).ok()?))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.ok()?.to_bytes();
    Some((parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// The portal on port 0 beside the control plane, on the same database.
pub(crate) async fn spawn_portal(app: &TestApp, approve_sign_ups: bool, gateway_url: String) -> String {
    let portal = weir_portal::Portal::new(
        std::sync::Arc::new(app.store.clone()),
        weir_portal::Settings { secure_cookies: true, approve_sign_ups, gateway_url },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(weir_portal::serve(listener, portal, std::future::pending()));
    url
}

/// A gateway config with an Orders product (role `orders`) and another one; quotas are
/// counted in the Redis on 127.0.0.1:6379 when `shared_quotas`.
pub(crate) fn keyed_config(backend: &str, port: u16, shared_quotas: bool) -> Value {
    let mut extra = json!({"auth/api-keys": {"keys": [], "identifier": "X-Api-Key"}});
    if shared_quotas {
        extra["redis"] = json!({"connection_pools": [{"name": "quotas", "address": "127.0.0.1:6379"}]});
        extra["weir/keyring"] = json!({"quota_redis": "quotas"});
    }
    json!({"version": 3, "port": port, "extra_config": extra, "endpoints": [
        {"endpoint": "/orders/{id}", "extra_config": {"auth/api-keys": {"roles": ["orders"]}},
         "backend": [{"host": [backend], "url_pattern": "/v1"}]},
        {"endpoint": "/billing", "extra_config": {"auth/api-keys": {"roles": ["billing"]}},
         "backend": [{"host": [backend], "url_pattern": "/v2"}]},
    ]})
}

/// shop/dev running `keyed_config`, with products `orders` (plans `free`, `tiny`: two
/// requests a day) and `billing`, and `nodes` real nodes.
pub(crate) async fn keyed_shop(app: &TestApp, nodes: usize, orders_approval: &str) -> (Vec<Proc>, Vec<u16>) {
    keyed_shop_with(app, nodes, orders_approval, false).await
}

pub(crate) async fn keyed_shop_with(
    app: &TestApp,
    nodes: usize,
    orders_approval: &str,
    shared_quotas: bool,
) -> (Vec<Proc>, Vec<u16>) {
    let upstream = backend().await;
    let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    app.gateway("shop", &[("dev", None)]).await;
    // Every node reads its port from the config; each gets its own with -p.
    let pushed = app.push("shop", &keyed_config(&upstream, ports[0], shared_quotas), "keys").await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{}", pushed.text);
    app.promote("shop", "dev", 1).await;
    for (name, approval, plans) in [
        (
            "orders",
            orders_approval,
            json!([{"name": "free", "rate_per_second": 1000}, {"name": "tiny", "quota_per_day": 2}]),
        ),
        ("billing", "auto", json!([{"name": "basic"}])),
    ] {
        let product = json!({"name": name, "title": format!("{name} API"), "gateway": "shop", "environment": "dev",
                             "approval": approval, "plans": plans});
        let a = app.post("/api/v1/products", &app.admin_token, product).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    let token_file = app.dir.path().join("node-token");
    std::fs::write(&token_file, app.node_token("shop", "dev", "fleet").await).unwrap();
    let procs: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| start_named_node(app, &token_file, *port, &format!("node-{i}")))
        .collect();
    for port in &ports {
        let up = eventually(Duration::from_secs(15), || async {
            let (status, _, _) = try_call("GET", &format!("http://127.0.0.1:{port}/__health"), &[], None).await?;
            (status == StatusCode::OK).then_some(())
        })
        .await;
        assert!(up.is_some(), "node on {port} did not start:\n{}", procs.iter().map(Proc::log).collect::<String>());
    }
    (procs, ports)
}

/// A developer signed up and signed in through the portal's API; returns the bearer token.
pub(crate) async fn developer(portal: &str, email: &str) -> String {
    let creds = json!({"email": email, "password": "correct horse battery staple"});
    let (status, _, _) = call("POST", &format!("{portal}/api/v1/signup"), &[], Some(creds.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, body) = call("POST", &format!("{portal}/api/v1/tokens"), &[], Some(creds)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

struct Dev<'a> {
    portal: &'a str,
    token: String,
}

impl Dev<'_> {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let auth = format!("Bearer {}", self.token);
        let (s, _, b) = call("POST", &format!("{}{path}", self.portal), &[("authorization", &auth)], Some(body)).await;
        (s, b)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let auth = format!("Bearer {}", self.token);
        let (s, _, b) = call("GET", &format!("{}{path}", self.portal), &[("authorization", &auth)], None).await;
        (s, b)
    }

    /// App + subscription; returns the subscription's id and status.
    async fn subscribe(&self, app: &str, product: &str, plan: &str) -> (i64, String) {
        let (s, a) = self.post("/api/v1/apps", json!({"name": app})).await;
        assert_eq!(s, StatusCode::CREATED, "{a}");
        let path = format!("/api/v1/apps/{}/subscriptions", a["id"]);
        let (s, sub) = self.post(&path, json!({"product": product, "plan": plan})).await;
        assert_eq!(s, StatusCode::CREATED, "{sub}");
        (sub["id"].as_i64().unwrap(), sub["status"].as_str().unwrap().to_owned())
    }

    async fn key(&self, subscription: i64) -> (i64, String) {
        let (s, k) = self.post(&format!("/api/v1/subscriptions/{subscription}/keys"), json!({})).await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        (k["id"].as_i64().unwrap(), k["key"].as_str().unwrap().to_owned())
    }
}

async fn with_key(port: u16, path: &str, key: &str) -> (StatusCode, http::HeaderMap, Value) {
    call("GET", &format!("http://127.0.0.1:{port}{path}"), &[("x-api-key", key)], None).await
}

/// Waits until every node answers `want` to the key; returns how long it took.
async fn everywhere(ports: &[u16], key: &str, want: StatusCode) -> Duration {
    let started = Instant::now();
    let done = eventually(Duration::from_secs(20), || async {
        for port in ports {
            if with_key(*port, "/orders/7", key).await.0 != want {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(done.is_some(), "not every node answered {want} within 20 s");
    started.elapsed()
}

async fn quotas_are_shared_by_the_fleet_through_redis(db: Db) {
    let app = spawn_app(db).await;
    let (_nodes, ports) = keyed_shop_with(&app, 2, "auto", true).await;
    let portal = spawn_portal(&app, false, format!("http://127.0.0.1:{}", ports[0])).await;
    let dev = Dev { portal: &portal, token: developer(&portal, "quota@example.com").await };
    let (tiny, _) = dev.subscribe("fleet-app", "orders", "tiny").await;
    let (_, key) = dev.key(tiny).await;
    // Wait on the second node with a request it counts, and on the first with one it
    // refuses without counting (the key's product does not cover /billing): each node
    // learns of the key on its own, and the first must not have counted anything yet.
    everywhere(&ports[1..], &key, StatusCode::OK).await;
    let known = eventually(Duration::from_secs(20), || async {
        (with_key(ports[0], "/billing", &key).await.0 == StatusCode::FORBIDDEN).then_some(())
    })
    .await;
    assert!(known.is_some(), "the first node did not learn of the key within 20 s");
    assert_eq!(with_key(ports[0], "/orders/1", &key).await.0, StatusCode::OK, "the second of two a day");
    // Counted per node, the first node would still have one left; shared, the day is over.
    let (status, headers, _) = with_key(ports[0], "/orders/1", &key).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(with_key(ports[1], "/orders/1", &key).await.0, StatusCode::TOO_MANY_REQUESTS);
}

async fn keys_reach_every_node_and_their_revocation_too(db: Db) {
    let app = spawn_app(db).await;
    let (_nodes, ports) = keyed_shop(&app, 3, "auto").await;
    let portal = spawn_portal(&app, false, format!("http://127.0.0.1:{}", ports[0])).await;
    let dev = Dev { portal: &portal, token: developer(&portal, "ada@example.com").await };
    let (sub, status) = dev.subscribe("ada-app", "orders", "free").await;
    assert_eq!(status, "active");

    let mut issued = Vec::new();
    let mut revoked = Vec::new();
    for _ in 0..5 {
        let (id, key) = dev.key(sub).await;
        assert!(key.starts_with("wk_") && key.len() > 40);
        issued.push(everywhere(&ports, &key, StatusCode::OK).await);
        let (s, _) = dev.post(&format!("/api/v1/keys/{id}/revoke"), json!({})).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        revoked.push(everywhere(&ports, &key, StatusCode::UNAUTHORIZED).await);
        let (_, _, body) = with_key(ports[1], "/orders/7", &key).await;
        assert_eq!(body["error"], "api key revoked");
    }
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default().as_millis();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_millis()
    };
    eprintln!(
        "key propagation to 3 nodes ({db:?}): issue median {} ms, worst {} ms; revoke median {} ms, worst {} ms",
        median(&mut issued.clone()),
        worst(&issued),
        median(&mut revoked.clone()),
        worst(&revoked)
    );

    // The key is for its product only; unknown keys get the plain refusal.
    let (_, key) = dev.key(sub).await;
    everywhere(&ports, &key, StatusCode::OK).await;
    assert_eq!(with_key(ports[0], "/billing", &key).await.0, StatusCode::FORBIDDEN);
    let (status, _, body) = with_key(ports[0], "/orders/7", "wk_unknown").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    // Every key event is audited, and no key appears in the audit log.
    let audit = app.get("/api/v1/audit?limit=1000", &app.admin_token).await;
    assert_eq!(audit.text.matches("\"key.issue\"").count(), 6);
    assert_eq!(audit.text.matches("\"key.revoke\"").count(), 5);
    assert!(!audit.text.contains(&key));
    let verify = app.get("/api/v1/audit/verify", &app.admin_token).await;
    assert_eq!(verify.body["ok"], true);
}

async fn plans_rotation_and_isolation_between_developers(db: Db) {
    let app = spawn_app(db).await;
    let (_nodes, ports) = keyed_shop(&app, 1, "auto").await;
    let portal = spawn_portal(&app, false, format!("http://127.0.0.1:{}", ports[0])).await;
    let ada = Dev { portal: &portal, token: developer(&portal, "ada@example.com").await };
    let bob = Dev { portal: &portal, token: developer(&portal, "bob@example.com").await };

    // A tiny plan: two requests a day, then 429 with Retry-After.
    let (tiny, _) = ada.subscribe("tiny-app", "orders", "tiny").await;
    let (_, key) = ada.key(tiny).await;
    everywhere(&ports, &key, StatusCode::OK).await; // the first request of the day
    assert_eq!(with_key(ports[0], "/orders/1", &key).await.0, StatusCode::OK);
    let (status, headers, body) = with_key(ports[0], "/orders/1", &key).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"], "plan limit reached");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 86_400);

    // Rotation with a grace period: both keys work; without one, the old key expires.
    let (free, _) = ada.subscribe("main-app", "orders", "free").await;
    let (old_id, old) = ada.key(free).await;
    everywhere(&ports, &old, StatusCode::OK).await;
    let (s, rotated) = ada.post(&format!("/api/v1/keys/{old_id}/rotate"), json!({"grace_hours": 1})).await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    let new = rotated["key"].as_str().unwrap().to_owned();
    everywhere(&ports, &new, StatusCode::OK).await;
    assert_eq!(
        with_key(ports[0], "/orders/1", &old).await.0,
        StatusCode::OK,
        "the old key works during the grace period"
    );
    let new_id = rotated["id"].as_i64().unwrap();
    let (s, _) = ada.post(&format!("/api/v1/keys/{new_id}/rotate"), json!({"grace_hours": 0})).await;
    assert_eq!(s, StatusCode::CREATED);
    everywhere(&ports, &new, StatusCode::UNAUTHORIZED).await;
    assert_eq!(with_key(ports[0], "/orders/1", &new).await.2["error"], "api key expired");
    let (s, _) = ada.post(&format!("/api/v1/keys/{new_id}/rotate"), json!({"grace_hours": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "an expired key cannot be rotated");

    // Bob sees only his own things and cannot touch Ada's.
    let (_, bob_apps) = bob.get("/api/v1/apps").await;
    assert_eq!(bob_apps, json!([]));
    let (_, bob_keys) = bob.get("/api/v1/keys").await;
    assert_eq!(bob_keys, json!([]));
    assert_eq!(bob.post(&format!("/api/v1/keys/{old_id}/revoke"), json!({})).await.0, StatusCode::NOT_FOUND);
    let rotate = bob.post(&format!("/api/v1/keys/{old_id}/rotate"), json!({"grace_hours": 1})).await;
    assert_eq!(rotate.0, StatusCode::NOT_FOUND);
    assert_eq!(bob.post(&format!("/api/v1/subscriptions/{free}/keys"), json!({})).await.0, StatusCode::NOT_FOUND);
    let (_, ada_apps) = ada.get("/api/v1/apps").await;
    let ada_app = ada_apps[0]["id"].as_i64().unwrap();
    let (s, _) =
        bob.post(&format!("/api/v1/apps/{ada_app}/subscriptions"), json!({"product": "orders", "plan": "free"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(with_key(ports[0], "/orders/1", &old).await.0, StatusCode::OK, "Ada's key still works");

    // The nodes report each app's requests; the tiny plan let exactly two through.
    let tiny_app = ada_apps.as_array().unwrap().iter().find(|a| a["name"] == "tiny-app").unwrap()["id"].clone();
    let usage = eventually(Duration::from_secs(10), || async {
        let (_, usage) = ada.get("/api/v1/usage").await;
        let tiny = usage.as_array()?.iter().find(|u| u["app_id"] == tiny_app)?.clone();
        (tiny["last_day"] == 2).then_some(tiny)
    })
    .await;
    assert_eq!(usage.expect("usage reported within 10 s")["last_30_days"], 2);
    let (_, bob_usage) = bob.get("/api/v1/usage").await;
    assert_eq!(bob_usage, json!([]), "Bob sees no usage of Ada's apps");

    // Signing up again with a known address reads the same as a new one; no token, no API.
    let again = json!({"email": "ada@example.com", "password": "another long password"});
    let (s, _, body) = call("POST", &format!("{portal}/api/v1/signup"), &[], Some(again)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(body["message"].as_str().unwrap().starts_with("If that address"));
    assert_eq!(call("GET", &format!("{portal}/api/v1/keys"), &[], None).await.0, StatusCode::UNAUTHORIZED);
    let wrong = json!({"email": "ada@example.com", "password": "not the password at all"});
    assert_eq!(call("POST", &format!("{portal}/api/v1/tokens"), &[], Some(wrong)).await.0, StatusCode::UNAUTHORIZED);
}

async fn manual_approvals_for_subscriptions_and_sign_ups(db: Db) {
    let app = spawn_app(db).await;
    let (_nodes, ports) = keyed_shop(&app, 1, "manual").await;
    let portal = spawn_portal(&app, true, format!("http://127.0.0.1:{}", ports[0])).await;

    // Sign-ups wait for an admin.
    let creds = json!({"email": "eve@example.com", "password": "correct horse battery staple"});
    call("POST", &format!("{portal}/api/v1/signup"), &[], Some(creds.clone())).await;
    let (s, _, body) = call("POST", &format!("{portal}/api/v1/tokens"), &[], Some(creds.clone())).await;
    assert_eq!((s, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("pending")));
    let developers = app.get("/api/v1/developers", &app.admin_token).await;
    let id = developers.body[0]["id"].as_i64().unwrap();
    let operator = app.token("ops", "operator").await;
    let forbidden = app.post(&format!("/api/v1/developers/{id}/approve"), &operator, json!({})).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "approving accounts is for admins");
    let ok = app.post(&format!("/api/v1/developers/{id}/approve"), &app.admin_token, json!({})).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    let (s, _, body) = call("POST", &format!("{portal}/api/v1/tokens"), &[], Some(creds)).await;
    assert_eq!(s, StatusCode::CREATED);
    let eve = Dev { portal: &portal, token: body["token"].as_str().unwrap().to_owned() };

    // Subscriptions to a manual product wait for an operator; no keys until then.
    let (sub, status) = eve.subscribe("eve-app", "orders", "free").await;
    assert_eq!(status, "pending");
    let (s, body) = eve.post(&format!("/api/v1/subscriptions/{sub}/keys"), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let approved = app.post(&format!("/api/v1/subscriptions/{sub}/approve"), &operator, json!({})).await;
    assert_eq!(approved.status, StatusCode::NO_CONTENT);
    let (_, key) = eve.key(sub).await;
    everywhere(&ports, &key, StatusCode::OK).await;
    // Rejecting it later takes its keys off the nodes.
    let rejected = app.post(&format!("/api/v1/subscriptions/{sub}/reject"), &operator, json!({})).await;
    assert_eq!(rejected.status, StatusCode::NO_CONTENT);
    everywhere(&ports, &key, StatusCode::UNAUTHORIZED).await;
    let subs = app.get("/api/v1/subscriptions", &app.admin_token).await;
    assert_eq!(subs.body[0]["status"], "rejected");

    // Operators' own OpenAPI text is merged over the generated reference.
    let spec = json!({"openapi": "3.1.0", "paths": {"/orders/{id}": {"get": {"summary": "Fetch one order"}}}});
    let put =
        app.request(http::Method::PUT, "/api/v1/products/orders/openapi", Some(&operator), &[], spec.to_string()).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{}", put.text);
    let bad = app.request(http::Method::PUT, "/api/v1/products/orders/openapi", Some(&operator), &[], "{}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let (s, _, doc) = call("GET", &format!("{portal}/docs/orders/openapi.json"), &[], None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["paths"]["/orders/{id}"]["get"]["summary"], "Fetch one order");
    assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["name"], "X-Api-Key");
    assert!(doc["paths"].get("/billing").is_none(), "only the product's endpoints");
}
