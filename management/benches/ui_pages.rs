//! How fast the operator UI's pages answer with a fleet-sized database: 50 gateways,
//! 1,000 config versions, 1,500 nodes (three times the 500 asked for) and the audit log
//! all that leaves behind.
//!
//! `cargo bench -p weir-management --bench ui_pages` seeds a fresh SQLite database (or
//! the database in `WEIR_BENCH_DATABASE_URL`, which must be empty), serves it on a
//! loopback port and times each page over sequential requests. Prints p50/p95/max.
//!
//! One environment also gets a week of traffic from 50 nodes x 100 routes (hour rollups
//! for the week, minute rollups for the last day), for the dashboard's queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::{Value, json};
use weir_gateway::config::Format;
use weir_management::api::AppState;
use weir_management::control;
use weir_management::domain::access::{Role, generate_token, hash_token};
use weir_management::domain::signing::SigningKeys;
use weir_management::store::Store;
use weir_management::store::nodes::Report;

const GATEWAYS: usize = 50;
const VERSIONS_PER_GATEWAY: usize = 20;
const NODES_PER_ENVIRONMENT: usize = 10;
const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];
const ROUNDS: usize = 30;
const TRAFFIC_NODES: i64 = 50;
const TRAFFIC_ROUTES: i64 = 100;

/// A week of hour rollups and a day of minute rollups for one environment of 50 nodes
/// serving 100 routes each, in the aggregates ingest keeps: the whole environment, each
/// route over all nodes, each node over all routes.
async fn seed_traffic(store: &Store, environment_id: i64) {
    let started = Instant::now();
    let now_minute = weir_management::store::now_ms() / 60_000;
    let this_hour = now_minute - now_minute.rem_euclid(60);
    let sums = "requests, sum_us, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11";
    let mut tx = store.pool().begin().await.unwrap();
    let mut rows = 0;
    for (width, starts) in [
        (60, (0..7 * 24).map(|h| this_hour - h * 60).collect::<Vec<_>>()),
        (1, (0..24 * 60).map(|m| now_minute - m).collect::<Vec<_>>()),
    ] {
        for start in starts {
            // Each node-route pair serves 100 requests a minute.
            let per_series = 100 * width;
            let tables: [(&str, &str, Vec<String>, i64); 3] = [
                ("metric_totals", "", vec![String::new()], TRAFFIC_NODES * TRAFFIC_ROUTES),
                (
                    "metric_routes",
                    "route, method, ",
                    (0..TRAFFIC_ROUTES).map(|r| format!("/api/resource-{r}/{{id}}")).collect(),
                    TRAFFIC_NODES,
                ),
                (
                    "metric_nodes",
                    "node_id, ",
                    (0..TRAFFIC_NODES).map(|n| format!("node-{n}")).collect(),
                    TRAFFIC_ROUTES,
                ),
            ];
            for (table, columns, keys, series) in tables {
                let own = match table {
                    "metric_totals" => "",
                    "metric_routes" => "$4, 'GET', ",
                    _ => "$4, ",
                };
                let n = per_series * series;
                let sql = format!(
                    "INSERT INTO {table} (environment_id, width, start_minute, {columns}status_class, serial, {sums}) \
                     VALUES ($1, $2, $3, {own}'2xx', 1, {n}, {}, {}, {}, {}, {}, {}, {}, {}, {}, 0, 0, 0, 0)",
                    n * 5000,
                    n / 10,
                    n * 3 / 10,
                    n * 3 / 10,
                    n / 5,
                    n / 20,
                    n * 3 / 100,
                    n / 100,
                    n / 100,
                );
                for key in keys {
                    let q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(environment_id).bind(width).bind(start);
                    let q = if table == "metric_totals" { q } else { q.bind(key) };
                    q.execute(&mut *tx).await.unwrap();
                    rows += 1;
                }
            }
        }
    }
    tx.commit().await.unwrap();
    eprintln!("seeded {rows} traffic rollup rows in {:.1} s", started.elapsed().as_secs_f64());
}

fn config(version: usize) -> String {
    let endpoints: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "endpoint": format!("/api/v{version}/resource-{i}/{{id}}"),
                "backend": [
                    {"host": ["http://127.0.0.1:9"], "url_pattern": "/items/{id}", "allow": ["id", "name", "price"]},
                    {"host": ["http://127.0.0.1:9"], "url_pattern": "/stock/{id}", "group": "stock"},
                ],
            })
        })
        .collect();
    json!({"version": 3, "timeout": "3s", "endpoints": endpoints}).to_string()
}

async fn seed(store: &Store, key: &std::path::Path) {
    let started = Instant::now();
    for g in 0..GATEWAYS {
        let gw = format!("gw-{g:02}");
        control::create_gateway(store, "bench", &gw, "seeded for the page benchmark").await.unwrap();
        let mut previous = None;
        for env in ENVIRONMENTS {
            control::create_environment(store, "bench", &gw, env, previous).await.unwrap();
            previous = Some(env);
        }
        for v in 1..=VERSIONS_PER_GATEWAY {
            control::push_version(store, "bench", &gw, &config(v), Format::Json, &format!("change {v}")).await.unwrap();
        }
        for v in [VERSIONS_PER_GATEWAY - 2, VERSIONS_PER_GATEWAY - 1, VERSIONS_PER_GATEWAY] {
            for env in ENVIRONMENTS {
                control::promote(store, key, "bench", &gw, env, v as i64).await.unwrap();
            }
        }
        for env in ENVIRONMENTS {
            let e = store.environment(&gw, env).await.unwrap();
            for n in 0..NODES_PER_ENVIRONMENT {
                // Every seventh node lags a serial behind, so pages show mixed states.
                let serial = if n % 7 == 0 { e.serial - 1 } else { e.serial };
                let report = Report {
                    node_id: format!("{gw}-{env}-{n}"),
                    hostname: format!("host-{n}"),
                    version: "0.1.0".into(),
                    serial: Some(serial),
                    config_digest: None,
                    last_fetch_at: None,
                    last_result: "applied".into(),
                    reported_at: "2026-11-27T00:00:00Z".into(),
                };
                store.record_node(e.id, &report).await.unwrap();
            }
        }
    }
    eprintln!(
        "seeded {GATEWAYS} gateways, {} versions, {} nodes in {:.1} s",
        GATEWAYS * VERSIONS_PER_GATEWAY,
        GATEWAYS * ENVIRONMENTS.len() * NODES_PER_ENVIRONMENT,
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let url = std::env::var("WEIR_BENCH_DATABASE_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let key = dir.path().join("signing.key");
        SigningKeys::generate(&key).unwrap();
        seed(&store, &key).await;
        let prod = store.environment("gw-25", "prod").await.unwrap();
        seed_traffic(&store, prod.id).await;

        let mut w = store.write().await.unwrap();
        let user = store.create_user_in(&mut w.tx, "bench@example.com", "", Role::Admin).await.unwrap();
        w.commit(weir_management::store::Change { actor: "bench".into(), action: "user.create", ..Default::default() })
            .await
            .unwrap();
        let session = generate_token("").unwrap();
        store.create_session(&hash_token(&session), user, "csrf", i64::MAX).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState {
            store: store.clone(),
            signing_key: key,
            heartbeat: Duration::from_secs(30),
            ui: std::sync::Arc::new(weir_management::ui::UiSettings::new(true, None)),
        };
        tokio::spawn(weir_management::serve(listener, state, std::future::pending()));
        let client = weir_gateway::proxy::client::build(1).unwrap();
        let last = VERSIONS_PER_GATEWAY;
        let pages = [
            "/".to_owned(),
            "/gateways/gw-25".into(),
            format!("/gateways/gw-25/versions/{last}"),
            format!("/gateways/gw-25/diff?from=1&to={last}"),
            format!("/gateways/gw-25/promote?env=prod&version={}", last - 1),
            "/gateways/gw-25/environments/prod".into(),
            "/gateways/gw-25/environments/prod/dashboard?range=1h".into(),
            "/gateways/gw-25/environments/prod/dashboard?range=24h".into(),
            "/gateways/gw-25/environments/prod/dashboard?range=7d".into(),
            "/gateways/gw-25/versions/new".into(),
            "/fleet".into(),
            "/tokens".into(),
            "/users".into(),
            "/audit".into(),
        ];
        println!("| page | p50 ms | p95 ms | max ms | bytes |");
        println!("|---|---|---|---|---|");
        for page in pages {
            let mut times = Vec::with_capacity(ROUNDS);
            let mut size = 0;
            for round in 0..ROUNDS + 3 {
                let request = http::Request::get(format!("http://{addr}{page}"))
                    .header("cookie", format!("weir_session={session}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let started = Instant::now();
                let response = client.request(request).await.unwrap();
                assert_eq!(response.status(), 200, "{page}");
                size = response.into_body().collect().await.unwrap().to_bytes().len();
                if round >= 3 {
                    times.push(started.elapsed());
                }
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "| `{page}` | {:.1} | {:.1} | {:.1} | {size} |",
                ms(times[ROUNDS / 2]),
                ms(times[ROUNDS * 95 / 100]),
                ms(times[ROUNDS - 1])
            );
        }
    });
}
