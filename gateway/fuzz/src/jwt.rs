//! `auth/validator`: JWT header and claims parsing, signature checks and authorisation,
//! through `JwtValidator::validate` with the local JWK set of `tests/fixtures/jwt`.
//!
//! Input:
//! * one line: the value of the `Authorization` header (`Bearer ...`), also sent as
//!   `X-Token` and as the `session` cookie; every validator reads it.
//! * a line of control bytes, then a JOSE header line and a claims line: the harness
//!   signs them with the key the first control byte picks (HS512, ES256, EdDSA, ES512),
//!   so parsing behind a valid signature is reached. An empty header line means the
//!   right `alg` and `kid`. When the second control byte is odd, the claims are made
//!   acceptable (roles and scope granted; no times, issuer or audience), and the token
//!   must then be accepted. RS256 is only verified (signing takes some 60 ms under the
//!   sanitizer); a seed carries a valid RS256 token.
//!
//! Invariants: validating the same token twice (the second time from the cache) gives
//! the same verdict; claims that are accepted can be propagated as headers.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use weir_gateway::policy::jwt::{JwtSettings, JwtValidator};

use crate::{Control, fixture, split_control};

/// One signing key of the fixtures and the validator that trusts it.
struct Issuer {
    alg: &'static str,
    kid: &'static str,
    key: Signing,
    validator: JwtValidator,
}

enum Signing {
    Lib(Algorithm, EncodingKey),
    /// jsonwebtoken has no P-521; the gateway verifies it with `p521`, so does this.
    P521(Box<p521::ecdsa::SigningKey>),
}

struct Harness {
    issuers: Vec<Issuer>,
    rs256: JwtValidator,
    /// Audience, issuer, `all` scopes and a custom header: the checks the others skip.
    strict: JwtValidator,
    runtime: tokio::runtime::Runtime,
}

fn validator(alg: &str, extra: Value) -> JwtValidator {
    let mut settings = json!({
        "alg": alg,
        "jwk_local_path": fixture("jwt/jwks.json"),
        "roles_key": "realm.roles",
        "roles_key_is_nested": true,
        "roles": ["admin"],
        "scopes": ["read", "write"],
        "propagate_claims": [["sub", "x-user"], ["realm.roles", "x-roles"], ["tenant.id", "x-tenant"]],
        "cookie_key": "session",
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        settings[k] = v.clone();
    }
    let settings = JwtSettings::parse(&settings, "fuzz").unwrap_or_else(|p| panic!("harness settings: {p:?}"));
    JwtValidator::build(settings).unwrap_or_else(|e| panic!("harness validator: {e}"))
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let private: Value = serde_json::from_slice(&pem("jwt/private-jwks.json")).expect("private JWKs");
        let hmac = private["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == "hmac"))
            .and_then(|k| k["k"].as_str())
            .and_then(|k| B64.decode(k).ok())
            .expect("the hmac fixture key");
        let lib = |alg, key: jsonwebtoken::errors::Result<EncodingKey>| Signing::Lib(alg, key.expect("fixture key"));
        let p521 = {
            use p521::pkcs8::DecodePrivateKey as _;
            let text = String::from_utf8(pem("jwt/ec521.pem")).expect("PEM text");
            let secret = p521::SecretKey::from_pkcs8_pem(&text).expect("the ec521 fixture key");
            p521::ecdsa::SigningKey::from_slice(&secret.to_bytes()).expect("a P-521 signing key")
        };
        let issuers = [
            ("HS512", "hmac", Signing::Lib(Algorithm::HS512, EncodingKey::from_secret(&hmac))),
            ("ES256", "ec256", lib(Algorithm::ES256, EncodingKey::from_ec_pem(&pem("jwt/ec256.pem")))),
            ("EdDSA", "ed", lib(Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem("jwt/ed25519.pem")))),
            ("ES512", "ec521", Signing::P521(Box::new(p521))),
        ]
        .into_iter()
        .map(|(alg, kid, key)| Issuer { alg, kid, key, validator: validator(alg, json!({})) })
        .collect();
        let strict = validator(
            "HS512",
            json!({"audience": ["api", "web"], "issuer": "weir", "scopes_matcher": "all",
                   "auth_header_name": "x-token", "roles_key_is_nested": false, "roles_key": "roles",
                   "leeway": "0s"}),
        );
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        Harness { issuers, rs256: validator("RS256", json!({})), strict, runtime }
    })
}

/// Runs one input; panics where an invariant of this target does not hold.
pub fn run(data: &[u8]) {
    let h = harness();
    let (control, rest) = split_control(data);
    if control.is_empty() && !data.contains(&b'\n') {
        raw(h, data);
    } else {
        signed(h, control, rest);
    }
}

/// A header value from outside, to every validator.
fn raw(h: &Harness, data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value.clone());
    headers.insert("x-token", value.clone());
    if let Ok(cookie) = HeaderValue::from_bytes(&[b"session=", data].concat()) {
        headers.insert(header::COOKIE, cookie);
    }
    for v in h.issuers.iter().map(|i| &i.validator).chain([&h.rs256, &h.strict]) {
        let _ = twice(h, v, &headers);
    }
}

fn signed(h: &Harness, control: &[u8], rest: &[u8]) {
    let mut c = Control::new(control);
    let issuer = c.pick(&h.issuers);
    let make_acceptable = c.flag();
    let in_cookie = c.flag();
    let mut lines = rest.splitn(2, |b| *b == b'\n');
    let header_line = lines.next().unwrap_or_default();
    let claims_line = lines.next().unwrap_or_default();

    let default_header = header_line.is_empty();
    let jose = if default_header {
        json!({"alg": issuer.alg, "kid": issuer.kid, "typ": "JWT"}).to_string().into_bytes()
    } else {
        header_line.to_vec()
    };
    let claims = if make_acceptable {
        let mut claims = match serde_json::from_slice::<Value>(claims_line) {
            Ok(Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        for checked in ["exp", "nbf", "iss", "aud", "sub"] {
            claims.remove(checked);
        }
        claims.insert("realm".into(), json!({"roles": ["admin"]}));
        claims.insert("scope".into(), "read".into());
        Value::Object(claims).to_string().into_bytes()
    } else {
        claims_line.to_vec()
    };
    let input = format!("{}.{}", B64.encode(&jose), B64.encode(&claims));
    let signature = match &issuer.key {
        Signing::Lib(alg, key) => jsonwebtoken::crypto::sign(input.as_bytes(), key, *alg).expect("fixture keys sign"),
        Signing::P521(key) => {
            use p521::ecdsa::signature::hazmat::RandomizedPrehashSigner as _;
            use sha2::Digest as _;
            let digest: [u8; 64] = sha2::Sha512::digest(input.as_bytes()).into();
            let mut nonces = Nonces { digest, counter: 0 };
            let signature: p521::ecdsa::Signature =
                key.sign_prehash_with_rng(&mut nonces, &digest).expect("P-521 signs a SHA-512 digest");
            B64.encode(signature.to_bytes())
        }
    };
    let token = format!("{input}.{signature}");
    let mut headers = HeaderMap::new();
    let value = if in_cookie { format!("session={token}") } else { format!("Bearer {token}") };
    let value = HeaderValue::try_from(value).expect("base64url and dots make a header value");
    headers.insert(if in_cookie { header::COOKIE } else { header::AUTHORIZATION }, value);

    let verdict = twice(h, &issuer.validator, &headers);
    if make_acceptable && default_header {
        assert!(verdict.is_ok(), "{} refused a token it must accept: {verdict:?}", issuer.alg);
    }
    let _ = twice(h, &h.strict, &headers);
}

/// ECDSA nonces derived from the message (SHA-512 of the digest and a counter), so that
/// a replayed input signs the same token; p521's `Signer` draws them from the OS.
struct Nonces {
    digest: [u8; 64],
    counter: u64,
}

impl rand_core::RngCore for Nonces {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use sha2::Digest as _;
        for chunk in dest.chunks_mut(64) {
            self.counter += 1;
            let block =
                sha2::Sha512::new().chain_update(self.digest).chain_update(self.counter.to_be_bytes()).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Nonces {}

/// Validates twice; the second answer, from the verified-token cache, must agree.
fn twice(
    h: &Harness,
    v: &JwtValidator,
    headers: &HeaderMap,
) -> Result<weir_gateway::policy::jwt::Claims, weir_gateway::policy::jwt::Denied> {
    let first = h.runtime.block_on(v.validate(headers));
    let second = h.runtime.block_on(v.validate(headers));
    if crate::replaying() {
        eprintln!("verdict: {first:?}");
    }
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the cache changed the claims");
            let _ = v.propagated(a);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "the cache changed the refusal"),
        _ => panic!("the cache changed the verdict: {first:?} then {second:?}"),
    }
    first
}
