//! The control plane when its database or signing key goes away: it answers 503 and says
//! why, nodes keep serving, and it recovers without a restart once the database is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::fleet::{backend, eventually, fetch, gateway_config, start_node};
use crate::support::{Answer, Db, TestApp, TestDb, free_port, spawn_app_at};

async fn public(app: &TestApp, path: &str) -> Answer {
    app.request(http::Method::GET, path, None, &[], bytes::Bytes::new()).await
}

/// A TCP relay in front of PostgreSQL that can be cut (every connection dropped, new ones
/// refused) and restored on the same port: the database "going down" as clients see it.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Self { addr, upstream, tasks: Arc::default() };
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        self.tasks.lock().await.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tasks.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    /// Drops the listener and every relayed connection.
    async fn cut(&self) {
        self.tasks.lock().await.shutdown().await;
    }

    async fn restore(&self) {
        self.serve(TcpListener::bind(self.addr).await.expect("rebind the relay's port")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_503_nodes_keep_serving_and_it_recovers() {
    let db = TestDb::new(Db::Postgres).await;
    let real = url_parts::split(&db.url);
    let relay = Relay::start(real.addr).await;
    let through_relay = format!("postgres://{}@{}/{}", real.user, relay.addr, real.database);
    let app =
        spawn_app_at(db, &through_relay, Duration::from_secs(30), |_| weir_management::ui::UiSettings::new(true, None))
            .await;

    let upstream = backend().await;
    let port = free_port();
    app.gateway("shop", &[("dev", None)]).await;
    assert_eq!(app.push("shop", &gateway_config(&upstream, port, "/v1"), "v1").await.status, 201);
    assert_eq!(app.promote("shop", "dev", 1).await.status, 200);
    let token = app.node_token("shop", "dev", "n1").await;
    let token_file = app.dir.path().join("node-token");
    std::fs::write(&token_file, token).unwrap();
    let node = start_node(&app, &token_file, port);
    let hello = format!("http://127.0.0.1:{port}/hello");
    eventually(Duration::from_secs(10), || fetch(&hello)).await.unwrap_or_else(|| panic!("node: {}", node.log()));
    assert_eq!(public(&app, "/api/v1/ready").await.status, 200);

    relay.cut().await;
    let started = Instant::now();
    let ready = public(&app, "/api/v1/ready").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["code"], "unavailable");
    assert_eq!(ready.headers["retry-after"], "5");
    assert_eq!(public(&app, "/api/v1/health").await.status, 200, "liveness does not depend on the database");
    let gateways = app.get("/api/v1/gateways", &app.admin_token).await;
    assert_eq!(gateways.status, 503, "{:?}", gateways.body);
    assert_eq!(gateways.body["code"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(15), "503s come within the pool's acquire timeout");
    // The node keeps serving its bundle while the control plane cannot read anything.
    for _ in 0..20 {
        assert_eq!(fetch(&hello).await, Some(serde_json::json!({"v": 1})), "node: {}", node.log());
    }

    relay.restore().await;
    eventually(Duration::from_secs(20), || async { (public(&app, "/api/v1/ready").await.status == 200).then_some(()) })
        .await
        .expect("ready again once the database is back, without a restart");
    assert_eq!(app.push("shop", &gateway_config(&upstream, port, "/v2"), "v2").await.status, 201);
    assert_eq!(app.promote("shop", "dev", 2).await.status, 200);
    eventually(Duration::from_secs(10), || async {
        (fetch(&hello).await? == serde_json::json!({"v": 2})).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("the node follows promotions again: {}", node.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_signing_key_refuses_to_promote_and_says_why() {
    let db = TestDb::new(Db::Sqlite).await;
    let url = db.url.clone();
    let app =
        spawn_app_at(db, &url, Duration::from_secs(30), |_| weir_management::ui::UiSettings::new(true, None)).await;
    app.gateway("shop", &[("dev", None)]).await;
    assert_eq!(app.push("shop", &gateway_config("http://127.0.0.1:9", 8080, "/v1"), "v1").await.status, 201);
    std::fs::remove_file(&app.signing_key).unwrap();

    let refused = app.promote("shop", "dev", 1).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    let message = refused.body["message"].as_str().unwrap();
    assert!(message.contains("signing key") && message.contains("nothing was promoted"), "{message}");
    let env = app.get("/api/v1/gateways/shop/environments/dev/promotions", &app.admin_token).await;
    assert_eq!(env.body.as_array().map(Vec::len), Some(0), "no promotion recorded: {:?}", env.body);
}

/// Just enough of a `postgres://user@host:port/database` URL for the relay.
mod url_parts {
    use std::net::{SocketAddr, ToSocketAddrs};

    pub struct Parts {
        pub user: String,
        pub addr: SocketAddr,
        pub database: String,
    }

    pub fn split(url: &str) -> Parts {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (authority, database) = rest.split_once('/').expect("a database in the URL");
        let (user, host) = authority.rsplit_once('@').expect("a user in the URL");
        let addr = host.to_socket_addrs().expect("host:port").next().expect("an address");
        Parts { user: user.to_owned(), addr, database: database.to_owned() }
    }
}
