//! `auth/validator`: JWT validation with keys from a local JWK set or a JWK URL.
//!
//! Verified tokens are cached until they expire (bounded, a minute at most), so a
//! client repeating its token costs a hash lookup instead of a signature check.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Problems, problem};
use crate::proxy::client::{self, Client};

/// Claims of a verified token, shared by every backend call of a request.
pub type Claims = Arc<Map<String, Value>>;

/// KrakenD's default `leeway`.
const DEFAULT_LEEWAY: Duration = Duration::from_secs(1);
/// KrakenD's default `cache_duration` for downloaded JWKs (15 minutes).
const DEFAULT_JWK_TTL: Duration = Duration::from_secs(900);
/// After a failed JWK download or an unknown `kid`, wait this long before asking again,
/// so that tokens with made-up key ids cannot make the gateway hammer the key server.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(10);
/// Verified tokens kept per validator; beyond it the oldest shard is emptied.
const TOKEN_CACHE_ENTRIES: usize = 16_384;
/// A verified token is re-checked at least this often, even if it expires later.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
const SHARDS: usize = 16;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is invalid or expired: 401.
    Unauthorized,
    /// A valid token without the required roles or scopes: 403.
    Forbidden,
    /// A keyring API key that was revoked: 401.
    KeyRevoked,
    /// A keyring API key past its expiry: 401.
    KeyExpired,
    /// A keyring API key whose plan is used up: 429, retry after this many seconds.
    Exhausted(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Matcher {
    Any,
    All,
}

/// The token algorithm: one jsonwebtoken verifies, or ES512, verified here with
/// `p521` because jsonwebtoken has no P-521.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Lib(Algorithm),
    Es512,
}

/// Settings read from the namespace, without I/O.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    alg: Alg,
    /// The `alg` name tokens must declare.
    alg_name: String,
    jwk_url: Option<Uri>,
    jwk_local_path: Option<PathBuf>,
    jwk_ttl: Duration,
    cooldown: Duration,
    audience: Vec<String>,
    issuer: Option<String>,
    roles_key: Vec<String>,
    roles: Vec<String>,
    scopes_key: Vec<String>,
    scopes: Vec<String>,
    matcher: Matcher,
    propagate: Vec<(Vec<String>, HeaderName)>,
    cookie_key: Option<String>,
    header_name: HeaderName,
    leeway: Duration,
}

fn strings(obj: &Map<String, Value>, key: &str, path: &str, problems: &mut Problems) -> Vec<String> {
    match obj.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v {
                Value::String(s) => Some(s.clone()),
                _ => {
                    problems.push(problem(&format!("{path}.{key}[{i}]"), "must be a string"));
                    None
                }
            })
            .collect(),
        Some(_) => {
            problems.push(problem(&format!("{path}.{key}"), "must be an array of strings"));
            Vec::new()
        }
    }
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str, path: &str, problems: &mut Problems) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            problems.push(problem(&format!("{path}.{key}"), "must be a string"));
            None
        }
    }
}

fn duration(obj: &Map<String, Value>, key: &str, path: &str, problems: &mut Problems) -> Option<Duration> {
    let s = string(obj, key, path, problems)?;
    crate::config::parse_duration(s).map_err(|e| problems.push(problem(&format!("{path}.{key}"), e))).ok()
}

impl JwtSettings {
    /// Reads `auth/validator` settings; reports every problem.
    pub fn parse(v: &Value, path: &str) -> Result<Self, Problems> {
        let mut p = Problems::new();
        let Value::Object(obj) = v else {
            return Err(vec![problem(path, "must be an object")]);
        };
        let alg_name = string(obj, "alg", path, &mut p).unwrap_or("RS256").to_owned();
        let alg = match alg_name.as_str() {
            "ES512" => Alg::Es512,
            other => Alg::Lib(other.parse().unwrap_or_else(|_| {
                p.push(problem(&format!("{path}.alg"), format!("{other:?} is not a JWT algorithm")));
                Algorithm::RS256
            })),
        };
        let insecure = obj.get("disable_jwk_security").and_then(Value::as_bool).unwrap_or(false);
        let jwk_url = string(obj, "jwk_url", path, &mut p).and_then(|u| match u.parse::<Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") || (insecure && uri.scheme_str() == Some("http")) => Some(uri),
            Ok(_) => {
                p.push(problem(
                    &format!("{path}.jwk_url"),
                    "must be https (set disable_jwk_security to allow http, for local tests only)",
                ));
                None
            }
            Err(e) => {
                p.push(problem(&format!("{path}.jwk_url"), e.to_string()));
                None
            }
        });
        let jwk_local_path = string(obj, "jwk_local_path", path, &mut p).map(PathBuf::from);
        if jwk_url.is_none() && jwk_local_path.is_none() && !p.iter().any(|x| x.path.ends_with(".jwk_url")) {
            p.push(problem(path, "needs jwk_url or jwk_local_path to find the keys tokens are signed with"));
        }
        let cache = obj.get("cache").and_then(Value::as_bool).unwrap_or(false);
        let jwk_ttl = match obj.get("cache_duration").and_then(Value::as_u64) {
            Some(secs) if cache => Duration::from_secs(secs.max(1)),
            // Without `cache`, KrakenD downloads keys per request; Weir still caches them,
            // for a minute, and refreshes on unknown key ids.
            _ if !cache => Duration::from_secs(60),
            _ => DEFAULT_JWK_TTL,
        };
        let matcher = match string(obj, "scopes_matcher", path, &mut p) {
            None | Some("any") => Matcher::Any,
            Some("all") => Matcher::All,
            Some(other) => {
                p.push(problem(&format!("{path}.scopes_matcher"), format!("{other:?} is not any or all")));
                Matcher::Any
            }
        };
        let nested = obj.get("roles_key_is_nested").and_then(Value::as_bool).unwrap_or(false);
        let roles_key = string(obj, "roles_key", path, &mut p).unwrap_or("roles");
        let roles_key =
            if nested { roles_key.split('.').map(str::to_owned).collect() } else { vec![roles_key.to_owned()] };
        let scopes_key =
            string(obj, "scopes_key", path, &mut p).unwrap_or("scope").split('.').map(str::to_owned).collect();
        let mut propagate = Vec::new();
        match obj.get("propagate_claims") {
            None | Some(Value::Null) => {}
            Some(Value::Array(pairs)) => {
                for (i, pair) in pairs.iter().enumerate() {
                    let at = format!("{path}.propagate_claims[{i}]");
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(claim), Value::String(name)]) => {
                            match HeaderName::try_from(name.as_str()) {
                                Ok(h) => propagate.push((claim.split('.').map(str::to_owned).collect(), h)),
                                Err(_) => p.push(problem(&at, format!("{name:?} is not a header name"))),
                            }
                        }
                        _ => p.push(problem(&at, "must be a [claim, header] pair of strings")),
                    }
                }
            }
            Some(_) => p.push(problem(&format!("{path}.propagate_claims"), "must be a list of [claim, header] pairs")),
        }
        let header_name = match string(obj, "auth_header_name", path, &mut p) {
            None => header::AUTHORIZATION,
            Some(n) => HeaderName::try_from(n).unwrap_or_else(|_| {
                p.push(problem(&format!("{path}.auth_header_name"), format!("{n:?} is not a header name")));
                header::AUTHORIZATION
            }),
        };
        let settings = Self {
            alg,
            alg_name,
            jwk_url,
            jwk_local_path,
            jwk_ttl,
            cooldown: duration(obj, "failed_jwk_key_cooldown", path, &mut p).unwrap_or(DEFAULT_COOLDOWN),
            audience: strings(obj, "audience", path, &mut p),
            issuer: string(obj, "issuer", path, &mut p).map(str::to_owned),
            roles_key,
            roles: strings(obj, "roles", path, &mut p),
            scopes_key,
            scopes: strings(obj, "scopes", path, &mut p),
            matcher,
            propagate,
            cookie_key: string(obj, "cookie_key", path, &mut p).map(str::to_owned),
            header_name,
            leeway: duration(obj, "leeway", path, &mut p).unwrap_or(DEFAULT_LEEWAY),
        };
        if p.is_empty() { Ok(settings) } else { Err(p) }
    }
}

/// A verification key.
enum VerifyKey {
    Lib(DecodingKey),
    P521(p521::ecdsa::VerifyingKey),
}

/// Verification keys by `kid`, plus every key for tokens that name none.
type KeySet = (HashMap<String, Arc<VerifyKey>>, Vec<Arc<VerifyKey>>);
/// Verified tokens: token key (see [`JwtValidator::key`]) -> (token, claims, trusted until).
type TokenShard = Mutex<HashMap<u64, (Box<str>, Claims, Instant), BuildHasherDefault<KeyHasher>>>;

/// Hashes a [`JwtValidator::key`], already mixed and seeded, as itself.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(MIX);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// An odd constant with well-spread bits (2^64 / the golden ratio), for multiplicative mixing.
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Where the verification keys come from.
enum Keys {
    Local(HashMap<String, Arc<VerifyKey>>, Vec<Arc<VerifyKey>>),
    Remote(Arc<RemoteKeys>),
}

/// A JWK URL's keys, refreshed in the background and on unknown key ids.
struct RemoteKeys {
    url: Uri,
    client: Client,
    ttl: Duration,
    cooldown: Duration,
    keys: ArcSwap<KeySet>,
    /// Until when unknown key ids do not trigger downloads; the lock also makes
    /// downloads one at a time.
    cooldown_until: tokio::sync::Mutex<Option<Instant>>,
    refresher: std::sync::Once,
}

/// Parses a JWK set into keys by id, plus all keys for tokens without `kid`. Keys of
/// a kind Weir cannot use are skipped with a warning rather than failing the set.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    let set: Value = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK set: {e}"))?;
    let keys = set.get("keys").and_then(Value::as_array).ok_or("not a JWK set: no \"keys\" list")?;
    let mut by_kid = HashMap::new();
    let mut all = Vec::new();
    for jwk in keys {
        let key = match parse_jwk(jwk) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(kid = ?jwk.get("kid"), error = %e, "skipping an unusable JWK");
                continue;
            }
        };
        if let Some(kid) = jwk.get("kid").and_then(Value::as_str) {
            by_kid.insert(kid.to_owned(), key.clone());
        }
        all.push(key);
    }
    if all.is_empty() {
        return Err("the JWK set has no usable key".into());
    }
    Ok((by_kid, all))
}

fn parse_jwk(jwk: &Value) -> Result<VerifyKey, String> {
    if jwk.get("crv").and_then(Value::as_str) == Some("P-521") {
        let coord = |n: &str| {
            jwk.get(n).and_then(Value::as_str).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok()).ok_or(format!("bad {n}"))
        };
        let point = [vec![4u8], coord("x")?, coord("y")?].concat();
        return p521::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(VerifyKey::P521).map_err(|e| e.to_string());
    }
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).map_err(|e| e.to_string())?;
    DecodingKey::from_jwk(&jwk).map(VerifyKey::Lib).map_err(|e| e.to_string())
}

impl RemoteKeys {
    async fn download(&self) -> Result<(), String> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = self.url.clone();
        let response = tokio::time::timeout(Duration::from_secs(5), self.client.request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let body =
            Limited::new(response.into_body(), 1024 * 1024).collect().await.map_err(|e| e.to_string())?.to_bytes();
        let keys = parse_jwks(&body)?;
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    async fn key(self: &Arc<Self>, kid: Option<&str>) -> Vec<Arc<VerifyKey>> {
        self.refresher.call_once(|| {
            let me = Arc::downgrade(self);
            let ttl = self.ttl;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl).await;
                    let Some(me) = me.upgrade() else { return };
                    if let Err(e) = me.download().await {
                        tracing::warn!(url = %me.url, error = %e, "JWK refresh failed; keeping the keys already loaded");
                    }
                }
            });
        });
        let lookup = |keys: &KeySet| match kid {
            Some(k) => keys.0.get(k).cloned().into_iter().collect::<Vec<_>>(),
            None => keys.1.clone(),
        };
        let found = lookup(&self.keys.load());
        if !found.is_empty() {
            return found;
        }
        // Unknown key id: download again (one download at a time), unless a download
        // recently failed or did not bring the key either.
        let mut cooling = self.cooldown_until.lock().await;
        if cooling.is_some_and(|until| Instant::now() < until) {
            return Vec::new();
        }
        let found = lookup(&self.keys.load());
        if !found.is_empty() {
            return found;
        }
        if let Err(e) = self.download().await {
            tracing::warn!(url = %self.url, error = %e, "JWK download failed");
        }
        let found = lookup(&self.keys.load());
        if found.is_empty() {
            *cooling = Some(Instant::now() + self.cooldown);
        }
        found
    }
}

/// A compiled `auth/validator`.
pub struct JwtValidator {
    settings: JwtSettings,
    keys: Keys,
    validation: Validation,
    verified: [TokenShard; SHARDS],
    /// Random per validator: which tokens share a cache slot cannot be known outside.
    seed: u64,
}

impl JwtValidator {
    /// Builds the validator; reads `jwk_local_path` if set.
    pub fn build(settings: JwtSettings) -> Result<Self, String> {
        let keys = match (&settings.jwk_local_path, &settings.jwk_url) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let (by_kid, all) = parse_jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                Keys::Local(by_kid, all)
            }
            (None, Some(url)) => Keys::Remote(Arc::new(RemoteKeys {
                url: url.clone(),
                client: client::build(4).map_err(|e| e.to_string())?,
                ttl: settings.jwk_ttl,
                cooldown: settings.cooldown,
                keys: ArcSwap::from_pointee((HashMap::new(), Vec::new())),
                cooldown_until: tokio::sync::Mutex::new(None),
                refresher: std::sync::Once::new(),
            })),
            (None, None) => return Err("no key source".into()),
        };
        let mut validation = Validation::new(match settings.alg {
            Alg::Lib(a) => a,
            // Unused for ES512, whose claims are checked in `check_times`.
            Alg::Es512 => Algorithm::ES384,
        });
        // Audiences are checked below (KrakenD wants all of them); exp and nbf are
        // checked when present, as KrakenD does.
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        validation.leeway = settings.leeway.as_secs();
        if let Some(iss) = &settings.issuer {
            // jsonwebtoken compares `iss` only when a token has one: a token without it
            // would pass, where KrakenD refuses it.
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Ok(Self {
            settings,
            keys,
            validation,
            verified: std::array::from_fn(|_| Mutex::new(HashMap::default())),
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
        })
    }

    /// Claims to send to backends as headers (`propagate_claims`).
    pub fn propagated(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        self.settings
            .propagate
            .iter()
            .filter_map(|(path, name)| {
                let v = lookup(claims, path)?;
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(","),
                    other => plain(other),
                };
                Some((name.clone(), HeaderValue::try_from(text).ok()?))
            })
            .collect()
    }

    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(v) = headers.get(&self.settings.header_name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            return match v.get(..7) {
                Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => Some(v[7..].trim()),
                _ if self.settings.header_name != header::AUTHORIZATION => Some(v),
                _ => None,
            };
        }
        let name = self.settings.cookie_key.as_deref()?;
        headers.get_all(header::COOKIE).iter().filter_map(|c| c.to_str().ok()).flat_map(|c| c.split(';')).find_map(
            |pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v)
            },
        )
    }

    /// Validates the request's token: its claims, or why it is refused.
    pub async fn validate(&self, headers: &HeaderMap) -> Result<Claims, Denied> {
        let token = self.token(headers).ok_or(Denied::Unauthorized)?;
        let claims = match self.cached(token) {
            Some(c) => c,
            None => {
                let claims = Arc::new(self.verify(token).await?);
                self.remember(token, &claims);
                claims
            }
        };
        self.authorize(&claims)?;
        Ok(claims)
    }

    /// A token's cache key: its length and its last 16 bytes (the end of its signature),
    /// mixed with the seed. Hashing the whole token (500 bytes and more) would cost more
    /// than the rest of the lookup. Two tokens with one key are told apart by the whole
    /// token, which a lookup compares; and only verified tokens are stored, so a made-up
    /// token that shares a stored one's key can cost its sender a signature check, never
    /// anyone else a wrong answer or their cache entry.
    fn key(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        let mut key = self.seed ^ bytes.len() as u64;
        for word in bytes[bytes.len().saturating_sub(16)..].chunks(8) {
            let mut eight = [0; 8];
            eight[..word.len()].copy_from_slice(word);
            key = (key ^ u64::from_le_bytes(eight)).wrapping_mul(MIX);
            key ^= key >> 32;
        }
        key
    }

    fn shard(&self, token: &str) -> (u64, &TokenShard) {
        let key = self.key(token);
        // Bits the map does not use for its buckets (the low ones) or tags (the top seven).
        (key, &self.verified[(key >> 48) as usize % SHARDS])
    }

    fn cached(&self, token: &str) -> Option<Claims> {
        let (hash, shard) = self.shard(token);
        let map = shard.lock().ok()?;
        let (stored, claims, until) = map.get(&hash)?;
        (**stored == *token && Instant::now() < *until).then(|| claims.clone())
    }

    fn remember(&self, token: &str, claims: &Claims) {
        let ttl = match claims.get("exp").and_then(Value::as_f64) {
            Some(exp) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                Duration::from_secs_f64((exp - now).clamp(0.0, TOKEN_CACHE_TTL.as_secs_f64()))
            }
            None => TOKEN_CACHE_TTL,
        };
        let (hash, shard) = self.shard(token);
        if let Ok(mut map) = shard.lock() {
            if map.len() >= TOKEN_CACHE_ENTRIES / SHARDS {
                map.clear();
            }
            map.insert(hash, (token.into(), claims.clone(), Instant::now() + ttl));
        }
    }

    async fn verify(&self, token: &str) -> Result<Map<String, Value>, Denied> {
        let (alg, kid) = header(token).ok_or(Denied::Unauthorized)?;
        if alg != self.settings.alg_name {
            return Err(Denied::Unauthorized);
        }
        let candidates = match &self.keys {
            Keys::Local(by_kid, all) => match &kid {
                Some(kid) => by_kid.get(kid).cloned().into_iter().collect(),
                None => all.clone(),
            },
            Keys::Remote(remote) => remote.key(kid.as_deref()).await,
        };
        for key in candidates {
            let claims = match (&*key, self.settings.alg) {
                (VerifyKey::Lib(k), Alg::Lib(_)) => {
                    match jsonwebtoken::decode::<Map<String, Value>>(token, k, &self.validation) {
                        Ok(data) => data.claims,
                        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => continue,
                        Err(_) => return Err(Denied::Unauthorized),
                    }
                }
                (VerifyKey::P521(k), Alg::Es512) => match verify_es512(token, k) {
                    Some(claims) => {
                        self.check_times(&claims)?;
                        claims
                    }
                    None => continue,
                },
                _ => continue,
            };
            if !self.audience_ok(&claims) {
                return Err(Denied::Unauthorized);
            }
            return Ok(claims);
        }
        Err(Denied::Unauthorized)
    }

    /// `exp`, `nbf` (with leeway) and `iss`, for tokens jsonwebtoken does not check.
    fn check_times(&self, claims: &Map<String, Value>) -> Result<(), Denied> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let leeway = self.settings.leeway.as_secs_f64();
        if claims.get("exp").and_then(Value::as_f64).is_some_and(|exp| now > exp + leeway)
            || claims.get("nbf").and_then(Value::as_f64).is_some_and(|nbf| now + leeway < nbf)
        {
            return Err(Denied::Unauthorized);
        }
        match (&self.settings.issuer, claims.get("iss").and_then(Value::as_str)) {
            (Some(want), Some(iss)) if want == iss => Ok(()),
            (Some(_), _) => Err(Denied::Unauthorized),
            (None, _) => Ok(()),
        }
    }

    fn audience_ok(&self, claims: &Map<String, Value>) -> bool {
        if self.settings.audience.is_empty() {
            return true;
        }
        let aud: Vec<&str> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => return false,
        };
        self.settings.audience.iter().all(|want| aud.contains(&want.as_str()))
    }

    fn authorize(&self, claims: &Map<String, Value>) -> Result<(), Denied> {
        if !self.settings.roles.is_empty() {
            let have = words(lookup(claims, &self.settings.roles_key));
            if !self.settings.roles.iter().any(|r| have.contains(&r.as_str())) {
                return Err(Denied::Forbidden);
            }
        }
        if !self.settings.scopes.is_empty() {
            let have = words(lookup(claims, &self.settings.scopes_key));
            let ok = match self.settings.matcher {
                Matcher::Any => self.settings.scopes.iter().any(|s| have.contains(&s.as_str())),
                Matcher::All => self.settings.scopes.iter().all(|s| have.contains(&s.as_str())),
            };
            if !ok {
                return Err(Denied::Forbidden);
            }
        }
        Ok(())
    }
}

/// The `alg` and `kid` of a token's header.
fn header(token: &str) -> Option<(String, Option<String>)> {
    let first = token.split('.').next()?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).ok()?).ok()?;
    let alg = header.get("alg")?.as_str()?.to_owned();
    Some((alg, header.get("kid").and_then(Value::as_str).map(str::to_owned)))
}

/// ES512: ECDSA over P-521 with SHA-512; the claims if the signature holds.
fn verify_es512(token: &str, key: &p521::ecdsa::VerifyingKey) -> Option<Map<String, Value>> {
    use p521::ecdsa::signature::Verifier as _;
    let (input, signature) = token.rsplit_once('.')?;
    let signature = p521::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
    key.verify(input.as_bytes(), &signature).ok()?;
    let payload = input.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// A claim at a dot path.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[impl AsRef<str>]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first.as_ref())?;
    for key in rest {
        v = v.as_object()?.get(key.as_ref())?;
    }
    Some(v)
}

/// Roles and scopes: an array of strings or a space-separated string.
fn words(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn validator(extra: Value) -> (JwtValidator, tempfile_path::TempJwks) {
        let jwks = tempfile_path::TempJwks::new(
            r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg","alg":"HS256"}]}"#,
        );
        let mut cfg = json!({"alg": "HS256", "jwk_local_path": jwks.path});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            cfg[k] = v;
        }
        let settings = JwtSettings::parse(&cfg, "auth").expect("valid settings");
        (JwtValidator::build(settings).expect("builds"), jwks)
    }

    fn token(claims: Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        encode(&h, &claims, &EncodingKey::from_secret(b"secret-secret-secret-secret-32b")).expect("signs")
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::try_from(format!("Bearer {t}")).unwrap());
        h
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[tokio::test]
    async fn validates_roles_scopes_audience_and_expiry() {
        let (v, _f) = validator(json!({"roles": ["admin"], "scopes": ["read", "write"], "scopes_matcher": "all",
            "audience": ["api", "web"], "issuer": "me"}));
        let good = token(
            json!({"sub": "u", "roles": ["user", "admin"], "scope": "read write", "aud": ["api", "web"], "iss": "me", "exp": now() + 60}),
        );
        assert_eq!(v.validate(&bearer(&good)).await.unwrap()["sub"], "u");
        assert_eq!(v.validate(&bearer(&good)).await.unwrap()["sub"], "u", "served from the cache");
        let cases = [
            (json!({"roles": ["user"], "scope": "read write", "aud": ["api", "web"], "iss": "me"}), Denied::Forbidden),
            (json!({"roles": ["admin"], "scope": "read", "aud": ["api", "web"], "iss": "me"}), Denied::Forbidden),
            (json!({"roles": ["admin"], "scope": "read write", "aud": ["api"], "iss": "me"}), Denied::Unauthorized),
            (
                json!({"roles": ["admin"], "scope": "read write", "aud": ["api", "web"], "iss": "you"}),
                Denied::Unauthorized,
            ),
            // An issuer is required when one is configured, not only compared when present.
            (json!({"roles": ["admin"], "scope": "read write", "aud": ["api", "web"]}), Denied::Unauthorized),
            (
                json!({"roles": ["admin"], "scope": "read write", "aud": ["api", "web"], "iss": "me", "exp": now() - 30}),
                Denied::Unauthorized,
            ),
            (
                json!({"roles": ["admin"], "scope": "read write", "aud": ["api", "web"], "iss": "me", "nbf": now() + 30}),
                Denied::Unauthorized,
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(v.validate(&bearer(&token(claims.clone()))).await.unwrap_err(), want, "{claims}");
        }
        assert_eq!(v.validate(&HeaderMap::new()).await.unwrap_err(), Denied::Unauthorized);
        assert_eq!(v.validate(&bearer("not.a.token")).await.unwrap_err(), Denied::Unauthorized);
    }

    /// The cache keys a token by its length and its last bytes: a token made to share
    /// both with a cached one (same signature, other claims) must still be checked.
    #[tokio::test]
    async fn a_token_sharing_a_cached_ones_key_is_still_verified() {
        let (v, _f) = validator(json!({"roles": ["admin"]}));
        let good = token(json!({"sub": "u", "roles": ["admin"], "exp": now() + 60}));
        assert_eq!(v.validate(&bearer(&good)).await.unwrap()["sub"], "u");
        let (signed, signature) = good.rsplit_once('.').unwrap();
        let (head, claims) = signed.split_once('.').unwrap();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        // "sub":"v": the same length, so the forged token's length and tail match.
        let forged_claims = URL_SAFE_NO_PAD.encode(claims.replace(r#""sub":"u""#, r#""sub":"v""#));
        let forged = format!("{head}.{forged_claims}.{signature}");
        assert_ne!(forged, good);
        assert_eq!(v.key(&forged), v.key(&good), "the forged token lands on the cached one's slot");
        assert_eq!(v.validate(&bearer(&forged)).await.unwrap_err(), Denied::Unauthorized);
        assert_eq!(v.validate(&bearer(&good)).await.unwrap()["sub"], "u", "and the cached one stays");
    }

    #[tokio::test]
    async fn cookie_nested_roles_and_propagation() {
        let (v, _f) =
            validator(json!({"cookie_key": "session", "roles_key": "realm.roles", "roles_key_is_nested": true,
            "roles": ["a"], "propagate_claims": [["sub", "x-user"], ["realm.roles", "x-roles"]]}));
        let t = token(json!({"sub": "u1", "realm": {"roles": ["a", "b"]}}));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::try_from(format!("other=1; session={t}")).unwrap());
        let claims = v.validate(&h).await.unwrap();
        let headers = v.propagated(&claims);
        assert_eq!(headers[0], (HeaderName::from_static("x-user"), HeaderValue::from_static("u1")));
        assert_eq!(headers[1], (HeaderName::from_static("x-roles"), HeaderValue::from_static("a,b")));
    }

    #[test]
    fn settings_problems_have_paths() {
        let err = JwtSettings::parse(
            &json!({"alg": "XX1", "jwk_url": "http://keys", "roles": [1]}),
            "endpoints[0].extra_config.auth/validator",
        )
        .unwrap_err();
        let text: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|t| t.starts_with("endpoints[0].extra_config.auth/validator.alg: ")), "{text:?}");
        assert!(text.iter().any(|t| t.contains(".jwk_url: must be https")), "{text:?}");
        assert!(text.iter().any(|t| t.contains(".roles[0]: must be a string")), "{text:?}");
    }

    /// A JWK set written to a temporary file for the duration of a test.
    mod tempfile_path {
        pub struct TempJwks {
            pub path: String,
        }
        impl TempJwks {
            pub fn new(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "weir-jwks-{}-{:?}.json",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&path, text).unwrap();
                Self { path: path.display().to_string() }
            }
        }
        impl Drop for TempJwks {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
