//! Signing in (password or single sign-on) and out.

use std::net::SocketAddr;

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use super::{SESSION_COOKIE, SESSION_HOURS, Signed, UiError, cookie, set_cookie};
use crate::api::AppState;
use crate::domain::access::{generate_token, hash_token, verify_password};
use crate::store::{Change, now_ms};

/// The sign-in form's CSRF token lives in its own cookie until a session exists.
const LOGIN_COOKIE: &str = "weir_login";
/// The SSO state travels in a cookie too, binding the callback to the browser that started it.
const SSO_COOKIE: &str = "weir_sso";

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    next: &'a str,
    email: &'a str,
    error: Option<&'a str>,
    sso: bool,
}

#[derive(Deserialize)]
pub(super) struct NextQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    error: Option<String>,
}

/// Only same-site paths are followed after sign-in (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") { next } else { "/" }
}

fn login_page(
    state: &AppState,
    next: &str,
    email: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Result<Response, UiError> {
    let csrf = generate_token("").map_err(|e| UiError::Internal(e.to_string()))?;
    let page = LoginPage { csrf: &csrf, next: safe_next(next), email, error, sso: state.ui.sso.is_some() };
    let mut response = (status, Html(page.render()?)).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &csrf, 3600, state.ui.secure_cookies));
    Ok(response)
}

pub(super) async fn form(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Result<Response, UiError> {
    login_page(&state, &q.next, "", q.error.as_deref(), StatusCode::OK)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    csrf: String,
    email: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// Starts a session for an account and sends the browser on.
async fn start_session(state: &AppState, user_id: i64, next: &str) -> Result<Response, UiError> {
    let token = generate_token("").map_err(|e| UiError::Internal(e.to_string()))?;
    let csrf = generate_token("").map_err(|e| UiError::Internal(e.to_string()))?;
    let expires = now_ms() + SESSION_HOURS * 3_600_000;
    state.store.create_session(&hash_token(&token), user_id, &csrf, expires).await?;
    let mut response = Redirect::to(safe_next(next)).into_response();
    let secure = state.ui.secure_cookies;
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token, SESSION_HOURS * 3600, secure));
    headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
    Ok(response)
}

pub(super) async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, UiError> {
    if cookie(&headers, LOGIN_COOKIE) != Some(f.csrf.as_str()) || f.csrf.is_empty() {
        return Err(UiError::Forbidden("The sign-in form has expired. Reload the page and try again.".into()));
    }
    let email = f.email.trim();
    if !state.ui.may_attempt(peer.ip(), email) {
        let page = login_page(
            &state,
            &f.next,
            email,
            Some("Too many sign-in attempts. Wait a minute and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        )?;
        return Ok(page);
    }
    let user = state.store.user_by_email(email).await?;
    let password = f.password;
    // Unknown accounts are checked against a dummy hash so that both answers take as long.
    let phc = user.as_ref().filter(|u| u.sso_subject.is_none()).map(|u| u.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => {
            let _ = verify_password(&password, dummy_phc());
            false
        }
    })
    .await
    .unwrap_or(false);
    match user.filter(|_| ok) {
        Some(user) => {
            tracing::info!(email = %user.email, "signed in");
            start_session(&state, user.id, &f.next).await
        }
        None => login_page(&state, &f.next, email, Some("Wrong email or password."), StatusCode::UNAUTHORIZED),
    }
}

/// An Argon2id hash verified when the account does not exist, made once per process.
fn dummy_phc() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| crate::domain::access::hash_password("no account has this password").unwrap_or_default())
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn signed_out(state: &AppState) -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, state.ui.secure_cookies));
    response
}

pub(super) async fn logout(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<CsrfForm>,
) -> Result<Response, UiError> {
    signed.check(&f.csrf)?;
    state.store.delete_session(&signed.session_hash).await?;
    Ok(signed_out(&state))
}

pub(super) async fn logout_everywhere(
    State(state): State<AppState>,
    signed: Signed,
    Form(f): Form<CsrfForm>,
) -> Result<Response, UiError> {
    signed.check(&f.csrf)?;
    let ended = state.store.delete_sessions_of(signed.user.id).await?;
    tracing::info!(email = %signed.user.email, sessions = ended, "signed out everywhere");
    Ok(signed_out(&state))
}

pub(super) async fn sso_start(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Result<Response, UiError> {
    let sso = state.ui.sso.as_ref().ok_or_else(|| UiError::NotFound("Single sign-on is not configured.".into()))?;
    let started = sso.start().await.map_err(|e| {
        tracing::error!(error = %e, "single sign-on unavailable");
        UiError::BadRequest("The identity provider cannot be reached. Try again, or sign in with a password.".into())
    })?;
    state.store.begin_sso(&hash_token(&started.state), &started.verifier, &started.nonce).await?;
    let mut response = Redirect::to(&started.url).into_response();
    // The state is checked twice: stored server-side (single use) and bound to this browser.
    let value = format!("{}|{}", started.state, safe_next(&q.next));
    let value: String = percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC).to_string();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SSO_COOKIE, &value, 600, state.ui.secure_cookies));
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: Option<String>,
}

pub(super) async fn sso_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(cb): Query<Callback>,
) -> Result<Response, UiError> {
    let sso = state.ui.sso.as_ref().ok_or_else(|| UiError::NotFound("Single sign-on is not configured.".into()))?;
    let refuse = |why: &str| {
        tracing::warn!(reason = why, "single sign-on refused");
        Redirect::to(&format!(
            "/login?error={}",
            percent_encoding::utf8_percent_encode(why, percent_encoding::NON_ALPHANUMERIC)
        ))
        .into_response()
    };
    if let Some(error) = cb.error {
        return Ok(refuse(&format!("The identity provider refused the sign-in ({error}).")));
    }
    let bound = cookie(&headers, SSO_COOKIE)
        .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
        .map(|v| v.into_owned())
        .unwrap_or_default();
    let (bound_state, next) = bound.split_once('|').unwrap_or(("", "/"));
    if cb.state.is_empty() || bound_state != cb.state {
        return Ok(refuse("The sign-in did not start in this browser. Try again."));
    }
    let Some(pending) = state.store.take_sso(&hash_token(&cb.state)).await? else {
        return Ok(refuse("This sign-in link was already used or has expired. Try again."));
    };
    if now_ms() - pending.created_at > 600_000 {
        return Ok(refuse("The sign-in took too long. Try again."));
    }
    let identity = match sso.finish(&cb.code, &pending.verifier, &pending.nonce).await {
        Ok(identity) => identity,
        Err(e) => {
            tracing::error!(error = %e, "single sign-on failed");
            return Ok(refuse("The identity provider's answer could not be verified."));
        }
    };
    let Some(role) = sso.settings.role_for(&identity.groups) else {
        return Ok(refuse("Your account is in no group that has access to Weir."));
    };
    let mut w = state.store.write().await?;
    let (user_id, created) = state.store.upsert_sso_user(&mut w.tx, &identity.subject, &identity.email, role).await?;
    w.commit(Change {
        actor: format!("sso:{}", identity.email),
        action: if created { "user.create" } else { "user.sso_sign_in" },
        target: format!("user:{}", identity.email),
        detail: format!("single sign-on, role {role} from groups"),
        ..Change::default()
    })
    .await?;
    let mut response = start_session(&state, user_id, next).await?;
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SSO_COOKIE, "", 0, state.ui.secure_cookies));
    Ok(response)
}
