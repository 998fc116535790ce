//! `weir-control push` and `promote` as a CI pipeline runs them.

use std::process::Output;

use crate::support::{Db, config, spawn_app};

async fn control(args: Vec<String>, url: String, token: String) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir-control"))
            .args(args)
            .env("WEIR_URL", url)
            .env("WEIR_TOKEN", token)
            .output()
            .expect("run weir-control")
    })
    .await
    .expect("join")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_promote_from_a_pipeline() {
    let app = spawn_app(Db::Sqlite).await;
    app.gateway("shop", &[("dev", None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("krakend.yaml");
    std::fs::write(&good, "version: 3\nendpoints:\n  - endpoint: /a\n    backend:\n      - host: [\"http://127.0.0.1:9\"]\n        url_pattern: /a\n").unwrap();
    let args = |file: &std::path::Path| -> Vec<String> {
        ["push", "-c", &file.display().to_string(), "--gateway", "shop", "-m", "from CI: commit abc"]
            .map(String::from)
            .to_vec()
    };

    let out = control(args(&good), app.url(), app.admin_token.clone()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("shop: version 1 (sha256:"), "{}", text(&out.stdout));
    let again = control(args(&good), app.url(), app.admin_token.clone()).await;
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("unchanged, still version 1"), "{}", text(&again.stdout));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&config("not a url", &[("/b/{id}", "/b/{user}")])).unwrap()).unwrap();
    let out = control(args(&bad), app.url(), app.admin_token.clone()).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("error: endpoints[0].backend[0]"), "{err}");

    let promote = ["promote", "--gateway", "shop", "--env", "dev", "--version", "1"].map(String::from).to_vec();
    let out = control(promote.clone(), app.url(), app.admin_token.clone()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "shop/dev now runs version 1 (serial 1)");

    // A wrong token fails with the API's message and a non-zero exit.
    let out = control(promote, app.url(), "weir_wrong".into()).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    let versions = app.get("/api/v1/gateways/shop/versions", &app.admin_token).await;
    assert_eq!(versions.body[0]["message"], "from CI: commit abc");
}

crate::on_both_databases!(serve_bootstraps_from_the_command_line);

/// The production path: create a key, migrate, issue the first admin token, serve.
async fn serve_bootstraps_from_the_command_line(db: Db) {
    let database = crate::support::TestDb::new(db).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/signing.key");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weir-control"))
            .args(args)
            .env("WEIR_DATABASE_URL", &database.url)
            .env("WEIR_SIGNING_KEY", &key)
            .output()
            .unwrap()
    };
    let missing = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("weir-control keys init"), "{}", text(&missing.stderr));
    assert!(run(&["keys", "init"]).status.success());
    assert!(dir.path().join("keys/signing.pub").exists());
    assert!(run(&["migrate"]).status.success());
    assert!(run(&["migrate"]).status.success(), "migrations are idempotent");
    let issued = run(&["tokens", "create", "--name", "first-admin", "--role", "admin"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let token = text(&issued.stdout).trim().to_owned();
    assert!(token.starts_with("weir_"));

    let port = crate::support::free_port();
    let log = dir.path().join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_weir-control"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("WEIR_DATABASE_URL", &database.url)
        .env("WEIR_SIGNING_KEY", &key)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut answered = None;
    for _ in 0..100 {
        let out = control(
            vec![
                "promote".into(),
                "--gateway".into(),
                "none".into(),
                "--env".into(),
                "x".into(),
                "--version".into(),
                "1".into(),
            ],
            url.clone(),
            token.clone(),
        )
        .await;
        let err = text(&out.stderr);
        if !err.contains("cannot reach") {
            answered = Some(err);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let status = server.wait().unwrap();
    let answered =
        answered.unwrap_or_else(|| panic!("serve never answered:\n{}", std::fs::read_to_string(&log).unwrap()));
    // The admin token works (the gateway is unknown, not the caller).
    assert!(answered.contains("404") && answered.contains("gateway \"none\""), "{answered}");
    assert!(status.success(), "serve stops cleanly on SIGTERM");
}
