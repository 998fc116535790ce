//! `auth/api-keys`: keys declared at the service level (KrakenD Enterprise's format),
//! required by endpoints that name the roles they accept.
//!
//! Keys are looked up by the SHA-256 of their stored form and then compared in
//! constant time, so neither the lookup nor the comparison tells an attacker how
//! close a guess was. The key table sits behind an `ArcSwap` so that keys issued at
//! run time (the signed keyring of a bundle) can replace it without a restart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::jwt::Denied;
use super::keyring::{KeyRefusal, Keyring, SharedQuota};

/// A key that passed: headers for the backends, and quotas still to count in Redis.
pub struct KeyAdmission {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub shared_quota: Option<SharedQuota>,
}
use super::{Problems, problem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Plain,
    Sha256,
    Fnv128,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Strategy {
    Header(HeaderName),
    Query(String),
}

/// One key: its stored form and roles.
struct Entry {
    stored: Box<[u8]>,
    roles: Vec<String>,
}

/// The service-level key table and how keys are presented.
pub struct ApiKeys {
    strategy: Strategy,
    hash: Hash,
    salt: String,
    keys: ArcSwap<HashMap<[u8; 32], Entry>>,
    /// Keys issued at run time (a bundle's keyring), looked up after the config's own.
    keyring: ArcSwap<Keyring>,
    /// Where keyring quotas are counted for the whole fleet (`weir/keyring.quota_redis`).
    quota_redis: Option<Arc<super::redis_limit::Pool>>,
    propagate_role: Option<HeaderName>,
}

/// An endpoint's requirement: a valid key with one of these roles (any role if empty).
pub struct ApiKeyGuard {
    keys: Arc<ApiKeys>,
    roles: Vec<String>,
    strategy: Strategy,
}

fn index(stored: &[u8]) -> [u8; 32] {
    Sha256::digest(stored).into()
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Go's `hash/fnv` New128 (FNV-1, 128 bits), as KrakenD's `fnv128`.
fn fnv128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |h, b| h.wrapping_mul(PRIME) ^ u128::from(*b))
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn strategy(obj: &Map<String, Value>, path: &str, p: &mut Problems) -> Option<Strategy> {
    let identifier = obj.get("identifier").and_then(Value::as_str).filter(|s| !s.is_empty());
    match obj.get("strategy").and_then(Value::as_str) {
        None if identifier.is_none() => None,
        None | Some("header") => {
            let name = identifier.unwrap_or("Authorization");
            HeaderName::try_from(name)
                .map(Strategy::Header)
                .map_err(|_| p.push(problem(&format!("{path}.identifier"), format!("{name:?} is not a header name"))))
                .ok()
        }
        Some("query_string") => Some(Strategy::Query(identifier.unwrap_or("key").to_owned())),
        Some(other) => {
            p.push(problem(&format!("{path}.strategy"), format!("{other:?} is not header or query_string")));
            None
        }
    }
}

fn roles(obj: &Map<String, Value>, path: &str, p: &mut Problems) -> Vec<String> {
    match obj.get("roles") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_str().map(str::to_owned).or_else(|| {
                    p.push(problem(&format!("{path}.roles[{i}]"), "must be a string"));
                    None
                })
            })
            .collect(),
        Some(_) => {
            p.push(problem(&format!("{path}.roles"), "must be an array of role names"));
            Vec::new()
        }
    }
}

impl ApiKeys {
    /// Compiles the service-level `auth/api-keys`.
    pub fn compile(v: &Value, path: &str) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let mut p = Problems::new();
        let hash = match obj.get("hash").and_then(Value::as_str) {
            None | Some("plain") => Hash::Plain,
            Some("sha256") => Hash::Sha256,
            Some("fnv128") => Hash::Fnv128,
            Some("sha1") => {
                p.push(problem(&format!("{path}.hash"), "sha1 is not supported (it is broken): store keys as sha256"));
                Hash::Plain
            }
            Some(other) => {
                p.push(problem(&format!("{path}.hash"), format!("{other:?} is not plain, sha256 or fnv128")));
                Hash::Plain
            }
        };
        let mut keys = HashMap::new();
        match obj.get("keys") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}.keys[{i}]");
                    let Some(key) = item.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()) else {
                        p.push(problem(&format!("{at}.key"), "is required (the key as stored)"));
                        continue;
                    };
                    let stored: Box<[u8]> = match hash {
                        Hash::Plain => key.as_bytes().into(),
                        // Hashes are compared in their lower-case hex form.
                        _ => key.to_ascii_lowercase().into_bytes().into(),
                    };
                    let roles = match item.as_object() {
                        Some(o) => roles(o, &at, &mut p),
                        None => Vec::new(),
                    };
                    if keys.insert(index(&stored), Entry { stored, roles }).is_some() {
                        p.push(problem(&at, "this key is declared twice"));
                    }
                }
            }
            _ => p.push(problem(&format!("{path}.keys"), "is required: a list of {\"key\", \"roles\"}")),
        }
        let propagate_role = match obj.get("propagate_role").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            None => None,
            Some(h) => HeaderName::try_from(h)
                .map_err(|_| p.push(problem(&format!("{path}.propagate_role"), format!("{h:?} is not a header name"))))
                .ok(),
        };
        let strategy = strategy(obj, path, &mut p).unwrap_or(Strategy::Header(header::AUTHORIZATION));
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Self {
            strategy,
            hash,
            salt: obj.get("salt").and_then(Value::as_str).unwrap_or("").to_owned(),
            keys: ArcSwap::from_pointee(keys),
            keyring: ArcSwap::from_pointee(Keyring::default()),
            quota_redis: None,
            propagate_role,
        })
    }

    /// Counts keyring quotas in this Redis pool, shared by every node.
    pub fn share_quotas(&mut self, pool: Arc<super::redis_limit::Pool>) {
        self.quota_redis = Some(pool);
    }

    /// Whether keyring quotas are counted in Redis.
    pub fn shares_quotas(&self) -> bool {
        self.quota_redis.is_some()
    }

    /// Replaces the run-time keys (a new bundle's keyring).
    pub fn install(&self, keyring: Keyring) {
        self.keyring.store(Arc::new(keyring));
    }

    /// The run-time keys now installed.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.load_full()
    }

    /// The stored form of a presented key.
    fn stored_form(&self, key: &str) -> Vec<u8> {
        match self.hash {
            Hash::Plain => key.as_bytes().to_vec(),
            Hash::Sha256 => {
                let mut h = Sha256::new();
                h.update(self.salt.as_bytes());
                h.update(key.as_bytes());
                hex(&h.finalize()).into_bytes()
            }
            Hash::Fnv128 => {
                let salted = [self.salt.as_bytes(), key.as_bytes()].concat();
                hex(&fnv128(&salted).to_be_bytes()).into_bytes()
            }
        }
    }
}

impl ApiKeyGuard {
    /// Compiles an endpoint's `auth/api-keys` against the service's key table.
    pub fn compile(v: &Value, path: &str, keys: Option<&Arc<ApiKeys>>) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let Some(keys) = keys else {
            return Err(vec![problem(path, "needs the keys declared in the service extra_config \"auth/api-keys\"")]);
        };
        let mut p = Problems::new();
        let roles = roles(obj, path, &mut p);
        let strategy = strategy(obj, path, &mut p).unwrap_or_else(|| keys.strategy.clone());
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Self { keys: keys.clone(), roles, strategy })
    }

    fn presented<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Option<std::borrow::Cow<'a, str>> {
        match &self.strategy {
            Strategy::Header(name) => {
                let v = headers.get(name)?.to_str().ok()?.trim();
                let v = match v.get(..7) {
                    Some(p) if *name == header::AUTHORIZATION && p.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                    _ => v,
                };
                (!v.is_empty()).then_some(std::borrow::Cow::Borrowed(v))
            }
            Strategy::Query(name) => query?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
            }),
        }
    }

    /// Checks the request's key. On success returns the headers to add to backend
    /// requests (`propagate_role`) and the quotas still to count in Redis, if shared.
    pub fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<KeyAdmission, Denied> {
        let key = self.presented(headers, query).ok_or(Denied::Unauthorized)?;
        let stored = self.keys.stored_form(&key);
        let table = self.keys.keys.load();
        let ring;
        let (roles, issued) = match table.get(&index(&stored)).filter(|e| constant_time_eq(&e.stored, &stored)) {
            Some(entry) => (&entry.roles, None),
            None => {
                ring = self.keys.keyring.load();
                let issued = ring.find(&key).ok_or(Denied::Unauthorized)?;
                (&issued.roles, Some(issued))
            }
        };
        let role = if self.roles.is_empty() {
            roles.first()
        } else {
            Some(roles.iter().find(|r| self.roles.contains(r)).ok_or(Denied::Forbidden)?)
        };
        // Plans count only requests the key may make at all.
        let mut shared_quota = None;
        if let Some(issued) = issued {
            let now = std::time::SystemTime::now();
            issued.admit(now).map_err(|refusal| match refusal {
                KeyRefusal::Revoked => Denied::KeyRevoked,
                KeyRefusal::Expired => Denied::KeyExpired,
                KeyRefusal::Exhausted { retry_after } => Denied::Exhausted(retry_after),
            })?;
            shared_quota = self.keys.quota_redis.as_ref().and_then(|pool| issued.shared_quota(pool, now));
        }
        let mut out = Vec::new();
        if let (Some(h), Some(role)) = (&self.keys.propagate_role, role)
            && let Ok(v) = HeaderValue::try_from(role.as_str())
        {
            out.push((h.clone(), v));
        }
        Ok(KeyAdmission { headers: out, shared_quota })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guard(service: Value, endpoint: Value) -> ApiKeyGuard {
        let keys = Arc::new(ApiKeys::compile(&service, "svc").unwrap());
        ApiKeyGuard::compile(&endpoint, "ep", Some(&keys)).unwrap()
    }

    fn header(name: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::try_from(v).unwrap());
        h
    }

    #[test]
    fn plain_keys_in_the_authorization_header_with_roles() {
        let g = guard(
            json!({"keys": [{"key": "k-admin", "roles": ["admin"]}, {"key": "k-user", "roles": ["user"]}], "propagate_role": "x-role"}),
            json!({"roles": ["admin"]}),
        );
        let ok = g.check(&header("authorization", "Bearer k-admin"), None).unwrap().headers;
        assert_eq!(ok, vec![(HeaderName::from_static("x-role"), HeaderValue::from_static("admin"))]);
        assert_eq!(g.check(&header("authorization", "Bearer k-user"), None).err().unwrap(), Denied::Forbidden);
        assert_eq!(g.check(&header("authorization", "Bearer k-nope"), None).err().unwrap(), Denied::Unauthorized);
        assert_eq!(g.check(&HeaderMap::new(), None).err().unwrap(), Denied::Unauthorized);
    }

    #[test]
    fn hashed_keys_in_the_query_string() {
        let stored = hex(&Sha256::digest(b"pepperk1"));
        let g = guard(
            json!({"keys": [{"key": stored, "roles": ["r"]}], "hash": "sha256", "salt": "pepper",
            "strategy": "query_string"}),
            json!({}),
        );
        assert!(g.check(&HeaderMap::new(), Some("a=1&key=k1")).is_ok());
        assert!(g.check(&HeaderMap::new(), Some("key=k2")).is_err());
        let fnv = hex(&fnv128(b"k1").to_be_bytes());
        let g = guard(json!({"keys": [{"key": fnv}], "hash": "fnv128", "identifier": "X-Key"}), json!({}));
        assert!(g.check(&header("x-key", "k1"), None).is_ok());
    }

    #[test]
    fn fnv128_matches_go() {
        // Go: fmt.Sprintf("%x", fnv.New128().Sum([]byte{})) for "" and "a".
        assert_eq!(hex(&fnv128(b"").to_be_bytes()), "6c62272e07bb014262b821756295c58d");
        assert_eq!(hex(&fnv128(b"a").to_be_bytes()), "d228cb69101a8caf78912b704e4a141e");
    }

    #[test]
    fn endpoint_without_service_keys_is_a_problem() {
        let err = ApiKeyGuard::compile(&json!({"roles": ["a"]}), "endpoints[0].extra_config.auth/api-keys", None)
            .err()
            .unwrap();
        assert!(err[0].message.contains("service extra_config"));
    }
}
