//! Real `weir` nodes following the control plane, and the one-command dev suite.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::get;
use serde_json::{Value, json};

use crate::on_both_databases;
use crate::support::{Db, TestApp, free_port, spawn_app, weir_bin};

on_both_databases!(a_node_follows_promotions_and_reports_rejections);

/// A child process killed when dropped, its output in a log file.
pub(crate) struct Proc {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub(crate) fn start(mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let child =
            cmd.stdout(file.try_clone().expect("log")).stderr(file).stdin(Stdio::null()).spawn().expect("spawn");
        Self { child, log: log.to_owned() }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub(crate) async fn backend() -> String {
    let app = axum::Router::new()
        .route("/v1", get(|| async { Json(json!({"v": 1})) }))
        .route("/v2", get(|| async { Json(json!({"v": 2})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

pub(crate) async fn fetch(url: &str) -> Option<Value> {
    let client = weir_gateway::proxy::client::build(1).ok()?;
    let request = http::Request::get(url).body(http_body_util::Full::new(bytes::Bytes::new())).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request)).await.ok()?.ok()?;
    let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Polls `f` every 50 ms until it returns Some, for at most `limit`.
pub(crate) async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub(crate) fn gateway_config(backend: &str, port: u16, pattern: &str) -> Value {
    json!({"version": 3, "port": port, "endpoints": [
        {"endpoint": "/hello", "backend": [{"host": [backend], "url_pattern": pattern}]}
    ]})
}

async fn node_state(app: &TestApp, node: &str) -> Option<(String, Value)> {
    let nodes = app.get("/api/v1/gateways/shop/environments/dev/nodes", &app.admin_token).await;
    let n = nodes.body["nodes"].as_array()?.iter().find(|n| n["node_id"] == node)?.clone();
    Some((n["state"].as_str()?.to_owned(), n))
}

pub(crate) fn start_node(app: &TestApp, token_file: &Path, port: u16) -> Proc {
    start_named_node(app, token_file, port, "e2e-node")
}

/// A `weir` node of shop/dev with its own id and cache.
pub(crate) fn start_named_node(app: &TestApp, token_file: &Path, port: u16, node_id: &str) -> Proc {
    let mut cmd = Command::new(weir_bin());
    cmd.args(["run", "--control", &app.url(), "--gateway", "shop", "--env", "dev", "--poll-interval", "200ms"])
        .args(["--metrics-interval", "300ms"])
        .arg("--token-file")
        .arg(token_file)
        .arg("--trust")
        .arg(weir_management::domain::signing::public_path(&app.signing_key))
        .arg("--cache-dir")
        .arg(app.dir.path().join(format!("cache-{node_id}")))
        .args(["--node-id", node_id, "-p", &port.to_string()]);
    Proc::start(cmd, &app.dir.path().join(format!("node-{node_id}-{port}.log")))
}

async fn a_node_follows_promotions_and_reports_rejections(db: Db) {
    let app = spawn_app(db).await;
    let backend = backend().await;
    let port = free_port();
    app.gateway("shop", &[("dev", None)]).await;
    app.push("shop", &gateway_config(&backend, port, "/v1"), "v1").await;
    app.promote("shop", "dev", 1).await;
    let token_file = app.dir.path().join("node-token");
    std::fs::write(&token_file, app.node_token("shop", "dev", "e2e").await).unwrap();

    let node = start_node(&app, &token_file, port);
    let hello = format!("http://127.0.0.1:{port}/hello");
    let first = eventually(Duration::from_secs(15), || async { fetch(&hello).await.filter(|v| v["v"] == 1) }).await;
    assert!(first.is_some(), "the node never served version 1:\n{}", node.log());
    let synced = eventually(Duration::from_secs(5), || async {
        node_state(&app, "e2e-node").await.filter(|(s, n)| s == "SYNCED" && n["serial"] == 1)
    })
    .await;
    assert!(synced.is_some(), "{:?}", node_state(&app, "e2e-node").await);

    // Promote version 2 and time how long until the node serves it.
    app.push("shop", &gateway_config(&backend, port, "/v2"), "v2").await;
    let started = Instant::now();
    let promoted = app.promote("shop", "dev", 2).await;
    assert_eq!(promoted.body["serial"], 2);
    let second = eventually(Duration::from_secs(10), || async { fetch(&hello).await.filter(|v| v["v"] == 2) }).await;
    assert!(second.is_some(), "the node never served version 2:\n{}", node.log());
    eprintln!("promote -> node serving the new version: {} ms ({db:?})", started.elapsed().as_millis());

    // Rotate the signing key: the running node trusts only the old key, so it refuses
    // the next bundle, keeps serving version 2, and says why.
    let rotate = Command::new(env!("CARGO_BIN_EXE_weir-control"))
        .args(["keys", "rotate", "--signing-key"])
        .arg(&app.signing_key)
        .output()
        .unwrap();
    assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));
    assert_eq!(app.promote("shop", "dev", 1).await.body["serial"], 3);
    let rejected = eventually(Duration::from_secs(10), || async {
        node_state(&app, "e2e-node").await.filter(|(s, _)| s == "REJECTED")
    })
    .await;
    let (_, n) = rejected.unwrap_or_else(|| panic!("no rejection reported:\n{}", node.log()));
    assert!(n["reason"].as_str().unwrap().contains("not in the trust list"), "{n}");
    assert_eq!(fetch(&hello).await.unwrap()["v"], 2, "a refused bundle changes nothing");
    drop(node);

    // Restarted with the published set (old and new keys), the node takes the new bundle.
    let node = start_node(&app, &token_file, port);
    let back = eventually(Duration::from_secs(15), || async { fetch(&hello).await.filter(|v| v["v"] == 1) }).await;
    assert!(back.is_some(), "the node did not take the bundle signed with the new key:\n{}", node.log());
    let synced = eventually(Duration::from_secs(5), || async {
        node_state(&app, "e2e-node").await.filter(|(s, n)| s == "SYNCED" && n["serial"] == 3)
    })
    .await;
    assert!(synced.is_some(), "{:?}", node_state(&app, "e2e-node").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_suite_starts_serves_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (api, gateway, demo, portal) = (free_port(), free_port(), free_port(), free_port());
    let start = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-control"));
        cmd.current_dir(dir.path()).args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--gateway-port",
            &gateway.to_string(),
            "--demo-port",
            &demo.to_string(),
            "--portal-port",
            &portal.to_string(),
        ]);
        Proc::start(cmd, &dir.path().join("dev.log"))
    };
    let suite = start();
    let users = format!("http://127.0.0.1:{gateway}/api/users/2");
    let merged = eventually(Duration::from_secs(30), || async { fetch(&users).await }).await;
    let merged = merged.unwrap_or_else(|| panic!("the dev gateway never answered:\n{}", suite.log()));
    assert_eq!(merged["name"], "Grace Hopper");
    assert!(merged.get("email").is_none(), "allow-listed fields only: {merged}");
    assert_eq!(merged["orders"].as_array().map(Vec::len), Some(2), "{merged}");
    let catalog = fetch(&format!("http://127.0.0.1:{gateway}/api/catalog")).await.unwrap();
    assert_eq!(catalog["products"][0]["sku"], "WR-100");
    assert!(catalog["products"][0].get("internal_cost").is_none(), "{catalog}");

    let data = dir.path().join("weir-data");
    for file in ["weir.db", "signing.key", "signing.pub", "admin-password", "admin-token", "node-token"] {
        assert!(data.join(file).exists(), "{file} missing");
    }
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let banner = eventually(Duration::from_secs(5), || async {
        let log = suite.log();
        log.contains("Ctrl-C stops everything").then_some(log)
    })
    .await;
    let log = banner.unwrap_or_else(|| panic!("no banner:\n{}", suite.log()));
    assert!(log.contains(&format!("curl http://127.0.0.1:{gateway}/api/users/1")), "{log}");
    assert!(log.contains(token.trim()), "the admin token is printed");

    // The embedded node is a managed node like any other: it reports to the control plane.
    let nodes_url = format!("http://127.0.0.1:{api}/api/v1/gateways/demo/environments/dev/nodes");
    let client = weir_gateway::proxy::client::build(1).unwrap();
    let nodes = eventually(Duration::from_secs(10), || async {
        let request = http::Request::get(&nodes_url)
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .ok()?;
        let response = client.request(request).await.ok()?;
        let body = http_body_util::BodyExt::collect(response.into_body()).await.ok()?.to_bytes();
        let v: Value = serde_json::from_slice(&body).ok()?;
        (v["nodes"][0]["state"] == "SYNCED").then_some(v)
    })
    .await;
    assert!(nodes.is_some(), "the dev node never reported SYNCED:\n{}", suite.log());

    // The portal hands out a key for the demo Orders API that the dev gateway accepts.
    let portal = format!("http://127.0.0.1:{portal}");
    let developer = crate::portal::developer(&portal, "dev@example.com").await;
    let auth = format!("Bearer {developer}");
    let (_, _, app) = crate::portal::call(
        "POST",
        &format!("{portal}/api/v1/apps"),
        &[("authorization", &auth)],
        Some(json!({"name": "try"})),
    )
    .await;
    let subscribe = format!("{portal}/api/v1/apps/{}/subscriptions", app["id"]);
    let (_, _, sub) = crate::portal::call(
        "POST",
        &subscribe,
        &[("authorization", &auth)],
        Some(json!({"product": "orders", "plan": "free"})),
    )
    .await;
    let issue = format!("{portal}/api/v1/subscriptions/{}/keys", sub["id"]);
    let (_, _, key) = crate::portal::call("POST", &issue, &[("authorization", &auth)], None).await;
    let key = key["key"].as_str().unwrap().to_owned();
    let order = eventually(Duration::from_secs(10), || async {
        let (status, _, body) = crate::portal::try_call(
            "GET",
            &format!("http://127.0.0.1:{gateway}/api/orders/3"),
            &[("x-api-key", &key)],
            None,
        )
        .await?;
        (status == http::StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(order.unwrap()["status"], "delivered");

    // Ctrl-C stops everything cleanly; a second start reuses the data dir.
    let pid = suite.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let mut suite = suite;
    let stopped = eventually(Duration::from_secs(15), || {
        let status = suite.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(stopped.is_some_and(|s| s.success()), "dev did not stop cleanly:\n{}", suite.log());
    drop(suite);

    let again = start();
    let merged = eventually(Duration::from_secs(30), || async { fetch(&users).await }).await;
    assert!(merged.is_some(), "the second start failed:\n{}", again.log());
    assert!(!again.log().contains("first run"), "{}", again.log());
    assert_eq!(std::fs::read_to_string(data.join("admin-token")).unwrap(), token, "the admin token is kept");
}
