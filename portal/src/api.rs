//! The portal's JSON API (`/api/v1`): everything the pages do, for scripts. Also the
//! actions both share (sign-up, sign-in, apps, subscriptions, keys).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Signed, hash_password, random, sha256_hex, start_session, verify_password};
use crate::{IssuedKey, Portal, PortalError, Subscription};

/// Keys start with this, so that people and secret scanners recognise them.
pub const KEY_PREFIX: &str = "wk_";
/// Longest grace period a rotated key may keep: a week.
const MAX_GRACE_HOURS: i64 = 168;

pub(crate) fn router() -> Router<Portal> {
    Router::new()
        .route("/api/v1/signup", post(sign_up_api))
        .route("/api/v1/tokens", post(sign_in_api))
        .route("/api/v1/products", get(products_api))
        .route("/api/v1/apps", get(apps_api).post(create_app_api))
        .route("/api/v1/apps/{id}/subscriptions", post(subscribe_api))
        .route("/api/v1/subscriptions", get(subscriptions_api))
        .route("/api/v1/subscriptions/{id}/keys", post(issue_key_api))
        .route("/api/v1/keys", get(keys_api))
        .route("/api/v1/usage", get(usage_api))
        .route("/api/v1/keys/{id}/revoke", post(revoke_key_api))
        .route("/api/v1/keys/{id}/rotate", post(rotate_key_api))
        .route("/api/v1/openapi.json", get(|| async { Json(crate::openapi::document()) }))
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

/// The JSON API's face of a [`PortalError`].
pub(crate) struct ApiFailure(pub PortalError);

impl From<PortalError> for ApiFailure {
    fn from(e: PortalError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        match self.0 {
            PortalError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", &m),
            PortalError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
            PortalError::Invalid(m) => error(StatusCode::BAD_REQUEST, "bad_request", &m),
            PortalError::Forbidden(m) => error(StatusCode::FORBIDDEN, "forbidden", &m),
            PortalError::Internal(m) => {
                tracing::error!(error = %m, "portal request failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the server log has the details")
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// What a sign-up or sign-in attempt came to.
pub(crate) enum Entry {
    Session(String),
    /// The account waits for an operator's approval.
    Pending,
    Refused(&'static str),
    Limited,
}

/// Message shown whether or not the address already has an account.
pub(crate) const SIGN_UP_DONE: &str =
    "If that address can sign up, its account is ready (or waits for an operator's approval). Sign in to continue.";

pub(crate) async fn sign_up(
    portal: &Portal,
    ip: std::net::IpAddr,
    email: &str,
    password: &str,
) -> Result<Entry, PortalError> {
    if !portal.limits.may_sign_up(ip) {
        return Ok(Entry::Limited);
    }
    let email = email.trim().to_ascii_lowercase();
    if !email.contains('@') || email.len() > 254 {
        return Err(PortalError::Invalid("Enter an email address.".into()));
    }
    if password.chars().count() < 12 {
        return Err(PortalError::Invalid("Use a password of at least 12 characters.".into()));
    }
    let hash = hash_password(password.to_owned()).await?;
    let status = if portal.settings.approve_sign_ups { "pending" } else { "active" };
    match portal.store.sign_up(&email, &hash, status).await {
        // Whether the address was new or taken, the answer is the same.
        Ok(_) | Err(PortalError::Conflict(_)) => Ok(Entry::Refused(SIGN_UP_DONE)),
        Err(e) => Err(e),
    }
}

pub(crate) async fn sign_in(
    portal: &Portal,
    ip: std::net::IpAddr,
    email: &str,
    password: &str,
) -> Result<Entry, PortalError> {
    let email = email.trim().to_ascii_lowercase();
    if !portal.limits.may_sign_in(ip, &email) {
        return Ok(Entry::Limited);
    }
    let developer = portal.store.developer_by_email(&email).await?;
    let ok = verify_password(password.to_owned(), developer.as_ref().map(|d| d.password_hash.clone())).await;
    match developer.filter(|_| ok) {
        None => Ok(Entry::Refused("Wrong email or password.")),
        Some(d) if d.status != "active" => Ok(Entry::Pending),
        Some(d) => Ok(Entry::Session(start_session(portal, d.id).await?)),
    }
}

fn new_key() -> Result<(String, String, String), PortalError> {
    let key = format!("{KEY_PREFIX}{}", random(32)?);
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    Ok((sha256_hex(&key), prefix, key))
}

pub(crate) async fn issue_key(portal: &Portal, developer: i64, subscription: i64) -> Result<IssuedKey, PortalError> {
    let (hash, prefix, key) = new_key()?;
    let (id, expires_at) = portal.store.issue_key(developer, subscription, &hash, &prefix).await?;
    Ok(IssuedKey { id, key, expires_at })
}

/// A new key for the same subscription; the old one keeps working for `grace_hours`.
pub(crate) async fn rotate_key(
    portal: &Portal,
    developer: i64,
    key: i64,
    grace_hours: i64,
) -> Result<IssuedKey, PortalError> {
    if !(0..=MAX_GRACE_HOURS).contains(&grace_hours) {
        return Err(PortalError::Invalid(format!("The grace period is 0 to {MAX_GRACE_HOURS} hours.")));
    }
    let old = portal
        .store
        .keys(developer)
        .await?
        .into_iter()
        .find(|k| k.id == key && k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > crate::auth::now_ms()))
        .ok_or_else(|| PortalError::NotFound(format!("There is no live key {key} of yours.")))?;
    let issued = issue_key(portal, developer, old.subscription_id).await?;
    portal.store.expire_key(developer, key, grace_hours * 3_600_000).await?;
    Ok(issued)
}

#[derive(Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

async fn sign_up_api(
    State(portal): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(c): Json<Credentials>,
) -> ApiResult<Response> {
    match sign_up(&portal, peer.ip(), &c.email, &c.password).await? {
        Entry::Limited => Ok(error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "too many sign-ups; try later")),
        _ => Ok((StatusCode::ACCEPTED, Json(json!({ "message": SIGN_UP_DONE }))).into_response()),
    }
}

async fn sign_in_api(
    State(portal): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(c): Json<Credentials>,
) -> ApiResult<Response> {
    Ok(match sign_in(&portal, peer.ip(), &c.email, &c.password).await? {
        Entry::Session(token) => {
            (StatusCode::CREATED, Json(json!({ "token": token, "token_type": "Bearer" }))).into_response()
        }
        Entry::Pending => error(StatusCode::FORBIDDEN, "pending", "the account waits for an operator's approval"),
        Entry::Refused(m) => error(StatusCode::UNAUTHORIZED, "unauthorized", m),
        Entry::Limited => error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "too many attempts; wait a minute"),
    })
}

async fn products_api(State(portal): State<Portal>) -> ApiResult<Response> {
    Ok(Json(portal.store.products().await?).into_response())
}

async fn apps_api(State(portal): State<Portal>, signed: Signed) -> ApiResult<Response> {
    Ok(Json(portal.store.apps(signed.developer.id).await?).into_response())
}

#[derive(Deserialize)]
struct NewApp {
    name: String,
    #[serde(default)]
    description: String,
}

pub(crate) fn check_app_name(name: &str) -> Result<&str, PortalError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 80 {
        return Err(PortalError::Invalid("An app needs a name of 1 to 80 characters.".into()));
    }
    Ok(name)
}

async fn create_app_api(State(portal): State<Portal>, signed: Signed, Json(a): Json<NewApp>) -> ApiResult<Response> {
    let name = check_app_name(&a.name)?;
    let id = portal.store.create_app(signed.developer.id, name, &a.description).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": name }))).into_response())
}

#[derive(Deserialize)]
struct NewSubscription {
    product: String,
    plan: String,
}

async fn subscribe_api(
    State(portal): State<Portal>,
    signed: Signed,
    Path(app): Path<i64>,
    Json(s): Json<NewSubscription>,
) -> ApiResult<Response> {
    let sub: Subscription = portal.store.subscribe(signed.developer.id, app, &s.product, &s.plan).await?;
    Ok((StatusCode::CREATED, Json(sub)).into_response())
}

async fn subscriptions_api(State(portal): State<Portal>, signed: Signed) -> ApiResult<Response> {
    Ok(Json(portal.store.subscriptions(signed.developer.id).await?).into_response())
}

async fn issue_key_api(State(portal): State<Portal>, signed: Signed, Path(sub): Path<i64>) -> ApiResult<Response> {
    let issued = issue_key(&portal, signed.developer.id, sub).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn keys_api(State(portal): State<Portal>, signed: Signed) -> ApiResult<Response> {
    Ok(Json(portal.store.keys(signed.developer.id).await?).into_response())
}

async fn revoke_key_api(State(portal): State<Portal>, signed: Signed, Path(key): Path<i64>) -> ApiResult<Response> {
    portal.store.revoke_key(signed.developer.id, key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct Rotation {
    #[serde(default)]
    grace_hours: i64,
}

async fn rotate_key_api(
    State(portal): State<Portal>,
    signed: Signed,
    Path(key): Path<i64>,
    Json(r): Json<Rotation>,
) -> ApiResult<Response> {
    let issued = rotate_key(&portal, signed.developer.id, key, r.grace_hours).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn usage_api(State(portal): State<Portal>, signed: Signed) -> ApiResult<Response> {
    Ok(Json(portal.store.usage(signed.developer.id).await?).into_response())
}
