//! The operator web UI: server-rendered pages (askama templates in `web/templates`),
//! one stylesheet and a small script in `web/static`, all embedded in the binary.
//!
//! Every page works without JavaScript; the script only refreshes node tables while a
//! promotion converges, loads files into the upload form and asks before revoking.
//! Sessions are cookies holding a random id (stored hashed); every form carries the
//! session's CSRF token; sign-ins are rate-limited per client address and per account.

mod charts;
mod login;
mod pages;
pub mod sso;

use std::net::IpAddr;
use std::num::NonZeroU32;

use askama::Template;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::domain::access::{Role, hash_token};
use crate::store::StoreError;
use crate::store::users::User;

const SESSION_COOKIE: &str = "weir_session";
/// Sessions last a working day; signing in again is cheap, a stolen cookie is not.
const SESSION_HOURS: i64 = 12;
const CSS: &str = include_str!("../../../web/static/weir.css");
const JS: &str = include_str!("../../../web/static/weir.js");

type KeyedLimiter<K> =
    governor::RateLimiter<K, governor::state::keyed::DefaultKeyedStateStore<K>, governor::clock::DefaultClock>;

/// How the UI is set up.
pub struct UiSettings {
    /// Send cookies with `Secure` (browsers still keep them on http://localhost).
    pub secure_cookies: bool,
    pub sso: Option<sso::Sso>,
    by_address: KeyedLimiter<IpAddr>,
    by_account: KeyedLimiter<String>,
}

impl UiSettings {
    pub fn new(secure_cookies: bool, sso: Option<sso::Sso>) -> Self {
        // 10 attempts a minute from one address and 5 a minute against one account:
        // plenty for people who mistype, far too few to guess a password.
        let per_minute = |n: u32| governor::Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            secure_cookies,
            sso,
            by_address: governor::RateLimiter::keyed(per_minute(10)),
            by_account: governor::RateLimiter::keyed(per_minute(5)),
        }
    }

    /// Whether a sign-in attempt from `address` for `account` may proceed.
    fn may_attempt(&self, address: IpAddr, account: &str) -> bool {
        // Keyed limiters keep a cell per key: drop the idle ones as we go.
        if self.by_account.len() > 10_000 {
            self.by_account.retain_recent();
            self.by_address.retain_recent();
        }
        self.by_address.check_key(&address).is_ok() && self.by_account.check_key(&account.to_ascii_lowercase()).is_ok()
    }
}

/// The UI's routes (the management API lives beside them under `/api/v1`).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/weir.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route("/static/weir.js", get(|| async { asset(JS, "text/javascript; charset=utf-8") }))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/logout/everywhere", post(login::logout_everywhere))
        .route("/auth/sso", get(login::sso_start))
        .route("/auth/sso/callback", get(login::sso_callback))
        .merge(pages::router())
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// What every page's layout needs.
pub struct Nav {
    pub email: String,
    pub role: String,
    pub csrf: String,
    pub is_admin: bool,
    pub can_write: bool,
    pub section: &'static str,
    pub notice: Option<String>,
}

/// A signed-in operator (the extractor redirects to the sign-in page otherwise).
pub struct Signed {
    pub user: User,
    pub csrf: String,
    session_hash: String,
}

impl Signed {
    pub fn nav(&self, section: &'static str) -> Nav {
        Nav {
            email: self.user.email.clone(),
            role: self.user.role.to_string(),
            csrf: self.csrf.clone(),
            is_admin: self.user.role.includes(Role::Admin),
            can_write: self.user.role.includes(Role::Operator),
            section,
            notice: None,
        }
    }

    pub fn require(&self, role: Role) -> Result<(), UiError> {
        if self.user.role.includes(role) {
            Ok(())
        } else {
            Err(UiError::Forbidden(format!("This needs the {role} role; you have the {} role.", self.user.role)))
        }
    }

    /// Checks a form's CSRF token against the session's.
    pub fn check(&self, token: &str) -> Result<(), UiError> {
        // Compared as hashes, so the comparison's timing says nothing about the token.
        if Sha256::digest(token.as_bytes()) == Sha256::digest(self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(UiError::Forbidden(
                "The form has expired or did not come from this site. Reload the page and try again.".into(),
            ))
        }
    }

    /// A form that changes something: its CSRF token, then the role it needs.
    pub fn may(&self, role: Role, csrf: &str) -> Result<(), UiError> {
        self.check(csrf)?;
        self.require(role)
    }

    /// An audit actor name for the signed-in account.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user.email)
    }
}

/// The value of one cookie of the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value with the attributes every Weir cookie carries.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    // Lax, not Strict: the single sign-on callback is a cross-site navigation, and the
    // session cookie it sets must come along on the redirect that follows.
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Where an unauthenticated request goes: the sign-in page, remembering the page.
fn to_login(parts: &Parts) -> Response {
    let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let next: String = percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC).to_string();
    Redirect::to(&format!("/login?next={next}")).into_response()
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login(parts));
        };
        let session_hash = hash_token(token);
        match state.store.session(&session_hash).await {
            Ok(Some(s)) => Ok(Self { user: s.user, csrf: s.csrf, session_hash }),
            Ok(None) => Err(to_login(parts)),
            Err(e) => Err(UiError::from(e).into_response()),
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    operation: Option<i64>,
}

/// A page that could not be shown, rendered as a page with what to do next.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("There is no {what}.")),
            StoreError::Conflict(m) => Self::BadRequest(m),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable("The database is unavailable. Try again in a moment.".into())
            }
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Forbidden(m) => Self::Forbidden(m),
            ApiError::NotFound(m) | ApiError::NoBundle(m) => Self::NotFound(m),
            ApiError::Internal(m) => Self::Internal(m),
            ApiError::Unavailable(m) => Self::Unavailable(m),
            e => Self::BadRequest(e.to_string()),
        }
    }
}

impl From<askama::Error> for UiError {
    fn from(e: askama::Error) -> Self {
        Self::Internal(format!("template: {e}"))
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Not allowed"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "That did not work"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong"),
        };
        let (message, operation) = match &self {
            Self::Internal(detail) => {
                let id = crate::store::now_ms();
                tracing::error!(error = %detail, operation = id, "page failed");
                ("The server could not show this page.".to_owned(), Some(id))
            }
            e => (e.to_string(), None),
        };
        let page = ErrorPage { title, message: &message, operation };
        (status, Html(page.render().unwrap_or(message))).into_response()
    }
}

/// Renders a template as a 200 page.
pub fn render(t: &impl Template) -> Result<Response, UiError> {
    Ok(Html(t.render()?).into_response())
}

/// "3 min ago" for a Unix-ms time.
pub fn ago(ms: i64) -> String {
    let secs = (crate::store::now_ms() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}
