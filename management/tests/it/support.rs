//! `spawn_app()`: the real control plane on port 0, on a fresh SQLite file or a fresh
//! PostgreSQL database, with typed helpers for the requests tests make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use weir_management::api::AppState;
use weir_management::domain::access::Role;
use weir_management::domain::signing::SigningKeys;
use weir_management::store::{Change, Store};
use weir_management::ui::UiSettings;

/// The databases every storage test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates one test per database for each named `async fn(Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Db::Postgres).await
            }
        }
    )*};
}

/// The PostgreSQL server tests create their databases on (trust auth).
pub fn postgres_admin_url() -> String {
    std::env::var("WEIR_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A database for one test, dropped with it.
pub struct TestDb {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("weir.db").display());
                Self { url, postgres_name: None, _dir: Some(dir) }
            }
            Db::Postgres => {
                let name = format!("weir_test_{}", random_hex(8));
                let admin = Store::connect(&postgres_admin_url()).await.expect(
                    "PostgreSQL on 127.0.0.1:5432 (tests/run.sh starts it; set WEIR_TEST_POSTGRES to use another)",
                );
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(admin.pool())
                    .await
                    .expect("create test database");
                admin.close().await;
                let base = postgres_admin_url();
                let url = format!("{}/{name}", base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b));
                Self { url, postgres_name: Some(name), _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs outside async context: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = Store::connect(&postgres_admin_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(admin.pool()).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A running control plane.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Store,
    pub admin_token: String,
    pub signing_key: PathBuf,
    pub dir: tempfile::TempDir,
    client: weir_gateway::proxy::client::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    // Dropped last: the database outlives the server using it.
    pub db: TestDb,
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, Duration::from_secs(30)).await
}

pub async fn spawn_app_with(db: Db, heartbeat: Duration) -> TestApp {
    spawn_app_full(db, heartbeat, |_| UiSettings::new(true, None)).await
}

/// The control plane with UI settings made once its address is known (SSO needs it).
pub async fn spawn_app_full(db: Db, heartbeat: Duration, ui: impl FnOnce(SocketAddr) -> UiSettings) -> TestApp {
    let test_db = TestDb::new(db).await;
    let url = test_db.url.clone();
    spawn_app_at(test_db, &url, heartbeat, ui).await
}

/// The control plane on `test_db`, reaching it through `url` (e.g. a proxy in front of it).
pub async fn spawn_app_at(
    test_db: TestDb,
    url: &str,
    heartbeat: Duration,
    ui: impl FnOnce(SocketAddr) -> UiSettings,
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let signing_key = dir.path().join("signing.key");
    SigningKeys::generate(&signing_key).expect("signing key");
    let store = Store::connect(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let admin =
        weir_management::control::issue_token(&store, "test", "admin", Role::Admin, None).await.expect("admin token");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState {
        store: store.clone(),
        signing_key: signing_key.clone(),
        heartbeat,
        ui: std::sync::Arc::new(ui(addr)),
    };
    tokio::spawn(weir_management::serve(listener, state, async {
        let _ = stopped.await;
    }));
    tokio::spawn(weir_management::control::publish_keyrings(store.clone(), signing_key.clone()));
    TestApp {
        addr,
        store,
        admin_token: admin.token,
        signing_key,
        dir,
        client: weir_gateway::proxy::client::build(4).expect("client"),
        stop: Some(stop),
        db: test_db,
    }
}

/// A response, with the body parsed as JSON when it is JSON.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut builder = Request::builder().method(method).uri(format!("{}{path}", self.url()));
        if let Some(t) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("answer in time")
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, body, text }
    }

    /// The HTTP client the helpers use, for requests that run beside others.
    pub fn client(&self) -> weir_gateway::proxy::client::Client {
        self.client.clone()
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.request(Method::GET, path, Some(token), &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(token), &[("content-type", "application/json")], body.to_string()).await
    }

    /// Creates a gateway with environments; `(name, requires)`.
    pub async fn gateway(&self, name: &str, environments: &[(&str, Option<&str>)]) {
        let a = self.post("/api/v1/gateways", &self.admin_token, json!({ "name": name })).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        for (env, requires) in environments {
            let a = self
                .post(
                    &format!("/api/v1/gateways/{name}/environments"),
                    &self.admin_token,
                    json!({ "name": env, "requires": requires }),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        }
    }

    /// Uploads a config as JSON and returns the answer.
    pub async fn push(&self, gateway: &str, config: &Value, message: &str) -> Answer {
        self.request(
            Method::POST,
            &format!("/api/v1/gateways/{gateway}/versions?message={message}"),
            Some(&self.admin_token),
            &[("content-type", "application/json")],
            config.to_string(),
        )
        .await
    }

    pub async fn promote(&self, gateway: &str, env: &str, version: i64) -> Answer {
        self.post(
            &format!("/api/v1/gateways/{gateway}/environments/{env}/promote"),
            &self.admin_token,
            json!({ "version": version }),
        )
        .await
    }

    /// Creates a local account with a password, as an admin would.
    pub async fn user(&self, email: &str, password: &str, role: Role) {
        let hash = weir_management::domain::access::hash_password(password).expect("hash");
        let mut w = self.store.write().await.expect("write");
        self.store.create_user_in(&mut w.tx, email, &hash, role).await.expect("user");
        w.commit(Change { actor: "test".into(), action: "user.create", target: email.into(), ..Change::default() })
            .await
            .expect("commit");
    }

    /// Issues a token through the API and returns its secret.
    pub async fn token(&self, name: &str, role: &str) -> String {
        let a = self.post("/api/v1/tokens", &self.admin_token, json!({ "name": name, "role": role })).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body["token"].as_str().expect("token").to_owned()
    }

    pub async fn node_token(&self, gateway: &str, env: &str, name: &str) -> String {
        let a = self
            .post(
                &format!("/api/v1/gateways/{gateway}/environments/{env}/node-tokens"),
                &self.admin_token,
                json!({ "name": name }),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body["token"].as_str().expect("token").to_owned()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A small valid config with one endpoint per `(path, backend url_pattern)`.
pub fn config(backend: &str, endpoints: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(path, pattern)| json!({ "endpoint": path, "backend": [{ "host": [backend], "url_pattern": pattern }] }))
        .collect();
    json!({ "version": 3, "endpoints": endpoints })
}

/// The `weir` gateway binary, built by `cargo build --bins` before the tests.
pub fn weir_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("weir");
    assert!(bin.exists(), "{} is missing: run `cargo build --bins` before the tests", bin.display());
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
