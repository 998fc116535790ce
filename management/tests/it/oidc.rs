//! A small OpenID Connect provider for the SSO sign-in tests: discovery, JWKS, and the
//! authorization code flow with PKCE (S256) issuing RS256 id_tokens, over real HTTP on port 0.
//! There is no login form: `/authorize` approves whoever [`TestIdp::sign_in_as`] named.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const KEY_PEM: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/jwt/rsa.pem"));
/// Holds the public half of `rsa.pem` under this kid, next to other test keys (one of them
/// a shared HMAC secret), so only this one entry is published.
const FIXTURE_JWKS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/jwt/jwks.json"));
const KID: &str = "rsa";
/// Five minutes, like the short-lived tokens of hosted providers; long enough for any test.
const TOKEN_LIFETIME_SECS: u64 = 300;

/// A running OpenID Connect provider with one confidential client.
pub struct TestIdp {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    provider: Arc<Provider>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestIdp {
    /// Starts the provider on 127.0.0.1:0; `issuer` is `http://127.0.0.1:<port>`.
    pub async fn start() -> TestIdp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let provider = Arc::new(Provider {
            issuer: issuer.clone(),
            client_id: "weir-control".to_owned(),
            client_secret: random_token(),
            key: EncodingKey::from_rsa_pem(KEY_PEM.as_bytes()).expect("rsa.pem"),
            jwk: public_jwk(),
            session: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(provider.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        TestIdp {
            issuer,
            client_id: provider.client_id.clone(),
            client_secret: provider.client_secret.clone(),
            provider,
            stop: Some(stop),
        }
    }

    /// Who the next /authorize approves (there is no login form: the provider approves at once).
    /// The sign-in stays, like a provider's session cookie, until the next call.
    pub fn sign_in_as(&self, subject: &str, email: &str, groups: &[&str]) {
        self.provider.session.lock().unwrap().user = Some(User {
            subject: subject.to_owned(),
            email: email.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        });
    }

    /// How many authorization codes were exchanged successfully at /token.
    pub fn exchanges(&self) -> usize {
        self.provider.session.lock().unwrap().exchanges
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Provider {
    issuer: String,
    client_id: String,
    client_secret: String,
    key: EncodingKey,
    jwk: Value,
    session: Mutex<Session>,
}

#[derive(Default)]
struct Session {
    user: Option<User>,
    codes: HashMap<String, Grant>,
    exchanges: usize,
}

#[derive(Clone)]
struct User {
    subject: String,
    email: String,
    groups: Vec<String>,
}

/// What an authorization code was issued for; checked again when it is redeemed.
struct Grant {
    redirect_uri: String,
    nonce: String,
    challenge: String,
    user: User,
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    nonce: &'a str,
    email: &'a str,
    email_verified: bool,
    groups: &'a [String],
}

fn public_jwk() -> Value {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).expect("jwks.json");
    let mut jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == KID && k["kty"] == "RSA"))
        .cloned()
        .expect("jwks.json has the public half of rsa.pem");
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    jwk
}

async fn discovery(State(p): State<Arc<Provider>>) -> Json<Value> {
    let issuer = &p.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile", "groups"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "email", "email_verified", "groups"],
    }))
}

async fn jwks(State(p): State<Arc<Provider>>) -> Json<Value> {
    Json(json!({ "keys": [p.jwk] }))
}

/// Errors are answered here rather than redirected to the client, so that a test
/// sending a bad request fails with the reason in its output.
async fn authorize(State(p): State<Arc<Provider>>, RawQuery(query): RawQuery) -> Response {
    let approved = parse_form(query.as_deref().unwrap_or("")).and_then(|params| p.approve(&params));
    match approved {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, why).into_response(),
    }
}

async fn token(State(p): State<Arc<Provider>>, headers: HeaderMap, body: Bytes) -> Response {
    let (status, body) = match p.exchange(&headers, &body) {
        Ok(tokens) => (StatusCode::OK, tokens),
        Err(e) => (e.status, json!({ "error": e.error, "error_description": e.description })),
    };
    let mut response = (status, Json(body)).into_response();
    let h = response.headers_mut();
    // RFC 6749 5.1: token responses must not be cached, errors included.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"token\""));
    }
    response
}

impl Provider {
    /// Checks an authorization request and returns where to send the browser with a fresh code.
    fn approve(&self, params: &HashMap<String, String>) -> Result<String, String> {
        if required(params, "response_type")? != "code" {
            return Err("response_type must be code: only the authorization code flow is supported".into());
        }
        let client_id = required(params, "client_id")?;
        if client_id != self.client_id {
            return Err(format!("unknown client_id {client_id:?}"));
        }
        let redirect_uri = required(params, "redirect_uri")?;
        let absolute = redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://");
        if !absolute || redirect_uri.contains('#') {
            return Err(format!("redirect_uri {redirect_uri:?} must be an absolute http(s) URL without a fragment"));
        }
        if !required(params, "scope")?.split(' ').any(|s| s == "openid") {
            return Err("scope must contain openid".into());
        }
        let state = required(params, "state")?;
        let nonce = required(params, "nonce")?;
        let challenge = required(params, "code_challenge")?;
        // A missing method means "plain" (RFC 7636 4.3), which this provider refuses.
        let method = params.get("code_challenge_method").map_or("missing (plain)", String::as_str);
        if method != "S256" {
            return Err(format!("code_challenge_method must be S256, not {method}"));
        }
        if challenge.len() != 43 || !challenge.bytes().all(is_base64url) {
            return Err("code_challenge must be BASE64URL(SHA-256(code_verifier)), 43 characters".into());
        }
        let mut session = self.session.lock().unwrap();
        let user = session.user.clone().ok_or("nobody is signed in: call TestIdp::sign_in_as first")?;
        let code = random_token();
        let grant = Grant {
            redirect_uri: redirect_uri.to_owned(),
            nonce: nonce.to_owned(),
            challenge: challenge.to_owned(),
            user,
        };
        session.codes.insert(code.clone(), grant);
        let separator = if redirect_uri.contains('?') { '&' } else { '?' };
        Ok(format!("{redirect_uri}{separator}code={code}&state={}", utf8_percent_encode(state, NON_ALPHANUMERIC)))
    }

    /// Redeems an authorization code for tokens (RFC 6749 4.1.3, RFC 7636 4.6).
    fn exchange(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, TokenError> {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(TokenError::request("the body must be application/x-www-form-urlencoded"));
        }
        let body = std::str::from_utf8(body).map_err(|_| TokenError::request("the body is not UTF-8"))?;
        let form = parse_form(body).map_err(TokenError::request)?;
        self.authenticate(headers, &form)?;
        if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
            return Err(TokenError {
                status: StatusCode::BAD_REQUEST,
                error: "unsupported_grant_type",
                description: "grant_type must be authorization_code".into(),
            });
        }
        let code = required(&form, "code").map_err(TokenError::request)?;
        let redirect_uri = required(&form, "redirect_uri").map_err(TokenError::request)?;
        let verifier = required(&form, "code_verifier").map_err(TokenError::request)?;
        // RFC 7636 4.1: 43 to 128 unreserved characters; anything else is a client bug worth failing on.
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if !(43..=128).contains(&verifier.len()) || !verifier.bytes().all(unreserved) {
            return Err(TokenError::request("code_verifier must be 43 to 128 unreserved characters"));
        }

        let mut session = self.session.lock().unwrap();
        // Removed before the checks: a code is spent by any attempt to redeem it.
        let grant = session.codes.remove(code).ok_or_else(|| TokenError::grant("unknown or already used code"))?;
        if grant.redirect_uri != redirect_uri {
            return Err(TokenError::grant("redirect_uri differs from the one sent to /authorize"));
        }
        if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier)) != grant.challenge {
            return Err(TokenError::grant("code_verifier does not match the code_challenge"));
        }
        session.exchanges += 1;
        drop(session);

        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let claims = IdTokenClaims {
            iss: &self.issuer,
            sub: &grant.user.subject,
            aud: &self.client_id,
            exp: now + TOKEN_LIFETIME_SECS,
            iat: now,
            nonce: &grant.nonce,
            email: &grant.user.email,
            email_verified: true,
            groups: &grant.user.groups,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_owned());
        let id_token = jsonwebtoken::encode(&header, &claims, &self.key).expect("sign id_token");
        Ok(json!({
            "access_token": random_token(),
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_SECS,
            "id_token": id_token,
        }))
    }

    /// client_secret_basic or client_secret_post, never both (RFC 6749 2.3).
    fn authenticate(&self, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<(), TokenError> {
        let basic = headers.get(header::AUTHORIZATION).map(basic_credentials).transpose()?;
        let (id, secret) = match (basic, form.get("client_secret")) {
            (Some(_), Some(_)) => return Err(TokenError::request("use one client authentication method, not two")),
            (Some((id, secret)), None) => {
                if form.get("client_id").is_some_and(|form_id| *form_id != id) {
                    return Err(TokenError::client("client_id in the form differs from the Authorization header"));
                }
                (id, secret)
            }
            (None, Some(secret)) => {
                let id = form.get("client_id").ok_or_else(|| TokenError::client("client_id is missing"))?;
                (id.clone(), secret.clone())
            }
            (None, None) => return Err(TokenError::client("no client authentication")),
        };
        if id != self.client_id || secret != self.client_secret {
            return Err(TokenError::client("wrong client_id or client_secret"));
        }
        Ok(())
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 2.3.1 defines it.
fn basic_credentials(value: &HeaderValue) -> Result<(String, String), TokenError> {
    let malformed = || TokenError::client("malformed Basic credentials");
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    Ok((form_decode(id).map_err(|_| malformed())?, form_decode(secret).map_err(|_| malformed())?))
}

struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl TokenError {
    fn request(description: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error: "invalid_request", description: description.into() }
    }

    fn client(description: &str) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, error: "invalid_client", description: description.into() }
    }

    fn grant(description: &str) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error: "invalid_grant", description: description.into() }
    }
}

fn required<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
    params.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| format!("{name} is missing"))
}

/// `application/x-www-form-urlencoded`, for query strings and token request bodies alike.
/// axum's `Form` extractor is not enabled in this workspace, and this is a few lines.
fn parse_form(input: &str) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for pair in input.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name)?;
        // RFC 6749 3.1: parameters must not be repeated.
        if params.insert(name.clone(), form_decode(value)?).is_some() {
            return Err(format!("{name} is sent more than once"));
        }
    }
    Ok(params)
}

fn form_decode(s: &str) -> Result<String, String> {
    // '+' first: a literal plus arrives as %2B and must survive.
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8().map(Cow::into_owned).map_err(|_| format!("{s:?} is not UTF-8"))
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// 256 random bits, base64url: codes, secrets and access tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("random");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An HTTP answer as the test client saw it.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(
    client: &weir_gateway::proxy::client::Client,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> Reply {
    use http_body_util::BodyExt as _;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answer in time")
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_provider_speaks_the_code_flow_with_pkce() {
    let idp = TestIdp::start().await;
    idp.sign_in_as("user-42", "ada@example.com", &["weir-admins", "ops"]);
    let client = weir_gateway::proxy::client::build(2).expect("client");
    let get = |url: String| {
        let request = http::Request::get(url).body(http_body_util::Full::default()).expect("request");
        send(&client, request)
    };

    let discovery = get(format!("{}/.well-known/openid-configuration", idp.issuer)).await;
    assert_eq!(discovery.status, StatusCode::OK);
    let discovery = discovery.json();
    assert_eq!(discovery["issuer"], idp.issuer.as_str());
    assert_eq!(discovery["code_challenge_methods_supported"], json!(["S256"]));
    let authorization_endpoint = discovery["authorization_endpoint"].as_str().unwrap().to_owned();
    let token_endpoint = discovery["token_endpoint"].as_str().unwrap().to_owned();
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap().to_owned();

    // A redirect_uri with a query of its own: the code must be appended with '&'.
    let redirect_uri = "http://127.0.0.1:9/sso/callback?from=test";
    let authorize = |challenge: &str, method: &str| {
        let query = [
            ("response_type", "code"),
            ("client_id", idp.client_id.as_str()),
            ("redirect_uri", redirect_uri),
            ("scope", "openid email groups"),
            ("state", "st/ate+1"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", challenge),
            ("code_challenge_method", method),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        get(format!("{authorization_endpoint}?{query}"))
    };
    let code_for = |reply: Reply| {
        assert_eq!(reply.status, StatusCode::FOUND, "{}", String::from_utf8_lossy(&reply.body));
        let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
        let query = location.strip_prefix(&format!("{redirect_uri}&")).expect("code appended to the redirect_uri");
        let params = parse_form(query).unwrap();
        assert_eq!(params["state"], "st/ate+1");
        params["code"].clone()
    };
    let verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(&verifier));

    let plain = authorize(&verifier, "plain").await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&plain.body).contains("code_challenge_method"));
    let no_pkce = authorize("", "").await;
    assert_eq!(no_pkce.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&no_pkce.body).contains("code_challenge is missing"));

    let code = code_for(authorize(&challenge, "S256").await);
    let redeem = |code: &str, verifier: &str, basic: bool| {
        let mut form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
            encode(code),
            encode(redirect_uri),
            encode(verifier)
        );
        let mut request = http::Request::post(token_endpoint.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if basic {
            let credentials = format!("{}:{}", encode(&idp.client_id), encode(&idp.client_secret));
            request = request.header(header::AUTHORIZATION, format!("Basic {}", STANDARD.encode(credentials)));
        } else {
            form.push_str(&format!(
                "&client_id={}&client_secret={}",
                encode(&idp.client_id),
                encode(&idp.client_secret)
            ));
        }
        send(&client, request.body(http_body_util::Full::new(Bytes::from(form))).expect("request"))
    };

    let tokens = redeem(&code, &verifier, true).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", String::from_utf8_lossy(&tokens.body));
    assert_eq!(tokens.headers[header::CACHE_CONTROL], "no-store");
    let tokens = tokens.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(idp.exchanges(), 1);

    let id_token = tokens["id_token"].as_str().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&get(jwks_uri).await.body).expect("JWKS");
    let kid = jsonwebtoken::decode_header(id_token).unwrap().kid.expect("kid");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&kid).expect("kid in the JWKS")).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&idp.issuer]);
    validation.set_audience(&[&idp.client_id]);
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation).expect("valid id_token").claims;
    assert_eq!(claims["sub"], "user-42");
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], json!(["weir-admins", "ops"]));

    let reused = redeem(&code, &verifier, true).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    assert_eq!(reused.json()["error"], "invalid_grant");

    let code = code_for(authorize(&challenge, "S256").await);
    let wrong = redeem(&code, &random_token(), false).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    // The failed attempt spent the code: the right verifier is too late now.
    assert_eq!(redeem(&code, &verifier, false).await.json()["error"], "invalid_grant");
    assert_eq!(idp.exchanges(), 1);
}
