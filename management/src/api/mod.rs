//! The management API (`/api/v1`): JSON, bearer tokens, one table of operations.
//!
//! [`operations`] lists every route with its method, path, access rule and handler.
//! The router and the OpenAPI document are both built from that table, so the
//! document cannot drift from the routes, and no route exists without an access rule.

pub mod auth;
pub mod error;
mod handlers;
pub(crate) use handlers::traffic;
pub mod openapi;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodFilter, MethodRouter, on};
use http::Method;

pub use auth::{Access, Caller};
use auth::{Guard, guard};
use error::ApiError;

use crate::domain::access::Role;
use crate::store::Store;

/// Configs are text; 16 MiB is far beyond any real one and still bounds memory.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Read at each promotion, so that `weir-control keys rotate` takes effect without a restart.
    pub signing_key: PathBuf,
    /// How often nodes report; nodes silent for three of these are STALE.
    pub heartbeat: Duration,
    /// The operator web UI's settings (cookies, single sign-on, sign-in limits).
    pub ui: std::sync::Arc<crate::ui::UiSettings>,
}

/// One route of the API, as the router and the OpenAPI document see it.
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub id: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// Media type and description of the request body, if it takes one.
    pub request: Option<(&'static str, &'static str)>,
    /// Status and description of success.
    pub success: (u16, &'static str),
}

const fn op(
    method: Method,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    access: Access,
    request: Option<(&'static str, &'static str)>,
    success: (u16, &'static str),
) -> Operation {
    Operation { method, path, id, summary, access, request, success }
}

const JSON: &str = "application/json";
const VIEWER: Access = Access::Role(Role::Viewer);
const OPERATOR: Access = Access::Role(Role::Operator);
const ADMIN: Access = Access::Role(Role::Admin);

/// Every route of the API with its handler.
pub fn operations() -> Vec<(Operation, MethodRouter<AppState>)> {
    use handlers as h;
    vec![
        (
            op(
                Method::GET,
                "/api/v1/health",
                "health",
                "Liveness and database kind",
                Access::Public,
                None,
                (200, "Up"),
            ),
            on(MethodFilter::GET, h::health),
        ),
        (
            op(
                Method::GET,
                "/api/v1/ready",
                "ready",
                "Readiness: the database answers (503 unavailable otherwise)",
                Access::Public,
                None,
                (200, "Ready"),
            ),
            on(MethodFilter::GET, h::ready),
        ),
        (
            op(
                Method::GET,
                "/api/v1/openapi.json",
                "openapi",
                "This document",
                Access::Public,
                None,
                (200, "OpenAPI 3.1"),
            ),
            on(MethodFilter::GET, h::openapi),
        ),
        (
            op(Method::GET, "/api/v1/gateways", "listGateways", "List gateways", VIEWER, None, (200, "Gateways")),
            on(MethodFilter::GET, h::list_gateways),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways",
                "createGateway",
                "Create a gateway",
                OPERATOR,
                Some((JSON, "{\"name\": \"mobile-bff\", \"description\": \"…\"}")),
                (201, "Created"),
            ),
            on(MethodFilter::POST, h::create_gateway),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}",
                "getGateway",
                "A gateway, its environments and latest version",
                VIEWER,
                None,
                (200, "Gateway"),
            ),
            on(MethodFilter::GET, h::get_gateway),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments",
                "listEnvironments",
                "List environments",
                VIEWER,
                None,
                (200, "Environments"),
            ),
            on(MethodFilter::GET, h::list_environments),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways/{gateway}/environments",
                "createEnvironment",
                "Create an environment; `requires` names the environment a version must have been promoted to first",
                OPERATOR,
                Some((JSON, "{\"name\": \"prod\", \"requires\": \"staging\"}")),
                (201, "Created"),
            ),
            on(MethodFilter::POST, h::create_environment),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways/{gateway}/versions",
                "createVersion",
                "Upload a config (JSON, YAML or TOML by Content-Type or ?format=; ?message=); 422 lists every problem with its path",
                OPERATOR,
                Some((
                    "application/json",
                    "A krakend.json (version 3); application/yaml and application/toml are accepted too",
                )),
                (201, "Stored: {version, digest}; 200 when identical to the latest version"),
            ),
            on(MethodFilter::POST, h::create_version),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/versions",
                "listVersions",
                "List versions, newest first",
                VIEWER,
                None,
                (200, "Versions"),
            ),
            on(MethodFilter::GET, h::list_versions),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/versions/{version}",
                "getVersion",
                "A version with its config",
                VIEWER,
                None,
                (200, "Version"),
            ),
            on(MethodFilter::GET, h::get_version),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/versions/{from}/diff/{to}",
                "diffVersions",
                "Endpoints added, removed and changed (with keys), and a unified text diff",
                VIEWER,
                None,
                (200, "Diff"),
            ),
            on(MethodFilter::GET, h::diff_versions),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways/{gateway}/environments/{environment}/promote",
                "promote",
                "Point the environment at a version: signs a bundle with the next serial (a rollback is a promotion of an older version)",
                OPERATOR,
                Some((JSON, "{\"version\": 3}")),
                (200, "{serial, version, digest, kid}"),
            ),
            on(MethodFilter::POST, h::promote),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments/{environment}/promotions",
                "listPromotions",
                "The environment's promotions, newest first",
                VIEWER,
                None,
                (200, "Promotions"),
            ),
            on(MethodFilter::GET, h::list_promotions),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments/{environment}/bundle",
                "getBundle",
                "The current signed bundle (JWS, JSON serialisation); send If-None-Match for a 304 when unchanged",
                Access::Node,
                None,
                (200, "application/jose+json bundle with an ETag"),
            ),
            on(MethodFilter::GET, h::get_bundle),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways/{gateway}/environments/{environment}/nodes/{node_id}/status",
                "reportNodeStatus",
                "A node reports what it runs and what happened to the last bundle",
                Access::Node,
                Some((
                    JSON,
                    "{node_id, hostname, version, serial, config_digest, last_fetch_at, last_result, reported_at}",
                )),
                (204, "Recorded"),
            ),
            on(MethodFilter::POST, h::report_node_status),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments/{environment}/nodes",
                "listNodes",
                "Nodes of the environment, each SYNCED, STALE or REJECTED",
                VIEWER,
                None,
                (200, "Nodes"),
            ),
            on(MethodFilter::GET, h::list_nodes),
        ),
        (
            op(
                Method::POST,
                "/api/v1/gateways/{gateway}/environments/{environment}/node-tokens",
                "createNodeToken",
                "Create a node token for this environment; the token is shown once",
                ADMIN,
                Some((JSON, "{\"name\": \"eu-west-1\"}")),
                (201, "{id, token}"),
            ),
            on(MethodFilter::POST, h::create_node_token),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments/{environment}/node-tokens",
                "listNodeTokens",
                "Node tokens of this environment (never their secrets)",
                ADMIN,
                None,
                (200, "Tokens"),
            ),
            on(MethodFilter::GET, h::list_node_tokens),
        ),
        (
            op(
                Method::POST,
                "/api/v1/tokens",
                "createToken",
                "Create an operator or CI token (role admin, operator or viewer); shown once",
                ADMIN,
                Some((JSON, "{\"name\": \"ci\", \"role\": \"operator\"}")),
                (201, "{id, token}"),
            ),
            on(MethodFilter::POST, h::create_token),
        ),
        (
            op(
                Method::GET,
                "/api/v1/tokens",
                "listTokens",
                "Operator and CI tokens (never their secrets)",
                ADMIN,
                None,
                (200, "Tokens"),
            ),
            on(MethodFilter::GET, h::list_tokens),
        ),
        (
            op(
                Method::DELETE,
                "/api/v1/tokens/{id}",
                "revokeToken",
                "Revoke a token (operator, CI or node); it stops working at once",
                ADMIN,
                None,
                (204, "Revoked"),
            ),
            on(MethodFilter::DELETE, h::revoke_token),
        ),
        (
            op(
                Method::POST,
                "/v1/metrics",
                "exportMetrics",
                "OTLP/HTTP metrics receiver (protobuf or JSON, optionally gzip) for the nodes' request durations; protobuf is answered in protobuf",
                Access::AnyNode,
                Some((JSON, "An OTLP ExportMetricsServiceRequest")),
                (200, "Accepted"),
            ),
            on(MethodFilter::POST, h::receive_metrics),
        ),
        (
            op(
                Method::GET,
                "/api/v1/gateways/{gateway}/environments/{environment}/metrics",
                "environmentMetrics",
                "Traffic of an environment (?range=15m|1h|24h|7d): totals, per-step series, status classes, top routes, nodes",
                VIEWER,
                None,
                (200, "Traffic"),
            ),
            on(MethodFilter::GET, h::environment_metrics),
        ),
        (
            op(
                Method::GET,
                "/api/v1/products",
                "listProducts",
                "API products with their plans",
                VIEWER,
                None,
                (200, "Products"),
            ),
            on(MethodFilter::GET, h::list_products),
        ),
        (
            op(
                Method::POST,
                "/api/v1/products",
                "createProduct",
                "Publish an API product: {name, title, description, gateway, environment, approval, plans: [{name, rate_per_second, rate_per_minute, quota_per_day, quota_per_month, key_ttl_days}]}",
                OPERATOR,
                Some((JSON, "The product; its name is the auth/api-keys role its keys get")),
                (201, "Created"),
            ),
            on(MethodFilter::POST, h::create_product),
        ),
        (
            op(
                Method::PUT,
                "/api/v1/products/{product}/openapi",
                "putProductOpenapi",
                "Upload an OpenAPI document for a product; the portal merges it over the reference generated from the config",
                OPERATOR,
                Some((JSON, "An OpenAPI 3.x document (JSON)")),
                (204, "Stored"),
            ),
            on(MethodFilter::PUT, h::put_product_openapi),
        ),
        (
            op(
                Method::GET,
                "/api/v1/subscriptions",
                "listSubscriptions",
                "Every app's subscriptions",
                VIEWER,
                None,
                (200, "Subscriptions"),
            ),
            on(MethodFilter::GET, h::list_subscriptions),
        ),
        (
            op(
                Method::POST,
                "/api/v1/subscriptions/{id}/approve",
                "approveSubscription",
                "Approve a pending subscription",
                OPERATOR,
                None,
                (204, "Approved"),
            ),
            on(MethodFilter::POST, h::approve_subscription),
        ),
        (
            op(
                Method::POST,
                "/api/v1/subscriptions/{id}/reject",
                "rejectSubscription",
                "Reject a subscription; its keys stop working",
                OPERATOR,
                None,
                (204, "Rejected"),
            ),
            on(MethodFilter::POST, h::reject_subscription),
        ),
        (
            op(
                Method::GET,
                "/api/v1/developers",
                "listDevelopers",
                "Developer accounts",
                ADMIN,
                None,
                (200, "Developers"),
            ),
            on(MethodFilter::GET, h::list_developers),
        ),
        (
            op(
                Method::POST,
                "/api/v1/developers/{id}/approve",
                "approveDeveloper",
                "Let a pending developer account sign in",
                ADMIN,
                None,
                (204, "Approved"),
            ),
            on(MethodFilter::POST, h::approve_developer),
        ),
        (
            op(
                Method::GET,
                "/api/v1/audit",
                "listAudit",
                "Audit log, newest first (?limit=, ?before=seq)",
                ADMIN,
                None,
                (200, "Entries"),
            ),
            on(MethodFilter::GET, h::list_audit),
        ),
        (
            op(
                Method::GET,
                "/api/v1/audit/verify",
                "verifyAudit",
                "Recompute the audit hash chain and report the first broken link",
                ADMIN,
                None,
                (200, "Verification"),
            ),
            on(MethodFilter::GET, h::verify_audit),
        ),
    ]
}

/// The management API router.
pub fn router(state: AppState) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for (operation, handler) in operations() {
        let guarded = handler.route_layer(axum::middleware::from_fn_with_state(
            Guard { store: state.store.clone(), access: operation.access },
            guard,
        ));
        match by_path.iter_mut().find(|(p, _)| *p == operation.path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(guarded),
            None => by_path.push((operation.path, guarded)),
        }
    }
    let mut api = Router::new();
    for (path, methods) in by_path {
        api = api.route(path, methods);
    }
    let api = api
        .route("/api/v1/{*rest}", axum::routing::any(|| async { ApiError::NotFound("no such API route".into()) }))
        .layer(axum::middleware::map_response(json_rejections));
    api.merge(crate::ui::router())
        .fallback(|| async { crate::ui::UiError::NotFound("There is no such page.".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// axum answers some bad requests itself (a path parameter that is not a number, a
/// method a route does not take, a body over the limit) in plain text; the API promises
/// JSON errors with a code, so those are rewritten here.
async fn json_rejections(response: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let status = response.status();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        http::StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        http::StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        http::StatusCode::NOT_FOUND => "not_found",
        _ => "bad_request",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("bad request").to_owned(),
        t => t.to_owned(),
    };
    let mut json = (status, axum::Json(serde_json::json!({ "code": code, "message": message }))).into_response();
    if let Some(allow) = parts.headers.get(http::header::ALLOW) {
        json.headers_mut().insert(http::header::ALLOW, allow.clone());
    }
    json
}
