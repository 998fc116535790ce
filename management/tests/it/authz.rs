//! The authorisation matrix: every route of the management API (from the same operation
//! table that builds the router) called by every kind of caller, against the access the
//! table declares. A route added without the right access fails here.

use http::{Method, StatusCode};
use weir_management::api::{Access, operations};
use weir_management::domain::access::Role;

use crate::on_both_databases;
use crate::support::{Db, TestApp, spawn_app};

on_both_databases!(every_route_answers_every_caller_as_declared);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    Nobody,
    Viewer,
    Operator,
    Admin,
    /// A node token of shop/dev: the environment every path below names.
    NodeHere,
    /// A node token of shop/prod.
    NodeElsewhere,
    /// A token that was revoked.
    Revoked,
}

const CALLERS: [Caller; 7] = [
    Caller::Nobody,
    Caller::Viewer,
    Caller::Operator,
    Caller::Admin,
    Caller::NodeHere,
    Caller::NodeElsewhere,
    Caller::Revoked,
];

/// Whether `caller` may use a route with `access`: Some(true) allowed, Some(false) 403,
/// None 401.
fn expected(access: Access, caller: Caller) -> Option<bool> {
    let role = match caller {
        Caller::Nobody | Caller::Revoked => return matches!(access, Access::Public).then_some(true),
        Caller::Viewer => Role::Viewer,
        Caller::Operator => Role::Operator,
        Caller::Admin => Role::Admin,
        Caller::NodeHere | Caller::NodeElsewhere => Role::Node,
    };
    Some(match access {
        Access::Public => true,
        Access::Role(needed) => role != Role::Node && role.includes(needed),
        Access::Node => caller == Caller::NodeHere,
        Access::AnyNode => role == Role::Node,
    })
}

/// The path with its parameters filled in: shop/dev, version 1, ids that do not exist.
fn concrete(path: &str) -> String {
    path.replace("{gateway}", "shop")
        .replace("{environment}", "dev")
        .replace("{node_id}", "matrix-node")
        .replace("{version}", "1")
        .replace("{from}", "1")
        .replace("{to}", "1")
        .replace("{product}", "orders")
        .replace("{id}", "999999")
}

async fn every_route_answers_every_caller_as_declared(db: Db) {
    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None), ("prod", None)]).await;
    let config = crate::support::config("http://127.0.0.1:9", &[("/a", "/a")]);
    assert_eq!(app.push("shop", &config, "v1").await.status, StatusCode::CREATED);
    let tokens = [
        (Caller::Viewer, app.token("matrix-viewer", "viewer").await),
        (Caller::Operator, app.token("matrix-operator", "operator").await),
        (Caller::Admin, app.admin_token.clone()),
        (Caller::NodeHere, app.node_token("shop", "dev", "matrix-dev").await),
        (Caller::NodeElsewhere, app.node_token("shop", "prod", "matrix-prod").await),
        (Caller::Revoked, revoked_token(&app).await),
    ];
    let token_of = |caller: Caller| tokens.iter().find(|(c, _)| *c == caller).map(|(_, t)| t.as_str());

    let mut checked = 0;
    let mut wrong = Vec::new();
    for (op, _) in operations() {
        let path = concrete(op.path);
        assert!(!path.contains('{'), "a path parameter this test does not fill: {}", op.path);
        for caller in CALLERS {
            // Bodies are empty JSON objects: an allowed call is refused as a bad request
            // (or finds nothing), so the matrix changes no state.
            let body = if op.method == Method::GET { bytes::Bytes::new() } else { bytes::Bytes::from_static(b"{}") };
            let answer = app
                .request(op.method.clone(), &path, token_of(caller), &[("content-type", "application/json")], body)
                .await;
            let got = match answer.status {
                StatusCode::UNAUTHORIZED => None,
                StatusCode::FORBIDDEN => Some(false),
                _ => Some(true),
            };
            checked += 1;
            if answer.status.is_server_error() {
                wrong.push(format!("{} {} as {caller:?}: {} {}", op.method, path, answer.status, answer.text));
            } else if got != expected(op.access, caller) {
                wrong.push(format!(
                    "{} {} as {caller:?}: {} (declared {:?}) {}",
                    op.method, path, answer.status, op.access, answer.text
                ));
            }
            if got.is_none() {
                assert_eq!(answer.headers.get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {checked} calls answered otherwise:\n{}", wrong.len(), wrong.join("\n"));
    assert!(checked >= 30 * CALLERS.len(), "the operation table lists every route: {checked} calls");
    println!("authorisation matrix: {checked} calls ({} routes x {} callers)", checked / CALLERS.len(), CALLERS.len());
}

async fn revoked_token(app: &TestApp) -> String {
    let issued =
        app.post("/api/v1/tokens", &app.admin_token, serde_json::json!({"name": "gone", "role": "admin"})).await;
    let (id, token) = (issued.body["id"].as_i64().unwrap(), issued.body["token"].as_str().unwrap().to_owned());
    let revoked = app
        .request(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(&app.admin_token), &[], bytes::Bytes::new())
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    token
}
