//! No secret is ever stored or logged in plain text: the production processes
//! (`weir-control serve`, `weir-control portal`, a `weir` node) run at debug log level
//! while tokens, passwords, sessions and API keys go through them; then the database
//! (the SQLite files, or a dump of the PostgreSQL database) and every log are searched
//! for each secret.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{Proc, backend, eventually};
use crate::on_both_databases;
use crate::portal::{call, keyed_config, try_call};
use crate::support::{Db, TestDb, free_port};

on_both_databases!(no_secret_is_stored_or_logged_in_plain_text);

/// `weir-control` on the test's data directory and, for PostgreSQL, its database.
fn control(dir: &Path, database: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-control"));
    cmd.env("WEIR_DATA_DIR", dir).env("WEIR_LOG", "debug").env_remove("WEIR_DATABASE_URL");
    if let Some(url) = database {
        cmd.env("WEIR_DATABASE_URL", url);
    }
    cmd
}

fn stdout(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn up(url: &str, proc: &Proc) {
    let ok = eventually(Duration::from_secs(20), || async {
        (try_call("GET", url, &[], None).await?.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{url} never answered:\n{}", proc.log());
}

async fn no_secret_is_stored_or_logged_in_plain_text(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    // SQLite: the default file in the data directory. PostgreSQL: a database of its own.
    let postgres = match db {
        Db::Sqlite => None,
        Db::Postgres => Some(TestDb::new(db).await),
    };
    let database = postgres.as_ref().map(|d| d.url.as_str());
    let control = |dir: &Path| control(dir, database);
    let mut init = control(data);
    init.args(["keys", "init"]);
    stdout(init);
    let mut create = control(data);
    create.args(["tokens", "create", "--name", "root", "--role", "admin"]);
    let admin = stdout(create);

    let (api_port, portal_port, node_port) = (free_port(), free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let mut serve = control(data);
    serve.args(["serve", "--listen", &format!("127.0.0.1:{api_port}")]);
    let serve = Proc::start(serve, &data.join("serve.log"));
    let mut portal_cmd = control(data);
    portal_cmd.args(["portal", "--listen", &format!("127.0.0.1:{portal_port}")]).arg("--insecure-cookies");
    let portal_proc = Proc::start(portal_cmd, &data.join("portal.log"));
    let portal = format!("http://127.0.0.1:{portal_port}");
    up(&format!("{api}/api/v1/ready"), &serve).await;
    up(&format!("{portal}/"), &portal_proc).await;

    // Operator side: a gateway with an API product, an operator token and a node token.
    let auth = format!("Bearer {admin}");
    let post = |path: &str, body: Value| {
        let (url, auth) = (format!("{api}{path}"), auth.clone());
        async move { call("POST", &url, &[("authorization", &auth)], Some(body)).await }
    };
    assert_eq!(post("/api/v1/gateways", json!({"name": "shop"})).await.0, StatusCode::CREATED);
    assert_eq!(post("/api/v1/gateways/shop/environments", json!({"name": "dev"})).await.0, StatusCode::CREATED);
    let upstream = backend().await;
    let pushed = post("/api/v1/gateways/shop/versions", keyed_config(&upstream, node_port, false)).await;
    assert_eq!(pushed.0, StatusCode::CREATED, "{}", pushed.2);
    assert_eq!(post("/api/v1/gateways/shop/environments/dev/promote", json!({"version": 1})).await.0, StatusCode::OK);
    let product = json!({"name": "orders", "title": "Orders", "gateway": "shop", "environment": "dev",
                         "plans": [{"name": "free"}]});
    assert_eq!(post("/api/v1/products", product).await.0, StatusCode::CREATED);
    let operator =
        post("/api/v1/tokens", json!({"name": "ci", "role": "operator"})).await.2["token"].as_str().unwrap().to_owned();
    let node_token = post("/api/v1/gateways/shop/environments/dev/node-tokens", json!({"name": "n"})).await.2["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) =
        call("GET", &format!("{api}/api/v1/gateways"), &[("authorization", &format!("Bearer {operator}"))], None).await;
    assert_eq!(status, StatusCode::OK);

    // Developer side: sign-up, a failed and a good sign-in, an app, a key.
    let password = "plain secret password 9c1f";
    let wrong = "wrong secret password 77ab";
    let email = "secrets@example.com";
    let (signup, tokens) = (format!("{portal}/api/v1/signup"), format!("{portal}/api/v1/tokens"));
    let signed_up = call("POST", &signup, &[], Some(json!({"email": email, "password": password}))).await;
    assert_eq!(signed_up.0, StatusCode::ACCEPTED);
    let refused = call("POST", &tokens, &[], Some(json!({"email": email, "password": wrong}))).await;
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    let (_, _, signed_in) =
        call("POST", &format!("{portal}/api/v1/tokens"), &[], Some(json!({"email": email, "password": password})))
            .await;
    let session = signed_in["token"].as_str().unwrap().to_owned();
    let dev_auth = format!("Bearer {session}");
    let dev = [("authorization", dev_auth.as_str())];
    let (_, _, app) = call("POST", &format!("{portal}/api/v1/apps"), &dev, Some(json!({"name": "secret-app"}))).await;
    let (_, _, sub) = call(
        "POST",
        &format!("{portal}/api/v1/apps/{}/subscriptions", app["id"]),
        &dev,
        Some(json!({"product": "orders", "plan": "free"})),
    )
    .await;
    let (status, _, key) =
        call("POST", &format!("{portal}/api/v1/subscriptions/{}/keys", sub["id"]), &dev, Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let api_key = key["key"].as_str().unwrap().to_owned();

    // A node: the node token on its command line's file, the key in a request.
    std::fs::write(data.join("node-token"), &node_token).unwrap();
    let mut node = Command::new(crate::support::weir_bin());
    node.env("WEIR_LOG", "debug")
        .args(["run", "--control", &api, "--gateway", "shop", "--env", "dev", "--metrics-interval", "300ms"])
        .arg("--token-file")
        .arg(data.join("node-token"))
        .arg("--trust")
        .arg(data.join("signing.pub"))
        .arg("--cache-dir")
        .arg(data.join("cache"))
        .args(["-p", &node_port.to_string()]);
    let node = Proc::start(node, &data.join("node.log"));
    let orders = format!("http://127.0.0.1:{node_port}/orders/1");
    let served = eventually(Duration::from_secs(20), || async {
        let (status, _, _) = try_call("GET", &orders, &[("x-api-key", &api_key)], None).await?;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    assert!(served.is_some(), "the key never worked:\n{}", node.log());
    tokio::time::sleep(Duration::from_millis(500)).await; // a metrics export and a report
    drop((node, portal_proc, serve)); // flushes the logs and the database

    let mut stored = Vec::new();
    match database {
        None => {
            for file in ["weir.db", "weir.db-wal", "weir.db-shm"] {
                stored.extend(std::fs::read(data.join(file)).unwrap_or_default());
            }
        }
        Some(url) => {
            let dump = Command::new("pg_dump").args(["--data-only", "--dbname", url]).output().unwrap();
            assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
            stored = dump.stdout;
            assert!(!data.join("weir.db").exists(), "PostgreSQL was used, not SQLite");
        }
    }
    let logs: Vec<(String, String)> = ["serve.log", "portal.log", "node.log"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read_to_string(data.join(f)).unwrap()))
        .collect();
    let contains = |haystack: &[u8], needle: &str| haystack.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The search works: what is not secret is found, and secrets are there as hashes.
    assert!(contains(&stored, email) && contains(&stored, "secret-app"), "the database was read");
    let admin_hash = weir_management::domain::access::hash_token(&admin);
    assert!(contains(&stored, &admin_hash), "tokens are stored as their SHA-256");
    assert!(logs.iter().all(|(_, l)| l.lines().count() > 5), "debug logs were written");
    let secrets = [
        ("admin token", admin.as_str()),
        ("operator token", operator.as_str()),
        ("node token", node_token.as_str()),
        ("developer password", password),
        ("wrong password", wrong),
        ("portal session", session.as_str()),
        ("API key", api_key.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(secret.len() >= 16, "{what} is a real secret");
        assert!(!contains(&stored, secret), "the {what} is in the database in plain text");
        for (file, log) in &logs {
            assert!(!log.contains(secret), "the {what} is in {file}");
        }
    }
}
