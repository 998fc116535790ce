//! Developer accounts: passwords (Argon2id), sessions (cookie for pages, bearer token
//! for the JSON API; both a random id stored hashed), CSRF and sign-in limits.

use std::net::IpAddr;
use std::num::NonZeroU32;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest as _, Sha256};

use crate::{Developer, Portal, PortalError};

pub(crate) const SESSION_COOKIE: &str = "weir_portal";
/// Developers stay signed in for a week; keys, not sessions, are what their apps use.
pub(crate) const SESSION_DAYS: i64 = 7;

type Keyed<K> =
    governor::RateLimiter<K, governor::state::keyed::DefaultKeyedStateStore<K>, governor::clock::DefaultClock>;

/// Sign-in and sign-up limits per client address and per account.
pub(crate) struct Limits {
    sign_in_address: Keyed<IpAddr>,
    sign_in_account: Keyed<String>,
    sign_up_address: Keyed<IpAddr>,
}

impl Limits {
    pub(crate) fn new() -> Self {
        let per_minute = |n: u32| governor::Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        let per_hour = |n: u32| governor::Quota::per_hour(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Self {
            sign_in_address: governor::RateLimiter::keyed(per_minute(10)),
            sign_in_account: governor::RateLimiter::keyed(per_minute(5)),
            // Accounts are cheap to ask for and costly to clean up: 10 an hour per address.
            sign_up_address: governor::RateLimiter::keyed(per_hour(10)),
        }
    }

    fn tidy(&self) {
        if self.sign_in_account.len() > 10_000 {
            self.sign_in_account.retain_recent();
            self.sign_in_address.retain_recent();
            self.sign_up_address.retain_recent();
        }
    }

    pub(crate) fn may_sign_in(&self, ip: IpAddr, email: &str) -> bool {
        self.tidy();
        self.sign_in_address.check_key(&ip).is_ok()
            && self.sign_in_account.check_key(&email.to_ascii_lowercase()).is_ok()
    }

    pub(crate) fn may_sign_up(&self, ip: IpAddr) -> bool {
        self.tidy();
        self.sign_up_address.check_key(&ip).is_ok()
    }
}

pub(crate) fn random(bytes: usize) -> Result<String, PortalError> {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok(B64.encode(b))
}

pub(crate) fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_sync(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Argon2id (the crate's default parameters), off the async threads.
pub(crate) async fn hash_password(password: String) -> Result<String, PortalError> {
    tokio::task::spawn_blocking(move || hash_sync(&password))
        .await
        .map_err(|e| PortalError::Internal(e.to_string()))?
        .map_err(PortalError::Internal)
}

/// Verifies a password; unknown accounts (`None`) cost the same Argon2id work.
pub(crate) async fn verify_password(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| DUMMY.get_or_init(|| hash_sync("no account").unwrap_or_default()).clone());
        let ok = PasswordHash::new(&phc)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        ok && real
    })
    .await
    .unwrap_or(false)
}

/// Starts a session; returns the secret id (cookie value or bearer token).
pub(crate) async fn start_session(portal: &Portal, developer: i64) -> Result<String, PortalError> {
    let id = random(32)?;
    let csrf = random(32)?;
    let expires = now_ms() + SESSION_DAYS * 86_400_000;
    portal.store.create_session(&sha256_hex(&id), developer, &csrf, expires).await?;
    Ok(id)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// A signed-in developer, from the session cookie (pages) or a bearer token (API).
pub(crate) struct Signed {
    pub developer: Developer,
    pub csrf: String,
    pub session_hash: String,
    /// Signed in with a bearer token: no cookie, so no CSRF to check.
    pub bearer: bool,
}

impl Signed {
    pub(crate) fn check(&self, token: &str) -> Result<(), PortalError> {
        if self.bearer || Sha256::digest(token.as_bytes()) == Sha256::digest(self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(PortalError::Forbidden(
                "The form has expired or did not come from this site. Reload and try again.".into(),
            ))
        }
    }
}

impl FromRequestParts<Portal> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Portal) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .map(str::to_owned);
        let api = parts.uri.path().starts_with("/api/");
        // The JSON API takes bearer tokens only: a cookie, which browsers attach on their
        // own, would need the CSRF check the API has no form to carry.
        let secret = if api {
            bearer.clone()
        } else {
            bearer.clone().or_else(|| cookie(&parts.headers, SESSION_COOKIE).map(str::to_owned))
        };
        let refuse = || {
            if api {
                crate::api::error(http::StatusCode::UNAUTHORIZED, "unauthorized", "sign in first: POST /api/v1/tokens")
            } else {
                let next = parts.uri.path().to_owned();
                Redirect::to(&format!(
                    "/login?next={}",
                    percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC)
                ))
                .into_response()
            }
        };
        let Some(secret) = secret else {
            return Err(refuse());
        };
        let session_hash = sha256_hex(&secret);
        match portal.store.session(&session_hash).await {
            Ok(Some((developer, csrf))) => Ok(Self { developer, csrf, session_hash, bearer: bearer.is_some() }),
            Ok(None) => Err(refuse()),
            Err(e) => Err(crate::pages::Failure(e).into_response()),
        }
    }
}
