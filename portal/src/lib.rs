//! Weir developer portal: developers sign up, create apps, subscribe them to API
//! products and get API keys; they read each product's reference docs.
//!
//! The portal never signs anything and never loads the signing key. It reaches storage
//! through [`PortalStore`], which the control plane implements; key changes are written
//! there as requests, and the control plane signs and publishes the new keyring.
#![forbid(unsafe_code)]

mod api;
mod auth;
pub mod docs;
pub mod openapi;
mod pages;

use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A boxed future, so that [`PortalStore`] can be used as a trait object.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, PortalError>> + Send + 'a>>;

/// What can go wrong, as the portal shows it.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub rate_per_second: Option<i64>,
    pub rate_per_minute: Option<i64>,
    pub quota_per_day: Option<i64>,
    pub quota_per_month: Option<i64>,
    pub key_ttl_days: Option<i64>,
}

impl Plan {
    /// "10/s, 1000/day" for people.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.rate_per_second {
            parts.push(format!("{n}/s"));
        }
        if let Some(n) = self.rate_per_minute {
            parts.push(format!("{n}/min"));
        }
        if let Some(n) = self.quota_per_day {
            parts.push(format!("{n}/day"));
        }
        if let Some(n) = self.quota_per_month {
            parts.push(format!("{n}/month"));
        }
        if let Some(d) = self.key_ttl_days {
            parts.push(format!("keys valid {d} days"));
        }
        if parts.is_empty() { "no limits".into() } else { parts.join(", ") }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    pub name: String,
    pub title: String,
    pub description: String,
    /// `auto` or `manual` approval of subscriptions.
    pub approval: String,
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Developer {
    pub id: i64,
    pub email: String,
    #[serde(skip)]
    pub password_hash: String,
    /// `active`, or `pending` until an operator approves the account.
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub id: i64,
    pub app_id: i64,
    pub app: String,
    pub product: String,
    pub plan: String,
    /// `active`, `pending` (awaiting approval) or `rejected`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Key {
    pub id: i64,
    pub subscription_id: i64,
    pub app: String,
    pub product: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Requests an app made with its keys (counted by the gateway nodes).
#[derive(Debug, Clone, Serialize)]
pub struct AppUsage {
    pub app_id: i64,
    pub last_day: i64,
    pub last_30_days: i64,
}

/// A key just issued: the secret is here once and nowhere else.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedKey {
    pub id: i64,
    pub key: String,
    pub expires_at: Option<i64>,
}

/// Storage as the portal needs it. Every method that touches apps, subscriptions or
/// keys takes the developer's id and must only ever see that developer's rows.
pub trait PortalStore: Send + Sync + 'static {
    fn sign_up<'a>(&'a self, email: &'a str, password_hash: &'a str, status: &'a str) -> Fut<'a, i64>;
    fn developer_by_email<'a>(&'a self, email: &'a str) -> Fut<'a, Option<Developer>>;
    fn create_session<'a>(&'a self, id_hash: &'a str, developer: i64, csrf: &'a str, expires_at: i64) -> Fut<'a, ()>;
    /// The developer and CSRF token of a live session.
    fn session<'a>(&'a self, id_hash: &'a str) -> Fut<'a, Option<(Developer, String)>>;
    fn end_session<'a>(&'a self, id_hash: &'a str) -> Fut<'a, ()>;
    fn products(&self) -> Fut<'_, Vec<Product>>;
    /// The canonical config (JSON) running where the product lives, for its docs.
    fn product_config<'a>(&'a self, product: &'a str) -> Fut<'a, Option<String>>;
    /// An OpenAPI document the operators uploaded for the product.
    fn product_openapi<'a>(&'a self, product: &'a str) -> Fut<'a, Option<String>>;
    fn apps(&self, developer: i64) -> Fut<'_, Vec<App>>;
    fn create_app<'a>(&'a self, developer: i64, name: &'a str, description: &'a str) -> Fut<'a, i64>;
    /// Subscribes one of the developer's apps; returns the subscription's status.
    fn subscribe<'a>(&'a self, developer: i64, app: i64, product: &'a str, plan: &'a str) -> Fut<'a, Subscription>;
    fn subscriptions(&self, developer: i64) -> Fut<'_, Vec<Subscription>>;
    fn keys(&self, developer: i64) -> Fut<'_, Vec<Key>>;
    /// Stores a new key (by hash) for an active subscription of the developer and asks
    /// for the keyring to be published. Returns the key id and its expiry.
    fn issue_key<'a>(
        &'a self,
        developer: i64,
        subscription: i64,
        hash: &'a str,
        prefix: &'a str,
    ) -> Fut<'a, (i64, Option<i64>)>;
    fn revoke_key(&self, developer: i64, key: i64) -> Fut<'_, ()>;
    /// Lets the old key live `grace_ms` more, then expire.
    fn expire_key(&self, developer: i64, key: i64, grace_ms: i64) -> Fut<'_, ()>;
    /// Requests of each of the developer's apps, from the nodes' metrics.
    fn usage(&self, developer: i64) -> Fut<'_, Vec<AppUsage>>;
}

/// Portal settings.
pub struct Settings {
    /// Send cookies with `Secure` (browsers keep them on http://localhost too).
    pub secure_cookies: bool,
    /// Sign-ups wait for an operator's approval (no email verification configured).
    pub approve_sign_ups: bool,
    /// The gateway the docs point at and "try it" calls (e.g. `http://127.0.0.1:8080`).
    pub gateway_url: String,
}

/// What the portal's handlers share.
#[derive(Clone)]
pub struct Portal {
    store: Arc<dyn PortalStore>,
    settings: Arc<Settings>,
    limits: Arc<auth::Limits>,
    http: weir_gateway::proxy::client::Client,
}

impl Portal {
    pub fn new(store: Arc<dyn PortalStore>, settings: Settings) -> Result<Self, String> {
        Ok(Self {
            store,
            settings: Arc::new(settings),
            limits: Arc::new(auth::Limits::new()),
            http: weir_gateway::proxy::client::build(2).map_err(|e| e.to_string())?,
        })
    }
}

/// The portal's router: pages at `/`, the JSON API at `/api/v1`.
pub fn router(portal: Portal) -> axum::Router {
    pages::router().merge(api::router()).with_state(portal)
}

/// Serves the portal on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    portal: Portal,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(portal).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
