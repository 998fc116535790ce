//! The management API as a CI pipeline and an operator use it, on both databases.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use weir_gateway::bundle::{self, Expect, PublicKey, TrustList};

use crate::on_both_databases;
use crate::support::{Db, config, spawn_app, spawn_app_with};

const BACKEND: &str = "http://127.0.0.1:9";

on_both_databases!(
    uploads_are_validated_versioned_and_deduplicated,
    diff_names_endpoints_and_keys,
    promotion_rollback_and_serials,
    promotion_rule_requires_the_earlier_environment,
    nodes_fetch_signed_bundles_with_etags,
    token_roles_and_scopes_are_enforced,
    node_reports_become_synced_stale_or_rejected,
    audit_chain_detects_tampering,
    openapi_document_matches_the_routes,
);

async fn uploads_are_validated_versioned_and_deduplicated(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[]).await;
    let v1 = config(BACKEND, &[("/a", "/a")]);
    let a = app.push("shop", &v1, "first").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["version"], 1);
    let digest = a.body["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"));

    // The same config again is not a new version.
    let again = app.push("shop", &v1, "again").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["unchanged"], true);
    assert_eq!(again.body["version"], 1);
    // curl --data-binary sends a form content type: the body is still read as JSON.
    let form = app
        .request(
            Method::POST,
            "/api/v1/gateways/shop/versions",
            Some(&app.admin_token),
            &[("content-type", "application/x-www-form-urlencoded")],
            v1.to_string(),
        )
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.text);
    let xml = app
        .request(Method::POST, "/api/v1/gateways/shop/versions?format=xml", Some(&app.admin_token), &[], v1.to_string())
        .await;
    assert_eq!(xml.status, StatusCode::BAD_REQUEST);

    // YAML is accepted and becomes version 2 with version 1 as parent.
    let yaml = format!(
        "version: 3\nendpoints:\n  - endpoint: /b\n    backend:\n      - host: [\"{BACKEND}\"]\n        url_pattern: /b\n"
    );
    let a = app
        .request(
            Method::POST,
            "/api/v1/gateways/shop/versions?message=yaml",
            Some(&app.admin_token),
            &[("content-type", "application/yaml")],
            yaml,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["version"], 2);

    // An invalid config: every problem with its path, nothing stored.
    let bad = json!({"version": 3, "endpoints": [
        {"endpoint": "/x/{id}", "backend": [{"host": [BACKEND], "url_pattern": "/x/{user}"}]},
        {"endpoint": "/y", "backend": [{"host": ["not a url"], "url_pattern": "/y"}]},
    ]});
    let a = app.push("shop", &bad, "broken").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.body["code"], "invalid_config");
    let paths: Vec<&str> = a.body["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.iter().any(|p| p.starts_with("endpoints[0].backend[0]")), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("endpoints[1].backend[0]")), "{paths:?}");
    let a = app.push("shop", &json!("not a config"), "broken").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);

    let list = app.get("/api/v1/gateways/shop/versions", &app.admin_token).await;
    let versions = list.body.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["parent"], 1);
    assert_eq!(versions[0]["format"], "yaml");
    assert_eq!(versions[1]["message"], "first");
    assert_eq!(versions[1]["author"], "token:admin");

    let one = app.get("/api/v1/gateways/shop/versions/1", &app.admin_token).await;
    assert_eq!(one.body["config"]["endpoints"][0]["endpoint"], "/a");
    assert_eq!(one.body["digest"], digest.as_str());
    let missing = app.get("/api/v1/gateways/shop/versions/9", &app.admin_token).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "not_found");
    let unknown = app.push("nope", &v1, "x").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

async fn diff_names_endpoints_and_keys(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a"), ("/gone", "/g")]), "one").await;
    app.push("shop", &config(BACKEND, &[("/a", "/a2"), ("/new", "/n")]), "two").await;
    let d = app.get("/api/v1/gateways/shop/versions/1/diff/2", &app.admin_token).await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.text);
    assert_eq!(d.body["added"], json!(["GET /new"]));
    assert_eq!(d.body["removed"], json!(["GET /gone"]));
    assert_eq!(d.body["changed"], json!([{"endpoint": "GET /a", "keys": ["backend[0].url_pattern"]}]));
    let text = d.body["text"].as_str().unwrap();
    assert!(text.contains("--- version 1") && text.contains("+++ version 2"), "{text}");
    assert!(text.contains("-          \"url_pattern\": \"/a\""), "{text}");
}

async fn promotion_rollback_and_serials(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    app.push("shop", &config(BACKEND, &[("/b", "/b")]), "two").await;
    let mut serials = Vec::new();
    for version in [1, 2, 1] {
        let p = app.promote("shop", "dev", version).await;
        assert_eq!(p.status, StatusCode::OK, "{}", p.text);
        assert_eq!(p.body["version"], version);
        serials.push(p.body["serial"].as_i64().unwrap());
    }
    assert_eq!(serials, vec![1, 2, 3], "every promotion, rollbacks included, gets the next serial");
    let history = app.get("/api/v1/gateways/shop/environments/dev/promotions", &app.admin_token).await;
    let history = history.body.as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["serial"], 3);
    assert_eq!(history[0]["version"], 1);
    let audit = app.get("/api/v1/audit", &app.admin_token).await;
    assert_eq!(audit.body[0]["action"], "environment.rollback");
    assert_eq!(audit.body[1]["action"], "environment.promote");
    let env = app.get("/api/v1/gateways/shop", &app.admin_token).await;
    assert_eq!(env.body["environments"][0]["active_version"], 1);
    assert_eq!(env.body["environments"][0]["serial"], 3);

    let missing = app.promote("shop", "dev", 7).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = app.post("/api/v1/gateways/shop/environments/dev/promote", &app.admin_token, json!({"v": 1})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["code"], "bad_request");

    // Concurrent promotions still get distinct, consecutive serials.
    let (a, b, c) =
        tokio::join!(app.promote("shop", "dev", 2), app.promote("shop", "dev", 1), app.promote("shop", "dev", 2));
    let mut got: Vec<i64> = [a, b, c].iter().map(|p| p.body["serial"].as_i64().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, vec![4, 5, 6]);
}

async fn promotion_rule_requires_the_earlier_environment(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("staging", None), ("prod", Some("staging"))]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    let refused = app.promote("shop", "prod", 1).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.body["code"], "promotion_rule");
    assert!(refused.body["message"].as_str().unwrap().contains("staging"));
    assert_eq!(app.promote("shop", "staging", 1).await.status, StatusCode::OK);
    let ok = app.promote("shop", "prod", 1).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["serial"], 1, "serials are per environment");
    let bad = app
        .post("/api/v1/gateways/shop/environments", &app.admin_token, json!({"name": "qa", "requires": "nope"}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let dup = app.post("/api/v1/gateways/shop/environments", &app.admin_token, json!({"name": "prod"})).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let bad_name = app.post("/api/v1/gateways", &app.admin_token, json!({"name": "Bad Name"})).await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
}

async fn nodes_fetch_signed_bundles_with_etags(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    let node = app.node_token("shop", "dev", "n1").await;
    let path = "/api/v1/gateways/shop/environments/dev/bundle";
    let none = app.get(path, &node).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.body["code"], "no_bundle");

    let pushed = app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    app.promote("shop", "dev", 1).await;
    let first = app.get(path, &node).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["content-type"], "application/jose+json");
    let etag = first.headers["etag"].to_str().unwrap().to_owned();

    // The bundle verifies with the control plane's public key, for this scope.
    let keys = PublicKey::load_set(&weir_management::domain::signing::public_path(&app.signing_key)).unwrap();
    let jws = bundle::parse(first.text.as_bytes()).unwrap();
    let expect = Expect { gateway: Some("shop"), environment: Some("dev"), running_serial: None };
    let verified = bundle::verify(&jws, &TrustList::new(keys), &expect).unwrap();
    assert_eq!(verified.payload.metadata.serial, 1);
    assert_eq!(verified.payload.metadata.config_version, 1);
    assert_eq!(verified.payload.metadata.config_digest, pushed.body["digest"].as_str().unwrap());

    let unchanged = app.request(Method::GET, path, Some(&node), &[("if-none-match", &etag)], Bytes::new()).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.text.is_empty());

    app.promote("shop", "dev", 1).await;
    let changed = app.request(Method::GET, path, Some(&node), &[("if-none-match", &etag)], Bytes::new()).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_ne!(changed.headers["etag"].to_str().unwrap(), etag);

    // Long polls: a promotion elsewhere wakes the wait but does not answer it; one here
    // answers at once, with the new bundle, from the process that signed it.
    let etag = changed.headers["etag"].to_str().unwrap().to_owned();
    let create = app.post("/api/v1/gateways/shop/environments", &app.admin_token, json!({"name": "other"})).await;
    assert_eq!(create.status, StatusCode::CREATED);
    let wait = |etag: String| {
        let (client, url, node) = (app.client(), format!("{}{path}?wait=2", app.url()), node.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let request = http::Request::get(url)
                .header("authorization", format!("Bearer {node}"))
                .header("if-none-match", etag)
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            (response.status(), response.headers().get("etag").cloned(), started.elapsed())
        })
    };
    let waiting = wait(etag.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.promote("shop", "other", 1).await.status, StatusCode::OK);
    let (status, _, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::NOT_MODIFIED, "another environment's promotion does not answer this wait");
    assert!(took >= std::time::Duration::from_secs(2), "held for the whole wait: {took:?}");
    let waiting = wait(etag);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let promoted = app.promote("shop", "dev", 1).await;
    let (status, new_etag, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(new_etag.unwrap(), format!("\"{}\"", promoted.body["serial"]).as_str());
    assert!(took < std::time::Duration::from_millis(1500), "answered when signed: {took:?}");
}

async fn token_roles_and_scopes_are_enforced(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None), ("prod", None)]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    app.promote("shop", "prod", 1).await;
    let viewer = app.token("dashboards", "viewer").await;
    let operator = app.token("ci", "operator").await;
    let node_dev = app.node_token("shop", "dev", "n1").await;

    let none = app.request(Method::GET, "/api/v1/gateways", None, &[], Bytes::new()).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["code"], "unauthorized");
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_eq!(app.get("/api/v1/gateways", "weir_not-a-real-token").await.status, StatusCode::UNAUTHORIZED);

    assert_eq!(app.get("/api/v1/gateways", &viewer).await.status, StatusCode::OK);
    let a = app.post("/api/v1/gateways/shop/environments/dev/promote", &viewer, json!({"version": 1})).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.body["code"], "forbidden");
    let a = app.post("/api/v1/gateways/shop/environments/dev/promote", &operator, json!({"version": 1})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        app.post("/api/v1/tokens", &operator, json!({"name": "x", "role": "admin"})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.get("/api/v1/audit", &operator).await.status, StatusCode::FORBIDDEN);

    // A node token fetches its own environment's bundle and nothing else.
    assert_eq!(app.get("/api/v1/gateways/shop/environments/dev/bundle", &node_dev).await.status, StatusCode::OK);
    let other = app.get("/api/v1/gateways/shop/environments/prod/bundle", &node_dev).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert!(other.body["message"].as_str().unwrap().contains("shop/dev"));
    let a = app.post("/api/v1/gateways/shop/environments/dev/promote", &node_dev, json!({"version": 1})).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/gateways", &node_dev).await.status, StatusCode::FORBIDDEN);
    // Operators do not impersonate nodes.
    assert_eq!(
        app.get("/api/v1/gateways/shop/environments/dev/bundle", &app.admin_token).await.status,
        StatusCode::FORBIDDEN
    );

    // Revoked tokens stop working at once; secrets are stored only as hashes.
    let tokens = app.get("/api/v1/gateways/shop/environments/dev/node-tokens", &app.admin_token).await;
    let id = tokens.body[0]["id"].as_i64().unwrap();
    assert!(!tokens.text.contains(&node_dev));
    let revoked =
        app.request(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&app.admin_token), &[], Bytes::new()).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/api/v1/gateways/shop/environments/dev/bundle", &node_dev).await.status,
        StatusCode::UNAUTHORIZED
    );
    let stored: Vec<String> = sqlx::query("SELECT token_hash FROM api_tokens")
        .fetch_all(app.store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, "token_hash"))
        .collect();
    assert!(stored.iter().all(|h| h.len() == 64 && *h != operator && *h != node_dev));
}

async fn node_reports_become_synced_stale_or_rejected(db: Db) {
    // Heartbeats of a second: the states are read well within three of them, and the
    // silence below lasts well over three.
    let app = spawn_app_with(db, Duration::from_secs(1)).await;
    app.gateway("shop", &[("dev", None)]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    app.promote("shop", "dev", 1).await;
    app.promote("shop", "dev", 1).await;
    let node = app.node_token("shop", "dev", "fleet").await;
    let report = |id: &str, serial: i64, result: &str| {
        json!({"node_id": id, "hostname": "h", "version": "0.1.0", "serial": serial, "config_digest": null,
               "last_fetch_at": null, "last_result": result, "reported_at": "2026-11-27T00:00:00Z"})
    };
    for (id, serial, result) in
        [("n1", 2, "applied"), ("n2", 1, "applied"), ("n3", 1, "rejected: signature does not verify")]
    {
        let a = app
            .post(
                &format!("/api/v1/gateways/shop/environments/dev/nodes/{id}/status"),
                &node,
                report(id, serial, result),
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text);
    }
    let wrong =
        app.post("/api/v1/gateways/shop/environments/dev/nodes/n9/status", &node, report("n1", 2, "applied")).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);

    let states = |body: &Value| -> Vec<(String, String)> {
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["node_id"].as_str().unwrap().to_owned(), n["state"].as_str().unwrap().to_owned()))
            .collect()
    };
    let nodes = app.get("/api/v1/gateways/shop/environments/dev/nodes", &app.admin_token).await;
    assert_eq!(nodes.body["serial"], 2);
    assert_eq!(
        states(&nodes.body),
        vec![("n1".into(), "SYNCED".into()), ("n2".into(), "STALE".into()), ("n3".into(), "REJECTED".into())]
    );
    assert_eq!(nodes.body["nodes"][2]["reason"], "signature does not verify");

    // Silent for more than three heartbeats: STALE.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let nodes = app.get("/api/v1/gateways/shop/environments/dev/nodes", &app.admin_token).await;
    assert_eq!(states(&nodes.body)[0], ("n1".into(), "STALE".into()));
    assert!(nodes.body["nodes"][0]["reason"].as_str().unwrap().starts_with("silent"));
}

async fn audit_chain_detects_tampering(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    app.push("shop", &config(BACKEND, &[("/a", "/a")]), "one").await;
    app.promote("shop", "dev", 1).await;
    let entries = app.get("/api/v1/audit", &app.admin_token).await;
    let actions: Vec<&str> = entries.body.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec!["environment.promote", "version.create", "environment.create", "gateway.create", "token.create"]
    );
    assert_eq!(entries.body[1]["after_digest"], entries.body[0]["after_digest"]);
    let ok = app.get("/api/v1/audit/verify", &app.admin_token).await;
    assert_eq!(ok.body, json!({"entries": 5, "ok": true, "broken_at": null, "problem": null}));

    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").execute(app.store.pool()).await.unwrap();
    let broken = app.get("/api/v1/audit/verify", &app.admin_token).await;
    assert_eq!(broken.body["ok"], false);
    assert_eq!(broken.body["broken_at"], 3);

    // The CLI says the same, with a failing exit code, reading the database directly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-control"))
        .args(["audit", "verify", "--database-url", &app.db.url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken at entry 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting the newest entry is caught too (the head remembers the chain's end).
    sqlx::query("UPDATE audit_log SET actor = 'token:admin' WHERE seq = 3").execute(app.store.pool()).await.unwrap();
    let restored = app.get("/api/v1/audit/verify", &app.admin_token).await;
    assert_eq!(restored.body["ok"], true, "{}", restored.text);
    sqlx::query("DELETE FROM audit_log WHERE seq = 5").execute(app.store.pool()).await.unwrap();
    let truncated = app.get("/api/v1/audit/verify", &app.admin_token).await;
    assert_eq!(truncated.body["ok"], false);
}

async fn openapi_document_matches_the_routes(db: Db) {
    let app = spawn_app(db).await;
    let doc = app.request(Method::GET, "/api/v1/openapi.json", None, &[], Bytes::new()).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{}", paths.len());
    // Every documented operation is routed, and every one but the public ones demands a token.
    for (path, methods) in paths {
        let concrete = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    if matches!(s, "{version}" | "{from}" | "{to}" | "{id}") { "1" } else { "x" }
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in methods.as_object().unwrap() {
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let a = app.request(method.clone(), &concrete, None, &[], Bytes::new()).await;
            let public = op["security"] == json!([]);
            if public {
                assert_eq!(a.status, StatusCode::OK, "{method} {concrete}");
            } else {
                assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {concrete}: {}", a.text);
            }
        }
    }
    let unknown = app.request(Method::GET, "/api/v1/nothing", None, &[], Bytes::new()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["code"], "not_found");
    // axum's own rejections come back as JSON errors too.
    let not_a_number = app.get("/api/v1/gateways/shop/versions/latest", &app.admin_token).await;
    assert_eq!(not_a_number.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_a_number.body["code"], "bad_request", "{}", not_a_number.text);
    let wrong_method = app.request(Method::PUT, "/api/v1/gateways", Some(&app.admin_token), &[], Bytes::new()).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.body["code"], "method_not_allowed");
    assert!(wrong_method.headers.contains_key("allow"));
}
