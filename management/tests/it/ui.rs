//! The UI's sessions and sign-in rules over plain HTTP, on both databases.

use bytes::Bytes;
use http::{Method, StatusCode};
use weir_management::domain::access::Role;

use crate::on_both_databases;
use crate::support::{Answer, Db, TestApp, spawn_app};

on_both_databases!(sessions_are_cookies_with_csrf_and_end_everywhere, sign_in_is_rate_limited_and_redirects_stay_local);

/// The `name=value` of a Set-Cookie header for `name`.
pub(crate) fn set_cookie<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find(|v| v.starts_with(&format!("{name}=")))
}

pub(crate) fn cookie_pair(set: &str) -> String {
    set.split(';').next().unwrap_or_default().to_owned()
}

pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).map(|i| i + marker.len()).expect("hidden field");
    html[start..].split('"').next().unwrap_or_default().to_owned()
}

/// Signs in over HTTP; returns the login answer and the session cookie pair.
pub(crate) async fn sign_in(app: &TestApp, email: &str, password: &str, next: &str) -> (Answer, Option<String>) {
    let form = app.request(Method::GET, "/login", None, &[], Bytes::new()).await;
    let login_cookie = cookie_pair(set_cookie(&form, "weir_login").expect("login cookie"));
    let csrf = hidden(&form.text, "csrf");
    let body = format!("csrf={csrf}&email={}&password={}&next={}", enc(email), enc(password), enc(next));
    let a = app
        .request(
            Method::POST,
            "/login",
            None,
            &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &login_cookie)],
            body,
        )
        .await;
    let session = set_cookie(&a, "weir_session").map(cookie_pair).filter(|c| c != "weir_session=");
    (a, session)
}

pub(crate) fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

async fn page(app: &TestApp, path: &str, cookie: &str) -> Answer {
    app.request(Method::GET, path, None, &[("cookie", cookie)], Bytes::new()).await
}

async fn sessions_are_cookies_with_csrf_and_end_everywhere(db: Db) {
    let app = spawn_app(db).await;
    app.user("ops@example.com", "a long enough password", Role::Operator).await;

    let anonymous = app.request(Method::GET, "/fleet", None, &[], Bytes::new()).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers["location"], "/login?next=%2Ffleet");
    let css = app.request(Method::GET, "/static/weir.css", None, &[], Bytes::new()).await;
    assert_eq!(css.status, StatusCode::OK);

    let (a, session) = sign_in(&app, "ops@example.com", "a long enough password", "/fleet").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.headers["location"], "/fleet");
    let attributes = set_cookie(&a, "weir_session").unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    let first = session.unwrap();
    let fleet = page(&app, "/fleet", &first).await;
    assert_eq!(fleet.status, StatusCode::OK);
    assert!(fleet.text.contains("ops@example.com"));
    // The session id is stored only as a hash.
    let stored: i64 = sqlx::Row::get(
        &sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE id_hash = $1")
            .bind(first.trim_start_matches("weir_session="))
            .fetch_one(app.store.pool())
            .await
            .unwrap(),
        "n",
    );
    assert_eq!(stored, 0);

    // A sign-in form posted without its own cookie's token is refused.
    let forged = app
        .request(
            Method::POST,
            "/login",
            None,
            &[("content-type", "application/x-www-form-urlencoded")],
            "csrf=x&email=ops%40example.com&password=a+long+enough+password",
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    // Sign out everywhere ends the other browser's session too.
    let (_, second) = sign_in(&app, "ops@example.com", "a long enough password", "/").await;
    let second = second.unwrap();
    let csrf = hidden(&page(&app, "/", &second).await.text, "csrf");
    let out = app
        .request(
            Method::POST,
            "/logout/everywhere",
            None,
            &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &second)],
            format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(page(&app, "/fleet", &first).await.status, StatusCode::SEE_OTHER, "the first browser is signed out");
    assert_eq!(page(&app, "/fleet", &second).await.status, StatusCode::SEE_OTHER);
}

async fn sign_in_is_rate_limited_and_redirects_stay_local(db: Db) {
    let app = spawn_app(db).await;
    app.user("ops@example.com", "the right password", Role::Viewer).await;
    let (a, session) = sign_in(&app, "ops@example.com", "the right password", "//evil.example/x").await;
    assert_eq!(a.headers["location"], "/", "no open redirect");
    assert!(session.is_some());

    let (wrong, none) = sign_in(&app, "nobody@example.com", "guess", "/").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("Wrong email or password"));
    assert!(none.is_none());
    // The same answer whether or not the account exists.
    let (wrong_password, _) = sign_in(&app, "ops@example.com", "guess", "/").await;
    assert!(wrong_password.text.contains("Wrong email or password"));

    for _ in 0..3 {
        let (a, _) = sign_in(&app, "ops@example.com", "guess", "/").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // The account had its five attempts this minute (one success, four failures):
    // even the right password waits now.
    let (limited, session) = sign_in(&app, "ops@example.com", "the right password", "/").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.text.contains("Too many sign-in attempts"));
    assert!(session.is_none());
}
