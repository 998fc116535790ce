//! `auth/basic`: HTTP Basic authentication against bcrypt or Argon2 hashes, from the
//! config's `users` and an `htpasswd_path` file.
//!
//! Password hashes are slow on purpose; checks run on the blocking pool, and a
//! successful check is remembered (as a SHA-256 of the credentials, never the
//! password) for a few minutes so that a client's repeated requests stay cheap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::jwt::Denied;
use super::{Problems, problem};

/// How long a verified username/password pair is trusted without rehashing.
const REMEMBER: Duration = Duration::from_secs(300);
/// Bound on remembered credentials; the table is emptied when it is full.
const REMEMBER_ENTRIES: usize = 10_000;

/// Settings read from the namespace, without I/O.
pub struct BasicSettings {
    users: HashMap<String, String>,
    htpasswd: Option<std::path::PathBuf>,
}

impl BasicSettings {
    pub fn parse(v: &Value, path: &str) -> Result<Self, Problems> {
        let Value::Object(obj) = v else { return Err(vec![problem(path, "must be an object")]) };
        let mut p = Problems::new();
        let mut users = HashMap::new();
        if let Some(u) = obj.get("users") {
            match u.as_object() {
                Some(map) => {
                    for (name, hash) in map {
                        match hash.as_str() {
                            Some(h) if is_supported(h) => {
                                users.insert(name.clone(), h.to_owned());
                            }
                            Some(_) => p.push(problem(
                                &format!("{path}.users.{name}"),
                                "must be a bcrypt ($2a$/$2b$/$2y$) or Argon2 ($argon2id$) hash, never a plain password",
                            )),
                            None => p.push(problem(&format!("{path}.users.{name}"), "must be a string (the hash)")),
                        }
                    }
                }
                None => p.push(problem(&format!("{path}.users"), "must be an object of user: hash")),
            }
        }
        let htpasswd = obj.get("htpasswd_path").and_then(Value::as_str).filter(|s| !s.is_empty()).map(Into::into);
        if users.is_empty() && htpasswd.is_none() && p.is_empty() {
            p.push(problem(path, "declares no users: set users or htpasswd_path"));
        }
        if p.is_empty() { Ok(Self { users, htpasswd }) } else { Err(p) }
    }
}

fn is_supported(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$argon2id$", "$argon2i$", "$argon2d$"].iter().any(|p| hash.starts_with(p))
}

/// A compiled `auth/basic`.
pub struct BasicAuth {
    users: Arc<HashMap<String, String>>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl BasicAuth {
    /// Builds the user table, reading the htpasswd file if there is one.
    pub fn build(settings: BasicSettings) -> Result<Self, String> {
        let mut users = HashMap::new();
        if let Some(path) = &settings.htpasswd {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (user, hash) =
                    line.split_once(':').ok_or_else(|| format!("{}:{}: not user:hash", path.display(), n + 1))?;
                if !is_supported(hash) {
                    return Err(format!(
                        "{}:{}: only bcrypt and Argon2 hashes are accepted (htpasswd -B)",
                        path.display(),
                        n + 1
                    ));
                }
                users.insert(user.to_owned(), hash.to_owned());
            }
        }
        // Users in the config are additions to (and override) the file's.
        users.extend(settings.users);
        Ok(Self { users: Arc::new(users), verified: Mutex::new(HashMap::new()) })
    }

    /// Checks the request's credentials; on success returns the user name.
    pub async fn check(&self, headers: &HeaderMap) -> Result<String, Denied> {
        let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(Denied::Unauthorized)?;
        let encoded = value
            .get(..6)
            .filter(|p| p.eq_ignore_ascii_case("basic "))
            .map(|_| value[6..].trim())
            .ok_or(Denied::Unauthorized)?;
        let decoded = STANDARD.decode(encoded).map_err(|_| Denied::Unauthorized)?;
        let text = String::from_utf8(decoded).map_err(|_| Denied::Unauthorized)?;
        let (user, password) = text.split_once(':').ok_or(Denied::Unauthorized)?;
        let fingerprint: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if let Ok(map) = self.verified.lock()
            && map.get(&fingerprint).is_some_and(|at| at.elapsed() < REMEMBER)
        {
            return Ok(user.to_owned());
        }
        let Some(hash) = self.users.get(user).cloned() else {
            return Err(Denied::Unauthorized);
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password)).await.unwrap_or(false);
        if !ok {
            return Err(Denied::Unauthorized);
        }
        if let Ok(mut map) = self.verified.lock() {
            if map.len() >= REMEMBER_ENTRIES {
                map.clear();
            }
            map.insert(fingerprint, Instant::now());
        }
        Ok(user.to_owned())
    }
}

fn verify(hash: &str, password: &str) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
        PasswordHash::new(hash)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn bcrypt_and_argon2_users() {
        use argon2::password_hash::{PasswordHasher as _, SaltString};
        let bc = bcrypt::hash("pw1", 4).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let ar = argon2::Argon2::default().hash_password(b"pw2", &salt).unwrap().to_string();
        let dir = std::env::temp_dir().join(format!("weir-htpasswd-{}", std::process::id()));
        std::fs::write(&dir, format!("# users\nfile:{bc}\n")).unwrap();
        let s = BasicSettings::parse(&json!({"users": {"ada": bc, "bob": ar}, "htpasswd_path": dir}), "b").unwrap();
        let auth = BasicAuth::build(s).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(auth.check(&basic("ada", "pw1")).await.unwrap(), "ada");
        assert_eq!(auth.check(&basic("ada", "pw1")).await.unwrap(), "ada", "remembered");
        assert_eq!(auth.check(&basic("bob", "pw2")).await.unwrap(), "bob");
        assert_eq!(auth.check(&basic("file", "pw1")).await.unwrap(), "file");
        assert_eq!(auth.check(&basic("ada", "wrong")).await.unwrap_err(), Denied::Unauthorized);
        assert_eq!(auth.check(&basic("eve", "pw1")).await.unwrap_err(), Denied::Unauthorized);
        assert_eq!(auth.check(&HeaderMap::new()).await.unwrap_err(), Denied::Unauthorized);
    }

    #[test]
    fn plain_passwords_are_refused() {
        let err = BasicSettings::parse(&json!({"users": {"ada": "secret"}}), "b").err().unwrap();
        assert!(err[0].message.contains("never a plain password"));
    }
}
