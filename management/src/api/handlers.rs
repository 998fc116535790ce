//! Request handlers: parse, call the control plane's actions or the store, answer JSON.
//! Access was checked by the guard before any of these runs.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use weir_gateway::config::Format;

use super::error::{ApiError, ApiResult};
use super::{AppState, Caller};
use crate::control;
use crate::domain::access::Role;
use crate::domain::{diff, fleet, upload};
use crate::store::nodes::Report;
use crate::store::now_ms;

/// Reads a JSON body, answering 400 with the parser's reason when it is not one.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn created(value: impl serde::Serialize) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// Liveness: the process answers. It does not touch the database, so an outage of the
/// database does not get healthy control-plane processes restarted.
pub(super) async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "database": format!("{:?}", s.store.kind()).to_lowercase() }))
}

/// Readiness: the database answers within a second (503 otherwise), so a load balancer
/// sends callers only to control-plane replicas that can serve them.
pub(super) async fn ready(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    s.store.ping(std::time::Duration::from_secs(1)).await?;
    Ok(Json(json!({ "status": "ready" })))
}

pub(super) async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

pub(super) async fn list_gateways(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.gateways().await?)))
}

#[derive(Deserialize)]
struct NewGateway {
    name: String,
    #[serde(default)]
    description: String,
}

pub(super) async fn create_gateway(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let new: NewGateway = body(&bytes)?;
    let gateway = control::create_gateway(&s.store, &caller.actor, &new.name, &new.description).await?;
    Ok(created(gateway))
}

pub(super) async fn get_gateway(State(s): State<AppState>, Path(gateway): Path<String>) -> ApiResult<Json<Value>> {
    let gw = s.store.gateway(&gateway).await?;
    let environments = s.store.environments(&gw).await?;
    let latest = s.store.latest_version(gw.id).await?;
    Ok(Json(json!({
        "name": gw.name,
        "description": gw.description,
        "created_at": gw.created_at,
        "environments": environments,
        "latest_version": latest,
    })))
}

pub(super) async fn list_environments(
    State(s): State<AppState>,
    Path(gateway): Path<String>,
) -> ApiResult<Json<Value>> {
    let gw = s.store.gateway(&gateway).await?;
    Ok(Json(json!(s.store.environments(&gw).await?)))
}

#[derive(Deserialize)]
struct NewEnvironment {
    name: String,
    #[serde(default)]
    requires: Option<String>,
}

pub(super) async fn create_environment(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(gateway): Path<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let new: NewEnvironment = body(&bytes)?;
    control::create_environment(&s.store, &caller.actor, &gateway, &new.name, new.requires.as_deref()).await?;
    Ok(created(s.store.environment(&gateway, &new.name).await?))
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    #[serde(default)]
    message: String,
    #[serde(default)]
    format: Option<String>,
}

pub(super) async fn create_version(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(gateway): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    // An explicit ?format= must be one we read; a Content-Type we do not know (curl's
    // default form type, text/plain) is read as JSON, KrakenD's default.
    let format = match q.format.as_deref() {
        Some(name) => upload::parse_format(name)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown config format {name:?}: use json, yaml or toml")))?,
        None => headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(upload::parse_format)
            .unwrap_or(Format::Json),
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::BadRequest("the config is not UTF-8 text".into()))?;
    let pushed = control::push_version(&s.store, &caller.actor, &gateway, text, format, &q.message).await?;
    let status = if pushed.unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(pushed)).into_response())
}

pub(super) async fn list_versions(State(s): State<AppState>, Path(gateway): Path<String>) -> ApiResult<Json<Value>> {
    let gw = s.store.gateway(&gateway).await?;
    Ok(Json(json!(s.store.versions(gw.id).await?)))
}

pub(super) async fn get_version(
    State(s): State<AppState>,
    Path((gateway, number)): Path<(String, i64)>,
) -> ApiResult<Json<Value>> {
    let gw = s.store.gateway(&gateway).await?;
    let version = s.store.version(gw.id, number).await?;
    let mut value = json!(version);
    // The canonical config is JSON: serve it as a document, not as a string of JSON.
    if let Some(config) = version.config.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()) {
        value["config"] = config;
    }
    Ok(Json(value))
}

pub(super) async fn diff_versions(
    State(s): State<AppState>,
    Path((gateway, from, to)): Path<(String, i64, i64)>,
) -> ApiResult<Json<diff::Diff>> {
    let gw = s.store.gateway(&gateway).await?;
    let parse = |text: Option<String>| -> ApiResult<Value> {
        serde_json::from_str(&text.unwrap_or_default()).map_err(|e| ApiError::Internal(e.to_string()))
    };
    let a = parse(s.store.version(gw.id, from).await?.config)?;
    let b = parse(s.store.version(gw.id, to).await?.config)?;
    Ok(Json(diff::diff(from, &a, to, &b)))
}

#[derive(Deserialize)]
struct PromoteRequest {
    version: i64,
}

pub(super) async fn promote(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((gateway, environment)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult<Json<control::Promoted>> {
    let request: PromoteRequest = body(&bytes)?;
    let promoted =
        control::promote(&s.store, &s.signing_key, &caller.actor, &gateway, &environment, request.version).await?;
    Ok(Json(promoted))
}

pub(super) async fn list_promotions(
    State(s): State<AppState>,
    Path((gateway, environment)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let env = s.store.environment(&gateway, &environment).await?;
    Ok(Json(json!(s.store.promotions(env.id).await?)))
}

/// Whether an `If-None-Match` header names this ETag (or `*`).
fn matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = if_none_match.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

#[derive(Deserialize)]
pub(super) struct BundleQuery {
    /// Long poll: with an If-None-Match that is current, wait up to this many seconds
    /// (at most 30) for a new bundle before answering 304.
    #[serde(default)]
    wait: u64,
}

/// Longest long poll: below common proxy idle timeouts (60 s).
const MAX_WAIT_SECS: u64 = 30;

pub(super) async fn get_bundle(
    State(s): State<AppState>,
    Path((gateway, environment)): Path<(String, String)>,
    Query(q): Query<BundleQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let env = s.store.environment(&gateway, &environment).await?;
    // Serials only grow and a serial's bundle never changes, so the serial is the ETag,
    // and an unchanged environment is answered without reading the bundle.
    let etag = format!("\"{}\"", env.serial);
    if env.serial > 0 && matches(headers.get(header::IF_NONE_MATCH), &etag) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(q.wait.min(MAX_WAIT_SECS));
        let mut woken = false;
        loop {
            // Registered before looking, so a bundle signed in between still wakes us.
            let signed = s.store.bundle_signals().notified();
            tokio::pin!(signed);
            signed.as_mut().enable();
            if woken {
                // This process signed a bundle: answered from memory if it is this
                // environment's, else back to waiting without asking the database.
                if let Some((serial, bundle)) = s.store.signed_bundle(env.id)
                    && serial > env.serial
                {
                    return Ok(bundle_response(serial, bundle.to_string(), q.wait > 0));
                }
            } else if s.store.environment(&gateway, &environment).await?.serial != env.serial {
                break;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // Tells the node the wait was held here, so it may ask again at once.
                let mut response = (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
                if q.wait > 0 {
                    response
                        .headers_mut()
                        .insert(weir_gateway::node::control::LONG_POLL_HEADER, http::HeaderValue::from_static("1"));
                }
                return Ok(response);
            }
            // Other control-plane replicas sign bundles too, without waking us: look in the
            // database every few seconds (a fleet of 1,000 waiting nodes costs 200 cheap reads
            // a second).
            woken = tokio::time::timeout(left.min(std::time::Duration::from_secs(5)), signed).await.is_ok();
        }
    }
    let (serial, bundle) = s
        .store
        .current_bundle(env.id)
        .await?
        .ok_or_else(|| ApiError::NoBundle(format!("{gateway}/{environment} has no promoted version yet")))?;
    Ok(bundle_response(serial, bundle, q.wait > 0))
}

fn bundle_response(serial: i64, bundle: String, long_poll: bool) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/jose+json".to_owned()),
            (header::ETAG, format!("\"{serial}\"")),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        bundle,
    )
        .into_response();
    if long_poll {
        response
            .headers_mut()
            .insert(weir_gateway::node::control::LONG_POLL_HEADER, http::HeaderValue::from_static("1"));
    }
    response
}

pub(super) async fn report_node_status(
    State(s): State<AppState>,
    Path((gateway, environment, node_id)): Path<(String, String, String)>,
    bytes: Bytes,
) -> ApiResult<StatusCode> {
    let report: Report = body(&bytes)?;
    if report.node_id != node_id {
        return Err(ApiError::BadRequest(format!(
            "the report is for node {:?} but was sent to {node_id:?}",
            report.node_id
        )));
    }
    let env = s.store.environment(&gateway, &environment).await?;
    s.store.record_node(env.id, &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_nodes(
    State(s): State<AppState>,
    Path((gateway, environment)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let env = s.store.environment(&gateway, &environment).await?;
    let now = now_ms();
    let heartbeat = i64::try_from(s.heartbeat.as_millis()).unwrap_or(i64::MAX);
    let nodes: Vec<fleet::NodeView> =
        s.store.nodes(env.id).await?.into_iter().map(|n| fleet::view(n, env.serial, now, heartbeat)).collect();
    Ok(Json(json!({ "serial": env.serial, "active_version": env.active_version, "nodes": nodes })))
}

#[derive(Deserialize)]
struct NewNodeToken {
    name: String,
}

pub(super) async fn create_node_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((gateway, environment)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let new: NewNodeToken = body(&bytes)?;
    let issued =
        control::issue_token(&s.store, &caller.actor, &new.name, Role::Node, Some((&gateway, &environment))).await?;
    Ok(created(issued))
}

pub(super) async fn list_node_tokens(
    State(s): State<AppState>,
    Path((gateway, environment)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    s.store.environment(&gateway, &environment).await?;
    Ok(Json(json!(s.store.tokens(Some((&gateway, &environment))).await?)))
}

#[derive(Deserialize)]
struct NewToken {
    name: String,
    role: Role,
}

pub(super) async fn create_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let new: NewToken = body(&bytes)?;
    if new.role == Role::Node {
        return Err(ApiError::BadRequest("node tokens are created per environment: POST …/node-tokens".into()));
    }
    Ok(created(control::issue_token(&s.store, &caller.actor, &new.name, new.role, None).await?))
}

pub(super) async fn list_tokens(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.tokens(None).await?)))
}

pub(super) async fn revoke_token(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::revoke_token(&s.store, &caller.actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

pub(super) async fn list_audit(State(s): State<AppState>, Query(q): Query<AuditQuery>) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(json!(s.store.audit_entries(limit, q.before).await?)))
}

pub(super) async fn verify_audit(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.verify_audit().await?)))
}

pub(super) async fn list_products(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.products().await?)))
}

pub(super) async fn create_product(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let new: control::NewProduct = body(&bytes)?;
    control::create_product(&s.store, &caller.actor, &new).await?;
    Ok(created(s.store.product(&new.name).await?))
}

pub(super) async fn list_subscriptions(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.subscriptions(None).await?)))
}

pub(super) async fn approve_subscription(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::decide_subscription(&s.store, &caller.actor, id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reject_subscription(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::decide_subscription(&s.store, &caller.actor, id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_developers(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.store.developers().await?)))
}

pub(super) async fn approve_developer(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    control::approve_developer(&s.store, &caller.actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn put_product_openapi(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(product): Path<String>,
    bytes: Bytes,
) -> ApiResult<StatusCode> {
    let doc: Value = body(&bytes)?;
    if !doc.get("openapi").and_then(Value::as_str).is_some_and(|v| v.starts_with('3')) {
        return Err(ApiError::BadRequest("this is not an OpenAPI 3 document (no \"openapi\": \"3.x\")".into()));
    }
    control::set_product_openapi(&s.store, &caller.actor, &product, &doc.to_string()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Exports larger than this (compressed or not) are refused with 413.
const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// OTLP/HTTP's protobuf media type.
const PROTOBUF: &str = "application/x-protobuf";

pub(super) async fn receive_metrics(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let too_large =
        || (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({"code": "too_large", "message": "the export is over 4 MiB"})));
    if bytes.len() > MAX_EXPORT_BYTES {
        return Ok(too_large().into_response());
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let protobuf = content_type.starts_with(PROTOBUF);
    if !protobuf && !content_type.starts_with("application/json") {
        let message = "send OTLP/HTTP as protobuf (application/x-protobuf) or JSON (application/json)";
        return Ok((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({"code": "unsupported_media_type", "message": message})),
        )
            .into_response());
    }
    let gzipped = headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let bytes = if gzipped {
        use std::io::Read as _;
        let mut out = Vec::new();
        let limit = u64::try_from(MAX_EXPORT_BYTES).unwrap_or(u64::MAX) + 1;
        flate2::read::GzDecoder::new(&bytes[..])
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| ApiError::BadRequest(format!("gzip: {e}")))?;
        if out.len() > MAX_EXPORT_BYTES {
            return Ok(too_large().into_response());
        }
        Bytes::from(out)
    } else {
        bytes
    };
    let export: Value = if protobuf {
        crate::domain::otlp_proto::export_to_json(&bytes).map_err(ApiError::BadRequest)?
    } else {
        body(&bytes)?
    };
    let (gateway, environment) = caller.scope.clone().ok_or_else(|| ApiError::Forbidden("not a node token".into()))?;
    // Both read before anything is stored, so a refused export leaves nothing behind.
    let points = crate::domain::traffic::points_from_otlp(&export, &caller.actor).map_err(ApiError::BadRequest)?;
    let usage = crate::domain::traffic::usage_from_otlp(&export, &caller.actor).map_err(ApiError::BadRequest)?;
    let env = s.store.environment(&gateway, &environment).await?;
    s.store.ingest_metrics(env.id, &points).await?;
    if !usage.is_empty() {
        s.store.ingest_usage(env.id, &usage).await?;
    }
    // OTLP/HTTP answers in the request's encoding: an empty ExportMetricsServiceResponse.
    if protobuf {
        return Ok(([(header::CONTENT_TYPE, PROTOBUF)], Bytes::new()).into_response());
    }
    Ok(Json(json!({"partialSuccess": {}})).into_response())
}

#[derive(Deserialize)]
pub(super) struct RangeQuery {
    #[serde(default)]
    range: Option<String>,
}

pub(super) async fn environment_metrics(
    State(s): State<AppState>,
    Path((gateway, environment)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<crate::domain::traffic::Traffic>> {
    let env = s.store.environment(&gateway, &environment).await?;
    Ok(Json(traffic(&s.store, env.id, q.range.as_deref().unwrap_or("15m")).await?))
}

/// An environment's traffic figures for a named range, summed by the database.
pub(crate) async fn traffic(
    store: &crate::store::Store,
    environment_id: i64,
    range: &str,
) -> ApiResult<crate::domain::traffic::Traffic> {
    use crate::domain::traffic::{RANGES, summarize_grouped};
    use crate::store::metrics::{Grouping, HOUR, MINUTE};
    let (_, minutes, step) = RANGES
        .iter()
        .find(|r| r.0 == range)
        .copied()
        .ok_or_else(|| ApiError::BadRequest(format!("range {range:?}: use 15m, 1h, 24h or 7d")))?;
    // What this process has summed but not yet written counts too.
    store.flush_rollups().await?;
    let now_minute = now_ms() / 60_000;
    let from = now_minute - minutes + 1;
    // Slots of whole hours read hour rows; so do the route and node tables of the ranges
    // longer than an hour (their first hour may have begun before the range).
    let slot_width = if step % HOUR == 0 { HOUR } else { MINUTE };
    let table_width = if minutes > HOUR { HOUR } else { MINUTE };
    let slots = store.metric_groups(environment_id, from, step, Grouping::Slot, slot_width).await?;
    let routes = store.metric_groups(environment_id, from, step, Grouping::Route, table_width).await?;
    let nodes = store.metric_groups(environment_id, from, step, Grouping::Node, table_width).await?;
    summarize_grouped(&slots, &routes, &nodes, range, now_minute)
        .ok_or_else(|| ApiError::BadRequest(format!("range {range:?}")))
}
