//! The demo upstream: a few small JSON services worth aggregating.

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

const USERS: [(u32, &str, &str, &str); 3] = [
    (1, "Ada Lovelace", "ada@example.com", "GB"),
    (2, "Grace Hopper", "grace@example.com", "US"),
    (3, "Katherine Johnson", "katherine@example.com", "US"),
];

async fn user(Path(id): Path<u32>) -> Result<Json<Value>, StatusCode> {
    let (id, name, email, country) = USERS.iter().find(|u| u.0 == id).ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(
        json!({ "id": id, "name": name, "email": email, "country": country, "created": format!("2025-01-{id:02}") }),
    ))
}

async fn orders(Path(id): Path<u32>) -> Result<Json<Value>, StatusCode> {
    if !USERS.iter().any(|u| u.0 == id) {
        return Err(StatusCode::NOT_FOUND);
    }
    let orders: Vec<Value> = (1..=id)
        .map(|n| json!({ "id": id * 100 + n, "total": f64::from(n) * 19.5, "status": if n == id { "shipped" } else { "delivered" } }))
        .collect();
    Ok(Json(Value::Array(orders)))
}

async fn order(Path(id): Path<u32>) -> Result<Json<Value>, StatusCode> {
    if !(1..=1000).contains(&id) {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(Json(json!({
        "id": id,
        "status": if id % 3 == 0 { "delivered" } else { "shipped" },
        "items": [{ "sku": "WR-100", "quantity": 1 + id % 3 }, { "sku": "WR-300", "quantity": 2 }],
    })))
}

async fn products() -> Json<Value> {
    Json(json!({ "products": [
        { "sku": "WR-100", "name": "Weir T-shirt", "price": 25.0, "internal_cost": 7.1 },
        { "sku": "WR-200", "name": "Weir mug", "price": 12.0, "internal_cost": 2.4 },
        { "sku": "WR-300", "name": "Weir sticker pack", "price": 5.0, "internal_cost": 0.3 },
    ]}))
}

async fn stock() -> Json<Value> {
    Json(json!({ "WR-100": 42, "WR-200": 0, "WR-300": 1000 }))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/users/{id}", get(user))
        .route("/users/{id}/orders", get(orders))
        .route("/orders/{id}", get(order))
        .route("/catalog/products", get(products))
        .route("/stock", get(stock));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
