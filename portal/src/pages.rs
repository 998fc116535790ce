//! The portal's pages: catalog, sign-up and sign-in, apps with their subscriptions and
//! keys, and each product's reference with a "try it" form.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use serde::Deserialize;
use serde_json::Value;

use crate::api::{Entry, check_app_name, issue_key, rotate_key, sign_in, sign_up};
use crate::auth::{SESSION_COOKIE, SESSION_DAYS, Signed, cookie, random, set_cookie, sha256_hex};
use crate::docs::{Operation, openapi, reference};
use crate::{IssuedKey, Portal, PortalError, Product};

const CSS: &str = include_str!("../../web/static/weir.css");
const FORM_COOKIE: &str = "weir_portal_form";
/// "Try it" answers are shown, not stored: the first 64 KiB are plenty to read.
const TRY_MAX_BYTES: usize = 64 * 1024;

pub(crate) fn router() -> Router<Portal> {
    Router::new()
        .route("/static/weir.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/", get(catalog))
        .route("/signup", get(sign_up_form).post(sign_up_submit))
        .route("/login", get(sign_in_form).post(sign_in_submit))
        .route("/logout", post(logout))
        .route("/apps", get(apps).post(create_app))
        .route("/subscriptions", post(subscribe))
        .route("/subscriptions/{id}/keys", post(new_key))
        .route("/keys/{id}/revoke", post(revoke))
        .route("/keys/{id}/rotate", post(rotate))
        .route("/docs/{product}", get(docs))
        .route("/docs/{product}/openapi.json", get(docs_openapi))
        .route("/docs/{product}/try", post(try_it))
}

#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

/// A page that failed, shown as a page.
pub(crate) struct Failure(pub PortalError);

impl From<PortalError> for Failure {
    fn from(e: PortalError) -> Self {
        Self(e)
    }
}

impl From<askama::Error> for Failure {
    fn from(e: askama::Error) -> Self {
        Self(PortalError::Internal(e.to_string()))
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, title, message) = match self.0 {
            PortalError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            PortalError::Conflict(m) | PortalError::Invalid(m) => (StatusCode::BAD_REQUEST, "That did not work", m),
            PortalError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            PortalError::Internal(m) => {
                tracing::error!(error = %m, "portal page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "The page could not be shown.".to_owned())
            }
        };
        let html = ErrorPage { title, message: &message }.render().unwrap_or(message);
        (status, Html(html)).into_response()
    }
}

type PageResult = Result<Response, Failure>;

fn render(t: &impl Template) -> PageResult {
    Ok(Html(t.render()?).into_response())
}

/// The signed-in developer, if any (pages that anyone may see).
async fn who(portal: &Portal, headers: &HeaderMap) -> Option<(String, String)> {
    let secret = cookie(headers, SESSION_COOKIE)?;
    let (developer, csrf) = portal.store.session(&sha256_hex(secret)).await.ok()??;
    Some((developer.email, csrf))
}

#[derive(Template)]
#[template(path = "portal/catalog.html")]
struct Catalog {
    section: &'static str,
    who: Option<String>,
    csrf: String,
    products: Vec<Product>,
}

async fn catalog(State(portal): State<Portal>, headers: HeaderMap) -> PageResult {
    let who = who(&portal, &headers).await;
    render(&Catalog {
        section: "catalog",
        csrf: who.as_ref().map(|w| w.1.clone()).unwrap_or_default(),
        who: who.map(|w| w.0),
        products: portal.store.products().await?,
    })
}

#[derive(Template)]
#[template(path = "portal/login.html")]
struct EntryPage<'a> {
    title: &'a str,
    action: &'a str,
    signup: bool,
    csrf: &'a str,
    next: &'a str,
    email: &'a str,
    message: Option<&'a str>,
    error: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct EntryQuery {
    #[serde(default)]
    next: String,
}

fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") { next } else { "/apps" }
}

/// A sign-in or sign-up page, with a fresh form token in its own cookie.
fn entry_page(
    portal: &Portal,
    signup: bool,
    next: &str,
    email: &str,
    message: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> PageResult {
    let csrf = random(24)?;
    let (title, action) = if signup { ("Create an account", "/signup") } else { ("Sign in", "/login") };
    let page = EntryPage { title, action, signup, csrf: &csrf, next: safe_next(next), email, message, error };
    let mut response = (status, Html(page.render()?)).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(FORM_COOKIE, &csrf, 3600, portal.settings.secure_cookies));
    Ok(response)
}

async fn sign_up_form(State(portal): State<Portal>) -> PageResult {
    entry_page(&portal, true, "/apps", "", None, None, StatusCode::OK)
}

async fn sign_in_form(State(portal): State<Portal>, Query(q): Query<EntryQuery>) -> PageResult {
    entry_page(&portal, false, &q.next, "", None, None, StatusCode::OK)
}

#[derive(Deserialize)]
struct EntryForm {
    #[serde(default)]
    csrf: String,
    email: String,
    password: String,
    #[serde(default)]
    next: String,
}

fn check_form_cookie(headers: &HeaderMap, token: &str) -> Result<(), Failure> {
    if token.is_empty() || cookie(headers, FORM_COOKIE) != Some(token) {
        return Err(Failure(PortalError::Forbidden("The form has expired. Reload the page and try again.".into())));
    }
    Ok(())
}

async fn sign_up_submit(
    State(portal): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<EntryForm>,
) -> PageResult {
    check_form_cookie(&headers, &f.csrf)?;
    match sign_up(&portal, peer.ip(), &f.email, &f.password).await {
        Ok(Entry::Limited) => entry_page(
            &portal,
            true,
            "/apps",
            &f.email,
            None,
            Some("Too many sign-ups from here. Try again later."),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Ok(_) => entry_page(&portal, false, "/apps", &f.email, Some(crate::api::SIGN_UP_DONE), None, StatusCode::OK),
        Err(PortalError::Invalid(m)) => {
            entry_page(&portal, true, "/apps", &f.email, None, Some(&m), StatusCode::BAD_REQUEST)
        }
        Err(e) => Err(e.into()),
    }
}

async fn sign_in_submit(
    State(portal): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<EntryForm>,
) -> PageResult {
    check_form_cookie(&headers, &f.csrf)?;
    let again = |m: &str, status| entry_page(&portal, false, &f.next, &f.email, None, Some(m), status);
    match sign_in(&portal, peer.ip(), &f.email, &f.password).await? {
        Entry::Session(secret) => {
            let mut r = Redirect::to(safe_next(&f.next)).into_response();
            let secure = portal.settings.secure_cookies;
            r.headers_mut()
                .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &secret, SESSION_DAYS * 86_400, secure));
            r.headers_mut().append(header::SET_COOKIE, set_cookie(FORM_COOKIE, "", 0, secure));
            Ok(r)
        }
        Entry::Pending => again("Your account waits for the API operators' approval.", StatusCode::FORBIDDEN),
        Entry::Refused(m) => again(m, StatusCode::UNAUTHORIZED),
        Entry::Limited => {
            again("Too many sign-in attempts. Wait a minute and try again.", StatusCode::TOO_MANY_REQUESTS)
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(portal): State<Portal>, signed: Signed, Form(f): Form<CsrfForm>) -> PageResult {
    signed.check(&f.csrf)?;
    portal.store.end_session(&signed.session_hash).await?;
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, portal.settings.secure_cookies));
    Ok(r)
}

struct KeyRow {
    id: i64,
    prefix: String,
    created: String,
    expires: String,
    status: &'static str,
    status_class: &'static str,
    live: bool,
}

struct SubscriptionView {
    id: i64,
    product: String,
    plan: String,
    status: String,
    keys: Vec<KeyRow>,
}

struct AppView {
    id: i64,
    name: String,
    description: String,
    /// Requests in the last day and the last 30 days.
    usage: (i64, i64),
    subscriptions: Vec<SubscriptionView>,
}

struct PlanOption {
    value: String,
    label: String,
}

#[derive(Template)]
#[template(path = "portal/apps.html")]
struct AppsPage {
    section: &'static str,
    who: Option<String>,
    csrf: String,
    apps: Vec<AppView>,
    plan_options: Vec<PlanOption>,
}

fn date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    weir_gateway::time::rfc3339(t).replace('T', " ").trim_end_matches('Z').to_owned() + " UTC"
}

async fn apps(State(portal): State<Portal>, signed: Signed) -> PageResult {
    let id = signed.developer.id;
    let (apps, subscriptions, keys, products, usage) = (
        portal.store.apps(id).await?,
        portal.store.subscriptions(id).await?,
        portal.store.keys(id).await?,
        portal.store.products().await?,
        portal.store.usage(id).await?,
    );
    let now = crate::auth::now_ms();
    let apps = apps
        .into_iter()
        .map(|a| AppView {
            subscriptions: subscriptions
                .iter()
                .filter(|s| s.app_id == a.id)
                .map(|s| SubscriptionView {
                    id: s.id,
                    product: s.product.clone(),
                    plan: s.plan.clone(),
                    status: s.status.clone(),
                    keys: keys
                        .iter()
                        .filter(|k| k.subscription_id == s.id)
                        .map(|k| {
                            let expired = k.expires_at.is_some_and(|e| e <= now);
                            let (status, class) = match (k.revoked_at, expired) {
                                (Some(_), _) => ("revoked", "rejected"),
                                (None, true) => ("expired", "rejected"),
                                (None, false) if k.expires_at.is_some() => ("active, expires", "stale"),
                                _ => ("active", "synced"),
                            };
                            KeyRow {
                                id: k.id,
                                prefix: k.prefix.clone(),
                                created: date(k.created_at),
                                expires: k.expires_at.map_or_else(|| "never".to_owned(), date),
                                status,
                                status_class: class,
                                live: k.revoked_at.is_none() && !expired,
                            }
                        })
                        .collect(),
                })
                .collect(),
            usage: usage.iter().find(|u| u.app_id == a.id).map_or((0, 0), |u| (u.last_day, u.last_30_days)),
            id: a.id,
            name: a.name,
            description: a.description,
        })
        .collect();
    let plan_options = products
        .iter()
        .flat_map(|p| {
            p.plans.iter().map(move |plan| PlanOption {
                value: format!("{}/{}", p.name, plan.name),
                label: format!("{} · {} ({})", p.title, plan.name, plan.summary()),
            })
        })
        .collect();
    render(&AppsPage {
        section: "apps",
        who: Some(signed.developer.email.clone()),
        csrf: signed.csrf.clone(),
        apps,
        plan_options,
    })
}

#[derive(Deserialize)]
struct AppForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
}

async fn create_app(State(portal): State<Portal>, signed: Signed, Form(f): Form<AppForm>) -> PageResult {
    signed.check(&f.csrf)?;
    portal.store.create_app(signed.developer.id, check_app_name(&f.name)?, f.description.trim()).await?;
    Ok(Redirect::to("/apps").into_response())
}

#[derive(Deserialize)]
struct SubscribeForm {
    #[serde(default)]
    csrf: String,
    app: i64,
    /// `product/plan`
    plan: String,
}

async fn subscribe(State(portal): State<Portal>, signed: Signed, Form(f): Form<SubscribeForm>) -> PageResult {
    signed.check(&f.csrf)?;
    let (product, plan) =
        f.plan.split_once('/').ok_or_else(|| Failure(PortalError::Invalid("Choose a product and plan.".into())))?;
    portal.store.subscribe(signed.developer.id, f.app, product, plan).await?;
    Ok(Redirect::to("/apps").into_response())
}

#[derive(Template)]
#[template(path = "portal/key.html")]
struct KeyPage {
    section: &'static str,
    who: Option<String>,
    csrf: String,
    key: String,
    expires: String,
    send_as: String,
}

async fn key_page(portal: &Portal, signed: &Signed, issued: IssuedKey, product: Option<String>) -> PageResult {
    let send_as = match product {
        Some(p) => match portal.store.product_config(&p).await? {
            Some(config) => {
                let config: Value = serde_json::from_str(&config).unwrap_or_default();
                let k = reference(&config, &p).key;
                if k.place == "query" { format!("?{}=…", k.name) } else { format!("{}: …", k.name) }
            }
            None => "the header your API's docs name".into(),
        },
        None => "the header your API's docs name".into(),
    };
    render(&KeyPage {
        section: "apps",
        who: Some(signed.developer.email.clone()),
        csrf: signed.csrf.clone(),
        key: issued.key,
        expires: issued
            .expires_at
            .map_or_else(|| "It does not expire".to_owned(), |e| format!("It expires {}", date(e))),
        send_as,
    })
}

async fn product_of_subscription(portal: &Portal, developer: i64, subscription: i64) -> Option<String> {
    portal.store.subscriptions(developer).await.ok()?.into_iter().find(|s| s.id == subscription).map(|s| s.product)
}

async fn new_key(
    State(portal): State<Portal>,
    signed: Signed,
    Path(sub): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    signed.check(&f.csrf)?;
    let issued = issue_key(&portal, signed.developer.id, sub).await?;
    let product = product_of_subscription(&portal, signed.developer.id, sub).await;
    key_page(&portal, &signed, issued, product).await
}

async fn revoke(
    State(portal): State<Portal>,
    signed: Signed,
    Path(key): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    signed.check(&f.csrf)?;
    portal.store.revoke_key(signed.developer.id, key).await?;
    Ok(Redirect::to("/apps").into_response())
}

#[derive(Deserialize)]
struct RotateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    grace_hours: i64,
}

async fn rotate(
    State(portal): State<Portal>,
    signed: Signed,
    Path(key): Path<i64>,
    Form(f): Form<RotateForm>,
) -> PageResult {
    signed.check(&f.csrf)?;
    let old = portal.store.keys(signed.developer.id).await?.into_iter().find(|k| k.id == key);
    let issued = rotate_key(&portal, signed.developer.id, key, f.grace_hours).await?;
    key_page(&portal, &signed, issued, old.map(|k| k.product)).await
}

struct Tried {
    status: String,
    body: String,
}

#[derive(Template)]
#[template(path = "portal/docs.html")]
struct DocsPage {
    section: &'static str,
    who: Option<String>,
    csrf: String,
    name: String,
    title: String,
    description: String,
    gateway: String,
    key_place: String,
    key_name: String,
    operations: Vec<Operation>,
    tried: Option<Tried>,
}

async fn product_reference(portal: &Portal, name: &str) -> Result<(Product, crate::docs::Reference), Failure> {
    let product = portal
        .store
        .products()
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Failure(PortalError::NotFound(format!("There is no API named {name:?}."))))?;
    let config: Value = match portal.store.product_config(name).await? {
        Some(c) => serde_json::from_str(&c).unwrap_or_default(),
        None => Value::Null,
    };
    let r = reference(&config, name);
    Ok((product, r))
}

async fn docs_page(portal: &Portal, headers: &HeaderMap, name: &str, tried: Option<Tried>) -> PageResult {
    let (product, r) = product_reference(portal, name).await?;
    let who = who(portal, headers).await;
    render(&DocsPage {
        section: "catalog",
        csrf: who.as_ref().map(|w| w.1.clone()).unwrap_or_default(),
        who: who.map(|w| w.0),
        name: product.name,
        title: product.title,
        description: product.description,
        gateway: portal.settings.gateway_url.clone(),
        key_place: r.key.place,
        key_name: r.key.name,
        operations: r.operations,
        tried,
    })
}

async fn docs(State(portal): State<Portal>, Path(name): Path<String>, headers: HeaderMap) -> PageResult {
    docs_page(&portal, &headers, &name, None).await
}

async fn docs_openapi(State(portal): State<Portal>, Path(name): Path<String>) -> PageResult {
    let (product, r) = product_reference(&portal, &name).await?;
    let uploaded: Option<Value> =
        portal.store.product_openapi(&name).await?.and_then(|s| serde_json::from_str(&s).ok());
    let doc = openapi(&product.title, &product.description, &portal.settings.gateway_url, &r, uploaded.as_ref());
    Ok(Json(doc).into_response())
}

#[derive(Deserialize)]
struct TryForm {
    #[serde(default)]
    csrf: String,
    path: String,
    key: String,
}

/// Calls the gateway with the developer's key, server-side (no CORS to configure), and
/// shows the answer on the reference page. Only paths of the product are called.
async fn try_it(
    State(portal): State<Portal>,
    signed: Signed,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(f): Form<TryForm>,
) -> PageResult {
    signed.check(&f.csrf)?;
    let (_, r) = product_reference(&portal, &name).await?;
    let path = f.path.trim();
    let known = r.operations.iter().any(|op| op.method == "GET" && same_route(&op.path, path));
    if !path.starts_with('/') || !known {
        return Err(Failure(PortalError::Invalid(format!("{path} is not one of this API's GET endpoints."))));
    }
    let mut url = format!("{}{path}", portal.settings.gateway_url.trim_end_matches('/'));
    let mut request = http::Request::builder().method(http::Method::GET);
    if r.key.place == "query" {
        let sep = if url.contains('?') { '&' } else { '?' };
        let key = percent_encoding::utf8_percent_encode(&f.key, percent_encoding::NON_ALPHANUMERIC);
        url = format!("{url}{sep}{}={key}", r.key.name);
    } else {
        request = request.header(r.key.name.as_str(), f.key.trim());
    }
    let request =
        request.uri(url).body(Full::new(Bytes::new())).map_err(|e| Failure(PortalError::Invalid(e.to_string())))?;
    let tried = match tokio::time::timeout(std::time::Duration::from_secs(10), portal.http.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), TRY_MAX_BYTES).collect().await;
            let body = body
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_else(|_| "(too large to show)".into());
            let body = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(body);
            Tried { status: status.to_string(), body }
        }
        Ok(Err(e)) => Tried { status: "no answer".into(), body: e.to_string() },
        Err(_) => Tried { status: "no answer".into(), body: "the gateway did not answer within 10 s".into() },
    };
    docs_page(&portal, &headers, &name, Some(tried)).await
}

/// Whether a concrete path (`/orders/7`) matches an endpoint template (`/orders/{id}`).
fn same_route(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    if let Some(i) = t.iter().position(|s| s.starts_with("{*")) {
        return p.len() >= i && t[..i].iter().zip(&p).all(|(a, b)| a == b || a.starts_with('{'));
    }
    t.len() == p.len() && t.iter().zip(&p).all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::same_route;

    #[test]
    fn try_it_only_calls_the_products_routes() {
        assert!(same_route("/orders/{id}", "/orders/7"));
        assert!(same_route("/orders/{id}", "/orders/7?expand=items"));
        assert!(!same_route("/orders/{id}", "/orders/"));
        assert!(!same_route("/orders/{id}", "/admin/7"));
        assert!(same_route("/files/{*rest}", "/files/a/b"));
    }
}
