//! The authorisation matrix: every route of the management API (from the same operation
//! table that builds the router) called by every kind of caller, against the access the
//! table declares. A route added without the right access fails here.

use http::{Method, StatusCode};
use weir_management::api::{Access, operations};
use weir_management::domain::access::Role;

use crate::on_both_databases;
use crate::support::{Db, TestApp, spawn_app};

on_both_databases!(every_route_answers_every_caller_as_declared, every_ui_page_and_form_checks_session_role_and_csrf);

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

/// The operator UI's routes with the least role each needs; `None`: no session needed.
/// The test reads the routers' source too, so a route missing here fails it.
const UI_ROUTES: [(&str, &str, Option<Role>); 32] = [
    ("GET", "/static/weir.css", None),
    ("GET", "/static/weir.js", None),
    ("GET", "/login", None),
    ("POST", "/login", None),
    ("GET", "/auth/sso", None),
    ("GET", "/auth/sso/callback", None),
    // Signing out needs a session and its CSRF token; tested in ui.rs, where ending
    // sessions does not get in the way of the matrix.
    ("POST", "/logout", None),
    ("POST", "/logout/everywhere", None),
    ("GET", "/", Some(Role::Viewer)),
    ("GET", "/fleet", Some(Role::Viewer)),
    ("GET", "/gateways/{gw}", Some(Role::Viewer)),
    ("POST", "/gateways/{gw}/versions", Some(Role::Operator)),
    ("GET", "/gateways/{gw}/versions/new", Some(Role::Operator)),
    ("GET", "/gateways/{gw}/versions/{n}", Some(Role::Viewer)),
    ("GET", "/gateways/{gw}/diff", Some(Role::Viewer)),
    ("GET", "/gateways/{gw}/promote", Some(Role::Operator)),
    ("GET", "/gateways/{gw}/environments/{env}", Some(Role::Viewer)),
    ("GET", "/gateways/{gw}/environments/{env}/nodes", Some(Role::Viewer)),
    ("POST", "/gateways/{gw}/environments/{env}/promote", Some(Role::Operator)),
    ("GET", "/tokens", Some(Role::Admin)),
    ("POST", "/tokens", Some(Role::Admin)),
    ("POST", "/node-tokens", Some(Role::Admin)),
    ("POST", "/tokens/{id}/revoke", Some(Role::Admin)),
    ("GET", "/users", Some(Role::Admin)),
    ("POST", "/users", Some(Role::Admin)),
    ("POST", "/users/{id}/role", Some(Role::Admin)),
    ("GET", "/audit", Some(Role::Admin)),
    ("GET", "/gateways/{gw}/environments/{env}/dashboard", Some(Role::Viewer)),
    ("GET", "/products", Some(Role::Viewer)),
    ("POST", "/products", Some(Role::Operator)),
    ("POST", "/subscriptions/{id}/{decision}", Some(Role::Operator)),
    ("POST", "/developers/{id}/approve", Some(Role::Admin)),
];

/// `(method, path)` of every `.route(...)` in the UI routers' source.
fn ui_routes_in_source() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for source in [include_str!("../../src/ui/mod.rs"), include_str!("../../src/ui/pages.rs")] {
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
            let path = line[8..].split('"').next().unwrap_or_default().to_owned();
            for (method, call) in [("GET", "get("), ("POST", "post(")] {
                if line.contains(&format!(" {call}"))
                    || line.contains(&format!(", {call}"))
                    || line.contains(&format!(".{call}"))
                {
                    out.push((method.to_owned(), path.clone()));
                }
            }
        }
    }
    out
}

/// A UI path with its parameters filled in, and the query a page needs.
fn ui_concrete(path: &str) -> String {
    let path = path
        .replace("{gw}", "shop")
        .replace("{env}", "dev")
        .replace("{n}", "1")
        .replace("{decision}", "approve")
        .replace("{id}", "999999");
    if path.ends_with("/diff") {
        format!("{path}?from=1&to=1")
    } else if path.ends_with("/shop/promote") {
        format!("{path}?env=dev&version=1")
    } else {
        path
    }
}

/// Every UI route as nobody, as a management API token (the UI takes sessions only), as
/// each role's session, and every form with a wrong CSRF token: the sign-in redirect,
/// 403, or the page, as the table says.
async fn every_ui_page_and_form_checks_session_role_and_csrf(db: Db) {
    let mut listed: Vec<(String, String)> =
        UI_ROUTES.iter().map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned())).collect();
    let mut in_source = ui_routes_in_source();
    listed.sort();
    in_source.sort();
    assert_eq!(listed, in_source, "the table lists exactly the UI routes the source declares");

    let app = spawn_app(db).await;
    app.gateway("shop", &[("dev", None)]).await;
    let config = crate::support::config("http://127.0.0.1:9", &[("/a", "/a")]);
    assert_eq!(app.push("shop", &config, "v1").await.status, StatusCode::CREATED);
    let password = "a long enough password";
    let mut sessions = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let email = format!("matrix-{role}@example.com");
        app.user(&email, password, role).await;
        let (_, cookie) = crate::ui::sign_in(&app, &email, password, "/").await;
        let cookie = cookie.expect("a session");
        let home = app.request(Method::GET, "/", None, &[("cookie", &cookie)], bytes::Bytes::new()).await;
        let csrf = crate::ui::hidden(&home.text, "csrf");
        sessions.push((role, cookie, csrf));
    }

    let form = |csrf: &str, n: usize| {
        // Every field any UI form reads, valid for each, so a form that is let through
        // reaches its handler; unique names, so repeated creations do not collide.
        format!(
            "csrf={csrf}&message=matrix&format=json&config=%7B%7D&version=1&name=matrix-{n}&title=Matrix&description=\
             &role=viewer&environment=dev&email=matrix-new-{n}%40example.com&approval=auto&plans=free"
        )
    };
    let form_headers = |cookie: &str| vec![("cookie".to_owned(), cookie.to_owned())];
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (n, (method, template, least)) in UI_ROUTES.iter().enumerate() {
        let Some(least) = least else { continue };
        let method: Method = method.parse().unwrap();
        let path = ui_concrete(template);
        let send = |cookie: Option<String>, token: Option<String>, body: String| {
            let (app, method, path) = (&app, method.clone(), path.clone());
            async move {
                let mut headers = vec![("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned())];
                if let Some(c) = cookie {
                    headers.extend(form_headers(&c));
                }
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let body = if method == Method::GET { String::new() } else { body };
                app.request(method, &path, token.as_deref(), &headers, body).await
            }
        };
        // No session, and an admin API token instead of a session: the sign-in page.
        for token in [None, Some(app.admin_token.clone())] {
            let a = send(None, token.clone(), form("none", n)).await;
            checked += 1;
            let location = a.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if a.status != StatusCode::SEE_OTHER || !location.starts_with("/login?next=") {
                wrong.push(format!("{method} {path} with token {}: {} {location}", token.is_some(), a.status));
            }
        }
        for (role, cookie, csrf) in &sessions {
            let a = send(Some(cookie.clone()), None, form(csrf, n * 10 + checked)).await;
            checked += 1;
            let allowed = role.includes(*least);
            let refused = a.status == StatusCode::FORBIDDEN;
            let to_login =
                a.headers.get("location").and_then(|v| v.to_str().ok()).is_some_and(|l| l.starts_with("/login"));
            if a.status.is_server_error() || to_login || refused == allowed {
                wrong.push(format!("{method} {path} as {role}: {} (needs {least}) {}", a.status, a.text));
            }
            if method == Method::POST {
                let forged = send(Some(cookie.clone()), None, form("forged", n * 10 + checked)).await;
                checked += 1;
                if forged.status != StatusCode::FORBIDDEN {
                    wrong.push(format!("{method} {path} as {role} with a wrong CSRF token: {}", forged.status));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {checked} calls answered otherwise:\n{}", wrong.len(), wrong.join("\n"));
    println!("UI authorisation matrix: {checked} calls");
}
