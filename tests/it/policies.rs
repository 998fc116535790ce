//! Security and traffic policies through real gateways: JWT, API keys, basic auth,
//! rate limits.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::support::{Backend, Gateway, Reply, config};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt").join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token for `alg`, signed with the fixture key of `kid`.
fn token(alg: Algorithm, kid: &str, claims: Value) -> String {
    signed(alg, kid, kid, claims)
}

/// A token signed with the fixture key `key` that names `kid` in its header.
fn signed(alg: Algorithm, key: &str, kid: &str, claims: Value) -> String {
    let pem = |f: &str| std::fs::read(fixture(f)).unwrap();
    let key = match key {
        "rsa" => EncodingKey::from_rsa_pem(&pem("rsa.pem")).unwrap(),
        "rotated" => EncodingKey::from_rsa_pem(&pem("rsa2.pem")).unwrap(),
        "ec256" => EncodingKey::from_ec_pem(&pem("ec256.pem")).unwrap(),
        "ec384" => EncodingKey::from_ec_pem(&pem("ec384.pem")).unwrap(),
        "ed" => EncodingKey::from_ed_pem(&pem("ed25519.pem")).unwrap(),
        _ => EncodingKey::from_secret(b"a-shared-secret-of-at-least-64-bytes-for-hs512-0123456789abcdef"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, &key).unwrap()
}

fn bearer(t: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {t}"))
}

#[tokio::test]
async fn jwt_every_algorithm_roles_and_claims_to_backends() {
    let b = Backend::start(|s| {
        Reply::json(json!({"path": s.uri, "user": s.headers.get("x-user").map(|v| v.to_str().unwrap().to_owned())}))
    })
    .await;
    let algs = [
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("RS512", "rsa"),
        ("PS256", "rsa"),
        ("PS384", "rsa"),
        ("PS512", "rsa"),
        ("ES256", "ec256"),
        ("ES384", "ec384"),
        ("EdDSA", "ed"),
        ("HS256", "hmac"),
        ("HS384", "hmac"),
        ("HS512", "hmac"),
    ];
    let jwks = fixture("jwks.json");
    let mut endpoints: Vec<Value> = algs
        .iter()
        .map(|(alg, _)| {
            json!({"endpoint": format!("/alg/{alg}"), "backend": [{"host": [b.url], "url_pattern": "/x"}],
                "extra_config": {"auth/validator": {"alg": alg, "jwk_local_path": jwks}}})
        })
        .collect();
    endpoints.push(json!({"endpoint": "/admin/{id}", "backend": [{"host": [b.url], "url_pattern": "/users/{JWT.sub}/items/{id}"}],
        "extra_config": {"auth/validator": {"alg": "RS256", "jwk_local_path": jwks, "roles_key": "roles", "roles": ["admin"],
            "audience": ["shop"], "issuer": "https://issuer", "propagate_claims": [["sub", "x-user"]]}}}));
    let gw = Gateway::start(config(json!(endpoints))).await;

    for (alg, kid) in algs {
        let t = token(alg.parse().unwrap(), kid, json!({"sub": "u", "exp": now() + 60}));
        let r = gw.send(Method::GET, &format!("/alg/{alg}"), &[(bearer(&t).0, &bearer(&t).1)], "").await;
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        // A token signed for another algorithm is refused.
        let other = if alg == "RS256" {
            token(Algorithm::HS256, "hmac", json!({"sub": "u"}))
        } else {
            token(Algorithm::RS256, "rsa", json!({"sub": "u"}))
        };
        assert_eq!(
            gw.send(Method::GET, &format!("/alg/{alg}"), &[(bearer(&other).0, &bearer(&other).1)], "").await.status,
            401,
            "{alg}"
        );
    }

    let claims = |roles: Value, exp: i64| json!({"sub": "ada", "roles": roles, "aud": "shop", "iss": "https://issuer", "exp": now() as i64 + exp});
    let admin = token(Algorithm::RS256, "rsa", claims(json!(["admin"]), 60));
    let r = gw.send(Method::GET, "/admin/7", &[(bearer(&admin).0, &bearer(&admin).1)], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"path": "/users/ada/items/7", "user": "ada"}));

    let user = token(Algorithm::RS256, "rsa", claims(json!(["user"]), 60));
    let r = gw.send(Method::GET, "/admin/7", &[(bearer(&user).0, &bearer(&user).1)], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"error": "forbidden"}));

    let expired = token(Algorithm::RS256, "rsa", claims(json!(["admin"]), -30));
    let r = gw.send(Method::GET, "/admin/7", &[(bearer(&expired).0, &bearer(&expired).1)], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json(), json!({"error": "unauthorized"}), "no hint about what failed");

    let r = gw.get("/admin/7").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        b.seen().iter().filter(|s| s.uri.starts_with("/users/")).count(),
        1,
        "refused requests never reach the backend"
    );
}

#[tokio::test]
async fn jwt_keys_from_a_rotating_jwks_url() {
    let keys = Arc::new(Mutex::new(std::fs::read_to_string(fixture("jwks.json")).unwrap()));
    let k = keys.clone();
    let jwks = Backend::start(move |_| Reply::raw(200, "application/json", k.lock().unwrap().clone())).await;
    let b = Backend::json(json!({"ok": true})).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/p", "backend": [{"host": [b.url], "url_pattern": "/"}],
        "extra_config": {"auth/validator": {"alg": "RS256", "jwk_url": format!("{}/jwks.json", jwks.url),
            "disable_jwk_security": true, "cache": true, "failed_jwk_key_cooldown": "5s"}}}])))
    .await;
    let first = token(Algorithm::RS256, "rsa", json!({"sub": "a"}));
    let send = |t: String| {
        let gw = &gw;
        async move { gw.send(Method::GET, "/p", &[("Authorization", &format!("Bearer {t}"))], "").await.status }
    };
    assert_eq!(send(first.clone()).await, 200);
    assert_eq!(send(first.clone()).await, 200);
    assert_eq!(jwks.hits(), 1, "keys are cached");

    // The issuer rotates to a new key: unknown at first, picked up after the cool-down.
    *keys.lock().unwrap() = std::fs::read_to_string(fixture("jwks-rotated.json")).unwrap();
    let rotated = token(Algorithm::RS256, "rotated", json!({"sub": "b"}));
    assert_eq!(send(rotated.clone()).await, 200, "an unknown kid triggers a refresh");
    let hits = jwks.hits();
    let bogus = signed(Algorithm::RS256, "rsa", "nope", json!({"sub": "b"}));
    for _ in 0..5 {
        assert_eq!(send(bogus.clone()).await, 401);
    }
    assert!(jwks.hits() <= hits + 1, "unknown kids do not hammer the key server: {} -> {}", hits, jwks.hits());
}

#[tokio::test]
async fn api_keys_in_header_and_query_with_roles() {
    let b = Backend::start(|s| {
        Reply::json(json!({"role": s.headers.get("x-role").map(|v| v.to_str().unwrap().to_owned())}))
    })
    .await;
    let mut c = config(json!([
        {"endpoint": "/admin", "backend": [{"host": [b.url], "url_pattern": "/"}], "extra_config": {"auth/api-keys": {"roles": ["admin"]}}},
        {"endpoint": "/any", "backend": [{"host": [b.url], "url_pattern": "/"}],
         "extra_config": {"auth/api-keys": {"strategy": "query_string", "identifier": "api_key"}}},
        {"endpoint": "/public", "backend": [{"host": [b.url], "url_pattern": "/"}]}
    ]));
    // sha256("salt" + "secret-admin-key") and ("salt" + "secret-user-key"), lower-case hex.
    let hash = |k: &str| {
        use std::fmt::Write;
        let digest = <sha2_free::Sha256Hex>::of(&format!("salt{k}"));
        let mut s = String::new();
        let _ = write!(s, "{digest}");
        s
    };
    c["extra_config"] = json!({"auth/api-keys": {"hash": "sha256", "salt": "salt", "propagate_role": "X-Role", "keys": [
        {"key": hash("secret-admin-key"), "roles": ["admin", "user"]}, {"key": hash("secret-user-key"), "roles": ["user"]}]}});
    let gw = Gateway::start(c).await;
    let r = gw.send(Method::GET, "/admin", &[("Authorization", "Bearer secret-admin-key")], "").await;
    assert_eq!((r.status, r.json()), (200, json!({"role": "admin"})));
    assert_eq!(gw.send(Method::GET, "/admin", &[("Authorization", "Bearer secret-user-key")], "").await.status, 403);
    assert_eq!(gw.send(Method::GET, "/admin", &[("Authorization", "Bearer secret-admin-kez")], "").await.status, 401);
    assert_eq!(gw.get("/any?api_key=secret-user-key").await.status, 200);
    assert_eq!(gw.get("/any?api_key=wrong").await.status, 401);
    assert_eq!(gw.get("/public").await.status, 200);
}

/// SHA-256 in hex via the `sha256sum` tool, so the test does not share the gateway's code.
mod sha2_free {
    pub struct Sha256Hex(String);
    impl Sha256Hex {
        pub fn of(text: &str) -> Self {
            use std::io::Write;
            let mut child = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            Self(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned())
        }
    }
    impl std::fmt::Display for Sha256Hex {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
}

#[tokio::test]
async fn basic_auth_with_bcrypt_users() {
    let b = Backend::json(json!({"ok": true})).await;
    let hash = bcrypt_hash("s3cret");
    let mut c = config(
        json!([{"endpoint": "/b", "backend": [{"host": [b.url], "url_pattern": "/"}], "extra_config": {"auth/basic": {}}}]),
    );
    c["extra_config"] = json!({"auth/basic": {"users": {"ada": hash}}});
    let gw = Gateway::start(c).await;
    use base64::Engine as _;
    let cred =
        |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    assert_eq!(gw.send(Method::GET, "/b", &[("Authorization", &cred("ada", "s3cret"))], "").await.status, 200);
    let r = gw.send(Method::GET, "/b", &[("Authorization", &cred("ada", "nope"))], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"weir\""));
    assert_eq!(gw.get("/b").await.status, 401);
}

/// A bcrypt hash from the system's crypt(3) through Python, independent of the gateway's code.
fn bcrypt_hash(password: &str) -> String {
    let script = "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))";
    let out = std::process::Command::new("python3").args(["-W", "ignore", "-c", script, password]).output().unwrap();
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(hash.starts_with("$2b$"), "{hash} {}", String::from_utf8_lossy(&out.stderr));
    hash
}

#[tokio::test]
async fn rate_limits_hit_exactly_at_the_burst() {
    let b = Backend::json(json!({"ok": true})).await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/client", "backend": [{"host": [b.url], "url_pattern": "/"}],
         "extra_config": {"qos/ratelimit/router": {"client_max_rate": 3, "every": "1h", "strategy": "header", "key": "X-User"}}},
        {"endpoint": "/all", "backend": [{"host": [b.url], "url_pattern": "/"}],
         "extra_config": {"qos/ratelimit/router": {"max_rate": 2, "every": "1h"}}},
        {"endpoint": "/backend", "backend": [{"host": [b.url], "url_pattern": "/",
            "extra_config": {"qos/ratelimit/proxy": {"max_rate": 1, "capacity": 1, "every": "1h"}}}]}
    ])))
    .await;
    for i in 0..3 {
        let r = gw.send(Method::GET, "/client", &[("X-User", "ada")], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=3;w=3600"));
        assert!(r.header("ratelimit").unwrap().starts_with(&format!("\"client\";r={};", 2 - i)));
    }
    let r = gw.send(Method::GET, "/client", &[("X-User", "ada")], "").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
    assert_eq!(r.json(), json!({"error": "too many requests"}));
    assert_eq!(gw.send(Method::GET, "/client", &[("X-User", "bob")], "").await.status, 200);
    // Without the key (or with an empty one) a client cannot be told apart: refused, as
    // KrakenD does, and with no time to retry after.
    for _ in 0..5 {
        for headers in [&[][..], &[("X-User", "")][..]] {
            let r = gw.send(Method::GET, "/client", headers, "").await;
            assert_eq!(r.status, 429, "{headers:?}");
            assert_eq!(r.header("retry-after"), None);
        }
    }

    assert_eq!(gw.get("/all").await.status, 200);
    assert_eq!(gw.get("/all").await.status, 200);
    assert_eq!(gw.get("/all").await.status, 503);

    assert_eq!(gw.get("/backend").await.status, 200);
    assert_eq!(gw.get("/backend").await.status, 500, "a limited backend counts as failed");
}

#[test]
fn check_reports_policy_problems_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.json");
    std::fs::write(
        &cfg,
        json!({"version": 3, "host": ["http://b"], "endpoints": [
        {"endpoint": "/a", "backend": [{"url_pattern": "/"}], "extra_config": {
            "auth/validator": {"alg": "RS999", "jwk_url": "http://insecure"},
            "auth/api-keys": {"roles": ["x"]},
            "qos/ratelimit/router": {"client_max_rate": 5, "strategy": "header"},
            "qos/ratelimit/router/redis": {"connection_pool": "nope", "max_rate": 1}}}]})
        .to_string(),
    )
    .unwrap();
    let out = crate::support::weir(&["check", "-c", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    for want in [
        "error: endpoints[0].extra_config.auth/validator.alg: \"RS999\" is not a JWT algorithm",
        "error: endpoints[0].extra_config.auth/validator.jwk_url: must be https",
        "error: endpoints[0].extra_config.auth/api-keys: needs the keys declared in the service",
        "error: endpoints[0].extra_config.qos/ratelimit/router.key: strategy header needs the key",
        "error: endpoints[0].extra_config.qos/ratelimit/router/redis.connection_pool: \"nope\" is not declared",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

/// Two gateways drawing from one Redis bucket (the machine's Redis on 127.0.0.1:6379).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rate_limit_is_shared_through_redis() {
    let b = Backend::json(json!({"ok": true})).await;
    // A path of its own per run, so the Redis keys of earlier runs do not count.
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let path = format!("/shared-{nonce}");
    let gateway_config = |redis_port: u16, allow: bool| {
        let mut c = config(json!([{"endpoint": path, "backend": [{"host": [b.url], "url_pattern": "/"}],
            "extra_config": {"qos/ratelimit/router/redis": {"connection_pool": "shared", "client_max_rate": 4,
                "every": "1h", "strategy": "header", "key": "X-User", "on_failure_allow": allow}}}]));
        c["extra_config"] =
            json!({"redis": {"connection_pools": [{"name": "shared", "address": format!("127.0.0.1:{redis_port}")}]}});
        c
    };
    let one = Gateway::start(gateway_config(6379, false)).await;
    let two = Gateway::start(gateway_config(6379, false)).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &one } else { &two };
        statuses.push(gw.send(Method::GET, &path, &[("X-User", "ada")], "").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "four tokens in total across both nodes");
    let r = two.send(Method::GET, &path, &[("X-User", "ada")], "").await;
    assert!(r.header("retry-after").is_some());
    assert_eq!(one.send(Method::GET, &path, &[("X-User", "bob")], "").await.status, 200);
    assert_eq!(one.send(Method::GET, &path, &[], "").await.status, 429, "no key, no entry");

    // Redis unreachable: refused by default, let through with on_failure_allow.
    let closed = crate::support::free_port();
    let strict = Gateway::start(gateway_config(closed, false)).await;
    assert_eq!(strict.send(Method::GET, &path, &[("X-User", "x")], "").await.status, 503);
    let lenient = Gateway::start(gateway_config(closed, true)).await;
    assert_eq!(lenient.send(Method::GET, &path, &[("X-User", "x")], "").await.status, 200);
}

/// The gateway issues tokens from a login backend's answer and accepts them back.
#[tokio::test]
async fn signer_issues_tokens_the_validator_accepts() {
    let login = Backend::json(json!({"access_token": {"sub": "ada", "roles": ["admin"], "exp": now() + 600}, "refresh_token": {"sub": "ada"}, "expires_in": 600})).await;
    let b = Backend::json(json!({"secret": true})).await;
    let private = fixture("private-jwks.json");
    let public = fixture("jwks.json");
    let mut endpoints = Vec::new();
    for (alg, kid) in [("EdDSA", "ed"), ("ES256", "ec256"), ("RS256", "rsa"), ("HS256", "hmac")] {
        endpoints.push(json!({"endpoint": format!("/login/{kid}"), "method": "POST", "backend": [{"host": [login.url], "url_pattern": "/"}],
            "extra_config": {"auth/signer": {"alg": alg, "kid": kid, "keys_to_sign": ["access_token", "refresh_token"], "jwk_local_path": private}}}));
        endpoints
            .push(json!({"endpoint": format!("/private/{kid}"), "backend": [{"host": [b.url], "url_pattern": "/"}],
            "extra_config": {"auth/validator": {"alg": alg, "jwk_local_path": public, "roles": ["admin"]}}}));
    }
    let gw = Gateway::start(config(json!(endpoints))).await;
    for kid in ["ed", "ec256", "rsa", "hmac"] {
        let r = gw.send(Method::POST, &format!("/login/{kid}"), &[], "").await;
        assert_eq!(r.status, 200, "{kid}");
        let v = r.json();
        assert_eq!(v["expires_in"], 600);
        let token = v["access_token"].as_str().unwrap_or_else(|| panic!("{kid}: {v}")).to_owned();
        assert_eq!(token.split('.').count(), 3);
        let r = gw
            .send(Method::GET, &format!("/private/{kid}"), &[("Authorization", &format!("Bearer {token}"))], "")
            .await;
        assert_eq!(r.status, 200, "{kid}: a token the gateway signed is accepted");
        let refresh = v["refresh_token"].as_str().unwrap().to_owned();
        let r = gw
            .send(Method::GET, &format!("/private/{kid}"), &[("Authorization", &format!("Bearer {refresh}"))], "")
            .await;
        assert_eq!(r.status, 403, "{kid}: the refresh token has no roles");
    }
}

#[tokio::test]
async fn cors_security_headers_bots_and_ip_filter() {
    let b = Backend::json(json!({"ok": true})).await;
    let mut c =
        config(json!([{"endpoint": "/api", "method": "POST", "backend": [{"host": [b.url], "url_pattern": "/"}]},
        {"endpoint": "/api", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["extra_config"] = json!({
        "security/cors": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "POST"], "allow_headers": ["Authorization"],
            "expose_headers": ["X-Krakend-Completed"], "max_age": "12h", "allow_credentials": true},
        "security/http": {"allowed_hosts": ["api.example"], "frame_deny": true, "content_type_nosniff": true, "sts_seconds": 3600},
        "security/bot-detector": {"deny": ["BadBot/1.0"], "patterns": ["(?i)crawler"], "empty_user_agent_is_bot": false},
        "weir/ip-filter": {"deny": ["10.0.0.0/8"], "trusted_proxies": ["127.0.0.1/32"], "client_ip_headers": ["X-Forwarded-For"]}
    });
    let gw = Gateway::start(c).await;
    let host = ("Host", "api.example");

    let pre = gw
        .send(
            Method::OPTIONS,
            "/api",
            &[
                host,
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "Authorization"),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(pre.header("access-control-max-age"), Some("43200"));
    assert_eq!(pre.header("access-control-expose-headers"), None, "expose headers are for actual responses");
    assert_eq!(pre.header("x-frame-options"), Some("DENY"), "security headers on every answer");
    let refused = gw
        .send(
            Method::OPTIONS,
            "/api",
            &[host, ("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")],
            "",
        )
        .await;
    assert_eq!(refused.status, 204);
    assert_eq!(refused.header("access-control-allow-origin"), None, "a refused preflight carries no CORS headers");

    let r = gw.send(Method::GET, "/api", &[host, ("Origin", "https://app.example")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("strict-transport-security"), Some("max-age=3600"));

    assert_eq!(
        gw.send(Method::GET, "/api", &[("Host", "other.example")], "").await.status,
        500,
        "unknown host (Bad Host, as KrakenD)"
    );
    assert_eq!(gw.send(Method::GET, "/api", &[host, ("User-Agent", "BadBot/1.0")], "").await.status, 403);
    assert_eq!(gw.send(Method::GET, "/api", &[host, ("User-Agent", "Mega Crawler 2")], "").await.status, 403);
    assert_eq!(
        gw.send(Method::GET, "/api", &[host, ("X-Forwarded-For", "10.1.2.3")], "").await.status,
        403,
        "denied network behind a trusted proxy"
    );
    assert_eq!(gw.send(Method::GET, "/api", &[host, ("X-Forwarded-For", "192.0.2.7")], "").await.status, 200);
}

#[tokio::test]
async fn responses_are_compressed_for_clients_that_ask() {
    let big: Vec<Value> = (0..200).map(|i| json!({"id": i, "name": format!("item number {i}")})).collect();
    let b = Backend::json(json!({"items": big})).await;
    let mut c = config(json!([{"endpoint": "/list", "backend": [{"host": [b.url], "url_pattern": "/"}]}]));
    c["extra_config"] = json!({"weir/compression": {}});
    let gw = Gateway::start(c).await;
    let plain = gw.get("/list").await;
    assert_eq!(plain.header("content-encoding"), None);
    for (accept, want) in [("gzip", "gzip"), ("br;q=1, gzip;q=0.5", "br")] {
        let r = gw.send(Method::GET, "/list", &[("Accept-Encoding", accept)], "").await;
        assert_eq!(r.header("content-encoding"), Some(want));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        assert!(r.body.len() < plain.body.len() / 3, "{} vs {}", r.body.len(), plain.body.len());
        if want == "gzip" {
            use std::io::Write;
            let mut gunzip = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            gunzip.stdin.take().unwrap().write_all(&r.body).unwrap();
            assert_eq!(gunzip.wait_with_output().unwrap().stdout, plain.body, "gzip -d gives back the plain body");
        }
    }
}

#[tokio::test]
async fn circuit_breaker_opens_fails_fast_and_recovers() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let b = Backend::start(move |_| {
        if h.load(std::sync::atomic::Ordering::SeqCst) { Reply::json(json!({"ok": true})) } else { Reply::status(500) }
    })
    .await;
    let gw = Gateway::start(config(json!([{"endpoint": "/cb", "backend": [{"host": [b.url], "url_pattern": "/",
        "extra_config": {"qos/circuit-breaker": {"interval": 3600, "timeout": 1, "max_errors": 1, "log_status_change": true}}}]}])))
    .await;
    // KrakenD trips after more than max_errors consecutive failures.
    assert_eq!(gw.get("/cb").await.status, 500);
    assert_eq!(gw.get("/cb").await.status, 500);
    assert_eq!(b.hits(), 2);
    assert_eq!(gw.get("/cb").await.status, 500);
    assert_eq!(b.hits(), 2, "open: the backend is not called");
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(gw.get("/cb").await.status, 200, "half-open probe succeeds and closes the breaker");
    assert_eq!(gw.get("/cb").await.status, 200);
    assert_eq!(b.hits(), 4);
}

/// On a `no-op` endpoint the breaker counts calls that got no answer (here: connections
/// closed before one), and any answer as a success, whatever its status.
#[tokio::test]
async fn circuit_breaker_guards_no_op_backends_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answer = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (count, answering) = (accepted.clone(), answer.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if answering.load(Ordering::SeqCst) {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
            }
            // Otherwise dropped: the call fails without an answer.
        }
    });
    let gw = Gateway::start(config(json!([{"endpoint": "/cb", "output_encoding": "no-op",
        "backend": [{"host": [format!("http://{addr}")], "url_pattern": "/", "encoding": "no-op",
        "extra_config": {"qos/circuit-breaker": {"interval": 3600, "timeout": 1, "max_errors": 1}}}]}])))
    .await;
    assert_eq!(gw.get("/cb").await.status, 500);
    assert_eq!(gw.get("/cb").await.status, 500);
    let calls = accepted.load(Ordering::SeqCst);
    assert_eq!(gw.get("/cb").await.status, 500);
    assert_eq!(accepted.load(Ordering::SeqCst), calls, "open: the backend is not called");
    answer.store(true, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(gw.get("/cb").await.status, 503, "the probe gets an answer, passed through: the breaker closes");
    assert_eq!(gw.get("/cb").await.status, 503);
    assert_eq!(gw.get("/cb").await.status, 503, "answers of any status keep it closed");
}

/// In a sequential pipeline a later backend starts late: one that hangs there is still
/// counted by its breaker, at the endpoint's deadline, instead of dropped uncounted.
#[tokio::test]
async fn circuit_breaker_counts_a_later_sequential_backend_that_hangs() {
    let first = Backend::start(|_| Reply::json(json!({"id": 1})).after(std::time::Duration::from_millis(400))).await;
    let hanging = Backend::start(|_| Reply::json(json!({})).after(std::time::Duration::from_secs(5))).await;
    let mut c = config(json!([{"endpoint": "/chain", "extra_config": {"proxy": {"sequential": true}},
        "backend": [{"host": [first.url], "url_pattern": "/"},
            {"host": [hanging.url], "url_pattern": "/{resp0_id}",
             "extra_config": {"qos/circuit-breaker": {"interval": 3600, "timeout": 3600, "max_errors": 0}}}]}]));
    c["timeout"] = json!("1s");
    let gw = Gateway::start(c).await;
    gw.get("/chain").await;
    assert_eq!(hanging.hits(), 1);
    gw.get("/chain").await;
    assert_eq!(first.hits(), 2);
    assert_eq!(hanging.hits(), 1, "the breaker opened: the hanging backend is not called again");
}

#[tokio::test]
async fn http_cache_follows_cache_control_and_vary() {
    let b = Backend::start(|s| {
        let lang = s.headers.get("accept-language").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        if s.uri == "/fresh" {
            Reply::json(json!({"lang": lang})).header("cache-control", "max-age=60").header("vary", "Accept-Language")
        } else {
            Reply::json(json!({"lang": lang})).header("cache-control", "no-store")
        }
    })
    .await;
    let gw = Gateway::start(config(json!([
        {"endpoint": "/fresh", "input_headers": ["Accept-Language"], "backend": [{"host": [b.url], "url_pattern": "/fresh", "extra_config": {"qos/http-cache": {}}}]},
        {"endpoint": "/nostore", "backend": [{"host": [b.url], "url_pattern": "/nostore", "extra_config": {"qos/http-cache": {}}}]}
    ])))
    .await;
    for _ in 0..3 {
        assert_eq!(
            gw.send(Method::GET, "/fresh", &[("Accept-Language", "en")], "").await.json(),
            json!({"lang": "en"})
        );
    }
    assert_eq!(b.hits(), 1, "served from the cache");
    assert_eq!(gw.send(Method::GET, "/fresh", &[("Accept-Language", "fr")], "").await.json(), json!({"lang": "fr"}));
    assert_eq!(b.hits(), 2, "Vary keeps languages apart");
    gw.get("/nostore").await;
    gw.get("/nostore").await;
    assert_eq!(b.hits(), 4, "no-store is never cached");
}

/// `no-op` endpoints use their backend's cache too: the answer is passed on as it came,
/// status and fields included, and later requests are served from the cache.
#[tokio::test]
async fn http_cache_serves_no_op_endpoints() {
    let b = Backend::start(|_| {
        Reply::raw(203, "text/csv", "a,b\n1,2\n").header("cache-control", "max-age=60").header("x-origin", "csv")
    })
    .await;
    let gw = Gateway::start(config(json!([{"endpoint": "/report", "output_encoding": "no-op",
        "backend": [{"host": [b.url], "url_pattern": "/report", "encoding": "no-op", "extra_config": {"qos/http-cache": {}}}]}])))
    .await;
    for _ in 0..3 {
        let r = gw.get("/report").await;
        assert_eq!((r.status, r.text().as_str()), (203, "a,b\n1,2\n"));
        assert_eq!((r.header("content-type"), r.header("x-origin")), (Some("text/csv"), Some("csv")));
    }
    assert_eq!(b.hits(), 1, "served from the cache after the first call");
}

/// `Vary` is matched against the fields the backend was sent, which include those the
/// gateway sets: a claim propagated as a header keeps each user's answer their own, and a
/// client sending that header itself cannot pick another user's.
#[tokio::test]
async fn http_cache_varies_on_the_fields_the_backend_was_sent() {
    let b = Backend::start(|s| {
        let user = s.headers.get("x-user").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        Reply::json(json!({"user": user})).header("cache-control", "max-age=60").header("vary", "X-User")
    })
    .await;
    let gw = Gateway::start(config(json!([{"endpoint": "/me", "backend": [{"host": [b.url], "url_pattern": "/me",
        "extra_config": {"qos/http-cache": {}}}],
        "extra_config": {"auth/validator": {"alg": "RS256", "jwk_local_path": fixture("jwks.json"),
            "propagate_claims": [["sub", "x-user"]]}}}])))
    .await;
    let me = |sub: &str| token(Algorithm::RS256, "rsa", json!({"sub": sub, "exp": now() + 60}));
    let (ada, bob) = (me("ada"), me("bob"));
    for (who, token, extra) in
        [("ada", &ada, None), ("bob", &bob, None), ("bob", &bob, Some("ada")), ("ada", &ada, None)]
    {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(extra.map(|forged| ("X-User", forged)));
        let r = gw.send(Method::GET, "/me", &headers, "").await;
        assert_eq!(r.json(), json!({"user": who}), "{who} sending X-User {extra:?}");
    }
    assert_eq!(b.hits(), 2, "one call per user, each answer from the cache after that");
}

#[tokio::test]
async fn request_bodies_are_validated_and_limited_per_endpoint() {
    let b = Backend::start(|s| Reply::json(json!({"got": String::from_utf8_lossy(&s.body)}))).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/users", "method": "POST", "backend": [{"host": [b.url], "url_pattern": "/"}],
        "extra_config": {"proxy": {"max_payload": 200},
            "validation/json-schema": {"type": "object", "required": ["name"], "properties": {"age": {"type": "integer", "minimum": 0}}}}}])))
    .await;
    let ok =
        gw.send(Method::POST, "/users", &[("Content-Type", "application/json")], r#"{"name":"ada","age":36}"#).await;
    assert_eq!(ok.status, 200);
    let bad = gw.send(Method::POST, "/users", &[], r#"{"age":-1}"#).await;
    assert_eq!(bad.status, 400);
    let v = bad.json();
    assert_eq!(v["error"], "invalid request body");
    let violations: Vec<String> =
        v["violations"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect();
    assert!(violations.iter().any(|m| m.starts_with("/age: ")), "{violations:?}");
    assert!(violations.iter().any(|m| m.contains("name")), "{violations:?}");
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(300));
    assert_eq!(gw.send(Method::POST, "/users", &[], big).await.status, 413);
    assert_eq!(b.hits(), 1, "refused bodies never reach the backend");
}

/// Refusals and breaker states show up on the Prometheus endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_breaker_states_are_counted() {
    let ok = Backend::json(json!({"ok": true})).await;
    let broken = Backend::start(|_| Reply::status(500)).await;
    let metrics_port = crate::support::free_port();
    // A stand-in OpenTelemetry Collector: keeps what it receives.
    let exports = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = exports.clone();
    let collector = Backend::start(move |s| {
        if s.method == Method::POST && s.uri == "/v1/metrics" {
            seen.lock().unwrap().push(serde_json::from_slice(&s.body).unwrap_or(Value::Null));
        }
        Reply::json(json!({}))
    })
    .await;
    let collector_addr = collector.url.trim_start_matches("http://").to_owned();
    let (collector_host, collector_port) = collector_addr.rsplit_once(':').unwrap();
    let collector_port: u16 = collector_port.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.json");
    let config = json!({"version": 3, "listen_ip": "127.0.0.1", "port": 1,
    "extra_config": {"telemetry/opentelemetry": {"service_name": "policy-test", "metric_reporting_period": 1, "exporters": {
        "prometheus": [{"name": "local", "port": metrics_port, "listen_ip": "127.0.0.1"}],
        "otlp": [{"name": "collector", "host": collector_host, "port": collector_port, "use_http": true}]}}},
    "endpoints": [
        {"endpoint": "/limited", "backend": [{"host": [ok.url], "url_pattern": "/"}],
         "extra_config": {"qos/ratelimit/router": {"client_max_rate": 1, "every": "1h"}}},
        {"endpoint": "/flaky", "backend": [{"host": [broken.url], "url_pattern": "/",
            "extra_config": {"qos/circuit-breaker": {"interval": 3600, "timeout": 3600, "max_errors": 0}}}]},
        {"endpoint": "/down", "backend": [{"host": ["http://127.0.0.1:1"], "url_pattern": "/gone"}]}
    ]});
    std::fs::write(&cfg, config.to_string()).unwrap();
    let node = crate::support::Process::start(&["run", "-c", cfg.to_str().unwrap()], dir.path());
    let get = |path: &str| {
        let url = node.url(path);
        async move { crate::support::send(Method::GET, &url, &[], bytes::Bytes::new()).await }
    };
    assert_eq!(get("/limited").await.status, 200);
    assert_eq!(get("/limited").await.status, 429);
    assert_eq!(get("/flaky").await.status, 500);
    assert_eq!(get("/flaky").await.status, 500);
    assert_eq!(get("/down").await.status, 500);
    let metrics = crate::support::send(
        Method::GET,
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for line in [
        "weir_responses_total{route=\"/limited\",method=\"GET\",status_class=\"2xx\"} 1",
        "weir_responses_total{route=\"/limited\",method=\"GET\",status_class=\"4xx\"} 1",
        "weir_refusals_total{route=\"/limited\",method=\"GET\",reason=\"rate_limited\"} 1",
        "weir_responses_total{route=\"/flaky\",method=\"GET\",status_class=\"5xx\"} 2",
        "weir_circuit_breaker_state{backend=\"GET /flaky backend 0\"} 1",
        "weir_circuit_breaker_transitions_total{backend=\"GET /flaky backend 0\",to=\"open\"} 1",
        "weir_request_duration_seconds_count{route=\"/limited\",method=\"GET\",status_class=\"2xx\"} 1",
        // Backend calls: the rate-limited request and the one the open breaker stopped
        // made none; the refused connection is a call without an answer.
        &format!(
            "weir_backend_request_duration_seconds_count{{route=\"/limited\",method=\"GET\",backend=\"/\",host=\"{}\",outcome=\"2xx\"}} 1",
            ok.url.trim_start_matches("http://")
        ),
        &format!(
            "weir_backend_request_duration_seconds_count{{route=\"/flaky\",method=\"GET\",backend=\"/\",host=\"{}\",outcome=\"5xx\"}} 1",
            broken.url.trim_start_matches("http://")
        ),
        "weir_backend_request_duration_seconds_count{route=\"/down\",method=\"GET\",backend=\"/gone\",host=\"127.0.0.1:1\",outcome=\"error\"} 1",
        "# TYPE weir_open_connections gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The same figures reach the collector as OTLP/HTTP JSON every reporting period.
    let mut export = None;
    for _ in 0..50 {
        export = exports.lock().unwrap().last().cloned();
        if export.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let export = export.expect("an OTLP export within 5 s");
    let resource = &export["resourceMetrics"][0];
    assert_eq!(resource["resource"]["attributes"][0]["value"]["stringValue"], "policy-test");
    let metric = &resource["scopeMetrics"][0]["metrics"][0];
    assert_eq!(metric["name"], "http.server.request.duration");
    let points = metric["histogram"]["dataPoints"].as_array().unwrap();
    let flaky =
        points.iter().find(|p| p["attributes"][0]["value"]["stringValue"] == "/flaky").expect("a point for /flaky");
    assert_eq!(flaky["count"], "2");
    assert_eq!(flaky["attributes"][2]["value"]["stringValue"], "5xx");
    let metrics = resource["scopeMetrics"][0]["metrics"].as_array().unwrap();
    let named = |name: &str| metrics.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no {name}"));
    let calls = named("http.client.request.duration")["histogram"]["dataPoints"].as_array().unwrap();
    let down = calls
        .iter()
        .find(|p| p["attributes"][0]["value"]["stringValue"] == "/down")
        .expect("a backend point for /down");
    assert_eq!(down["count"], "1");
    assert_eq!(down["attributes"][4]["value"]["stringValue"], "error");
    let refused = named("weir.requests.refused")["sum"]["dataPoints"].as_array().unwrap();
    assert!(
        refused.iter().any(|p| p["attributes"][2]["value"]["stringValue"] == "rate_limited" && p["asInt"] == "1"),
        "{refused:?}"
    );
    assert!(named("weir.server.open_connections")["gauge"]["dataPoints"][0]["asInt"].is_string());
    assert_eq!(named("weir.circuit_breaker.state")["gauge"]["dataPoints"][0]["asInt"], "1");
}

/// Traces: a caller's `traceparent` is continued, each backend gets the trace with its
/// call's span as the parent, and the server and client spans reach the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_propagate_to_backends_and_reach_the_collector() {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = received.clone();
    let backend = Backend::start(move |s| {
        let parent = s.headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        seen.lock().unwrap().push(parent);
        Reply::json(json!({"ok": true}))
    })
    .await;
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let kept = spans.clone();
    let collector = Backend::start(move |s| {
        if s.uri == "/v1/traces" {
            let body: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
            for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().into_iter().flatten() {
                kept.lock().unwrap().push(span.clone());
            }
        }
        Reply::json(json!({}))
    })
    .await;
    let (host, port) = collector.url.trim_start_matches("http://").rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("k.json");
    let config = json!({"version": 3, "listen_ip": "127.0.0.1", "port": 1,
        "extra_config": {"telemetry/opentelemetry": {"service_name": "traced", "trace_sample_rate": 1,
            "exporters": {"otlp": [{"name": "c", "host": host, "port": port, "use_http": true, "disable_metrics": true}]}}},
        "endpoints": [{"endpoint": "/two", "backend": [
            {"host": [backend.url], "url_pattern": "/a", "group": "a"},
            {"host": [backend.url], "url_pattern": "/b", "group": "b"}]}]});
    std::fs::write(&cfg, config.to_string()).unwrap();
    let node = crate::support::Process::start(&["run", "-c", cfg.to_str().unwrap()], dir.path());
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply =
        crate::support::send(Method::GET, &node.url("/two"), &[("traceparent", caller)], bytes::Bytes::new()).await;
    assert_eq!(reply.status, 200);
    let sent: Vec<String> = received.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    let mut client_ids = Vec::new();
    for parent in &sent {
        let fields: Vec<&str> = parent.split('-').collect();
        assert_eq!(fields.len(), 4, "{parent}");
        assert_eq!(fields[1], "4bf92f3577b34da6a3ce929d0e0e4736", "the caller's trace goes on");
        assert_ne!(fields[2], "00f067aa0ba902b7", "the backend's parent is the gateway's call");
        assert_eq!(fields[3], "01");
        client_ids.push(fields[2].to_owned());
    }
    assert_ne!(client_ids[0], client_ids[1], "each backend call is its own span");
    let mut exported = Vec::new();
    for _ in 0..50 {
        exported = spans.lock().unwrap().clone();
        if exported.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(exported.len(), 3, "a server span and two client spans: {exported:?}");
    let server = exported.iter().find(|s| s["kind"] == 2).expect("a server span");
    assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(server["name"], "GET /two");
    for id in &client_ids {
        let client = exported.iter().find(|s| s["spanId"] == id.as_str()).expect("the client span the backend saw");
        assert_eq!(client["kind"], 3);
        assert_eq!(client["parentSpanId"], server["spanId"]);
    }
}

/// An ES512 token signed by `openssl` (jsonwebtoken cannot make one), independently of
/// the gateway's own P-521 code.
fn es512_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let input =
        format!("{}.{}", b64(br#"{"alg":"ES512","kid":"ec521","typ":"JWT"}"#), b64(claims.to_string().as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("input");
    std::fs::write(&msg, &input).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha512", "-sign", fixture("ec521.pem").to_str().unwrap(), msg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // DER SEQUENCE { INTEGER r, INTEGER s } -> fixed-width r || s (66 bytes each).
    let der = out.stdout;
    let mut i = if der[1] & 0x80 != 0 { 2 + usize::from(der[1] & 0x7f) } else { 2 };
    let mut raw = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = usize::from(der[i + 1]);
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(66)..];
        raw.extend(std::iter::repeat_n(0u8, 66 - int.len()));
        raw.extend_from_slice(int);
        i += 2 + len;
    }
    format!("{input}.{}", b64(&raw))
}

#[tokio::test]
async fn jwt_es512() {
    let b = Backend::json(json!({"ok": true})).await;
    let gw = Gateway::start(config(json!([{"endpoint": "/p", "backend": [{"host": [b.url], "url_pattern": "/"}],
        "extra_config": {"auth/validator": {"alg": "ES512", "jwk_local_path": fixture("jwks.json"), "issuer": "me"}}}])))
    .await;
    let good = es512_token(&json!({"sub": "a", "iss": "me", "exp": now() + 60}));
    assert_eq!(gw.send(Method::GET, "/p", &[("Authorization", &format!("Bearer {good}"))], "").await.status, 200);
    for bad in [
        es512_token(&json!({"sub": "a", "iss": "me", "exp": now() - 60})),
        es512_token(&json!({"sub": "a", "iss": "you"})),
        format!("{}x", &good[..good.len() - 1]),
        token(Algorithm::ES384, "ec384", json!({"sub": "a", "iss": "me"})),
    ] {
        assert_eq!(gw.send(Method::GET, "/p", &[("Authorization", &format!("Bearer {bad}"))], "").await.status, 401);
    }
}
