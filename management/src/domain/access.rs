//! Who may do what: roles, bearer tokens and passwords.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A caller's role. Operators' roles are ordered (admin > operator > viewer); a node
/// token is a role of its own, valid only for its gateway environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and the audit log.
    Admin,
    /// Gateways, environments, versions and promotions.
    Operator,
    /// Reads.
    Viewer,
    /// Fetches its environment's bundle and reports status; nothing else.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Node => "node",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "node" => Some(Role::Node),
            _ => None,
        }
    }

    /// Whether this role includes `needed` (node tokens include nothing but node access).
    pub fn includes(self, needed: Role) -> bool {
        let rank = |r: Role| match r {
            Role::Viewer => 1,
            Role::Operator => 2,
            Role::Admin => 3,
            Role::Node => 0,
        };
        if needed == Role::Node || self == Role::Node {
            return self == needed;
        }
        rank(self) >= rank(needed)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new secret token: a kind prefix and 32 random bytes. Returned once, stored hashed.
pub fn generate_token(prefix: &str) -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(format!("{prefix}{}", B64.encode(bytes)))
}

/// Tokens carry 256 random bits, so a fast hash is enough to store them safely; a slow
/// one would only slow down every request (passwords, which people choose, get Argon2id).
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random password for generated accounts (24 characters of base64url).
pub fn generate_password() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 18];
    getrandom::getrandom(&mut bytes)?;
    Ok(B64.encode(bytes))
}

/// Argon2id with the crate's default (OWASP-recommended) parameters, as a PHC string.
/// Slow on purpose: call it from `spawn_blocking`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks a password against its stored PHC string. Slow on purpose, like hashing.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    PasswordHash::new(phc).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_nodes_stand_apart() {
        assert!(Role::Admin.includes(Role::Operator));
        assert!(Role::Operator.includes(Role::Viewer));
        assert!(!Role::Viewer.includes(Role::Operator));
        assert!(!Role::Admin.includes(Role::Node));
        assert!(!Role::Node.includes(Role::Viewer));
        assert!(Role::Node.includes(Role::Node));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token("weir_").unwrap();
        let b = generate_token("weir_").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("weir_") && a.len() > 40);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
